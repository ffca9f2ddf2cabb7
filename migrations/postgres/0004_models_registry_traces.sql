-- spotsweep on PostgreSQL: MLflow 3's logged models and traces, and the model registry. The same
-- columns and rules as SQLite's migrations 0009 and 0010; times are milliseconds since the epoch.
--
-- Text that is sorted or returned in key order (names, ids, tag keys and values) is COLLATE "C":
-- byte order, as SQLite's BINARY, whatever the database's locale, so that both backends answer
-- searches and list tags in the same order.

-- A logged model's files live under its own artifact root, not the run's.
CREATE TABLE logged_models (
    -- 'm-' and 32 hex digits.
    model_id                  TEXT COLLATE "C" PRIMARY KEY,
    experiment_id             BIGINT NOT NULL REFERENCES experiments (experiment_id),
    name                      TEXT COLLATE "C" NOT NULL,
    model_type                TEXT COLLATE "C" NOT NULL DEFAULT '',
    -- The run that logged it (a run_uuid), '' for none.
    source_run_id             TEXT COLLATE "C" NOT NULL DEFAULT '',
    -- MLflow's LoggedModelStatus number: 0 unspecified, 1 pending, 2 ready, 3 upload failed.
    status                    BIGINT NOT NULL DEFAULT 1,
    -- <experiment artifact location>/models/<model_id>/artifacts
    artifact_uri              TEXT   NOT NULL,
    lifecycle_stage           TEXT   NOT NULL DEFAULT 'active' CHECK (lifecycle_stage IN ('active', 'deleted')),
    creation_timestamp_ms     BIGINT NOT NULL,
    last_updated_timestamp_ms BIGINT NOT NULL
);
CREATE INDEX logged_models_by_experiment
    ON logged_models (experiment_id, lifecycle_stage, creation_timestamp_ms DESC, model_id);
CREATE INDEX logged_models_by_run ON logged_models (source_run_id);

CREATE TABLE logged_model_params (
    model_id TEXT COLLATE "C" NOT NULL REFERENCES logged_models (model_id),
    key      TEXT COLLATE "C" NOT NULL,
    value    TEXT COLLATE "C" NOT NULL,
    -- Insertion order, which the reference answers in.
    position BIGINT NOT NULL,
    PRIMARY KEY (model_id, key)
);

CREATE TABLE logged_model_tags (
    model_id TEXT COLLATE "C" NOT NULL REFERENCES logged_models (model_id),
    key      TEXT COLLATE "C" NOT NULL,
    value    TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (model_id, key)
);

-- Every metric row logged with a model_id (all of them, not the latest: that is what the
-- reference answers). value NULL stands for NaN, as in SQLite, so that a NaN row compares false
-- with everything and sorts with the models that lack the metric (PostgreSQL's own NaN would
-- equal itself and sort above every number).
CREATE TABLE logged_model_metrics (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id       TEXT COLLATE "C" NOT NULL REFERENCES logged_models (model_id),
    key            TEXT COLLATE "C" NOT NULL,
    value          DOUBLE PRECISION,
    timestamp      BIGINT NOT NULL,
    step           BIGINT NOT NULL,
    run_id         TEXT   NOT NULL DEFAULT '',
    dataset_name   TEXT,
    dataset_digest TEXT
);
CREATE UNIQUE INDEX logged_model_metrics_once ON logged_model_metrics
    (model_id, key, timestamp, step, run_id, COALESCE(dataset_name, ''), COALESCE(dataset_digest, ''),
     COALESCE(value, 'NaN'::DOUBLE PRECISION));

-- A run's model inputs and outputs (runs/log-inputs `models`, runs/outputs).
CREATE TABLE run_models (
    run_id    BIGINT NOT NULL REFERENCES runs (id),
    direction TEXT   NOT NULL CHECK (direction IN ('input', 'output')),
    model_id  TEXT   NOT NULL,
    -- The step of an output; -1 for inputs.
    step      BIGINT NOT NULL DEFAULT -1,
    position  BIGINT NOT NULL,
    PRIMARY KEY (run_id, direction, model_id, step)
);

-- Traces: their spans are a `traces.json` artifact; the database keeps what search needs.
CREATE TABLE traces (
    -- 'tr-' and 32 hex digits, chosen by the client.
    trace_id              TEXT COLLATE "C" PRIMARY KEY,
    experiment_id         BIGINT NOT NULL REFERENCES experiments (experiment_id),
    client_request_id     TEXT COLLATE "C",
    request_time_ms       BIGINT NOT NULL,
    execution_duration_ms BIGINT,
    -- OK, ERROR, IN_PROGRESS or STATE_UNSPECIFIED.
    state                 TEXT COLLATE "C" NOT NULL,
    request_preview       TEXT,
    response_preview      TEXT
);
CREATE INDEX traces_by_experiment ON traces (experiment_id, request_time_ms DESC, trace_id);

CREATE TABLE trace_tags (
    trace_id TEXT COLLATE "C" NOT NULL REFERENCES traces (trace_id) ON DELETE CASCADE,
    key      TEXT COLLATE "C" NOT NULL,
    value    TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (trace_id, key)
);

CREATE TABLE trace_metadata (
    trace_id TEXT COLLATE "C" NOT NULL REFERENCES traces (trace_id) ON DELETE CASCADE,
    key      TEXT COLLATE "C" NOT NULL,
    value    TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (trace_id, key)
);

-- The model registry. A registered model has an internal integer key, so that a rename changes
-- one row and its versions, tags and aliases follow it. Deleting a registered model is a hard
-- delete that cascades (its name can be registered again and its versions restart at 1).
-- Deleting a version is soft: the row stays, redacted, so that its number is never given to
-- another version. Every write to a model's versions, tags or aliases locks its row first
-- (SELECT ... FOR UPDATE), so that daemons sharing the database take turns per model.
CREATE TABLE registered_models (
    id                     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Unique and case-sensitive, as in the reference.
    name                   TEXT COLLATE "C" NOT NULL UNIQUE,
    -- NULL when never set or cleared by an update without one (the wire omits it then).
    description            TEXT,
    creation_timestamp     BIGINT NOT NULL,
    -- Bumped by updates, renames and version create, delete and stage transitions.
    last_updated_timestamp BIGINT NOT NULL
);

CREATE TABLE registered_model_tags (
    registered_model_id BIGINT NOT NULL REFERENCES registered_models (id) ON DELETE CASCADE,
    key                 TEXT COLLATE "C" NOT NULL,
    value               TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (registered_model_id, key)
);

CREATE TABLE model_versions (
    registered_model_id    BIGINT NOT NULL REFERENCES registered_models (id) ON DELETE CASCADE,
    -- 1 + the highest version this model ever had, deleted ones included.
    version                BIGINT NOT NULL,
    creation_timestamp     BIGINT NOT NULL,
    last_updated_timestamp BIGINT NOT NULL,
    description            TEXT,
    -- The source as registered (a `models:/name@alias` source is stored as `models:/name/N`).
    source                 TEXT COLLATE "C" NOT NULL,
    -- Where the version's files are, what get-download-uri answers: a logged model's artifact
    -- root for `models:/m-...`, the referenced version's location for `models:/name/N`, the
    -- source itself otherwise.
    storage_location       TEXT   NOT NULL,
    -- The run that produced it (a run_uuid), '' for none.
    run_id                 TEXT COLLATE "C" NOT NULL DEFAULT '',
    -- The logged model it was registered from (`m-...`), NULL for none.
    model_id               TEXT,
    run_link               TEXT   NOT NULL DEFAULT '',
    current_stage          TEXT   NOT NULL DEFAULT 'None'
        CHECK (current_stage IN ('None', 'Staging', 'Production', 'Archived')),
    status                 TEXT   NOT NULL DEFAULT 'READY'
        CHECK (status IN ('PENDING_REGISTRATION', 'FAILED_REGISTRATION', 'READY')),
    -- Set when the version is deleted; such a row only reserves its number.
    deleted_timestamp      BIGINT,
    PRIMARY KEY (registered_model_id, version)
);
-- Latest version per stage, and the versions of a run (the `run_id = '...'` search).
CREATE INDEX model_versions_by_stage ON model_versions (registered_model_id, current_stage, version)
    WHERE deleted_timestamp IS NULL;
CREATE INDEX model_versions_by_run ON model_versions (run_id) WHERE deleted_timestamp IS NULL;

CREATE TABLE model_version_tags (
    registered_model_id BIGINT NOT NULL,
    version             BIGINT NOT NULL,
    key                 TEXT COLLATE "C" NOT NULL,
    value               TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (registered_model_id, version, key),
    FOREIGN KEY (registered_model_id, version) REFERENCES model_versions (registered_model_id, version)
        ON DELETE CASCADE
);

CREATE TABLE registered_model_aliases (
    registered_model_id BIGINT NOT NULL,
    alias               TEXT COLLATE "C" NOT NULL,
    version             BIGINT NOT NULL,
    PRIMARY KEY (registered_model_id, alias),
    FOREIGN KEY (registered_model_id, version) REFERENCES model_versions (registered_model_id, version)
        ON DELETE CASCADE
);
CREATE INDEX registered_model_aliases_by_version ON registered_model_aliases (registered_model_id, version);
