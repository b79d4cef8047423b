//! The web console, end to end: HTTP-level checks of sessions and CSRF, and headless
//! Chromium driving the pages an operator uses. The browser tests also save the
//! screenshots in docs/screenshots/, so those always show the console as it is.

#[path = "console/browser.rs"]
mod browser;
mod common;

use std::time::Duration;

use browser::Browser;
use common::{eventually, Options, Receiver, Reply, TestServer, PASSWORD};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use reqwest::Method;
use serde_json::{json, Value};

const HOME: &str = "/settings/integrations/webhooks";

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

const EMAIL: &str = "ops@example.com";

/// Adds a user and signs in over plain HTTP; returns the session cookie.
async fn sign_in_http(server: &TestServer, http: &reqwest::Client) -> String {
    server.add_user(EMAIL, "admin").await;
    let response = http
        .post(format!("{}/sign-in", server.base))
        .form(&[("email", EMAIL), ("password", PASSWORD), ("next", HOME)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "sign-in answers with a redirect");
    assert_eq!(response.headers()[LOCATION], HOME);
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_string();
    cookie.split(';').next().unwrap().to_string()
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let start = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF field")
        + 19;
    html[start..].split('"').next().unwrap().to_string()
}

async fn page(http: &reqwest::Client, server: &TestServer, path: &str, cookie: &str) -> String {
    let response = http
        .get(format!("{}{path}", server.base))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn console_pages_redirect_to_sign_in_without_a_session() {
    let server = TestServer::start().await;
    let http = no_redirects();
    let paths = [
        "/",
        "/settings",
        "/settings/integrations",
        HOME,
        "/settings/integrations/webhooks/ep_x",
        "/settings/integrations/webhooks/ep_x/delete",
        "/endpoints/ep_x",
    ];
    for path in paths {
        for cookie in [None, Some("herald_session=not-a-session")] {
            let mut request = http.get(format!("{}{path}", server.base));
            if let Some(cookie) = cookie {
                request = request.header(COOKIE, cookie);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 303, "GET {path} with {cookie:?}");
            let location = response.headers()[LOCATION].to_str().unwrap();
            assert!(
                location.starts_with("/sign-in?next=%2F"),
                "{path}: {location}"
            );
        }
    }

    let create = http
        .post(format!("{}{HOME}", server.base))
        .form(&[("name", "x"), ("url", "http://127.0.0.1:9/")])
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 303);
    assert!(server.get("/api/v1/endpoints").await["data"]
        .as_array()
        .unwrap()
        .is_empty());

    let sign_in = http
        .get(format!("{}/sign-in", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(sign_in.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn the_session_cookie_is_http_only_and_same_site_and_sign_out_ends_it() {
    let server = TestServer::start().await;
    let http = no_redirects();
    server.add_user(EMAIL, "admin").await;
    let response = http
        .post(format!("{}/sign-in", server.base))
        .form(&[("email", EMAIL), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_string();
    assert!(session.len() > "herald_session=".len() + 40, "{session}");

    // The link in alert e-mail leads to the endpoint's Event History.
    let link = http
        .get(format!("{}/endpoints/ep_x", server.base))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(link.status(), 303);
    assert_eq!(link.headers()[LOCATION], format!("{HOME}/ep_x"));

    let html = page(&http, &server, HOME, &session).await;
    let sign_out = http
        .post(format!("{}/sign-out", server.base))
        .header(COOKIE, &session)
        .form(&[("csrf", csrf_of(&html))])
        .send()
        .await
        .unwrap();
    assert_eq!(sign_out.status(), 303);
    assert!(sign_out.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let after = http
        .get(format!("{}{HOME}", server.base))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 303, "the old cookie no longer signs in");

    let wrong = http
        .post(format!("{}/sign-in", server.base))
        .form(&[("email", EMAIL), ("password", "not the password")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    assert!(wrong
        .text()
        .await
        .unwrap()
        .contains("the e-mail or the password is not right"));
    server.stop().await;
}

#[tokio::test]
async fn a_console_post_without_the_sessions_csrf_token_is_refused() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let http = no_redirects();
    let session = sign_in_http(&server, &http).await;
    let csrf = csrf_of(&page(&http, &server, HOME, &session).await);
    let form = |csrf: Option<&str>| {
        let mut fields = vec![
            ("name", "CRM sync".to_string()),
            ("url", receiver.url.clone()),
            ("enabled", "true".to_string()),
            ("events", "account.created".to_string()),
        ];
        if let Some(csrf) = csrf {
            fields.push(("csrf", csrf.to_string()));
        }
        fields
    };

    let attempts = [
        (form(None), None),
        (form(Some("not-the-token")), None),
        (form(Some(&csrf)), Some("http://evil.example")),
    ];
    for (fields, origin) in attempts {
        let mut request = http
            .post(format!("{}{HOME}", server.base))
            .header(COOKIE, &session)
            .form(&fields);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "{fields:?} from {origin:?}");
    }
    assert!(server.get("/api/v1/endpoints").await["data"]
        .as_array()
        .unwrap()
        .is_empty());

    let accepted = http
        .post(format!("{}{HOME}", server.base))
        .header(COOKIE, &session)
        .header("origin", &server.base)
        .form(&form(Some(&csrf)))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 303);
    let list = server.get("/api/v1/endpoints").await;
    assert_eq!(list["data"][0]["name"], "CRM sync");
    assert_eq!(list["data"][0]["events"], json!(["account.created"]));
    server.stop().await;
}

#[tokio::test]
async fn console_pages_allow_only_their_own_inline_assets() {
    let server = TestServer::start().await;
    let http = no_redirects();
    let session = sign_in_http(&server, &http).await;
    let response = http
        .get(format!("{}{HOME}", server.base))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'sha256-"), "{policy}");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let html = response.text().await.unwrap();
    assert!(!html.contains("src=\"http"), "no external script");
    assert!(
        !html.contains("href=\"http"),
        "no external stylesheet or link"
    );
    server.stop().await;
}

/// Adds a user and signs in through the form, as a person would.
async fn sign_in(browser: &Browser, server: &TestServer, screenshot: bool) {
    server.add_user(EMAIL, "admin").await;
    browser.goto("/").await;
    browser.wait_text("h1", "Sign in").await;
    assert!(browser.path().await.starts_with("/sign-in?next="));
    if screenshot {
        browser.screenshot("sign-in").await;
    }
    browser.fill("email", EMAIL).await;
    browser.fill("password", "not the password").await;
    browser.click("form button[type=submit]").await;
    browser.wait_text("#sign-in-error", "not right").await;
    browser.fill("password", PASSWORD).await;
    browser.click("form button[type=submit]").await;
    browser.wait_text("h1", "Webhook Endpoints").await;
}

async fn add_events(browser: &Browser, trigger: &str, events: &[&str]) {
    browser
        .by_id("ep-trigger")
        .await
        .select_by_value(trigger)
        .await
        .expect("trigger chosen");
    for event in events {
        browser
            .by_id(&format!("ev-{event}"))
            .await
            .click()
            .await
            .unwrap();
    }
    browser.click("#add-events").await;
    browser
        .wait_text("#add-events-status", &format!("of {trigger}"))
        .await;
}

async fn endpoint_named(server: &TestServer, name: &str) -> Value {
    let list = server.get("/api/v1/endpoints").await;
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no endpoint named {name}: {list}"))
        .clone()
}

#[tokio::test]
async fn operator_creates_an_endpoint_follows_its_history_then_disables_and_deletes_it() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let browser = Browser::start(&server.base).await;
    sign_in(&browser, &server, true).await;

    // The empty state says what to do first.
    browser.wait_text(".empty", "Start by creating one").await;
    browser.screenshot("endpoints-empty").await;

    // Create an endpoint through the dialog with events of two triggers.
    browser.click("#create-endpoint").await;
    browser.fill("ep-name", "CRM sync").await;
    browser.fill("ep-url", &receiver.url).await;
    add_events(&browser, "account", &["account.created", "account.status"]).await;
    add_events(&browser, "invoice", &["invoice.paid"]).await;
    browser.wait_text("#chosen", "invoice.paid").await;
    browser.screenshot("create-dialog").await;
    browser.click("#dialog-submit").await;
    browser
        .wait_text(".notice", "The endpoint was created")
        .await;
    let endpoint = endpoint_named(&server, "CRM sync").await;
    assert_eq!(
        endpoint["events"],
        json!(["account.created", "account.status", "invoice.paid"])
    );
    assert_eq!(endpoint["enabled"], true);
    assert_eq!(
        receiver.requests()[0].method,
        "HEAD",
        "Create ran the HEAD check"
    );
    let id = endpoint["id"].as_str().unwrap().to_string();

    // An event emitted through the API shows in its Event History.
    server
        .emit("account.status", json!(42), json!({"status": "active"}))
        .await;
    receiver.wait_posts(1).await;
    let delivery = &server.deliveries(&id).await[0];
    server
        .wait_delivery(delivery["id"].as_str().unwrap(), |d| {
            d["status"] == "succeeded"
        })
        .await;
    browser.goto(&format!("{HOME}/{id}")).await;
    browser
        .wait_text(".deliveries tbody", "account.status")
        .await;
    let row = browser.text(".deliveries tbody tr").await;
    assert!(row.contains("42") && row.contains("succeeded"), "{row}");
    browser.screenshot("event-history").await;

    // The arrow opens the side panel: the payload sent and the receiver's reply.
    browser.click(".deliveries tbody tr a.arrow").await;
    let payload = browser.wait_text("#payload", "\"object_id\": 42").await;
    assert!(payload.contains("\"status\": \"active\""), "{payload}");
    let attempt = browser.text(".panel .attempt").await;
    assert!(attempt.contains("Attempt 1: 200"), "{attempt}");
    assert!(attempt.contains("{\"ok\":true}"), "{attempt}");
    let created = browser.find(".panel time").await;
    let utc = created.attr("title").await.unwrap().unwrap();
    assert!(utc.ends_with("UTC"), "UTC on hover: {utc}");
    assert_ne!(
        created.text().await.unwrap(),
        utc,
        "shown in the browser's zone"
    );
    browser.screenshot("delivery-panel").await;
    browser.resize(390, 844).await;
    browser.screenshot("delivery-panel-390px").await;
    browser.resize(1280, 900).await;

    // A failing delivery stays pending, then the endpoint is disabled from the table.
    receiver.set_default(Reply::Status(500));
    server
        .emit("invoice.paid", json!("inv-7"), json!({"total": 12}))
        .await;
    receiver.wait_posts(2).await;
    browser.goto(HOME).await;
    browser
        .click(&format!(
            "tr[data-endpoint='{id}'] button[aria-label='Disable CRM sync']"
        ))
        .await;
    browser.wait_text(".notice", "disabled").await;
    let row = browser.text(&format!("tr[data-endpoint='{id}']")).await;
    assert!(row.contains("Disabled"), "{row}");
    assert_eq!(
        server.get(&format!("/api/v1/endpoints/{id}")).await["enabled"],
        false
    );
    browser.screenshot("endpoints").await;
    browser.resize(390, 844).await;
    browser.screenshot("endpoints-390px").await;
    browser.resize(1280, 900).await;

    // Delete asks first, and says how many deliveries are pending.
    browser
        .click(&format!(
            "tr[data-endpoint='{id}'] a[aria-label='Delete CRM sync']"
        ))
        .await;
    browser.wait_text("main", "It has 1 pending delivery").await;
    browser.screenshot("delete-confirmation").await;
    browser.click("#confirm-delete").await;
    browser
        .wait_text(".notice", "The endpoint was deleted")
        .await;
    browser
        .wait_text(".empty", "No webhook endpoints yet")
        .await;
    let (status, _) = server
        .api(Method::GET, &format!("/api/v1/endpoints/{id}"), None)
        .await;
    assert_eq!(status, 404);

    browser.close().await;
    server.stop().await;
}

#[tokio::test]
async fn the_create_dialog_shows_each_error_beside_its_field() {
    let server = TestServer::start().await;
    let receiver = Receiver::start().await;
    let browser = Browser::start(&server.base).await;
    sign_in(&browser, &server, false).await;

    // The dialog opens from the keyboard, and every field in it has a label.
    browser
        .script("document.getElementById('create-endpoint').focus()")
        .await;
    let opener = browser.client.active_element().await.unwrap();
    opener.send_keys("\u{E007}").await.unwrap(); // Enter
    browser.find("dialog[open]").await;
    let unlabelled = browser
        .script(
            "return [...document.querySelectorAll('input:not([type=hidden]), select')]\
             .filter(f => !(f.labels && f.labels.length) && !f.getAttribute('aria-label'))\
             .map(f => f.id || f.name);",
        )
        .await;
    assert_eq!(unlabelled, json!([]), "inputs without a label");

    // An empty name and a wrong URL: each error beside its field, in the API's words.
    browser.fill("ep-name", "   ").await;
    browser.fill("ep-url", "ftp://example.com/hook").await;
    browser.click("#dialog-submit").await;
    let name_error = browser.wait_text("#ep-name-error", "name").await;
    let url_error = browser.text("#ep-url-error").await;
    let (status, api) = server
        .api(
            Method::POST,
            "/api/v1/endpoints",
            Some(json!({"name": "x", "url": "ftp://example.com/hook"})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        url_error,
        api["detail"].as_str().unwrap(),
        "same words as the API"
    );
    assert_eq!(name_error, "name must not be empty");
    assert_eq!(
        browser
            .by_id("ep-url")
            .await
            .prop("value")
            .await
            .unwrap()
            .unwrap(),
        "ftp://example.com/hook",
        "what was typed is kept"
    );
    browser.screenshot("create-dialog-errors").await;

    // A receiver that fails HEAD: the failure shows by the URL, and "Save anyway" saves.
    receiver.set_head_status(405);
    browser.fill("ep-name", "Billing").await;
    browser.fill("ep-url", &receiver.url).await;
    add_events(&browser, "ticket", &["ticket.closed"]).await;
    browser.click("#dialog-submit").await;
    let url_error = browser
        .wait_text("#ep-url-error", "HEAD check failed")
        .await;
    assert!(url_error.contains("405"), "{url_error}");
    assert!(!browser.exists("#ep-name-error").await);
    assert!(server.get("/api/v1/endpoints").await["data"]
        .as_array()
        .unwrap()
        .is_empty());
    browser.wait_text("#chosen", "ticket.closed").await;
    browser.screenshot("create-dialog-head-check").await;
    browser.click("#save-anyway").await;
    browser
        .wait_text(".notice", "The endpoint was created")
        .await;
    let endpoint = endpoint_named(&server, "Billing").await;
    assert_eq!(endpoint["events"], json!(["ticket.closed"]));

    // Edit in the same dialog: rename, remove the ticket events, add a payment event.
    browser.click("#edit-endpoint").await;
    browser.find("dialog[open]").await;
    assert_eq!(
        browser
            .by_id("ep-name")
            .await
            .prop("value")
            .await
            .unwrap()
            .unwrap(),
        "Billing"
    );
    browser.fill("ep-name", "Billing v2").await;
    browser
        .click("#chosen li[data-trigger='ticket'] button.remove")
        .await;
    add_events(&browser, "payment", &["payment.refunded"]).await;
    browser.click("#dialog-submit").await;
    browser.wait_text(".notice", "The endpoint was saved").await;
    let edited = endpoint_named(&server, "Billing v2").await;
    assert_eq!(edited["events"], json!(["payment.refunded"]));
    assert_eq!(
        edited["url"], endpoint["url"],
        "an unchanged URL is not checked again"
    );

    browser.close().await;
    server.stop().await;
}

#[tokio::test]
async fn test_webhook_secret_resend_and_recover_work_from_the_endpoint_page() {
    // A retry window shorter than the interval: a delivery fails at its first failure.
    let server = TestServer::start_with(Options {
        configure: Box::new(|s| {
            s.delivery.retry_interval = Duration::from_secs(60);
            s.delivery.retry_window = Duration::from_secs(1);
        }),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let id = server.endpoint(&receiver.url, &["account.created"]).await;
    let browser = Browser::start(&server.base).await;
    sign_in(&browser, &server, false).await;
    browser.goto(&format!("{HOME}/{id}")).await;

    // Send a test webhook: success, status and reply.
    browser.click("#send-test").await;
    let result = browser.wait_text("#test-result", "succeeded").await;
    assert!(
        result.contains("200") && result.contains("{\"ok\":true}"),
        "{result}"
    );
    browser.screenshot("test-webhook").await;

    // The secret is hidden until asked for, then rotated.
    assert!(browser.exists("#secret-hidden").await);
    browser.click("#show-secret").await;
    let shown = browser.wait_text("#secret-key", "whsec_").await;
    let api_secret = server.get(&format!("/api/v1/endpoints/{id}/secret")).await;
    assert_eq!(shown, api_secret["key"].as_str().unwrap());
    browser.click("#rotate-secret").await;
    let rotated = browser.wait_changed("#secret-key", "whsec_", &shown).await;
    let api_secret = server.get(&format!("/api/v1/endpoints/{id}/secret")).await;
    assert_eq!(rotated, api_secret["key"].as_str().unwrap());

    // A failed delivery: Resend from the panel, then "Resend all failed since…".
    receiver.set_default(Reply::Status(503));
    server.emit("account.created", json!(7), json!({})).await;
    eventually("the delivery fails", || async {
        server
            .deliveries(&id)
            .await
            .iter()
            .any(|d| d["status"] == "failed")
    })
    .await;
    receiver.set_default(Reply::Status(200));
    browser.goto(&format!("{HOME}/{id}?status=failed")).await;
    browser
        .wait_text(".deliveries tbody", "account.created")
        .await;
    assert!(!browser.text(".deliveries tbody").await.contains("test"));
    browser.click(".deliveries tbody tr a.arrow").await;
    browser.wait_text(".panel .attempt", "503").await;
    browser.click("#resend").await;
    browser
        .wait_text(".notice", "The delivery was resent")
        .await;
    receiver.wait_posts(3).await;

    receiver.set_default(Reply::Status(500));
    server.emit("account.created", json!(8), json!({})).await;
    eventually("the second delivery fails", || async {
        let list = server.deliveries(&id).await;
        list.iter()
            .any(|d| d["status"] == "failed" && d["payload"]["object_id"] == 8)
    })
    .await;
    receiver.set_default(Reply::Status(200));
    browser.goto(&format!("{HOME}/{id}")).await;
    browser
        .script("document.getElementById('recover-local').value = '2000-01-01T00:00:00'")
        .await;
    browser.click("#recover-form button[type=submit]").await;
    browser
        .wait_text(".notice", "1 failed delivery was resent")
        .await;
    eventually("the recovered delivery succeeds", || async {
        let list = server.deliveries(&id).await;
        list.iter().all(|d| d["status"] == "succeeded")
    })
    .await;

    browser.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_new_password_ends_the_users_console_sessions() {
    let server = TestServer::start().await;
    let http = no_redirects();
    let session = sign_in_http(&server, &http).await;
    page(&http, &server, HOME, &session).await;

    let users = server.get("/api/v1/users").await;
    let user = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == EMAIL)
        .unwrap();
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    let body = json!({"password": "another long password"});
    let (status, answer) = server.api(Method::PATCH, &path, Some(body)).await;
    assert_eq!(status, 200, "{answer}");

    let after = http
        .get(format!("{}{HOME}", server.base))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        after.status(),
        303,
        "the session ended with the old password"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unreadable_id_in_a_console_address_gets_a_console_page() {
    let server = TestServer::start().await;
    let http = no_redirects();
    let cookie = sign_in_http(&server, &http).await;
    for path in [
        "/settings/integrations/webhooks/%FF%FE",
        "/settings/integrations/webhooks/%FF/delete",
        "/endpoints/%FF%FE",
    ] {
        let response = http
            .get(format!("{}{path}", server.base))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
        let body = response.text().await.unwrap();
        assert!(body.contains("names no page of the console"), "{body}");
        assert!(body.contains(path), "{body}");
    }
}
