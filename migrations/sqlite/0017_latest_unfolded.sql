-- Writes of many keys at once (a write row of `metric_writes` with at least
-- `metric_blocks::DEFER_KEYS` keys) do not upsert a latest value per key: they list the write
-- here, in the same transaction, and the writer folds the latest points of many writes into
-- latest_metrics later, one upsert per (run, key) however many writes touched it. A thousand
-- upserts took four fifths of such a write. Readers of latest values see these writes too: a
-- run's latest values are merged from both (get-run, search results, the objective), and a
-- search that filters or sorts on metrics has the writer fold first. See
-- crates/spotsweep-store/src/sqlite/latest_fold.rs.
CREATE TABLE latest_unfolded (
    write_id INTEGER PRIMARY KEY,  -- metric_writes.id
    run_id   INTEGER NOT NULL
);
CREATE INDEX latest_unfolded_by_run ON latest_unfolded (run_id);
