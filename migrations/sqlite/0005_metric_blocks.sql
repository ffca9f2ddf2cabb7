-- Metric history in blocks: one row holds the points of one write (or of a merge) of one
-- (run, key), packed as 24-byte records (timestamp i64, step i64, value f64 bits, little-endian).
-- See crates/spotsweep-store/src/sqlite/metric_blocks.rs for the format and the merge rule.
--
-- The latest value per (run, key) is now upserted by the writer once per key and write, so the
-- per-point trigger goes. The row-per-point table is kept under another name: the daemon moves
-- its points into blocks at start, in one transaction, then drops it (SQL cannot pack floats).

DROP TRIGGER metrics_maintain_latest;
ALTER TABLE metrics RENAME TO metrics_legacy;

CREATE TABLE metric_blocks (
    id     INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    key    TEXT    NOT NULL,
    points INTEGER NOT NULL CHECK (points > 0),
    data   BLOB    NOT NULL
);
-- Within one (run, key) the index is in id order, i.e. the order the blocks were written.
CREATE INDEX metric_blocks_by_key ON metric_blocks (run_id, key);
