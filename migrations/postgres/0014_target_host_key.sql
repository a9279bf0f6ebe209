-- The SFTP server's host key an admin confirmed (SHA256:...): agents refuse any other, and
-- jobs do not go to an SFTP target without one.
ALTER TABLE targets ADD COLUMN host_key TEXT;
