//! Users, roles, API tokens and signing in, through the HTTP API of the real server.

mod common;

use std::time::Duration;

use common::{TestServer, PASSWORD};
use reqwest::Method;
use serde_json::{json, Value};

/// No answer may carry a password or a hash of one.
fn assert_no_secrets(answer: &Value) {
    let text = answer.to_string();
    for secret in [PASSWORD, "$argon2", "password_hash", "token_hash"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test]
async fn user_and_token_routes_need_a_valid_token_but_sign_in_does_not() {
    let server = TestServer::start().await;
    let routes = [
        (Method::GET, "/api/v1/users"),
        (Method::POST, "/api/v1/users"),
        (Method::GET, "/api/v1/users/me"),
        (Method::PATCH, "/api/v1/users/usr_x"),
        (Method::DELETE, "/api/v1/users/usr_x"),
        (Method::GET, "/api/v1/tokens"),
        (Method::POST, "/api/v1/tokens"),
        (Method::DELETE, "/api/v1/tokens/tok_x"),
        (Method::POST, "/api/v1/sign-out"),
    ];
    for (method, path) in routes {
        let (status, answer) = server
            .api_as("hrld_wrong", method.clone(), path, None)
            .await;
        assert_eq!(status, 401, "{method} {path}");
        assert_eq!(answer["code"], "unauthorized");
    }
    let (status, answer) = server.sign_in("nobody@example.com", "x").await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
}

#[tokio::test]
async fn the_first_super_admin_sets_its_email_and_password_then_signs_in() {
    let server = TestServer::start().await;
    let me = server.get("/api/v1/users/me").await;
    assert_eq!(me["role"], "super_admin");
    assert_eq!(me["email"], Value::Null);
    assert_eq!(me["has_password"], false);

    let body = json!({"email": "Ops@Example.com", "password": PASSWORD});
    let (status, changed) = server
        .api(Method::PATCH, "/api/v1/users/me", Some(body))
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["email"], "ops@example.com");
    assert_eq!(changed["has_password"], true);
    assert_no_secrets(&changed);

    let (status, signed_in) = server.sign_in("OPS@example.com", PASSWORD).await;
    assert_eq!(status, 200, "{signed_in}");
    assert_eq!(signed_in["user"]["id"], me["id"]);
    assert_eq!(signed_in["name"], "sign-in");
    assert!(signed_in["expires_at"].is_string());
    assert_no_secrets(&signed_in);
    let token = signed_in["token"].as_str().unwrap();
    let (status, again) = server
        .api_as(token, Method::GET, "/api/v1/users/me", None)
        .await;
    assert_eq!((status, &again["id"]), (200, &me["id"]));
}

#[tokio::test]
async fn super_admins_add_list_change_and_remove_users_and_never_see_a_password() {
    let server = TestServer::start().await;
    let body = json!({"email": "dev@example.com", "name": " Dev ", "password": PASSWORD});
    let (status, created) = server.api(Method::POST, "/api/v1/users", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let mut keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created_at",
            "email",
            "has_password",
            "id",
            "name",
            "role",
            "updated_at"
        ]
    );
    assert_eq!(created["role"], "admin", "admin is the default role");
    assert_eq!(created["name"], "Dev");
    assert!(created["id"].as_str().unwrap().starts_with("usr_"));
    let id = created["id"].as_str().unwrap().to_string();

    let list = server.get("/api/v1/users").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["data"][0]["id"], json!(id), "newest first");
    assert_no_secrets(&list);

    let body =
        json!({"name": "Developer", "role": "super_admin", "password": "another long password"});
    let (status, changed) = server
        .api(Method::PATCH, &format!("/api/v1/users/{id}"), Some(body))
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (changed["name"].as_str(), changed["role"].as_str()),
        (Some("Developer"), Some("super_admin"))
    );
    assert_no_secrets(&changed);
    let (status, _) = server
        .sign_in("dev@example.com", "another long password")
        .await;
    assert_eq!(status, 200);
    let (status, _) = server.sign_in("dev@example.com", PASSWORD).await;
    assert_eq!(status, 401, "the old password no longer works");

    let (_, token) = server
        .sign_in("dev@example.com", "another long password")
        .await;
    let token = token["token"].as_str().unwrap().to_string();
    let (status, _) = server
        .api(Method::DELETE, &format!("/api/v1/users/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, answer) = server
        .api(Method::GET, &format!("/api/v1/users/{id}"), None)
        .await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("not_found")));
    let (status, _) = server
        .api_as(&token, Method::GET, "/api/v1/endpoints", None)
        .await;
    assert_eq!(status, 401, "a removed user's tokens go with them");
}

#[tokio::test]
async fn bad_user_requests_get_a_4xx_naming_the_value() {
    let server = TestServer::start().await;
    server.add_user("taken@example.com", "admin").await;
    let good = json!({"email": "new@example.com", "name": "New", "password": PASSWORD});
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let without = |key: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(key);
        body
    };
    let cases = [
        (without("email"), 422, "missing_field", "email"),
        (without("password"), 422, "missing_field", "password"),
        (
            with("email", json!("not-an-address")),
            422,
            "invalid_email",
            "not-an-address",
        ),
        (
            with("password", json!("hunter2")),
            422,
            "invalid_password",
            "7 characters",
        ),
        (with("role", json!("owner")), 422, "invalid_role", "owner"),
        (with("name", json!("  ")), 422, "invalid_name", "empty"),
        (
            with("colour", json!("blue")),
            422,
            "invalid_field",
            "colour",
        ),
        (
            with("email", json!("TAKEN@example.com")),
            409,
            "already_exists",
            "taken@example.com",
        ),
    ];
    for (body, status, code, named) in cases {
        let (got, answer) = server
            .api(Method::POST, "/api/v1/users", Some(body.clone()))
            .await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
        let detail = answer["detail"].as_str().unwrap();
        assert!(detail.contains(named), "{detail} should name {named}");
        assert!(!detail.contains("hunter2"), "{detail}");
    }
    let (status, answer) = server
        .api(
            Method::PATCH,
            "/api/v1/users/usr_nope",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn an_admin_manages_endpoints_and_events_but_gets_403_for_other_users() {
    let server = TestServer::start().await;
    let (admin_id, admin) = server.user_with_token("dev@example.com", "admin").await;
    let other = server.add_user("other@example.com", "admin").await;

    let forbidden = [
        (Method::GET, "/api/v1/users".to_string(), None),
        (
            Method::POST,
            "/api/v1/users".to_string(),
            Some(json!({"email": "x@example.com", "name": "x", "password": PASSWORD})),
        ),
        (Method::GET, format!("/api/v1/users/{other}"), None),
        (
            Method::PATCH,
            format!("/api/v1/users/{other}"),
            Some(json!({"name": "x"})),
        ),
        (Method::DELETE, format!("/api/v1/users/{other}"), None),
        (
            Method::PATCH,
            "/api/v1/users/me".to_string(),
            Some(json!({"role": "super_admin"})),
        ),
    ];
    for (method, path, body) in forbidden {
        let (status, answer) = server.api_as(&admin, method.clone(), &path, body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (403, Some("forbidden")),
            "{method} {path}"
        );
        assert!(answer["detail"].as_str().unwrap().contains("super admin"));
    }

    let (status, me) = server
        .api_as(
            &admin,
            Method::PATCH,
            "/api/v1/users/me",
            Some(json!({"name": "Dev Team"})),
        )
        .await;
    assert_eq!((status, me["id"].as_str()), (200, Some(admin_id.as_str())));
    let body = json!({"name": "hook", "url": "http://127.0.0.1:9/", "events": ["account.created"], "verify": false});
    let (status, _) = server
        .api_as(&admin, Method::POST, "/api/v1/endpoints", Some(body))
        .await;
    assert_eq!(status, 201);
    let event = json!({"event": "account.created", "object_id": 1, "current": {}});
    let (status, _) = server
        .api_as(&admin, Method::POST, "/api/v1/events", Some(event))
        .await;
    assert_eq!(status, 202);
    let (status, _) = server
        .api_as(
            &admin,
            Method::POST,
            "/api/v1/event-types",
            Some(json!({"name": "account.frozen"})),
        )
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn the_last_super_admin_can_be_neither_removed_nor_demoted() {
    let server = TestServer::start().await;
    let (status, answer) = server.api(Method::DELETE, "/api/v1/users/me", None).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("last_super_admin"))
    );
    let demote = json!({"role": "admin"});
    let (status, answer) = server
        .api(Method::PATCH, "/api/v1/users/me", Some(demote.clone()))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("last_super_admin"))
    );

    server.add_user("boss@example.com", "super_admin").await;
    let (status, me) = server
        .api(Method::PATCH, "/api/v1/users/me", Some(demote))
        .await;
    assert_eq!((status, me["role"].as_str()), (200, Some("admin")));
    let (status, _) = server.api(Method::GET, "/api/v1/users", None).await;
    assert_eq!(status, 403, "the token now carries the admin role");
}

fn listed(list: &Value, id: &str) -> Value {
    let tokens = list["data"].as_array().unwrap();
    tokens
        .iter()
        .find(|t| t["id"] == json!(id))
        .cloned()
        .unwrap()
}

/// The token's last-used time, as listed by a request made with that token.
async fn last_used(server: &TestServer, token: &str, id: &str) -> Value {
    let (_, list) = server
        .api_as(token, Method::GET, "/api/v1/tokens", None)
        .await;
    listed(&list, id)["last_used_at"].clone()
}

fn time(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_token_is_shown_once_listed_with_its_last_use_and_revocable() {
    let server = TestServer::with_manual_clock().await;
    let (status, created) = server
        .api(Method::POST, "/api/v1/tokens", Some(json!({"name": "ci"})))
        .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(token.starts_with("hrld_") && id.starts_with("tok_"));
    assert_eq!(created["name"], "ci");
    assert_eq!(created["expires_at"], Value::Null);

    let mine = listed(&server.get("/api/v1/tokens").await, &id);
    assert_eq!(mine["last_used_at"], Value::Null);
    assert!(mine.get("token").is_none());
    assert!(!server
        .get("/api/v1/tokens")
        .await
        .to_string()
        .contains(&token));

    let first = last_used(&server, &token, &id).await;
    assert!(first.is_string(), "used once: {first}");
    server.advance(Duration::from_secs(30));
    let unchanged = last_used(&server, &token, &id).await;
    assert_eq!(unchanged, first, "not written again within a minute");
    server.advance(Duration::from_secs(31));
    let later = last_used(&server, &token, &id).await;
    assert_eq!((time(&later) - time(&first)).num_seconds(), 61);

    let (status, _) = server
        .api(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .api_as(&token, Method::GET, "/api/v1/endpoints", None)
        .await;
    assert_eq!(status, 401, "a revoked token stops working at once");
    let (status, _) = server
        .api(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_admin_can_neither_see_nor_revoke_another_users_tokens() {
    let server = TestServer::start().await;
    let (_, admin) = server.user_with_token("dev@example.com", "admin").await;
    let (_, created) = server
        .api(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "boss"})),
        )
        .await;
    let boss_token = created["id"].as_str().unwrap();

    let (_, list) = server
        .api_as(&admin, Method::GET, "/api/v1/tokens", None)
        .await;
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["id"] != json!(boss_token)));
    let path = format!("/api/v1/tokens/{boss_token}");
    let (status, _) = server.api_as(&admin, Method::DELETE, &path, None).await;
    assert_eq!(status, 404);

    let (_, list) = server
        .api_as(&admin, Method::GET, "/api/v1/tokens", None)
        .await;
    let admin_token = list["data"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/tokens/{admin_token}");
    let (status, _) = server.api(Method::DELETE, &path, None).await;
    assert_eq!(status, 204, "a super admin may revoke anyone's token");
    let (status, _) = server
        .api_as(&admin, Method::GET, "/api/v1/tokens", None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_failed_sign_in_never_says_whether_the_email_exists() {
    let server = TestServer::start().await;
    server.add_user("ops@example.com", "super_admin").await;
    let (unknown_status, unknown) = server.sign_in("ghost@example.com", PASSWORD).await;
    let (wrong_status, wrong) = server.sign_in("ops@example.com", "not the password").await;
    assert_eq!((unknown_status, wrong_status), (401, 401));
    assert_eq!(unknown, wrong);
    assert_eq!(unknown["code"], "invalid_credentials");
    let (status, _) = server.sign_in("ops@example.com", PASSWORD).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sign_in_is_slowed_down_per_account_and_per_address_after_failures() {
    let server = TestServer::with_manual_clock().await;
    server.add_user("ops@example.com", "super_admin").await;
    for _ in 0..5 {
        let (status, _) = server.sign_in("ops@example.com", "guess").await;
        assert_eq!(status, 401);
    }
    let (status, answer) = server.sign_in("ops@example.com", PASSWORD).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (429, Some("too_many_attempts")),
        "{answer}"
    );
    assert!(answer["detail"]
        .as_str()
        .unwrap()
        .contains("try again in 1 seconds"));
    let (status, unknown) = server.sign_in("ghost@example.com", "guess").await;
    assert_eq!(status, 401, "another account is not blocked: {unknown}");

    server.advance(Duration::from_secs(2));
    let (status, _) = server.sign_in("ops@example.com", PASSWORD).await;
    assert_eq!(
        status, 200,
        "the block ends, and the right password still works"
    );

    // Six failures so far from this address; fourteen more make twenty.
    for n in 0..14 {
        let (status, _) = server
            .sign_in(&format!("user{n}@example.com"), "guess")
            .await;
        assert_eq!(status, 401);
    }
    let (status, answer) = server.sign_in("fresh@example.com", "guess").await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (429, Some("too_many_attempts"))
    );
}

#[tokio::test]
async fn a_throttled_sign_in_carries_retry_after() {
    let server = TestServer::with_manual_clock().await;
    for _ in 0..5 {
        server.sign_in("ops@example.com", "guess").await;
    }
    let response = server
        .http
        .post(format!("{}/api/v1/sign-in", server.base))
        .json(&json!({"email": "ops@example.com", "password": "guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
}

#[tokio::test]
async fn a_sign_in_token_expires_after_twelve_hours_and_sign_out_revokes_it() {
    let server = TestServer::with_manual_clock().await;
    let (_, first) = server.user_with_token("ops@example.com", "admin").await;
    server.advance(Duration::from_secs(12 * 3600 - 1));
    let (status, _) = server
        .api_as(&first, Method::GET, "/api/v1/endpoints", None)
        .await;
    assert_eq!(status, 200);
    server.advance(Duration::from_secs(1));
    let (status, answer) = server
        .api_as(&first, Method::GET, "/api/v1/endpoints", None)
        .await;
    assert_eq!(status, 401);
    assert!(answer["detail"].as_str().unwrap().contains("expired"));

    let (_, second) = server.sign_in("ops@example.com", PASSWORD).await;
    let second = second["token"].as_str().unwrap();
    let (status, _) = server
        .api_as(second, Method::POST, "/api/v1/sign-out", None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .api_as(second, Method::GET, "/api/v1/endpoints", None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_new_password_ends_other_sign_in_sessions_but_keeps_personal_tokens() {
    let server = TestServer::start().await;
    let (_, session_a) = server.user_with_token("ops@example.com", "admin").await;
    let (_, session_b) = server.sign_in("ops@example.com", PASSWORD).await;
    let session_b = session_b["token"].as_str().unwrap();
    let (_, personal) = server
        .api_as(
            &session_a,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "laptop"})),
        )
        .await;
    let personal = personal["token"].as_str().unwrap();

    let body = json!({"password": "a brand new password"});
    let (status, _) = server
        .api_as(&session_a, Method::PATCH, "/api/v1/users/me", Some(body))
        .await;
    assert_eq!(status, 200);
    for (token, expected) in [(session_a.as_str(), 200), (session_b, 401), (personal, 200)] {
        let (status, _) = server
            .api_as(token, Method::GET, "/api/v1/tokens", None)
            .await;
        assert_eq!(status, expected, "{token}");
    }
}
