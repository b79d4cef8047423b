//! Console sessions, sign-in and the CSRF check.
//!
//! A session is an opaque random id in an `HttpOnly`, `SameSite=Lax` cookie; the store
//! keeps only its SHA-256 hash, with the user and a per-session CSRF token. Every
//! console request but the sign-in page passes [`require_session`], which loads the
//! session and, on a POST, refuses the request unless its `csrf` form field equals the
//! session's token and its `Origin` (when the browser sends one) is this server.
//!
//! Who may sign in is decided by [`authenticate`], which is the API's own check of an
//! e-mail and a password (`auth::SignIn`), throttle included; the console then starts a
//! session where the API would issue a token.

use std::net::IpAddr;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use tracing::info;

use super::form::FormData;
use super::views;
use crate::api::AppState;
use crate::auth::{AuthError, SIGN_IN_LIFETIME};
use crate::model::{ConsoleSession, User};
use crate::payload::hex_sha256;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "herald_session";

/// How long a session lasts from sign-in: as long as the API's sign-in token.
pub const SESSION_LIFETIME: std::time::Duration = SIGN_IN_LIFETIME;

/// The largest console form accepted; an endpoint with every event type fits easily.
const MAX_FORM_BYTES: usize = 256 * 1024;

/// What sign-in asks for: the same e-mail and password as `POST /api/v1/sign-in`.
pub struct Credentials {
    pub email: String,
    pub password: String,
    /// Where the request came from; failures are throttled per client too.
    pub client: IpAddr,
}

/// The user the credentials belong to, checked by the same code, and under the same
/// throttle, as the API's sign-in.
pub async fn authenticate(state: &AppState, credentials: &Credentials) -> Result<User, AuthError> {
    state
        .sign_in
        .authenticate(
            &credentials.email,
            &credentials.password,
            credentials.client,
        )
        .await
}

/// Starts a session for the user and returns the cookie that carries it.
pub async fn start(state: &AppState, user_id: &str) -> Result<HeaderValue, crate::api::ApiError> {
    let id = random_token();
    let now = state.clock.now();
    let lifetime = chrono::Duration::from_std(SESSION_LIFETIME).expect("lifetime in range");
    let session = ConsoleSession {
        id_hash: hex_sha256(id.as_bytes()),
        user_id: user_id.to_string(),
        user_name: String::new(),
        csrf_token: random_token(),
        created_at: now,
        expires_at: now + lifetime,
    };
    state.store.create_session(&session, now).await?;
    info!(user_id, "console sign-in");
    Ok(cookie(state, &id, SESSION_LIFETIME.as_secs()))
}

/// Ends the session and returns a cookie that clears it in the browser.
pub async fn end(
    state: &AppState,
    session: &ConsoleSession,
) -> Result<HeaderValue, crate::api::ApiError> {
    state.store.delete_session(&session.id_hash).await?;
    info!(user_id = %session.user_id, "console sign-out");
    Ok(cookie(state, "", 0))
}

fn cookie(state: &AppState, value: &str, max_age: u64) -> HeaderValue {
    // Lax rather than Strict: a link to an Event History in an alert e-mail should open
    // the page, not the sign-in form. Every change is a POST, which Lax does not send
    // from other sites, and which must carry the CSRF token as well.
    let secure = if state.settings.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let text =
        format!("{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&text).expect("cookie is ASCII")
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// Whether the request's `Origin`, when present, is this server. Browsers send it on
/// every POST; a form on another site that posts here names that site.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host == Some(host)
}

/// Compares without stopping at the first difference, so timing tells nothing about
/// how much of a guessed token was right.
fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Loads the session or sends the browser to sign in; on a POST, also checks the
/// origin and the CSRF token, and hands the parsed form to the handler.
pub async fn require_session(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let now = state.clock.now();
    let session = match session_id(request.headers()) {
        Some(id) => state.store.session(&hex_sha256(id.as_bytes()), now).await,
        None => Ok(None),
    };
    let session = match session {
        Ok(Some(session)) => session,
        Ok(None) => return to_sign_in(&request),
        Err(err) => return views::error_page(crate::api::ApiError::from(err)),
    };

    let (mut parts, body) = request.into_parts();
    if parts.method == Method::POST {
        if !same_origin(&parts.headers) {
            return forbidden("the form was sent from another site");
        }
        let Ok(bytes) = to_bytes(body, MAX_FORM_BYTES).await else {
            return views::message_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
        };
        let form = FormData::parse(&bytes);
        let token_ok = form
            .get("csrf")
            .is_some_and(|token| tokens_equal(token, &session.csrf_token));
        if !token_ok {
            return forbidden("the form's CSRF token is missing or not this session's");
        }
        parts.extensions.insert(form);
        parts.extensions.insert(session);
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    }
    parts.extensions.insert(session);
    next.run(Request::from_parts(parts, body)).await
}

fn forbidden(why: &'static str) -> Response {
    info!(reason = why, "console POST refused");
    views::message_page(
        StatusCode::FORBIDDEN,
        "This form did not come from this console session. Reload the page and try again.",
    )
}

fn to_sign_in(request: &Request) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let next = if request.method() == Method::GET {
        target
    } else {
        "/"
    };
    let location = format!(
        "/sign-in?next={}",
        url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
    );
    Redirect::to(&location).into_response()
}

/// A `next` target that stays on this server: a path, never `//host` or a full URL.
/// Browsers drop tabs and line breaks from a URL and read `\` as `/`, so a path with
/// either could still name another host.
pub fn safe_next(next: Option<&str>) -> String {
    let on_this_server = |path: &str| {
        path.starts_with('/')
            && !path.starts_with("//")
            && !path.contains('\\')
            && !path.chars().any(|c| c.is_control() || c.is_whitespace())
    };
    match next {
        Some(path) if on_this_server(path) => path.to_string(),
        _ => super::HOME.to_string(),
    }
}

/// The `Set-Cookie` header with `value`.
pub fn with_cookie(mut response: Response, value: HeaderValue) -> Response {
    response.headers_mut().append(SET_COOKIE, value);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_targets_stay_on_this_server() {
        assert_eq!(safe_next(Some("/settings")), "/settings");
        let outside = [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "/\t/evil.example/",
            "/\n/evil.example/",
            "x",
        ];
        for outside in outside {
            assert_eq!(safe_next(Some(outside)), super::super::HOME, "{outside}");
        }
        assert_eq!(safe_next(None), super::super::HOME);
    }

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
        assert!(!tokens_equal("", "a"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; herald_session=xyz; b=2"),
        );
        assert_eq!(session_id(&headers), Some("xyz"));
        headers.insert(COOKIE, HeaderValue::from_static("herald_session="));
        assert_eq!(session_id(&headers), None);
    }

    #[test]
    fn only_this_servers_origin_may_post() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("127.0.0.1:7070"));
        assert!(same_origin(&headers));
        headers.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:7070"));
        assert!(same_origin(&headers));
        headers.insert(ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&headers));
        headers.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers));
    }
}
