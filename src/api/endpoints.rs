//! Endpoints: create (with the HEAD check), list, show, update, delete, test webhook,
//! and the signing secret.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::event_types::check_known;
use super::{ApiError, ApiJson, ApiQuery, AppState, ListOut, PageQuery};
use crate::clock::Timestamp;
use crate::engine::chrono_duration;
use crate::engine::egress::UrlError;
use crate::model::{Endpoint, EndpointFields, Ordering};
use crate::signing;
use crate::store::StoreError;

/// A create or update request; on update every field is optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointIn {
    name: Option<String>,
    url: Option<String>,
    enabled: Option<bool>,
    events: Option<Vec<String>>,
    ordering: Option<String>,
    /// Whether to send the HEAD check to a new URL (default true).
    verify: Option<bool>,
}

#[derive(Serialize)]
pub struct EndpointOut {
    id: String,
    name: String,
    url: String,
    enabled: bool,
    events: Vec<String>,
    ordering: Ordering,
    disabled_reason: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
    last_triggered_at: Option<Timestamp>,
}

impl From<Endpoint> for EndpointOut {
    fn from(e: Endpoint) -> EndpointOut {
        EndpointOut {
            id: e.id,
            name: e.name,
            url: e.url,
            enabled: e.enabled,
            events: e.events,
            ordering: e.ordering,
            disabled_reason: e.disabled_reason,
            created_at: e.created_at,
            updated_at: e.updated_at,
            last_triggered_at: e.last_triggered_at,
        }
    }
}

#[derive(Serialize)]
pub struct SecretOut {
    key: String,
}

#[derive(Serialize)]
pub struct TestOut {
    success: bool,
    status_code: Option<u16>,
    response_body: Option<String>,
    error: Option<String>,
    duration_ms: i64,
    delivery_id: String,
}

const MAX_NAME: usize = 200;

fn not_found(id: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |err| match err {
        StoreError::NotFound => ApiError::not_found("endpoint", id),
        other => other.into(),
    }
}

pub(super) fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_name",
            "name must not be empty",
        ));
    }
    if name.chars().count() > MAX_NAME {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!(
                "name is {} characters long; the limit is {MAX_NAME}",
                name.chars().count()
            ),
        ));
    }
    // Control characters have no place in a name, and PostgreSQL refuses NUL in text.
    if name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_name",
            "name must not contain control characters such as a line break or NUL",
        ));
    }
    Ok(name.to_string())
}

fn check_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    match state.engine.policy().validate_endpoint_url(url) {
        Ok(parsed) => Ok(parsed.to_string()),
        Err(UrlError::Invalid(detail)) => Err(ApiError::unprocessable("invalid_url", detail)),
        Err(UrlError::Blocked(detail)) => {
            Err(ApiError::unprocessable("blocked_destination", detail))
        }
    }
}

fn check_ordering(ordering: Option<&str>, current: Ordering) -> Result<Ordering, ApiError> {
    let Some(text) = ordering else {
        return Ok(current);
    };
    Ordering::parse(text).ok_or_else(|| {
        ApiError::unprocessable(
            "invalid_ordering",
            format!("ordering '{text}' must be 'accepted' or 'per_object'"),
        )
    })
}

async fn check_events(state: &AppState, events: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut events: Vec<String> = events.into_iter().map(|e| e.trim().to_string()).collect();
    events.sort();
    events.dedup();
    check_known(state, &events).await?;
    Ok(events)
}

async fn verify_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    state.engine.check_url(url).await.map_err(|answer| {
        ApiError::unprocessable(
            "url_check_failed",
            format!("{answer}; the receiver must answer HEAD with a status below 400 (send \"verify\": false to skip this check)"),
        )
    })
}

pub async fn create_endpoint(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<EndpointIn>,
) -> Result<(StatusCode, Json<EndpointOut>), ApiError> {
    let name = input.name.as_deref().ok_or_else(|| missing("name"))?;
    let url = input.url.as_deref().ok_or_else(|| missing("url"))?;
    let fields = EndpointFields {
        name: check_name(name)?,
        url: check_url(&state, url)?,
        enabled: input.enabled.unwrap_or(true),
        events: check_events(&state, input.events.unwrap_or_default()).await?,
        ordering: check_ordering(input.ordering.as_deref(), Ordering::Accepted)?,
    };
    if input.verify.unwrap_or(true) {
        verify_url(&state, &fields.url).await?;
    }

    let endpoint = state
        .store
        .create_endpoint(
            &fields,
            &state.engine.secrets().seal(&signing::new_secret()),
            state.clock.now(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(endpoint.into())))
}

pub(super) fn missing(field: &str) -> ApiError {
    ApiError::unprocessable("missing_field", format!("field '{field}' is required"))
}

pub async fn list_endpoints(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ListOut<EndpointOut>>, ApiError> {
    let page = state
        .store
        .list_endpoints(query.cursor.as_deref(), query.limit()?)
        .await?;
    Ok(Json(ListOut {
        data: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

pub async fn get_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EndpointOut>, ApiError> {
    let endpoint = state
        .store
        .get_endpoint(&id)
        .await
        .map_err(not_found(&id))?;
    Ok(Json(endpoint.into()))
}

pub async fn update_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<EndpointIn>,
) -> Result<Json<EndpointOut>, ApiError> {
    let current = state
        .store
        .get_endpoint(&id)
        .await
        .map_err(not_found(&id))?;
    let url = match &input.url {
        Some(url) => check_url(&state, url)?,
        None => current.url.clone(),
    };
    let fields = EndpointFields {
        name: input
            .name
            .as_deref()
            .map(check_name)
            .transpose()?
            .unwrap_or(current.name),
        enabled: input.enabled.unwrap_or(current.enabled),
        events: match input.events {
            Some(events) => check_events(&state, events).await?,
            None => current.events,
        },
        ordering: check_ordering(input.ordering.as_deref(), current.ordering)?,
        url,
    };
    if fields.url != current.url && input.verify.unwrap_or(true) {
        verify_url(&state, &fields.url).await?;
    }

    let endpoint = state
        .store
        .update_endpoint(&id, &fields, state.clock.now())
        .await
        .map_err(not_found(&id))?;
    if endpoint.enabled {
        state.engine.wake();
    }
    Ok(Json(endpoint.into()))
}

pub async fn delete_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .delete_endpoint(&id)
        .await
        .map_err(not_found(&id))?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn test_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TestOut>, ApiError> {
    let (delivery, attempt) = state.engine.send_test(&id).await.map_err(not_found(&id))?;
    Ok(Json(TestOut {
        success: attempt.succeeded(),
        status_code: attempt.status_code,
        response_body: attempt.response_body,
        error: attempt.error,
        duration_ms: attempt.duration_ms,
        delivery_id: delivery.id,
    }))
}

pub async fn get_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SecretOut>, ApiError> {
    let endpoint = state
        .store
        .get_endpoint(&id)
        .await
        .map_err(not_found(&id))?;
    Ok(Json(SecretOut {
        key: open_secret(&state, &endpoint.secret)?,
    }))
}

fn open_secret(state: &AppState, sealed: &str) -> Result<String, ApiError> {
    state.engine.secrets().open(sealed).map_err(|err| {
        tracing::error!(cause = %err, "cannot open an endpoint secret");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })
}

pub async fn rotate_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SecretOut>, ApiError> {
    let now = state.clock.now();
    let old_until = now + chrono_duration(state.settings.delivery.secret_grace);
    let secret = signing::new_secret();
    let sealed = state.engine.secrets().seal(&secret);
    state
        .store
        .rotate_secret(&id, &sealed, old_until, now)
        .await
        .map_err(not_found(&id))?;
    Ok(Json(SecretOut { key: secret }))
}
