-- Console sessions. The cookie holds a random id; only its SHA-256 hash is stored, so
-- a copy of the database does not let anyone act as a signed-in user. Each session has
-- its own CSRF token, sent back in every console form. Times are microseconds since
-- the Unix epoch (UTC).
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);
