//! The Event History: deliveries with their attempts, resend, recover, and alerts.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, ListOut, PageQuery};
use crate::clock::Timestamp;
use crate::model::{AttemptRecord, Delivery, DeliveryStatus};
use crate::store::{DeliveryFilter, Page, StoreError};

/// The Event History's query: the API's `?status=&event=&limit=&cursor=`, and the
/// console's filter form.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
    pub status: Option<String>,
    pub event: Option<String>,
    pub endpoint: Option<String>,
}

#[derive(Serialize)]
pub struct DeliveryOut {
    id: String,
    event_id: String,
    endpoint_id: String,
    event: String,
    status: DeliveryStatus,
    test: bool,
    payload: Box<RawValue>,
    created_at: Timestamp,
    next_attempt_at: Option<Timestamp>,
    last_attempt_at: Option<Timestamp>,
    attempt_count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<AttemptOut>>,
}

#[derive(Serialize)]
pub struct AttemptOut {
    attempted_at: Timestamp,
    duration_ms: i64,
    status_code: Option<i64>,
    response_headers: serde_json::Map<String, serde_json::Value>,
    response_body: Option<String>,
    response_truncated: bool,
    response_body_dropped: bool,
    error_kind: Option<String>,
    error: Option<String>,
}

impl DeliveryOut {
    fn new(d: Delivery, attempts: Option<Vec<AttemptRecord>>) -> DeliveryOut {
        let payload = RawValue::from_string(d.body)
            .unwrap_or_else(|_| RawValue::from_string("null".to_string()).expect("null is JSON"));
        DeliveryOut {
            id: d.id,
            event_id: d.event_id,
            endpoint_id: d.endpoint_id,
            event: d.event_type,
            status: d.status,
            test: d.test,
            payload,
            created_at: d.created_at,
            next_attempt_at: d
                .next_attempt_at
                .filter(|_| d.status == DeliveryStatus::Pending),
            last_attempt_at: d.last_attempt_at,
            attempt_count: d.attempt_count,
            attempts: attempts.map(|list| list.into_iter().map(AttemptOut::from).collect()),
        }
    }
}

impl From<AttemptRecord> for AttemptOut {
    fn from(a: AttemptRecord) -> AttemptOut {
        AttemptOut {
            attempted_at: a.attempted_at,
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            response_headers: headers_object(&a.response_headers),
            response_body: a.response_body,
            response_truncated: a.response_truncated,
            response_body_dropped: a.response_body_dropped,
            error_kind: a.error_kind,
            error: a.error,
        }
    }
}

/// Stored headers are a list of pairs; repeated names are joined with ", ".
pub fn headers_object(stored: &str) -> serde_json::Map<String, serde_json::Value> {
    let pairs: Vec<(String, String)> = serde_json::from_str(stored).unwrap_or_default();
    let mut object = serde_json::Map::new();
    for (name, value) in pairs {
        let joined = match object.get(&name).and_then(|v| v.as_str()) {
            Some(earlier) => format!("{earlier}, {value}"),
            None => value,
        };
        object.insert(name, serde_json::Value::String(joined));
    }
    object
}

pub fn filter_from(
    query: &DeliveryQuery,
    endpoint_id: Option<String>,
) -> Result<DeliveryFilter, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(|s| {
            DeliveryStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("status '{s}' must be pending, succeeded or failed"),
                )
            })
        })
        .transpose()?;
    if let Some(cursor) = query
        .cursor
        .as_deref()
        .filter(|c| c.parse::<i64>().map_or(true, |n| n < 1))
    {
        return Err(super::bad_cursor(cursor));
    }
    Ok(DeliveryFilter {
        endpoint_id,
        status,
        event_type: query.event.clone(),
        cursor: query.cursor.clone(),
        limit: PageQuery::limit_of(query.limit.as_deref())?,
    })
}

fn list_out(page: Page<Delivery>) -> ListOut<DeliveryOut> {
    let data = page
        .items
        .into_iter()
        .map(|d| DeliveryOut::new(d, None))
        .collect();
    ListOut {
        data,
        next_cursor: page.next_cursor,
    }
}

/// One page of an endpoint's Event History, newest first.
pub async fn history(
    state: &AppState,
    endpoint_id: &str,
    query: &DeliveryQuery,
) -> Result<Page<Delivery>, ApiError> {
    state
        .store
        .get_endpoint(endpoint_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("endpoint", endpoint_id),
            other => other.into(),
        })?;
    let filter = filter_from(query, Some(endpoint_id.to_string()))?;
    Ok(state.store.list_deliveries(&filter).await?)
}

pub async fn list_endpoint_deliveries(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> Result<Json<ListOut<DeliveryOut>>, ApiError> {
    let page = history(&state, &id, &query).await?;
    Ok(Json(list_out(page)))
}

pub async fn list_deliveries(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> Result<Json<ListOut<DeliveryOut>>, ApiError> {
    let filter = filter_from(&query, query.endpoint.clone())?;
    let page = state.store.list_deliveries(&filter).await?;
    Ok(Json(list_out(page)))
}

fn delivery_not_found(id: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |err| match err {
        StoreError::NotFound => ApiError::not_found("delivery", id),
        StoreError::InFlight => ApiError::new(
            StatusCode::CONFLICT,
            "delivery_in_flight",
            format!("delivery '{id}' is being attempted now; resend it once the attempt ends"),
        ),
        other => other.into(),
    }
}

/// One delivery with its attempts, oldest first.
pub async fn get(state: &AppState, id: &str) -> Result<(Delivery, Vec<AttemptRecord>), ApiError> {
    state
        .store
        .get_delivery(id)
        .await
        .map_err(delivery_not_found(id))
}

/// Puts a delivery back to pending, due now, and wakes the engine.
pub async fn resend(state: &AppState, id: &str) -> Result<Delivery, ApiError> {
    let delivery = state
        .store
        .resend_delivery(id, state.clock.now())
        .await
        .map_err(delivery_not_found(id))?;
    state.engine.wake();
    Ok(delivery)
}

/// Resends every failed delivery of the endpoint created at or after `since`, an RFC
/// 3339 time. Returns how many were resent.
pub async fn recover(state: &AppState, endpoint_id: &str, since: &str) -> Result<i64, ApiError> {
    let since = chrono::DateTime::parse_from_rfc3339(since)
        .map_err(|_| {
            ApiError::unprocessable(
                "invalid_field",
                format!("since '{since}' is not an RFC 3339 time like 2026-01-02T03:04:05Z"),
            )
        })?
        .with_timezone(&chrono::Utc);
    let resent = state
        .store
        .resend_failed_since(endpoint_id, since, state.clock.now())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("endpoint", endpoint_id),
            other => other.into(),
        })?;
    state.engine.wake();
    Ok(resent)
}

pub async fn get_delivery(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<Json<DeliveryOut>, ApiError> {
    let (delivery, attempts) = get(&state, &id).await?;
    Ok(Json(DeliveryOut::new(delivery, Some(attempts))))
}

pub async fn resend_delivery(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
) -> Result<(StatusCode, Json<DeliveryOut>), ApiError> {
    let delivery = resend(&state, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryOut::new(delivery, None))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverIn {
    since: String,
}

pub async fn recover_endpoint(
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
    ApiJson(input): ApiJson<RecoverIn>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let resent = recover(&state, &id, &input.since).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "resent": resent })),
    ))
}

pub async fn list_alerts(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let alerts = state
        .store
        .list_alerts(query.id_cursor("alr")?, query.limit()?)
        .await?;
    let data: Vec<serde_json::Value> = alerts
        .items
        .into_iter()
        .map(|a| {
            serde_json::json!({
                "id": a.id,
                "kind": a.kind,
                "endpoint_id": a.endpoint_id,
                "created_at": a.created_at,
                "detail": serde_json::from_str::<serde_json::Value>(&a.detail).unwrap_or_default(),
                "sent_at": a.sent_at,
                "send_attempts": a.send_attempts,
                "last_send_error": a.last_send_error,
                "next_send_at": a.next_send_at,
            })
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "data": data, "next_cursor": alerts.next_cursor }),
    ))
}
