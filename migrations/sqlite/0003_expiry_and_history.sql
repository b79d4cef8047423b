-- Finding deliveries whose retry window ended while they waited.
CREATE INDEX deliveries_pending_by_first_attempt ON deliveries (first_attempt_at)
    WHERE status = 'pending' AND first_attempt_at IS NOT NULL;
