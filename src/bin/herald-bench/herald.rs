//! Running the Herald under test as its own process, and talking to its API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Herald {
    child: Child,
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
    data: PathBuf,
    /// On PostgreSQL, the server's URL and the database made for this run.
    database: Option<(String, String)>,
}

impl Herald {
    pub async fn start(
        binary: &Path,
        database_url: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<Herald> {
        let data = std::env::temp_dir().join(format!(
            "herald-bench-{}-{}",
            std::process::id(),
            ulid::Ulid::new()
        ));
        std::fs::create_dir_all(&data)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(extra)
            .env("HERALD_DEV", "1")
            .env("HERALD_DATA_DIR", data.as_path())
            .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
            .env("HERALD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Each Herald gets a database of its own, as it gets a data directory: one left
        // by an earlier scenario would hold its deliveries and its first token.
        let database = match database_url {
            Some(url) => Some((url.to_string(), fresh_database(url).await?)),
            None => None,
        };
        if let Some((url, name)) = &database {
            let mut own = reqwest::Url::parse(url)?;
            own.set_path(&format!("/{name}"));
            command.env("HERALD_DATABASE_URL", own.as_str());
        }
        let child = command.spawn()?;
        let token_path = data.as_path().join("initial-admin-token");
        let started = Instant::now();
        while !token_path.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "herald did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let token = std::fs::read_to_string(token_path)?.trim().to_string();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Herald {
            child,
            base: format!("http://127.0.0.1:{port}"),
            token,
            http,
            data,
            database,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn endpoint(&self, url: &str, event: &str) -> anyhow::Result<String> {
        let body = json!({"name": "bench", "url": url, "events": [event], "verify": false});
        let answer: Value = self
            .http
            .post(format!("{}/api/v1/endpoints", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        answer["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no endpoint id: {answer}"))
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
        if let Some((url, name)) = self.database.take() {
            // Drop runs inside the benchmark's runtime, which cannot block on a future.
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(&url).await?;
                    sqlx::query(&sql).execute(&mut conn).await?;
                    anyhow::Ok(())
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("herald-bench: database {name} could not be dropped; drop it by hand");
            }
        }
    }
}

/// Creates an empty database on the server of `url` and returns its name.
async fn fresh_database(url: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let name = format!(
        "herald_bench_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    Ok(name)
}

/// Resident memory of a process, in MiB.
pub fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// CPU time a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}
