-- Herald's schema on PostgreSQL. It mirrors migrations/sqlite/ (0001 to 0004, folded
-- into one here, since no PostgreSQL database predates them) so that both stores read
-- alike: times are microseconds since the Unix epoch (UTC) in a BIGINT.

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT UNIQUE,
    name TEXT NOT NULL,
    password_hash TEXT,
    role TEXT NOT NULL CHECK (role IN ('super_admin', 'admin')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    -- A token made by signing in expires; a personal token never does (NULL).
    expires_at BIGINT
);

CREATE INDEX tokens_by_user ON tokens (user_id, id);

CREATE TABLE event_types (
    name TEXT PRIMARY KEY,
    trigger_name TEXT NOT NULL,
    action TEXT NOT NULL,
    description TEXT NOT NULL,
    builtin BOOLEAN NOT NULL
);

-- A claim locks its endpoint's row (FOR NO KEY UPDATE) so that claims for one endpoint
-- are taken one at a time across every process; see ARCHITECTURE.md, "Several processes".
CREATE TABLE endpoints (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    ordering TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_until BIGINT,
    disabled_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_triggered_at BIGINT
);

CREATE TABLE endpoint_events (
    event_type TEXT NOT NULL,
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    PRIMARY KEY (event_type, endpoint_id)
);

CREATE INDEX endpoint_events_by_endpoint ON endpoint_events (endpoint_id);

CREATE TABLE events (
    id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    object_key TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    delivery_count BIGINT NOT NULL
);

-- Retention removes old events in order of age.
CREATE INDEX events_by_age ON events (created_at);

-- seq is the order in which deliveries were accepted; an endpoint receives its
-- deliveries in seq order while it answers.
CREATE TABLE deliveries (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL REFERENCES events(id),
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    event_type TEXT NOT NULL,
    object_key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    test BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    first_attempt_at BIGINT,
    next_attempt_at BIGINT,
    last_attempt_at BIGINT,
    attempt_count BIGINT NOT NULL DEFAULT 0,
    lease_until BIGINT
);

CREATE INDEX deliveries_pending_by_endpoint ON deliveries (endpoint_id, seq)
    WHERE status = 'pending';
CREATE INDEX deliveries_pending_by_object ON deliveries (endpoint_id, object_key, seq)
    WHERE status = 'pending';
CREATE INDEX deliveries_pending_due ON deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX deliveries_pending_leases ON deliveries (lease_until)
    WHERE status = 'pending' AND lease_until IS NOT NULL;
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, seq);
CREATE INDEX deliveries_by_event ON deliveries (event_id);
-- Finding deliveries whose retry window ended while they waited.
CREATE INDEX deliveries_pending_by_first_attempt ON deliveries (first_attempt_at)
    WHERE status = 'pending' AND first_attempt_at IS NOT NULL;

-- response_body is BYTEA, not TEXT: a receiver's reply may hold a NUL byte, which
-- PostgreSQL refuses in TEXT. The bytes are the reply as Herald read it (at most
-- 64 KiB, made valid UTF-8), and are read back as text.
CREATE TABLE attempts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_seq BIGINT NOT NULL REFERENCES deliveries(seq) ON DELETE CASCADE,
    attempted_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status_code BIGINT,
    response_headers TEXT NOT NULL,
    response_body BYTEA,
    response_truncated BOOLEAN NOT NULL,
    -- A delivery retried for hours keeps the reply bodies of its first and latest
    -- attempts; the bodies in between are dropped, and this says so.
    response_body_dropped BOOLEAN NOT NULL DEFAULT false,
    error_kind TEXT,
    error TEXT
);

CREATE INDEX attempts_by_delivery ON attempts (delivery_seq, id);

-- One row per endpoint that is failing now; removed when it succeeds again.
CREATE TABLE endpoint_outages (
    endpoint_id TEXT PRIMARY KEY REFERENCES endpoints(id) ON DELETE CASCADE,
    failing_since BIGINT NOT NULL,
    alerted_at BIGINT,
    last_error TEXT
);

CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    detail TEXT NOT NULL,
    sent_at BIGINT,
    -- Passing an alert on by e-mail is retried with backoff: how often it failed, why
    -- the last time, and when to try again (NULL: at once). A process that takes an
    -- alert to send moves next_send_at ahead first, as a lease (see unsent_alerts).
    send_attempts BIGINT NOT NULL DEFAULT 0,
    last_send_error TEXT,
    next_send_at BIGINT
);

CREATE INDEX alerts_unsent ON alerts (created_at) WHERE sent_at IS NULL;

-- Console sessions. The cookie holds a random id; only its SHA-256 hash is stored, so
-- a copy of the database does not let anyone act as a signed-in user. Each session has
-- its own CSRF token, sent back in every console form.
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);
