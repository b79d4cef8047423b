//! Event ingest: `POST /api/v1/events`.
//!
//! The answer is 202 only after the event and its deliveries are committed; the engine
//! is woken after the commit, so the first attempt starts at once.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::event_types::unknown_event_type;
use super::{ApiError, AppState};
use crate::ids::new_id;
use crate::model::NewEvent;
use crate::payload::{parse_event, PayloadError};
use crate::store::StoreError;

#[derive(Serialize)]
struct AcceptedOut {
    id: String,
    deliveries: i64,
}

const MAX_IDEMPOTENCY_KEY: usize = 255;

pub async fn create_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let idempotency_key = idempotency_key(&headers)?;
    let now = state.clock.now();
    let parsed = parse_event(&body, now).map_err(|e| match e {
        PayloadError::Malformed(detail) => ApiError::bad_request("malformed_json", detail),
        PayloadError::InvalidField(detail) => ApiError::unprocessable("invalid_field", detail),
    })?;

    let event = NewEvent {
        id: new_id("evt"),
        event_type: parsed.event_type,
        object_key: parsed.object_key,
        body: parsed.body,
        accepted_at: now,
        idempotency_key,
        request_hash: parsed.request_hash,
    };
    let accepted = match state.store.insert_event(&event).await {
        Ok(accepted) => accepted,
        Err(StoreError::UnknownEventType) => {
            let known = state.store.list_event_types().await?;
            return Err(unknown_event_type(&event.event_type, &known));
        }
        Err(StoreError::IdempotencyMismatch) => {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "Idempotency-Key was already used for a different event body",
            ))
        }
        Err(err) => return Err(err.into()),
    };
    state.engine.deliveries_stored(&accepted.endpoints);

    let out = AcceptedOut {
        id: accepted.event_id,
        deliveries: accepted.deliveries,
    };
    let mut response = (StatusCode::ACCEPTED, Json(out)).into_response();
    if accepted.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "send one Idempotency-Key header, not several",
        ));
    }
    let key = value.to_str().map(str::trim).unwrap_or("");
    let printable = key.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !printable {
        let shown = String::from_utf8_lossy(value.as_bytes());
        let shown: String = shown.chars().take(40).collect();
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key {shown:?} is not 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
            ),
        ));
    }
    Ok(Some(key.to_string()))
}
