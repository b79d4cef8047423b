//! The web console: server-rendered HTML pages at `/` for operators.
//!
//! Settings → Integrations → Webhook Endpoints: a table of endpoints, a dialog to create
//! or edit one, and per endpoint its Event History with a side panel for one delivery.
//! Pages are askama templates, escaped by default; the CSS and the little JavaScript
//! they need are compiled into the binary and inlined, so a page loads in one round
//! trip and a strict Content-Security-Policy allows nothing else.
//!
//! The console never validates or changes anything itself: every action calls the same
//! function as the matching API route (`api::endpoints::create`, `api::deliveries::
//! resend`, …), so the two cannot disagree, and it shows that function's error beside
//! the field it names. Every page needs a signed-in session and every POST a CSRF
//! token ([`session`]).

mod endpoints;
mod form;
mod history;
mod pages;
mod session;
mod views;

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use crate::api::AppState;

/// Where the console starts: the Webhook Endpoints page.
pub const HOME: &str = "/settings/integrations/webhooks";

/// Every console route. Only the sign-in page is open without a session.
pub fn router(state: AppState) -> Router {
    let signed_in = Router::new()
        .route("/", get(pages::home))
        .route("/sign-out", post(pages::sign_out))
        .route("/endpoints/{id}", get(pages::endpoint_link))
        .route("/settings", get(pages::settings))
        .route("/settings/integrations", get(pages::integrations))
        .route(HOME, get(endpoints::list_page).post(endpoints::create))
        .route(
            "/settings/integrations/webhooks/{id}",
            get(history::endpoint_page).post(endpoints::update),
        )
        .route(
            "/settings/integrations/webhooks/{id}/enabled",
            post(endpoints::set_enabled),
        )
        .route(
            "/settings/integrations/webhooks/{id}/delete",
            get(endpoints::confirm_delete).post(endpoints::delete),
        )
        .route(
            "/settings/integrations/webhooks/{id}/test",
            post(endpoints::send_test),
        )
        .route(
            "/settings/integrations/webhooks/{id}/secret",
            post(endpoints::show_secret),
        )
        .route(
            "/settings/integrations/webhooks/{id}/secret/rotate",
            post(endpoints::rotate_secret),
        )
        .route(
            "/settings/integrations/webhooks/{id}/recover",
            post(history::recover),
        )
        .route(
            "/settings/integrations/webhooks/{id}/deliveries/{delivery}/resend",
            post(history::resend),
        )
        .layer(middleware::from_fn_with_state(
            state.clone(),
            session::require_session,
        ));

    Router::new()
        .route("/sign-in", get(pages::sign_in_page).post(pages::sign_in))
        .merge(signed_in)
        .layer(middleware::from_fn(views::security_headers))
        .with_state(state)
}
