-- Storage targets (credentials sealed by the vault), jobs, runs with their reports, and
-- the images runs wrote.
CREATE TABLE targets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    url         TEXT NOT NULL,
    username    TEXT,
    secret      TEXT,
    ca_pem      TEXT,
    notes       TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    enabled     INTEGER NOT NULL,
    spec        TEXT NOT NULL,
    secret      TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id         INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
    agent_id       INTEGER NOT NULL REFERENCES agents(id),
    name           TEXT NOT NULL,
    cause          TEXT NOT NULL,
    scheduled_for  INTEGER,
    state          TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    ended_at       INTEGER,
    bytes_read     INTEGER NOT NULL DEFAULT 0,
    bytes_written  INTEGER NOT NULL DEFAULT 0,
    report         TEXT,
    UNIQUE (job_id, agent_id, scheduled_for)
);
CREATE INDEX runs_by_job ON runs (job_id, id);
CREATE INDEX runs_by_agent ON runs (agent_id, id);
CREATE INDEX runs_by_state ON runs (state);

CREATE TABLE images (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    job_id      INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
    agent_id    INTEGER NOT NULL REFERENCES agents(id),
    target_id   INTEGER REFERENCES targets(id) ON DELETE SET NULL,
    name        TEXT NOT NULL,
    method      TEXT NOT NULL,
    base_name   TEXT,
    image_id    TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    verified    INTEGER,
    created_at  INTEGER NOT NULL,
    deleted_at  INTEGER
);
CREATE INDEX images_by_job ON images (job_id, agent_id, id);
