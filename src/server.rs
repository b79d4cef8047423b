//! Starting and stopping `herald serve`: open the store, run migrations, create the
//! first super admin and its token, then run the API, the delivery engine, retention
//! and the alert task together under one cancellation token (and, on a shared store,
//! the task that passes other processes' wake-ups to the engine).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alerts::AlertTask;
use crate::api::{self, AppState};
use crate::auth::{self, SignIn};
use crate::clock::SharedClock;
use crate::engine::Engine;
use crate::mail::Mailer;
use crate::secrets::SecretBox;
use crate::settings::Settings;
use crate::store::{PostgresStore, SqliteStore, Store};

/// A running server; dropping it does not stop it, [`Server::shutdown`] does.
pub struct Server {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub engine: Arc<Engine>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Creates the data directory, readable by its owner only: it holds the database, with
/// payloads, e-mail addresses and token hashes, and the secret key. A directory that
/// exists already keeps the mode its owner gave it.
pub fn create_data_dir(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create data directory {}", path.display()))
}

pub async fn start(settings: Settings, clock: SharedClock) -> anyhow::Result<Server> {
    create_data_dir(&settings.data_dir)?;
    if settings.dev {
        warn!("development mode: sending to loopback and private networks and over plain http is allowed");
    }

    let store = open_store(&settings).await?;
    create_initial_token(store.as_ref(), &settings, &clock).await?;
    let released = store.release_orphaned_leases().await?;
    if released > 0 {
        info!(
            released,
            "released claims left by the previous run; those deliveries will be attempted again"
        );
    }

    let secrets = Arc::new(open_secret_box(&settings)?);
    let engine = Engine::new(
        store.clone(),
        clock.clone(),
        settings.delivery.clone(),
        secrets,
    );
    let alerts = AlertTask::new(
        store.clone(),
        clock.clone(),
        mailer(&settings)?,
        &settings.public_url,
    );
    let sign_in = SignIn::new(store.clone(), clock.clone(), auth::Limits::default()).await;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let state = AppState {
        store: store.clone(),
        engine: engine.clone(),
        clock: clock.clone(),
        settings: Arc::new(settings),
        sign_in: Arc::new(sign_in),
        tokens: Arc::default(),
    };

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(engine.clone().run(cancel.clone())));
    if let Some(wakeups) = store.wakeups() {
        tasks.push(tokio::spawn(pass_on_wakeups(
            wakeups,
            engine.clone(),
            cancel.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::retention::run(
        store.clone(),
        clock.clone(),
        state.settings.retention,
        cancel.clone(),
    )));
    tasks.push(tokio::spawn(alerts.run(cancel.clone())));
    let shutdown = cancel.clone();
    tasks.push(tokio::spawn(async move {
        // The peer address is what the sign-in throttle counts per client.
        let app = crate::console::router(state.clone())
            .merge(api::router(state))
            .into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(err) = serve.await {
            warn!(cause = %err, "HTTP server stopped");
        }
    }));
    info!(address = %addr, "herald is listening");
    Ok(Server {
        addr,
        store,
        engine,
        cancel,
        tasks,
    })
}

/// Wakes the engine whenever the store reports work committed by another process.
async fn pass_on_wakeups(
    mut wakeups: tokio::sync::watch::Receiver<()>,
    engine: Arc<Engine>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            changed = wakeups.changed() => match changed {
                Ok(()) => engine.wake(),
                Err(_) => return,
            },
            _ = cancel.cancelled() => return,
        }
    }
}

impl Server {
    /// Stops taking requests and work, lets attempts in flight finish (bounded by the
    /// attempt timeout), and returns once everything has stopped.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        info!("herald stopped");
    }
}

fn open_secret_box(settings: &Settings) -> anyhow::Result<SecretBox> {
    if let Some(key) = &settings.secret_key {
        return SecretBox::from_base64(key).context("invalid secret-key setting");
    }
    let path = settings.secret_key_path();
    let (secrets, created) = SecretBox::from_key_file(&path)
        .with_context(|| format!("cannot use the secret key file {}", path.display()))?;
    if created {
        info!(path = %path.display(), "created the key that seals endpoint secrets; back it up with the database");
    }
    Ok(secrets)
}

/// Opens the configured store and brings its schema up to date: PostgreSQL for a
/// `postgres://` URL, otherwise SQLite in the data directory.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match &settings.database_url {
        Some(url) => Arc::new(open_postgres(url).await?),
        None => Arc::new(
            SqliteStore::open(&settings.data_dir)
                .await
                .with_context(|| {
                    format!(
                        "cannot open the database in {}",
                        settings.data_dir.display()
                    )
                })?,
        ),
    };
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    Ok(store)
}

async fn open_postgres(url: &str) -> anyhow::Result<PostgresStore> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        anyhow::bail!(
            "database URL '{}' is not supported: give a postgres:// URL, or none for SQLite in the data directory",
            redact(url)
        );
    }
    PostgresStore::open(url)
        .await
        .with_context(|| format!("cannot connect to the database {}", redact(url)))
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.split('@').next_back().unwrap_or(url).to_string(),
    }
}

async fn create_initial_token(
    store: &dyn Store,
    settings: &Settings,
    clock: &SharedClock,
) -> anyhow::Result<()> {
    // The token reaches the disk before it is stored, so a crash in between never leaves
    // a stored token that nobody can read; the file takes its final name only once the
    // token is stored.
    let token = auth::new_token();
    let path = settings.initial_token_path();
    let draft = path.with_extension("new");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&draft)
        .with_context(|| format!("cannot write {}", draft.display()))?;
    writeln!(file, "{token}")?;
    file.sync_all()?;
    let created = store
        .ensure_initial_admin(&auth::token_hash(&token), clock.now())
        .await?;
    let Some(user_id) = created else {
        std::fs::remove_file(&draft)?;
        return Ok(());
    };
    std::fs::rename(&draft, &path)?;
    info!(
        path = %path.display(),
        user_id = %user_id,
        "created the first super admin; its API token is in this file, readable only by its owner"
    );
    info!(
        set_email = %format!("herald user update {user_id} --email you@example.com"),
        set_password = %format!("herald user passwd {user_id}"),
        "the first super admin has no e-mail or password yet; set them to sign in and get alerts"
    );
    Ok(())
}

/// The SMTP client for alert e-mail, or `None` without `smtp-url`.
fn mailer(settings: &Settings) -> anyhow::Result<Option<Mailer>> {
    let Some(smtp) = settings.smtp()? else {
        return Ok(None);
    };
    Ok(Some(Mailer::new(&smtp, &settings.smtp_from())?))
}
