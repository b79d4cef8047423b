//! Receivers that are down or slow, per-object order, and the network edge.

mod common;

use std::time::Duration;

use common::{eventually, Options, Receiver, Reply, TestServer};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_down_endpoint_is_not_flooded_and_drains_in_order_when_it_answers() {
    let server = TestServer::with_manual_clock().await;
    let receiver = Receiver::answering(Reply::Status(503)).await;
    let endpoint = server.endpoint(&receiver.url, &["invoice.created"]).await;
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(server.emit("invoice.created", json!(n), json!({})).await);
    }

    // Five failures in a row mark it down; then one attempt every six seconds.
    receiver.wait_posts(5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.posts().len(), 5);
    for step in 1..=9 {
        server.advance(Duration::from_secs(6));
        receiver.wait_posts(5 + step).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(receiver.posts().len(), 5 + step, "one attempt per pause");
    }

    receiver.set_default(Reply::Status(200));
    server.advance(Duration::from_secs(6));
    let drained = receiver.wait_posts(5 + 9 + 86).await;
    let fresh: Vec<&str> = drained[14..]
        .iter()
        .map(|p| p.header("webhook-id"))
        .collect();
    let mut sorted = fresh.clone();
    sorted.sort_by_key(|id| ids.iter().position(|i| i == id));
    assert_eq!(fresh, sorted, "the backlog drains in accepted order");

    server.advance(Duration::from_secs(60));
    eventually("every delivery succeeded", || async {
        server
            .deliveries(&endpoint)
            .await
            .iter()
            .all(|d| d["status"] == "succeeded")
    })
    .await;
}

#[tokio::test]
async fn a_delivery_waiting_on_a_disabled_endpoint_fails_when_its_window_ends() {
    let server = TestServer::start_with(Options {
        manual_clock: true,
        configure: Box::new(|s| s.delivery.retry_window = Duration::from_secs(120)),
    })
    .await;
    let receiver = Receiver::answering(Reply::Status(500)).await;
    let endpoint = server.endpoint(&receiver.url, &["ticket.created"]).await;
    server.emit("ticket.created", json!(1), json!({})).await;
    receiver.wait_posts(1).await;
    eventually("the first attempt", || async {
        server.deliveries(&endpoint).await[0]["attempt_count"] == 1
    })
    .await;
    let path = format!("/api/v1/endpoints/{endpoint}");
    server
        .api(Method::PATCH, &path, Some(json!({"enabled": false})))
        .await;

    for _ in 0..4 {
        server.advance(Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("the delivery failed", || async {
        server.deliveries(&endpoint).await[0]["status"] == "failed"
    })
    .await;
    eventually("the failing alert", || async {
        server.get("/api/v1/alerts").await["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "endpoint_failing")
    })
    .await;

    server
        .api(Method::PATCH, &path, Some(json!({"enabled": true})))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.posts().len(),
        1,
        "a delivery past its window does not resume"
    );
}

#[tokio::test]
async fn per_object_ordering_holds_back_only_the_same_object() {
    let server = TestServer::with_manual_clock().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500)]);
    server
        .endpoint_with(json!({"name": "p", "url": receiver.url, "events": ["account.status"], "ordering": "per_object", "verify": false}))
        .await;
    let a1 = server
        .emit("account.status", json!("A"), json!({"n": 1}))
        .await;
    let b1 = server
        .emit("account.status", json!("B"), json!({"n": 1}))
        .await;
    let a2 = server
        .emit("account.status", json!("A"), json!({"n": 2}))
        .await;

    let posts = receiver.wait_posts(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent: Vec<String> = receiver
        .posts()
        .iter()
        .map(|p| p.header("webhook-id").to_string())
        .collect();
    assert_eq!(
        sent,
        vec![a1.clone(), b1.clone()],
        "A2 waits for A1; B is not held up ({posts:?})"
    );

    server.advance(Duration::from_secs(60));
    let posts = receiver.wait_posts(4).await;
    let sent: Vec<&str> = posts.iter().map(|p| p.header("webhook-id")).collect();
    assert_eq!(
        sent,
        vec![a1.as_str(), b1.as_str(), a1.as_str(), a2.as_str()]
    );
}
