//! The store: every piece of Herald's state, behind one interface.
//!
//! The queue lives here too: a delivery is a row, claimed with a lease before its
//! attempt and released when the attempt is recorded. Nothing is kept only in memory,
//! so a process that dies loses nothing that was acknowledged. No method holds a
//! transaction open across a network call; the engine claims, commits, calls, then
//! records.
//!
//! Two implementations: [`SqliteStore`], embedded and owned by one process, and
//! [`PostgresStore`], which several processes share. Code outside this module sees
//! only the [`Store`] trait; where the two differ in kind (who may hold a lease, who
//! else writes), the trait says so in a method, not the caller in an `if`.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::clock::Timestamp;
use crate::model::{
    AfterAttempt, Alert, ApiToken, Attempt, AttemptRecord, ConsoleSession, Delivery,
    DeliveryStatus, Endpoint, EndpointFields, EventType, NewApiToken, NewEvent, NewUser, Principal,
    User, UserChanges,
};

pub use postgres::PostgresStore;
pub use sqlite::{SqliteStore, DATABASE_FILE};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("unknown event type")]
    UnknownEventType,
    #[error("idempotency key already used for a different request")]
    IdempotencyMismatch,
    #[error("already exists")]
    AlreadyExists,
    #[error("an attempt is in flight")]
    InFlight,
    #[error("the last super admin cannot be removed or demoted")]
    LastSuperAdmin,
    /// The database cannot be reached or refuses work for now; trying again later may
    /// succeed, and nothing of the failed call was written.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Database(sqlx::Error),
    /// An error of the embedded database's writing connection.
    #[error("database: {0}")]
    Embedded(rusqlite::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<sqlx::Error> for StoreError {
    /// Sorts a driver error into "the database is away" (for a 503 and a retry) and
    /// anything else (a 500 and a log line).
    fn from(err: sqlx::Error) -> StoreError {
        if is_unavailable(&err) {
            StoreError::Unavailable(err.to_string())
        } else {
            StoreError::Database(err)
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    /// Busy, locked and I/O errors mean "not now", as for the pool's connections.
    fn from(err: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure};
        match err.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure) => {
                StoreError::Unavailable(err.to_string())
            }
            _ => StoreError::Embedded(err),
        }
    }
}

fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => unavailable_database_error(db.as_ref()),
        _ => false,
    }
}

/// SQLite's busy and I/O errors, and PostgreSQL's SQLSTATE classes that mean "not
/// now": 08 (connection exception), 53 (insufficient resources: too many connections,
/// disk full), 57P01 to 57P03 (the server shuts down or is starting), and 40001/40P01
/// (serialization failure, deadlock), after which the whole call can be made again.
fn unavailable_database_error(db: &dyn sqlx::error::DatabaseError) -> bool {
    let code = db.code().unwrap_or_default();
    let postgres = code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code.as_ref(),
            "57P01" | "57P02" | "57P03" | "40001" | "40P01"
        );
    let message = db.message();
    let sqlite = message.contains("database is locked") || message.contains("disk I/O");
    postgres || sqlite
}

/// The answer to an accepted event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub event_id: String,
    pub deliveries: i64,
    /// True when an earlier request with the same idempotency key is answered again.
    pub replayed: bool,
    /// The endpoints this request gave a new delivery; none when replayed.
    pub endpoints: Vec<String>,
}

/// A page of a list, newest first.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub event_type: Option<String>,
    pub cursor: Option<String>,
    pub limit: i64,
}

/// A delivery claimed for one attempt, with what the attempt needs.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub seq: i64,
    pub delivery: Delivery,
    pub endpoint: Endpoint,
}

/// A lane's request for its endpoint's next due delivery.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    pub endpoint_id: String,
    pub now: Timestamp,
    pub lease_until: Timestamp,
}

/// What recording an attempt did, and the next claim made in the same transaction.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// False when the delivery no longer exists (its endpoint was deleted meanwhile).
    pub stored: bool,
    pub next: Option<Claimed>,
}

/// One attempt's outcome, ready to be recorded.
#[derive(Clone, Debug)]
pub struct AttemptOutcome {
    pub claimed: Claimed,
    pub attempt: Attempt,
    pub after: AfterAttempt,
}

/// What recording several attempts did, and the lane's next claims.
#[derive(Clone, Debug, Default)]
pub struct RecordedMany {
    /// Per outcome, false when its delivery no longer exists.
    pub stored: Vec<bool>,
    pub next: Vec<Claimed>,
}

/// The health of an endpoint, for lists and the console.
#[derive(Clone, Debug)]
pub struct Outage {
    pub endpoint_id: String,
    pub failing_since: Timestamp,
    pub alerted_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// What the first start creates: the first super admin and its token.
#[derive(Clone, Debug)]
pub struct InitialAdmin {
    pub user_id: String,
    pub token: String,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Brings the schema up to date and adds any built-in event types it lacks.
    async fn migrate(&self) -> StoreResult<()>;

    /// Whether the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Creates the first super admin and a token for it when there are no users.
    async fn ensure_initial_admin(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<String>>;

    /// The token with this hash and its user, expired or not: the caller checks
    /// `expires_at` against its clock.
    async fn principal_for_token(&self, token_hash: &str) -> StoreResult<Option<Principal>>;

    // Users and API tokens. A password hash leaves the store only through
    // `sign_in_record`, and a token is only ever stored and looked up as its hash.

    /// Creates a user; [`StoreError::AlreadyExists`] when the e-mail is taken.
    async fn create_user(&self, user: &NewUser) -> StoreResult<User>;
    async fn get_user(&self, id: &str) -> StoreResult<User>;
    /// Users, newest first.
    async fn list_users(&self, cursor: Option<&str>, limit: i64) -> StoreResult<Page<User>>;
    /// The user with this (lower-case) e-mail and their password hash, if they have one.
    async fn sign_in_record(&self, email: &str) -> StoreResult<Option<(User, Option<String>)>>;
    /// Changes the given fields. [`StoreError::LastSuperAdmin`] when it would leave no
    /// super admin, [`StoreError::AlreadyExists`] when the new e-mail is taken. The check
    /// and the change must be one atomic step (on a shared database: serializable, or a
    /// lock on the super admins), or two demotions at once could both pass it.
    async fn update_user(
        &self,
        id: &str,
        changes: &UserChanges,
        now: Timestamp,
    ) -> StoreResult<User>;
    /// Deletes a user with their tokens; [`StoreError::LastSuperAdmin`] for the last
    /// super admin, under the same atomicity rule as `update_user`.
    async fn delete_user(&self, id: &str) -> StoreResult<()>;
    /// The e-mail addresses of every super admin who has one: who gets alert e-mail.
    async fn super_admin_emails(&self) -> StoreResult<Vec<String>>;

    /// Stores a new token by its hash, and deletes the user's tokens that have expired.
    async fn create_token(&self, token: &NewApiToken) -> StoreResult<ApiToken>;
    /// A user's tokens, newest first.
    async fn list_tokens(
        &self,
        user_id: &str,
        cursor: Option<&str>,
        limit: i64,
    ) -> StoreResult<Page<ApiToken>>;
    /// Deletes a token; with an `owner`, only one of that user's
    /// ([`StoreError::NotFound`] otherwise).
    async fn delete_token(&self, id: &str, owner: Option<&str>) -> StoreResult<()>;
    /// Ends the user's sign-ins: deletes the tokens that expire (those made by signing
    /// in), except `keep`, and every console session. Returns how many tokens went.
    async fn delete_sign_in_tokens(&self, user_id: &str, keep: Option<&str>) -> StoreResult<u64>;
    /// Sets a token's last-used time. Callers write it at most about once a minute per
    /// token, so that using a token is not a write per request.
    async fn touch_token(&self, id: &str, now: Timestamp) -> StoreResult<()>;

    async fn list_event_types(&self) -> StoreResult<Vec<EventType>>;
    async fn add_event_type(&self, event_type: &EventType) -> StoreResult<()>;

    async fn create_endpoint(
        &self,
        fields: &EndpointFields,
        secret: &str,
        now: Timestamp,
    ) -> StoreResult<Endpoint>;
    async fn get_endpoint(&self, id: &str) -> StoreResult<Endpoint>;
    async fn list_endpoints(&self, cursor: Option<&str>, limit: i64)
        -> StoreResult<Page<Endpoint>>;
    async fn update_endpoint(
        &self,
        id: &str,
        fields: &EndpointFields,
        now: Timestamp,
    ) -> StoreResult<Endpoint>;
    /// Deletes the endpoint and everything pending for it; history goes with it.
    async fn delete_endpoint(&self, id: &str) -> StoreResult<()>;
    async fn rotate_secret(
        &self,
        id: &str,
        new_secret: &str,
        old_until: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Endpoint>;
    async fn disable_endpoint(&self, id: &str, reason: &str, now: Timestamp) -> StoreResult<()>;
    async fn list_outages(&self) -> StoreResult<Vec<Outage>>;

    /// Stores the event and one delivery per enabled endpoint subscribed to its type,
    /// in one transaction. Returns only once that transaction is durably committed.
    async fn insert_event(&self, event: &NewEvent) -> StoreResult<Accepted>;

    /// Stores a test event and its one delivery to `endpoint_id`, already claimed.
    async fn insert_test_delivery(
        &self,
        event: &NewEvent,
        endpoint_id: &str,
        lease_until: Timestamp,
    ) -> StoreResult<Claimed>;

    async fn list_deliveries(&self, filter: &DeliveryFilter) -> StoreResult<Page<Delivery>>;
    async fn get_delivery(&self, id: &str) -> StoreResult<(Delivery, Vec<AttemptRecord>)>;
    /// Puts a delivery back to pending, due now, with a new retry window. A delivery
    /// whose attempt is in flight is left alone ([`StoreError::InFlight`]).
    async fn resend_delivery(&self, id: &str, now: Timestamp) -> StoreResult<Delivery>;
    /// Resends every failed delivery of an endpoint created at or after `since`.
    async fn resend_failed_since(
        &self,
        endpoint_id: &str,
        since: Timestamp,
        now: Timestamp,
    ) -> StoreResult<i64>;

    /// Endpoints, other than `busy`, that have a delivery due and unclaimed at `now`.
    async fn due_endpoints(
        &self,
        now: Timestamp,
        busy: &[String],
        limit: i64,
    ) -> StoreResult<Vec<String>>;
    /// The earliest future time at which a delivery becomes due or a lease runs out.
    async fn next_wake(&self, now: Timestamp) -> StoreResult<Option<Timestamp>>;
    /// Claims the endpoint's first due delivery in accepted order (or per-object order)
    /// with a lease that keeps other workers off it until `lease_until`. Nothing is
    /// claimed for a disabled or deleted endpoint.
    async fn claim_next(&self, request: ClaimRequest) -> StoreResult<Option<Claimed>>;
    /// Claims up to `limit` of the endpoint's due deliveries, in order, under one lease.
    /// A store that cannot claim several at once claims one.
    async fn claim_many(&self, request: ClaimRequest, limit: usize) -> StoreResult<Vec<Claimed>> {
        let _ = limit;
        Ok(self.claim_next(request).await?.into_iter().collect())
    }

    /// Gives back claims that a lane will not attempt, so they are due again at once
    /// and nothing overtakes them. A store whose claims are single has none to give.
    async fn release_claims(&self, seqs: &[i64]) -> StoreResult<()> {
        let _ = seqs;
        Ok(())
    }

    /// Records several attempts, in order, each with its delivery's new state and the
    /// release of its lease, and makes the lane's next claim of up to `limit`
    /// deliveries, all in one transaction.
    async fn record_many(
        &self,
        outcomes: Vec<AttemptOutcome>,
        then_claim: Option<(ClaimRequest, usize)>,
    ) -> StoreResult<RecordedMany>;

    /// Records one attempt, as `record_many` does, and makes the lane's next claim.
    async fn record_attempt(
        &self,
        claimed: &Claimed,
        attempt: &Attempt,
        after: AfterAttempt,
        then_claim: Option<ClaimRequest>,
    ) -> StoreResult<Recorded> {
        let outcome = AttemptOutcome {
            claimed: claimed.clone(),
            attempt: attempt.clone(),
            after,
        };
        let many = self
            .record_many(vec![outcome], then_claim.map(|request| (request, 1)))
            .await?;
        Ok(Recorded {
            stored: many.stored.first().copied().unwrap_or(false),
            next: many.next.into_iter().next(),
        })
    }
    /// Fails every pending, unclaimed delivery whose first attempt was before `cutoff`:
    /// its retry window ended without a success while it waited (its endpoint was
    /// disabled, or paced because it was down). Raises the failing alert as an attempt
    /// would. Returns how many deliveries failed.
    async fn expire_overdue(&self, cutoff: Timestamp, now: Timestamp) -> StoreResult<u64>;
    /// Deletes up to `batch` events accepted before `before` whose deliveries are all
    /// settled, with their deliveries and attempts, and sent alerts older than that.
    /// Returns how many events went.
    async fn prune(&self, before: Timestamp, batch: i64) -> StoreResult<u64>;
    /// Releases, at start, the leases that no living process can hold, and returns how
    /// many. On a store one process owns (SQLite) that is every lease: the previous
    /// owner is gone. On a shared store (PostgreSQL) it is none, because another process
    /// may be in the middle of an attempt; its leases run out by themselves.
    async fn release_orphaned_leases(&self) -> StoreResult<u64>;

    /// Wake-ups for work that other processes committed, such as events they accepted.
    /// `None` for a store that only this process writes: its own API wakes its engine.
    fn wakeups(&self) -> Option<watch::Receiver<()>> {
        None
    }

    /// Whether another process is working on this store now, so that a busy lane
    /// should hand its endpoint over at the end of its turn. A store that only this
    /// process writes has none.
    async fn other_processes(&self) -> StoreResult<bool> {
        Ok(false)
    }

    /// How many deliveries of the endpoint are still pending.
    async fn count_pending(&self, endpoint_id: &str) -> StoreResult<i64>;

    /// Stores a new console session, and removes sessions that expired before `now`.
    async fn create_session(&self, session: &ConsoleSession, now: Timestamp) -> StoreResult<()>;
    /// The session with this id hash, if it exists and has not expired at `now`.
    async fn session(&self, id_hash: &str, now: Timestamp) -> StoreResult<Option<ConsoleSession>>;
    /// Ends a session (signing out); ending one that does not exist is not an error.
    async fn delete_session(&self, id_hash: &str) -> StoreResult<()>;

    /// Alerts newest first, after the alert `cursor` when given.
    async fn list_alerts(&self, cursor: Option<&str>, limit: i64) -> StoreResult<Page<Alert>>;
    /// Alerts not yet passed on to people and not postponed past `now`, oldest first.
    /// An alert waits while an older one of its endpoint is unsent.
    async fn unsent_alerts(&self, now: Timestamp, limit: i64) -> StoreResult<Vec<Alert>>;
    async fn mark_alert_sent(&self, id: &str, at: Timestamp) -> StoreResult<()>;
    /// Counts a failed try to pass an alert on and leaves it until `retry_at`.
    async fn postpone_alert(&self, id: &str, error: &str, retry_at: Timestamp) -> StoreResult<()>;
}

/// Times are stored as microseconds since the Unix epoch, in both stores.
fn micros(at: Timestamp) -> i64 {
    at.timestamp_micros()
}

fn from_micros(value: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_micros(value).unwrap_or_default()
}

/// The last error of a failing endpoint, as its outage row and alerts show it.
/// What an alert says about the endpoint's last failure.
struct LastFailure {
    at: Timestamp,
    status: Option<u16>,
    error: String,
}

impl LastFailure {
    fn of(attempt: &Attempt) -> LastFailure {
        LastFailure {
            at: attempt.attempted_at,
            status: attempt.status_code,
            error: describe_failure(attempt),
        }
    }
}

fn describe_failure(attempt: &Attempt) -> String {
    match (&attempt.error, attempt.status_code) {
        (Some(error), _) => error.clone(),
        (None, Some(status)) => format!("status {status}"),
        (None, None) => "unknown failure".to_string(),
    }
}

/// Cuts a list fetched with one row too many into a page and its cursor.
pub fn page<T>(mut items: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Page<T> {
    let more = items.len() as i64 > limit;
    items.truncate(limit.max(0) as usize);
    let next_cursor = if more {
        items.last().map(cursor_of)
    } else {
        None
    };
    Page { items, next_cursor }
}
