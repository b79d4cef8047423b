//! One endpoint's page: its details, the test webhook's result, its secret, and its
//! Event History with the side panel for one delivery; resend and recover.
//!
//! The history is read through `api::deliveries::history`, so its filters and paging
//! follow the API's rules, and resend and recover call the API's functions.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use serde::Deserialize;

use super::form::FormData;
use super::views::{self, DialogView, EndpointView, Layout, PagePath, TimeView, TriggerView};
use crate::api::deliveries::{self as api, headers_object, DeliveryQuery};
use crate::api::endpoints::{self as endpoints_api, TestOut};
use crate::api::{ApiError, AppState};
use crate::model::{AttemptRecord, ConsoleSession, Delivery};

/// How many deliveries one page of the Event History shows.
const HISTORY_PAGE: &str = "25";

/// The endpoint page's query: the history's filters and page, the delivery open in the
/// side panel, and what to show after a redirect.
#[derive(Deserialize, Default)]
pub struct HistoryQuery {
    pub status: Option<String>,
    pub event: Option<String>,
    pub cursor: Option<String>,
    pub delivery: Option<String>,
    pub edit: Option<String>,
    pub notice: Option<String>,
    pub count: Option<i64>,
}

impl HistoryQuery {
    /// A link to this page with the same filters and `delivery` open (or none).
    fn link(&self, base: &str, cursor: Option<&str>, delivery: Option<&str>) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        let fields = [
            ("status", self.status.as_deref()),
            ("event", self.event.as_deref()),
            ("cursor", cursor),
            ("delivery", delivery),
        ];
        for (name, value) in fields {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                query.append_pair(name, value);
            }
        }
        let query = query.finish();
        if query.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{query}")
        }
    }

    fn filter(&self) -> DeliveryQuery {
        let blank_is_none = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        DeliveryQuery {
            limit: Some(HISTORY_PAGE.to_string()),
            cursor: blank_is_none(&self.cursor),
            status: blank_is_none(&self.status),
            event: blank_is_none(&self.event),
            endpoint: None,
        }
    }
}

/// What a notice code in a redirect's query says. Codes, not text, travel in the URL, so
/// a link cannot make the console say something it did not.
pub fn notice_text(code: &str, count: Option<i64>) -> Option<String> {
    let text = match code {
        "created" => "The endpoint was created.".to_string(),
        "saved" => "The endpoint was saved.".to_string(),
        "enabled" => "The endpoint was enabled.".to_string(),
        "disabled" => "The endpoint was disabled; its pending deliveries wait.".to_string(),
        "deleted" => "The endpoint was deleted.".to_string(),
        "resent" => "The delivery was resent.".to_string(),
        "recovered" => match count.unwrap_or(0) {
            1 => "1 failed delivery was resent.".to_string(),
            n => format!("{n} failed deliveries were resent."),
        },
        _ => return None,
    };
    Some(text)
}

/// What only a POST shows on the endpoint page.
#[derive(Default)]
pub struct Extras {
    pub dialog: Option<DialogView>,
    pub test: Option<TestView>,
    pub secret: Option<SecretView>,
    pub notice: Option<String>,
    pub recover_error: Option<String>,
}

pub struct TestView {
    pub success: bool,
    pub status_code: Option<u16>,
    pub body: Option<String>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

impl From<TestOut> for TestView {
    fn from(out: TestOut) -> TestView {
        TestView {
            success: out.success,
            status_code: out.status_code,
            body: out.response_body,
            error: out.error,
            duration_ms: out.duration_ms,
        }
    }
}

pub struct SecretView {
    pub key: String,
    pub rotated: bool,
}

pub struct DeliveryRow {
    pub event: String,
    pub test: bool,
    pub object_id: String,
    pub status: &'static str,
    pub attempts: i64,
    pub created: TimeView,
    pub last_attempt: Option<TimeView>,
    pub panel_href: String,
    pub open: bool,
}

/// The side panel: one delivery, its payload and every attempt.
pub struct PanelView {
    pub id: String,
    pub event_id: String,
    pub event: String,
    pub test: bool,
    pub object_id: String,
    pub status: &'static str,
    pub created: TimeView,
    pub next_attempt: Option<TimeView>,
    pub payload: String,
    pub attempts: Vec<AttemptView>,
    pub close_href: String,
    pub resend_action: String,
}

pub struct AttemptView {
    pub number: usize,
    pub at: TimeView,
    pub duration_ms: i64,
    pub status_code: Option<i64>,
    pub success: bool,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub truncated: bool,
    pub dropped: bool,
    pub error: Option<String>,
}

impl AttemptView {
    fn new(number: usize, a: AttemptRecord) -> AttemptView {
        let headers = headers_object(&a.response_headers)
            .into_iter()
            .map(|(name, value)| (name, value.as_str().unwrap_or_default().to_string()))
            .collect();
        AttemptView {
            number,
            at: views::time(&a.attempted_at),
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            success: a.error_kind.is_none(),
            headers,
            body: a.response_body,
            truncated: a.response_truncated,
            dropped: a.response_body_dropped,
            error: a.error,
        }
    }
}

/// The `object_id` of the webhook body as the host wrote it: a number or a string.
fn object_id(body: &str) -> (String, serde_json::Value) {
    let payload: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let id = match &payload["object_id"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    (id, payload)
}

#[derive(Template)]
#[template(path = "endpoint.html")]
pub struct EndpointPage {
    layout: Layout,
    endpoint: EndpointView,
    notice: Option<String>,
    test: Option<TestView>,
    secret: Option<SecretView>,
    recover_error: Option<String>,
    dialog: DialogView,
    catalog: Vec<TriggerView>,
    event_names: Vec<String>,
    status_filter: String,
    event_filter: String,
    rows: Vec<DeliveryRow>,
    history_error: Option<String>,
    older_href: Option<String>,
    newest_href: Option<String>,
    panel: Option<PanelView>,
}

pub async fn endpoint_page(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
    PagePath(id): PagePath<String>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let extras = Extras {
        notice: query
            .notice
            .as_deref()
            .and_then(|code| notice_text(code, query.count)),
        ..Extras::default()
    };
    render_endpoint(&state, &session, &id, &query, extras).await
}

/// Renders the endpoint page; every handler that stays on it ends here.
pub async fn render_endpoint(
    state: &AppState,
    session: &ConsoleSession,
    id: &str,
    query: &HistoryQuery,
    extras: Extras,
) -> Response {
    match endpoint_page_view(state, session, id, query, extras).await {
        Ok(page) => {
            let status = if page.dialog.open && page.dialog.has_errors() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::OK
            };
            views::render(status, &page)
        }
        Err(err) => views::error_page(err),
    }
}

async fn endpoint_page_view(
    state: &AppState,
    session: &ConsoleSession,
    id: &str,
    query: &HistoryQuery,
    extras: Extras,
) -> Result<EndpointPage, ApiError> {
    let endpoint = endpoints_api::get(state, id).await?;
    let outages = state.store.list_outages().await?;
    let types = state.store.list_event_types().await?;
    let view = EndpointView::new(&endpoint, &outages);
    let base = view.href.clone();

    let (rows, next_cursor, history_error) = match api::history(state, id, &query.filter()).await {
        Ok(page) => {
            let rows = page
                .items
                .into_iter()
                .map(|d| delivery_row(d, query, &base))
                .collect();
            (rows, page.next_cursor, None)
        }
        Err(err) if err.status.is_client_error() => (Vec::new(), None, Some(err.detail)),
        Err(err) => return Err(err),
    };
    let panel = match query.delivery.as_deref().filter(|d| !d.is_empty()) {
        Some(delivery_id) => Some(panel(state, id, delivery_id, query, &base).await?),
        None => None,
    };

    let mut dialog = extras.dialog.unwrap_or_else(|| DialogView::edit(&endpoint));
    dialog.open |= query.edit.is_some();
    let mut event_names: Vec<String> = types.iter().map(|t| t.name.clone()).collect();
    event_names.push(crate::catalog::TEST_EVENT.to_string());
    event_names.sort();
    Ok(EndpointPage {
        layout: Layout::new(endpoint.name.clone(), Some(session)).crumbs(3),
        endpoint: view,
        notice: extras.notice,
        test: extras.test,
        secret: extras.secret,
        recover_error: extras.recover_error,
        dialog,
        catalog: views::catalog(&types),
        event_names,
        status_filter: query.status.clone().unwrap_or_default(),
        event_filter: query.event.clone().unwrap_or_default(),
        rows,
        history_error,
        older_href: next_cursor.map(|c| query.link(&base, Some(&c), None)),
        newest_href: query
            .cursor
            .as_ref()
            .filter(|c| !c.is_empty())
            .map(|_| query.link(&base, None, None)),
        panel,
    })
}

fn delivery_row(d: Delivery, query: &HistoryQuery, base: &str) -> DeliveryRow {
    let (object_id, _) = object_id(&d.body);
    DeliveryRow {
        panel_href: query.link(base, query.cursor.as_deref(), Some(&d.id)),
        open: query.delivery.as_deref() == Some(d.id.as_str()),
        event: d.event_type,
        test: d.test,
        object_id,
        status: d.status.as_str(),
        attempts: d.attempt_count,
        created: views::time(&d.created_at),
        last_attempt: views::opt_time(d.last_attempt_at.as_ref()),
    }
}

async fn panel(
    state: &AppState,
    endpoint_id: &str,
    delivery_id: &str,
    query: &HistoryQuery,
    base: &str,
) -> Result<PanelView, ApiError> {
    let (delivery, attempts) = api::get(state, delivery_id).await?;
    if delivery.endpoint_id != endpoint_id {
        return Err(ApiError::not_found("delivery", delivery_id));
    }
    let (object_id, payload) = object_id(&delivery.body);
    let payload = serde_json::to_string_pretty(&payload).unwrap_or(delivery.body.clone());
    let mut attempts: Vec<AttemptView> = attempts
        .into_iter()
        .enumerate()
        .map(|(i, a)| AttemptView::new(i + 1, a))
        .collect();
    // The latest reply is what an operator looks for first.
    attempts.reverse();
    Ok(PanelView {
        resend_action: format!("{base}/deliveries/{}/resend", delivery.id),
        close_href: query.link(base, query.cursor.as_deref(), None),
        id: delivery.id,
        event_id: delivery.event_id,
        event: delivery.event_type,
        test: delivery.test,
        object_id,
        status: delivery.status.as_str(),
        created: views::time(&delivery.created_at),
        next_attempt: delivery
            .next_attempt_at
            .filter(|_| delivery.status == crate::model::DeliveryStatus::Pending)
            .as_ref()
            .map(views::time),
        payload,
        attempts,
    })
}

pub async fn resend(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
    PagePath((id, delivery_id)): PagePath<(String, String)>,
) -> Response {
    let result = async {
        let (delivery, _) = api::get(&state, &delivery_id).await?;
        if delivery.endpoint_id != id {
            return Err(ApiError::not_found("delivery", &delivery_id));
        }
        api::resend(&state, &delivery_id).await
    };
    match result.await {
        Ok(_) => {
            let target = format!("{}/{id}?delivery={delivery_id}&notice=resent", super::HOME);
            Redirect::to(&target).into_response()
        }
        Err(err) if err.status == StatusCode::CONFLICT => {
            let query = HistoryQuery {
                delivery: Some(delivery_id),
                ..HistoryQuery::default()
            };
            let extras = Extras {
                notice: Some(err.detail),
                ..Extras::default()
            };
            render_endpoint(&state, &session, &id, &query, extras).await
        }
        Err(err) => views::error_page(err),
    }
}

pub async fn recover(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
    Extension(form): Extension<FormData>,
    PagePath(id): PagePath<String>,
) -> Response {
    let since = form.get("since").unwrap_or_default();
    match api::recover(&state, &id, since).await {
        Ok(resent) => {
            let target = format!("{}/{id}?notice=recovered&count={resent}", super::HOME);
            Redirect::to(&target).into_response()
        }
        Err(err) if err.status == StatusCode::UNPROCESSABLE_ENTITY => {
            let extras = Extras {
                recover_error: Some(err.detail),
                ..Extras::default()
            };
            render_endpoint(&state, &session, &id, &Default::default(), extras).await
        }
        Err(err) => views::error_page(err),
    }
}
