//! Personal API tokens, and signing in and out.
//!
//! A token is shown once, in the answer that creates it; lists show only its name and
//! times. Each user lists and creates their own tokens; a super admin may also revoke
//! anyone's. Signing in trades an e-mail and a password for a token that expires after
//! [`crate::auth::SIGN_IN_LIFETIME`]; signing out revokes the token in use.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::endpoints::{check_name, missing};
use super::users::UserOut;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, ListOut, PageQuery};
use crate::auth::{new_token, token_hash};
use crate::clock::Timestamp;
use crate::model::{ApiToken, NewApiToken, Principal};
use crate::store::StoreError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIn {
    name: Option<String>,
}

#[derive(Serialize)]
pub struct TokenOut {
    id: String,
    name: String,
    user_id: String,
    created_at: Timestamp,
    last_used_at: Option<Timestamp>,
    expires_at: Option<Timestamp>,
}

impl From<ApiToken> for TokenOut {
    fn from(t: ApiToken) -> TokenOut {
        TokenOut {
            id: t.id,
            name: t.name,
            user_id: t.user_id,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            expires_at: t.expires_at,
        }
    }
}

/// A token as created: the only answer that holds the token itself.
#[derive(Serialize)]
pub struct NewTokenOut {
    #[serde(flatten)]
    stored: TokenOut,
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInIn {
    email: Option<String>,
    password: Option<String>,
}

#[derive(Serialize)]
pub struct SignInOut {
    #[serde(flatten)]
    token: NewTokenOut,
    user: UserOut,
}

pub async fn create_token(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(input): ApiJson<TokenIn>,
) -> Result<(StatusCode, Json<NewTokenOut>), ApiError> {
    let name = check_name(input.name.as_deref().ok_or_else(|| missing("name"))?)?;
    let token = new_token();
    let new = NewApiToken {
        user_id: principal.user_id.clone(),
        name,
        token_hash: token_hash(&token),
        created_at: state.clock.now(),
        expires_at: None,
    };
    let stored = state.store.create_token(&new).await?;
    info!(token_id = %stored.id, user_id = %principal.user_id, "token created");
    Ok((
        StatusCode::CREATED,
        Json(NewTokenOut {
            stored: stored.into(),
            token,
        }),
    ))
}

pub async fn list_tokens(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ListOut<TokenOut>>, ApiError> {
    let page = state
        .store
        .list_tokens(&principal.user_id, query.id_cursor("tok")?, query.limit()?)
        .await?;
    Ok(Json(ListOut {
        data: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Revokes a token at once. Someone else's token answers 404 to an admin, as if it did
/// not exist.
pub async fn delete_token(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath,
) -> Result<StatusCode, ApiError> {
    let owner = (!principal.is_super_admin()).then_some(principal.user_id.as_str());
    let deleted = state.store.delete_token(&id, owner).await;
    state.tokens.forget_all();
    deleted.map_err(|err| match err {
        StoreError::NotFound => ApiError::not_found("token", &id),
        other => other.into(),
    })?;
    info!(token_id = %id, by = %principal.user_id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiJson(input): ApiJson<SignInIn>,
) -> Result<Json<SignInOut>, ApiError> {
    let email = input.email.ok_or_else(|| missing("email"))?;
    let password = input.password.ok_or_else(|| missing("password"))?;
    let signed_in = state
        .sign_in
        .sign_in(&email, &password, client.ip())
        .await?;
    Ok(Json(SignInOut {
        token: NewTokenOut {
            stored: signed_in.stored.into(),
            token: signed_in.token,
        },
        user: signed_in.user.into(),
    }))
}

pub async fn sign_out(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<StatusCode, ApiError> {
    let deleted = state.store.delete_token(&principal.token_id, None).await;
    state.tokens.forget_all();
    deleted?;
    Ok(StatusCode::NO_CONTENT)
}
