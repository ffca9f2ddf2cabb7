-- Leader leases (see spotsweep-core's `leader`): the holder of a role runs its loop; a lease
-- that ran out may be taken by anyone. Times are milliseconds since the epoch.
CREATE TABLE leaders (
    role       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
