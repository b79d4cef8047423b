//! Settings: flags, then `HERALD_*` environment variables, then the settings file, then
//! the defaults, merged once at start into one [`Settings`] value.
//!
//! Nothing else reads the environment or the file; every subsystem gets the part of
//! [`Settings`] it needs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::mail::{MailError, SmtpSettings};

/// What counts as a successful reply from a receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SuccessRule {
    /// Any status from 200 to 299.
    #[serde(rename = "any-2xx")]
    #[value(name = "any-2xx")]
    Any2xx,
    /// Exactly 200, as some receivers expect.
    #[serde(rename = "only-200")]
    #[value(name = "only-200")]
    Only200,
}

impl SuccessRule {
    pub fn accepts(self, status: u16) -> bool {
        match self {
            SuccessRule::Any2xx => (200..300).contains(&status),
            SuccessRule::Only200 => status == 200,
        }
    }
}

/// How the wait between attempts grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RetrySchedule {
    /// The same interval between every attempt.
    Fixed,
    /// The interval doubles after each failure, up to one hour.
    Exponential,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

/// The fully resolved settings of `herald serve`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub public_url: String,
    pub dev: bool,
    pub smtp_url: Option<String>,
    /// The sender of alert e-mail; `None` means [`crate::mail::default_from`].
    pub smtp_from: Option<String>,
    pub log_format: LogFormat,
    /// How long events and their history are kept once every delivery is settled.
    pub retention: Duration,
    /// Base64 of the 32-byte key that seals endpoint secrets; without it, a key file in
    /// the data directory is used (and created on first start).
    pub secret_key: Option<String>,
    pub delivery: DeliverySettings,
}

/// The part of the settings the delivery engine reads.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    pub retry_interval: Duration,
    pub retry_window: Duration,
    pub retry_schedule: RetrySchedule,
    pub attempt_timeout: Duration,
    pub success: SuccessRule,
    /// How many endpoints may have an attempt in flight at once, in this process.
    pub max_concurrent_endpoints: usize,
    /// Requests per minute an endpoint gets while it is down (after several failures in
    /// a row), however many deliveries wait for it.
    pub down_endpoint_rate: u32,
    /// How long the old secret keeps signing after a rotation.
    pub secret_grace: Duration,
    /// Allows loopback and private addresses and plain `http` URLs.
    pub allow_private: bool,
    /// Networks receivers may be in even though they are not public.
    pub allow_networks: Vec<ipnet::IpNet>,
}

impl Settings {
    /// Defaults for a server rooted at `data_dir`, as used by tests and by `serve`
    /// before flags, environment and file are applied.
    pub fn defaults(data_dir: &Path) -> Settings {
        let listen: SocketAddr = "127.0.0.1:7070".parse().expect("valid default address");
        Settings {
            listen,
            data_dir: data_dir.to_path_buf(),
            database_url: None,
            public_url: format!("http://{listen}"),
            dev: false,
            smtp_url: None,
            smtp_from: None,
            log_format: LogFormat::Text,
            retention: Duration::from_secs(30 * 24 * 3600),
            secret_key: None,
            delivery: DeliverySettings {
                retry_interval: Duration::from_secs(60),
                retry_window: Duration::from_secs(4 * 3600),
                retry_schedule: RetrySchedule::Fixed,
                attempt_timeout: Duration::from_secs(30),
                success: SuccessRule::Any2xx,
                max_concurrent_endpoints: 256,
                down_endpoint_rate: 10,
                secret_grace: Duration::from_secs(24 * 3600),
                allow_private: false,
                allow_networks: Vec::new(),
            },
        }
    }

    pub fn secret_key_path(&self) -> PathBuf {
        self.data_dir.join("secret-key")
    }

    pub fn initial_token_path(&self) -> PathBuf {
        self.data_dir.join("initial-admin-token")
    }

    /// The SMTP server for alert e-mail, if one is set.
    pub fn smtp(&self) -> Result<Option<SmtpSettings>, MailError> {
        self.smtp_url
            .as_deref()
            .map(SmtpSettings::parse)
            .transpose()
    }

    /// The sender of alert e-mail.
    pub fn smtp_from(&self) -> String {
        self.smtp_from
            .clone()
            .unwrap_or_else(|| crate::mail::default_from(&self.public_url))
    }
}

/// The flags of `herald serve`; each also reads its `HERALD_*` variable.
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// Settings file (TOML); see herald.example.toml
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:7070]
    #[arg(long, env = "HERALD_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Directory for the embedded database and the initial token [default: ./herald-data]
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Database URL; the default is SQLite in the data directory
    #[arg(long, env = "HERALD_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Wait between attempts of a failing delivery [default: 60s]
    #[arg(long, env = "HERALD_RETRY_INTERVAL", value_parser = parse_duration)]
    pub retry_interval: Option<Duration>,

    /// How long after its first attempt a delivery is retried [default: 4h]
    #[arg(long, env = "HERALD_RETRY_WINDOW", value_parser = parse_duration)]
    pub retry_window: Option<Duration>,

    /// How the wait between attempts grows [default: fixed]
    #[arg(long, env = "HERALD_RETRY_SCHEDULE")]
    pub retry_schedule: Option<RetrySchedule>,

    /// Longest an attempt may take, reply body included [default: 30s]
    #[arg(long, env = "HERALD_ATTEMPT_TIMEOUT", value_parser = parse_duration)]
    pub attempt_timeout: Option<Duration>,

    /// Which replies count as success [default: any-2xx]
    #[arg(long, env = "HERALD_SUCCESS")]
    pub success: Option<SuccessRule>,

    /// How long a rotated-out secret keeps signing [default: 24h]
    #[arg(long, env = "HERALD_SECRET_GRACE", value_parser = parse_duration)]
    pub secret_grace: Option<Duration>,

    /// Endpoints that may have an attempt in flight at once [default: 256]
    #[arg(long, env = "HERALD_MAX_CONCURRENT_ENDPOINTS")]
    pub max_concurrent_endpoints: Option<usize>,

    /// Requests per minute to an endpoint that is down [default: 10]
    #[arg(long, env = "HERALD_DOWN_ENDPOINT_RATE")]
    pub down_endpoint_rate: Option<u32>,

    /// A network receivers may be in although it is not public, like 10.1.0.0/16
    /// (repeat, or separate with commas); cloud metadata addresses stay refused
    #[arg(
        long = "allow-network",
        env = "HERALD_ALLOW_NETWORKS",
        value_delimiter = ','
    )]
    pub allow_networks: Vec<ipnet::IpNet>,

    /// Development mode: also send to loopback and private addresses and plain http
    #[arg(long, env = "HERALD_DEV", value_parser = parse_flag, num_args = 0..=1,
          default_missing_value = "true")]
    pub dev: Option<bool>,

    /// SMTP server for alert e-mail: smtp://user:pass@host:587 (STARTTLS), smtps://…
    /// (TLS), or smtp://127.0.0.1:25 (a local relay, no TLS) [default: none, alerts are
    /// only logged]
    #[arg(long, env = "HERALD_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Sender of alert e-mail [default: Herald <herald@the public URL's host>]
    #[arg(long, env = "HERALD_SMTP_FROM")]
    pub smtp_from: Option<String>,

    /// Base URL of this server, used for links in e-mails [default: http://<listen>]
    #[arg(long, env = "HERALD_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// How long settled events and their history are kept [default: 30days]
    #[arg(long, env = "HERALD_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,

    /// Key that seals endpoint secrets (base64 of 32 bytes) [default: <data dir>/secret-key]
    #[arg(long, env = "HERALD_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// Log format [default: text]
    #[arg(long, env = "HERALD_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// The settings file: the same names as the flags, with `_` for `-`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    retry_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    retry_window: Option<Duration>,
    retry_schedule: Option<RetrySchedule>,
    #[serde(default, with = "humantime_serde_opt")]
    attempt_timeout: Option<Duration>,
    success: Option<SuccessRule>,
    #[serde(default, with = "humantime_serde_opt")]
    secret_grace: Option<Duration>,
    max_concurrent_endpoints: Option<usize>,
    down_endpoint_rate: Option<u32>,
    allow_networks: Option<Vec<ipnet::IpNet>>,
    dev: Option<bool>,
    smtp_url: Option<String>,
    smtp_from: Option<String>,
    public_url: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default, with = "humantime_serde_opt")]
    retention: Option<Duration>,
    secret_key: Option<String>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| super::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl ServeArgs {
    /// Merges flags and environment (already in `self`) over the file over the defaults.
    pub fn resolve(&self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let data_dir = pick(&self.data_dir, file.data_dir).unwrap_or("herald-data".into());
        let mut s = Settings::defaults(&data_dir);
        let d = &mut s.delivery;

        s.listen = pick(&self.listen, file.listen).unwrap_or(s.listen);
        s.database_url = pick(&self.database_url, file.database_url);
        s.dev = pick(&self.dev, file.dev).unwrap_or(false);
        s.smtp_url = pick(&self.smtp_url, file.smtp_url);
        s.smtp_from = pick(&self.smtp_from, file.smtp_from);
        s.log_format = pick(&self.log_format, file.log_format).unwrap_or(s.log_format);
        d.retry_interval =
            pick(&self.retry_interval, file.retry_interval).unwrap_or(d.retry_interval);
        d.retry_window = pick(&self.retry_window, file.retry_window).unwrap_or(d.retry_window);
        d.retry_schedule =
            pick(&self.retry_schedule, file.retry_schedule).unwrap_or(d.retry_schedule);
        d.attempt_timeout =
            pick(&self.attempt_timeout, file.attempt_timeout).unwrap_or(d.attempt_timeout);
        d.success = pick(&self.success, file.success).unwrap_or(d.success);
        d.secret_grace = pick(&self.secret_grace, file.secret_grace).unwrap_or(d.secret_grace);
        d.max_concurrent_endpoints = pick(
            &self.max_concurrent_endpoints,
            file.max_concurrent_endpoints,
        )
        .unwrap_or(d.max_concurrent_endpoints);
        d.down_endpoint_rate =
            pick(&self.down_endpoint_rate, file.down_endpoint_rate).unwrap_or(d.down_endpoint_rate);
        s.retention = pick(&self.retention, file.retention).unwrap_or(s.retention);
        s.secret_key = pick(&self.secret_key, file.secret_key);
        d.allow_private = s.dev;
        d.allow_networks = match (self.allow_networks.is_empty(), file.allow_networks) {
            (true, Some(networks)) => networks,
            _ => self.allow_networks.clone(),
        };
        s.public_url = pick(&self.public_url, file.public_url)
            .unwrap_or_else(|| format!("http://{}", s.listen));

        validate(&s)?;
        Ok(s)
    }
}

fn pick<T: Clone>(flag: &Option<T>, file: Option<T>) -> Option<T> {
    flag.clone().or(file)
}

fn read_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read settings file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid settings file {}", path.display()))
}

fn validate(s: &Settings) -> anyhow::Result<()> {
    let d = &s.delivery;
    anyhow::ensure!(
        !d.retry_interval.is_zero(),
        "retry-interval must be more than 0"
    );
    anyhow::ensure!(
        !d.attempt_timeout.is_zero(),
        "attempt-timeout must be more than 0"
    );
    anyhow::ensure!(
        s.retention >= Duration::from_secs(3600),
        "retention must be at least 1h"
    );
    anyhow::ensure!(
        d.down_endpoint_rate > 0,
        "down-endpoint-rate must be more than 0"
    );
    anyhow::ensure!(
        d.max_concurrent_endpoints > 0,
        "max-concurrent-endpoints must be more than 0"
    );
    check_public_url(&s.public_url)?;
    s.smtp()?;
    crate::mail::parse_mailbox(&s.smtp_from()).context("invalid smtp-from")?;
    Ok(())
}

fn check_public_url(text: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(text)
        .with_context(|| format!("invalid public-url '{text}': not an absolute URL"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https"),
        "invalid public-url '{text}': it must start with http:// or https://"
    );
    Ok(())
}

/// Parses durations written like `500ms`, `60s`, `4h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration '{text}': {e} (write it like 500ms, 60s or 4h)"))
}

fn parse_flag(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!("invalid switch '{other}': use 1 or 0")),
    }
}
