-- Enrolment tokens and agents.
CREATE TABLE enrollment_tokens (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    uses_left   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE agents (
    id            BIGSERIAL PRIMARY KEY,
    hostname      TEXT NOT NULL,
    secret_hash   TEXT NOT NULL,
    enrolled_at   BIGINT NOT NULL,
    token_id      BIGINT REFERENCES enrollment_tokens(id),
    revoked_at    BIGINT,
    last_seen_at  BIGINT,
    os            TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT '',
    inventory     TEXT,
    inventory_at  BIGINT
);
