//! `herald listen`: a local receiver for trying endpoints out. It answers HEAD and POST,
//! prints each webhook, and checks its signature when given the endpoint's secret.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use clap::Args;

use crate::signing;

#[derive(Args, Debug)]
pub struct ListenArgs {
    /// Port to listen on
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// The endpoint's secret (whsec_…), to verify each webhook's signature
    #[arg(long, env = "HERALD_LISTEN_SECRET")]
    secret: Option<String>,
    /// Status to answer each POST with
    #[arg(long, default_value_t = 200)]
    status: u16,
}

pub async fn run(args: ListenArgs) -> anyhow::Result<()> {
    let status = StatusCode::from_u16(args.status)
        .map_err(|_| anyhow::anyhow!("invalid status {}", args.status))?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    out!("listening on http://{addr}/ (any path); answering POST with {status}");
    if args.secret.is_none() {
        out!("signatures are not checked: pass --secret whsec_… to check them");
    }
    let secret = args.secret.clone();
    let app = Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let secret = secret.clone();
            async move { receive(method, uri, headers, body, secret.as_deref(), status) }
        },
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn receive(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    secret: Option<&str>,
    status: StatusCode,
) -> axum::response::Response {
    if method == Method::HEAD {
        out!("HEAD {uri}: answered 200");
        return StatusCode::OK.into_response();
    }
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "herald listen answers HEAD and POST\n",
        )
            .into_response();
    }
    out!("{}", describe(&uri, &headers, &body, secret));
    (
        status,
        [("content-type", "application/json")],
        "{\"ok\":true}",
    )
        .into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The printed form of one webhook.
pub fn describe(uri: &Uri, headers: &HeaderMap, body: &[u8], secret: Option<&str>) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let event = parsed
        .as_ref()
        .and_then(|v| v["event"].as_str())
        .unwrap_or("?");
    let object = parsed
        .as_ref()
        .map(|v| v["object_id"].to_string())
        .unwrap_or_default();
    let id = header(headers, "webhook-id");
    let timestamp = header(headers, "webhook-timestamp");
    let signature = header(headers, "webhook-signature");

    let check = match secret {
        None => "not checked",
        Some(secret) if signing::verify(secret, id, timestamp, body, signature) => "verified",
        Some(_) => "DOES NOT MATCH the given secret",
    };
    let pretty = match &parsed {
        Some(value) => serde_json::to_string_pretty(value).unwrap_or_default(),
        None => String::from_utf8_lossy(body).into_owned(),
    };
    let mut lines = vec![format!("--- {event} object_id={object} POST {uri}")];
    for (name, value) in headers {
        lines.push(format!("{name}: {}", value.to_str().unwrap_or("<binary>")));
    }
    lines.push(format!("signature: {check}"));
    lines.push(pretty);
    lines.join("\n")
}
