-- Sites: named groups of agents with defaults (target, folder, schedule, notification) that
-- their jobs inherit unless they set their own.
CREATE TABLE sites (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    defaults    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

ALTER TABLE agents ADD COLUMN site_id BIGINT REFERENCES sites(id) ON DELETE SET NULL;
CREATE INDEX agents_by_site ON agents (site_id);
