//! The hot path on PostgreSQL: ingest, claims and attempt records, each run inside the
//! group-committed transaction of [`super::writer`].
//!
//! Several processes share the queue. Two rules keep them from stepping on each other:
//!
//! - A claim first locks its endpoint's row (`FOR NO KEY UPDATE`), so claims for one
//!   endpoint are made one at a time across all processes, and then refuses the endpoint
//!   while any of its deliveries holds a live lease. So at most one lane per endpoint
//!   is active anywhere, and per-endpoint order holds with many processes. The lock
//!   mode lets ingest go on: inserting a delivery takes only a `KEY SHARE` lock on the
//!   endpoint row, which `NO KEY UPDATE` does not block.
//! - Recording an attempt takes the same endpoint lock first, before any delivery row,
//!   so every transaction takes its locks in the order endpoint, then deliveries.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::Row;

use super::{delivery_from_row, endpoint_from_row, DELIVERY_COLUMNS, ENDPOINT_COLUMNS};
use crate::clock::Timestamp;
use crate::ids::new_id;
use crate::model::{
    AfterAttempt, AlertDetail, AlertKind, Attempt, DeliveryStatus, NewEvent, Ordering,
};
use crate::store::{
    from_micros, micros, Accepted, AttemptOutcome, ClaimRequest, Claimed, LastFailure, StoreError,
    StoreResult,
};

/// How many subscribers each event type had when an event of it was last stored, so
/// that ingest sends enough delivery ids for one statement; a type that gained
/// subscribers since costs a second one. Ids are made here, not by the database,
/// because they are ULIDs.
static SUBSCRIBERS: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Default::default);

/// Delivery ids to send with an event of this type.
fn ids_for(event_type: &str) -> usize {
    let known = SUBSCRIBERS.lock().expect("subscribers lock");
    known.get(event_type).copied().unwrap_or(DEFAULT_IDS)
}

fn remember_subscribers(event_type: &str, count: usize) {
    let mut known = SUBSCRIBERS.lock().expect("subscribers lock");
    if known.get(event_type) != Some(&count) {
        known.insert(event_type.to_string(), count);
    }
}

/// Delivery ids sent with an event of a type not seen yet.
const DEFAULT_IDS: usize = 8;

/// Stores an event and its deliveries, in one statement that also checks the event type
/// and an earlier request with the same idempotency key. A concurrent insert of the same
/// key by another process waits for that one to commit and is then answered as a replay.
pub(super) async fn insert_event_in(
    conn: &mut PgConnection,
    event: &NewEvent,
) -> StoreResult<Accepted> {
    let mut ids = ids_for(&event.event_type);
    loop {
        let delivery_ids: Vec<String> = (0..ids).map(|_| new_id("dlv")).collect();
        let row = sqlx::query(
            "WITH earlier AS ( \
               SELECT id, request_hash, delivery_count FROM events \
               WHERE idempotency_key = $6), \
             targets AS ( \
               SELECT s.endpoint_id, row_number() OVER (ORDER BY s.endpoint_id) AS n \
               FROM endpoint_events s JOIN endpoints e ON e.id = s.endpoint_id \
               WHERE s.event_type = $2 AND e.enabled), \
             facts AS ( \
               SELECT EXISTS (SELECT 1 FROM event_types WHERE name = $2) AS known, \
               (SELECT count(*) FROM targets) AS wanted), \
             ev AS ( \
               INSERT INTO events (id, event_type, object_key, body, created_at, \
                 idempotency_key, request_hash, delivery_count) \
               SELECT $1, $2, $3, $4, $5, $6, $7, facts.wanted FROM facts \
               WHERE facts.known AND facts.wanted <= cardinality($8::text[]) \
               AND NOT EXISTS (SELECT 1 FROM earlier) \
               ON CONFLICT (idempotency_key) DO NOTHING RETURNING id), \
             d AS ( \
               INSERT INTO deliveries (id, event_id, endpoint_id, event_type, object_key, \
                 status, test, created_at, next_attempt_at) \
               SELECT ($8::text[])[t.n], ev.id, t.endpoint_id, $2, $3, 'pending', false, \
                 $5, $5 \
               FROM targets t CROSS JOIN ev ORDER BY t.endpoint_id) \
             SELECT facts.known, facts.wanted, (SELECT count(*) FROM ev) AS inserted, \
               ARRAY(SELECT endpoint_id FROM targets ORDER BY n) AS endpoints, \
               earlier.id, earlier.request_hash, earlier.delivery_count \
             FROM facts LEFT JOIN earlier ON true",
        )
        .bind(&event.id)
        .bind(&event.event_type)
        .bind(&event.object_key)
        .bind(&event.body)
        .bind(micros(event.accepted_at))
        .bind(&event.idempotency_key)
        .bind(&event.request_hash)
        .bind(&delivery_ids)
        .fetch_one(&mut *conn)
        .await?;
        if let Some(earlier) = replay_of(&row, event)? {
            return Ok(earlier);
        }
        if !row.get::<bool, _>("known") {
            return Err(StoreError::UnknownEventType);
        }
        let wanted = row.get::<i64, _>("wanted") as usize;
        remember_subscribers(&event.event_type, wanted);
        if row.get::<i64, _>("inserted") == 1 {
            return Ok(Accepted {
                event_id: event.id.clone(),
                deliveries: wanted as i64,
                replayed: false,
                endpoints: row.get("endpoints"),
            });
        }
        if wanted > ids {
            // Nothing was written; again, with an id for every subscriber.
            ids = wanted;
            continue;
        }
        // Another process stored the same idempotency key meanwhile, and has committed.
        return replay_idempotent(conn, event)
            .await?
            .ok_or_else(|| StoreError::Unavailable("idempotency key vanished".to_string()));
    }
}

/// Stores events that carry no idempotency key, with their deliveries, in one
/// statement however many there are: per event the answer [`insert_event_in`] would
/// give. An event whose type has more subscribers than delivery ids were sent for it is
/// left out of the statement and stored after it on its own.
pub(super) async fn insert_events_in(
    conn: &mut PgConnection,
    events: &[&NewEvent],
) -> StoreResult<Vec<StoreResult<Accepted>>> {
    debug_assert!(events.iter().all(|e| e.idempotency_key.is_none()));
    // Event n may take `allotted[n]` ids from `delivery_ids`, starting after `first[n]`.
    let allotted: Vec<i64> = events
        .iter()
        .map(|e| ids_for(&e.event_type) as i64)
        .collect();
    let first: Vec<i64> = allotted
        .iter()
        .scan(0, |taken, &n| {
            let start = *taken;
            *taken += n;
            Some(start)
        })
        .collect();
    let total = allotted.iter().sum::<i64>() as usize;
    let delivery_ids: Vec<String> = (0..total).map(|_| new_id("dlv")).collect();
    let column = |f: fn(&NewEvent) -> &str| -> Vec<&str> { events.iter().map(|e| f(e)).collect() };
    let accepted_at: Vec<i64> = events.iter().map(|e| micros(e.accepted_at)).collect();
    let rows = sqlx::query(
        "WITH input AS ( \
           SELECT i.*, EXISTS (SELECT 1 FROM event_types WHERE name = i.event_type) AS known, \
             ARRAY(SELECT s.endpoint_id FROM endpoint_events s \
               JOIN endpoints e ON e.id = s.endpoint_id \
               WHERE s.event_type = i.event_type AND e.enabled \
               ORDER BY s.endpoint_id) AS endpoints \
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], \
             $6::text[], $7::int8[], $8::int8[]) WITH ORDINALITY \
             AS i(id, event_type, object_key, body, created_at, request_hash, allotted, \
               first, n)), \
         stored AS MATERIALIZED ( \
           SELECT * FROM input WHERE known AND cardinality(endpoints) <= allotted), \
         ev AS ( \
           INSERT INTO events (id, event_type, object_key, body, created_at, \
             request_hash, delivery_count) \
           SELECT id, event_type, object_key, body, created_at, request_hash, \
             cardinality(endpoints) FROM stored ORDER BY n), \
         d AS ( \
           INSERT INTO deliveries (id, event_id, endpoint_id, event_type, object_key, \
             status, test, created_at, next_attempt_at) \
           SELECT ($9::text[])[v.first + t.k], v.id, t.endpoint_id, v.event_type, \
             v.object_key, 'pending', false, v.created_at, v.created_at \
           FROM stored v, unnest(v.endpoints) WITH ORDINALITY AS t(endpoint_id, k) \
           ORDER BY v.n, t.k) \
         SELECT n, known, endpoints FROM input",
    )
    .bind(column(|e| &e.id))
    .bind(column(|e| &e.event_type))
    .bind(column(|e| &e.object_key))
    .bind(column(|e| &e.body))
    .bind(&accepted_at)
    .bind(column(|e| &e.request_hash))
    .bind(&allotted)
    .bind(&first)
    .bind(&delivery_ids)
    .fetch_all(&mut *conn)
    .await?;

    let mut answers: Vec<Option<StoreResult<Accepted>>> = (0..events.len()).map(|_| None).collect();
    let mut left_out = Vec::new();
    for row in &rows {
        let n = row.get::<i64, _>("n") as usize - 1;
        let (event, endpoints): (&NewEvent, Vec<String>) = (events[n], row.get("endpoints"));
        answers[n] = if !row.get::<bool, _>("known") {
            Some(Err(StoreError::UnknownEventType))
        } else if endpoints.len() as i64 > allotted[n] {
            left_out.push(n);
            None
        } else {
            remember_subscribers(&event.event_type, endpoints.len());
            Some(Ok(Accepted {
                event_id: event.id.clone(),
                deliveries: endpoints.len() as i64,
                replayed: false,
                endpoints,
            }))
        };
    }
    for n in left_out {
        answers[n] = Some(insert_event_in(conn, events[n]).await);
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or_else(|| Err(StoreError::Unavailable("no answer".into()))))
        .collect())
}

async fn replay_idempotent(
    conn: &mut PgConnection,
    event: &NewEvent,
) -> StoreResult<Option<Accepted>> {
    let row = sqlx::query(
        "SELECT id, request_hash, delivery_count FROM events WHERE idempotency_key = $1",
    )
    .bind(&event.idempotency_key)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => replay_of(&row, event),
        None => Ok(None),
    }
}

/// The first answer again, when `row` holds an earlier event with the same idempotency
/// key (`id` is NULL otherwise); a refusal when that event came from another request.
fn replay_of(row: &PgRow, event: &NewEvent) -> StoreResult<Option<Accepted>> {
    let Some(event_id) = row.get::<Option<String>, _>("id") else {
        return Ok(None);
    };
    if row.get::<String, _>("request_hash") != event.request_hash {
        return Err(StoreError::IdempotencyMismatch);
    }
    Ok(Some(Accepted {
        event_id,
        deliveries: row.get("delivery_count"),
        replayed: true,
        endpoints: Vec::new(),
    }))
}

/// Claims up to `limit` of the endpoint's due deliveries in accepted order, unless a
/// lane anywhere holds a live lease on one of the endpoint's deliveries.
pub(super) async fn claim_in(
    conn: &mut PgConnection,
    request: &ClaimRequest,
    limit: usize,
) -> StoreResult<Vec<Claimed>> {
    // The lock serializes claims for this endpoint across processes; it is held until
    // the batch commits, which is what makes the lease check below race-free.
    let sql = format!(
        "SELECT {ENDPOINT_COLUMNS} FROM endpoints e WHERE e.id = $1 FOR NO KEY UPDATE OF e"
    );
    let row = sqlx::query(&sql)
        .bind(&request.endpoint_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(endpoint) = row.as_ref().map(endpoint_from_row) else {
        return Ok(Vec::new());
    };
    if !endpoint.enabled {
        return Ok(Vec::new());
    }

    // The picked rows are locked too (FOR UPDATE, not SKIP LOCKED: skipping a row that
    // a resend is changing would send a later delivery first). The pick is a
    // materialized CTE so that it runs exactly once: as a sub-select of the UPDATE, the
    // planner may run it again for each row, and each run, no longer seeing the rows
    // this statement already leased, picks later ones, so a claim could skip a due
    // delivery and send the ones after it first. The UPDATE repeats the lease test
    // because the pick reads its snapshot before it has the locks. It writes the status
    // test as `status || ''` so that no index on pending rows matches it: right after a
    // burst, stale statistics make such an index look tiny, and the planner would scan
    // every pending row of it for each picked one instead of finding each by `seq`.
    let per_object = endpoint.ordering == Ordering::PerObject;
    let sql = format!(
        "WITH picked AS MATERIALIZED ( \
           SELECT c.seq FROM deliveries c WHERE c.endpoint_id = $1 AND c.status = 'pending' \
           AND c.next_attempt_at <= $2 AND (c.lease_until IS NULL OR c.lease_until <= $2) \
           AND NOT EXISTS (SELECT 1 FROM deliveries l WHERE l.endpoint_id = $1 \
             AND l.status = 'pending' AND NOT l.test AND l.lease_until > $2) \
           AND (NOT $4 OR NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.endpoint_id = $1 \
             AND p.status = 'pending' AND p.object_key = c.object_key AND p.seq < c.seq)) \
           ORDER BY c.seq + 0 LIMIT $5 FOR UPDATE OF c) \
         UPDATE deliveries d SET lease_until = $3 FROM picked, events v \
         WHERE d.seq = picked.seq AND v.id = d.event_id AND d.status || '' = 'pending' \
         AND (d.lease_until IS NULL OR d.lease_until <= $2) \
         RETURNING {DELIVERY_COLUMNS}"
    );
    // The pick must walk the endpoint's pending deliveries in `seq` order, stopping
    // after `limit` rows. It orders by `seq + 0`, which only the index of pending
    // deliveries by endpoint holds, and the writer's transaction rules out the sorts
    // and bitmap scans that any other plan would need (see `plan_by_index` in `mod.rs`
    // and the migration that made the index).
    let rows = sqlx::query(&sql)
        .bind(&request.endpoint_id)
        .bind(micros(request.now))
        .bind(micros(request.lease_until))
        .bind(per_object)
        .bind(limit.max(1) as i64)
        .fetch_all(&mut *conn)
        .await?;
    let mut claimed: Vec<Claimed> = rows
        .iter()
        .map(|row| Claimed {
            seq: row.get("seq"),
            delivery: delivery_from_row(row),
            endpoint: endpoint.clone(),
        })
        .collect();
    claimed.sort_by_key(|c| c.seq);
    Ok(claimed)
}

/// Records a lane's attempts, in the order they were made; per outcome, false when its
/// delivery is gone (its endpoint was deleted).
///
/// The usual batch, every attempt a success on an endpoint that is not failing, takes
/// two statements however many attempts it holds: it cannot open, close or alert on an
/// outage. Anything else is recorded one attempt at a time, in order: a failure may
/// open an outage or raise an alert, a success may close one and announce it, and an
/// alert describes the endpoint's deliveries as they were at that attempt.
pub(super) async fn record_in(
    conn: &mut PgConnection,
    outcomes: &[AttemptOutcome],
) -> StoreResult<Vec<bool>> {
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let endpoints = touch_endpoints(conn, outcomes).await?;
    if plain_successes(outcomes) {
        if let Some(stored) = store_attempts(conn, outcomes, &endpoints).await? {
            return Ok(stored);
        }
    }
    record_one_by_one(conn, outcomes).await
}

/// Whether every attempt succeeded, none of them for a test delivery (which leaves
/// outages alone), each for a different delivery.
fn plain_successes(outcomes: &[AttemptOutcome]) -> bool {
    let mut seqs: Vec<i64> = outcomes.iter().map(|o| o.claimed.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs.len() == outcomes.len()
        && outcomes
            .iter()
            .all(|o| o.after == AfterAttempt::Succeeded && !o.claimed.delivery.test)
}

async fn record_one_by_one(
    conn: &mut PgConnection,
    outcomes: &[AttemptOutcome],
) -> StoreResult<Vec<bool>> {
    let mut stored = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        let one = store_attempts(conn, std::slice::from_ref(outcome), &[]).await?;
        let kept = one.unwrap_or_default().first().copied().unwrap_or(false);
        if kept && !outcome.claimed.delivery.test {
            track_outage(conn, &outcome.claimed, &outcome.attempt, outcome.after).await?;
        }
        stored.push(kept);
    }
    Ok(stored)
}

/// Notes when each endpoint was last sent to, and returns their ids. The endpoint rows
/// are locked first, in id order: the lock order every claim follows. Every change to
/// an endpoint's outage row takes that lock first too, so from here until the commit
/// the outage rows of these endpoints stay as the next statement finds them.
async fn touch_endpoints<'a>(
    conn: &mut PgConnection,
    outcomes: &'a [AttemptOutcome],
) -> StoreResult<Vec<&'a str>> {
    // A later outcome overwrites an earlier one: the last attempt recorded sets the time.
    let latest: BTreeMap<&str, i64> = outcomes
        .iter()
        .map(|o| {
            (
                o.claimed.endpoint.id.as_str(),
                micros(o.attempt.attempted_at),
            )
        })
        .collect();
    for (endpoint_id, at) in &latest {
        sqlx::query("UPDATE endpoints SET last_triggered_at = $1 WHERE id = $2")
            .bind(at)
            .bind(endpoint_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(latest.into_keys().collect())
}

/// Stores the attempts and their deliveries' new states, releasing the leases, in one
/// statement; per outcome, false when its delivery is gone. Each outcome must be for a
/// different delivery. When one of the endpoints `unless_failing` has an outage row,
/// it writes nothing and returns `None`. That check must be in the same statement as
/// the writes, after the endpoints are locked: a statement reads other rows as they
/// were when it began, so a check made while waiting for the lock could miss an outage
/// that the lock's holder opened.
///
/// Only the first and the latest reply bodies of a delivery are kept: a receiver that
/// answers every retry with the same large error page must not fill the disk with
/// copies of it. The statement's parts all read the rows as they were before it, so
/// the bodies dropped are those of the attempts stored before, never the new ones.
async fn store_attempts(
    conn: &mut PgConnection,
    outcomes: &[AttemptOutcome],
    unless_failing: &[&str],
) -> StoreResult<Option<Vec<bool>>> {
    let columns = AttemptColumns::of(outcomes);
    let (failing, stored): (bool, Vec<i64>) = sqlx::query_as(
        "WITH failing AS ( \
           SELECT EXISTS (SELECT 1 FROM endpoint_outages WHERE endpoint_id = ANY($12)) AS yes), \
         o AS ( \
           SELECT u.* FROM failing, unnest($1::bigint[], $2::text[], $3::bigint[], \
             $4::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::bytea[], \
             $9::boolean[], $10::text[], $11::text[]) WITH ORDINALITY AS u(seq, status, \
             next_attempt_at, attempted_at, duration_ms, status_code, response_headers, \
             response_body, response_truncated, error_kind, error, n) \
           WHERE NOT failing.yes), \
         d AS ( \
           UPDATE deliveries t SET status = o.status, next_attempt_at = o.next_attempt_at, \
             lease_until = NULL, last_attempt_at = o.attempted_at, \
             first_attempt_at = coalesce(t.first_attempt_at, o.attempted_at), \
             attempt_count = t.attempt_count + 1 \
           FROM o WHERE t.seq = o.seq RETURNING t.seq), \
         dropped AS ( \
           UPDATE attempts x SET response_body = NULL, response_body_dropped = true \
           FROM d WHERE x.delivery_seq = d.seq AND x.response_body IS NOT NULL \
           AND x.id > (SELECT min(f.id) FROM attempts f WHERE f.delivery_seq = d.seq)), \
         added AS ( \
           INSERT INTO attempts (delivery_seq, attempted_at, duration_ms, status_code, \
             response_headers, response_body, response_truncated, error_kind, error) \
           SELECT o.seq, o.attempted_at, o.duration_ms, o.status_code, o.response_headers, \
             o.response_body, o.response_truncated, o.error_kind, o.error \
           FROM o JOIN d ON d.seq = o.seq ORDER BY o.n) \
         SELECT failing.yes, ARRAY(SELECT seq FROM d) FROM failing",
    )
    .bind(&columns.seq)
    .bind(&columns.status)
    .bind(&columns.next_attempt_at)
    .bind(&columns.attempted_at)
    .bind(&columns.duration_ms)
    .bind(&columns.status_code)
    .bind(&columns.response_headers)
    .bind(&columns.response_body)
    .bind(&columns.response_truncated)
    .bind(&columns.error_kind)
    .bind(&columns.error)
    .bind(unless_failing)
    .fetch_one(&mut *conn)
    .await?;
    if failing {
        return Ok(None);
    }
    Ok(Some(
        columns.seq.iter().map(|seq| stored.contains(seq)).collect(),
    ))
}

/// The outcomes as one array per column, to be bound to `unnest`.
#[derive(Default)]
struct AttemptColumns<'a> {
    seq: Vec<i64>,
    status: Vec<&'static str>,
    next_attempt_at: Vec<Option<i64>>,
    attempted_at: Vec<i64>,
    duration_ms: Vec<i64>,
    status_code: Vec<Option<i64>>,
    response_headers: Vec<String>,
    response_body: Vec<Option<&'a [u8]>>,
    response_truncated: Vec<bool>,
    error_kind: Vec<Option<&'static str>>,
    error: Vec<Option<String>>,
}

impl<'a> AttemptColumns<'a> {
    fn of(outcomes: &'a [AttemptOutcome]) -> AttemptColumns<'a> {
        let mut columns = AttemptColumns::default();
        for outcome in outcomes {
            columns.push(outcome);
        }
        columns
    }

    fn push(&mut self, outcome: &'a AttemptOutcome) {
        let attempt = &outcome.attempt;
        let (status, next) = match outcome.after {
            AfterAttempt::Succeeded => (DeliveryStatus::Succeeded, None),
            AfterAttempt::RetryAt(at) => (DeliveryStatus::Pending, Some(micros(at))),
            AfterAttempt::Failed => (DeliveryStatus::Failed, None),
        };
        let headers = serde_json::to_string(&attempt.response_headers).expect("strings serialize");
        self.seq.push(outcome.claimed.seq);
        self.status.push(status.as_str());
        self.next_attempt_at.push(next);
        self.attempted_at.push(micros(attempt.attempted_at));
        self.duration_ms.push(attempt.duration_ms);
        self.status_code.push(attempt.status_code.map(i64::from));
        self.response_headers.push(without_nul(&headers));
        self.response_body
            .push(attempt.response_body.as_deref().map(str::as_bytes));
        self.response_truncated.push(attempt.response_truncated);
        self.error_kind.push(attempt.error_kind.map(|k| k.as_str()));
        self.error.push(attempt.error.as_deref().map(without_nul));
    }
}

/// PostgreSQL refuses the NUL character in text. Text Herald writes itself can hold
/// one only by quoting a receiver (an error naming a header, say); it is stored as the
/// six characters `\u0000`, the way JSON would show it. Reply bodies are bytes instead,
/// and keep their NULs.
pub(super) fn without_nul(text: &str) -> String {
    text.replace('\0', "\\u0000")
}

/// Keeps the endpoint's outage row and alerts in step with an attempt's outcome.
async fn track_outage(
    conn: &mut PgConnection,
    claimed: &Claimed,
    attempt: &Attempt,
    after: AfterAttempt,
) -> StoreResult<()> {
    let endpoint_id = &claimed.endpoint.id;
    let mut last = LastFailure::of(attempt);
    last.error = without_nul(&last.error);
    if after == AfterAttempt::Succeeded {
        let closed: Option<(i64, Option<i64>)> = sqlx::query_as(
            "DELETE FROM endpoint_outages WHERE endpoint_id = $1 \
             RETURNING failing_since, alerted_at",
        )
        .bind(endpoint_id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((failing_since, Some(_))) = closed {
            let since = from_micros(failing_since);
            insert_alert(
                conn,
                AlertKind::EndpointRecovered,
                endpoint_id,
                &last,
                since,
            )
            .await?;
        }
        return Ok(());
    }

    sqlx::query(
        "INSERT INTO endpoint_outages (endpoint_id, failing_since, last_error) \
         VALUES ($1, $2, $3) \
         ON CONFLICT (endpoint_id) DO UPDATE SET last_error = excluded.last_error",
    )
    .bind(endpoint_id)
    .bind(micros(last.at))
    .bind(&last.error)
    .execute(&mut *conn)
    .await?;
    if after == AfterAttempt::Failed {
        raise_failing(conn, endpoint_id, &last).await?;
    }
    Ok(())
}

/// Raises the endpoint's failing alert, once per outage. The outage row must exist.
async fn raise_failing(
    conn: &mut PgConnection,
    endpoint_id: &str,
    last: &LastFailure,
) -> StoreResult<()> {
    let newly_alerted: Option<i64> = sqlx::query_scalar(
        "UPDATE endpoint_outages SET alerted_at = $1 \
         WHERE endpoint_id = $2 AND alerted_at IS NULL RETURNING failing_since",
    )
    .bind(micros(last.at))
    .bind(endpoint_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(failing_since) = newly_alerted {
        let since = from_micros(failing_since);
        insert_alert(conn, AlertKind::EndpointFailing, endpoint_id, last, since).await?;
    }
    Ok(())
}

/// Records an alert with what an e-mail about it says, as it is now. For a recovery,
/// `last` is the successful attempt, so it has a status and no error.
async fn insert_alert(
    conn: &mut PgConnection,
    kind: AlertKind,
    endpoint_id: &str,
    last: &LastFailure,
    failing_since: Timestamp,
) -> StoreResult<()> {
    let facts: PgRow = sqlx::query(
        "SELECT e.name, e.url, \
         (SELECT count(*) FROM deliveries d WHERE d.endpoint_id = e.id AND d.status = 'failed') \
           AS failed, \
         (SELECT count(*) FROM deliveries d WHERE d.endpoint_id = e.id AND d.status = 'pending') \
           AS pending \
         FROM endpoints e WHERE e.id = $1",
    )
    .bind(endpoint_id)
    .fetch_one(&mut *conn)
    .await?;
    let detail = AlertDetail {
        endpoint_name: facts.get("name"),
        endpoint_url: facts.get("url"),
        failing_since: Some(failing_since),
        failed_deliveries: facts.get("failed"),
        pending_deliveries: facts.get("pending"),
        last_status: last.status,
        last_error: (kind == AlertKind::EndpointFailing).then(|| last.error.clone()),
        at: last.at,
    };
    let detail = serde_json::to_string(&detail).expect("alert detail serializes");
    sqlx::query(
        "INSERT INTO alerts (id, kind, endpoint_id, created_at, detail) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(new_id("alr"))
    .bind(kind.as_str())
    .bind(endpoint_id)
    .bind(micros(last.at))
    .bind(without_nul(&detail))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Fails every pending, unclaimed delivery whose retry window ended while it waited,
/// and raises each endpoint's failing alert as an attempt would. The endpoints are
/// locked first, in id order, like every claim, so this never deadlocks with a batch.
pub(super) async fn expire_overdue(
    pool: &PgPool,
    cutoff: Timestamp,
    now: Timestamp,
) -> StoreResult<u64> {
    let mut tx = pool.begin().await?;
    let endpoints: Vec<String> = sqlx::query_scalar(
        "SELECT e.id FROM endpoints e WHERE EXISTS (SELECT 1 FROM deliveries d \
           WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.first_attempt_at < $1 \
           AND (d.lease_until IS NULL OR d.lease_until <= $2)) \
         ORDER BY e.id FOR NO KEY UPDATE OF e",
    )
    .bind(micros(cutoff))
    .bind(micros(now))
    .fetch_all(&mut *tx)
    .await?;
    let expired = sqlx::query(
        "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL \
         WHERE status = 'pending' AND first_attempt_at < $1 \
         AND (lease_until IS NULL OR lease_until <= $2) AND endpoint_id = ANY($3)",
    )
    .bind(micros(cutoff))
    .bind(micros(now))
    .bind(&endpoints)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    for endpoint_id in &endpoints {
        let last_error: Option<String> = sqlx::query_scalar(
            "INSERT INTO endpoint_outages (endpoint_id, failing_since, last_error) \
             VALUES ($1, $2, 'retry window ended') \
             ON CONFLICT (endpoint_id) DO UPDATE SET last_error = endpoint_outages.last_error \
             RETURNING last_error",
        )
        .bind(endpoint_id)
        .bind(micros(now))
        .fetch_one(&mut *tx)
        .await?;
        let last = LastFailure {
            at: now,
            status: None,
            error: last_error.unwrap_or_else(|| "retry window ended".to_string()),
        };
        // An endpoint someone disabled is not failing: nobody is alerted about it.
        let enabled: Option<bool> =
            sqlx::query_scalar("SELECT enabled FROM endpoints WHERE id = $1")
                .bind(endpoint_id)
                .fetch_optional(&mut *tx)
                .await?;
        if enabled == Some(true) {
            raise_failing(&mut tx, endpoint_id, &last).await?;
        }
    }
    tx.commit().await?;
    Ok(expired)
}
