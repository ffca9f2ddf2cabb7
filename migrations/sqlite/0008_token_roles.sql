-- Token roles and expiry. The admin token (the one written to admin.token at first start) is the
-- only `admin`; every other API token is a `user`, which cannot touch it.
ALTER TABLE api_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user'));
-- Milliseconds since the epoch after which the token is refused; NULL: never.
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
UPDATE api_tokens SET role = 'admin'
 WHERE id = (SELECT id FROM api_tokens WHERE name = 'admin' ORDER BY created_at, id LIMIT 1);
-- Before this schema local agents handed their token to every trial: a token made for them
-- (when the admin token file was gone) may be known to any trial that ran; revoke it. Local
-- agents now get tokens of their own at each start.
UPDATE api_tokens SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000
 WHERE name = 'local-agents' AND revoked_at IS NULL;
