//! One HTTP attempt: POST the signed body, read at most 64 KiB of the reply within the
//! attempt timeout, and describe what happened.
//!
//! This module never touches the store; it turns a request into an [`Attempt`].

use std::error::Error as _;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Client, Method, Url};

use super::egress::{EgressPolicy, GuardedResolver, ResolveError};
use crate::clock::Timestamp;
use crate::model::{Attempt, ErrorKind};
use crate::settings::SuccessRule;

/// How much of a reply body is kept; the rest is never read.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

pub const USER_AGENT: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

/// The client every outbound request goes through: guarded resolver, no redirects,
/// connections kept alive and reused per receiver.
pub fn build_client(policy: &EgressPolicy) -> Client {
    Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(std::sync::Arc::new(GuardedResolver {
            policy: policy.clone(),
        }))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("the HTTP client settings are valid")
}

/// What one request needs besides the client.
pub struct Request<'a> {
    pub method: Method,
    pub url: &'a str,
    pub headers: HeaderMap,
    pub body: Option<String>,
    pub timeout: Duration,
}

/// An attempt that failed before any request was sent.
pub fn not_sent(attempted_at: Timestamp, kind: ErrorKind, detail: String) -> Attempt {
    Attempt {
        attempted_at,
        duration_ms: 0,
        status_code: None,
        response_headers: Vec::new(),
        response_body: None,
        response_truncated: false,
        error_kind: Some(kind),
        error: Some(format!("{}: {detail}", kind.as_str())),
        retry_after: None,
    }
}

/// Sends one request and describes the outcome; never returns an error.
pub async fn send(
    client: &Client,
    policy: &EgressPolicy,
    request: Request<'_>,
    attempted_at: Timestamp,
    success: SuccessRule,
) -> Attempt {
    let started = Instant::now();
    let mut attempt = not_sent(attempted_at, ErrorKind::Request, String::new());
    attempt.error_kind = None;
    attempt.error = None;

    let timeout = request.timeout;
    let outcome =
        tokio::time::timeout(timeout, exchange(client, policy, request, &mut attempt)).await;
    let failure = match outcome {
        Ok(Ok(())) => judge_reply(&attempt, success),
        Ok(Err(failure)) => Some(failure),
        Err(_) => Some((
            ErrorKind::Timeout,
            format!(
                "no complete reply within {}",
                humantime::format_duration(timeout)
            ),
        )),
    };
    if let Some((kind, detail)) = failure {
        attempt.error_kind = Some(kind);
        attempt.error = Some(format!("{}: {detail}", kind.as_str()));
    }
    attempt.duration_ms = started.elapsed().as_millis() as i64;
    attempt
}

async fn exchange(
    client: &Client,
    policy: &EgressPolicy,
    request: Request<'_>,
    attempt: &mut Attempt,
) -> Result<(), (ErrorKind, String)> {
    let url =
        Url::parse(request.url).map_err(|e| (ErrorKind::Request, format!("invalid URL: {e}")))?;
    policy
        .check_url(&url)
        .map_err(|e| (ErrorKind::BlockedDestination, e.to_string()))?;

    let mut builder = client.request(request.method, url).headers(request.headers);
    if let Some(body) = request.body {
        builder = builder
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
    }
    let response = builder.send().await.map_err(|e| classify(&e))?;

    attempt.status_code = Some(response.status().as_u16());
    attempt.response_headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    attempt.retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(parse_retry_after);

    let mut kept = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| classify(&e))?;
        let room = MAX_REPLY_BYTES - kept.len();
        if chunk.len() >= room {
            kept.extend_from_slice(&chunk[..room]);
            attempt.response_truncated = chunk.len() > room || stream.next().await.is_some();
            break;
        }
        kept.extend_from_slice(&chunk);
    }
    attempt.response_body = Some(String::from_utf8_lossy(&kept).into_owned());
    Ok(())
}

fn judge_reply(attempt: &Attempt, success: SuccessRule) -> Option<(ErrorKind, String)> {
    let status = attempt.status_code?;
    if success.accepts(status) {
        return None;
    }
    if (300..400).contains(&status) {
        let location = attempt
            .response_headers
            .iter()
            .find(|(name, _)| name == LOCATION.as_str())
            .map_or("none", |(_, value)| value.as_str());
        return Some((
            ErrorKind::Redirect,
            format!("status {status}, not followed (location: {location})"),
        ));
    }
    Some((ErrorKind::HttpStatus, format!("status {status}")))
}

/// Reads `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Names the failure of a request by walking its chain of causes.
fn classify(err: &reqwest::Error) -> (ErrorKind, String) {
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(resolve) = cause.downcast_ref::<ResolveError>() {
            let kind = match resolve {
                ResolveError::Blocked { .. } => ErrorKind::BlockedDestination,
                ResolveError::NotFound { .. } => ErrorKind::Dns,
            };
            return (kind, resolve.to_string());
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if let Some(kind) = classify_io(io) {
                return (kind, io.to_string());
            }
        }
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return (ErrorKind::Tls, cause.to_string());
        }
        source = cause.source();
    }
    if err.is_timeout() {
        return (ErrorKind::Timeout, err.to_string());
    }
    if err.is_connect() {
        return (ErrorKind::Connect, chain(err));
    }
    if err.is_body() || err.is_decode() || err.is_request() {
        return (ErrorKind::ConnectionReset, chain(err));
    }
    (ErrorKind::Request, chain(err))
}

fn classify_io(io: &std::io::Error) -> Option<ErrorKind> {
    use std::io::ErrorKind as Io;
    match io.kind() {
        Io::ConnectionRefused => Some(ErrorKind::ConnectionRefused),
        Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof => {
            Some(ErrorKind::ConnectionReset)
        }
        Io::TimedOut => Some(ErrorKind::Timeout),
        _ => None,
    }
}

fn chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
