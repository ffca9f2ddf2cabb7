-- A sweep's best completed trial, found without reading its other trials: every completion asks
-- whether it is the new best (to log `best_<metric>` on the sweep's run), and a sweep may have
-- tens of thousands of trials.
CREATE INDEX trials_best ON trials (sweep_id, value, number) WHERE state = 'completed' AND rerun_of IS NULL;
