//! The store's batched writes, driven directly: a group of attempt outcomes recorded in
//! one call leaves the same deliveries, attempts, outages and alerts as the same
//! outcomes recorded one at a time. Runs on the store the suite runs on.

mod common;

use std::sync::Arc;

use chrono::{Duration, Utc};
use common::{on_postgres, TestDatabase};
use herald::clock::Timestamp;
use herald::model::{AfterAttempt, Attempt, EndpointFields, ErrorKind, NewEvent, Ordering};
use herald::settings::Settings;
use herald::store::{AttemptOutcome, ClaimRequest, Claimed, Store};
use serde_json::json;

struct Opened {
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
    _database: Option<TestDatabase>,
}

async fn open() -> Opened {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::defaults(dir.path());
    let database = if on_postgres() {
        Some(TestDatabase::create().await)
    } else {
        None
    };
    settings.database_url = database.as_ref().map(|d| d.url.clone());
    let store = herald::server::open_store(&settings)
        .await
        .expect("store opens");
    store.migrate().await.expect("store migrates");
    Opened {
        store,
        _dir: dir,
        _database: database,
    }
}

async fn endpoint(store: &dyn Store, name: &str, now: Timestamp) -> String {
    let fields = EndpointFields {
        name: name.to_string(),
        url: format!("http://127.0.0.1:9/{name}"),
        enabled: true,
        events: vec!["invoice.paid".to_string()],
        ordering: Ordering::Accepted,
    };
    store
        .create_endpoint(&fields, "sealed-secret", now)
        .await
        .expect("endpoint created")
        .id
}

async fn emit(store: &dyn Store, n: u64, now: Timestamp) {
    let body = json!({"event": "invoice.paid", "object_id": n, "current": {}}).to_string();
    let parsed = herald::payload::parse_event(body.as_bytes(), now).unwrap();
    let event = NewEvent {
        id: herald::ids::new_id("evt"),
        event_type: parsed.event_type,
        object_key: parsed.object_key,
        body: parsed.body,
        accepted_at: now,
        idempotency_key: None,
        request_hash: parsed.request_hash,
    };
    store.insert_event(&event).await.expect("event stored");
}

fn attempt(at: Timestamp, status: u16, body: &str) -> Attempt {
    let failed = status >= 300;
    Attempt {
        attempted_at: at,
        duration_ms: 3,
        status_code: Some(status),
        response_headers: vec![("content-type".to_string(), "text/plain".to_string())],
        response_body: Some(body.to_string()),
        response_truncated: false,
        error_kind: failed.then_some(ErrorKind::HttpStatus),
        error: failed.then(|| format!("HTTP {status}")),
        retry_after: None,
    }
}

async fn claim(store: &dyn Store, endpoint_id: &str, now: Timestamp, n: usize) -> Vec<Claimed> {
    let request = ClaimRequest {
        endpoint_id: endpoint_id.to_string(),
        now,
        lease_until: now + Duration::seconds(60),
    };
    store.claim_many(request, n).await.expect("claim")
}

/// Fails every due delivery of the endpoint once, one at a time, so each has a first
/// attempt with a reply body; the last one fails for good, which opens the endpoint's
/// outage and alerts about it.
async fn fail_all(store: &dyn Store, endpoint_id: &str, at: Timestamp, count: usize) {
    let claimed = claim(store, endpoint_id, at, count).await;
    assert_eq!(claimed.len(), count);
    for (n, claimed) in claimed.into_iter().enumerate() {
        let after = if n + 1 == count {
            AfterAttempt::Failed
        } else {
            AfterAttempt::RetryAt(at)
        };
        let outcome = AttemptOutcome {
            claimed,
            attempt: attempt(at, 500, "first error page"),
            after,
        };
        store
            .record_many(vec![outcome], None)
            .await
            .expect("record");
    }
}

/// What the store holds for one endpoint, in a form two endpoints can be compared by.
async fn state(store: &dyn Store, endpoint_id: &str) -> Vec<String> {
    let filter = herald::store::DeliveryFilter {
        endpoint_id: Some(endpoint_id.to_string()),
        limit: 100,
        ..Default::default()
    };
    let mut deliveries = store.list_deliveries(&filter).await.unwrap().items;
    deliveries.sort_by(|a, b| a.body.cmp(&b.body));
    let mut out = Vec::new();
    for delivery in deliveries {
        let (delivery, attempts) = store.get_delivery(&delivery.id).await.unwrap();
        let bodies: Vec<String> = attempts
            .iter()
            .map(|a| format!("{:?}/{}", a.response_body, a.status_code.unwrap_or(0)))
            .collect();
        out.push(format!(
            "{:?} count={} next={:?} bodies={bodies:?}",
            delivery.status, delivery.attempt_count, delivery.next_attempt_at
        ));
    }
    let alerts = store.list_alerts(100).await.unwrap();
    let mut kinds: Vec<String> = alerts
        .iter()
        .filter(|a| a.endpoint_id == endpoint_id)
        .map(|a| a.kind.clone())
        .collect();
    kinds.sort();
    out.push(format!("alerts={kinds:?}"));
    let outage = store
        .list_outages()
        .await
        .unwrap()
        .into_iter()
        .any(|o| o.endpoint_id == endpoint_id);
    out.push(format!("outage={outage}"));
    out
}

/// Two endpoints get the same deliveries and the same history: each delivery failed once
/// (an outage, alerted), one failed twice, then all succeed. One endpoint's successes
/// are recorded one call each, the other's in one call. Both end with the same
/// deliveries, attempts, kept reply bodies, outage and alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_successes_is_stored_as_when_recorded_one_by_one() {
    let opened = open().await;
    let store = opened.store.as_ref();
    let t0 = Utc::now() - Duration::hours(1);
    let alone = endpoint(store, "alone", t0).await;
    let grouped = endpoint(store, "grouped", t0).await;
    for n in 0..6 {
        emit(store, n, t0).await;
    }
    for id in [&alone, &grouped] {
        fail_all(store, id, t0, 6).await;
        // A second failure, so the next success drops the middle reply body.
        let t1 = t0 + Duration::minutes(1);
        let first = claim(store, id, t1, 1).await.remove(0);
        let outcome = AttemptOutcome {
            claimed: first,
            attempt: attempt(t1, 503, "second error page"),
            after: AfterAttempt::RetryAt(t1),
        };
        store.record_many(vec![outcome], None).await.unwrap();
    }

    let t2 = t0 + Duration::minutes(2);
    let one_by_one = claim(store, &alone, t2, 5).await;
    assert_eq!(one_by_one.len(), 5);
    for claimed in one_by_one {
        let outcome = AttemptOutcome {
            claimed,
            attempt: attempt(t2, 200, "ok"),
            after: AfterAttempt::Succeeded,
        };
        let recorded = store.record_many(vec![outcome], None).await.unwrap();
        assert_eq!(recorded.stored, vec![true]);
    }

    let together = claim(store, &grouped, t2, 5).await;
    assert_eq!(together.len(), 5);
    let outcomes: Vec<AttemptOutcome> = together
        .into_iter()
        .map(|claimed| AttemptOutcome {
            claimed,
            attempt: attempt(t2, 200, "ok"),
            after: AfterAttempt::Succeeded,
        })
        .collect();
    let recorded = store.record_many(outcomes, None).await.unwrap();
    assert_eq!(recorded.stored, vec![true; 5]);

    let alone_state = state(store, &alone).await;
    let grouped_state = state(store, &grouped).await;
    assert_eq!(grouped_state, alone_state);
    assert!(
        alone_state.contains(&"outage=false".to_string()),
        "{alone_state:#?}"
    );
    assert!(
        alone_state
            .iter()
            .any(|line| line.contains("endpoint_recovered")),
        "the success closed an alerted outage: {alone_state:#?}"
    );
}
