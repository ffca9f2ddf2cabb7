-- Every queue query that looks at trial states is for one sweep: the running count and the next
-- waiting trial of each candidate sweep, a sweep's counts, whether it is done. Keyed by sweep
-- first, these are range lookups; keyed by state first, "the lowest waiting number" walked all of
-- a sweep's trials in number order when none was waiting.
DROP INDEX trials_by_state;
CREATE INDEX trials_by_sweep_state ON trials (sweep_id, state, number);
