-- The scheduler asks, per endpoint, whether any pending delivery is due. Ordered by
-- due time within each endpoint, the answer is the first index entry, however many
-- deliveries wait for later retries.
CREATE INDEX deliveries_pending_due_by_endpoint ON deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';

-- A claim refuses an endpoint while any of its deliveries holds a live lease; this
-- answers that with one probe, however many deliveries the endpoint has waiting.
CREATE INDEX deliveries_pending_leases_by_endpoint ON deliveries (endpoint_id, lease_until)
    WHERE status = 'pending' AND lease_until IS NOT NULL;
