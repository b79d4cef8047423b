-- Herald's schema on SQLite. Times are microseconds since the Unix epoch (UTC).

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT UNIQUE,
    name TEXT NOT NULL,
    password_hash TEXT,
    role TEXT NOT NULL CHECK (role IN ('super_admin', 'admin')),
    created_at INTEGER NOT NULL
);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER
);

CREATE TABLE event_types (
    name TEXT PRIMARY KEY,
    trigger_name TEXT NOT NULL,
    action TEXT NOT NULL,
    description TEXT NOT NULL,
    builtin INTEGER NOT NULL
);

CREATE TABLE endpoints (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    ordering TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_until INTEGER,
    disabled_reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_triggered_at INTEGER
);

CREATE TABLE endpoint_events (
    event_type TEXT NOT NULL,
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    PRIMARY KEY (event_type, endpoint_id)
);

CREATE TABLE events (
    id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    object_key TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    delivery_count INTEGER NOT NULL
);

-- seq is the order in which deliveries were accepted; an endpoint receives its
-- deliveries in seq order while it answers.
CREATE TABLE deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL REFERENCES events(id),
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    event_type TEXT NOT NULL,
    object_key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    test INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    first_attempt_at INTEGER,
    next_attempt_at INTEGER,
    last_attempt_at INTEGER,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    lease_until INTEGER
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

CREATE TABLE attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_seq INTEGER NOT NULL REFERENCES deliveries(seq) ON DELETE CASCADE,
    attempted_at INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status_code INTEGER,
    response_headers TEXT NOT NULL,
    response_body TEXT,
    response_truncated INTEGER NOT NULL,
    error_kind TEXT,
    error TEXT
);

CREATE INDEX attempts_by_delivery ON attempts (delivery_seq, id);

-- One row per endpoint that is failing now; removed when it succeeds again.
CREATE TABLE endpoint_outages (
    endpoint_id TEXT PRIMARY KEY REFERENCES endpoints(id) ON DELETE CASCADE,
    failing_since INTEGER NOT NULL,
    alerted_at INTEGER,
    last_error TEXT
);

CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    detail TEXT NOT NULL,
    sent_at INTEGER
);

CREATE INDEX alerts_unsent ON alerts (created_at) WHERE sent_at IS NULL;
