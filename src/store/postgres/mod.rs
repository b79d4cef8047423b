//! The shared store: PostgreSQL, for several `herald serve` processes on one database.
//!
//! The schema and the queries mirror the SQLite store; what differs is that other
//! processes read and write the same rows at the same time. Claims therefore lock the
//! endpoint they are for (see `queue.rs`), leases are never released at start (another
//! process may be mid-attempt), and a process learns of events that others accepted by
//! LISTEN/NOTIFY (`listener.rs`). Nothing here waits on the network while a
//! transaction is open, and a lost database is an error to return, never a panic.

mod listener;
mod queue;
mod users;
mod writer;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::*;
use crate::catalog;
use crate::ids::new_id;
use crate::model::Ordering;
use writer::{BatchWrites, WriterQueue};

/// Connections for reads and the writes outside the batch, per process. The batch
/// writer and the listener have one connection each besides these.
const POOL_CONNECTIONS: u32 = 8;

/// How long a call waits for a connection before it answers "unavailable". It bounds
/// how long an ingest waits for its 503 while the database is away.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long `/healthz` waits for the database.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an alert taken to be passed on is hidden from the other processes' alert
/// tasks; a process that dies meanwhile leaves it to be sent after this.
const ALERT_LEASE: Duration = Duration::from_secs(300);

/// Writer tasks per process for events, each with its own connection. One statement
/// stores every event of a batch, so one writer is enough.
const EVENT_WRITERS: usize = 1;

/// Writer tasks per process for lanes' claims and records: two keep the database busy
/// while one of them waits for a round trip. They have queues of their own, so that a
/// lane never waits behind a batch of events, whose commit waits for the disk.
const LANE_WRITERS: usize = 2;

/// Every statement of a batch finds its rows through an index: the endpoint's
/// pending deliveries in `seq` order, or rows by key. Right after a burst the
/// statistics still describe a nearly empty table, and the planner would scan or
/// sort all pending rows (or all deliveries) for each claim or record; one burst of
/// 100,000 deliveries took minutes that way. Ruling out scans, sorts and hash or
/// merge joins for the batch leaves it the index paths, which stay right at any size.
/// A path ruled out still counts, at a huge cost, where nothing else can do; such a
/// cost must not make the planner compile the statement (JIT takes tens of
/// milliseconds), so JIT is off too. The scope is `LOCAL` for a transaction, `SESSION`
/// for a connection that only ever runs such statements.
#[rustfmt::skip]
macro_rules! plan_by_index {
    ($scope:literal) => {
        concat!(
            "SET ", $scope, " jit = off; ",
            "SET ", $scope, " enable_seqscan = off; ",
            "SET ", $scope, " enable_sort = off; ",
            "SET ", $scope, " enable_bitmapscan = off; ",
            "SET ", $scope, " enable_hashjoin = off; ",
            "SET ", $scope, " enable_mergejoin = off"
        )
    };
}

pub struct PostgresStore {
    pool: PgPool,
    /// The application name of this process's connections, unique to it.
    name: String,
    /// The scheduler's questions (which endpoints are due, and when the next one is),
    /// on one connection whose session plans by index as the writers' batches do: the
    /// planner must not trade a probe per endpoint for a read of a stalled endpoint's
    /// whole backlog, which it did, now and then, with statistics of a smaller table.
    scheduler: PgPool,
    /// Stores events.
    event_writer: WriterQueue,
    /// Claims and records attempts.
    lane_writer: WriterQueue,
    wakeups: watch::Receiver<()>,
    /// Stops the listener when the store is dropped.
    _listener: DropGuard,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`). The database must exist; the schema is made
    /// by [`Store::migrate`].
    pub async fn open(url: &str) -> StoreResult<PostgresStore> {
        let name = format!("herald {}", new_id("proc"));
        let options = PgConnectOptions::from_str(url)?.application_name(&name);
        let pool = pool(options.clone(), POOL_CONNECTIONS).await?;
        let writers =
            pool_options((EVENT_WRITERS + LANE_WRITERS) as u32).connect_lazy_with(options.clone());
        let target = PostgresWrites { pool: writers };
        let scheduler = pool_options(1)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(conn, plan_by_index!("SESSION")).await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        let event_writer = WriterQueue::start(target.clone(), EVENT_WRITERS);
        let lane_writer = WriterQueue::start(target, LANE_WRITERS);

        let (wake, wakeups) = watch::channel(());
        let cancel = CancellationToken::new();
        tokio::spawn(listener::run(
            pool.clone(),
            name.clone(),
            wake,
            cancel.clone(),
        ));
        Ok(PostgresStore {
            pool,
            name,
            scheduler,
            event_writer,
            lane_writer,
            wakeups,
            _listener: cancel.drop_guard(),
        })
    }
}

fn pool_options(connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
}

/// Connects once at open, so a wrong URL or password is an error at start, not a
/// stream of warnings later.
async fn pool(options: PgConnectOptions, connections: u32) -> StoreResult<PgPool> {
    Ok(pool_options(connections).connect_with(options).await?)
}

const ENDPOINT_COLUMNS: &str = "e.id, e.name, e.url, e.enabled, e.ordering, e.secret, \
    e.previous_secret, e.previous_secret_until, e.disabled_reason, e.created_at, \
    e.updated_at, e.last_triggered_at, \
    ARRAY(SELECT x.event_type FROM endpoint_events x WHERE x.endpoint_id = e.id \
      ORDER BY x.event_type) AS events";

const DELIVERY_COLUMNS: &str = "d.seq, d.id, d.event_id, d.endpoint_id, d.event_type, \
    d.status, d.test, d.created_at, d.first_attempt_at, d.next_attempt_at, \
    d.last_attempt_at, d.attempt_count, v.body";

fn opt_time(row: &PgRow, column: &str) -> Option<Timestamp> {
    row.get::<Option<i64>, _>(column).map(from_micros)
}

fn endpoint_from_row(row: &PgRow) -> Endpoint {
    Endpoint {
        id: row.get("id"),
        name: row.get("name"),
        url: row.get("url"),
        enabled: row.get("enabled"),
        events: row.get("events"),
        ordering: Ordering::parse(row.get("ordering")).unwrap_or_default(),
        secret: row.get("secret"),
        previous_secret: row.get("previous_secret"),
        previous_secret_until: opt_time(row, "previous_secret_until"),
        disabled_reason: row.get("disabled_reason"),
        created_at: from_micros(row.get("created_at")),
        updated_at: from_micros(row.get("updated_at")),
        last_triggered_at: opt_time(row, "last_triggered_at"),
    }
}

fn delivery_from_row(row: &PgRow) -> Delivery {
    Delivery {
        id: row.get("id"),
        event_id: row.get("event_id"),
        endpoint_id: row.get("endpoint_id"),
        event_type: row.get("event_type"),
        status: DeliveryStatus::parse(row.get("status")).unwrap_or(DeliveryStatus::Pending),
        test: row.get("test"),
        body: row.get("body"),
        created_at: from_micros(row.get("created_at")),
        first_attempt_at: opt_time(row, "first_attempt_at"),
        next_attempt_at: opt_time(row, "next_attempt_at"),
        last_attempt_at: opt_time(row, "last_attempt_at"),
        attempt_count: row.get("attempt_count"),
    }
}

const ALERT_COLUMNS: &str = "id, kind, endpoint_id, created_at, detail, sent_at, \
    send_attempts, last_send_error, next_send_at";

fn alert_from_row(row: &PgRow) -> Alert {
    Alert {
        id: row.get("id"),
        kind: row.get("kind"),
        endpoint_id: row.get("endpoint_id"),
        created_at: from_micros(row.get("created_at")),
        detail: row.get("detail"),
        sent_at: opt_time(row, "sent_at"),
        send_attempts: row.get("send_attempts"),
        last_send_error: row.get("last_send_error"),
        next_send_at: opt_time(row, "next_send_at"),
    }
}

fn attempt_from_row(row: &PgRow) -> AttemptRecord {
    let body: Option<Vec<u8>> = row.get("response_body");
    AttemptRecord {
        attempted_at: from_micros(row.get("attempted_at")),
        duration_ms: row.get("duration_ms"),
        status_code: row.get("status_code"),
        response_headers: row.get("response_headers"),
        response_body: body.map(|b| String::from_utf8_lossy(&b).into_owned()),
        response_truncated: row.get("response_truncated"),
        response_body_dropped: row.get("response_body_dropped"),
        error_kind: row.get("error_kind"),
        error: row.get("error"),
    }
}

/// Tells the other processes that deliveries may have become due. The notification
/// carries the sender's application name, so that its own listener passes it over: this
/// process wakes its engine itself.
async fn notify_all(executor: impl sqlx::PgExecutor<'_>) -> StoreResult<()> {
    sqlx::query("SELECT pg_notify($1, current_setting('application_name'))")
        .bind(listener::CHANNEL)
        .execute(executor)
        .await?;
    Ok(())
}

/// The group-committed writes, on each writer's connection.
#[derive(Clone)]
struct PostgresWrites {
    pool: PgPool,
}

#[async_trait]
impl BatchWrites for PostgresWrites {
    type Conn = PoolConnection<Postgres>;

    const BEGIN: &'static str = concat!("BEGIN; ", plan_by_index!("LOCAL"));
    /// A claim or an attempt record lost to a crash of the database server means a
    /// delivery is sent once more, which at-least-once delivery allows; so such a batch
    /// does not wait for its commit to reach the disk, as SQLite's writer does not.
    /// Only a batch that acknowledges an event does.
    const BEGIN_UNSYNCED: &'static str = concat!(
        "BEGIN; SET LOCAL synchronous_commit = off; ",
        plan_by_index!("LOCAL")
    );

    async fn acquire(&self) -> StoreResult<Self::Conn> {
        Ok(self.pool.acquire().await?)
    }

    async fn close(conn: Self::Conn) {
        let _ = conn.close().await;
    }

    async fn exec(conn: &mut Self::Conn, sql: &'static str) -> StoreResult<()> {
        sqlx::Executor::execute(&mut **conn, sql).await?;
        Ok(())
    }

    async fn insert_event(conn: &mut Self::Conn, event: &NewEvent) -> StoreResult<Accepted> {
        queue::insert_event_in(conn, event).await
    }

    async fn insert_events(
        conn: &mut Self::Conn,
        events: &[&NewEvent],
    ) -> StoreResult<Vec<StoreResult<Accepted>>> {
        queue::insert_events_in(conn, events).await
    }

    async fn claim(
        conn: &mut Self::Conn,
        request: &ClaimRequest,
        limit: usize,
    ) -> StoreResult<Vec<Claimed>> {
        queue::claim_in(conn, request, limit).await
    }

    async fn record(conn: &mut Self::Conn, outcomes: &[AttemptOutcome]) -> StoreResult<Vec<bool>> {
        queue::record_in(conn, outcomes).await
    }

    async fn after_new_deliveries(conn: &mut Self::Conn) -> StoreResult<()> {
        notify_all(&mut **conn).await
    }
}

async fn replace_subscriptions(
    conn: &mut sqlx::PgConnection,
    endpoint_id: &str,
    events: &[String],
) -> StoreResult<()> {
    sqlx::query("DELETE FROM endpoint_events WHERE endpoint_id = $1")
        .bind(endpoint_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO endpoint_events (event_type, endpoint_id) \
         SELECT DISTINCT unnest($1::text[]), $2 ON CONFLICT DO NOTHING",
    )
    .bind(events)
    .bind(endpoint_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> StoreResult<()> {
        // sqlx holds a PostgreSQL advisory lock while it migrates, so processes that
        // start together take turns; the later ones find nothing left to do.
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        let catalog = catalog::default_catalog();
        let column = |f: fn(&EventType) -> &String| -> Vec<String> {
            catalog.iter().map(|t| f(t).clone()).collect()
        };
        sqlx::query(
            "INSERT INTO event_types (name, trigger_name, action, description, builtin) \
             SELECT *, true FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(column(|t| &t.name))
        .bind(column(|t| &t.trigger))
        .bind(column(|t| &t.action))
        .bind(column(|t| &t.description))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(PING_TIMEOUT, ping).await {
            Ok(result) => result.map(drop).map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable("no answer to a ping".to_string())),
        }
    }

    async fn ensure_initial_admin(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<String>> {
        // Several processes may start together on an empty database; the advisory lock
        // lets exactly one of them create the first admin.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('herald.initial_admin'))")
            .execute(&mut *tx)
            .await?;
        let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&mut *tx)
            .await?;
        if users > 0 {
            return Ok(None);
        }
        let user_id = new_id("usr");
        sqlx::query(
            "INSERT INTO users (id, email, name, role, created_at, updated_at) \
             VALUES ($1, NULL, 'Initial admin', 'super_admin', $2, $2)",
        )
        .bind(&user_id)
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO tokens (id, user_id, name, token_hash, created_at) \
             VALUES ($1, $2, 'initial admin token', $3, $4)",
        )
        .bind(new_id("tok"))
        .bind(&user_id)
        .bind(token_hash)
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(user_id))
    }

    async fn principal_for_token(&self, token_hash: &str) -> StoreResult<Option<Principal>> {
        users::principal_for_token(&self.pool, token_hash).await
    }

    async fn create_user(&self, user: &NewUser) -> StoreResult<User> {
        users::create_user(&self.pool, user).await
    }

    async fn get_user(&self, id: &str) -> StoreResult<User> {
        users::get_user(&self.pool, id).await
    }

    async fn list_users(&self, cursor: Option<&str>, limit: i64) -> StoreResult<Page<User>> {
        users::list_users(&self.pool, cursor, limit).await
    }

    async fn sign_in_record(&self, email: &str) -> StoreResult<Option<(User, Option<String>)>> {
        users::sign_in_record(&self.pool, email).await
    }

    async fn update_user(
        &self,
        id: &str,
        changes: &UserChanges,
        now: Timestamp,
    ) -> StoreResult<User> {
        users::update_user(&self.pool, id, changes, now).await
    }

    async fn delete_user(&self, id: &str) -> StoreResult<()> {
        users::delete_user(&self.pool, id).await
    }

    async fn super_admin_emails(&self) -> StoreResult<Vec<String>> {
        users::super_admin_emails(&self.pool).await
    }

    async fn create_token(&self, token: &NewApiToken) -> StoreResult<ApiToken> {
        users::create_token(&self.pool, token).await
    }

    async fn list_tokens(
        &self,
        user_id: &str,
        cursor: Option<&str>,
        limit: i64,
    ) -> StoreResult<Page<ApiToken>> {
        users::list_tokens(&self.pool, user_id, cursor, limit).await
    }

    async fn delete_token(&self, id: &str, owner: Option<&str>) -> StoreResult<()> {
        users::delete_token(&self.pool, id, owner).await
    }

    async fn delete_sign_in_tokens(&self, user_id: &str, keep: Option<&str>) -> StoreResult<u64> {
        users::delete_sign_in_tokens(&self.pool, user_id, keep).await
    }

    async fn touch_token(&self, id: &str, now: Timestamp) -> StoreResult<()> {
        users::touch_token(&self.pool, id, now).await
    }

    async fn list_event_types(&self) -> StoreResult<Vec<EventType>> {
        let rows = sqlx::query(
            "SELECT name, trigger_name, action, description, builtin FROM event_types \
             ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| EventType {
                name: row.get("name"),
                trigger: row.get("trigger_name"),
                action: row.get("action"),
                description: row.get("description"),
                builtin: row.get("builtin"),
            })
            .collect())
    }

    async fn add_event_type(&self, t: &EventType) -> StoreResult<()> {
        let inserted = sqlx::query(
            "INSERT INTO event_types (name, trigger_name, action, description, builtin) \
             VALUES ($1, $2, $3, $4, false) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&t.name)
        .bind(&t.trigger)
        .bind(&t.action)
        .bind(&t.description)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(())
    }

    async fn create_endpoint(
        &self,
        fields: &EndpointFields,
        secret: &str,
        now: Timestamp,
    ) -> StoreResult<Endpoint> {
        let id = new_id("ep");
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO endpoints (id, name, url, enabled, ordering, secret, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&id)
        .bind(&fields.name)
        .bind(&fields.url)
        .bind(fields.enabled)
        .bind(fields.ordering.as_str())
        .bind(secret)
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
        replace_subscriptions(&mut tx, &id, &fields.events).await?;
        tx.commit().await?;
        self.get_endpoint(&id).await
    }

    async fn get_endpoint(&self, id: &str) -> StoreResult<Endpoint> {
        let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM endpoints e WHERE e.id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(endpoint_from_row)
            .ok_or(StoreError::NotFound)
    }

    async fn list_endpoints(
        &self,
        cursor: Option<&str>,
        limit: i64,
    ) -> StoreResult<Page<Endpoint>> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints e WHERE ($1::text IS NULL OR e.id < $1) \
             ORDER BY e.id DESC LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(cursor)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(endpoint_from_row).collect();
        Ok(page(items, limit, |e: &Endpoint| e.id.clone()))
    }

    async fn update_endpoint(
        &self,
        id: &str,
        fields: &EndpointFields,
        now: Timestamp,
    ) -> StoreResult<Endpoint> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE endpoints SET name = $1, url = $2, \
             disabled_reason = CASE WHEN $3 THEN NULL ELSE disabled_reason END, \
             enabled = $3, ordering = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(&fields.name)
        .bind(&fields.url)
        .bind(fields.enabled)
        .bind(fields.ordering.as_str())
        .bind(micros(now))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        replace_subscriptions(&mut tx, id, &fields.events).await?;
        if fields.enabled {
            // Pending deliveries of an endpoint enabled again are due in every process.
            notify_all(&mut *tx).await?;
        }
        tx.commit().await?;
        self.get_endpoint(id).await
    }

    async fn delete_endpoint(&self, id: &str) -> StoreResult<()> {
        let deleted = sqlx::query("DELETE FROM endpoints WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn rotate_secret(
        &self,
        id: &str,
        new_secret: &str,
        old_until: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Endpoint> {
        let updated = sqlx::query(
            "UPDATE endpoints SET previous_secret = secret, previous_secret_until = $1, \
             secret = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(micros(old_until))
        .bind(new_secret)
        .bind(micros(now))
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_endpoint(id).await
    }

    async fn disable_endpoint(&self, id: &str, reason: &str, now: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "UPDATE endpoints SET enabled = false, disabled_reason = $1, updated_at = $2 \
             WHERE id = $3",
        )
        .bind(queue::without_nul(reason))
        .bind(micros(now))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_outages(&self) -> StoreResult<Vec<Outage>> {
        let rows = sqlx::query(
            "SELECT endpoint_id, failing_since, alerted_at, last_error FROM endpoint_outages",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| Outage {
                endpoint_id: row.get("endpoint_id"),
                failing_since: from_micros(row.get("failing_since")),
                alerted_at: opt_time(row, "alerted_at"),
                last_error: row.get("last_error"),
            })
            .collect())
    }

    async fn insert_event(&self, event: &NewEvent) -> StoreResult<Accepted> {
        self.event_writer.insert_event(event.clone()).await
    }

    async fn insert_test_delivery(
        &self,
        event: &NewEvent,
        endpoint_id: &str,
        lease_until: Timestamp,
    ) -> StoreResult<Claimed> {
        let endpoint = self.get_endpoint(endpoint_id).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO events (id, event_type, object_key, body, created_at, \
             idempotency_key, request_hash, delivery_count) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6, 1)",
        )
        .bind(&event.id)
        .bind(&event.event_type)
        .bind(&event.object_key)
        .bind(&event.body)
        .bind(micros(event.accepted_at))
        .bind(&event.request_hash)
        .execute(&mut *tx)
        .await?;
        let sql = format!(
            "WITH d AS (INSERT INTO deliveries (id, event_id, endpoint_id, event_type, \
               object_key, status, test, created_at, next_attempt_at, lease_until) \
               VALUES ($1, $2, $3, $4, $5, 'pending', true, $6, $6, $7) RETURNING *) \
             SELECT {DELIVERY_COLUMNS} FROM d JOIN events v ON v.id = d.event_id"
        );
        let row = sqlx::query(&sql)
            .bind(new_id("dlv"))
            .bind(&event.id)
            .bind(endpoint_id)
            .bind(&event.event_type)
            .bind(&event.object_key)
            .bind(micros(event.accepted_at))
            .bind(micros(lease_until))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Claimed {
            seq: row.get("seq"),
            delivery: delivery_from_row(&row),
            endpoint,
        })
    }

    async fn list_deliveries(&self, f: &DeliveryFilter) -> StoreResult<Page<Delivery>> {
        let cursor: Option<i64> = f.cursor.as_deref().and_then(|c| c.parse().ok());
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events v ON v.id = d.event_id \
             WHERE ($1::text IS NULL OR d.endpoint_id = $1) \
             AND ($2::text IS NULL OR d.status = $2) \
             AND ($3::text IS NULL OR d.event_type = $3) \
             AND ($4::bigint IS NULL OR d.seq < $4) \
             ORDER BY d.seq DESC LIMIT $5"
        );
        let rows = sqlx::query(&sql)
            .bind(&f.endpoint_id)
            .bind(f.status.map(DeliveryStatus::as_str))
            .bind(&f.event_type)
            .bind(cursor)
            .bind(f.limit + 1)
            .fetch_all(&self.pool)
            .await?;
        let items: Vec<(i64, Delivery)> = rows
            .iter()
            .map(|row| (row.get("seq"), delivery_from_row(row)))
            .collect();
        let page = page(items, f.limit, |(seq, _)| seq.to_string());
        Ok(Page {
            items: page.items.into_iter().map(|(_, d)| d).collect(),
            next_cursor: page.next_cursor,
        })
    }

    async fn get_delivery(&self, id: &str) -> StoreResult<(Delivery, Vec<AttemptRecord>)> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events v ON v.id = d.event_id \
             WHERE d.id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound);
        };
        let attempts = sqlx::query(
            "SELECT attempted_at, duration_ms, status_code, response_headers, response_body, \
             response_truncated, response_body_dropped, error_kind, error FROM attempts \
             WHERE delivery_seq = $1 ORDER BY id",
        )
        .bind(row.get::<i64, _>("seq"))
        .fetch_all(&self.pool)
        .await?;
        Ok((
            delivery_from_row(&row),
            attempts.iter().map(attempt_from_row).collect(),
        ))
    }

    async fn resend_delivery(&self, id: &str, now: Timestamp) -> StoreResult<Delivery> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, \
             first_attempt_at = NULL WHERE id = $2 AND (status != 'pending' \
             OR lease_until IS NULL OR lease_until <= $1)",
        )
        .bind(micros(now))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated > 0 {
            notify_all(&mut *tx).await?;
        }
        tx.commit().await?;
        let (delivery, _) = self.get_delivery(id).await?;
        if updated == 0 {
            return Err(StoreError::InFlight);
        }
        Ok(delivery)
    }

    async fn resend_failed_since(
        &self,
        endpoint_id: &str,
        since: Timestamp,
        now: Timestamp,
    ) -> StoreResult<i64> {
        self.get_endpoint(endpoint_id).await?;
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, \
             first_attempt_at = NULL \
             WHERE endpoint_id = $2 AND status = 'failed' AND created_at >= $3",
        )
        .bind(micros(now))
        .bind(endpoint_id)
        .bind(micros(since))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated > 0 {
            notify_all(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(updated as i64)
    }

    /// Leaves out the endpoints that a lane anywhere is serving (a live lease), as the
    /// claim would refuse them; otherwise an idle process would start lanes for them
    /// only to see each claim come back empty.
    async fn due_endpoints(
        &self,
        now: Timestamp,
        busy: &[String],
        limit: i64,
    ) -> StoreResult<Vec<String>> {
        // One index probe per endpoint: the cost does not grow with the deliveries
        // waiting. A lateral subquery with a limit is run once per endpoint, with the
        // endpoint's id in hand; as a plain EXISTS the planner may instead read every
        // due delivery of all endpoints and match them up, which a stalled endpoint's
        // backlog makes slow.
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT e.id FROM endpoints e CROSS JOIN LATERAL ( \
               SELECT 1 FROM deliveries d WHERE d.endpoint_id = e.id \
               AND d.status = 'pending' AND d.next_attempt_at <= $1 \
               AND (d.lease_until IS NULL OR d.lease_until <= $1) LIMIT 1) due \
             WHERE e.enabled AND e.id <> ALL($2::text[]) \
             AND NOT EXISTS (SELECT 1 FROM deliveries l WHERE l.endpoint_id = e.id \
               AND l.status = 'pending' AND NOT l.test AND l.lease_until > $1) \
             LIMIT $3",
        )
        .bind(micros(now))
        .bind(busy)
        .bind(limit)
        .fetch_all(&self.scheduler)
        .await?;
        Ok(rows)
    }

    async fn next_wake(&self, now: Timestamp) -> StoreResult<Option<Timestamp>> {
        // Per endpoint, the first entry of its pending deliveries by due time: ordered
        // and limited, so that the one index in that order is the plan, not a scan of
        // the endpoint's whole backlog.
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT least( \
               (SELECT min(x.t) FROM endpoints e CROSS JOIN LATERAL ( \
                 SELECT d.next_attempt_at AS t FROM deliveries d \
                 WHERE d.endpoint_id = e.id AND d.status = 'pending' \
                 AND d.next_attempt_at > $1 ORDER BY d.next_attempt_at LIMIT 1) x), \
               (SELECT min(lease_until) FROM deliveries \
                 WHERE status = 'pending' AND lease_until IS NOT NULL AND lease_until > $1))",
        )
        .bind(micros(now))
        .fetch_one(&self.scheduler)
        .await?;
        Ok(next.map(from_micros))
    }

    async fn claim_next(&self, request: ClaimRequest) -> StoreResult<Option<Claimed>> {
        Ok(self.lane_writer.claim(request, 1).await?.pop())
    }

    /// Several deliveries under one lease: while any of them is unsettled the endpoint
    /// has a live lease, so no other process starts a lane for it.
    async fn claim_many(&self, request: ClaimRequest, limit: usize) -> StoreResult<Vec<Claimed>> {
        self.lane_writer.claim(request, limit).await
    }

    /// One job for the writer, however many outcomes: see `queue::record_in` for what
    /// it costs.
    async fn record_many(
        &self,
        outcomes: Vec<AttemptOutcome>,
        then_claim: Option<(ClaimRequest, usize)>,
    ) -> StoreResult<RecordedMany> {
        self.lane_writer.record(outcomes, then_claim).await
    }

    async fn expire_overdue(&self, cutoff: Timestamp, now: Timestamp) -> StoreResult<u64> {
        queue::expire_overdue(&self.pool, cutoff, now).await
    }

    async fn prune(&self, before: Timestamp, batch: i64) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT v.id FROM events v WHERE v.created_at < $1 AND NOT EXISTS \
             (SELECT 1 FROM deliveries d WHERE d.event_id = v.id AND d.status = 'pending') \
             ORDER BY v.created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(micros(before))
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        for sql in [
            "DELETE FROM deliveries WHERE event_id = ANY($1)",
            "DELETE FROM events WHERE id = ANY($1)",
        ] {
            sqlx::query(sql).bind(&events).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM alerts WHERE created_at < $1 AND sent_at IS NOT NULL")
            .bind(micros(before))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(events.len() as u64)
    }

    /// None: other processes share this database, and any lease may be theirs, held
    /// for an attempt in flight right now. Leases of a process that died run out by
    /// themselves (the attempt timeout plus a margin) and are then claimed again.
    async fn release_orphaned_leases(&self) -> StoreResult<u64> {
        Ok(0)
    }

    async fn release_claims(&self, seqs: &[i64]) -> StoreResult<()> {
        sqlx::query(
            "UPDATE deliveries SET lease_until = NULL WHERE seq = ANY($1) AND status = 'pending'",
        )
        .bind(seqs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn wakeups(&self) -> Option<watch::Receiver<()>> {
        Some(self.wakeups.clone())
    }

    /// Each process names its connections `herald <its own id>`; another name of that
    /// form among the database's sessions is another process (or a `herald migrate`).
    async fn other_processes(&self) -> StoreResult<bool> {
        let names: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'herald %' \
             AND application_name <> $1",
        )
        .bind(&self.name)
        .fetch_one(&self.pool)
        .await?;
        Ok(names > 0)
    }

    async fn count_pending(&self, endpoint_id: &str) -> StoreResult<i64> {
        let count = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE endpoint_id = $1 AND status = 'pending'",
        )
        .bind(endpoint_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(count)
    }

    async fn create_session(&self, session: &ConsoleSession, now: Timestamp) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, user_id, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&session.id_hash)
        .bind(&session.user_id)
        .bind(&session.csrf_token)
        .bind(micros(session.created_at))
        .bind(micros(session.expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str, now: Timestamp) -> StoreResult<Option<ConsoleSession>> {
        let row = sqlx::query(
            "SELECT s.id_hash, s.user_id, u.name AS user_name, s.csrf_token, s.created_at, \
             s.expires_at FROM console_sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(micros(now))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| ConsoleSession {
            id_hash: row.get("id_hash"),
            user_id: row.get("user_id"),
            user_name: row.get("user_name"),
            csrf_token: row.get("csrf_token"),
            created_at: from_micros(row.get("created_at")),
            expires_at: from_micros(row.get("expires_at")),
        }))
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_alerts(&self, cursor: Option<&str>, limit: i64) -> StoreResult<Page<Alert>> {
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE ($1::text IS NULL OR id < $1) \
             ORDER BY id DESC LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(cursor)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(alert_from_row).collect();
        Ok(page(items, limit, |a: &Alert| a.id.clone()))
    }

    /// Takes the alerts it returns: moving their `next_send_at` ahead by a lease keeps
    /// the other processes' alert tasks from passing the same alert on at the same time.
    async fn unsent_alerts(&self, now: Timestamp, limit: i64) -> StoreResult<Vec<Alert>> {
        // An alert waits for the older unsent alerts of its endpoint, so that a
        // recovery is never announced before the outage it ends.
        let sql = format!(
            "UPDATE alerts SET next_send_at = $2 WHERE id IN ( \
               SELECT a.id FROM alerts a WHERE a.sent_at IS NULL \
               AND (a.next_send_at IS NULL OR a.next_send_at <= $1) \
               AND NOT EXISTS (SELECT 1 FROM alerts o WHERE o.endpoint_id = a.endpoint_id \
                 AND o.sent_at IS NULL AND o.id < a.id) \
               ORDER BY a.id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {ALERT_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(micros(now))
            .bind(micros(now + crate::engine::chrono_duration(ALERT_LEASE)))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut alerts: Vec<Alert> = rows.iter().map(alert_from_row).collect();
        alerts.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(alerts)
    }

    async fn mark_alert_sent(&self, id: &str, at: Timestamp) -> StoreResult<()> {
        sqlx::query("UPDATE alerts SET sent_at = $1, next_send_at = NULL WHERE id = $2")
            .bind(micros(at))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn postpone_alert(&self, id: &str, error: &str, retry_at: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "UPDATE alerts SET send_attempts = send_attempts + 1, last_send_error = $1, \
             next_send_at = $2 WHERE id = $3",
        )
        .bind(queue::without_nul(error))
        .bind(micros(retry_at))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
