-- The columns PostgreSQL's instances migration adds. An SQLite store has one instance (the
-- data folder's lock file sees to that), so it never elects a leader; the agent's
-- instance column keeps one schema for the queries of both engines.
ALTER TABLE agents ADD COLUMN instance TEXT;
