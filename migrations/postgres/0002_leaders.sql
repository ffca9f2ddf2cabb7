-- Leader leases (see spotsweep-core's `leader`): the holder of a role runs its loop; a lease
-- that ran out may be taken by anyone. Times are milliseconds since the epoch, by the
-- database's clock, so that daemons whose clocks differ agree on them.
CREATE TABLE leaders (
    role       TEXT   PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
