-- Sites: named groups of agents with defaults (target, folder, schedule, notification) that
-- their jobs inherit unless they set their own.
CREATE TABLE sites (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    defaults    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

ALTER TABLE agents ADD COLUMN site_id INTEGER REFERENCES sites(id) ON DELETE SET NULL;
CREATE INDEX agents_by_site ON agents (site_id);
