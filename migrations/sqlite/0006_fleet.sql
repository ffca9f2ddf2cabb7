-- The spot fleet: every VM the daemon asked a cloud for, from the request to its end, and the
-- daemon's install id (in the labels of its VMs, so that two daemons in one project never
-- delete each other's).

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE vms (
    id             INTEGER PRIMARY KEY,
    pool           TEXT    NOT NULL,
    -- The instance name; deterministic from the pool and the id, unique for the daemon.
    name           TEXT    NOT NULL UNIQUE,
    -- Recorded before the insert is sent, so that a VM is always looked for in the right zone.
    zone           TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN
                       ('requested', 'provisioning', 'booting', 'ready', 'draining', 'deleting',
                        'deleted', 'preempted', 'failed')),
    -- The insert's requestId, also recorded before it is sent: a retry after a crash cannot
    -- create a second VM.
    request_id     TEXT    NOT NULL,
    -- The operation being waited for (insert or delete).
    operation      TEXT,
    -- The SHA-256 of the VM's token, which lets its agent lease, heartbeat and report the pool's
    -- trials and write to their runs, and nothing else; dead with the VM.
    token_hash     TEXT,
    price_per_hour REAL    NOT NULL,
    -- Trials it runs at once: a trial's share of the VM's price is price_per_hour / slots.
    slots          INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    -- Billing runs from RUNNING to the end.
    running_at     INTEGER,
    -- The last moment it had a running trial (or became RUNNING).
    busy_at        INTEGER,
    ended_at       INTEGER,
    reason         TEXT
);
CREATE INDEX vms_by_pool_state ON vms (pool, state);
