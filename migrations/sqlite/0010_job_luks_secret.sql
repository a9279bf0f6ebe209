-- A job's LUKS passphrase, for a LUKS-encrypted source: sealed by the vault under its own
-- context (`job-luks:<id>`), beside the image password in `secret`. Never shown.
ALTER TABLE jobs ADD COLUMN luks_secret TEXT;
