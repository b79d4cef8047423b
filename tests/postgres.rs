//! What only a shared store has: several processes on one PostgreSQL database, and a
//! database that goes away and comes back.
//!
//! These tests run only with `HERALD_TEST_STORE=postgres` (and return at once
//! otherwise): SQLite is owned by one process through its lock file, so there is no
//! second process to share with, and there is no server to stop.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::process::{free_port, Install, BIN};
use common::{on_postgres, Options, Receiver, Reply, TestDatabase, TestServer};
use herald::model::NewEvent;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_that_migrate_together_take_turns() {
    if !on_postgres() {
        return;
    }
    let install = Install::new().await;
    let url = &install.database.as_ref().unwrap().url;
    let migrations: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(BIN)
                .args(["migrate", "--database-url", url])
                .output()
        })
        .collect();
    for migration in migrations {
        let output = migration.unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let port = free_port();
    let _herald = common::process::Process::start(&install, port);
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_start_together_migrate_once_and_make_one_first_admin() {
    if !on_postgres() {
        return;
    }
    let database = Arc::new(TestDatabase::create().await);
    let starts = (0..3).map(|_| {
        TestServer::start_with(Options {
            database: Some(database.clone()),
            token: Some(String::new()),
            ..Options::default()
        })
    });
    let servers = futures_util::future::join_all(starts).await;
    let tokens: Vec<_> = servers.iter().filter(|s| !s.token.is_empty()).collect();
    assert_eq!(tokens.len(), 1, "exactly one server wrote the first token");
    let (status, _) = servers[2]
        .api_as(&tokens[0].token, Method::GET, "/api/v1/endpoints", None)
        .await;
    assert_eq!(status, 200, "the token works on every server");
}

/// An event stored by one process (here: straight through its store, as its API would)
/// reaches the other's idle engine by NOTIFY, long before its one-second poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_accepted_by_one_process_wakes_the_others_at_once() {
    if !on_postgres() {
        return;
    }
    let receiver = Receiver::start().await;
    let first = TestServer::start().await;
    let endpoint = first.endpoint(&receiver.url, &["invoice.paid"]).await;
    let second = first.sibling().await;
    let store = first.server.as_ref().unwrap().store.clone();
    first.stop().await;

    // Seven events, each landing somewhere else within the other process's one-second
    // poll: without a notification the chance that all seven beat the bound is 1 in 128.
    for n in 0..7 {
        tokio::time::sleep(Duration::from_millis(130 * n)).await;
        let stored = Instant::now();
        store.insert_event(&new_event(n)).await.unwrap();
        receiver.wait_posts(n as usize + 1).await;
        let waited = receiver.posts()[n as usize].at - stored;
        assert!(
            waited < Duration::from_millis(500),
            "event {n} reached the other process after {waited:?}"
        );
    }
    assert_eq!(second.deliveries(&endpoint).await.len(), 7);
}

fn new_event(n: u64) -> NewEvent {
    let body = json!({"event": "invoice.paid", "object_id": n, "current": {}}).to_string();
    let parsed = herald::payload::parse_event(body.as_bytes(), chrono::Utc::now()).unwrap();
    NewEvent {
        id: herald::ids::new_id("evt"),
        event_type: parsed.event_type,
        object_key: parsed.object_key,
        body: parsed.body,
        accepted_at: chrono::Utc::now(),
        idempotency_key: None,
        request_hash: parsed.request_hash,
    }
}

/// Two processes, both with work for one endpoint: its receiver never has two requests
/// in flight, and gets the events in the order they were accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_never_attempt_one_endpoint_at_once_and_keep_its_order() {
    if !on_postgres() {
        return;
    }
    let receiver = Receiver::answering(Reply::Delayed(Duration::from_millis(5), 200)).await;
    let first = TestServer::start().await;
    let endpoint = first.endpoint(&receiver.url, &["ticket.created"]).await;
    let second = first.sibling().await;

    let mut emitted = Vec::new();
    for n in 0..60 {
        let server = if n % 2 == 0 { &first } else { &second };
        emitted.push(server.emit("ticket.created", json!(n), json!({})).await);
    }
    let posts = receiver.wait_posts(60).await;
    let received: Vec<&str> = posts.iter().map(|p| p.header("webhook-id")).collect();
    assert_eq!(received, emitted, "accepted order");
    assert_eq!(receiver.max_in_flight(), 1);
    common::eventually("every delivery recorded", || async {
        let list = second.deliveries(&endpoint).await;
        list.iter().all(|d| d["status"] == "succeeded")
    })
    .await;
}

/// The database is stopped and started again under a running server: ingest answers
/// 503 while it is away, `/healthz` says degraded and then ok, an attempt that was in
/// flight is made again once its lease runs out, and new events flow again without
/// anyone restarting Herald.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_and_heals_by_itself() {
    if !on_postgres() {
        return;
    }
    let cluster = Cluster::start();
    let database = Arc::new(TestDatabase::create_on(&cluster.admin_url()).await);
    let server = TestServer::start_with(Options {
        database: Some(database.clone()),
        manual_clock: true,
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let endpoint = server.endpoint(&receiver.url, &["job.created"]).await;
    let other = Receiver::start().await;
    server.endpoint(&other.url, &["job.updated"]).await;
    server.emit("job.created", json!(1), json!({})).await;
    receiver.wait_posts(1).await;

    // The database goes away while an attempt is in flight.
    receiver.script([Reply::Delayed(Duration::from_millis(1500), 200)]);
    server.emit("job.created", json!(2), json!({})).await;
    receiver.wait_posts(2).await;
    cluster.stop();

    assert_eq!(healthz(&server).await, (503, json!("degraded")));
    let body = json!({"event": "job.updated", "object_id": 3, "current": {}});
    let (status, answer) = server.api(Method::POST, "/api/v1/events", Some(body)).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (503, Some("store_unavailable"))
    );

    cluster.resume();
    common::eventually("healthz ok again", || async {
        healthz(&server).await == (200, json!("ok"))
    })
    .await;
    server.emit("job.updated", json!(4), json!({})).await;
    let posts = other.wait_posts(1).await;
    assert_eq!(
        posts[0].json()["object_id"],
        json!(4),
        "the refused event was not stored"
    );

    // The attempt in flight at the outage could not be recorded; its lease keeps it
    // (and the endpoint) from being attempted again until it runs out: the attempt
    // timeout plus 30 seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.posts().len(), 2);
    server.advance(Duration::from_secs(36));
    let posts = receiver.wait_posts(3).await;
    assert_eq!(posts[2].json()["object_id"], json!(2));
    assert_eq!(posts[2].header("webhook-id"), posts[1].header("webhook-id"));
    common::eventually("nothing left in flight", || async {
        let list = server.deliveries(&endpoint).await;
        list.len() == 2 && list.iter().all(|d| d["status"] == "succeeded")
    })
    .await;
    assert_eq!(other.posts().len(), 1);
}

async fn healthz(server: &TestServer) -> (u16, Value) {
    let response = server
        .http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["status"].clone())
}
