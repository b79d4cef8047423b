//! Receivers that are down or slow, per-object order, and the network edge.

mod common;

use std::time::Duration;

use common::{eventually, Options, Receiver, Reply, TestServer};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_down_endpoint_is_not_flooded_and_drains_in_order_when_it_answers() {
    let server = TestServer::start_with(Options {
        manual_clock: true,
        ..Options::default()
    })
    .await;
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
        ..Options::default()
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
    let alerts = server.get("/api/v1/alerts").await;
    assert!(
        alerts["data"].as_array().unwrap().is_empty(),
        "a disabled endpoint raises no alert: {alerts}"
    );

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

fn public_only() -> Options {
    Options {
        manual_clock: false,
        configure: Box::new(|s| {
            s.dev = false;
            s.delivery.allow_private = false;
        }),
        ..Options::default()
    }
}

#[tokio::test]
async fn literal_addresses_that_are_not_public_are_refused_at_create_time() {
    let server = TestServer::start_with(public_only()).await;
    for url in [
        "https://127.0.0.1/hook",
        "https://2130706433/",
        "https://0x7f.1/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:7f00:1]/",
        "https://[64:ff9b::a9fe:a9fe]/",
        "https://10.0.0.1/",
        "https://100.64.0.1/",
        "https://169.254.169.254/latest/meta-data",
        "https://0.0.0.0/",
        "https://224.0.0.1/",
    ] {
        let body = json!({"name": "x", "url": url, "events": [], "verify": false});
        let (status, answer) = server
            .api(Method::POST, "/api/v1/endpoints", Some(body))
            .await;
        assert_eq!(
            (status, answer["code"].as_str().unwrap()),
            (422, "blocked_destination"),
            "{url}: {answer}"
        );
    }
    let body = json!({"name": "x", "url": "http://example.com/", "events": [], "verify": false});
    let (status, answer) = server
        .api(Method::POST, "/api/v1/endpoints", Some(body))
        .await;
    assert_eq!(
        (status, answer["code"].as_str().unwrap()),
        (422, "invalid_url"),
        "plain http: {answer}"
    );
}

#[tokio::test]
async fn a_name_that_resolves_to_a_refused_address_fails_every_path_as_blocked_destination() {
    let server = TestServer::start_with(public_only()).await;
    let receiver = Receiver::start().await;
    // "localhost" resolves from the hosts file, so no query leaves the machine.
    let url = format!("https://localhost:{}/hook", receiver.port);

    let body = json!({"name": "x", "url": url, "events": ["account.created"]});
    let (status, answer) = server
        .api(Method::POST, "/api/v1/endpoints", Some(body))
        .await;
    assert_eq!(
        (status, answer["code"].clone()),
        (422, json!("url_check_failed"))
    );
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("blocked_destination"),
        "{answer}"
    );

    let endpoint = server.endpoint(&url, &["account.created"]).await;
    let (_, test) = server
        .api(
            Method::POST,
            &format!("/api/v1/endpoints/{endpoint}/test"),
            None,
        )
        .await;
    assert_eq!(test["success"], false);
    assert!(
        test["error"]
            .as_str()
            .unwrap()
            .starts_with("blocked_destination"),
        "{test}"
    );

    server.emit("account.created", json!(1), json!({})).await;
    eventually("the attempt", || async {
        server
            .deliveries(&endpoint)
            .await
            .iter()
            .any(|d| !d["test"].as_bool().unwrap() && d["status"] == "failed")
    })
    .await;
    let delivery = server
        .deliveries(&endpoint)
        .await
        .into_iter()
        .find(|d| d["test"] == false)
        .unwrap();
    let detail = server
        .get(&format!(
            "/api/v1/deliveries/{}",
            delivery["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(detail["attempts"][0]["error_kind"], "blocked_destination");
    assert_eq!(
        detail["attempts"].as_array().unwrap().len(),
        1,
        "a blocked destination is not retried"
    );
    assert!(
        receiver.requests().is_empty(),
        "nothing reached the receiver"
    );
}

#[tokio::test]
async fn an_allowed_network_opens_that_network_only() {
    let server = TestServer::start_with(Options {
        manual_clock: false,
        configure: Box::new(|s| {
            s.delivery.attempt_timeout = Duration::from_millis(500);
            s.dev = false;
            s.delivery.allow_private = false;
            s.delivery.allow_networks = vec!["127.0.0.0/8".parse().unwrap()];
        }),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let allowed = format!("https://127.0.0.1:{}/hook", receiver.port);
    let endpoint = server.endpoint(&allowed, &["account.created"]).await;
    let (_, test) = server
        .api(
            Method::POST,
            &format!("/api/v1/endpoints/{endpoint}/test"),
            None,
        )
        .await;
    // The receiver speaks plain HTTP, so the TLS handshake cannot finish; what matters is
    // that the connection was made.
    assert_eq!(test["success"], false);
    assert!(
        !test["error"]
            .as_str()
            .unwrap()
            .starts_with("blocked_destination"),
        "{test}"
    );
    assert_eq!(receiver.connections(), 1, "{test}");

    let body = json!({"name": "x", "url": "https://[::1]/", "events": [], "verify": false});
    let (status, answer) = server
        .api(Method::POST, "/api/v1/endpoints", Some(body))
        .await;
    assert_eq!(
        (status, answer["code"].clone()),
        (422, json!("blocked_destination"))
    );
}

#[tokio::test]
async fn urls_with_ports_ipv6_queries_and_international_names_are_kept() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let with_query = format!("http://127.0.0.1:{}/hook?token=a%20b&x=1", receiver.port);
    let endpoint = server.endpoint(&with_query, &["account.created"]).await;
    server.emit("account.created", json!(1), json!({})).await;
    let post = receiver.wait_posts(1).await.remove(0);
    assert_eq!(post.path, "/hook?token=a%20b&x=1");
    assert_eq!(
        server.get(&format!("/api/v1/endpoints/{endpoint}")).await["url"],
        json!(with_query)
    );

    let v6 = json!({"name": "v6", "url": "http://[::1]:9/hook", "events": [], "verify": false});
    let (status, created) = server
        .api(Method::POST, "/api/v1/endpoints", Some(v6))
        .await;
    assert_eq!(
        (status, created["url"].clone()),
        (201, json!("http://[::1]:9/hook"))
    );
    let idn =
        json!({"name": "idn", "url": "https://bücher.example/hook", "events": [], "verify": false});
    let (status, created) = server
        .api(Method::POST, "/api/v1/endpoints", Some(idn))
        .await;
    assert_eq!(
        (status, created["url"].clone()),
        (201, json!("https://xn--bcher-kva.example/hook"))
    );
}

#[tokio::test]
async fn a_delivery_retried_for_hours_keeps_only_its_first_and_latest_reply_bodies() {
    let server = TestServer::with_manual_clock().await;
    let receiver = Receiver::answering(Reply::Huge(200 * 1024)).await;
    let endpoint = server.endpoint(&receiver.url, &["job.created"]).await;
    server.emit("job.created", json!(1), json!({})).await;
    receiver.wait_posts(1).await;
    let id = server.deliveries(&endpoint).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for n in 1..=5 {
        server.wait_delivery(&id, |d| d["attempt_count"] == n).await;
        server.advance(Duration::from_secs(60));
    }
    let delivery = server.wait_delivery(&id, |d| d["attempt_count"] == 6).await;
    let kept: Vec<bool> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["response_body"].is_string())
        .collect();
    assert_eq!(kept, vec![true, false, false, false, false, true]);
    assert_eq!(delivery["attempts"][2]["response_body_dropped"], true);
    assert_eq!(
        delivery["attempts"][5]["response_body"]
            .as_str()
            .unwrap()
            .len(),
        64 * 1024
    );
}

#[tokio::test]
async fn settled_events_older_than_the_retention_period_are_removed() {
    // A retry window longer than the retention period keeps the second delivery pending.
    let server = TestServer::start_with(Options {
        manual_clock: true,
        configure: Box::new(|s| s.delivery.retry_window = Duration::from_secs(60 * 24 * 3600)),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let endpoint = server.endpoint(&receiver.url, &["job.created"]).await;
    server.emit("job.created", json!(1), json!({})).await;
    receiver.wait_posts(1).await;
    eventually("delivered", || async {
        server.deliveries(&endpoint).await[0]["status"] == "succeeded"
    })
    .await;
    let old = server.deliveries(&endpoint).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    receiver.set_default(Reply::Status(500));
    server.emit("job.created", json!(2), json!({})).await;
    receiver.wait_posts(2).await;
    server.advance(Duration::from_secs(31 * 24 * 3600));
    eventually("the old delivery removed", || async {
        server
            .api(Method::GET, &format!("/api/v1/deliveries/{old}"), None)
            .await
            .0
            == 404
    })
    .await;
    let left = server.deliveries(&endpoint).await;
    assert_eq!(left.len(), 1, "a delivery still pending is kept");
    assert_eq!(left[0]["payload"]["object_id"], 2);
}

#[tokio::test]
async fn a_slow_endpoint_with_a_backlog_still_gets_its_events_in_order() {
    // Batches of claims grow while the endpoint answers; order must hold across them.
    let server = TestServer::start_with(Options {
        manual_clock: false,
        configure: Box::new(|s| s.delivery.attempt_timeout = Duration::from_millis(300)),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::answering(Reply::Delayed(Duration::from_millis(20), 200)).await;
    server.endpoint(&receiver.url, &["ticket.updated"]).await;
    let mut ids = Vec::new();
    for n in 0..150 {
        ids.push(server.emit("ticket.updated", json!(n), json!({})).await);
    }
    let posts = receiver.wait_posts(150).await;
    let got: Vec<&str> = posts.iter().map(|p| p.header("webhook-id")).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test]
async fn disabling_an_endpoint_stops_its_lane_in_the_middle_of_a_batch() {
    let server = TestServer::start().await;
    let receiver = Receiver::answering(Reply::Delayed(Duration::from_millis(30), 200)).await;
    let endpoint = server.endpoint(&receiver.url, &["ticket.updated"]).await;
    for n in 0..200 {
        server.emit("ticket.updated", json!(n), json!({})).await;
    }
    receiver.wait_posts(20).await;
    let path = format!("/api/v1/endpoints/{endpoint}");
    server
        .api(Method::PATCH, &path, Some(json!({"enabled": false})))
        .await;
    let at_disable = receiver.posts().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        receiver.posts().len() <= at_disable + 1,
        "at most the attempt on the wire finishes"
    );
    assert!(receiver.posts().len() < 200);
}

#[tokio::test]
async fn a_batch_cut_short_by_its_lease_gives_the_rest_back_in_order() {
    // A lane starts no attempt it could not finish before its claim runs out; the clock
    // jumping past that point in the middle of a batch ends the lane there. The rest of
    // the batch is handed back and goes out next, before anything after it.
    let server = TestServer::with_manual_clock().await;
    let receiver = Receiver::answering(Reply::Delayed(Duration::from_millis(20), 200)).await;
    server.endpoint(&receiver.url, &["ticket.updated"]).await;
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(server.emit("ticket.updated", json!(n), json!({})).await);
    }
    receiver.wait_posts(10).await;
    server.advance(Duration::from_secs(31));
    let posts = receiver.wait_posts(60).await;
    let got: Vec<&str> = posts.iter().map(|p| p.header("webhook-id")).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
}
