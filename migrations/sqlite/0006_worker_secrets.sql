-- renderfarm embedded store, version 6: a token may be a registered worker's
-- own secret (worker_id) or a browser's session of another token
-- (session_of). A worker's secrets are revoked together when it is removed.
ALTER TABLE tokens ADD COLUMN worker_id TEXT;
ALTER TABLE tokens ADD COLUMN session_of TEXT;
CREATE INDEX tokens_of_worker ON tokens (worker_id) WHERE worker_id IS NOT NULL;
