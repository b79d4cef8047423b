//! The event-type catalog: list it, register a type of the host's own.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::{ApiError, ApiJson, ApiQuery, AppState, ListOut, PageQuery};
use crate::catalog;
use crate::model::EventType;
use crate::store::{page, StoreError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTypeIn {
    name: String,
    #[serde(default)]
    description: String,
}

/// The catalog sorted by name; its cursor is the last name of the page before. The
/// catalog is small, so a page is cut from the whole of it, sorted here by bytes: a
/// database's collation may order names otherwise, and the cursor compares bytes.
pub async fn list_event_types(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ListOut<EventType>>, ApiError> {
    let limit = query.limit()?;
    let after = match query.cursor.as_deref() {
        Some(cursor) if catalog::split_name(cursor).is_ok() => Some(cursor),
        Some(cursor) => return Err(super::bad_cursor(cursor)),
        None => None,
    };
    let mut types = state.store.list_event_types().await?;
    types.sort_by(|a, b| a.name.cmp(&b.name));
    let after_cursor = types
        .into_iter()
        .filter(|t| after.is_none_or(|after| t.name.as_str() > after))
        .take(limit as usize + 1)
        .collect();
    let page = page(after_cursor, limit, |t: &EventType| t.name.clone());
    Ok(Json(ListOut {
        data: page.items,
        next_cursor: page.next_cursor,
    }))
}

pub async fn create_event_type(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<EventTypeIn>,
) -> Result<(StatusCode, Json<EventType>), ApiError> {
    let (trigger, action) = catalog::split_name(&input.name)
        .map_err(|e| ApiError::unprocessable("invalid_event_type", e))?;
    let event_type = EventType {
        name: input.name.clone(),
        trigger: trigger.to_string(),
        action: action.to_string(),
        // Control characters (NUL among them, which PostgreSQL refuses in text) become
        // spaces, so a description is always one line of text.
        description: input
            .description
            .trim()
            .chars()
            .take(500)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
        builtin: false,
    };
    match state.store.add_event_type(&event_type).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(event_type))),
        Err(StoreError::AlreadyExists) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!("event type '{}' is already in the catalog", input.name),
        )),
        Err(err) => Err(err.into()),
    }
}

/// Refuses event-type names that are not in the catalog, naming close matches.
pub async fn check_known(state: &AppState, names: &[String]) -> Result<(), ApiError> {
    let known = state.store.list_event_types().await?;
    for name in names {
        if !known.iter().any(|t| &t.name == name) {
            return Err(unknown_event_type(name, &known));
        }
    }
    Ok(())
}

pub fn unknown_event_type(name: &str, known: &[EventType]) -> ApiError {
    let matches = catalog::close_matches(name, known.iter().map(|t| t.name.as_str()));
    let hint = if matches.is_empty() {
        "see GET /api/v1/event-types for the catalog".to_string()
    } else {
        format!("close matches: {}", matches.join(", "))
    };
    ApiError::unprocessable(
        "unknown_event_type",
        format!("unknown event type '{name}'; {hint}"),
    )
}
