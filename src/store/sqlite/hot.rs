//! The writer thread's statements: storing events, claiming deliveries, recording
//! attempts and failing the deliveries whose retry window ended. Each runs on the
//! writing connection inside the batch's open transaction, on the thread that owns the
//! connection, so a statement costs no hand-off between threads. Statements are
//! prepared once per connection and reused.

use rusqlite::{params, Connection, OptionalExtension};

use super::{delivery_from_row, endpoint_from_row, DELIVERY_COLUMNS, ENDPOINT_COLUMNS};
use crate::clock::Timestamp;
use crate::ids::new_id;
use crate::model::{
    AfterAttempt, AlertDetail, AlertKind, Attempt, DeliveryStatus, Endpoint, NewEvent, Ordering,
};
use crate::store::{
    from_micros, micros, Accepted, AttemptOutcome, ClaimRequest, Claimed, LastFailure, StoreError,
    StoreResult,
};

/// Stores an event and one delivery per enabled endpoint subscribed to its type.
pub(super) fn insert_event(conn: &Connection, event: &NewEvent) -> StoreResult<Accepted> {
    if let Some(earlier) = replay_idempotent(conn, event)? {
        return Ok(earlier);
    }
    // One row per subscribed, enabled endpoint; one row with no endpoint when there is
    // none; no row at all when the event type is unknown.
    let subscribed: Vec<Option<String>> = conn
        .prepare_cached(
            "SELECT e.id FROM event_types t \
             LEFT JOIN endpoint_events s ON s.event_type = t.name \
             LEFT JOIN endpoints e ON e.id = s.endpoint_id AND e.enabled \
             WHERE t.name = ?1 ORDER BY e.id",
        )?
        .query_map([&event.event_type], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    if subscribed.is_empty() {
        return Err(StoreError::UnknownEventType);
    }
    let endpoints: Vec<String> = subscribed.into_iter().flatten().collect();
    insert_event_row(conn, event, endpoints.len() as i64)?;
    for endpoint_id in &endpoints {
        insert_delivery_row(conn, event, endpoint_id, None)?;
    }
    Ok(Accepted {
        event_id: event.id.clone(),
        deliveries: endpoints.len() as i64,
        replayed: false,
        endpoints,
    })
}

/// Stores a test event and its one delivery to the endpoint, already claimed.
pub(super) fn insert_test_delivery(
    conn: &Connection,
    event: &NewEvent,
    endpoint_id: &str,
    lease_until: Timestamp,
) -> StoreResult<Claimed> {
    let endpoint = endpoint(conn, endpoint_id)?.ok_or(StoreError::NotFound)?;
    insert_event_row(conn, event, 1)?;
    let seq = insert_delivery_row(conn, event, endpoint_id, Some(lease_until))?;
    let delivery = conn
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events v ON v.id = d.event_id \
             WHERE d.seq = ?1"
        ))?
        .query_row([seq], |row| Ok(delivery_from_row(row)))?;
    Ok(Claimed {
        seq,
        delivery,
        endpoint,
    })
}

fn insert_event_row(conn: &Connection, event: &NewEvent, delivery_count: i64) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO events (id, event_type, object_key, body, created_at, idempotency_key, \
         request_hash, delivery_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        event.id,
        event.event_type,
        event.object_key,
        event.body,
        micros(event.accepted_at),
        event.idempotency_key,
        event.request_hash,
        delivery_count,
    ])?;
    Ok(())
}

/// Inserts a pending delivery, due at once; a test delivery comes already leased.
fn insert_delivery_row(
    conn: &Connection,
    event: &NewEvent,
    endpoint_id: &str,
    test_lease_until: Option<Timestamp>,
) -> StoreResult<i64> {
    let seq = conn
        .prepare_cached(
            "INSERT INTO deliveries (id, event_id, endpoint_id, event_type, object_key, status, \
             test, created_at, next_attempt_at, lease_until) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?7, ?8) RETURNING seq",
        )?
        .query_row(
            params![
                new_id("dlv"),
                event.id,
                endpoint_id,
                event.event_type,
                event.object_key,
                test_lease_until.is_some(),
                micros(event.accepted_at),
                test_lease_until.map(micros),
            ],
            |row| row.get(0),
        )?;
    Ok(seq)
}

fn replay_idempotent(conn: &Connection, event: &NewEvent) -> StoreResult<Option<Accepted>> {
    let Some(key) = &event.idempotency_key else {
        return Ok(None);
    };
    let earlier: Option<(String, String, i64)> = conn
        .prepare_cached(
            "SELECT id, request_hash, delivery_count FROM events WHERE idempotency_key = ?1",
        )?
        .query_row([key], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    let Some((event_id, request_hash, deliveries)) = earlier else {
        return Ok(None);
    };
    if request_hash != event.request_hash {
        return Err(StoreError::IdempotencyMismatch);
    }
    Ok(Some(Accepted {
        event_id,
        deliveries,
        replayed: true,
        endpoints: Vec::new(),
    }))
}

fn endpoint(conn: &Connection, id: &str) -> StoreResult<Option<Endpoint>> {
    let endpoint = conn
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints e WHERE e.id = ?1"
        ))?
        .query_row([id], |row| Ok(endpoint_from_row(row)))
        .optional()?;
    Ok(endpoint)
}

/// Claims up to `limit` of the endpoint's due deliveries, in order, under one lease.
pub(super) fn claim(
    conn: &Connection,
    request: &ClaimRequest,
    limit: usize,
) -> StoreResult<Vec<Claimed>> {
    let Some(endpoint) = endpoint(conn, &request.endpoint_id)? else {
        return Ok(Vec::new());
    };
    if !endpoint.enabled {
        return Ok(Vec::new());
    }
    let per_object = endpoint.ordering == Ordering::PerObject;
    // The claimed rows come back whole, each with its event's body, from the one
    // statement that leases them.
    let mut claimed: Vec<Claimed> = conn
        .prepare_cached(
            "UPDATE deliveries SET lease_until = ?3 WHERE seq IN ( \
               SELECT d.seq FROM deliveries d INDEXED BY deliveries_pending_by_endpoint \
               WHERE d.endpoint_id = ?1 AND d.status = 'pending' \
               AND d.next_attempt_at <= ?2 AND (d.lease_until IS NULL OR d.lease_until <= ?2) \
               AND (NOT ?4 OR NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.endpoint_id = ?1 \
                 AND p.status = 'pending' AND p.object_key = d.object_key AND p.seq < d.seq)) \
               ORDER BY d.seq LIMIT ?5) \
             RETURNING seq, id, event_id, endpoint_id, event_type, status, test, created_at, \
               first_attempt_at, next_attempt_at, last_attempt_at, attempt_count, \
               (SELECT v.body FROM events v WHERE v.id = deliveries.event_id) AS body",
        )?
        .query_map(
            params![
                request.endpoint_id,
                micros(request.now),
                micros(request.lease_until),
                per_object,
                limit as i64,
            ],
            |row| {
                Ok(Claimed {
                    seq: row.get("seq")?,
                    delivery: delivery_from_row(row),
                    endpoint: endpoint.clone(),
                })
            },
        )?
        .collect::<Result<_, _>>()?;
    claimed.sort_unstable_by_key(|c| c.seq);
    Ok(claimed)
}

/// Notes when each endpoint in `outcomes` was last sent to.
pub(super) fn touch_endpoints(conn: &Connection, outcomes: &[AttemptOutcome]) -> StoreResult<()> {
    let mut latest: Vec<(&str, Timestamp)> = Vec::new();
    for outcome in outcomes {
        let (id, at) = (
            outcome.claimed.endpoint.id.as_str(),
            outcome.attempt.attempted_at,
        );
        match latest.iter_mut().find(|(known, _)| *known == id) {
            Some(entry) => entry.1 = entry.1.max(at),
            None => latest.push((id, at)),
        }
    }
    let mut touch =
        conn.prepare_cached("UPDATE endpoints SET last_triggered_at = ?1 WHERE id = ?2")?;
    for (id, at) in latest {
        touch.execute(params![micros(at), id])?;
    }
    Ok(())
}

/// Records an attempt and the delivery's next state; false when the delivery is gone.
/// `no_outage` is true once this transaction has seen the endpoint's outage closed, so
/// that a group of successes closes it once, not once each.
pub(super) fn record(
    conn: &Connection,
    claimed: &Claimed,
    attempt: &Attempt,
    after: AfterAttempt,
    no_outage: &mut bool,
) -> StoreResult<bool> {
    let (status, next) = match after {
        AfterAttempt::Succeeded => (DeliveryStatus::Succeeded, None),
        AfterAttempt::RetryAt(at) => (DeliveryStatus::Pending, Some(micros(at))),
        AfterAttempt::Failed => (DeliveryStatus::Failed, None),
    };
    let at = micros(attempt.attempted_at);
    let updated = conn
        .prepare_cached(
            "UPDATE deliveries SET status = ?1, next_attempt_at = ?2, lease_until = NULL, \
             first_attempt_at = coalesce(first_attempt_at, ?3), last_attempt_at = ?3, \
             attempt_count = attempt_count + 1 WHERE seq = ?4",
        )?
        .execute(params![status.as_str(), next, at, claimed.seq])?;
    if updated == 0 {
        return Ok(false);
    }

    // Only the first and the latest reply bodies are kept: a receiver that answers every
    // retry with the same large error page must not fill the disk with copies of it.
    if claimed.delivery.attempt_count >= 2 {
        conn.prepare_cached(
            "UPDATE attempts SET response_body = NULL, response_body_dropped = 1 \
             WHERE delivery_seq = ?1 AND response_body IS NOT NULL \
             AND id > (SELECT min(id) FROM attempts WHERE delivery_seq = ?1)",
        )?
        .execute([claimed.seq])?;
    }

    let headers = serde_json::to_string(&attempt.response_headers).expect("strings serialize");
    conn.prepare_cached(
        "INSERT INTO attempts (delivery_seq, attempted_at, duration_ms, status_code, \
         response_headers, response_body, response_truncated, error_kind, error) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        claimed.seq,
        at,
        attempt.duration_ms,
        attempt.status_code.map(i64::from),
        headers,
        attempt.response_body,
        attempt.response_truncated,
        attempt.error_kind.map(|k| k.as_str()),
        attempt.error,
    ])?;
    if !claimed.delivery.test {
        track_outage(conn, &claimed.endpoint.id, attempt, after, no_outage)?;
    }
    Ok(true)
}

/// Fails every pending, unclaimed delivery whose first attempt was before `cutoff`,
/// and raises each endpoint's failing alert as a last failed attempt would.
pub(super) fn expire_overdue(
    conn: &Connection,
    cutoff: Timestamp,
    now: Timestamp,
) -> StoreResult<u64> {
    let mut endpoints: Vec<String> = conn
        .prepare_cached(
            "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL \
             WHERE status = 'pending' AND first_attempt_at < ?1 \
             AND (lease_until IS NULL OR lease_until <= ?2) RETURNING endpoint_id",
        )?
        .query_map(params![micros(cutoff), micros(now)], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let expired = endpoints.len() as u64;
    endpoints.sort();
    endpoints.dedup();
    for endpoint_id in endpoints {
        let last_error: Option<String> = conn
            .prepare_cached("SELECT last_error FROM endpoint_outages WHERE endpoint_id = ?1")?
            .query_row([&endpoint_id], |row| row.get(0))
            .optional()?
            .flatten();
        let last = LastFailure {
            at: now,
            status: None,
            error: last_error.unwrap_or_else(|| "retry window ended".to_string()),
        };
        conn.prepare_cached(
            "INSERT INTO endpoint_outages (endpoint_id, failing_since, last_error) \
             VALUES (?1, ?2, ?3) ON CONFLICT (endpoint_id) DO NOTHING",
        )?
        .execute(params![endpoint_id, micros(now), last.error])?;
        // An endpoint someone disabled is not failing: nobody is alerted about it.
        let enabled: Option<bool> = conn
            .prepare_cached("SELECT enabled FROM endpoints WHERE id = ?1")?
            .query_row([&endpoint_id], |row| row.get(0))
            .optional()?;
        if enabled == Some(true) {
            raise_failing(conn, &endpoint_id, &last)?;
        }
    }
    Ok(expired)
}

/// Keeps the endpoint's outage row and alerts in step with an attempt's outcome.
fn track_outage(
    conn: &Connection,
    endpoint_id: &str,
    attempt: &Attempt,
    after: AfterAttempt,
    no_outage: &mut bool,
) -> StoreResult<()> {
    let last = LastFailure::of(attempt);
    if after == AfterAttempt::Succeeded {
        if std::mem::replace(no_outage, true) {
            return Ok(());
        }
        let closed: Option<(i64, Option<i64>)> = conn
            .prepare_cached(
                "DELETE FROM endpoint_outages WHERE endpoint_id = ?1 \
                 RETURNING failing_since, alerted_at",
            )?
            .query_row([endpoint_id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        if let Some((failing_since, Some(_))) = closed {
            let since = from_micros(failing_since);
            insert_alert(
                conn,
                AlertKind::EndpointRecovered,
                endpoint_id,
                &last,
                since,
            )?;
        }
        return Ok(());
    }

    conn.prepare_cached(
        "INSERT INTO endpoint_outages (endpoint_id, failing_since, last_error) \
         VALUES (?1, ?2, ?3) \
         ON CONFLICT (endpoint_id) DO UPDATE SET last_error = excluded.last_error",
    )?
    .execute(params![endpoint_id, micros(last.at), last.error])?;
    *no_outage = false;
    if after == AfterAttempt::Failed {
        raise_failing(conn, endpoint_id, &last)?;
    }
    Ok(())
}

/// Raises the endpoint's failing alert, once per outage. The outage row must exist.
fn raise_failing(conn: &Connection, endpoint_id: &str, last: &LastFailure) -> StoreResult<()> {
    let newly_alerted: Option<i64> = conn
        .prepare_cached(
            "UPDATE endpoint_outages SET alerted_at = ?1 \
             WHERE endpoint_id = ?2 AND alerted_at IS NULL RETURNING failing_since",
        )?
        .query_row(params![micros(last.at), endpoint_id], |row| row.get(0))
        .optional()?;
    if let Some(failing_since) = newly_alerted {
        let since = from_micros(failing_since);
        insert_alert(conn, AlertKind::EndpointFailing, endpoint_id, last, since)?;
    }
    Ok(())
}

/// Records an alert with what an e-mail about it says, as it is now. For a recovery,
/// `last` is the successful attempt, so it has a status and no error.
fn insert_alert(
    conn: &Connection,
    kind: AlertKind,
    endpoint_id: &str,
    last: &LastFailure,
    failing_since: Timestamp,
) -> StoreResult<()> {
    let (name, url, failed, pending): (String, String, i64, i64) = conn
        .prepare_cached(
            "SELECT e.name, e.url, \
             (SELECT count(*) FROM deliveries d WHERE d.endpoint_id = e.id \
               AND d.status = 'failed'), \
             (SELECT count(*) FROM deliveries d WHERE d.endpoint_id = e.id \
               AND d.status = 'pending') \
             FROM endpoints e WHERE e.id = ?1",
        )?
        .query_row([endpoint_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
    let detail = AlertDetail {
        endpoint_name: name,
        endpoint_url: url,
        failing_since: Some(failing_since),
        failed_deliveries: failed,
        pending_deliveries: pending,
        last_status: last.status,
        last_error: (kind == AlertKind::EndpointFailing).then(|| last.error.clone()),
        at: last.at,
    };
    let detail = serde_json::to_string(&detail).expect("alert detail serializes");
    conn.prepare_cached(
        "INSERT INTO alerts (id, kind, endpoint_id, created_at, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        new_id("alr"),
        kind.as_str(),
        endpoint_id,
        micros(last.at),
        detail
    ])?;
    Ok(())
}
