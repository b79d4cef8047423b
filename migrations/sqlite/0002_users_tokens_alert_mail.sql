-- Users, API tokens and alert e-mail. Times are microseconds since the Unix epoch (UTC).

ALTER TABLE users ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
UPDATE users SET updated_at = created_at;

-- A token made by signing in expires; a personal token never does (NULL).
ALTER TABLE tokens ADD COLUMN expires_at INTEGER;
CREATE INDEX tokens_by_user ON tokens (user_id, id);

-- Passing an alert on by e-mail is retried with backoff: how often it failed, why the
-- last time, and when to try again (NULL: at once).
ALTER TABLE alerts ADD COLUMN send_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN last_send_error TEXT;
ALTER TABLE alerts ADD COLUMN next_send_at INTEGER;
