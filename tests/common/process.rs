//! The real `herald` binary as a child process, on a data directory (and, on
//! PostgreSQL, a database) that outlives it, so tests can kill and restart it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{on_postgres, TestDatabase};

pub const BIN: &str = env!("CARGO_BIN_EXE_herald");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What `herald serve` processes run on, and outlives them: a data directory, and a
/// PostgreSQL database of its own when the tests run on PostgreSQL.
pub struct Install {
    pub data: tempfile::TempDir,
    pub database: Option<TestDatabase>,
}

impl Install {
    pub async fn new() -> Install {
        let database = match on_postgres() {
            true => Some(TestDatabase::create().await),
            false => None,
        };
        Install {
            data: tempfile::tempdir().unwrap(),
            database,
        }
    }

    /// The token the first process wrote.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.path().join("initial-admin-token"))
            .unwrap()
            .trim()
            .to_string()
    }
}

/// A `herald serve` process.
pub struct Process {
    pub child: Child,
    pub base: String,
}

impl Process {
    pub fn start(install: &Install, port: u16) -> Process {
        Process::start_with(install, port, &[])
    }

    /// Starts `herald serve` with these flags besides the tests' usual ones. Its log
    /// goes to `serve-<port>.log` in the data directory.
    pub fn start_with(install: &Install, port: u16, flags: &[&str]) -> Process {
        let data = install.data.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join(format!("serve-{port}.log")))
            .unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--retry-interval", "1s", "--attempt-timeout", "5s"])
            .args(flags)
            .env("HERALD_DEV", "1")
            .env("HERALD_DATA_DIR", data)
            .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("HERALD_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(database) = &install.database {
            command.env("HERALD_DATABASE_URL", &database.url);
        }
        let child = command.spawn().expect("herald starts");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "herald did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Process { child, base }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let response = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await;
    match response {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}
