//! Shared test helpers: the real server on port 0 with a temporary data directory and a
//! manual clock, a scripted receiver speaking HTTP/1.1 over loopback, and an SMTP sink.
//! The store is SQLite, or PostgreSQL with `HERALD_TEST_STORE=postgres` (see
//! `database.rs`).

#![allow(dead_code)]

pub mod cluster;
pub mod database;
pub mod process;
pub mod receiver;
pub mod smtp;

use std::sync::Arc;
use std::time::Duration;

use herald::clock::{ManualClock, SharedClock, SystemClock};
use herald::server::Server;
use herald::settings::Settings;
use reqwest::Method;
use serde_json::{json, Value};

pub use database::{on_postgres, TestDatabase};
#[allow(unused_imports)]
pub use receiver::{Receiver, Reply};
#[allow(unused_imports)]
pub use smtp::{Mail, SmtpSink};

/// The password every user made by [`TestServer::add_user`] has.
pub const PASSWORD: &str = "correct horse battery staple";

/// How to start a test server.
pub struct Options {
    pub manual_clock: bool,
    pub configure: Box<dyn FnOnce(&mut Settings)>,
    /// A PostgreSQL database to share with other servers of the test; by default each
    /// server on PostgreSQL gets a fresh one.
    pub database: Option<Arc<TestDatabase>>,
    /// A manual clock to share with another server of the test.
    pub clock: Option<Arc<ManualClock>>,
    /// The token of a server that shares this server's database.
    pub token: Option<String>,
    /// Runs on SQLite whatever `HERALD_TEST_STORE` says, for a test that cannot reach
    /// the PostgreSQL server (the test says why).
    pub sqlite_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            manual_clock: false,
            configure: Box::new(|_| {}),
            database: None,
            clock: None,
            token: None,
            sqlite_only: false,
        }
    }
}

pub struct TestServer {
    pub server: Option<Server>,
    pub base: String,
    pub token: String,
    pub clock: Option<Arc<ManualClock>>,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// Declared after `server`, so the database is dropped after the server's handles.
    pub database: Option<Arc<TestDatabase>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(Options::default()).await
    }

    pub async fn with_manual_clock() -> TestServer {
        TestServer::start_with(Options {
            manual_clock: true,
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(options: Options) -> TestServer {
        if let Ok(filter) = std::env::var("HERALD_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::defaults(dir.path());
        settings.listen = "127.0.0.1:0".parse().unwrap();
        settings.dev = true;
        settings.delivery.allow_private = true;
        settings.delivery.attempt_timeout = Duration::from_secs(5);
        let database = match options.database {
            Some(shared) => Some(shared),
            None if on_postgres() && !options.sqlite_only => {
                Some(Arc::new(TestDatabase::create().await))
            }
            None => None,
        };
        settings.database_url = database.as_ref().map(|d| d.url.clone());
        (options.configure)(&mut settings);

        let manual = options.clock.or_else(|| {
            options
                .manual_clock
                .then(|| ManualClock::new(chrono::Utc::now()))
        });
        let clock: SharedClock = match &manual {
            Some(m) => m.clone(),
            None => Arc::new(SystemClock),
        };
        let server = herald::server::start(settings.clone(), clock)
            .await
            .expect("server starts");
        // On a shared database only the first server creates a token; the others use it.
        let token = match std::fs::read_to_string(settings.initial_token_path()) {
            Ok(token) => token,
            Err(_) => options
                .token
                .expect("the initial token of the first server"),
        };
        TestServer {
            base: format!("http://{}", server.addr),
            server: Some(server),
            token: token.trim().to_string(),
            clock: manual,
            http: reqwest::Client::new(),
            dir,
            database,
        }
    }

    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_as(&self.token, method, path, body).await
    }

    /// A request with another user's token.
    pub async fn api_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request reaches the server");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `POST /api/v1/sign-in`, without a token.
    pub async fn sign_in(&self, email: &str, password: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/v1/sign-in", self.base))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("request reaches the server");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Adds a user with [`PASSWORD`] as the initial super admin; returns its id.
    pub async fn add_user(&self, email: &str, role: &str) -> String {
        let body = json!({"email": email, "name": email, "password": PASSWORD, "role": role});
        let (status, user) = self.api(Method::POST, "/api/v1/users", Some(body)).await;
        assert_eq!(status, 201, "add user: {user}");
        user["id"].as_str().unwrap().to_string()
    }

    /// Adds a user and signs them in; returns their id and token.
    pub async fn user_with_token(&self, email: &str, role: &str) -> (String, String) {
        let id = self.add_user(email, role).await;
        let (status, answer) = self.sign_in(email, PASSWORD).await;
        assert_eq!(status, 200, "sign in: {answer}");
        (id, answer["token"].as_str().unwrap().to_string())
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.api(Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Creates an endpoint (skipping the HEAD check) subscribed to `events`.
    pub async fn endpoint(&self, url: &str, events: &[&str]) -> String {
        self.endpoint_with(
            json!({"name": "test endpoint", "url": url, "events": events, "verify": false}),
        )
        .await
    }

    pub async fn endpoint_with(&self, body: Value) -> String {
        let (status, endpoint) = self
            .api(Method::POST, "/api/v1/endpoints", Some(body))
            .await;
        assert_eq!(status, 201, "create endpoint: {endpoint}");
        endpoint["id"].as_str().unwrap().to_string()
    }

    pub async fn emit(&self, event: &str, object_id: Value, current: Value) -> String {
        let body = json!({"event": event, "object_id": object_id, "current": current});
        let (status, answer) = self.api(Method::POST, "/api/v1/events", Some(body)).await;
        assert_eq!(status, 202, "emit: {answer}");
        answer["id"].as_str().unwrap().to_string()
    }

    pub async fn deliveries(&self, endpoint_id: &str) -> Vec<Value> {
        let list = self
            .get(&format!(
                "/api/v1/endpoints/{endpoint_id}/deliveries?limit=250"
            ))
            .await;
        list["data"].as_array().unwrap().clone()
    }

    /// The endpoint's only delivery, with its attempts.
    pub async fn only_delivery(&self, endpoint_id: &str) -> Value {
        let list = self.deliveries(endpoint_id).await;
        assert_eq!(list.len(), 1, "one delivery expected: {list:?}");
        self.get(&format!(
            "/api/v1/deliveries/{}",
            list[0]["id"].as_str().unwrap()
        ))
        .await
    }

    /// Waits (in real time) until the delivery satisfies `done`.
    pub async fn wait_delivery(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/api/v1/deliveries/{id}");
        for _ in 0..400 {
            let delivery = self.get(&path).await;
            if done(&delivery) {
                return delivery;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "delivery {id} never reached the expected state: {}",
            self.get(&path).await
        );
    }

    pub fn advance(&self, by: Duration) {
        self.clock.as_ref().expect("manual clock").advance(by);
    }

    /// Another server on this server's PostgreSQL database and clock, as a second
    /// process would be.
    pub async fn sibling(&self) -> TestServer {
        // Endpoint secrets are sealed with the data directory's key, which every
        // process on one database must share.
        let key = std::fs::read_to_string(self.dir.path().join("secret-key")).expect("secret key");
        TestServer::start_with(Options {
            configure: Box::new(move |s| s.secret_key = Some(key.trim().to_string())),
            database: Some(self.database.clone().expect("a PostgreSQL test server")),
            clock: self.clock.clone(),
            token: Some(self.token.clone()),
            ..Options::default()
        })
        .await
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// Waits in real time for a condition that the server reaches on its own.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}
