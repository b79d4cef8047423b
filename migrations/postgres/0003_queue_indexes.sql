-- A claim walks its endpoint's pending deliveries in `seq` order and stops after a
-- batch. Two other indexes give rows of an endpoint in that order too, the primary key
-- and the one over its whole history, and with the statistics of a queue that changes
-- faster than they are gathered the planner took them and read every delivery the
-- endpoint had ever had, sent ones included. The claim orders by `seq + 0`, which only
-- this index holds, so it is the one plan that needs no sort, and the writer's batches
-- rule sorts out.
DROP INDEX deliveries_pending_by_endpoint;
CREATE INDEX deliveries_pending_by_endpoint ON deliveries (endpoint_id, (seq + 0))
    WHERE status = 'pending';

-- The scheduler asks each endpoint when its next delivery is due, with one probe of
-- `deliveries_pending_due_by_endpoint`. An index of every pending delivery by due time
-- served the same question for all endpoints at once, and with stale statistics the
-- planner scanned it for each endpoint: every due delivery of a stalled endpoint, once
-- a second. Without it every new delivery also costs one index entry less.
DROP INDEX deliveries_pending_due;
