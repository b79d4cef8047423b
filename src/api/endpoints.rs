//! Endpoints: create (with the HEAD check), list, show, update, delete, test webhook,
//! and the signing secret.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::event_types::check_known;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, ListOut, PageQuery};
use crate::clock::Timestamp;
use crate::engine::chrono_duration;
use crate::engine::egress::UrlError;
use crate::model::{Endpoint, EndpointFields, Ordering};
use crate::signing;
use crate::store::StoreError;

/// A create or update request; on update every field is optional. The console builds
/// one from its form, so both go through the same checks.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EndpointIn {
    #[serde(default, deserialize_with = "super::not_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "super::not_null")]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "super::not_null")]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "super::not_null")]
    pub events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "super::not_null")]
    pub ordering: Option<String>,
    /// Whether to send the HEAD check to a new URL (default true).
    #[serde(default, deserialize_with = "super::not_null")]
    pub verify: Option<bool>,
}

/// Which request field an error is about, so the console can show it beside that field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Name,
    Url,
    Events,
    Ordering,
}

/// Every field error of one request, in field order. The API answers with the first;
/// the console shows each beside its field.
#[derive(Debug, Default)]
pub struct FieldErrors(pub Vec<(Field, ApiError)>);

impl FieldErrors {
    fn check<T>(&mut self, field: Field, result: Result<T, ApiError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.0.push((field, err));
                None
            }
        }
    }

    pub fn first(mut self) -> ApiError {
        self.0.remove(0).1
    }
}

/// Why a create or update was refused.
#[derive(Debug)]
pub enum EndpointRefused {
    /// One or more fields are not valid; nothing was checked over the network.
    Fields(FieldErrors),
    /// The fields are valid but the receiver failed the HEAD check: what it answered.
    UrlCheck(String),
    /// Anything else: an unknown endpoint, a store failure.
    Other(ApiError),
}

impl From<EndpointRefused> for ApiError {
    fn from(refused: EndpointRefused) -> ApiError {
        match refused {
            EndpointRefused::Fields(errors) => errors.first(),
            EndpointRefused::UrlCheck(answer) => ApiError::unprocessable(
                "url_check_failed",
                format!("{answer}; the receiver must answer HEAD with a status below 400 (to skip this check, send \"verify\": false, or give --no-verify on the command line)"),
            ),
            EndpointRefused::Other(err) => err,
        }
    }
}

impl From<ApiError> for EndpointRefused {
    fn from(err: ApiError) -> EndpointRefused {
        EndpointRefused::Other(err)
    }
}

impl From<StoreError> for EndpointRefused {
    fn from(err: StoreError) -> EndpointRefused {
        EndpointRefused::Other(err.into())
    }
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
    pub success: bool,
    pub status_code: Option<u16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub delivery_id: String,
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

pub(super) fn missing(field: &str) -> ApiError {
    ApiError::unprocessable("missing_field", format!("field '{field}' is required"))
}

impl EndpointIn {
    /// Checks every field and merges it with `current` (the stored endpoint, on update).
    /// On create, `name` and `url` are required. Makes no network call.
    pub async fn check(
        &self,
        state: &AppState,
        current: Option<&Endpoint>,
    ) -> Result<EndpointFields, FieldErrors> {
        let mut errors = FieldErrors::default();
        let name = match (&self.name, current) {
            (Some(name), _) => errors.check(Field::Name, check_name(name)),
            (None, Some(current)) => Some(current.name.clone()),
            (None, None) => errors.check(Field::Name, Err(missing("name"))),
        };
        let url = match (&self.url, current) {
            (Some(url), _) => errors.check(Field::Url, check_url(state, url)),
            (None, Some(current)) => Some(current.url.clone()),
            (None, None) => errors.check(Field::Url, Err(missing("url"))),
        };
        let events = match (&self.events, current) {
            (Some(events), _) => {
                errors.check(Field::Events, check_events(state, events.clone()).await)
            }
            (None, Some(current)) => Some(current.events.clone()),
            (None, None) => Some(Vec::new()),
        };
        let ordering = current.map_or(Ordering::Accepted, |c| c.ordering);
        let ordering = errors.check(
            Field::Ordering,
            check_ordering(self.ordering.as_deref(), ordering),
        );

        match (name, url, events, ordering) {
            (Some(name), Some(url), Some(events), Some(ordering)) if errors.0.is_empty() => {
                Ok(EndpointFields {
                    name,
                    url,
                    enabled: self.enabled.unwrap_or(current.is_none_or(|c| c.enabled)),
                    events,
                    ordering,
                })
            }
            _ => Err(errors),
        }
    }

    fn verify(&self) -> bool {
        self.verify.unwrap_or(true)
    }
}

/// The HEAD check: the receiver must answer `HEAD` with a status below 400.
async fn verify_url(state: &AppState, url: &str) -> Result<(), EndpointRefused> {
    state
        .engine
        .check_url(url)
        .await
        .map_err(EndpointRefused::UrlCheck)
}

/// Creates an endpoint: checks the fields, runs the HEAD check unless `verify` is
/// false, and stores it with a new signing secret.
pub async fn create(state: &AppState, input: &EndpointIn) -> Result<Endpoint, EndpointRefused> {
    let fields = input
        .check(state, None)
        .await
        .map_err(EndpointRefused::Fields)?;
    if input.verify() {
        verify_url(state, &fields.url).await?;
    }

    let secret = state.engine.secrets().seal(&signing::new_secret());
    let endpoint = state
        .store
        .create_endpoint(&fields, &secret, state.clock.now())
        .await?;
    Ok(endpoint)
}

/// Changes the fields present in `input`; the HEAD check runs only for a new URL.
pub async fn update(
    state: &AppState,
    id: &str,
    input: &EndpointIn,
) -> Result<Endpoint, EndpointRefused> {
    let current = state.store.get_endpoint(id).await.map_err(not_found(id))?;
    let fields = input
        .check(state, Some(&current))
        .await
        .map_err(EndpointRefused::Fields)?;
    if fields.url != current.url && input.verify() {
        verify_url(state, &fields.url).await?;
    }

    let endpoint = state
        .store
        .update_endpoint(id, &fields, state.clock.now())
        .await
        .map_err(not_found(id))?;
    state.engine.endpoint_changed(id);
    if endpoint.enabled {
        state.engine.wake();
    }
    Ok(endpoint)
}

pub async fn get(state: &AppState, id: &str) -> Result<Endpoint, ApiError> {
    state.store.get_endpoint(id).await.map_err(not_found(id))
}

pub async fn delete(state: &AppState, id: &str) -> Result<(), ApiError> {
    state
        .store
        .delete_endpoint(id)
        .await
        .map_err(not_found(id))?;
    state.engine.endpoint_changed(id);
    Ok(())
}

/// Sends a test webhook to the endpoint now and reports the attempt.
pub async fn send_test(state: &AppState, id: &str) -> Result<TestOut, ApiError> {
    let (delivery, attempt) = state.engine.send_test(id).await.map_err(not_found(id))?;
    Ok(TestOut {
        success: attempt.succeeded(),
        status_code: attempt.status_code,
        response_body: attempt.response_body,
        error: attempt.error,
        duration_ms: attempt.duration_ms,
        delivery_id: delivery.id,
    })
}

/// The secret that signs the endpoint's webhooks now.
pub async fn secret(state: &AppState, id: &str) -> Result<String, ApiError> {
    let endpoint = get(state, id).await?;
    open_secret(state, &endpoint.secret)
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

/// Makes a new secret; the previous one keeps signing for the grace period.
pub async fn rotate(state: &AppState, id: &str) -> Result<String, ApiError> {
    let now = state.clock.now();
    let old_until = now + chrono_duration(state.settings.delivery.secret_grace);
    let secret = signing::new_secret();
    let sealed = state.engine.secrets().seal(&secret);
    state
        .store
        .rotate_secret(id, &sealed, old_until, now)
        .await
        .map_err(not_found(id))?;
    Ok(secret)
}

pub async fn create_endpoint(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<EndpointIn>,
) -> Result<(StatusCode, Json<EndpointOut>), ApiError> {
    let endpoint = create(&state, &input).await?;
    Ok((StatusCode::CREATED, Json(endpoint.into())))
}

pub async fn list_endpoints(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ListOut<EndpointOut>>, ApiError> {
    let page = state
        .store
        .list_endpoints(query.id_cursor("ep")?, query.limit()?)
        .await?;
    Ok(Json(ListOut {
        data: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

pub async fn get_endpoint(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<Json<EndpointOut>, ApiError> {
    Ok(Json(get(&state, &id).await?.into()))
}

pub async fn update_endpoint(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
    ApiJson(input): ApiJson<EndpointIn>,
) -> Result<Json<EndpointOut>, ApiError> {
    let endpoint = update(&state, &id, &input).await?;
    Ok(Json(endpoint.into()))
}

pub async fn delete_endpoint(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<StatusCode, ApiError> {
    delete(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn test_endpoint(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<Json<TestOut>, ApiError> {
    Ok(Json(send_test(&state, &id).await?))
}

pub async fn get_secret(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<Json<SecretOut>, ApiError> {
    let key = secret(&state, &id).await?;
    Ok(Json(SecretOut { key }))
}

pub async fn rotate_secret(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<Json<SecretOut>, ApiError> {
    let key = rotate(&state, &id).await?;
    Ok(Json(SecretOut { key }))
}
