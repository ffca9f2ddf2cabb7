-- Each run's latest metric values in each metric's order, per experiment: what a search ordered
-- by a metric walks. It replaces the index latest_metrics_by_key, which every write had to keep
-- in step: a write of a thousand keys of one run moved a thousand index entries, one per key, on
-- a thousand pages (each key's entries of all runs sit together), so wide batches spent three
-- quarters of their time there. This table is brought up to date in batches instead, for every
-- run whose latest values changed since (`metric_order_pending`), and always before a search
-- reads it; one batch moves the entries of many runs and writes, on far fewer pages. See
-- crates/spotsweep-store/src/sqlite/metric_order.rs.
CREATE TABLE metric_order (
    id            INTEGER PRIMARY KEY,
    experiment_id INTEGER NOT NULL,
    key           TEXT    NOT NULL,
    is_nan        INTEGER NOT NULL,
    value         REAL    NOT NULL,
    run_id        INTEGER NOT NULL
);
CREATE INDEX metric_order_walk ON metric_order (experiment_id, key, is_nan, value, run_id);

-- Runs whose latest metrics changed after their entries in metric_order were written; written
-- in the transaction that changes them, so a crash loses no update.
CREATE TABLE metric_order_pending (
    run_id INTEGER PRIMARY KEY
);

-- The entry of metric_order that holds this latest value, as of the last update (NULL: none yet).
ALTER TABLE latest_metrics ADD COLUMN order_id INTEGER;

INSERT INTO metric_order (experiment_id, key, is_nan, value, run_id)
SELECT r.experiment_id, l.key, l.is_nan, l.value, l.run_id
FROM latest_metrics l JOIN runs r ON r.id = l.run_id;

UPDATE latest_metrics SET order_id = (
    SELECT m.id FROM runs r CROSS JOIN metric_order m
    WHERE r.id = latest_metrics.run_id AND m.experiment_id = r.experiment_id
      AND m.key = latest_metrics.key AND m.is_nan = latest_metrics.is_nan
      AND m.value = latest_metrics.value AND m.run_id = latest_metrics.run_id
);

DROP INDEX latest_metrics_by_key;
