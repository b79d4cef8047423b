//! The API client the CLI commands use: finds the server and the token, sends one
//! request, and turns an error answer into a message naming its code and detail.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Herald's base URL
    #[arg(
        long,
        env = "HERALD_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub url: String,
    #[command(flatten)]
    pub rest: ClientRest,
}

/// The client flags of `herald endpoint`, whose `--url` is the endpoint's URL; there the
/// server is given with `--server` (or `HERALD_URL`).
#[derive(Args, Debug, Clone)]
pub struct EndpointClientArgs {
    /// Herald's base URL
    #[arg(
        long = "server",
        env = "HERALD_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub server: String,
    #[command(flatten)]
    pub rest: ClientRest,
}

impl From<EndpointClientArgs> for ClientArgs {
    fn from(args: EndpointClientArgs) -> ClientArgs {
        ClientArgs {
            url: args.server,
            rest: args.rest,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ClientRest {
    /// API token; without one, the local data directory's initial token is used
    #[arg(long, env = "HERALD_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory to read the initial token from
    #[arg(
        long = "data-dir",
        env = "HERALD_DATA_DIR",
        default_value = "herald-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Print the API's JSON answer instead of a summary
    #[arg(long, global = true)]
    pub json: bool,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `None` only for signing in, the one call that needs no token.
    token: Option<String>,
    pub json: bool,
}

/// An error answer from the server.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {code}: {detail}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub detail: String,
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let rest = &args.rest;
        let token = match &rest.token {
            Some(token) => token.clone(),
            None => read_initial_token(&rest.data_dir)?,
        };
        Ok(Client {
            token: Some(token),
            ..Client::without_token(args)?
        })
    }

    /// A client for signing in: it sends no token.
    pub fn without_token(args: &ClientArgs) -> anyhow::Result<Client> {
        Ok(Client {
            http: reqwest::Client::builder().build()?,
            base: args.url.trim_end_matches('/').to_string(),
            token: None,
            json: args.rest.json,
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        self.call_with(method, path, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach Herald at {}", self.base))?;
        let status = response.status();
        let text = response.text().await?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        Err(ApiFailure {
            status,
            code: value["code"].as_str().unwrap_or("error").to_string(),
            detail: value["detail"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string()),
        }
        .into())
    }
}

fn read_initial_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("initial-admin-token");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        anyhow!(
            "no API token: set HERALD_TOKEN or --token (no initial token at {})",
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}
