//! The pages around the endpoints: sign-in, sign-out, Settings and Integrations.

use askama::Template;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::session::{self, Credentials};
use super::views::{self, Layout, PagePath};
use crate::api::AppState;
use crate::auth::AuthError;
use crate::model::ConsoleSession;

#[derive(Template)]
#[template(path = "sign_in.html")]
pub struct SignInPage {
    layout: Layout,
    next: String,
    email: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

pub async fn home() -> Redirect {
    Redirect::to(super::HOME)
}

pub async fn sign_in_page(Query(query): Query<NextQuery>) -> Response {
    let page = SignInPage {
        layout: Layout::new("Sign in", None),
        next: session::safe_next(query.next.as_deref()),
        email: String::new(),
        error: None,
    };
    views::render(StatusCode::OK, &page)
}

pub async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    // There is no session to hold a CSRF token yet; the origin check keeps another
    // site from signing a browser in to an account of its choosing.
    if !session::same_origin(&headers) {
        return views::message_page(
            StatusCode::FORBIDDEN,
            "The sign-in form was sent from another site.",
        );
    }
    let next = session::safe_next(form.next.as_deref());
    let credentials = Credentials {
        email: form.email,
        password: form.password,
        client: peer.ip(),
    };
    let refused = |status: StatusCode, err: AuthError| {
        let page = SignInPage {
            layout: Layout::new("Sign in", None),
            next: next.clone(),
            email: credentials.email.clone(),
            error: Some(err.to_string()),
        };
        views::render(status, &page)
    };
    let user = match session::authenticate(&state, &credentials).await {
        Ok(user) => user,
        Err(err @ AuthError::InvalidCredentials) => return refused(StatusCode::UNAUTHORIZED, err),
        Err(err @ AuthError::Throttled(_)) => return refused(StatusCode::TOO_MANY_REQUESTS, err),
        Err(err) => return views::error_page(err.into()),
    };
    match session::start(&state, &user.id).await {
        Ok(cookie) => session::with_cookie(Redirect::to(&next).into_response(), cookie),
        Err(err) => views::error_page(err),
    }
}

/// The link in alert e-mail, `<public-url>/endpoints/<id>`, opens the Event History.
pub async fn endpoint_link(PagePath(id): PagePath<String>) -> Redirect {
    let id: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    Redirect::to(&format!("{}/{id}", super::HOME))
}

pub async fn sign_out(
    State(state): State<AppState>,
    Extension(session): Extension<ConsoleSession>,
) -> Response {
    match session::end(&state, &session).await {
        Ok(cookie) => session::with_cookie(Redirect::to("/sign-in").into_response(), cookie),
        Err(err) => views::error_page(err),
    }
}

#[derive(Template)]
#[template(path = "settings.html")]
pub struct SettingsPage {
    layout: Layout,
}

pub async fn settings(Extension(session): Extension<ConsoleSession>) -> Response {
    let page = SettingsPage {
        layout: Layout::new("Settings", Some(&session)).crumbs(1),
    };
    views::render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "integrations.html")]
pub struct IntegrationsPage {
    layout: Layout,
}

pub async fn integrations(Extension(session): Extension<ConsoleSession>) -> Response {
    let page = IntegrationsPage {
        layout: Layout::new("Integrations", Some(&session)).crumbs(2),
    };
    views::render(StatusCode::OK, &page)
}
