//! What the templates show: one struct per page, the shared layout, and the small
//! conversions from stored types (times, health, the event-type catalog).
//!
//! Views hold display-ready values only; they never reach the store. The layout inlines
//! the embedded CSS and JavaScript, and [`security_headers`] allows exactly those two
//! by their hashes.

use std::sync::LazyLock;

use askama::Template;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::api::ApiError;
use crate::clock::Timestamp;
use crate::model::{ConsoleSession, Endpoint, EventType};
use crate::store::Outage;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

static CONTENT_SECURITY_POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
    let hash = |text: &str| STANDARD.encode(Sha256::digest(text.as_bytes()));
    let policy = format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
         img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        hash(JS),
        hash(CSS)
    );
    HeaderValue::from_str(&policy).expect("policy is ASCII")
});

/// Adds the console's security headers. Pages can show a signing secret, so none is
/// cached.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY.clone(),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Renders a page; a template that fails to render is a bug, answered as a 500.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(err) => {
            tracing::error!(cause = %err, "console template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// The frame of every page: title, breadcrumb, who is signed in, the assets.
pub struct Layout {
    pub title: String,
    pub user_name: String,
    pub csrf: String,
    pub crumbs: Vec<Crumb>,
    pub css: &'static str,
    pub js: &'static str,
}

pub struct Crumb {
    pub label: &'static str,
    pub href: &'static str,
}

impl Layout {
    pub fn new(title: impl Into<String>, session: Option<&ConsoleSession>) -> Layout {
        Layout {
            title: title.into(),
            user_name: session.map(|s| s.user_name.clone()).unwrap_or_default(),
            csrf: session.map(|s| s.csrf_token.clone()).unwrap_or_default(),
            crumbs: Vec::new(),
            css: CSS,
            js: JS,
        }
    }

    /// Settings → Integrations → Webhook Endpoints, down to `depth` steps.
    pub fn crumbs(mut self, depth: usize) -> Layout {
        let path = [
            ("Settings", "/settings"),
            ("Integrations", "/settings/integrations"),
            ("Webhook Endpoints", super::HOME),
        ];
        self.crumbs = path
            .iter()
            .take(depth)
            .map(|&(label, href)| Crumb { label, href })
            .collect();
        self
    }

    pub fn signed_in(&self) -> bool {
        !self.csrf.is_empty()
    }
}

/// A time as the page shows it: UTC in the markup, turned into the browser's zone by the
/// script, with UTC on hover.
pub struct TimeView {
    pub iso: String,
    pub utc: String,
}

pub fn time(at: &Timestamp) -> TimeView {
    TimeView {
        iso: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        utc: at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    }
}

pub fn opt_time(at: Option<&Timestamp>) -> Option<TimeView> {
    at.map(time)
}

/// An endpoint as the table and its page show it.
pub struct EndpointView {
    pub id: String,
    pub href: String,
    pub name: String,
    pub url: String,
    pub enabled: bool,
    pub events: Vec<String>,
    pub ordering: &'static str,
    pub disabled_reason: Option<String>,
    pub last_triggered: Option<TimeView>,
    pub created: TimeView,
    /// `healthy`, `failing` or `disabled`.
    pub health: &'static str,
    pub failing_since: Option<TimeView>,
    pub last_error: Option<String>,
}

impl EndpointView {
    pub fn new(endpoint: &Endpoint, outages: &[Outage]) -> EndpointView {
        let outage = outages.iter().find(|o| o.endpoint_id == endpoint.id);
        let health = match (endpoint.enabled, outage) {
            (false, _) => "disabled",
            (true, Some(_)) => "failing",
            (true, None) => "healthy",
        };
        EndpointView {
            id: endpoint.id.clone(),
            href: format!("{}/{}", super::HOME, endpoint.id),
            name: endpoint.name.clone(),
            url: endpoint.url.clone(),
            enabled: endpoint.enabled,
            events: endpoint.events.clone(),
            ordering: endpoint.ordering.as_str(),
            disabled_reason: endpoint.disabled_reason.clone(),
            last_triggered: opt_time(endpoint.last_triggered_at.as_ref()),
            created: time(&endpoint.created_at),
            health,
            failing_since: outage
                .filter(|_| endpoint.enabled)
                .map(|o| time(&o.failing_since)),
            last_error: outage.and_then(|o| o.last_error.clone()),
        }
    }
}

/// One trigger of the catalog with its event types, for the dialog's drop-down.
pub struct TriggerView {
    pub name: String,
    pub events: Vec<CatalogEvent>,
}

pub struct CatalogEvent {
    pub name: String,
    pub action: String,
    pub description: String,
}

pub fn catalog(types: &[EventType]) -> Vec<TriggerView> {
    let mut triggers: Vec<TriggerView> = Vec::new();
    for t in types {
        let event = CatalogEvent {
            name: t.name.clone(),
            action: t.action.clone(),
            description: t.description.clone(),
        };
        match triggers.iter_mut().find(|g| g.name == t.trigger) {
            Some(group) => group.events.push(event),
            None => triggers.push(TriggerView {
                name: t.trigger.clone(),
                events: vec![event],
            }),
        }
    }
    triggers.sort_by(|a, b| a.name.cmp(&b.name));
    triggers
}

/// Chosen events grouped by trigger, as the dialog's list shows them.
pub struct EventGroup {
    pub trigger: String,
    pub events: Vec<String>,
}

pub fn group_events(events: &[String]) -> Vec<EventGroup> {
    let mut groups: Vec<EventGroup> = Vec::new();
    for event in events {
        let trigger = event.split('.').next().unwrap_or(event).to_string();
        match groups.iter_mut().find(|g| g.trigger == trigger) {
            Some(group) => group.events.push(event.clone()),
            None => groups.push(EventGroup {
                trigger,
                events: vec![event.clone()],
            }),
        }
    }
    groups
}

/// The Create / Edit Webhook Endpoint dialog, with what was typed and what was wrong.
#[derive(Default)]
pub struct DialogView {
    pub action: String,
    pub title: &'static str,
    pub submit: &'static str,
    /// Open when the page loads: the server answered a submit with errors.
    pub open: bool,
    pub name: String,
    pub url: String,
    pub enabled: bool,
    pub ordering: String,
    pub groups: Vec<EventGroup>,
    pub name_error: Option<String>,
    pub url_error: Option<String>,
    pub events_error: Option<String>,
    pub ordering_error: Option<String>,
    pub error: Option<String>,
    /// The HEAD check failed: offer to save without it.
    pub url_check_failed: bool,
}

impl DialogView {
    pub fn create() -> DialogView {
        DialogView {
            action: super::HOME.to_string(),
            title: "Create Webhook Endpoint",
            submit: "Create",
            enabled: true,
            ordering: "accepted".to_string(),
            ..DialogView::default()
        }
    }

    pub fn has_errors(&self) -> bool {
        [
            &self.name_error,
            &self.url_error,
            &self.events_error,
            &self.ordering_error,
            &self.error,
        ]
        .iter()
        .any(|e| e.is_some())
    }

    pub fn edit(endpoint: &Endpoint) -> DialogView {
        DialogView {
            action: format!("{}/{}", super::HOME, endpoint.id),
            title: "Edit Webhook Endpoint",
            submit: "Save",
            name: endpoint.name.clone(),
            url: endpoint.url.clone(),
            enabled: endpoint.enabled,
            ordering: endpoint.ordering.as_str().to_string(),
            groups: group_events(&endpoint.events),
            ..DialogView::default()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub layout: Layout,
    pub message: String,
}

/// A page that only says something (a refused form, an unknown endpoint).
pub fn message_page(status: StatusCode, message: &str) -> Response {
    let page = MessagePage {
        layout: Layout::new(
            status.canonical_reason().unwrap_or("Error").to_string(),
            None,
        ),
        message: message.to_string(),
    };
    render(status, &page)
}

/// A console page's path parameters. A path that cannot be read (an id that is not
/// UTF-8 once percent-decoded) gets the console's own page saying so, not plain text.
pub struct PagePath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for PagePath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PagePath(value)),
            Err(_) => {
                let raw: String = parts.uri.path().chars().take(200).collect();
                Err(message_page(
                    StatusCode::BAD_REQUEST,
                    &format!("The address {raw} names no page of the console."),
                ))
            }
        }
    }
}

/// An error from the shared API code that the page cannot show in place.
pub fn error_page(err: ApiError) -> Response {
    let message = if err.status.is_server_error() {
        "Something went wrong inside Herald; the cause is in the server's log.".to_string()
    } else {
        err.detail.clone()
    };
    message_page(err.status, &message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Ordering;

    fn endpoint(enabled: bool) -> Endpoint {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Endpoint {
            id: "ep_1".to_string(),
            name: "n".to_string(),
            url: "https://h.example/".to_string(),
            enabled,
            events: vec![],
            ordering: Ordering::Accepted,
            secret: String::new(),
            previous_secret: None,
            previous_secret_until: None,
            disabled_reason: None,
            created_at: at,
            updated_at: at,
            last_triggered_at: None,
        }
    }

    #[test]
    fn health_is_disabled_failing_since_or_healthy() {
        let outage = Outage {
            endpoint_id: "ep_1".to_string(),
            failing_since: chrono::DateTime::from_timestamp(1_700_000_060, 0).unwrap(),
            alerted_at: None,
            last_error: Some("http_status: status 500".to_string()),
        };
        assert_eq!(EndpointView::new(&endpoint(true), &[]).health, "healthy");
        let failing = EndpointView::new(&endpoint(true), std::slice::from_ref(&outage));
        assert_eq!(failing.health, "failing");
        assert_eq!(
            failing.failing_since.unwrap().utc,
            "2023-11-14 22:14:20 UTC"
        );
        let disabled = EndpointView::new(&endpoint(false), &[outage]);
        assert_eq!(disabled.health, "disabled");
        assert!(disabled.failing_since.is_none());
    }

    #[test]
    fn chosen_events_are_grouped_by_their_trigger() {
        let events = ["account.created", "invoice.paid", "account.service.add"].map(String::from);
        let groups = group_events(&events);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].trigger, "account");
        assert_eq!(groups[0].events, ["account.created", "account.service.add"]);
        assert_eq!(groups[1].events, ["invoice.paid"]);
    }

    #[test]
    fn times_are_utc_in_the_markup() {
        let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let view = time(&at);
        assert_eq!(view.iso, "2023-11-14T22:13:20.123Z");
        assert_eq!(view.utc, "2023-11-14 22:13:20 UTC");
    }
}
