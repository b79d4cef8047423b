//! Users and API tokens on PostgreSQL; the same statements as on SQLite, with `$n`
//! placeholders.
//!
//! "The last super admin stays" is checked and applied in one statement, as on SQLite,
//! but here other processes write users too: under READ COMMITTED two demotions at once
//! could each count two super admins. So both run behind one transaction-scoped
//! advisory lock, taken before the statement, whose snapshot then sees the other's
//! committed change.

use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;

use super::{from_micros, micros, opt_time, page};
use crate::clock::Timestamp;
use crate::ids::new_id;
use crate::model::{ApiToken, NewApiToken, NewUser, Principal, Role, User, UserChanges};
use crate::store::{Page, StoreError, StoreResult};

const USER_COLUMNS: &str =
    "id, email, name, role, password_hash IS NOT NULL AS has_password, created_at, updated_at";

const TOKEN_COLUMNS: &str = "id, user_id, name, created_at, last_used_at, expires_at";

/// A condition true unless the row is the only super admin.
const NOT_LAST_SUPER_ADMIN: &str = "(role <> 'super_admin' OR \
    (SELECT count(*) FROM users WHERE role = 'super_admin') > 1)";

/// Serializes the changes that could remove the last super admin, across processes.
const LOCK_SUPER_ADMINS: &str = "SELECT pg_advisory_xact_lock(hashtext('herald.super_admins'))";

fn role(row: &PgRow) -> Role {
    // The schema's CHECK allows only the two roles; an admin is the safe reading.
    Role::parse(row.get("role")).unwrap_or(Role::Admin)
}

fn user_from_row(row: &PgRow) -> User {
    User {
        id: row.get("id"),
        email: row.get("email"),
        name: row.get("name"),
        role: role(row),
        has_password: row.get("has_password"),
        created_at: from_micros(row.get("created_at")),
        updated_at: from_micros(row.get("updated_at")),
    }
}

fn token_from_row(row: &PgRow) -> ApiToken {
    ApiToken {
        id: row.get("id"),
        user_id: row.get("user_id"),
        name: row.get("name"),
        created_at: from_micros(row.get("created_at")),
        last_used_at: opt_time(row, "last_used_at"),
        expires_at: opt_time(row, "expires_at"),
    }
}

/// A unique index refused the row: the e-mail is taken.
fn taken(err: sqlx::Error) -> StoreError {
    match err.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::AlreadyExists,
        _ => err.into(),
    }
}

pub(super) async fn principal_for_token(
    pool: &PgPool,
    token_hash: &str,
) -> StoreResult<Option<Principal>> {
    let row = sqlx::query(
        "SELECT t.id AS token_id, t.last_used_at, t.expires_at, u.id AS user_id, u.role \
         FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| Principal {
        user_id: row.get("user_id"),
        token_id: row.get("token_id"),
        role: role(&row),
        last_used_at: opt_time(&row, "last_used_at"),
        expires_at: opt_time(&row, "expires_at"),
    }))
}

pub(super) async fn create_user(pool: &PgPool, user: &NewUser) -> StoreResult<User> {
    let id = new_id("usr");
    sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, role, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(&id)
    .bind(&user.email)
    .bind(&user.name)
    .bind(&user.password_hash)
    .bind(user.role.as_str())
    .bind(micros(user.created_at))
    .execute(pool)
    .await
    .map_err(taken)?;
    get_user(pool, &id).await
}

pub(super) async fn get_user(pool: &PgPool, id: &str) -> StoreResult<User> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(user_from_row).ok_or(StoreError::NotFound)
}

pub(super) async fn list_users(
    pool: &PgPool,
    cursor: Option<&str>,
    limit: i64,
) -> StoreResult<Page<User>> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users WHERE ($1::text IS NULL OR id < $1) \
         ORDER BY id DESC LIMIT $2"
    );
    let rows = sqlx::query(&sql)
        .bind(cursor)
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let items = rows.iter().map(user_from_row).collect();
    Ok(page(items, limit, |u: &User| u.id.clone()))
}

pub(super) async fn sign_in_record(
    pool: &PgPool,
    email: &str,
) -> StoreResult<Option<(User, Option<String>)>> {
    let sql = format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1");
    let row = sqlx::query(&sql).bind(email).fetch_optional(pool).await?;
    Ok(row.map(|row| (user_from_row(&row), row.get("password_hash"))))
}

pub(super) async fn update_user(
    pool: &PgPool,
    id: &str,
    changes: &UserChanges,
    now: Timestamp,
) -> StoreResult<User> {
    let demotes = changes.role == Some(Role::Admin);
    let sql = format!(
        "UPDATE users SET email = coalesce($1, email), name = coalesce($2, name), \
         role = coalesce($3, role), password_hash = coalesce($4, password_hash), \
         updated_at = $5 WHERE id = $6 AND (NOT $7 OR {NOT_LAST_SUPER_ADMIN})"
    );
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_SUPER_ADMINS).execute(&mut *tx).await?;
    let updated = sqlx::query(&sql)
        .bind(&changes.email)
        .bind(&changes.name)
        .bind(changes.role.map(Role::as_str))
        .bind(&changes.password_hash)
        .bind(micros(now))
        .bind(id)
        .bind(demotes)
        .execute(&mut *tx)
        .await
        .map_err(taken)?
        .rows_affected();
    tx.commit().await?;
    if updated == 0 {
        // Either there is no such user, or the condition kept the last super admin.
        get_user(pool, id).await?;
        return Err(StoreError::LastSuperAdmin);
    }
    get_user(pool, id).await
}

pub(super) async fn delete_user(pool: &PgPool, id: &str) -> StoreResult<()> {
    let sql = format!("DELETE FROM users WHERE id = $1 AND {NOT_LAST_SUPER_ADMIN}");
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_SUPER_ADMINS).execute(&mut *tx).await?;
    let deleted = sqlx::query(&sql)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    if deleted == 0 {
        get_user(pool, id).await?;
        return Err(StoreError::LastSuperAdmin);
    }
    Ok(())
}

pub(super) async fn super_admin_emails(pool: &PgPool) -> StoreResult<Vec<String>> {
    let emails = sqlx::query_scalar(
        "SELECT email FROM users WHERE role = 'super_admin' AND email IS NOT NULL ORDER BY email",
    )
    .fetch_all(pool)
    .await?;
    Ok(emails)
}

pub(super) async fn create_token(pool: &PgPool, token: &NewApiToken) -> StoreResult<ApiToken> {
    let id = new_id("tok");
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM tokens WHERE user_id = $1 AND expires_at <= $2")
        .bind(&token.user_id)
        .bind(micros(token.created_at))
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO tokens (id, user_id, name, token_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&token.user_id)
    .bind(&token.name)
    .bind(&token.token_hash)
    .bind(micros(token.created_at))
    .bind(token.expires_at.map(micros))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ApiToken {
        id,
        user_id: token.user_id.clone(),
        name: token.name.clone(),
        created_at: token.created_at,
        last_used_at: None,
        expires_at: token.expires_at,
    })
}

pub(super) async fn list_tokens(
    pool: &PgPool,
    user_id: &str,
    cursor: Option<&str>,
    limit: i64,
) -> StoreResult<Page<ApiToken>> {
    let sql = format!(
        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE user_id = $1 AND ($2::text IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(user_id)
        .bind(cursor)
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let items = rows.iter().map(token_from_row).collect();
    Ok(page(items, limit, |t: &ApiToken| t.id.clone()))
}

pub(super) async fn delete_token(pool: &PgPool, id: &str, owner: Option<&str>) -> StoreResult<()> {
    let deleted =
        sqlx::query("DELETE FROM tokens WHERE id = $1 AND ($2::text IS NULL OR user_id = $2)")
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected();
    if deleted == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub(super) async fn delete_sign_in_tokens(
    pool: &PgPool,
    user_id: &str,
    keep: Option<&str>,
) -> StoreResult<u64> {
    let mut tx = pool.begin().await?;
    let deleted = sqlx::query(
        "DELETE FROM tokens WHERE user_id = $1 AND expires_at IS NOT NULL \
         AND ($2::text IS NULL OR id <> $2)",
    )
    .bind(user_id)
    .bind(keep)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(deleted)
}

pub(super) async fn touch_token(pool: &PgPool, id: &str, now: Timestamp) -> StoreResult<()> {
    sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
        .bind(micros(now))
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}
