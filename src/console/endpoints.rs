//! The Webhook Endpoints page and the actions on one endpoint: create and edit (the
//! dialog), enable or disable, delete, test webhook, show and rotate the secret.
//!
//! Each action turns the form into the API's request type and calls the API's own
//! function; a refusal is shown beside the field it is about.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde::Deserialize;

use super::form::FormData;
use super::history::{self, Extras, SecretView, TestView};
use super::views::{self, DialogView, EndpointView, Layout, PagePath, TriggerView};
use crate::api::endpoints::{self as api, EndpointIn, EndpointRefused, Field};
use crate::api::{ApiError, AppState};
use crate::model::ConsoleSession;

/// How many endpoints one page of the table shows.
const PAGE_SIZE: i64 = 100;

#[derive(Template)]
#[template(path = "endpoints.html")]
pub struct EndpointsPage {
    layout: Layout,
    rows: Vec<EndpointView>,
    next_cursor: Option<String>,
    paged: bool,
    notice: Option<String>,
    dialog: DialogView,
    catalog: Vec<TriggerView>,
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    cursor: Option<String>,
    notice: Option<String>,
    new: Option<String>,
}

pub async fn list_page(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
    Query(query): Query<ListQuery>,
) -> Response {
    let mut dialog = DialogView::create();
    dialog.open = query.new.is_some();
    let notice = query
        .notice
        .as_deref()
        .and_then(|n| history::notice_text(n, None));
    render_list(&state, &session, query.cursor.as_deref(), dialog, notice).await
}

async fn render_list(
    state: &AppState,
    session: &ConsoleSession,
    cursor: Option<&str>,
    dialog: DialogView,
    notice: Option<String>,
) -> Response {
    let loaded = async {
        let page = state.store.list_endpoints(cursor, PAGE_SIZE).await?;
        let outages = state.store.list_outages().await?;
        let types = state.store.list_event_types().await?;
        Ok::<_, crate::store::StoreError>((page, outages, types))
    };
    let (page, outages, types) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return views::error_page(err.into()),
    };
    let status = if dialog.open && dialog.has_errors() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let page = EndpointsPage {
        layout: Layout::new("Webhook Endpoints", Some(session)).crumbs(3),
        rows: page
            .items
            .iter()
            .map(|e| EndpointView::new(e, &outages))
            .collect(),
        next_cursor: page.next_cursor,
        paged: cursor.is_some(),
        notice,
        dialog,
        catalog: views::catalog(&types),
    };
    views::render(status, &page)
}

/// The API request a dialog's form stands for. Every field is present: a blank name is
/// refused as blank, not as missing.
fn endpoint_in(form: &FormData) -> EndpointIn {
    EndpointIn {
        name: Some(form.get("name").unwrap_or_default().to_string()),
        url: Some(form.get("url").unwrap_or_default().to_string()),
        enabled: Some(form.checked("enabled")),
        events: Some(form.all("events")),
        ordering: form.get("ordering").map(str::to_string),
        verify: Some(form.get("verify") != Some("false")),
    }
}

/// The dialog again, with what was typed and why it was refused. An error that no field
/// of the dialog can show (an unknown endpoint, a failure inside Herald) is returned.
fn refused_dialog(
    mut dialog: DialogView,
    form: &FormData,
    refused: EndpointRefused,
) -> Result<DialogView, ApiError> {
    dialog.open = true;
    dialog.name = form.get("name").unwrap_or_default().to_string();
    dialog.url = form.get("url").unwrap_or_default().to_string();
    dialog.enabled = form.checked("enabled");
    dialog.ordering = form.get("ordering").unwrap_or("accepted").to_string();
    dialog.groups = views::group_events(&form.all("events"));
    match refused {
        EndpointRefused::Fields(errors) => {
            for (field, err) in errors.0 {
                let slot = match field {
                    Field::Name => &mut dialog.name_error,
                    Field::Url => &mut dialog.url_error,
                    Field::Events => &mut dialog.events_error,
                    Field::Ordering => &mut dialog.ordering_error,
                };
                *slot = Some(err.detail);
            }
        }
        EndpointRefused::UrlCheck(answer) => {
            dialog.url_error = Some(format!(
                "The HEAD check failed: {answer}. The receiver must answer HEAD with a \
                 status below 400."
            ));
            dialog.url_check_failed = true;
        }
        EndpointRefused::Other(err) => return Err(err),
    }
    Ok(dialog)
}

pub async fn create(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
    Extension(form): Extension<FormData>,
) -> Response {
    let input = endpoint_in(&form);
    match api::create(&state, &input).await {
        Ok(endpoint) => {
            Redirect::to(&format!("{}/{}?notice=created", super::HOME, endpoint.id)).into_response()
        }
        Err(refused) => match refused_dialog(DialogView::create(), &form, refused) {
            Ok(dialog) => render_list(&state, &session, None, dialog, None).await,
            Err(err) => views::error_page(err),
        },
    }
}

pub async fn update(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
    Extension(form): Extension<FormData>,
    PagePath(id): PagePath<String>,
) -> Response {
    let input = endpoint_in(&form);
    let refused = match api::update(&state, &id, &input).await {
        Ok(endpoint) => {
            let target = format!("{}/{}?notice=saved", super::HOME, endpoint.id);
            return Redirect::to(&target).into_response();
        }
        Err(refused) => refused,
    };
    let current = match api::get(&state, &id).await {
        Ok(current) => current,
        Err(err) => return views::error_page(err),
    };
    match refused_dialog(DialogView::edit(&current), &form, refused) {
        Ok(dialog) => {
            let extras = Extras {
                dialog: Some(dialog),
                ..Extras::default()
            };
            history::render_endpoint(&state, &session, &id, &Default::default(), extras).await
        }
        Err(err) => views::error_page(err),
    }
}

/// Enables or disables the endpoint through the same update as the API's PATCH.
pub async fn set_enabled(
    State(state): State<AppState>,
    Extension(form): Extension<FormData>,
    PagePath(id): PagePath<String>,
) -> Response {
    let enabled = form.get("enabled") == Some("true");
    let input = EndpointIn {
        enabled: Some(enabled),
        ..EndpointIn::default()
    };
    if let Err(refused) = api::update(&state, &id, &input).await {
        return views::error_page(refused.into());
    }
    let notice = if enabled { "enabled" } else { "disabled" };
    let target = match form.get("back") {
        Some("endpoint") => format!("{}/{id}?notice={notice}", super::HOME),
        _ => format!("{}?notice={notice}", super::HOME),
    };
    Redirect::to(&target).into_response()
}

#[derive(Template)]
#[template(path = "delete.html")]
pub struct DeletePage {
    layout: Layout,
    endpoint: EndpointView,
    pending: i64,
}

pub async fn confirm_delete(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
    PagePath(id): PagePath<String>,
) -> Response {
    let endpoint = match api::get(&state, &id).await {
        Ok(endpoint) => endpoint,
        Err(err) => return views::error_page(err),
    };
    let pending = match state.store.count_pending(&id).await {
        Ok(pending) => pending,
        Err(err) => return views::error_page(err.into()),
    };
    let page = DeletePage {
        layout: Layout::new(format!("Delete {}", endpoint.name), Some(&session)).crumbs(3),
        endpoint: EndpointView::new(&endpoint, &[]),
        pending,
    };
    views::render(StatusCode::OK, &page)
}

pub async fn delete(State(state): State<AppState>, PagePath(id): PagePath<String>) -> Response {
    match api::delete(&state, &id).await {
        Ok(()) => Redirect::to(&format!("{}?notice=deleted", super::HOME)).into_response(),
        Err(err) => views::error_page(err),
    }
}

pub async fn send_test(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
    PagePath(id): PagePath<String>,
) -> Response {
    let result = match api::send_test(&state, &id).await {
        Ok(result) => result,
        Err(err) => return views::error_page(err),
    };
    let extras = Extras {
        test: Some(TestView::from(result)),
        ..Extras::default()
    };
    history::render_endpoint(&state, &session, &id, &Default::default(), extras).await
}

pub async fn show_secret(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
    PagePath(id): PagePath<String>,
) -> Response {
    let key = match api::secret(&state, &id).await {
        Ok(key) => key,
        Err(err) => return views::error_page(err),
    };
    let extras = Extras {
        secret: Some(SecretView {
            key,
            rotated: false,
        }),
        ..Extras::default()
    };
    history::render_endpoint(&state, &session, &id, &Default::default(), extras).await
}

pub async fn rotate_secret(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
    PagePath(id): PagePath<String>,
) -> Response {
    let key = match api::rotate(&state, &id).await {
        Ok(key) => key,
        Err(err) => return views::error_page(err),
    };
    let extras = Extras {
        secret: Some(SecretView { key, rotated: true }),
        ..Extras::default()
    };
    history::render_endpoint(&state, &session, &id, &Default::default(), extras).await
}
