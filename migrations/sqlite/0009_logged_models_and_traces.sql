-- MLflow 3: logged models (a model's files live under its own artifact root, not the run's) and
-- traces (their spans are a `traces.json` artifact; the database keeps what search needs).

CREATE TABLE logged_models (
    -- 'm-' and 32 hex digits.
    model_id                  TEXT    PRIMARY KEY,
    experiment_id             INTEGER NOT NULL REFERENCES experiments (experiment_id),
    name                      TEXT    NOT NULL,
    model_type                TEXT    NOT NULL DEFAULT '',
    -- The run that logged it (a run_uuid), '' for none.
    source_run_id             TEXT    NOT NULL DEFAULT '',
    -- MLflow's LoggedModelStatus number: 0 unspecified, 1 pending, 2 ready, 3 upload failed.
    status                    INTEGER NOT NULL DEFAULT 1,
    -- <experiment artifact location>/models/<model_id>/artifacts
    artifact_uri              TEXT    NOT NULL,
    lifecycle_stage           TEXT    NOT NULL DEFAULT 'active' CHECK (lifecycle_stage IN ('active', 'deleted')),
    creation_timestamp_ms     INTEGER NOT NULL,
    last_updated_timestamp_ms INTEGER NOT NULL
);
CREATE INDEX logged_models_by_experiment
    ON logged_models (experiment_id, lifecycle_stage, creation_timestamp_ms DESC, model_id);
CREATE INDEX logged_models_by_run ON logged_models (source_run_id);

CREATE TABLE logged_model_params (
    model_id TEXT    NOT NULL REFERENCES logged_models (model_id),
    key      TEXT    NOT NULL,
    value    TEXT    NOT NULL,
    -- Insertion order, which the reference answers in.
    position INTEGER NOT NULL,
    PRIMARY KEY (model_id, key)
);

CREATE TABLE logged_model_tags (
    model_id TEXT NOT NULL REFERENCES logged_models (model_id),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);

-- Every metric row logged with a model_id (all of them, not the latest: that is what the
-- reference answers). value NULL stands for NaN, which SQLite cannot store as a REAL.
CREATE TABLE logged_model_metrics (
    id             INTEGER PRIMARY KEY,
    model_id       TEXT    NOT NULL REFERENCES logged_models (model_id),
    key            TEXT    NOT NULL,
    value          REAL,
    timestamp      INTEGER NOT NULL,
    step           INTEGER NOT NULL,
    run_id         TEXT    NOT NULL DEFAULT '',
    dataset_name   TEXT,
    dataset_digest TEXT
);
CREATE UNIQUE INDEX logged_model_metrics_once ON logged_model_metrics
    (model_id, key, timestamp, step, run_id, COALESCE(dataset_name, ''), COALESCE(dataset_digest, ''), COALESCE(value, 'nan'));

-- A run's model inputs and outputs (runs/log-inputs `models`, runs/outputs).
CREATE TABLE run_models (
    run_id    INTEGER NOT NULL REFERENCES runs (id),
    direction TEXT    NOT NULL CHECK (direction IN ('input', 'output')),
    model_id  TEXT    NOT NULL,
    -- The step of an output; -1 for inputs.
    step      INTEGER NOT NULL DEFAULT -1,
    position  INTEGER NOT NULL,
    PRIMARY KEY (run_id, direction, model_id, step)
);

CREATE TABLE traces (
    -- 'tr-' and 32 hex digits, chosen by the client.
    trace_id              TEXT    PRIMARY KEY,
    experiment_id         INTEGER NOT NULL REFERENCES experiments (experiment_id),
    client_request_id     TEXT,
    request_time_ms       INTEGER NOT NULL,
    execution_duration_ms INTEGER,
    -- OK, ERROR, IN_PROGRESS or STATE_UNSPECIFIED.
    state                 TEXT    NOT NULL,
    request_preview       TEXT,
    response_preview      TEXT
);
CREATE INDEX traces_by_experiment ON traces (experiment_id, request_time_ms DESC, trace_id);

CREATE TABLE trace_tags (
    trace_id TEXT NOT NULL REFERENCES traces (trace_id) ON DELETE CASCADE,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (trace_id, key)
);

CREATE TABLE trace_metadata (
    trace_id TEXT NOT NULL REFERENCES traces (trace_id) ON DELETE CASCADE,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (trace_id, key)
);
