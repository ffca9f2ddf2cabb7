-- Reruns: a finished trial run again with the same parameters, seed and code, as a trial of its
-- own. `rerun_of` is the original trial's number; `pool` the pool it runs on when not the sweep's.
-- Reruns are numbered after every trial the sweep can propose, do not count towards
-- `trials_created`, and are no evidence for the sampler, the pruner or the sweep's best.
ALTER TABLE trials ADD COLUMN rerun_of INTEGER;
ALTER TABLE trials ADD COLUMN pool TEXT;
-- Every lease request looks for a waiting rerun first: an index of the reruns alone keeps that a
-- lookup in a handful of rows.
CREATE INDEX trials_reruns ON trials (state, sweep_id) WHERE rerun_of IS NOT NULL;
