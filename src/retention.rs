//! Retention: removes events older than the retention period, with their deliveries and
//! attempts, in small batches so the writer is never held for long. Events with a
//! delivery still pending are kept whatever their age.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::SharedClock;
use crate::engine::chrono_duration;
use crate::store::Store;

/// Events removed per transaction.
const BATCH: i64 = 500;

/// How often to look for old events, in engine time and at most in real time.
const EVERY: Duration = Duration::from_secs(60);

pub async fn run(
    store: Arc<dyn Store>,
    clock: SharedClock,
    retention: Duration,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        let now = clock.now();
        let removed = prune_all(store.as_ref(), now - chrono_duration(retention), &cancel).await;
        if removed > 0 {
            info!(
                events = removed,
                "removed events older than the retention period"
            );
        }
        tokio::select! {
            _ = clock.sleep_until(now + chrono_duration(EVERY)) => {}
            _ = tokio::time::sleep(EVERY) => {}
            _ = cancel.cancelled() => {}
        }
    }
}

async fn prune_all(
    store: &dyn Store,
    before: crate::clock::Timestamp,
    cancel: &CancellationToken,
) -> u64 {
    let mut removed = 0;
    while !cancel.is_cancelled() {
        let batch = match store.prune(before, BATCH).await {
            Ok(n) => n,
            Err(err) => {
                warn!(cause = %err, "cannot remove old events");
                break;
            }
        };
        removed += batch;
        if batch < BATCH as u64 {
            break;
        }
        // Let deliveries have the writer between batches.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    removed
}
