-- Sweeps, their trials, and the agents that lease them.

CREATE TABLE sweeps (
    id             INTEGER PRIMARY KEY,
    name           TEXT    NOT NULL,
    -- The validated spec as JSON, with the seed filled in: the sampler is rebuilt from it.
    spec           TEXT    NOT NULL,
    seed           INTEGER NOT NULL,
    experiment_id  INTEGER NOT NULL REFERENCES experiments (experiment_id),
    pool           TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('running', 'paused', 'completed', 'cancelled')),
    max_trials     INTEGER NOT NULL,
    parallelism    INTEGER NOT NULL,
    max_retries    INTEGER NOT NULL,
    -- Trials proposed so far; the next trial's number. Never exceeds max_trials.
    trials_created INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    finished_at    INTEGER
);
CREATE INDEX sweeps_by_state ON sweeps (state, pool);

CREATE TABLE trials (
    id               INTEGER PRIMARY KEY,
    sweep_id         INTEGER NOT NULL REFERENCES sweeps (id),
    number           INTEGER NOT NULL,
    params           TEXT    NOT NULL,
    seed             INTEGER NOT NULL,
    run_id           INTEGER NOT NULL REFERENCES runs (id),
    state            TEXT    NOT NULL CHECK (state IN
                         ('queued', 'running', 'completed', 'failed', 'pruned', 'preempted', 'cancelled')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    failures         INTEGER NOT NULL DEFAULT 0,
    value            REAL,
    reason           TEXT,
    agent_id         TEXT,
    -- Set by a cancel or a pruning decision; the next heartbeat answers "stop".
    stop_requested   INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    UNIQUE (sweep_id, number)
);
CREATE INDEX trials_by_state ON trials (state, sweep_id);

-- One row per lease of a trial (a trial is leased again after an expiry or a retry). A trial is
-- running exactly when it has an open lease (ended_at IS NULL).
CREATE TABLE leases (
    id         TEXT    PRIMARY KEY,
    trial_id   INTEGER NOT NULL REFERENCES trials (id),
    attempt    INTEGER NOT NULL,
    agent_id   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at   INTEGER,
    -- How it ended: expired, or the outcome the agent reported.
    outcome    TEXT
);
CREATE INDEX leases_open_by_expiry ON leases (expires_at) WHERE ended_at IS NULL;
CREATE INDEX leases_by_trial ON leases (trial_id);

CREATE TABLE agents (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    pool          TEXT    NOT NULL,
    slots         INTEGER NOT NULL,
    registered_at INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL
);

-- Answers to lease requests, by the agent's request id, so that a retried request gets the
-- same trials instead of leasing more.
CREATE TABLE lease_requests (
    request_id TEXT    PRIMARY KEY,
    agent_id   TEXT    NOT NULL,
    response   TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
