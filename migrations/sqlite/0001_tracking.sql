-- The MLflow tracking tables and the daemon's API tokens.
--
-- Runs are addressed internally by an integer key (`runs.id`) so that the large child tables
-- (metrics above all) store 8 bytes per row instead of a 32-character run id.

CREATE TABLE experiments (
    experiment_id     INTEGER PRIMARY KEY,
    name              TEXT    NOT NULL UNIQUE,
    artifact_location TEXT    NOT NULL,
    lifecycle_stage   TEXT    NOT NULL DEFAULT 'active' CHECK (lifecycle_stage IN ('active', 'deleted')),
    creation_time     INTEGER NOT NULL,
    last_update_time  INTEGER NOT NULL
);

CREATE TABLE experiment_tags (
    experiment_id INTEGER NOT NULL REFERENCES experiments (experiment_id),
    key           TEXT    NOT NULL,
    value         TEXT    NOT NULL,
    PRIMARY KEY (experiment_id, key)
) WITHOUT ROWID;

CREATE TABLE runs (
    id              INTEGER PRIMARY KEY,
    run_uuid        TEXT    NOT NULL UNIQUE,
    experiment_id   INTEGER NOT NULL REFERENCES experiments (experiment_id),
    name            TEXT    NOT NULL,
    user_id         TEXT    NOT NULL DEFAULT '',
    status          TEXT    NOT NULL,
    start_time      INTEGER NOT NULL,
    end_time        INTEGER,
    artifact_uri    TEXT    NOT NULL,
    lifecycle_stage TEXT    NOT NULL DEFAULT 'active' CHECK (lifecycle_stage IN ('active', 'deleted')),
    deleted_time    INTEGER
);
-- The default order of runs/search is start_time DESC, run_uuid ASC within the experiments asked for.
CREATE INDEX runs_by_experiment ON runs (experiment_id, lifecycle_stage, start_time DESC, run_uuid);

CREATE TABLE params (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    key    TEXT    NOT NULL,
    value  TEXT    NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE INDEX params_by_key ON params (key, value);

CREATE TABLE tags (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    key    TEXT    NOT NULL,
    value  TEXT    NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE INDEX tags_by_key ON tags (key, value);

-- Every logged point. The key covers every column, as in the reference, so a retried write of
-- the same point is a no-op; its order is the history order (timestamp, step, value).
-- NaN cannot be stored in a REAL column (SQLite turns it into NULL), so it is value 0 + is_nan 1.
CREATE TABLE metrics (
    run_id    INTEGER NOT NULL REFERENCES runs (id),
    key       TEXT    NOT NULL,
    timestamp INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    value     REAL    NOT NULL,
    is_nan    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, key, timestamp, step, value, is_nan)
) WITHOUT ROWID;

-- The latest point per (run, key): max step, then max timestamp, then max value. Maintained in
-- the same transaction as the history insert; search and sort read only this table.
CREATE TABLE latest_metrics (
    run_id    INTEGER NOT NULL REFERENCES runs (id),
    key       TEXT    NOT NULL,
    timestamp INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    value     REAL    NOT NULL,
    is_nan    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE INDEX latest_metrics_by_key ON latest_metrics (key, value);

-- Keeps latest_metrics in step with every inserted point, in the inserting transaction. A
-- duplicate point (INSERT OR IGNORE) inserts nothing and so changes nothing here.
CREATE TRIGGER metrics_maintain_latest AFTER INSERT ON metrics
BEGIN
    INSERT INTO latest_metrics (run_id, key, timestamp, step, value, is_nan)
    VALUES (NEW.run_id, NEW.key, NEW.timestamp, NEW.step, NEW.value, NEW.is_nan)
    ON CONFLICT (run_id, key) DO UPDATE SET
        timestamp = excluded.timestamp, step = excluded.step, value = excluded.value, is_nan = excluded.is_nan
    WHERE (excluded.step, excluded.timestamp, excluded.value)
        > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value);
END;

-- Dataset inputs (runs/log-inputs). One row per (run, dataset, context).
CREATE TABLE run_inputs (
    run_id      INTEGER NOT NULL REFERENCES runs (id),
    name        TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    source_type TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    schema      TEXT,
    profile     TEXT,
    tags        TEXT    NOT NULL DEFAULT '[]',
    context     TEXT,
    PRIMARY KEY (run_id, name, digest)
) WITHOUT ROWID;

-- API tokens for the daemon. Only a SHA-256 of the secret is stored.
CREATE TABLE api_tokens (
    id           TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL,
    token_hash   TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);

-- MLflow's built-in experiment "0", which clients fall back to when none is set.
INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, creation_time, last_update_time)
VALUES (0, 'Default', 'mlflow-artifacts:/0', 'active', unixepoch() * 1000, unixepoch() * 1000);
