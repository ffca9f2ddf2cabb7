-- Metric points as written, for keys with few points in a write: one row per write of one run
-- holds all of them (each key's name, count and 24-byte points), so that a batch of a thousand
-- keys at one step is one row, not a thousand blocks. Readers take a key's points from its
-- blocks and from these rows; the writer compacts a run's rows into per-key blocks once it has
-- enough of them. See crates/spotsweep-store/src/sqlite/metric_blocks.rs.
CREATE TABLE metric_writes (
    id     INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    points INTEGER NOT NULL CHECK (points > 0),
    data   BLOB    NOT NULL
);
CREATE INDEX metric_writes_by_run ON metric_writes (run_id);
