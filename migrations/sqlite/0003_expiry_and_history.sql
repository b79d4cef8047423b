-- Finding deliveries whose retry window ended while they waited.
CREATE INDEX deliveries_pending_by_first_attempt ON deliveries (first_attempt_at)
    WHERE status = 'pending' AND first_attempt_at IS NOT NULL;

-- A delivery retried for hours keeps the reply bodies of its first and latest attempts;
-- the bodies in between are dropped, and this says so.
ALTER TABLE attempts ADD COLUMN response_body_dropped INTEGER NOT NULL DEFAULT 0;

-- Retention removes old events in order of age.
CREATE INDEX events_by_age ON events (created_at);
