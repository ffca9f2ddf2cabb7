-- spotsweep on PostgreSQL: the MLflow tracking tables (experiment tags, params, run tags,
-- metrics, the latest value of each metric, dataset inputs). The same columns and rules as the
-- SQLite schema; times are milliseconds since the epoch. A NaN value is stored as 0 with
-- is_nan = TRUE, as in SQLite, so that both backends order and filter NaN alike.

-- MLflow's built-in experiment "0", which clients fall back to when none is set (as SQLite's
-- migration 0001). Ids given by the database start at 1.
INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, creation_time, last_update_time)
VALUES (0, 'Default', 'mlflow-artifacts:/0', 'active',
        (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT, (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT);

CREATE TABLE experiment_tags (
    experiment_id BIGINT NOT NULL REFERENCES experiments (experiment_id),
    key           TEXT   NOT NULL,
    value         TEXT   NOT NULL,
    PRIMARY KEY (experiment_id, key)
);

CREATE INDEX runs_by_experiment_stage ON runs (experiment_id, lifecycle_stage, start_time DESC, run_uuid);

CREATE TABLE params (
    run_id BIGINT NOT NULL REFERENCES runs (id),
    key    TEXT   NOT NULL,
    value  TEXT   NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX params_by_key ON params (key, value);

CREATE TABLE tags (
    run_id BIGINT NOT NULL REFERENCES runs (id),
    key    TEXT   NOT NULL,
    value  TEXT   NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX tags_by_key ON tags (key, value);

-- Every logged point; `id` is the order points were acknowledged in.
CREATE TABLE metrics (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id    BIGINT           NOT NULL REFERENCES runs (id),
    key       TEXT             NOT NULL,
    timestamp BIGINT           NOT NULL,
    step      BIGINT           NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    is_nan    BOOLEAN          NOT NULL DEFAULT FALSE
);
CREATE INDEX metrics_by_run_key ON metrics (run_id, key, step, id);

-- Each (run, key)'s latest point: the highest step, then timestamp, then value.
CREATE TABLE latest_metrics (
    run_id    BIGINT           NOT NULL REFERENCES runs (id),
    key       TEXT             NOT NULL,
    timestamp BIGINT           NOT NULL,
    step      BIGINT           NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    is_nan    BOOLEAN          NOT NULL DEFAULT FALSE,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX latest_metrics_by_key ON latest_metrics (key, is_nan, value);

CREATE TABLE run_inputs (
    run_id      BIGINT NOT NULL REFERENCES runs (id),
    name        TEXT   NOT NULL,
    digest      TEXT   NOT NULL,
    source_type TEXT   NOT NULL,
    source      TEXT   NOT NULL,
    schema      TEXT,
    profile     TEXT,
    tags        TEXT   NOT NULL DEFAULT '[]',
    context     TEXT,
    PRIMARY KEY (run_id, name, digest)
);

-- A sweep's best completed trial (every completion asks), as SQLite's migration 0019.
CREATE INDEX trials_best ON trials (sweep_id, value, number) WHERE state = 'completed' AND rerun_of IS NULL;
CREATE INDEX trials_reruns ON trials (state, sweep_id) WHERE rerun_of IS NOT NULL;
