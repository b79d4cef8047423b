//! Wake-ups between processes: LISTEN on one channel, NOTIFY in every transaction that
//! stores new deliveries.
//!
//! PostgreSQL delivers a notification only when its transaction commits, and folds
//! repeats within one transaction, so a batch of many events costs one notification.
//! A notification means only "look at the queue now"; it carries the name of the
//! process that sent it, and a process passes over its own, since it wakes its engine
//! itself when it stores work. Whatever a lost notification would have said, the
//! engine's own poll finds a moment later.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The channel every Herald process listens on.
pub(super) const CHANNEL: &str = "herald_wake";

/// The longest wait between two tries to listen again while the database is away.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Listens until `cancel`, turning each notification from a process other than `own`
/// (its application name) into a change of `wake`.
pub(super) async fn run(
    pool: PgPool,
    own: String,
    wake: watch::Sender<()>,
    cancel: CancellationToken,
) {
    let mut retry = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        let listened = tokio::select! {
            result = listen(&pool, &own, &wake, &mut retry) => result,
            _ = cancel.cancelled() => return,
        };
        if let Err(err) = listened {
            warn!(cause = %err, retry_in_ms = retry.as_millis() as u64, "cannot listen for wake-ups from other processes");
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = cancel.cancelled() => return,
            }
            retry = (retry * 2).min(MAX_RETRY);
        }
    }
}

/// Receives notifications on one connection until it fails.
async fn listen(
    pool: &PgPool,
    own: &str,
    wake: &watch::Sender<()>,
    retry: &mut Duration,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    debug!("listening for wake-ups from other processes");
    *retry = Duration::from_millis(100);
    // Anything may have been committed while nobody listened.
    wake.send_replace(());
    loop {
        match listener.try_recv().await? {
            Some(notification) if notification.payload() == own => {}
            Some(_) => {
                wake.send_replace(());
            }
            None => {
                // The connection broke and the listener has made a new one; what was
                // sent in between is lost, so look at the queue now.
                warn!("the connection that listens for wake-ups was lost and made again");
                wake.send_replace(());
            }
        }
    }
}
