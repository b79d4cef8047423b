//! The delivery engine seen from outside: what a receiver gets, retries on a driven
//! clock, failure kinds, order, and endpoints that are disabled or deleted.

mod common;

use std::time::Duration;

use common::{eventually, Options, Receiver, Reply, TestServer};
use herald::signing;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn webhook_carries_the_body_headers_and_a_valid_signature() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let endpoint = server.endpoint(&receiver.url, &["account.status"]).await;
    let secret = server
        .get(&format!("/api/v1/endpoints/{endpoint}/secret"))
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();

    let event_id = server
        .emit("account.status", json!(42), json!({"status": "active"}))
        .await;
    let post = receiver.wait_posts(1).await.remove(0);

    assert_eq!(post.header("webhook-id"), event_id);
    assert_eq!(post.header("content-type"), "application/json");
    assert!(post.header("user-agent").starts_with("herald/"));
    let body = post.json();
    assert_eq!(body["event"], "account.status");
    assert_eq!(body["object_id"], 42);
    assert!(body["current"]["created_at"]
        .as_str()
        .unwrap()
        .ends_with("+00:00"));
    assert!(post
        .body
        .starts_with(r#"{"event":"account.status","object_id":42,"current":{"created_at":"#));
    assert!(post.body.ends_with(r#","status":"active"}}"#));
    assert!(signing::verify(
        &secret,
        &event_id,
        post.header("webhook-timestamp"),
        post.body.as_bytes(),
        post.header("webhook-signature")
    ));
}

#[tokio::test]
async fn first_attempt_starts_within_milliseconds_of_the_202() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    server.endpoint(&receiver.url, &["account.created"]).await;

    let sent = std::time::Instant::now();
    server.emit("account.created", json!(1), json!({})).await;
    let post = receiver.wait_posts(1).await.remove(0);
    assert!(
        post.at.duration_since(sent) < Duration::from_millis(500),
        "took {:?}",
        post.at.duration_since(sent)
    );
}

#[tokio::test]
async fn failed_delivery_is_retried_every_minute_for_four_hours_then_fails_and_alerts() {
    let server = TestServer::with_manual_clock().await;
    let receiver = Receiver::answering(Reply::Status(500)).await;
    let endpoint = server.endpoint(&receiver.url, &["invoice.created"]).await;
    server
        .emit("invoice.created", json!("inv-7"), json!({"total": 10}))
        .await;

    let first = receiver.wait_posts(1).await;
    let delivery_id = server.deliveries(&endpoint).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for n in 2..=241 {
        server
            .wait_delivery(&delivery_id, |d| d["attempt_count"] == json!(n - 1))
            .await;
        server.advance(Duration::from_secs(60));
        receiver.wait_posts(n).await;
    }
    let delivery = server
        .wait_delivery(&delivery_id, |d| d["status"] == "failed")
        .await;

    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 241, "one first attempt and 240 retries");
    let times: Vec<chrono::DateTime<chrono::Utc>> = attempts
        .iter()
        .map(|a| a["attempted_at"].as_str().unwrap().parse().unwrap())
        .collect();
    for pair in times.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_seconds(), 60);
    }
    assert_eq!((times[240] - times[0]).num_seconds(), 4 * 3600);

    let posts = receiver.posts();
    assert_eq!(posts.len(), 241);
    assert!(posts
        .iter()
        .all(|p| p.header("webhook-id") == first[0].header("webhook-id")));
    assert!(posts.iter().all(|p| p.body == first[0].body));
    assert_ne!(
        posts[0].header("webhook-timestamp"),
        posts[1].header("webhook-timestamp")
    );

    // No attempt after the window, however far the clock moves.
    server.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.posts().len(), 241);

    eventually("the failing alert", || async {
        let alerts = server.get("/api/v1/alerts").await;
        alerts["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "endpoint_failing" && a["endpoint_id"] == json!(endpoint))
    })
    .await;
}

#[tokio::test]
async fn a_retry_succeeds_once_the_receiver_answers_again() {
    let server = TestServer::with_manual_clock().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(503), Reply::Status(500)]);
    let endpoint = server.endpoint(&receiver.url, &["account.status"]).await;
    server.emit("account.status", json!(1), json!({})).await;

    receiver.wait_posts(1).await;
    let id = server.deliveries(&endpoint).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.wait_delivery(&id, |d| d["attempt_count"] == 1).await;
    server.advance(Duration::from_secs(60));
    server.wait_delivery(&id, |d| d["attempt_count"] == 2).await;
    server.advance(Duration::from_secs(60));
    let delivery = server
        .wait_delivery(&id, |d| d["status"] == "succeeded")
        .await;

    let statuses: Vec<_> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(statuses, vec![json!(503), json!(500), json!(200)]);
    assert_eq!(delivery["next_attempt_at"], serde_json::Value::Null);
}

#[tokio::test]
async fn only_200_setting_makes_other_2xx_a_failure() {
    let server = TestServer::start_with(Options {
        configure: Box::new(|s| s.delivery.success = herald::settings::SuccessRule::Only200),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::answering(Reply::Status(204)).await;
    let endpoint = server.endpoint(&receiver.url, &["ticket.created"]).await;
    server.emit("ticket.created", json!(3), json!({})).await;

    receiver.wait_posts(1).await;
    let id = server.deliveries(&endpoint).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let delivery = server.wait_delivery(&id, |d| d["attempt_count"] == 1).await;
    assert_eq!(delivery["status"], "pending");
    assert_eq!(delivery["attempts"][0]["error_kind"], "http_status");
}

/// Runs one scripted misbehaviour and returns the recorded attempt.
async fn attempt_against(reply: Reply, timeout: Duration) -> (serde_json::Value, Receiver) {
    let server = TestServer::start_with(Options {
        configure: Box::new(move |s| s.delivery.attempt_timeout = timeout),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::answering(reply).await;
    let endpoint = server.endpoint(&receiver.url, &["job.created"]).await;
    server.emit("job.created", json!(9), json!({})).await;
    receiver.wait_posts(1).await;
    let id = server.deliveries(&endpoint).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let delivery = server.wait_delivery(&id, |d| d["attempt_count"] == 1).await;
    assert_eq!(
        delivery["status"], "pending",
        "every failure kind is retried"
    );
    (delivery["attempts"][0].clone(), receiver)
}

#[tokio::test]
async fn each_failure_has_its_own_error_kind() {
    let second = Duration::from_secs(1);
    let cases = [
        (Reply::Hang, "timeout"),
        (Reply::HeadersThenStall, "timeout"),
        (Reply::StreamForever, "timeout"),
        (Reply::CloseMidway, "connection_reset"),
        (Reply::Status(500), "http_status"),
        (
            Reply::WithHeaders(
                307,
                vec![("Location", "http://127.0.0.1:1/elsewhere".into())],
            ),
            "redirect",
        ),
    ];
    for (reply, kind) in cases {
        let started = std::time::Instant::now();
        let (attempt, _receiver) = attempt_against(reply.clone(), second).await;
        assert_eq!(attempt["error_kind"], kind, "{reply:?}: {attempt}");
        assert!(attempt["error"].as_str().unwrap().starts_with(kind));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{reply:?} held the attempt past the timeout"
        );
    }
}

#[tokio::test]
async fn a_refused_connection_is_its_own_error_kind() {
    let server = TestServer::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hook",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    let endpoint = server.endpoint(&url, &["job.created"]).await;
    server.emit("job.created", json!(9), json!({})).await;

    eventually("an attempt", || async {
        server.deliveries(&endpoint).await[0]["attempt_count"] == 1
    })
    .await;
    let delivery = server.only_delivery(&endpoint).await;
    assert_eq!(delivery["attempts"][0]["error_kind"], "connection_refused");
    assert_eq!(delivery["status"], "pending");
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_its_location_is_kept() {
    let target = Receiver::start().await;
    let (attempt, _receiver) = attempt_against(
        Reply::WithHeaders(308, vec![("Location", target.url.clone())]),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(attempt["status_code"], 308);
    assert_eq!(attempt["response_headers"]["location"], json!(target.url));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(target.requests().is_empty(), "nothing reaches the Location");
}

#[tokio::test]
async fn a_huge_reply_is_cut_at_64_kib_without_reading_it_all() {
    let size = 50 * 1024 * 1024;
    let (attempt, receiver) = attempt_against(Reply::Huge(size), Duration::from_secs(5)).await;
    assert_eq!(attempt["status_code"], 500);
    assert_eq!(attempt["response_body"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(attempt["response_truncated"], true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        receiver.body_bytes_sent() < size / 2,
        "sent {} bytes",
        receiver.body_bytes_sent()
    );
}

#[tokio::test]
async fn an_answering_endpoint_gets_events_in_accepted_order() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    server.endpoint(&receiver.url, &["account.updated"]).await;
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(
            server
                .emit("account.updated", json!(n), json!({"n": n}))
                .await,
        );
    }
    let posts = receiver.wait_posts(60).await;
    let got: Vec<&str> = posts.iter().map(|p| p.header("webhook-id")).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_failing_delivery_does_not_hold_back_later_ones() {
    let server = TestServer::with_manual_clock().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500)]);
    server.endpoint(&receiver.url, &["account.updated"]).await;
    let first = server.emit("account.updated", json!(1), json!({})).await;
    let second = server.emit("account.updated", json!(2), json!({})).await;

    let posts = receiver.wait_posts(2).await;
    assert_eq!(posts[0].header("webhook-id"), first);
    assert_eq!(posts[1].header("webhook-id"), second);
    server.advance(Duration::from_secs(60));
    let posts = receiver.wait_posts(3).await;
    assert_eq!(posts[2].header("webhook-id"), first);
}

#[tokio::test]
async fn one_slow_endpoint_does_not_slow_the_others() {
    let server = TestServer::start().await;
    let slow = Receiver::answering(Reply::Hang).await;
    let fast = Receiver::start().await;
    server.endpoint(&slow.url, &["ticket.updated"]).await;
    server.endpoint(&fast.url, &["ticket.updated"]).await;

    let started = std::time::Instant::now();
    for n in 0..20 {
        server.emit("ticket.updated", json!(n), json!({})).await;
    }
    fast.wait_posts(20).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fast endpoint waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_disabled_endpoint_gets_nothing_and_resumes_when_enabled() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let endpoint = server.endpoint(&receiver.url, &["contact.created"]).await;
    server.emit("contact.created", json!(1), json!({})).await;
    receiver.wait_posts(1).await;

    // A retry pending while the endpoint is disabled waits for it.
    receiver.script([Reply::Status(500)]);
    server.emit("contact.created", json!(2), json!({})).await;
    receiver.wait_posts(2).await;
    eventually("the failed attempt", || async {
        server
            .deliveries(&endpoint)
            .await
            .iter()
            .any(|d| d["status"] == "pending" && d["attempt_count"] == 1)
    })
    .await;
    let (status, _) = server
        .api(
            Method::PATCH,
            &format!("/api/v1/endpoints/{endpoint}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);

    let (_, answer) = server
        .api(
            Method::POST,
            "/api/v1/events",
            Some(json!({"event": "contact.created", "object_id": 3, "current": {}})),
        )
        .await;
    assert_eq!(
        answer["deliveries"], 0,
        "a disabled endpoint gets no new deliveries"
    );
    let pending = server
        .deliveries(&endpoint)
        .await
        .into_iter()
        .find(|d| d["status"] == "pending")
        .unwrap();
    let id = pending["id"].as_str().unwrap().to_string();
    let (status, body) = server
        .api(
            Method::POST,
            &format!("/api/v1/deliveries/{id}/resend"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.posts().len(), 2);

    let (status, body) = server
        .api(
            Method::PATCH,
            &format!("/api/v1/endpoints/{endpoint}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    receiver.wait_posts(3).await;
    server
        .wait_delivery(&id, |d| d["status"] == "succeeded")
        .await;
}

#[tokio::test]
async fn a_deleted_endpoint_gets_nothing_more() {
    let server = TestServer::start().await;
    let receiver = Receiver::answering(Reply::Delayed(Duration::from_millis(300), 500)).await;
    let endpoint = server.endpoint(&receiver.url, &["job.updated"]).await;
    server.emit("job.updated", json!(1), json!({})).await;
    server.emit("job.updated", json!(2), json!({})).await;
    receiver.wait_posts(1).await;

    let (status, _) = server
        .api(
            Method::DELETE,
            &format!("/api/v1/endpoints/{endpoint}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.posts().len(),
        1,
        "the delivery behind the one in flight is cancelled"
    );
    let (status, _) = server
        .api(
            Method::GET,
            &format!("/api/v1/endpoints/{endpoint}/deliveries"),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // The engine keeps working for other endpoints.
    let other = Receiver::start().await;
    server.endpoint(&other.url, &["job.updated"]).await;
    server.emit("job.updated", json!(3), json!({})).await;
    other.wait_posts(1).await;
}

#[tokio::test]
async fn resend_sends_a_failed_delivery_again_with_a_new_window() {
    let server = TestServer::start_with(Options {
        manual_clock: true,
        configure: Box::new(|s| s.delivery.retry_window = Duration::ZERO),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::answering(Reply::Status(500)).await;
    let endpoint = server.endpoint(&receiver.url, &["payment.created"]).await;
    server.emit("payment.created", json!(5), json!({})).await;
    receiver.wait_posts(1).await;
    let id = server.deliveries(&endpoint).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.wait_delivery(&id, |d| d["status"] == "failed").await;

    receiver.set_default(Reply::Status(200));
    let (status, _) = server
        .api(
            Method::POST,
            &format!("/api/v1/deliveries/{id}/resend"),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let delivery = server
        .wait_delivery(&id, |d| d["status"] == "succeeded")
        .await;
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 2);
    let posts = receiver.posts();
    assert_eq!(posts[0].header("webhook-id"), posts[1].header("webhook-id"));
}

#[tokio::test]
async fn recover_resends_every_failed_delivery_since_a_time() {
    let server = TestServer::start_with(Options {
        manual_clock: true,
        configure: Box::new(|s| s.delivery.retry_window = Duration::ZERO),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::answering(Reply::Status(500)).await;
    let endpoint = server.endpoint(&receiver.url, &["payment.created"]).await;
    for n in 0..3 {
        server.emit("payment.created", json!(n), json!({})).await;
    }
    receiver.wait_posts(3).await;
    eventually("three failed deliveries", || async {
        server
            .deliveries(&endpoint)
            .await
            .iter()
            .all(|d| d["status"] == "failed")
    })
    .await;

    receiver.set_default(Reply::Status(200));
    let since = "2000-01-01T00:00:00Z";
    let (status, answer) = server
        .api(
            Method::POST,
            &format!("/api/v1/endpoints/{endpoint}/recover"),
            Some(json!({"since": since})),
        )
        .await;
    assert_eq!((status, answer["resent"].clone()), (202, json!(3)));
    receiver.wait_posts(6).await;
    eventually("three succeeded deliveries", || async {
        server
            .deliveries(&endpoint)
            .await
            .iter()
            .all(|d| d["status"] == "succeeded")
    })
    .await;
}

#[tokio::test]
async fn retry_after_moves_the_next_attempt_and_410_disables_the_endpoint() {
    let server = TestServer::with_manual_clock().await;
    let receiver = Receiver::start().await;
    receiver.script([
        Reply::WithHeaders(429, vec![("Retry-After", "300".into())]),
        Reply::Status(410),
    ]);
    let endpoint = server.endpoint(&receiver.url, &["service.created"]).await;
    server.emit("service.created", json!(1), json!({})).await;
    receiver.wait_posts(1).await;
    let id = server.deliveries(&endpoint).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let delivery = server.wait_delivery(&id, |d| d["attempt_count"] == 1).await;
    let attempted: chrono::DateTime<chrono::Utc> = delivery["attempts"][0]["attempted_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let next: chrono::DateTime<chrono::Utc> = delivery["next_attempt_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!((next - attempted).num_seconds(), 300);

    server.advance(Duration::from_secs(300));
    server.wait_delivery(&id, |d| d["attempt_count"] == 2).await;
    let endpoint = server.get(&format!("/api/v1/endpoints/{endpoint}")).await;
    assert_eq!(endpoint["enabled"], false);
    assert!(endpoint["disabled_reason"]
        .as_str()
        .unwrap()
        .contains("410"));
}

#[tokio::test]
async fn a_recovered_endpoint_raises_one_recovery_alert_after_one_failing_alert() {
    let server = TestServer::start_with(Options {
        manual_clock: true,
        configure: Box::new(|s| s.delivery.retry_window = Duration::ZERO),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::answering(Reply::Status(500)).await;
    let endpoint = server.endpoint(&receiver.url, &["account.deleted"]).await;
    for n in 0..5 {
        server.emit("account.deleted", json!(n), json!({})).await;
    }
    receiver.wait_posts(5).await;
    receiver.set_default(Reply::Status(200));
    server.emit("account.deleted", json!(6), json!({})).await;
    // Five failures in a row paused the endpoint; the next probe comes a little later.
    server.advance(Duration::from_secs(6));
    receiver.wait_posts(6).await;

    eventually("two alerts", || async {
        let alerts = server.get("/api/v1/alerts").await;
        alerts["data"].as_array().unwrap().len() >= 2
    })
    .await;
    let alerts = server.get("/api/v1/alerts").await;
    let kinds: Vec<_> = alerts["data"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|a| a["kind"].clone())
        .collect();
    assert_eq!(
        kinds,
        vec![json!("endpoint_failing"), json!("endpoint_recovered")]
    );
    let detail = &alerts["data"][1]["detail"];
    assert!(
        detail["failed_deliveries"].as_i64().unwrap() >= 1,
        "{detail}"
    );
    assert_eq!(detail["endpoint_url"], json!(receiver.url));
    assert_eq!(detail["last_status"], 500);
    assert_eq!(alerts["data"][0]["endpoint_id"], json!(endpoint));
}

/// PostgreSQL refuses the NUL character in text, and SQLite stores it as it is; on both
/// the attempt is recorded, and the API shows the NUL escaped, as JSON writes it.
#[tokio::test]
async fn a_reply_with_nul_bytes_and_invalid_utf8_is_recorded_and_shown_escaped() {
    let body = b"ok\0then \xff\xfe end".to_vec();
    let receiver = Receiver::answering(Reply::RawBody(body)).await;
    let server = TestServer::start().await;
    let endpoint = server.endpoint(&receiver.url, &["account.created"]).await;
    server.emit("account.created", json!(1), json!({})).await;

    receiver.wait_posts(1).await;
    let list = server.deliveries(&endpoint).await;
    let id = list[0]["id"].as_str().unwrap().to_string();
    let delivery = server
        .wait_delivery(&id, |d| d["status"] == "succeeded")
        .await;
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["response_body"], "ok\u{0}then \u{fffd}\u{fffd} end");
    assert_eq!(attempt["response_headers"]["x-raw"], "caf\u{fffd}");

    let raw = server
        .http
        .get(format!("{}/api/v1/deliveries/{id}", server.base))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.contains(r#""response_body":"ok\u0000then"#), "{raw}");
}

#[tokio::test]
async fn a_410_in_the_middle_of_a_batch_stops_the_lane_there() {
    let server = TestServer::with_manual_clock().await;
    let receiver = Receiver::start().await;
    // The first reply is slow, so every event is waiting by the time it comes; then the
    // lane claims 2, then 4, and the sixth attempt is the third of a batch of four.
    receiver.script(
        [Reply::Delayed(Duration::from_millis(300), 200)]
            .into_iter()
            .chain(std::iter::repeat_with(|| Reply::Status(200)).take(4))
            .chain([Reply::Status(410)]),
    );
    let endpoint = server.endpoint(&receiver.url, &["service.created"]).await;
    for n in 0..30 {
        server.emit("service.created", json!(n), json!({})).await;
    }
    receiver.wait_posts(6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.posts().len(), 6, "nothing follows the 410");
    let endpoint = server.get(&format!("/api/v1/endpoints/{endpoint}")).await;
    assert_eq!(endpoint["enabled"], false);
}
