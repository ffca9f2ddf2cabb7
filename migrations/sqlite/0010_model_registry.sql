-- The MLflow model registry: registered models, their versions, tags and aliases.
--
-- A registered model has an internal integer key, so that a rename changes one row and its
-- versions, tags and aliases follow it. Deleting a registered model is a hard delete that
-- cascades (its name can be registered again and its versions restart at 1). Deleting a version
-- is soft: the row stays, redacted, so that its number is never given to another version.

CREATE TABLE registered_models (
    id                     INTEGER PRIMARY KEY,
    -- Unique and case-sensitive, as in the reference.
    name                   TEXT    NOT NULL UNIQUE,
    -- NULL when never set or cleared by an update without one (the wire omits it then).
    description            TEXT,
    creation_timestamp     INTEGER NOT NULL,
    -- Bumped by updates, renames and version create, delete and stage transitions.
    last_updated_timestamp INTEGER NOT NULL
);

CREATE TABLE registered_model_tags (
    registered_model_id INTEGER NOT NULL REFERENCES registered_models (id) ON DELETE CASCADE,
    key                 TEXT    NOT NULL,
    value               TEXT    NOT NULL,
    PRIMARY KEY (registered_model_id, key)
) WITHOUT ROWID;

CREATE TABLE model_versions (
    registered_model_id    INTEGER NOT NULL REFERENCES registered_models (id) ON DELETE CASCADE,
    -- 1 + the highest version this model ever had, deleted ones included.
    version                INTEGER NOT NULL,
    creation_timestamp     INTEGER NOT NULL,
    last_updated_timestamp INTEGER NOT NULL,
    description            TEXT,
    -- The source as registered (a `models:/name@alias` source is stored as `models:/name/N`).
    source                 TEXT    NOT NULL,
    -- Where the version's files are, what get-download-uri answers: a logged model's artifact
    -- root for `models:/m-...`, the referenced version's location for `models:/name/N`, the
    -- source itself otherwise.
    storage_location       TEXT    NOT NULL,
    -- The run that produced it (a run_uuid), '' for none.
    run_id                 TEXT    NOT NULL DEFAULT '',
    -- The logged model it was registered from (`m-...`), NULL for none.
    model_id               TEXT,
    run_link               TEXT    NOT NULL DEFAULT '',
    current_stage          TEXT    NOT NULL DEFAULT 'None'
        CHECK (current_stage IN ('None', 'Staging', 'Production', 'Archived')),
    status                 TEXT    NOT NULL DEFAULT 'READY'
        CHECK (status IN ('PENDING_REGISTRATION', 'FAILED_REGISTRATION', 'READY')),
    -- Set when the version is deleted; such a row only reserves its number.
    deleted_timestamp      INTEGER,
    PRIMARY KEY (registered_model_id, version)
);
-- Latest version per stage, and the versions of a run (the `run_id = '...'` search).
CREATE INDEX model_versions_by_stage ON model_versions (registered_model_id, current_stage, version)
    WHERE deleted_timestamp IS NULL;
CREATE INDEX model_versions_by_run ON model_versions (run_id) WHERE deleted_timestamp IS NULL;

CREATE TABLE model_version_tags (
    registered_model_id INTEGER NOT NULL,
    version             INTEGER NOT NULL,
    key                 TEXT    NOT NULL,
    value               TEXT    NOT NULL,
    PRIMARY KEY (registered_model_id, version, key),
    FOREIGN KEY (registered_model_id, version) REFERENCES model_versions (registered_model_id, version)
        ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE registered_model_aliases (
    registered_model_id INTEGER NOT NULL,
    alias               TEXT    NOT NULL,
    version             INTEGER NOT NULL,
    PRIMARY KEY (registered_model_id, alias),
    FOREIGN KEY (registered_model_id, version) REFERENCES model_versions (registered_model_id, version)
        ON DELETE CASCADE
) WITHOUT ROWID;
