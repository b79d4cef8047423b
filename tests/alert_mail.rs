//! Alert e-mail through a real SMTP conversation with a sink on loopback: who gets it,
//! how often, what it says, and what happens while the SMTP server is down.

mod common;

use std::time::Duration;

use common::{eventually, Mail, Options, Receiver, Reply, SmtpSink, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

const PUBLIC_URL: &str = "https://herald.example.com";

/// A server on a manual clock that e-mails alerts through `smtp_url`.
async fn server_mailing_to(smtp_url: &str, retry_window: Duration) -> TestServer {
    let smtp_url = smtp_url.to_string();
    TestServer::start_with(Options {
        manual_clock: true,
        configure: Box::new(move |s| {
            s.smtp_url = Some(smtp_url);
            s.public_url = PUBLIC_URL.to_string();
            s.delivery.retry_window = retry_window;
        }),
        ..Options::default()
    })
    .await
}

async fn named_endpoint(server: &TestServer, name: &str, url: &str, event: &str) -> String {
    let body = json!({"name": name, "url": url, "events": [event], "verify": false});
    server.endpoint_with(body).await
}

async fn alerts(server: &TestServer) -> Vec<Value> {
    let list = server.get("/api/v1/alerts").await;
    list["data"].as_array().unwrap().clone()
}

/// Waits until every delivery of the endpoint has had `n` attempts.
async fn wait_attempts(server: &TestServer, endpoint: &str, n: i64) {
    eventually("the attempts", || async {
        let list = server.deliveries(endpoint).await;
        list.iter().all(|d| d["attempt_count"] == json!(n))
    })
    .await;
}

fn sorted(mut addresses: Vec<String>) -> Vec<String> {
    addresses.sort();
    addresses
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Gives the alert task (which polls every second) time to send anything more.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn one_email_per_outage_goes_to_exactly_the_super_admins_then_one_on_recovery() {
    let sink = SmtpSink::start().await;
    let server = server_mailing_to(&sink.url, Duration::from_secs(60)).await;
    server.add_user("ops@example.com", "super_admin").await;
    server.add_user("boss@example.com", "super_admin").await;
    server.add_user("dev@example.com", "admin").await;
    let receiver = Receiver::answering(Reply::Status(503)).await;
    let endpoint = named_endpoint(&server, "billing", &receiver.url, "invoice.created").await;

    // Two deliveries, two attempts each: under the five failures in a row after which
    // the engine paces an endpoint that is down, so the driven clock needs no extra steps.
    for n in 0..2 {
        server.emit("invoice.created", json!(n), json!({})).await;
    }
    wait_attempts(&server, &endpoint, 1).await;
    server.advance(Duration::from_secs(60));
    wait_attempts(&server, &endpoint, 2).await;
    eventually("both deliveries failed", || async {
        let list = server.deliveries(&endpoint).await;
        list.iter().all(|d| d["status"] == "failed")
    })
    .await;
    assert_eq!(
        receiver.posts().len(),
        4,
        "two deliveries, two attempts each"
    );

    let mail = sink.wait_mails(1).await.remove(0);
    settle().await;
    assert_eq!(
        sink.mails().len(),
        1,
        "one e-mail for the outage, not one per delivery"
    );
    assert_eq!(
        sorted(mail.to.clone()),
        ["boss@example.com", "ops@example.com"],
        "every super admin with an e-mail, and nobody else"
    );
    assert_eq!(mail.from, "herald@herald.example.com");
    assert!(mail.header("message-id").is_some());
    assert!(mail.text.lines().all(|l| l.len() <= 78), "{}", mail.text);
    let oldest = server.deliveries(&endpoint).await[1]["id"].clone();
    let oldest = server
        .get(&format!("/api/v1/deliveries/{}", oldest.as_str().unwrap()))
        .await;
    let first_attempt = oldest["attempts"][0]["attempted_at"].clone();
    assert_failing_mail(&mail, &endpoint, &receiver.url, &first_attempt);

    receiver.set_default(Reply::Status(200));
    server.emit("invoice.created", json!(3), json!({})).await;
    let mails = sink.wait_mails(2).await;
    settle().await;
    assert_eq!(sink.mails().len(), 2, "one recovery e-mail");
    let recovered = &mails[1];
    assert_eq!(sorted(recovered.to.clone()), sorted(mail.to.clone()));
    assert_eq!(
        recovered.subject(),
        "[Herald] Endpoint \"billing\" has recovered"
    );
    let body = recovered.body();
    assert!(body.contains("Failed deliveries:  2"), "{body}");
    assert!(body.contains("Still pending:      0"), "{body}");
    assert!(body.contains("Last reply:         status 200\n"), "{body}");
    assert!(
        body.contains(&format!("{PUBLIC_URL}/endpoints/{endpoint}")),
        "{body}"
    );

    let sent = alerts(&server).await;
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|a| a["sent_at"].is_string()), "{sent:?}");
}

fn assert_failing_mail(mail: &Mail, endpoint: &str, url: &str, first_attempt: &Value) {
    assert_eq!(mail.subject(), "[Herald] Endpoint \"billing\" is failing");
    let body = mail.body();
    let since: chrono::DateTime<chrono::Utc> = first_attempt.as_str().unwrap().parse().unwrap();
    let expected = [
        "Endpoint:           billing".to_string(),
        format!("URL:                {url}"),
        format!(
            "Failing since:      {}",
            since.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        "Failed deliveries:  1".to_string(),
        "Still pending:      1".to_string(),
        "Last reply:         status 503 (http_status: status 503)".to_string(),
        format!("Event History:\n{PUBLIC_URL}/endpoints/{endpoint}\n"),
    ];
    for line in expected {
        assert!(body.contains(&line), "missing '{line}' in:\n{body}");
    }
}

#[tokio::test]
async fn with_the_smtp_server_down_deliveries_go_on_and_alerts_follow_once_it_is_back() {
    let port = free_port();
    let server = server_mailing_to(&format!("smtp://127.0.0.1:{port}"), Duration::ZERO).await;
    server.add_user("ops@example.com", "super_admin").await;
    let failing = Receiver::answering(Reply::Status(500)).await;
    let healthy = Receiver::start().await;
    let broken = named_endpoint(&server, "billing", &failing.url, "invoice.created").await;
    named_endpoint(&server, "crm", &healthy.url, "account.created").await;

    server.emit("invoice.created", json!(1), json!({})).await;
    eventually("a failed try to e-mail the alert", || async {
        let alerts = alerts(&server).await;
        alerts
            .iter()
            .any(|a| a["send_attempts"].as_i64() >= Some(1))
    })
    .await;
    let alert = alerts(&server).await.remove(0);
    assert_eq!(alert["sent_at"], Value::Null);
    assert!(
        alert["last_send_error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{alert}"
    );

    for n in 0..3 {
        server.emit("account.created", json!(n), json!({})).await;
    }
    healthy.wait_posts(3).await;
    failing.set_default(Reply::Status(200));
    server.emit("invoice.created", json!(2), json!({})).await;
    failing.wait_posts(2).await;
    eventually("the recovery alert", || async {
        alerts(&server).await.len() == 2
    })
    .await;

    let sink = SmtpSink::start_on(port).await;
    server.advance(Duration::from_secs(31));
    let mails = sink.wait_mails(2).await;
    settle().await;
    let subjects: Vec<String> = sink.mails().iter().map(Mail::subject).collect();
    assert_eq!(
        subjects,
        [
            "[Herald] Endpoint \"billing\" is failing",
            "[Herald] Endpoint \"billing\" has recovered"
        ],
        "each once, the outage before its end"
    );
    assert!(mails[0].body().contains(&format!("/endpoints/{broken}")));
    let sent = alerts(&server).await;
    assert!(sent.iter().all(|a| a["sent_at"].is_string()), "{sent:?}");
}

#[tokio::test]
async fn without_smtp_settings_an_alert_is_logged_and_marked_sent() {
    let server = TestServer::start_with(Options {
        manual_clock: true,
        configure: Box::new(|s| s.delivery.retry_window = Duration::ZERO),
        ..Options::default()
    })
    .await;
    server.add_user("ops@example.com", "super_admin").await;
    let receiver = Receiver::answering(Reply::Status(500)).await;
    named_endpoint(&server, "billing", &receiver.url, "invoice.created").await;
    server.emit("invoice.created", json!(1), json!({})).await;
    eventually("the alert passed on", || async {
        let alerts = alerts(&server).await;
        alerts.len() == 1 && alerts[0]["sent_at"].is_string()
    })
    .await;
    assert_eq!(alerts(&server).await[0]["send_attempts"], 0);
}

#[tokio::test]
async fn an_invalid_smtp_url_stops_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = herald::settings::Settings::defaults(dir.path());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.smtp_url = Some("smtp://user@mail.example.com".to_string());
    let clock = std::sync::Arc::new(herald::clock::SystemClock);
    let err = herald::server::start(settings, clock).await.err().unwrap();
    let message = format!("{err:#}");
    assert!(message.contains("invalid smtp-url"), "{message}");
    assert!(message.contains("no password"), "{message}");
}

#[tokio::test]
async fn an_alert_names_the_console_link_from_the_public_url() {
    let sink = SmtpSink::start().await;
    let server = server_mailing_to(&sink.url, Duration::ZERO).await;
    let (status, _) = server
        .api(
            Method::PATCH,
            "/api/v1/users/me",
            Some(json!({"email": "first@example.com"})),
        )
        .await;
    assert_eq!(
        status, 200,
        "the first super admin gets alerts once it has an e-mail"
    );
    let receiver = Receiver::answering(Reply::Status(404)).await;
    let endpoint = named_endpoint(&server, "shop", &receiver.url, "invoice.paid").await;
    server.emit("invoice.paid", json!("o-1"), json!({})).await;
    let mail = sink.wait_mails(1).await.remove(0);
    assert_eq!(mail.to, ["first@example.com"]);
    let link = format!("{PUBLIC_URL}/endpoints/{endpoint}");
    assert!(mail.body().contains(&link), "{}", mail.body());
}
