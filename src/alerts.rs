//! Passing alerts on to people. The store records an alert in the same transaction as
//! the attempt that raised it; this task picks up unsent alerts, tells people, and marks
//! them sent, so a crash in between repeats an alert at most once and never loses one.
//!
//! Today alerts are written to the log; e-mail is not built yet.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::clock::SharedClock;
use crate::model::Alert;
use crate::store::Store;

const POLL_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(store: Arc<dyn Store>, clock: SharedClock, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        match store.unsent_alerts(50).await {
            Ok(alerts) => {
                for alert in alerts {
                    announce(&alert);
                    if let Err(err) = store.mark_alert_sent(&alert.id, clock.now()).await {
                        warn!(cause = %err, alert_id = %alert.id, "cannot mark alert as sent");
                    }
                }
            }
            Err(err) => warn!(cause = %err, "cannot read alerts"),
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = cancel.cancelled() => {}
        }
    }
}

fn announce(alert: &Alert) {
    warn!(
        kind = %alert.kind,
        endpoint_id = %alert.endpoint_id,
        detail = %alert.detail,
        "endpoint alert"
    );
}
