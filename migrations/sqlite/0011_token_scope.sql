-- What an API token may touch: `write` (everything its role allows, as before) or `read` (every
-- page and every read, nothing that changes state). Tokens made before this schema keep `write`.
ALTER TABLE api_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'write' CHECK (scope IN ('read', 'write'));
