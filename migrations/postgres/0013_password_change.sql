-- A user who must choose a new password before doing anything else (the first admin, whose
-- password the server generated; users an admin created with "must change").
ALTER TABLE users ADD COLUMN must_change_password BIGINT NOT NULL DEFAULT 0;
