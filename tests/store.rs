//! The store's hot writes, called directly on the store `HERALD_TEST_STORE` picks:
//! recording a lane's attempts in one call leaves the same state, outages and alerts as
//! recording them one at a time; one write that fails in a group commit leaves the
//! others of its batch committed; events stored together each get their own answer;
//! and on PostgreSQL, an event wakes the other processes and not its own.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{Duration, Utc};
use herald::clock::Timestamp;
use herald::ids::new_id;
use herald::model::{
    AfterAttempt, Attempt, EndpointFields, ErrorKind, NewEvent, Ordering as DeliveryOrder,
};
use herald::store::{
    AttemptOutcome, ClaimRequest, Claimed, DeliveryFilter, PostgresStore, SqliteStore, Store,
    StoreError, DATABASE_FILE,
};
use sqlx::Connection;

use common::{on_postgres, TestDatabase};

/// A migrated store, with what a test needs to reach its database behind its back.
struct Opened {
    store: Arc<dyn Store>,
    database: Option<TestDatabase>,
    dir: tempfile::TempDir,
}

async fn open() -> Opened {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, database): (Arc<dyn Store>, _) = if on_postgres() {
        let database = TestDatabase::create().await;
        let store = PostgresStore::open(&database.url).await.expect("open");
        (Arc::new(store), Some(database))
    } else {
        let store = SqliteStore::open(dir.path()).await.expect("open");
        (Arc::new(store), None)
    };
    store.migrate().await.expect("migrate");
    Opened {
        store,
        database,
        dir,
    }
}

impl Opened {
    /// Deletes a delivery the way no API call can: alone, while a lane holds it.
    async fn delete_delivery(&self, id: &str) {
        let sql = match &self.database {
            Some(_) => "DELETE FROM deliveries WHERE id = $1",
            None => "DELETE FROM deliveries WHERE id = ?",
        };
        match &self.database {
            Some(database) => {
                let mut conn = sqlx::PgConnection::connect(&database.url).await.unwrap();
                sqlx::query(sql).bind(id).execute(&mut conn).await.unwrap();
            }
            None => {
                let path: PathBuf = self.dir.path().join(DATABASE_FILE);
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(sql).bind(id).execute(&mut conn).await.unwrap();
            }
        }
    }

    async fn endpoint(&self, name: &str, event_type: &str) -> String {
        let fields = EndpointFields {
            name: name.to_string(),
            url: "http://127.0.0.1:9/hook".to_string(),
            enabled: true,
            events: vec![event_type.to_string()],
            ordering: DeliveryOrder::Accepted,
        };
        let endpoint = self
            .store
            .create_endpoint(&fields, "whsec_test", Utc::now());
        endpoint.await.expect("create endpoint").id
    }

    async fn claim(&self, endpoint_id: &str, now: Timestamp, limit: usize) -> Vec<Claimed> {
        let claimed = self.store.claim_many(request(endpoint_id, now), limit);
        claimed.await.expect("claim")
    }

    /// What a reader sees of an endpoint: its deliveries and their attempts, its outage,
    /// its alerts and when it was last sent to. Ids are left out, so that two endpoints
    /// that lived the same life look the same.
    async fn seen(&self, endpoint_id: &str) -> String {
        let filter = DeliveryFilter {
            endpoint_id: Some(endpoint_id.to_string()),
            limit: 100,
            ..DeliveryFilter::default()
        };
        let mut lines = Vec::new();
        let page = self.store.list_deliveries(&filter).await.unwrap();
        for delivery in page.items.iter().rev() {
            let (d, attempts) = self.store.get_delivery(&delivery.id).await.unwrap();
            lines.push(format!(
                "delivery of {}: {:?} attempts={} first={:?} next={:?} last={:?}",
                d.event_id,
                d.status,
                d.attempt_count,
                d.first_attempt_at,
                d.next_attempt_at,
                d.last_attempt_at
            ));
            lines.extend(attempts.iter().map(|a| format!("  {a:?}")));
        }
        for outage in self.store.list_outages().await.unwrap() {
            if outage.endpoint_id == endpoint_id {
                let (since, alerted) = (outage.failing_since, outage.alerted_at);
                let error = outage.last_error;
                lines.push(format!(
                    "outage since {since:?} alerted {alerted:?}: {error:?}"
                ));
            }
        }
        let mut alerts = self.store.list_alerts(None, 100).await.unwrap().items;
        alerts.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        for alert in alerts.iter().filter(|a| a.endpoint_id == endpoint_id) {
            let (kind, at, detail) = (&alert.kind, alert.created_at, &alert.detail);
            lines.push(format!("alert {kind} at {at:?}: {detail}"));
        }
        let endpoint = self.store.get_endpoint(endpoint_id).await.unwrap();
        lines.push(format!("last triggered {:?}", endpoint.last_triggered_at));
        lines.join("\n")
    }
}

fn request(endpoint_id: &str, now: Timestamp) -> ClaimRequest {
    ClaimRequest {
        endpoint_id: endpoint_id.to_string(),
        now,
        lease_until: now + Duration::seconds(60),
    }
}

fn new_event(event_type: &str, at: Timestamp, n: usize) -> NewEvent {
    NewEvent {
        id: new_id("evt"),
        event_type: event_type.to_string(),
        object_key: format!("object-{n}"),
        body: format!("{{\"n\":{n}}}"),
        accepted_at: at,
        idempotency_key: None,
        request_hash: format!("hash-{n}"),
    }
}

/// How an attempt went, and what comes after it.
#[derive(Clone, Copy)]
enum Went {
    Succeeded,
    RetryAt(Timestamp),
    Failed,
}

fn outcome(claimed: &Claimed, went: Went, at: Timestamp) -> AttemptOutcome {
    let (status, error_kind, after) = match went {
        Went::Succeeded => (200, None, AfterAttempt::Succeeded),
        Went::RetryAt(next) => (
            500,
            Some(ErrorKind::HttpStatus),
            AfterAttempt::RetryAt(next),
        ),
        Went::Failed => (503, Some(ErrorKind::HttpStatus), AfterAttempt::Failed),
    };
    AttemptOutcome {
        claimed: claimed.clone(),
        attempt: Attempt {
            attempted_at: at,
            duration_ms: 7,
            status_code: Some(status),
            response_headers: vec![("content-type".to_string(), "text/plain".to_string())],
            response_body: Some(format!("reply to {} at {at}", claimed.delivery.event_id)),
            response_truncated: false,
            error_kind,
            error: None,
            retry_after: None,
        },
        after,
    }
}

/// The same attempts, recorded for one endpoint in one call and for its twin one at a
/// time. Returns what each call said was stored, both ways.
async fn record_both(
    opened: &Opened,
    batch: &[Claimed],
    one_by_one: &[Claimed],
    script: &[(Went, bool)],
    at: Timestamp,
) -> (Vec<bool>, Vec<bool>) {
    assert_eq!(
        batch.len(),
        script.len(),
        "the claim took the scripted deliveries"
    );
    assert_eq!(one_by_one.len(), script.len());
    for (n, (_, delete)) in script.iter().enumerate() {
        if *delete {
            opened.delete_delivery(&batch[n].delivery.id).await;
            opened.delete_delivery(&one_by_one[n].delivery.id).await;
        }
    }
    let outcomes = |claims: &[Claimed]| -> Vec<AttemptOutcome> {
        let times = (0..).map(|n| at + Duration::milliseconds(n));
        let steps = claims.iter().zip(script).zip(times);
        steps
            .map(|((c, (went, _)), t)| outcome(c, *went, t))
            .collect()
    };

    let together = opened.store.record_many(outcomes(batch), None).await;
    let together = together.expect("record in one call");
    assert!(together.next.is_empty());
    let mut alone = Vec::new();
    for o in outcomes(one_by_one) {
        let recorded = opened
            .store
            .record_attempt(&o.claimed, &o.attempt, o.after, None)
            .await;
        alone.push(recorded.expect("record alone").stored);
    }
    (together.stored, alone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_attempts_in_one_call_leaves_what_recording_them_one_by_one_does() {
    let opened = open().await;
    let event_type = herald::catalog::default_catalog()[0].name.clone();
    // Twins: same name, same URL, same events, so their alerts read the same.
    let batched = opened.endpoint("twin", &event_type).await;
    let single = opened.endpoint("twin", &event_type).await;
    let t0 = Utc::now();
    for n in 0..14 {
        let event = new_event(&event_type, t0, n);
        opened.store.insert_event(&event).await.expect("insert");
    }
    let second = |n: i64| t0 + Duration::seconds(n);
    let (ok, retry, fail) = (Went::Succeeded, Went::RetryAt(second(2)), Went::Failed);

    // A mixed batch: an outage opens (2nd), is alerted (3rd), closes with a recovery
    // alert (5th) and opens again (6th); the 4th delivery is gone meanwhile.
    let (a, b) = (
        opened.claim(&batched, second(1), 6).await,
        opened.claim(&single, second(1), 6).await,
    );
    let script = [
        (ok, false),
        (retry, false),
        (fail, false),
        (ok, true),
        (ok, false),
        (retry, false),
    ];
    let stored = record_both(&opened, &a, &b, &script, second(1)).await;
    assert_eq!(stored.0, [true, true, true, false, true, true]);
    assert_eq!(stored.0, stored.1);
    let seen = opened.seen(&batched).await;
    assert_eq!(seen, opened.seen(&single).await);
    assert!(seen.contains("alert endpoint_failing"), "{seen}");
    assert!(seen.contains("alert endpoint_recovered"), "{seen}");
    assert!(seen.contains("outage since"), "{seen}");

    // The two retried deliveries come back first. A retry during the outage, then
    // successes that close it without an alert (none was raised for this one).
    let (a, b) = (
        opened.claim(&batched, second(3), 3).await,
        opened.claim(&single, second(3), 3).await,
    );
    let script = [(Went::RetryAt(second(4)), false), (ok, false), (ok, false)];
    let stored = record_both(&opened, &a, &b, &script, second(3)).await;
    assert_eq!(stored.0, stored.1);
    let seen = opened.seen(&batched).await;
    assert_eq!(seen, opened.seen(&single).await);
    assert!(!seen.contains("outage since"), "{seen}");

    // Only successes on a healthy endpoint: the third attempt of a delivery drops the
    // reply body of the second, and a delivery that is gone is not stored.
    let (a, b) = (
        opened.claim(&batched, second(5), 3).await,
        opened.claim(&single, second(5), 3).await,
    );
    let script = [(ok, false), (ok, false), (ok, true)];
    let stored = record_both(&opened, &a, &b, &script, second(5)).await;
    assert_eq!(stored.0, [true, true, false]);
    assert_eq!(stored.0, stored.1);
    let seen = opened.seen(&batched).await;
    assert_eq!(seen, opened.seen(&single).await);
    assert_eq!(
        seen.matches("response_body_dropped: true").count(),
        1,
        "{seen}"
    );

    // A failure opens an alerted outage; the successes after it close the outage, and
    // the recovery alert counts the deliveries as they were at the first success.
    let (a, b) = (
        opened.claim(&batched, second(6), 1).await,
        opened.claim(&single, second(6), 1).await,
    );
    let stored = record_both(&opened, &a, &b, &[(fail, false)], second(6)).await;
    assert_eq!(stored.0, stored.1);
    let (a, b) = (
        opened.claim(&batched, second(7), 3).await,
        opened.claim(&single, second(7), 3).await,
    );
    let script = [(ok, false), (ok, false), (ok, false)];
    let stored = record_both(&opened, &a, &b, &script, second(7)).await;
    assert_eq!(stored.0, [true, true, true]);
    let seen = opened.seen(&batched).await;
    assert_eq!(seen, opened.seen(&single).await);
    assert_eq!(
        seen.matches("alert endpoint_recovered").count(),
        2,
        "{seen}"
    );
    assert!(!seen.contains("outage since"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_attempts_claims_the_lanes_next_deliveries_in_the_same_call() {
    let opened = open().await;
    let event_type = herald::catalog::default_catalog()[0].name.clone();
    let endpoint = opened.endpoint("lane", &event_type).await;
    let t0 = Utc::now();
    for n in 0..5 {
        let event = new_event(&event_type, t0, n);
        opened.store.insert_event(&event).await.expect("insert");
    }
    let first = opened.claim(&endpoint, t0, 2).await;
    let outcomes = first
        .iter()
        .map(|c| outcome(c, Went::Succeeded, t0))
        .collect();
    let then_claim = Some((request(&endpoint, t0), 10));
    let recorded = opened.store.record_many(outcomes, then_claim).await;
    let recorded = recorded.expect("record");
    assert_eq!(recorded.stored, [true, true]);
    let seqs = |claims: &[Claimed]| claims.iter().map(|c| c.seq).collect::<Vec<_>>();
    let all: Vec<i64> = seqs(&first)
        .into_iter()
        .chain(seqs(&recorded.next))
        .collect();
    assert_eq!(recorded.next.len(), 3);
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "in accepted order: {all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_for_a_deleted_endpoint_stores_nothing_and_fails_nothing() {
    let opened = open().await;
    let event_type = herald::catalog::default_catalog()[0].name.clone();
    let endpoint = opened.endpoint("gone", &event_type).await;
    let t0 = Utc::now();
    for n in 0..3 {
        let event = new_event(&event_type, t0, n);
        opened.store.insert_event(&event).await.expect("insert");
    }
    let claimed = opened.claim(&endpoint, t0, 3).await;
    opened.store.delete_endpoint(&endpoint).await.unwrap();
    let outcomes = vec![
        outcome(&claimed[0], Went::Succeeded, t0),
        outcome(&claimed[1], Went::Failed, t0),
        outcome(&claimed[2], Went::Succeeded, t0),
    ];
    let then_claim = Some((request(&endpoint, t0), 10));
    let recorded = opened.store.record_many(outcomes, then_claim).await;
    let recorded = recorded.expect("record");
    assert_eq!(recorded.stored, [false, false, false]);
    assert!(recorded.next.is_empty());
    assert!(opened
        .store
        .list_alerts(None, 10)
        .await
        .unwrap()
        .items
        .is_empty());
}

/// A write that PostgreSQL refuses (a NUL character in a text column) breaks the
/// transaction it runs in; the writes batched with it still commit, and only its own
/// caller learns of the error. SQLite stores the NUL, so there is nothing to break.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_in_a_group_commit_leaves_the_rest_of_its_batch_committed() {
    if !on_postgres() {
        return;
    }
    let opened = open().await;
    let event_type = herald::catalog::default_catalog()[0].name.clone();
    let endpoint = opened.endpoint("batch", &event_type).await;
    let t0 = Utc::now();
    for n in 0..4 {
        let event = new_event(&event_type, t0, n);
        opened.store.insert_event(&event).await.expect("insert");
    }
    let claimed = opened.claim(&endpoint, t0, 4).await;

    let mut events: Vec<NewEvent> = (10..40).map(|n| new_event(&event_type, t0, n)).collect();
    events[15].body = "{\"text\":\"\0\"}".to_string();
    let inserts = events.iter().map(|event| opened.store.insert_event(event));
    let outcomes = claimed
        .iter()
        .map(|c| outcome(c, Went::Succeeded, t0))
        .collect();
    let (inserted, recorded) = tokio::join!(
        futures_util::future::join_all(inserts),
        opened.store.record_many(outcomes, None),
    );

    assert_eq!(recorded.expect("record").stored, [true; 4]);
    for (n, result) in inserted.iter().enumerate() {
        match (n, result) {
            (15, Err(StoreError::Database(_))) => {}
            (15, other) => panic!("the event with a NUL was answered {other:?}"),
            (_, Ok(accepted)) => assert_eq!(accepted.deliveries, 1),
            (_, Err(err)) => panic!("event {n} failed with its batch: {err}"),
        }
    }
    let filter = DeliveryFilter {
        endpoint_id: Some(endpoint.clone()),
        limit: 100,
        ..DeliveryFilter::default()
    };
    let stored = opened.store.list_deliveries(&filter).await.unwrap();
    assert_eq!(stored.items.len(), 4 + 29);
}

/// An event type with more subscribers than ingest usually expects still gets one
/// delivery per enabled subscriber, each in endpoint order, and the next event of it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_many_subscribers_gets_a_delivery_for_each() {
    let opened = open().await;
    let event_type = herald::catalog::default_catalog()[0].name.clone();
    let mut endpoints = Vec::new();
    for n in 0..40 {
        endpoints.push(opened.endpoint(&format!("ep-{n:02}"), &event_type).await);
    }
    endpoints.sort();
    let now = Utc::now();
    for n in 0..2 {
        let accepted = opened
            .store
            .insert_event(&new_event(&event_type, now, n))
            .await
            .expect("event stored");
        assert_eq!(accepted.deliveries, 40);
    }
    for endpoint_id in &endpoints {
        let filter = DeliveryFilter {
            endpoint_id: Some(endpoint_id.clone()),
            limit: 10,
            ..DeliveryFilter::default()
        };
        let page = opened.store.list_deliveries(&filter).await.unwrap();
        assert_eq!(page.items.len(), 2, "two deliveries for {endpoint_id}");
    }
}

/// Events accepted at the same moment are stored together; each still gets exactly
/// the answer and the deliveries it would get alone: one per enabled subscriber (also
/// for a type that gained subscribers since its last event, or has more than ingest
/// expects), none for a type nobody subscribes to, and a refusal for an unknown type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_together_each_get_their_own_answer_and_deliveries() {
    let opened = open().await;
    let catalog = herald::catalog::default_catalog();
    let (grown, unsubscribed, crowded) = (&catalog[0].name, &catalog[1].name, &catalog[2].name);
    let mut subscribers: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    for n in 0..3 {
        subscribers[0].push(opened.endpoint(&format!("grown-{n}"), grown).await);
    }
    let now = Utc::now();
    let first = opened.store.insert_event(&new_event(grown, now, 0)).await;
    assert_eq!(first.expect("first event").deliveries, 3);
    let had_first = subscribers[0].clone();
    subscribers[0].push(opened.endpoint("grown-3", grown).await);
    for n in 0..12 {
        subscribers[1].push(opened.endpoint(&format!("crowded-{n:02}"), crowded).await);
    }
    for list in &mut subscribers {
        list.sort();
    }

    let types = [grown.as_str(), unsubscribed, "no.such.type", crowded];
    let events: Vec<NewEvent> = (0..80)
        .map(|n| new_event(types[n % types.len()], now, n))
        .collect();
    let answers =
        futures_util::future::join_all(events.iter().map(|e| opened.store.insert_event(e)));
    let answers = answers.await;

    let mut expected_per_endpoint = std::collections::HashMap::<String, usize>::new();
    for (n, (event, answer)) in events.iter().zip(&answers).enumerate() {
        match (n % types.len(), answer) {
            (2, Err(StoreError::UnknownEventType)) => continue,
            (kind, Ok(accepted)) if kind != 2 => {
                let wanted: &[String] = match kind {
                    0 => &subscribers[0],
                    3 => &subscribers[1],
                    _ => &[],
                };
                assert_eq!(accepted.event_id, event.id);
                assert_eq!(accepted.deliveries, wanted.len() as i64, "event {n}");
                assert_eq!(accepted.endpoints, wanted, "event {n}");
                assert!(!accepted.replayed);
                for endpoint_id in wanted {
                    *expected_per_endpoint
                        .entry(endpoint_id.clone())
                        .or_default() += 1;
                }
            }
            (_, other) => panic!(
                "event {n} of type {} was answered {other:?}",
                event.event_type
            ),
        }
    }
    for endpoint_id in subscribers.iter().flatten() {
        let filter = DeliveryFilter {
            endpoint_id: Some(endpoint_id.clone()),
            limit: 100,
            ..DeliveryFilter::default()
        };
        let page = opened.store.list_deliveries(&filter).await.unwrap();
        let stored: std::collections::HashSet<&str> =
            page.items.iter().map(|d| d.event_id.as_str()).collect();
        let expected =
            expected_per_endpoint[endpoint_id] + usize::from(had_first.contains(endpoint_id));
        assert_eq!(page.items.len(), expected, "deliveries of {endpoint_id}");
        assert_eq!(stored.len(), expected, "one delivery per event");
        for (n, event) in events.iter().enumerate() {
            let subscribed = match n % types.len() {
                0 => subscribers[0].contains(endpoint_id),
                3 => subscribers[1].contains(endpoint_id),
                _ => false,
            };
            assert_eq!(
                stored.contains(event.id.as_str()),
                subscribed,
                "event {n} at {endpoint_id}"
            );
        }
    }
}

/// On PostgreSQL, an event one process stores wakes the other processes, and not the
/// one that stored it: that one wakes its engine itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_wakes_the_other_processes_and_not_its_own() {
    let opened = open().await;
    let Some(database) = &opened.database else {
        return;
    };
    let other = PostgresStore::open(&database.url)
        .await
        .expect("second store");
    let mut own = opened.store.wakeups().expect("PostgreSQL sends wake-ups");
    let mut theirs = other.wakeups().expect("PostgreSQL sends wake-ups");
    // Each listener signals once when it starts listening.
    let wait = std::time::Duration::from_secs(10);
    for rx in [&mut own, &mut theirs] {
        let listening = tokio::time::timeout(wait, rx.changed()).await;
        listening.expect("listening").expect("listener alive");
        rx.borrow_and_update();
    }

    let event_type = herald::catalog::default_catalog()[0].name.clone();
    opened.endpoint("woken", &event_type).await;
    let event = new_event(&event_type, Utc::now(), 1);
    opened
        .store
        .insert_event(&event)
        .await
        .expect("event stored");

    let woken = tokio::time::timeout(wait, theirs.changed()).await;
    woken
        .expect("the other process is woken")
        .expect("listener alive");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!own.has_changed().unwrap(), "woken by its own notification");
}

/// A store knows whether another process works on it: never on SQLite, which one
/// process owns; on PostgreSQL, once a second store is open on the same database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_knows_when_another_process_shares_it() {
    let opened = open().await;
    assert!(!opened.store.other_processes().await.unwrap(), "alone");
    let Some(database) = &opened.database else {
        return;
    };
    let second = PostgresStore::open(&database.url).await.expect("open");
    second.ping().await.expect("the second store connects");
    assert!(opened.store.other_processes().await.unwrap(), "shared");
    assert!(
        second.other_processes().await.unwrap(),
        "shared, seen from the second"
    );
}
