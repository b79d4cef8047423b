//! The embedded store: SQLite in WAL mode. Every commit that acknowledges something is
//! fully synced, so it survives a power cut; claims and attempt records reach the disk
//! with the next synced commit (see `writer`). One connection writes and several read;
//! SQLite allows one writer at a time, and a single writing connection turns lock waits
//! into an orderly queue.

use std::fs::File;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};

mod hot;
mod users;
mod writer;

use super::*;
use crate::catalog;
use crate::ids::new_id;
use crate::model::Ordering;

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    writer_queue: writer::WriterQueue,
    /// Taken by every write on `writer`; the writer thread takes it for each batch.
    turn: writer::WriteTurn,
    /// Held for as long as the store is open: one process owns an SQLite data directory.
    _lock: File,
}

fn opt_time(row: &SqliteRow, column: &str) -> Option<Timestamp> {
    row.get::<Option<i64>, _>(column).map(from_micros)
}

impl SqliteStore {
    /// Opens (or creates) the database `herald.db` in `data_dir`, after taking the
    /// directory's lock file; a second process using the directory would corrupt the
    /// queue's leases, so it is refused.
    pub async fn open(data_dir: &Path) -> StoreResult<SqliteStore> {
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.read_only(true))
            .await?;
        let turn = writer::WriteTurn::default();
        let writer_queue = writer::WriterQueue::start(&path, turn.clone())?;
        Ok(SqliteStore {
            writer,
            reader,
            writer_queue,
            turn,
            _lock: lock,
        })
    }
}

/// The database file's name inside the data directory.
pub const DATABASE_FILE: &str = "herald.db";

fn lock_data_dir(dir: &Path) -> StoreResult<File> {
    let path = dir.join("herald.lock");
    let file = File::create(&path).map_err(|err| {
        StoreError::Unavailable(format!("cannot create {}: {err}", path.display()))
    })?;
    file.try_lock().map_err(|_| {
        StoreError::Unavailable(format!(
            "another herald process is using the data directory {}",
            dir.display()
        ))
    })?;
    Ok(file)
}

const ENDPOINT_COLUMNS: &str = "e.id, e.name, e.url, e.enabled, e.ordering, e.secret, \
    e.previous_secret, e.previous_secret_until, e.disabled_reason, e.created_at, \
    e.updated_at, e.last_triggered_at, \
    (SELECT group_concat(event_type, ' ') FROM endpoint_events x WHERE x.endpoint_id = e.id) \
    AS events";

const DELIVERY_COLUMNS: &str = "d.seq, d.id, d.event_id, d.endpoint_id, d.event_type, \
    d.status, d.test, d.created_at, d.first_attempt_at, d.next_attempt_at, \
    d.last_attempt_at, d.attempt_count, v.body";

/// A column read by name, the same way from a row of either driver: the pool's, or the
/// writer thread's. A column that is missing or of another type is a bug in the query
/// beside it, and panics, as the pool's own `Row::get` does.
trait Columns {
    fn text(&self, name: &str) -> String;
    fn opt_text(&self, name: &str) -> Option<String>;
    fn int(&self, name: &str) -> i64;
    fn opt_int(&self, name: &str) -> Option<i64>;

    fn flag(&self, name: &str) -> bool {
        self.int(name) != 0
    }
    fn time(&self, name: &str) -> Timestamp {
        from_micros(self.int(name))
    }
    fn opt_time(&self, name: &str) -> Option<Timestamp> {
        self.opt_int(name).map(from_micros)
    }
}

impl Columns for SqliteRow {
    fn text(&self, name: &str) -> String {
        self.get(name)
    }
    fn opt_text(&self, name: &str) -> Option<String> {
        self.get(name)
    }
    fn int(&self, name: &str) -> i64 {
        self.get(name)
    }
    fn opt_int(&self, name: &str) -> Option<i64> {
        self.get(name)
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, name: &str) -> String {
        column(self, name)
    }
    fn opt_text(&self, name: &str) -> Option<String> {
        column(self, name)
    }
    fn int(&self, name: &str) -> i64 {
        column(self, name)
    }
    fn opt_int(&self, name: &str) -> Option<i64> {
        column(self, name)
    }
}

fn column<T: rusqlite::types::FromSql>(row: &rusqlite::Row<'_>, name: &str) -> T {
    row.get(name)
        .unwrap_or_else(|err| panic!("column {name}: {err}"))
}

fn endpoint_from_row(row: &impl Columns) -> Endpoint {
    let mut events: Vec<String> = row
        .opt_text("events")
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    events.sort();
    Endpoint {
        id: row.text("id"),
        name: row.text("name"),
        url: row.text("url"),
        enabled: row.flag("enabled"),
        events,
        ordering: Ordering::parse(&row.text("ordering")).unwrap_or_default(),
        secret: row.text("secret"),
        previous_secret: row.opt_text("previous_secret"),
        previous_secret_until: row.opt_time("previous_secret_until"),
        disabled_reason: row.opt_text("disabled_reason"),
        created_at: row.time("created_at"),
        updated_at: row.time("updated_at"),
        last_triggered_at: row.opt_time("last_triggered_at"),
    }
}

fn delivery_from_row(row: &impl Columns) -> Delivery {
    Delivery {
        id: row.text("id"),
        event_id: row.text("event_id"),
        endpoint_id: row.text("endpoint_id"),
        event_type: row.text("event_type"),
        status: DeliveryStatus::parse(&row.text("status")).unwrap_or(DeliveryStatus::Pending),
        test: row.flag("test"),
        body: row.text("body"),
        created_at: row.time("created_at"),
        first_attempt_at: row.opt_time("first_attempt_at"),
        next_attempt_at: row.opt_time("next_attempt_at"),
        last_attempt_at: row.opt_time("last_attempt_at"),
        attempt_count: row.int("attempt_count"),
    }
}

const ALERT_COLUMNS: &str = "id, kind, endpoint_id, created_at, detail, sent_at, \
    send_attempts, last_send_error, next_send_at";

fn alert_from_row(row: &SqliteRow) -> Alert {
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

fn attempt_from_row(row: &SqliteRow) -> AttemptRecord {
    AttemptRecord {
        attempted_at: from_micros(row.get("attempted_at")),
        duration_ms: row.get("duration_ms"),
        status_code: row.get("status_code"),
        response_headers: row.get("response_headers"),
        response_body: row.get("response_body"),
        response_truncated: row.get("response_truncated"),
        response_body_dropped: row.get("response_body_dropped"),
        error_kind: row.get("error_kind"),
        error: row.get("error"),
    }
}

async fn replace_subscriptions(
    conn: &mut SqliteConnection,
    endpoint_id: &str,
    events: &[String],
) -> StoreResult<()> {
    sqlx::query("DELETE FROM endpoint_events WHERE endpoint_id = ?")
        .bind(endpoint_id)
        .execute(&mut *conn)
        .await?;
    for event_type in events {
        sqlx::query(
            "INSERT OR IGNORE INTO endpoint_events (event_type, endpoint_id) VALUES (?, ?)",
        )
        .bind(event_type)
        .bind(endpoint_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        let _turn = self.turn.lock().await;
        sqlx::migrate!("migrations/sqlite")
            .run(&self.writer)
            .await?;
        for t in catalog::default_catalog() {
            sqlx::query(
                "INSERT OR IGNORE INTO event_types (name, trigger_name, action, description, \
                 builtin) VALUES (?, ?, ?, ?, 1)",
            )
            .bind(&t.name)
            .bind(&t.trigger)
            .bind(&t.action)
            .bind(&t.description)
            .execute(&self.writer)
            .await?;
        }
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn ensure_initial_admin(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<String>> {
        let _turn = self.turn.lock().await;
        let mut tx = self.writer.begin().await?;
        let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&mut *tx)
            .await?;
        if users > 0 {
            return Ok(None);
        }
        let user_id = new_id("usr");
        sqlx::query(
            "INSERT INTO users (id, email, name, role, created_at, updated_at) \
             VALUES (?, NULL, 'Initial admin', 'super_admin', ?, ?)",
        )
        .bind(&user_id)
        .bind(micros(now))
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO tokens (id, user_id, name, token_hash, created_at) \
             VALUES (?, ?, 'initial admin token', ?, ?)",
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
        users::principal_for_token(&self.reader, token_hash).await
    }

    async fn create_user(&self, user: &NewUser) -> StoreResult<User> {
        let _turn = self.turn.lock().await;
        users::create_user(&self.writer, user).await
    }

    async fn get_user(&self, id: &str) -> StoreResult<User> {
        users::get_user(&self.reader, id).await
    }

    async fn list_users(&self, cursor: Option<&str>, limit: i64) -> StoreResult<Page<User>> {
        users::list_users(&self.reader, cursor, limit).await
    }

    async fn sign_in_record(&self, email: &str) -> StoreResult<Option<(User, Option<String>)>> {
        users::sign_in_record(&self.reader, email).await
    }

    async fn update_user(
        &self,
        id: &str,
        changes: &UserChanges,
        now: Timestamp,
    ) -> StoreResult<User> {
        let _turn = self.turn.lock().await;
        users::update_user(&self.writer, id, changes, now).await
    }

    async fn delete_user(&self, id: &str) -> StoreResult<()> {
        let _turn = self.turn.lock().await;
        users::delete_user(&self.writer, id).await
    }

    async fn super_admin_emails(&self) -> StoreResult<Vec<String>> {
        users::super_admin_emails(&self.reader).await
    }

    async fn create_token(&self, token: &NewApiToken) -> StoreResult<ApiToken> {
        let _turn = self.turn.lock().await;
        users::create_token(&self.writer, token).await
    }

    async fn list_tokens(
        &self,
        user_id: &str,
        cursor: Option<&str>,
        limit: i64,
    ) -> StoreResult<Page<ApiToken>> {
        users::list_tokens(&self.reader, user_id, cursor, limit).await
    }

    async fn delete_token(&self, id: &str, owner: Option<&str>) -> StoreResult<()> {
        let _turn = self.turn.lock().await;
        users::delete_token(&self.writer, id, owner).await
    }

    async fn delete_sign_in_tokens(&self, user_id: &str, keep: Option<&str>) -> StoreResult<u64> {
        let _turn = self.turn.lock().await;
        users::delete_sign_in_tokens(&self.writer, user_id, keep).await
    }

    async fn touch_token(&self, id: &str, now: Timestamp) -> StoreResult<()> {
        let _turn = self.turn.lock().await;
        users::touch_token(&self.writer, id, now).await
    }

    async fn list_event_types(&self) -> StoreResult<Vec<EventType>> {
        let rows = sqlx::query(
            "SELECT name, trigger_name, action, description, builtin FROM event_types ORDER BY name",
        )
        .fetch_all(&self.reader)
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
        let _turn = self.turn.lock().await;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO event_types (name, trigger_name, action, description, builtin) \
             VALUES (?, ?, ?, ?, 0)",
        )
        .bind(&t.name)
        .bind(&t.trigger)
        .bind(&t.action)
        .bind(&t.description)
        .execute(&self.writer)
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
        let _turn = self.turn.lock().await;
        let id = new_id("ep");
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO endpoints (id, name, url, enabled, ordering, secret, created_at, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&fields.name)
        .bind(&fields.url)
        .bind(fields.enabled)
        .bind(fields.ordering.as_str())
        .bind(secret)
        .bind(micros(now))
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
        replace_subscriptions(&mut tx, &id, &fields.events).await?;
        tx.commit().await?;
        self.get_endpoint(&id).await
    }

    async fn get_endpoint(&self, id: &str) -> StoreResult<Endpoint> {
        let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM endpoints e WHERE e.id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.writer)
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
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints e WHERE (? IS NULL OR e.id < ?) \
             ORDER BY e.id DESC LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(cursor)
            .bind(cursor)
            .bind(limit + 1)
            .fetch_all(&self.reader)
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
        let _turn = self.turn.lock().await;
        let mut tx = self.writer.begin().await?;
        let updated = sqlx::query(
            "UPDATE endpoints SET name = ?, url = ?, \
             disabled_reason = CASE WHEN ? THEN NULL ELSE disabled_reason END, \
             enabled = ?, ordering = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&fields.name)
        .bind(&fields.url)
        .bind(fields.enabled)
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
        tx.commit().await?;
        self.get_endpoint(id).await
    }

    async fn delete_endpoint(&self, id: &str) -> StoreResult<()> {
        let _turn = self.turn.lock().await;
        let deleted = sqlx::query("DELETE FROM endpoints WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
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
        let _turn = self.turn.lock().await;
        let updated = sqlx::query(
            "UPDATE endpoints SET previous_secret = secret, previous_secret_until = ?, \
             secret = ?, updated_at = ? WHERE id = ?",
        )
        .bind(micros(old_until))
        .bind(new_secret)
        .bind(micros(now))
        .bind(id)
        .execute(&self.writer)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_endpoint(id).await
    }

    async fn disable_endpoint(&self, id: &str, reason: &str, now: Timestamp) -> StoreResult<()> {
        let _turn = self.turn.lock().await;
        sqlx::query(
            "UPDATE endpoints SET enabled = 0, disabled_reason = ?, updated_at = ? WHERE id = ?",
        )
        .bind(reason)
        .bind(micros(now))
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn list_outages(&self) -> StoreResult<Vec<Outage>> {
        let rows = sqlx::query(
            "SELECT endpoint_id, failing_since, alerted_at, last_error FROM endpoint_outages",
        )
        .fetch_all(&self.reader)
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
        self.writer_queue.insert_event(event.clone()).await
    }

    async fn insert_test_delivery(
        &self,
        event: &NewEvent,
        endpoint_id: &str,
        lease_until: Timestamp,
    ) -> StoreResult<Claimed> {
        self.writer_queue
            .insert_test_delivery(event.clone(), endpoint_id, lease_until)
            .await
    }

    async fn list_deliveries(&self, f: &DeliveryFilter) -> StoreResult<Page<Delivery>> {
        let cursor: Option<i64> = f.cursor.as_deref().and_then(|c| c.parse().ok());
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events v ON v.id = d.event_id \
             WHERE (?1 IS NULL OR d.endpoint_id = ?1) AND (?2 IS NULL OR d.status = ?2) \
             AND (?3 IS NULL OR d.event_type = ?3) AND (?4 IS NULL OR d.seq < ?4) \
             ORDER BY d.seq DESC LIMIT ?5"
        );
        let rows = sqlx::query(&sql)
            .bind(&f.endpoint_id)
            .bind(f.status.map(DeliveryStatus::as_str))
            .bind(&f.event_type)
            .bind(cursor)
            .bind(f.limit + 1)
            .fetch_all(&self.reader)
            .await?;
        let mut items: Vec<(i64, Delivery)> = rows
            .iter()
            .map(|row| (row.get("seq"), delivery_from_row(row)))
            .collect();
        let more = items.len() as i64 > f.limit;
        items.truncate(f.limit.max(0) as usize);
        let next_cursor = if more {
            items.last().map(|(seq, _)| seq.to_string())
        } else {
            None
        };
        Ok(Page {
            items: items.into_iter().map(|(_, d)| d).collect(),
            next_cursor,
        })
    }

    async fn get_delivery(&self, id: &str) -> StoreResult<(Delivery, Vec<AttemptRecord>)> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events v ON v.id = d.event_id \
             WHERE d.id = ?"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound);
        };
        let attempts = sqlx::query(
            "SELECT attempted_at, duration_ms, status_code, response_headers, response_body, \
             response_truncated, response_body_dropped, error_kind, error FROM attempts WHERE delivery_seq = ? ORDER BY id",
        )
        .bind(row.get::<i64, _>("seq"))
        .fetch_all(&self.reader)
        .await?;
        Ok((
            delivery_from_row(&row),
            attempts.iter().map(attempt_from_row).collect(),
        ))
    }

    async fn resend_delivery(&self, id: &str, now: Timestamp) -> StoreResult<Delivery> {
        let _turn = self.turn.lock().await;
        let updated = sqlx::query(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, \
             first_attempt_at = NULL WHERE id = ? AND (status != 'pending' OR lease_until IS NULL \
             OR lease_until <= ?)",
        )
        .bind(micros(now))
        .bind(id)
        .bind(micros(now))
        .execute(&self.writer)
        .await?
        .rows_affected();
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
        let _turn = self.turn.lock().await;
        self.get_endpoint(endpoint_id).await?;
        let updated = sqlx::query(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, first_attempt_at = NULL \
             WHERE endpoint_id = ? AND status = 'failed' AND created_at >= ?",
        )
        .bind(micros(now))
        .bind(endpoint_id)
        .bind(micros(since))
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(updated as i64)
    }

    async fn due_endpoints(
        &self,
        now: Timestamp,
        busy: &[String],
        limit: i64,
    ) -> StoreResult<Vec<String>> {
        let busy_json = serde_json::to_string(busy).expect("strings serialize");
        // One index probe per endpoint: the cost does not grow with the deliveries
        // waiting. Read from a snapshot, so the scheduler never waits for the writer.
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT e.id FROM endpoints e WHERE e.enabled \
             AND e.id NOT IN (SELECT value FROM json_each(?2)) \
             AND EXISTS (SELECT 1 FROM deliveries d INDEXED BY deliveries_pending_due_by_endpoint \
               WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= ?1 \
               AND (d.lease_until IS NULL OR d.lease_until <= ?1)) \
             LIMIT ?3",
        )
        .bind(micros(now))
        .bind(busy_json)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows)
    }

    async fn next_wake(&self, now: Timestamp) -> StoreResult<Option<Timestamp>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(t) FROM ( \
               SELECT (SELECT min(d.next_attempt_at) FROM deliveries d \
                 INDEXED BY deliveries_pending_due_by_endpoint \
                 WHERE d.endpoint_id = e.id AND d.status = 'pending' \
                 AND d.next_attempt_at > ?1) AS t FROM endpoints e \
               UNION ALL \
               SELECT min(lease_until) AS t FROM deliveries \
                 WHERE status = 'pending' AND lease_until IS NOT NULL AND lease_until > ?1)",
        )
        .bind(micros(now))
        .fetch_one(&self.reader)
        .await?;
        Ok(next.map(from_micros))
    }

    async fn claim_next(&self, request: ClaimRequest) -> StoreResult<Option<Claimed>> {
        Ok(self.writer_queue.claim(request, 1).await?.pop())
    }

    async fn claim_many(&self, request: ClaimRequest, limit: usize) -> StoreResult<Vec<Claimed>> {
        self.writer_queue.claim(request, limit).await
    }

    async fn release_claims(&self, seqs: &[i64]) -> StoreResult<()> {
        let _turn = self.turn.lock().await;
        let list = serde_json::to_string(seqs).expect("numbers serialize");
        sqlx::query(
            "UPDATE deliveries SET lease_until = NULL \
             WHERE seq IN (SELECT value FROM json_each(?)) AND status = 'pending'",
        )
        .bind(list)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn record_many(
        &self,
        outcomes: Vec<AttemptOutcome>,
        then_claim: Option<(ClaimRequest, usize)>,
    ) -> StoreResult<RecordedMany> {
        self.writer_queue.record(outcomes, then_claim).await
    }

    async fn expire_overdue(&self, cutoff: Timestamp, now: Timestamp) -> StoreResult<u64> {
        self.writer_queue.expire_overdue(cutoff, now).await
    }

    async fn prune(&self, before: Timestamp, batch: i64) -> StoreResult<u64> {
        let _turn = self.turn.lock().await;
        let mut tx = self.writer.begin().await?;
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT v.id FROM events v WHERE v.created_at < ? AND NOT EXISTS \
             (SELECT 1 FROM deliveries d WHERE d.event_id = v.id AND d.status = 'pending') \
             ORDER BY v.created_at LIMIT ?",
        )
        .bind(micros(before))
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let ids = serde_json::to_string(&events).expect("strings serialize");
        for sql in [
            "DELETE FROM deliveries WHERE event_id IN (SELECT value FROM json_each(?))",
            "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?))",
        ] {
            sqlx::query(sql).bind(&ids).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM alerts WHERE created_at < ? AND sent_at IS NOT NULL")
            .bind(micros(before))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(events.len() as u64)
    }

    /// Every lease: the data directory's lock file proves that no other process is
    /// using this database, so a lease can only be left by a process that died.
    async fn release_orphaned_leases(&self) -> StoreResult<u64> {
        let _turn = self.turn.lock().await;
        let released =
            sqlx::query("UPDATE deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL")
                .execute(&self.writer)
                .await?
                .rows_affected();
        Ok(released)
    }

    async fn count_pending(&self, endpoint_id: &str) -> StoreResult<i64> {
        let count = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE endpoint_id = ? AND status = 'pending'",
        )
        .bind(endpoint_id)
        .fetch_one(&self.reader)
        .await?;
        Ok(count)
    }

    async fn create_session(&self, session: &ConsoleSession, now: Timestamp) -> StoreResult<()> {
        let _turn = self.turn.lock().await;
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= ?")
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, user_id, csrf_token, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?)",
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
             WHERE s.id_hash = ? AND s.expires_at > ?",
        )
        .bind(id_hash)
        .bind(micros(now))
        .fetch_optional(&self.reader)
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
        let _turn = self.turn.lock().await;
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn list_alerts(&self, cursor: Option<&str>, limit: i64) -> StoreResult<Page<Alert>> {
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE (?1 IS NULL OR id < ?1) \
             ORDER BY id DESC LIMIT ?2"
        );
        let rows = sqlx::query(&sql)
            .bind(cursor)
            .bind(limit + 1)
            .fetch_all(&self.reader)
            .await?;
        let items = rows.iter().map(alert_from_row).collect();
        Ok(page(items, limit, |a: &Alert| a.id.clone()))
    }

    async fn unsent_alerts(&self, now: Timestamp, limit: i64) -> StoreResult<Vec<Alert>> {
        let _turn = self.turn.lock().await;
        // An alert waits for the older unsent alerts of its endpoint, so that a
        // recovery is never announced before the outage it ends.
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a WHERE sent_at IS NULL \
             AND (next_send_at IS NULL OR next_send_at <= ?) \
             AND NOT EXISTS (SELECT 1 FROM alerts o WHERE o.endpoint_id = a.endpoint_id \
               AND o.sent_at IS NULL AND o.id < a.id) \
             ORDER BY id LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(micros(now))
            .bind(limit)
            .fetch_all(&self.writer)
            .await?;
        Ok(rows.iter().map(alert_from_row).collect())
    }

    async fn mark_alert_sent(&self, id: &str, at: Timestamp) -> StoreResult<()> {
        let _turn = self.turn.lock().await;
        sqlx::query("UPDATE alerts SET sent_at = ? WHERE id = ?")
            .bind(micros(at))
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn postpone_alert(&self, id: &str, error: &str, retry_at: Timestamp) -> StoreResult<()> {
        let _turn = self.turn.lock().await;
        sqlx::query(
            "UPDATE alerts SET send_attempts = send_attempts + 1, last_send_error = ?, \
             next_send_at = ? WHERE id = ?",
        )
        .bind(error)
        .bind(micros(retry_at))
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}
