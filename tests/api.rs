//! The HTTP API's contract: auth, shapes, validation and error codes.

mod common;

use common::{Receiver, Reply, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn every_api_route_needs_a_valid_bearer_token() {
    let server = TestServer::start().await;
    let routes = [
        (Method::POST, "/api/v1/events"),
        (Method::GET, "/api/v1/endpoints"),
        (Method::POST, "/api/v1/endpoints"),
        (Method::GET, "/api/v1/endpoints/ep_x"),
        (Method::PATCH, "/api/v1/endpoints/ep_x"),
        (Method::DELETE, "/api/v1/endpoints/ep_x"),
        (Method::POST, "/api/v1/endpoints/ep_x/test"),
        (Method::GET, "/api/v1/endpoints/ep_x/secret"),
        (Method::POST, "/api/v1/endpoints/ep_x/secret/rotate"),
        (Method::GET, "/api/v1/endpoints/ep_x/deliveries"),
        (Method::POST, "/api/v1/endpoints/ep_x/recover"),
        (Method::GET, "/api/v1/deliveries"),
        (Method::GET, "/api/v1/deliveries/dlv_x"),
        (Method::POST, "/api/v1/deliveries/dlv_x/resend"),
        (Method::GET, "/api/v1/event-types"),
        (Method::POST, "/api/v1/event-types"),
        (Method::GET, "/api/v1/alerts"),
    ];
    for (method, path) in routes {
        for token in [None, Some("hrld_wrong"), Some("")] {
            let mut request = server
                .http
                .request(method.clone(), format!("{}{path}", server.base));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {token:?}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "unauthorized");
        }
    }
    // The scheme is case-insensitive; anything but a bearer token is refused by name.
    let with = |value: &str| {
        server
            .http
            .get(format!("{}/api/v1/endpoints", server.base))
            .header("authorization", value.to_string())
            .send()
    };
    let lower = with(&format!("bearer {}", server.token)).await.unwrap();
    assert_eq!(lower.status(), 200);
    for value in ["Basic abc", "Bearer", "Bearer "] {
        let response = with(value).await.unwrap();
        assert_eq!(response.status(), 401, "{value}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains("not of the form"),
            "{value}: {body}"
        );
    }

    let health = server
        .http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn endpoint_create_show_list_update_delete() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let (status, created) = server
        .api(Method::POST, "/api/v1/endpoints", Some(json!({"name": " CRM sync ", "url": receiver.url, "events": ["account.status", "account.created", "account.status"]})))
        .await;
    assert_eq!(status, 201, "{created}");
    for field in [
        "id",
        "name",
        "url",
        "enabled",
        "events",
        "ordering",
        "created_at",
        "updated_at",
        "last_triggered_at",
    ] {
        assert!(
            created.get(field).is_some(),
            "endpoint has {field}: {created}"
        );
    }
    assert!(
        created.get("secret").is_none(),
        "the secret is shown only on request"
    );
    assert_eq!(created["name"], "CRM sync");
    assert_eq!(
        created["events"],
        json!(["account.created", "account.status"])
    );
    assert_eq!(created["enabled"], true);
    assert_eq!(created["ordering"], "accepted");
    assert_eq!(
        receiver
            .requests()
            .iter()
            .filter(|r| r.method == "HEAD")
            .count(),
        1
    );
    let id = created["id"].as_str().unwrap();

    assert_eq!(
        server.get(&format!("/api/v1/endpoints/{id}")).await,
        created
    );
    let list = server.get("/api/v1/endpoints").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["next_cursor"], Value::Null);

    let (status, updated) = server
        .api(
            Method::PATCH,
            &format!("/api/v1/endpoints/{id}"),
            Some(json!({"name": "Billing", "events": [], "ordering": "per_object"})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (
            updated["name"].clone(),
            updated["events"].clone(),
            updated["url"].clone()
        ),
        (json!("Billing"), json!([]), created["url"].clone())
    );
    assert_eq!(updated["ordering"], "per_object");

    let (status, _) = server
        .api(Method::DELETE, &format!("/api/v1/endpoints/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = server
        .api(Method::GET, &format!("/api/v1/endpoints/{id}"), None)
        .await;
    assert_eq!((status, body["code"].clone()), (404, json!("not_found")));
    assert!(body["detail"].as_str().unwrap().contains(id));
}

/// Sends one bad endpoint request and checks the status, code and a word of the detail.
async fn refused(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Value,
    status: u16,
    code: &str,
    names: &str,
) {
    let (got, answer) = server.api(method, path, Some(body.clone())).await;
    assert_eq!(
        (got, answer["code"].as_str().unwrap_or("")),
        (status, code),
        "{body} -> {answer}"
    );
    let detail = answer["detail"].as_str().unwrap();
    assert!(
        detail.contains(names),
        "detail {detail:?} should name {names:?}"
    );
}

#[tokio::test]
async fn bad_endpoint_requests_are_refused_with_a_code_and_a_detail() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let url = receiver.url.clone();
    let cases = [
        (json!({"url": url}), "missing_field", "name"),
        (json!({"name": "x"}), "missing_field", "url"),
        (json!({"name": "  ", "url": url}), "invalid_name", "empty"),
        (
            json!({"name": "x".repeat(201), "url": url}),
            "invalid_name",
            "201",
        ),
        (
            json!({"name": "a\u{0}b", "url": url}),
            "invalid_name",
            "control characters",
        ),
        (
            json!({"name": "x", "url": "not a url"}),
            "invalid_url",
            "not a url",
        ),
        (
            json!({"name": "x", "url": "ftp://127.0.0.1/"}),
            "invalid_url",
            "ftp",
        ),
        (
            json!({"name": "x", "url": "http://user:pw@127.0.0.1/"}),
            "invalid_url",
            "password",
        ),
        (
            json!({"name": "x", "url": "http://169.254.169.254/latest"}),
            "blocked_destination",
            "169.254.169.254",
        ),
        (
            json!({"name": "x", "url": url, "events": ["acount.status"]}),
            "unknown_event_type",
            "account.status",
        ),
        (
            json!({"name": "x", "url": url, "ordering": "random"}),
            "invalid_ordering",
            "random",
        ),
        (
            json!({"name": "x", "url": url, "colour": "red"}),
            "invalid_field",
            "colour",
        ),
        (json!({"name": 5, "url": url}), "invalid_field", "name"),
    ];
    for (body, code, names) in cases {
        refused(
            &server,
            Method::POST,
            "/api/v1/endpoints",
            body,
            422,
            code,
            names,
        )
        .await;
    }
    let (status, answer) = server
        .http
        .post(format!("{}/api/v1/endpoints", server.base))
        .bearer_auth(&server.token)
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(
        answer.json::<Value>().await.unwrap()["code"],
        "malformed_json"
    );
    assert!(
        server.get("/api/v1/endpoints").await["data"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing was stored"
    );
}

#[tokio::test]
async fn a_url_that_fails_the_head_check_is_refused_unless_verify_is_false() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    receiver.set_head_status(405);
    let body = json!({"name": "x", "url": receiver.url, "events": []});
    refused(
        &server,
        Method::POST,
        "/api/v1/endpoints",
        body,
        422,
        "url_check_failed",
        "405",
    )
    .await;

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}/", closed.local_addr().unwrap().port());
    drop(closed);
    let body = json!({"name": "x", "url": dead, "events": []});
    refused(
        &server,
        Method::POST,
        "/api/v1/endpoints",
        body,
        422,
        "url_check_failed",
        "connection_refused",
    )
    .await;

    let id = server
        .endpoint_with(json!({"name": "x", "url": dead, "verify": false}))
        .await;
    // Changing the URL checks the new one; other changes do not.
    let patch = json!({"url": receiver.url});
    refused(
        &server,
        Method::PATCH,
        &format!("/api/v1/endpoints/{id}"),
        patch,
        422,
        "url_check_failed",
        "405",
    )
    .await;
    let (status, _) = server
        .api(
            Method::PATCH,
            &format!("/api/v1/endpoints/{id}"),
            Some(json!({"name": "y"})),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn events_are_accepted_with_one_delivery_per_enabled_subscribed_endpoint() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    server.endpoint(&receiver.url, &["account.status"]).await;
    server
        .endpoint(&receiver.url, &["account.status", "invoice.paid"])
        .await;
    server.endpoint(&receiver.url, &["invoice.paid"]).await;
    server.endpoint_with(json!({"name": "off", "url": receiver.url, "events": ["account.status"], "enabled": false, "verify": false})).await;

    let (status, answer) = server
        .api(Method::POST, "/api/v1/events", Some(json!({"event": "account.status", "object_id": 42, "current": {"status": "active"}})))
        .await;
    assert_eq!(status, 202);
    assert_eq!(answer["deliveries"], 2);
    assert!(answer["id"].as_str().unwrap().starts_with("evt_"));

    let (_, answer) = server
        .api(
            Method::POST,
            "/api/v1/events",
            Some(json!({"event": "account.created", "object_id": "a-1", "current": {}})),
        )
        .await;
    assert_eq!(
        answer["deliveries"], 0,
        "an event nobody subscribed to is accepted with no deliveries"
    );
}

async fn post_raw(server: &TestServer, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = server
        .http
        .post(format!("{}/api/v1/events", server.base))
        .bearer_auth(&server.token)
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn bad_events_get_a_4xx_naming_the_problem() {
    let server = TestServer::start().await;
    let big = format!(
        r#"{{"event":"account.created","object_id":1,"current":{{"x":"{}"}}}}"#,
        "a".repeat(1024 * 1024)
    );
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (b"{".to_vec(), 400, "malformed_json", "not valid JSON"),
        (b"\xff\xfe".to_vec(), 400, "malformed_json", "UTF-8"),
        (
            b"[]".to_vec(),
            422,
            "invalid_field",
            "must be a JSON object",
        ),
        (
            br#"{"object_id":1,"current":{}}"#.to_vec(),
            422,
            "invalid_field",
            "event",
        ),
        (
            br#"{"event":"account.created","current":{}}"#.to_vec(),
            422,
            "invalid_field",
            "object_id",
        ),
        (
            br#"{"event":"account.created","object_id":1}"#.to_vec(),
            422,
            "invalid_field",
            "current",
        ),
        (
            br#"{"event":"account.created","object_id":true,"current":{}}"#.to_vec(),
            422,
            "invalid_field",
            "object_id",
        ),
        (
            br#"{"event":"acount.created","object_id":1,"current":{}}"#.to_vec(),
            422,
            "unknown_event_type",
            "account.created",
        ),
        (big.into_bytes(), 413, "payload_too_large", "1048576"),
    ];
    for (body, status, code, names) in cases {
        let (got, answer) = post_raw(&server, body, &[("content-type", "application/json")]).await;
        assert_eq!(
            (got, answer["code"].as_str().unwrap_or("")),
            (status, code),
            "{answer}"
        );
        assert!(
            answer["detail"].as_str().unwrap().contains(names),
            "{answer} should name {names}"
        );
    }
    assert!(server.get("/api/v1/deliveries").await["data"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn an_idempotency_key_makes_a_repeated_event_a_no_op() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let endpoint = server.endpoint(&receiver.url, &["payment.created"]).await;
    let body = br#"{"event":"payment.created","object_id":7,"current":{"amount":10}}"#.to_vec();
    let key = [
        ("idempotency-key", "pay-7"),
        ("content-type", "application/json"),
    ];

    let (first_status, first) = post_raw(&server, body.clone(), &key).await;
    let (second_status, second) = post_raw(&server, body, &key).await;
    assert_eq!((first_status, second_status), (202, 202));
    assert_eq!(first, second);
    receiver.wait_posts(1).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(receiver.posts().len(), 1);
    assert_eq!(server.deliveries(&endpoint).await.len(), 1);

    let other = br#"{"event":"payment.created","object_id":8,"current":{}}"#.to_vec();
    let (status, answer) = post_raw(&server, other.clone(), &key).await;
    assert_eq!(
        (status, answer["code"].clone()),
        (422, json!("idempotency_key_reused"))
    );

    // Two keys on one request: which one was meant is unknown, so neither is taken.
    let (status, answer) = post_raw(
        &server,
        other,
        &[("idempotency-key", "k2"), ("idempotency-key", "k3")],
    )
    .await;
    assert_eq!(
        (status, answer["code"].clone()),
        (400, json!("invalid_idempotency_key"))
    );
    assert_eq!(
        server.deliveries(&endpoint).await.len(),
        1,
        "nothing stored"
    );
}

#[tokio::test]
async fn a_request_body_that_is_not_a_json_object_is_refused() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let array = json!(["arr", receiver.url, true, [], "accepted", false]);
    for (method, path) in [
        (Method::POST, "/api/v1/endpoints"),
        (Method::POST, "/api/v1/event-types"),
    ] {
        for body in [array.clone(), json!([]), json!("text"), json!(7)] {
            let (status, answer) = server.api(method.clone(), path, Some(body.clone())).await;
            assert_eq!(
                (status, answer["code"].as_str().unwrap()),
                (400, "malformed_json"),
                "{path} {body}"
            );
            assert!(answer["detail"]
                .as_str()
                .unwrap()
                .contains("must be a JSON object"));
        }
    }
    let (_, listed) = server.api(Method::GET, "/api/v1/endpoints", None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0, "{listed}");

    // A field sent as null is refused by name, not read as "unchanged".
    let endpoint = server.endpoint(&receiver.url, &["account.created"]).await;
    let path = format!("/api/v1/endpoints/{endpoint}");
    for field in ["name", "url", "enabled", "events", "ordering", "verify"] {
        let (status, answer) = server
            .api(Method::PATCH, &path, Some(json!({ field: null })))
            .await;
        assert_eq!(
            (status, answer["code"].as_str().unwrap()),
            (422, "invalid_field"),
            "{field}: {answer}"
        );
        assert!(
            answer["detail"].as_str().unwrap().starts_with(field),
            "{field}: {answer}"
        );
    }
    let (_, kept) = server.api(Method::GET, &path, None).await;
    assert_eq!(kept["url"], json!(receiver.url));
}

#[tokio::test]
async fn the_catalog_lists_the_default_types_and_takes_new_ones() {
    let server = TestServer::start().await;
    let catalog = server.get("/api/v1/event-types").await;
    let names: Vec<&str> = catalog["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for expected in [
        "account.created",
        "account.status",
        "account.service.add",
        "account.service.remove",
        "invoice.created",
        "ticket.deleted",
        "job.updated",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }

    let (status, created) = server
        .api(
            Method::POST,
            "/api/v1/event-types",
            Some(json!({"name": "account.suspended", "description": "suspended"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (created["trigger"].clone(), created["action"].clone()),
        (json!("account"), json!("suspended"))
    );
    let (status, answer) = server
        .api(
            Method::POST,
            "/api/v1/event-types",
            Some(json!({"name": "account.suspended"})),
        )
        .await;
    assert_eq!(
        (status, answer["code"].clone()),
        (409, json!("already_exists"))
    );
    let (status, answer) = server
        .api(
            Method::POST,
            "/api/v1/event-types",
            Some(json!({"name": "Bad Name"})),
        )
        .await;
    assert_eq!(
        (status, answer["code"].clone()),
        (422, json!("invalid_event_type"))
    );

    let (status, _) = server
        .api(
            Method::POST,
            "/api/v1/events",
            Some(json!({"event": "account.suspended", "object_id": 1, "current": {}})),
        )
        .await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn delivery_history_has_the_documented_shape_filters_and_pages() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500)]);
    let endpoint = server
        .endpoint(&receiver.url, &["ticket.created", "ticket.closed"])
        .await;
    server.emit("ticket.created", json!(1), json!({})).await;
    for n in 2..=5 {
        server.emit("ticket.closed", json!(n), json!({})).await;
    }
    receiver.wait_posts(5).await;
    common::eventually("all attempted", || async {
        server
            .deliveries(&endpoint)
            .await
            .iter()
            .all(|d| d["attempt_count"] == 1)
    })
    .await;

    let list = server.deliveries(&endpoint).await;
    assert_eq!(list.len(), 5);
    assert_eq!(list[0]["payload"]["object_id"], 5, "newest first");
    for field in [
        "id",
        "event_id",
        "endpoint_id",
        "event",
        "status",
        "test",
        "payload",
        "created_at",
        "next_attempt_at",
    ] {
        assert!(list[0].get(field).is_some(), "delivery has {field}");
    }
    assert!(
        list[0].get("attempts").is_none(),
        "attempts only in the single view"
    );

    let failed = server
        .get(&format!(
            "/api/v1/endpoints/{endpoint}/deliveries?status=pending"
        ))
        .await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);
    let closed = server
        .get(&format!(
            "/api/v1/endpoints/{endpoint}/deliveries?event=ticket.closed"
        ))
        .await;
    assert_eq!(closed["data"].as_array().unwrap().len(), 4);

    let mut seen = Vec::new();
    let mut path = format!("/api/v1/endpoints/{endpoint}/deliveries?limit=2");
    loop {
        let page = server.get(&path).await;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/v1/endpoints/{endpoint}/deliveries?limit=2&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(
        seen,
        list.iter().map(|d| d["id"].clone()).collect::<Vec<_>>()
    );

    let detail = server
        .get(&format!(
            "/api/v1/deliveries/{}",
            list[4]["id"].as_str().unwrap()
        ))
        .await;
    let attempt = &detail["attempts"][0];
    for field in [
        "attempted_at",
        "duration_ms",
        "status_code",
        "response_headers",
        "response_body",
        "error",
    ] {
        assert!(attempt.get(field).is_some(), "attempt has {field}");
    }
    assert_eq!(attempt["status_code"], 500);
    assert_eq!(
        attempt["response_headers"]["content-type"],
        "application/json"
    );

    for bad in [
        "?status=lost",
        "?limit=0",
        "?limit=many",
        "?LIMIT=1",
        "?sort=asc",
    ] {
        let (status, answer) = server
            .api(
                Method::GET,
                &format!("/api/v1/endpoints/{endpoint}/deliveries{bad}"),
                None,
            )
            .await;
        assert_eq!(
            (status, answer["code"].clone()),
            (400, json!("invalid_query")),
            "{bad}"
        );
        let named = bad.trim_start_matches('?').split('=').next().unwrap();
        assert!(
            answer["detail"].as_str().unwrap().contains(named),
            "{answer}"
        );
    }
    // Every list refuses a parameter it does not know, by name.
    for path in [
        "/api/v1/endpoints?LIMIT=1",
        "/api/v1/alerts?limit=5&page=2",
        "/api/v1/event-types?offset=10",
        "/api/v1/deliveries?foo=1",
        "/api/v1/users?cursor[]=x",
        "/api/v1/tokens?q=1",
    ] {
        let (status, answer) = server.api(Method::GET, path, None).await;
        assert_eq!(
            (status, answer["code"].clone()),
            (400, json!("invalid_query")),
            "{path}: {answer}"
        );
        let name = path
            .rsplit(['?', '&'])
            .next()
            .unwrap()
            .split('=')
            .next()
            .unwrap();
        assert!(
            answer["detail"].as_str().unwrap().contains(name),
            "{path}: {answer}"
        );
    }
}

#[tokio::test]
async fn a_test_webhook_is_sent_at_once_and_marked_as_a_test() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let endpoint = server.endpoint(&receiver.url, &[]).await;
    let (status, answer) = server
        .api(
            Method::POST,
            &format!("/api/v1/endpoints/{endpoint}/test"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["success"].clone(), answer["status_code"].clone()),
        (json!(true), json!(200))
    );
    assert_eq!(answer["response_body"], "{\"ok\":true}");
    assert_eq!(receiver.posts()[0].json()["event"], "test");

    let history = server.deliveries(&endpoint).await;
    assert_eq!(
        (history[0]["test"].clone(), history[0]["status"].clone()),
        (json!(true), json!("succeeded"))
    );

    receiver.set_default(Reply::Status(500));
    let (_, answer) = server
        .api(
            Method::POST,
            &format!("/api/v1/endpoints/{endpoint}/test"),
            None,
        )
        .await;
    assert_eq!(
        (answer["success"].clone(), answer["status_code"].clone()),
        (json!(false), json!(500))
    );
    let history = server.deliveries(&endpoint).await;
    assert_eq!(
        history[0]["status"], "failed",
        "a failed test is not retried"
    );
    let alerts = server.get("/api/v1/alerts").await;
    assert!(
        alerts["data"].as_array().unwrap().is_empty(),
        "a test does not raise alerts"
    );
}

#[tokio::test]
async fn after_a_secret_rotation_both_secrets_sign_for_the_grace_period() {
    let server = TestServer::with_manual_clock().await;
    let receiver = Receiver::start().await;
    let endpoint = server.endpoint(&receiver.url, &["account.updated"]).await;
    let old = server
        .get(&format!("/api/v1/endpoints/{endpoint}/secret"))
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, rotated) = server
        .api(
            Method::POST,
            &format!("/api/v1/endpoints/{endpoint}/secret/rotate"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let new = rotated["key"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    assert_eq!(
        server
            .get(&format!("/api/v1/endpoints/{endpoint}/secret"))
            .await["key"],
        json!(new)
    );

    server.emit("account.updated", json!(1), json!({})).await;
    let post = receiver.wait_posts(1).await.remove(0);
    let verifies = |secret: &str, p: &common::receiver::Received| {
        herald::signing::verify(
            secret,
            p.header("webhook-id"),
            p.header("webhook-timestamp"),
            p.body.as_bytes(),
            p.header("webhook-signature"),
        )
    };
    assert!(verifies(&old, &post) && verifies(&new, &post));
    assert_eq!(post.header("webhook-signature").split(' ').count(), 2);

    server.advance(std::time::Duration::from_secs(24 * 3600 + 1));
    server.emit("account.updated", json!(2), json!({})).await;
    let post = receiver.wait_posts(2).await.remove(1);
    assert!(verifies(&new, &post) && !verifies(&old, &post));
}

#[tokio::test]
async fn endpoint_secrets_are_stored_sealed_and_shown_only_on_request() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let endpoint = server.endpoint(&receiver.url, &["account.created"]).await;
    let secret = server
        .get(&format!("/api/v1/endpoints/{endpoint}/secret"))
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, rotated) = server
        .api(
            Method::POST,
            &format!("/api/v1/endpoints/{endpoint}/secret/rotate"),
            None,
        )
        .await;
    let rotated = rotated["key"].as_str().unwrap().to_string();

    let mut stored = Vec::new();
    for entry in std::fs::read_dir(server.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("herald.db")
        {
            stored.extend(std::fs::read(path).unwrap());
        }
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(
        !stored.contains(&secret[6..]) && !stored.contains(&rotated[6..]),
        "a secret is readable in the database files"
    );
    let listed = server.get("/api/v1/endpoints").await.to_string();
    assert!(
        !listed.contains("whsec_") && !listed.contains("sealed"),
        "{listed}"
    );

    server.emit("account.created", json!(1), json!({})).await;
    let post = receiver.wait_posts(1).await.remove(0);
    let verifies = |key: &str| {
        herald::signing::verify(
            key,
            post.header("webhook-id"),
            post.header("webhook-timestamp"),
            post.body.as_bytes(),
            post.header("webhook-signature"),
        )
    };
    assert!(verifies(&secret) && verifies(&rotated));
}

#[tokio::test]
async fn a_cursor_no_list_gave_out_is_refused_by_name() {
    let server = TestServer::start().await;
    for path in [
        "/api/v1/endpoints?cursor=abc",
        "/api/v1/endpoints?cursor=usr_01",
        "/api/v1/users?cursor=abc",
        "/api/v1/tokens?cursor=abc",
        "/api/v1/deliveries?cursor=0",
        "/api/v1/deliveries?cursor=-1",
        "/api/v1/deliveries?cursor=abc",
        "/api/v1/alerts?cursor=abc",
        "/api/v1/alerts?cursor=ep_01",
        "/api/v1/event-types?cursor=Account",
    ] {
        let (status, answer) = server.api(Method::GET, path, None).await;
        assert_eq!(
            (status, answer["code"].as_str().unwrap_or("")),
            (400, "invalid_query"),
            "{path}: {answer}"
        );
        let cursor = path.rsplit('=').next().unwrap();
        assert!(
            answer["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("'{cursor}'")),
            "{path}: {answer}"
        );
    }

    // A cursor the list did give out still pages.
    let receiver = Receiver::start().await;
    for _ in 0..3 {
        server.endpoint(&receiver.url, &["account.created"]).await;
    }
    let (_, first) = server
        .api(Method::GET, "/api/v1/endpoints?limit=2", None)
        .await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let (status, rest) = server
        .api(
            Method::GET,
            &format!("/api/v1/endpoints?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let address = server.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    // Headers only, and one byte of the five million announced: the answer must not
    // wait for the rest.
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{{",
        server.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let reading = async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("payload_too_large") {
            match stream.read(&mut chunk).await.unwrap() {
                0 => break,
                n => answer.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), reading)
        .await
        .expect("answered without waiting for the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert!(answer.contains("Content-Length 5000000"), "{answer}");
}

/// An id that is not UTF-8 once percent-decoded is refused in the API's error shape,
/// on every kind of route that takes an id.
#[tokio::test]
async fn an_id_that_is_not_utf8_gets_a_json_error() {
    let server = TestServer::start().await;
    for (method, path) in [
        (Method::GET, "/api/v1/deliveries/%ff%fe"),
        (Method::GET, "/api/v1/endpoints/%ff"),
        (Method::DELETE, "/api/v1/tokens/%c3%28"),
        (Method::GET, "/api/v1/users/%80"),
    ] {
        let (status, body) = server.api(method, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["code"], "invalid_id", "{path}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("%"), "the detail names the id: {detail}");
    }
}

#[tokio::test]
async fn the_catalog_and_the_alerts_page_like_every_list() {
    let server = TestServer::start_with(common::Options {
        manual_clock: true,
        configure: Box::new(|s| s.delivery.retry_window = std::time::Duration::ZERO),
        ..common::Options::default()
    })
    .await;

    // The catalog, five names a page, sorted by name, each name once.
    let whole = server.get("/api/v1/event-types?limit=250").await;
    let all: Vec<String> = names(&whole, "name");
    assert!(all.len() > 30 && whole["next_cursor"].is_null());
    let walked = walk(&server, "/api/v1/event-types", "name", 5).await;
    assert_eq!(walked, all);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(walked, sorted);

    // Three endpoints whose only delivery fails for good: three alerts, newest first.
    let receiver = Receiver::answering(Reply::Status(500)).await;
    for n in 0..3 {
        let event = format!("job.step{n}");
        server
            .api(
                Method::POST,
                "/api/v1/event-types",
                Some(json!({"name": event})),
            )
            .await;
        server.endpoint(&receiver.url, &[event.as_str()]).await;
        server.emit(&event, json!(n), json!({})).await;
        receiver.wait_posts(n + 1).await;
    }
    common::eventually("one failing alert per endpoint", || async {
        names(&server.get("/api/v1/alerts").await, "id").len() == 3
    })
    .await;
    let alerts = names(&server.get("/api/v1/alerts").await, "id");
    let mut newest_first = alerts.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(alerts, newest_first);
    assert_eq!(walk(&server, "/api/v1/alerts", "id", 2).await, alerts);
}

fn names(page: &Value, field: &str) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[field].as_str().unwrap().to_string())
        .collect()
}

/// Every item of a list, `limit` at a time, following its cursors.
async fn walk(server: &TestServer, path: &str, field: &str, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?limit={limit}&cursor={c}"),
            None => format!("{path}?limit={limit}"),
        };
        let page = server.get(&url).await;
        let items = names(&page, field);
        assert!(items.len() <= limit, "{url}: {page}");
        seen.extend(items);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return seen,
        }
    }
}
