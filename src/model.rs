//! The domain types shared by the API, the engine and the store.
//!
//! These are stored shapes, not wire shapes: the API has its own `…In`/`…Out` types and
//! converts at its edge.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// Whether an endpoint receives events in acceptance order or holds back per object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Accepted order while the endpoint answers; a failing delivery holds back nothing.
    #[default]
    Accepted,
    /// No event for an object is sent before earlier ones for that object are settled.
    PerObject,
}

impl Ordering {
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::Accepted => "accepted",
            Ordering::PerObject => "per_object",
        }
    }

    pub fn parse(text: &str) -> Option<Ordering> {
        match text {
            "accepted" => Some(Ordering::Accepted),
            "per_object" => Some(Ordering::PerObject),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub id: String,
    pub name: String,
    pub url: String,
    pub enabled: bool,
    pub events: Vec<String>,
    pub ordering: Ordering,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<Timestamp>,
    pub disabled_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_triggered_at: Option<Timestamp>,
}

impl Endpoint {
    /// The secrets that sign a request sent at `now`: the current one, and the previous
    /// one while its grace period lasts.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(old), Some(until)) = (&self.previous_secret, self.previous_secret_until) {
            if now < until {
                secrets.push(old);
            }
        }
        secrets
    }
}

/// The fields of an endpoint a caller chooses.
#[derive(Clone, Debug)]
pub struct EndpointFields {
    pub name: String,
    pub url: String,
    pub enabled: bool,
    pub events: Vec<String>,
    pub ordering: Ordering,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// An event as accepted: the webhook body is built once, at ingest, and sent as these
/// exact bytes on every attempt to every endpoint.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: String,
    pub event_type: String,
    pub object_key: String,
    pub body: String,
    /// When Herald accepted the event; the body's `created_at` may be the host's own.
    pub accepted_at: Timestamp,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
}

#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub endpoint_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub test: bool,
    pub body: String,
    pub created_at: Timestamp,
    pub first_attempt_at: Option<Timestamp>,
    pub next_attempt_at: Option<Timestamp>,
    pub last_attempt_at: Option<Timestamp>,
    pub attempt_count: i64,
}

/// Why an attempt failed without a usable reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No complete reply within the attempt timeout.
    Timeout,
    /// The receiver's host refused the connection.
    ConnectionRefused,
    /// The host name did not resolve.
    Dns,
    /// The connection broke before the reply was complete.
    ConnectionReset,
    /// Any other failure to connect.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The receiver answered with a redirect, which is never followed.
    Redirect,
    /// The receiver answered with a status that is not a success.
    HttpStatus,
    /// The destination address is not allowed by the egress policy.
    BlockedDestination,
    /// Anything else that went wrong building or sending the request.
    Request,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::ConnectionRefused => "connection_refused",
            ErrorKind::Dns => "dns",
            ErrorKind::ConnectionReset => "connection_reset",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Redirect => "redirect",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::BlockedDestination => "blocked_destination",
            ErrorKind::Request => "request",
        }
    }

    /// Whether another attempt could turn out differently.
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorKind::BlockedDestination)
    }
}

/// The outcome of one HTTP POST of a delivery.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub attempted_at: Timestamp,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Option<String>,
    pub response_truncated: bool,
    pub error_kind: Option<ErrorKind>,
    pub error: Option<String>,
    pub retry_after: Option<std::time::Duration>,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.error_kind.is_none()
    }
}

/// A stored attempt, as shown in the history.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub attempted_at: Timestamp,
    pub duration_ms: i64,
    pub status_code: Option<i64>,
    pub response_headers: String,
    pub response_body: Option<String>,
    pub response_truncated: bool,
    /// The body was dropped to bound the history (neither the first nor the latest).
    pub response_body_dropped: bool,
    pub error_kind: Option<String>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventType {
    pub name: String,
    pub trigger: String,
    pub action: String,
    pub description: String,
    pub builtin: bool,
}

/// What the store decides after recording an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterAttempt {
    Succeeded,
    RetryAt(Timestamp),
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    EndpointFailing,
    EndpointRecovered,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::EndpointFailing => "endpoint_failing",
            AlertKind::EndpointRecovered => "endpoint_recovered",
        }
    }

    pub fn parse(text: &str) -> Option<AlertKind> {
        match text {
            "endpoint_failing" => Some(AlertKind::EndpointFailing),
            "endpoint_recovered" => Some(AlertKind::EndpointRecovered),
            _ => None,
        }
    }
}

/// What an alert says about its endpoint, stored with it as JSON at the moment it is
/// raised, so the e-mail tells what was true then even if the endpoint changed since.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AlertDetail {
    pub endpoint_name: String,
    pub endpoint_url: String,
    /// The first failed attempt of the outage.
    pub failing_since: Option<Timestamp>,
    /// The endpoint's deliveries that are `failed` (and not resent) at that moment.
    pub failed_deliveries: i64,
    /// Deliveries of the endpoint still waiting for an attempt.
    pub pending_deliveries: i64,
    pub last_status: Option<u16>,
    /// The last attempt's error; `None` for a recovery, whose last attempt succeeded.
    pub last_error: Option<String>,
    /// When the attempt that raised the alert was made.
    pub at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct Alert {
    pub id: String,
    pub kind: String,
    pub endpoint_id: String,
    pub created_at: Timestamp,
    pub detail: String,
    pub sent_at: Option<Timestamp>,
    /// How many times passing it on failed (an SMTP server that did not take it).
    pub send_attempts: i64,
    pub last_send_error: Option<String>,
    /// Not before this time is it passed on again, after a failure.
    pub next_send_at: Option<Timestamp>,
}

/// What a user may do. Admins manage endpoints, events and their own tokens; super
/// admins also manage users and receive alert e-mail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    SuperAdmin,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SuperAdmin => "super_admin",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "super_admin" => Some(Role::SuperAdmin),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A person who signs in or holds API tokens. The password hash is deliberately not
/// here: it leaves the store only for a sign-in check, so no answer can carry it.
#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    /// Lower case. Only the first super admin, made on the first start, may lack one.
    pub email: Option<String>,
    pub name: String,
    pub role: Role,
    pub has_password: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct NewUser {
    pub email: String,
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    pub created_at: Timestamp,
}

/// The fields of a user to change; `None` leaves one as it is.
#[derive(Clone, Debug, Default)]
pub struct UserChanges {
    pub email: Option<String>,
    pub name: Option<String>,
    pub role: Option<Role>,
    pub password_hash: Option<String>,
}

/// An API token as listed: never the token itself, which is stored only as a hash.
#[derive(Clone, Debug)]
pub struct ApiToken {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    /// Set for a token made by signing in; a personal token never expires.
    pub expires_at: Option<Timestamp>,
}

#[derive(Clone, Debug)]
pub struct NewApiToken {
    pub user_id: String,
    pub name: String,
    pub token_hash: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

/// Who a request acts for: the token it carried and that token's user.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: String,
    pub token_id: String,
    pub role: Role,
    pub last_used_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
}

impl Principal {
    pub fn is_super_admin(&self) -> bool {
        self.role == Role::SuperAdmin
    }
}

/// A signed-in console user's session, as stored. The cookie carries a random id; the
/// store keeps only its hash.
#[derive(Clone, Debug)]
pub struct ConsoleSession {
    pub id_hash: String,
    pub user_id: String,
    pub user_name: String,
    /// Sent back in every console form and compared before any change is made.
    pub csrf_token: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}
