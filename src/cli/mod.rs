//! The `herald` command line. Each subcommand parses its flags and calls the library:
//! `serve` and `migrate` run the server's own code, `listen` runs a local receiver, and
//! the rest are thin clients of the HTTP API.

/// Prints a line of a command's output. A reader that went away (`herald … | head`)
/// ends the command quietly with success, as it ends other tools.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::cli::output_failed(err);
        }
    }};
}

mod client;
mod listen;
mod users;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::clock::SystemClock;
use crate::settings::{LogFormat, ServeArgs};
use client::{ApiFailure, Client, ClientArgs, EndpointClientArgs};

/// Herald: a webhook server. Events in, signed webhooks out, retried and recorded.
#[derive(Parser, Debug)]
#[command(name = "herald", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: API, delivery engine and alerts in one process
    Serve(ServeArgs),
    /// Bring the database schema up to date, then exit
    Migrate(ServeArgs),
    /// Run a local receiver that prints (and verifies) every webhook it gets
    Listen(listen::ListenArgs),
    /// Create, list, show, update, delete and test endpoints
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
        #[command(flatten)]
        client: EndpointClientArgs,
    },
    /// Report an event, as a host application would
    Emit {
        #[command(flatten)]
        event: EmitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the Event History, or resend a delivery
    Deliveries {
        #[command(flatten)]
        args: DeliveriesArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the event-type catalog or register a new type
    EventTypes {
        #[command(subcommand)]
        command: EventTypeCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show recorded alerts (failing and recovered endpoints)
    Alerts {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add, list, change and remove users, and set passwords
    User {
        #[command(subcommand)]
        command: users::UserCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create, list and revoke your personal API tokens
    Token {
        #[command(subcommand)]
        command: users::TokenCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sign in with e-mail and password; prints a token that expires in 12 hours
    SignIn {
        email: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum EndpointCommand {
    /// Create an endpoint; Herald first checks that the URL answers HEAD
    Create(EndpointFieldsArgs),
    /// List endpoints, newest first
    List,
    /// Show one endpoint
    Show { id: String },
    /// Change an endpoint's fields; only the given ones change
    Update {
        id: String,
        #[command(flatten)]
        fields: EndpointFieldsArgs,
    },
    /// Delete an endpoint and everything pending for it
    Delete { id: String },
    /// Send a test webhook now and print the reply
    Test { id: String },
    /// Print the endpoint's signing secret (whsec_…)
    Secret {
        id: String,
        /// Make a new secret; the old one keeps signing for the grace period
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Args, Debug)]
struct EndpointFieldsArgs {
    /// Display name
    #[arg(long)]
    name: Option<String>,
    /// URL that receives the POSTs
    #[arg(long)]
    url: Option<String>,
    /// Event type to subscribe to (repeat for several)
    #[arg(long = "event")]
    events: Vec<String>,
    /// Create the endpoint disabled, or disable it
    #[arg(long, conflicts_with = "enable")]
    disable: bool,
    /// Enable the endpoint
    #[arg(long)]
    enable: bool,
    /// accepted (default) or per_object
    #[arg(long)]
    ordering: Option<String>,
    /// Skip the HEAD check of the URL
    #[arg(long)]
    no_verify: bool,
}

#[derive(Args, Debug)]
struct EmitArgs {
    /// Event type, like account.status
    event: String,
    /// Id of the object the event is about (a number or a string)
    #[arg(long)]
    object_id: String,
    /// The object's data, as a JSON object
    #[arg(long, default_value = "{}")]
    current: String,
    /// The object before the change, as a JSON object
    #[arg(long)]
    previous: Option<String>,
    /// When the change happened (RFC 3339); default: when Herald accepts it
    #[arg(long)]
    created_at: Option<String>,
    /// Makes a repeated emit with the same key a no-op
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct DeliveriesArgs {
    #[command(subcommand)]
    command: Option<DeliveryCommand>,
    /// Only this endpoint's deliveries
    #[arg(long)]
    endpoint: Option<String>,
    /// Only pending, succeeded or failed deliveries
    #[arg(long)]
    status: Option<String>,
    /// Only this event type
    #[arg(long)]
    event: Option<String>,
    /// How many to show
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

#[derive(Subcommand, Debug)]
enum DeliveryCommand {
    /// Show one delivery with every attempt
    Show { id: String },
    /// Send a delivery again, with a new retry window
    Resend { id: String },
}

#[derive(Subcommand, Debug)]
enum EventTypeCommand {
    /// List the catalog
    List,
    /// Register an event type of your own, like account.suspended
    Add {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

/// Parses the command line, runs the command, and maps failures to exit codes:
/// 1 for an error answer or a failed check, 2 for bad usage, 3 when the server cannot
/// be reached or started.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("herald: error: {err:#}");
            if err.downcast_ref::<ApiFailure>().is_some() {
                ExitCode::from(1)
            } else if err.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(3)
            }
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Listen(args) => listen::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Endpoint { command, client } => {
            endpoint(command, &Client::new(&client.into())?).await
        }
        Command::Emit { event, client } => emit(event, &Client::new(&client)?).await,
        Command::Deliveries { args, client } => deliveries(args, &Client::new(&client)?).await,
        Command::EventTypes { command, client } => {
            event_types(command, &Client::new(&client)?).await
        }
        Command::User { command, client } => users::user(command, &Client::new(&client)?).await,
        Command::Token { command, client } => users::token(command, &Client::new(&client)?).await,
        Command::SignIn { email, client } => {
            users::sign_in(&email, &Client::without_token(&client)?).await
        }
        Command::Alerts { client } => {
            let c = Client::new(&client)?;
            let answer = c.call(Method::GET, "/alerts?limit=100", None).await?;
            if c.json {
                print_json(&answer);
            } else {
                print_alerts(&answer);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One line per alert: what, which endpoint, when, and whether its e-mail went out.
fn print_alerts(answer: &Value) {
    let alerts = answer["data"].as_array().cloned().unwrap_or_default();
    if alerts.is_empty() {
        out!("no alerts");
    }
    for a in alerts {
        let d = &a["detail"];
        let last = match (&d["last_status"], &d["last_error"]) {
            (_, Value::String(error)) => error.clone(),
            (Value::Number(status), _) => format!("status {status}"),
            _ => String::new(),
        };
        let mail = match &a["sent_at"] {
            Value::String(at) => format!("sent {at}"),
            _ => format!("not sent yet ({} tries)", text(&a["send_attempts"])),
        };
        out!(
            "{}  {:<18} {} {}  since={} failed={} pending={} {last}  {mail}",
            text(&a["created_at"]),
            text(&a["kind"]),
            text(&d["endpoint_name"]),
            text(&d["endpoint_url"]),
            text(&d["failing_since"]),
            text(&d["failed_deliveries"]),
            text(&d["pending_deliveries"]),
        );
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = args.resolve()?;
    init_logging(settings.log_format);
    let server = crate::server::start(settings, std::sync::Arc::new(SystemClock)).await?;
    wait_for_signal().await;
    tracing::info!("shutting down: finishing attempts in flight");
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn migrate(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = args.resolve()?;
    init_logging(settings.log_format);
    if settings.database_url.is_none() {
        crate::server::create_data_dir(&settings.data_dir)?;
    }
    crate::server::open_store(&settings).await?;
    out!("database is up to date");
    Ok(ExitCode::SUCCESS)
}

fn print_json(value: &Value) {
    out!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn fields_body(f: &EndpointFieldsArgs, creating: bool) -> Value {
    let mut body = serde_json::Map::new();
    if let Some(name) = &f.name {
        body.insert("name".into(), json!(name));
    }
    if let Some(url) = &f.url {
        body.insert("url".into(), json!(url));
    }
    if creating || !f.events.is_empty() {
        body.insert("events".into(), json!(f.events));
    }
    if f.disable || f.enable {
        body.insert("enabled".into(), json!(f.enable));
    }
    if let Some(ordering) = &f.ordering {
        body.insert("ordering".into(), json!(ordering));
    }
    if f.no_verify {
        body.insert("verify".into(), json!(false));
    }
    Value::Object(body)
}

fn print_endpoint(c: &Client, e: &Value) {
    if c.json {
        return print_json(e);
    }
    out!("id:        {}", text(&e["id"]));
    out!("name:      {}", text(&e["name"]));
    out!("url:       {}", text(&e["url"]));
    out!("enabled:   {}", text(&e["enabled"]));
    let events: Vec<String> = e["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    out!("events:    {}", events.join(", "));
    out!("ordering:  {}", text(&e["ordering"]));
    out!("last sent: {}", text(&e["last_triggered_at"]));
}

async fn endpoint(command: EndpointCommand, c: &Client) -> anyhow::Result<ExitCode> {
    match command {
        EndpointCommand::Create(fields) => {
            let e = c
                .call(
                    Method::POST,
                    "/endpoints",
                    Some(&fields_body(&fields, true)),
                )
                .await?;
            print_endpoint(c, &e);
        }
        EndpointCommand::List => {
            let list = c.call(Method::GET, "/endpoints?limit=250", None).await?;
            if c.json {
                print_json(&list);
            } else {
                for e in list["data"].as_array().into_iter().flatten() {
                    let events = e["events"].as_array().map_or(0, Vec::len);
                    out!(
                        "{}  {:<24} enabled={:<5} events={:<3} {}",
                        text(&e["id"]),
                        text(&e["name"]),
                        text(&e["enabled"]),
                        events,
                        text(&e["url"])
                    );
                }
            }
        }
        EndpointCommand::Show { id } => print_endpoint(
            c,
            &c.call(Method::GET, &format!("/endpoints/{id}"), None)
                .await?,
        ),
        EndpointCommand::Update { id, fields } => {
            let path = format!("/endpoints/{id}");
            print_endpoint(
                c,
                &c.call(Method::PATCH, &path, Some(&fields_body(&fields, false)))
                    .await?,
            );
        }
        EndpointCommand::Delete { id } => {
            c.call(Method::DELETE, &format!("/endpoints/{id}"), None)
                .await?;
            out!("deleted endpoint {id}");
        }
        EndpointCommand::Test { id } => return test_endpoint(c, &id).await,
        EndpointCommand::Secret { id, rotate } => {
            let answer = if rotate {
                c.call(
                    Method::POST,
                    &format!("/endpoints/{id}/secret/rotate"),
                    None,
                )
                .await?
            } else {
                c.call(Method::GET, &format!("/endpoints/{id}/secret"), None)
                    .await?
            };
            out!("{}", text(&answer["key"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn test_endpoint(c: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let answer = c
        .call(Method::POST, &format!("/endpoints/{id}/test"), None)
        .await?;
    if c.json {
        print_json(&answer);
    } else {
        out!("success: {}", text(&answer["success"]));
        out!("status:  {}", text(&answer["status_code"]));
        if answer["error"].is_string() {
            out!("error:   {}", text(&answer["error"]));
        }
        out!("reply:   {}", text(&answer["response_body"]));
    }
    Ok(if answer["success"] == json!(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn json_arg(name: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text)
        .map_err(|err| Usage(format!("--{name} '{text}' is not valid JSON: {err}")).into())
}

/// A mistake on the command line that the argument parser cannot see, such as a flag
/// whose value must be JSON and is not; it exits with 2, like the parser's own.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

async fn emit(e: EmitArgs, c: &Client) -> anyhow::Result<ExitCode> {
    // A number only when it reads back the same, so "007" stays a string.
    let object_id = match e.object_id.parse::<i64>() {
        Ok(n) if n.to_string() == e.object_id => json!(n),
        _ => json!(e.object_id),
    };
    let mut body = json!({"event": e.event, "object_id": object_id, "current": json_arg("current", &e.current)?});
    if let Some(previous) = &e.previous {
        body["previous"] = json_arg("previous", previous)?;
    }
    if let Some(created_at) = &e.created_at {
        body["created_at"] = json!(created_at);
    }
    let headers: Vec<(&str, String)> = e
        .idempotency_key
        .iter()
        .map(|k| ("idempotency-key", k.clone()))
        .collect();
    let answer = c
        .call_with(Method::POST, "/events", Some(&body), &headers)
        .await?;
    if c.json {
        print_json(&answer);
    } else {
        let count = answer["deliveries"].as_i64().unwrap_or(0);
        let noun = if count == 1 { "delivery" } else { "deliveries" };
        out!("accepted event {} ({count} {noun})", text(&answer["id"]));
    }
    Ok(ExitCode::SUCCESS)
}

async fn deliveries(args: DeliveriesArgs, c: &Client) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(DeliveryCommand::Show { id }) => {
            let d = c
                .call(Method::GET, &format!("/deliveries/{id}"), None)
                .await?;
            print_delivery(c, &d);
        }
        Some(DeliveryCommand::Resend { id }) => {
            let d = c
                .call(Method::POST, &format!("/deliveries/{id}/resend"), None)
                .await?;
            out!("delivery {} is pending again", text(&d["id"]));
        }
        None => {
            let mut query = vec![format!("limit={}", args.limit)];
            for (name, value) in [("status", &args.status), ("event", &args.event)] {
                if let Some(value) = value {
                    query.push(format!("{name}={}", urlencode(value)));
                }
            }
            // One endpoint's Event History is its own route, which answers 404 for an
            // endpoint that does not exist rather than an empty list.
            let list_path = match &args.endpoint {
                Some(id) => format!("/endpoints/{}/deliveries", urlencode(id)),
                None => "/deliveries".to_string(),
            };
            let list = c
                .call(
                    Method::GET,
                    &format!("{list_path}?{}", query.join("&")),
                    None,
                )
                .await?;
            if c.json {
                print_json(&list);
            } else {
                for d in list["data"].as_array().into_iter().flatten() {
                    let test = if d["test"] == json!(true) {
                        " (test)"
                    } else {
                        ""
                    };
                    out!(
                        "{}  {:<9} {:<24} attempts={:<3} created={}{test}",
                        text(&d["id"]),
                        text(&d["status"]),
                        text(&d["event"]),
                        text(&d["attempt_count"]),
                        text(&d["created_at"])
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every item of a list, page after page.
async fn all_pages(c: &Client, path: &str) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_path = match &cursor {
            Some(cursor) => format!("{path}?limit=250&cursor={}", urlencode(cursor)),
            None => format!("{path}?limit=250"),
        };
        let page = c.call(Method::GET, &page_path, None).await?;
        items.extend(page["data"].as_array().into_iter().flatten().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Ok(items),
        }
    }
}

/// Ends the process after its output could not be written.
fn output_failed(err: std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("herald: cannot write the output: {err}");
    std::process::exit(1);
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn print_delivery(c: &Client, d: &Value) {
    if c.json {
        return print_json(d);
    }
    out!(
        "delivery {}  {}  event {} ({})",
        text(&d["id"]),
        text(&d["status"]),
        text(&d["event_id"]),
        text(&d["event"])
    );
    out!(
        "endpoint {}  created {}  next attempt {}",
        text(&d["endpoint_id"]),
        text(&d["created_at"]),
        text(&d["next_attempt_at"])
    );
    out!("payload: {}", d["payload"]);
    for (n, a) in d["attempts"].as_array().into_iter().flatten().enumerate() {
        let outcome = if a["error"].is_string() {
            text(&a["error"])
        } else {
            format!("status {}", text(&a["status_code"]))
        };
        out!(
            "  #{} {} {}ms {}",
            n + 1,
            text(&a["attempted_at"]),
            text(&a["duration_ms"]),
            outcome
        );
        if let Some(headers) = a["response_headers"].as_object() {
            for (name, value) in headers {
                out!("     {name}: {}", text(value));
            }
        }
        if let Some(body) = a["response_body"].as_str().filter(|b| !b.is_empty()) {
            let more = if a["response_truncated"] == json!(true) {
                " (the first 64 KiB)"
            } else {
                ""
            };
            out!("     body{more}: {body}");
        } else if a["response_body_dropped"] == json!(true) {
            out!("     body: not kept (only the first and the latest replies keep theirs)");
        }
    }
}

async fn event_types(command: EventTypeCommand, c: &Client) -> anyhow::Result<ExitCode> {
    match command {
        EventTypeCommand::List => {
            let types = all_pages(c, "/event-types").await?;
            if c.json {
                print_json(&json!({"data": types, "next_cursor": null}));
            } else {
                for t in &types {
                    out!("{:<28} {}", text(&t["name"]), text(&t["description"]));
                }
            }
        }
        EventTypeCommand::Add { name, description } => {
            let answer = c
                .call(
                    Method::POST,
                    "/event-types",
                    Some(&json!({"name": name, "description": description})),
                )
                .await?;
            out!("registered event type {}", text(&answer["name"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}
