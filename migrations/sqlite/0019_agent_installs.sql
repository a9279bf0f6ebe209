-- Agents installed (or upgraded) over SSH from the console: one row per machine, with
-- the steps as the installer took them (JSON) and the agent it enrolled.
CREATE TABLE agent_installs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    host        TEXT NOT NULL,
    port        INTEGER NOT NULL,
    user_name   TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL,
    steps       TEXT NOT NULL,
    agent_id    BIGINT REFERENCES agents (id) ON DELETE SET NULL,
    created_by  TEXT NOT NULL,
    -- The server instance that runs it.
    instance    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    ended_at    BIGINT
);
