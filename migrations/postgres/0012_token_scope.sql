-- An API token's own role (at most its owner's; none for tokens made before: the owner's)
-- and when it stops working (none for tokens made before: never).
ALTER TABLE api_tokens ADD COLUMN role TEXT;
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
