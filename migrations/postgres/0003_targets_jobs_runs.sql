-- Storage targets (credentials sealed by the vault), jobs, runs with their reports, and
-- the images runs wrote.
CREATE TABLE targets (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    url         TEXT NOT NULL,
    username    TEXT,
    secret      TEXT,
    ca_pem      TEXT,
    notes       TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE jobs (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    enabled     BIGINT NOT NULL,
    spec        TEXT NOT NULL,
    secret      TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE runs (
    id             BIGSERIAL PRIMARY KEY,
    job_id         BIGINT REFERENCES jobs(id) ON DELETE SET NULL,
    agent_id       BIGINT NOT NULL REFERENCES agents(id),
    name           TEXT NOT NULL,
    cause          TEXT NOT NULL,
    scheduled_for  BIGINT,
    state          TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    started_at     BIGINT,
    ended_at       BIGINT,
    bytes_read     BIGINT NOT NULL DEFAULT 0,
    bytes_written  BIGINT NOT NULL DEFAULT 0,
    report         TEXT,
    UNIQUE (job_id, agent_id, scheduled_for)
);
CREATE INDEX runs_by_job ON runs (job_id, id);
CREATE INDEX runs_by_agent ON runs (agent_id, id);
CREATE INDEX runs_by_state ON runs (state);

CREATE TABLE images (
    id          BIGSERIAL PRIMARY KEY,
    run_id      BIGINT NOT NULL REFERENCES runs(id),
    job_id      BIGINT REFERENCES jobs(id) ON DELETE SET NULL,
    agent_id    BIGINT NOT NULL REFERENCES agents(id),
    target_id   BIGINT REFERENCES targets(id) ON DELETE SET NULL,
    name        TEXT NOT NULL,
    method      TEXT NOT NULL,
    base_name   TEXT,
    image_id    TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    verified    BIGINT,
    created_at  BIGINT NOT NULL,
    deleted_at  BIGINT
);
CREATE INDEX images_by_job ON images (job_id, agent_id, id);
