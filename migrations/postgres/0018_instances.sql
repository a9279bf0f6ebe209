-- Several server instances on one database. Each instance beats in server_instances while
-- it runs; an agent's row names the instance its channel is open on, so every console
-- shows it online. One instance at a time leads the work that must happen once
-- (scheduled starts, mail, alerts): its term is the one row of server_leader, whose epoch
-- grows with every new term and whose expiry (milliseconds, the database's clock) its
-- leader renews.
CREATE TABLE server_instances (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    beat_at     BIGINT NOT NULL
);
ALTER TABLE agents ADD COLUMN instance TEXT;
CREATE TABLE server_leader (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    instance    TEXT,
    epoch       BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
INSERT INTO server_leader (id, instance, epoch, expires_at) VALUES (1, NULL, 0, 0);
