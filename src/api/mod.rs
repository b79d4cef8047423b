//! The HTTP API under `/api/v1`, plus `/healthz`.
//!
//! Handlers follow one shape: parse and validate the request, call the store or the
//! engine, turn the result into an `…Out` type. Every `/api/v1` route requires a bearer
//! token except `POST /api/v1/sign-in`, which hands one out. Every token's user may use
//! every route except the management of other users, which is for super admins
//! (`users.rs` checks that). Handlers never attempt a delivery themselves: they commit,
//! then wake the engine (the test webhook and the URL check go through the engine's
//! guarded client).

pub mod deliveries;
pub mod endpoints;
mod error;
mod event_types;
mod events;
mod tokens;
mod users;

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::auth::{token_hash, SignIn, TokenCache};
use crate::clock::{SharedClock, Timestamp};
use crate::engine::Engine;
use crate::model::Principal;
use crate::settings::Settings;
use crate::store::Store;

pub use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub engine: Arc<Engine>,
    pub clock: SharedClock,
    pub settings: Arc<Settings>,
    pub sign_in: Arc<SignIn>,
    /// Tokens looked up in the last second; emptied by every change to tokens or users.
    pub tokens: Arc<TokenCache>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/events", post(events::create_event))
        .route(
            "/endpoints",
            get(endpoints::list_endpoints).post(endpoints::create_endpoint),
        )
        .route(
            "/endpoints/{id}",
            get(endpoints::get_endpoint)
                .patch(endpoints::update_endpoint)
                .delete(endpoints::delete_endpoint),
        )
        .route("/endpoints/{id}/test", post(endpoints::test_endpoint))
        .route("/endpoints/{id}/secret", get(endpoints::get_secret))
        .route(
            "/endpoints/{id}/secret/rotate",
            post(endpoints::rotate_secret),
        )
        .route(
            "/endpoints/{id}/deliveries",
            get(deliveries::list_endpoint_deliveries),
        )
        .route(
            "/endpoints/{id}/recover",
            post(deliveries::recover_endpoint),
        )
        .route("/deliveries", get(deliveries::list_deliveries))
        .route("/deliveries/{id}", get(deliveries::get_delivery))
        .route("/deliveries/{id}/resend", post(deliveries::resend_delivery))
        .route(
            "/event-types",
            get(event_types::list_event_types).post(event_types::create_event_type),
        )
        .route("/alerts", get(deliveries::list_alerts))
        .route("/users", get(users::list_users).post(users::create_user))
        .route(
            "/users/{id}",
            get(users::get_user)
                .patch(users::update_user)
                .delete(users::delete_user),
        )
        .route(
            "/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/tokens/{id}", axum::routing::delete(tokens::delete_token))
        .route("/sign-out", post(tokens::sign_out))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Added after the token layer, so it is the one route that needs no token.
        .route("/sign-in", post(tokens::sign_in))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::payload::MAX_EVENT_BYTES,
        ))
        .layer(middleware::from_fn(refuse_declared_oversize));

    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Answers 413 at once when the declared `Content-Length` is over the limit, rather
/// than reading the body first (or waiting for one that never comes).
async fn refuse_declared_oversize(request: Request, next: Next) -> Result<Response, ApiError> {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = declared.filter(|&n| n > crate::payload::MAX_EVENT_BYTES as u64) {
        return Err(error::too_large(&format!("Content-Length {length} is")));
    }
    Ok(next.run(request).await)
}

async fn not_found() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such route",
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(_) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "degraded", "database": "unavailable"})),
        )
            .into_response(),
    }
}

/// How stale a token's last-used time may get before it is written again: using a
/// token must not cost a database write per request.
const LAST_USED_PRECISION: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(header) = request.headers().get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing header Authorization: Bearer <token>",
        ));
    };
    // The scheme is case-insensitive (RFC 9110); the token follows one space.
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        return Err(ApiError::unauthorized(
            "the Authorization header is not of the form 'Bearer <token>'",
        ));
    };
    let hash = token_hash(token);
    let principal = match state.tokens.get(&hash) {
        Ok(known) => known,
        Err(lookup) => {
            let Some(found) = state.store.principal_for_token(&hash).await? else {
                return Err(ApiError::unauthorized("the bearer token is not valid"));
            };
            state.tokens.put(lookup, &hash, &found);
            found
        }
    };
    let now = state.clock.now();
    if principal.expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::unauthorized(
            "the bearer token has expired; sign in again",
        ));
    }
    touch_if_stale(&state, &hash, &principal, now).await;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

async fn touch_if_stale(state: &AppState, hash: &str, principal: &Principal, now: Timestamp) {
    let stale = principal
        .last_used_at
        .is_none_or(|at| now - at >= LAST_USED_PRECISION);
    if !stale {
        return;
    }
    // A lost last-used time is not worth refusing the request over.
    match state.store.touch_token(&principal.token_id, now).await {
        Ok(()) => state.tokens.touched(hash, now),
        Err(err) => {
            tracing::warn!(cause = %err, token_id = %principal.token_id, "cannot record token use")
        }
    }
}

/// A JSON body whose rejections are answered in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(body) = Json::<serde_json::Value>::from_request(req, state).await?;
        // Every request body is an object; serde would also fill a struct from an
        // array, field by field in order, which no caller means.
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "malformed_json",
                format!("the body must be a JSON object, not {}", json_kind(&body)),
            ));
        }
        // The error names the field at fault ("name: invalid type ...").
        serde_path_to_error::deserialize(body)
            .map(ApiJson)
            .map_err(|err| ApiError::unprocessable("invalid_field", err.to_string()))
    }
}

/// The id in a route's path, with its rejection (an id that is not UTF-8 once
/// percent-decoded) answered in the API's error shape.
pub struct ApiPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(ApiPath(id)),
            Err(_) => {
                let raw: String = parts.uri.path().chars().take(200).collect();
                Err(ApiError::bad_request(
                    "invalid_id",
                    format!("the id in {raw:?} is not valid UTF-8 once percent-decoded"),
                ))
            }
        }
    }
}

/// For a request field that may be left out but is never null: left out, it is `None`
/// ("unchanged" in an update); an explicit `null` is refused with the field's name,
/// since a caller who sends one means something no field of Herald's takes.
pub fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A query string whose rejections are answered in the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_query",
                rejection.body_text(),
            )),
        }
    }
}

pub fn bad_cursor(cursor: &str) -> ApiError {
    let shown: String = cursor.chars().take(64).collect();
    ApiError::bad_request(
        "invalid_query",
        format!("cursor '{shown}' is not one this list gave out"),
    )
}

/// `?limit=&cursor=` of every list. Any other parameter is refused by name, so that a
/// mistyped one is not silently ignored.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The cursor of a list paged by id, if it looks like an id of that list's kind
    /// (`prefix_…`): anything else was not given out by the list, and is refused rather
    /// than answered with an empty page.
    pub fn id_cursor(&self, prefix: &str) -> Result<Option<&str>, ApiError> {
        let Some(cursor) = self.cursor.as_deref() else {
            return Ok(None);
        };
        if !crate::ids::is_id(cursor, prefix) {
            return Err(bad_cursor(cursor));
        }
        Ok(Some(cursor))
    }

    pub fn limit(&self) -> Result<i64, ApiError> {
        PageQuery::limit_of(self.limit.as_deref())
    }

    /// `?limit=` as given: 50 when absent, else a whole number from 1 to 250.
    pub fn limit_of(text: Option<&str>) -> Result<i64, ApiError> {
        let Some(text) = text else {
            return Ok(50);
        };
        match text.parse::<i64>() {
            Ok(n) if (1..=250).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "invalid_query",
                format!("limit '{text}' must be a whole number from 1 to 250"),
            )),
        }
    }
}

#[derive(serde::Serialize)]
pub struct ListOut<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}
