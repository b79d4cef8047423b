//! Users: create, list, show, change and remove them. Managing other users is for super
//! admins. Every user may read and change their own name, e-mail and password (the id
//! `me` names the token's own user), but not their own role. No answer carries a
//! password or its hash: [`UserOut`] has no field for one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::endpoints::{check_name, missing};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, ListOut, PageQuery};
use crate::auth::{normalize_email, password};
use crate::clock::Timestamp;
use crate::model::{NewUser, Principal, Role, User, UserChanges};
use crate::store::StoreError;

/// A create request; on update every field is optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserIn {
    email: Option<String>,
    name: Option<String>,
    password: Option<String>,
    role: Option<String>,
}

#[derive(Serialize)]
pub struct UserOut {
    id: String,
    email: Option<String>,
    name: String,
    role: Role,
    has_password: bool,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<User> for UserOut {
    fn from(u: User) -> UserOut {
        UserOut {
            id: u.id,
            email: u.email,
            name: u.name,
            role: u.role,
            has_password: u.has_password,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

fn require_super_admin(principal: &Principal) -> Result<(), ApiError> {
    if principal.is_super_admin() {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "only super admins manage users; this token belongs to an admin",
    ))
}

/// The user a path names: `me` is the token's own user.
fn target(principal: &Principal, id: &str) -> String {
    match id {
        "me" => principal.user_id.clone(),
        other => other.to_string(),
    }
}

fn check_role(text: &str) -> Result<Role, ApiError> {
    Role::parse(text).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_role",
            format!("role '{text}' must be super_admin or admin"),
        )
    })
}

fn store_error<'a>(id: &'a str, email: Option<&'a str>) -> impl Fn(StoreError) -> ApiError + 'a {
    move |err| match err {
        StoreError::NotFound => ApiError::not_found("user", id),
        StoreError::AlreadyExists => ApiError::conflict(
            "already_exists",
            format!(
                "a user with e-mail '{}' already exists",
                email.unwrap_or("")
            ),
        ),
        StoreError::LastSuperAdmin => ApiError::conflict(
            "last_super_admin",
            format!("user '{id}' is the last super admin; make another user a super admin first"),
        ),
        other => other.into(),
    }
}

pub async fn create_user(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(input): ApiJson<UserIn>,
) -> Result<(StatusCode, Json<UserOut>), ApiError> {
    require_super_admin(&principal)?;
    let email = normalize_email(input.email.as_deref().ok_or_else(|| missing("email"))?)?;
    let name = check_name(input.name.as_deref().ok_or_else(|| missing("name"))?)?;
    let password = input.password.ok_or_else(|| missing("password"))?;
    password::check_rules(&password)?;
    let role = check_role(input.role.as_deref().unwrap_or("admin"))?;

    let new = NewUser {
        email: email.clone(),
        name,
        role,
        password_hash: password::hash(password).await?,
        created_at: state.clock.now(),
    };
    let user = state
        .store
        .create_user(&new)
        .await
        .map_err(store_error("", Some(&email)))?;
    info!(user_id = %user.id, role = role.as_str(), by = %principal.user_id, "user created");
    Ok((StatusCode::CREATED, Json(user.into())))
}

pub async fn list_users(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ListOut<UserOut>>, ApiError> {
    require_super_admin(&principal)?;
    let page = state
        .store
        .list_users(query.id_cursor("usr")?, query.limit()?)
        .await?;
    Ok(Json(ListOut {
        data: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

pub async fn get_user(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath,
) -> Result<Json<UserOut>, ApiError> {
    let id = target(&principal, &id);
    if id != principal.user_id {
        require_super_admin(&principal)?;
    }
    let user = state
        .store
        .get_user(&id)
        .await
        .map_err(store_error(&id, None))?;
    Ok(Json(user.into()))
}

pub async fn update_user(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath,
    ApiJson(input): ApiJson<UserIn>,
) -> Result<Json<UserOut>, ApiError> {
    let id = target(&principal, &id);
    let oneself = id == principal.user_id;
    if !oneself || input.role.is_some() {
        require_super_admin(&principal)?;
    }
    let changes = changes(input).await?;

    let user = state
        .store
        .update_user(&id, &changes, state.clock.now())
        .await;
    state.tokens.forget_all();
    let user = user.map_err(store_error(&id, changes.email.as_deref()))?;
    if changes.password_hash.is_some() {
        // A new password ends the sign-in sessions made with the old one; personal
        // tokens stay, and so does the session making this change.
        let keep = oneself.then_some(principal.token_id.as_str());
        let deleted = state.store.delete_sign_in_tokens(&id, keep).await;
        state.tokens.forget_all();
        deleted?;
    }
    info!(user_id = %id, by = %principal.user_id, "user changed");
    Ok(Json(user.into()))
}

/// Checks each given field; a new password is hashed here.
async fn changes(input: UserIn) -> Result<UserChanges, ApiError> {
    let password_hash = match input.password {
        Some(password) => {
            password::check_rules(&password)?;
            Some(password::hash(password).await?)
        }
        None => None,
    };
    Ok(UserChanges {
        email: input.email.as_deref().map(normalize_email).transpose()?,
        name: input.name.as_deref().map(check_name).transpose()?,
        role: input.role.as_deref().map(check_role).transpose()?,
        password_hash,
    })
}

pub async fn delete_user(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath,
) -> Result<StatusCode, ApiError> {
    require_super_admin(&principal)?;
    let id = target(&principal, &id);
    let deleted = state.store.delete_user(&id).await;
    state.tokens.forget_all();
    deleted.map_err(store_error(&id, None))?;
    info!(user_id = %id, by = %principal.user_id, "user removed");
    Ok(StatusCode::NO_CONTENT)
}
