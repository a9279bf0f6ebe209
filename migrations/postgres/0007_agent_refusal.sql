-- Why the server last refused an agent's channel for good (another protocol version), and
-- when: shown on the agent's page, since the agent stops instead of retrying. Cleared when
-- the agent next connects.
ALTER TABLE agents ADD COLUMN refusal TEXT;
ALTER TABLE agents ADD COLUMN refused_at BIGINT;
