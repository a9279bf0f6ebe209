-- Enrolment tokens and agents.
CREATE TABLE enrollment_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    uses_left   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE agents (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname      TEXT NOT NULL,
    secret_hash   TEXT NOT NULL,
    enrolled_at   INTEGER NOT NULL,
    token_id      INTEGER REFERENCES enrollment_tokens(id),
    revoked_at    INTEGER,
    last_seen_at  INTEGER,
    os            TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT '',
    inventory     TEXT,
    inventory_at  INTEGER
);
