-- The scheduler asks, per endpoint, whether any pending delivery is due. Ordered by
-- due time within each endpoint, the answer is the first index entry, however many
-- deliveries wait for later retries.
CREATE INDEX deliveries_pending_due_by_endpoint ON deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
