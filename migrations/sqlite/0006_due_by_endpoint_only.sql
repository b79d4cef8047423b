-- The scheduler asks each endpoint when its next delivery is due, with one probe of
-- `deliveries_pending_due_by_endpoint`; an index of every pending delivery by due time
-- is no longer read, and each new delivery costs one index entry less without it.
DROP INDEX deliveries_pending_due;
