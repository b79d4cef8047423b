//! Passing alerts on to people. The store records an alert in the same transaction as
//! the attempt that raised it; this task picks up unsent alerts, writes each to the log,
//! e-mails it to every super admin who has an address, and marks it sent. A crash
//! between sending and marking repeats an alert once; nothing loses one.
//!
//! The task never touches a delivery and the engine never waits for it, so an SMTP
//! server that is down or slow delays alerts, never webhooks. An e-mail that the server
//! does not take is tried again later, with a wait that doubles per alert. Without
//! `smtp-url` an alert is only logged.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::{SharedClock, Timestamp};
use crate::mail::{MailError, Mailer};
use crate::model::{Alert, AlertDetail, AlertKind};
use crate::store::{Store, StoreError};

const POLL_INTERVAL: Duration = Duration::from_secs(1);

const BATCH: i64 = 50;

/// The wait after the first failed try to e-mail an alert; it doubles after each.
const FIRST_RETRY: Duration = Duration::from_secs(30);

/// The longest wait between two tries, so an alert goes out within the hour after the
/// SMTP server comes back.
const MAX_RETRY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("stored alert detail is unreadable: {0}")]
    Detail(#[from] serde_json::Error),
}

/// The alert task and what it needs.
pub struct AlertTask {
    store: Arc<dyn Store>,
    clock: SharedClock,
    mailer: Option<Mailer>,
    /// Where the links in e-mail point, without a trailing `/`.
    public_url: String,
    /// Alerts e-mailed but not yet marked sent because the store failed: only the
    /// marking is tried again, so a database hiccup does not repeat the e-mail.
    sent_unmarked: Mutex<HashSet<String>>,
}

impl AlertTask {
    pub fn new(
        store: Arc<dyn Store>,
        clock: SharedClock,
        mailer: Option<Mailer>,
        public_url: &str,
    ) -> AlertTask {
        AlertTask {
            store,
            clock,
            mailer,
            public_url: public_url.trim_end_matches('/').to_string(),
            sent_unmarked: Mutex::new(HashSet::new()),
        }
    }

    pub async fn run(self, cancel: CancellationToken) {
        self.announce_setup().await;
        while !cancel.is_cancelled() {
            self.pass_on_due(&cancel).await;
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }

    async fn announce_setup(&self) {
        let Some(mailer) = &self.mailer else {
            info!("no smtp-url: alerts are written to the log only");
            return;
        };
        info!(
            server = mailer.server(),
            "alert e-mail goes to super admins"
        );
        if let Ok(recipients) = self.store.super_admin_emails().await {
            if recipients.is_empty() {
                warn!("no super admin has an e-mail address: alert e-mail has no recipient");
            }
        }
    }

    async fn pass_on_due(&self, cancel: &CancellationToken) {
        let due = match self.store.unsent_alerts(self.clock.now(), BATCH).await {
            Ok(due) => due,
            Err(err) => return warn!(cause = %err, "cannot read alerts"),
        };
        for alert in due {
            if cancel.is_cancelled() {
                return;
            }
            if let Err(err) = self.pass_on(&alert, cancel).await {
                warn!(cause = %err, alert_id = %alert.id, "cannot pass an alert on");
            }
        }
    }

    async fn pass_on(&self, alert: &Alert, cancel: &CancellationToken) -> Result<(), AlertError> {
        if self.unmarked().contains(&alert.id) {
            return self.mark_sent(alert).await;
        }
        if alert.send_attempts == 0 {
            log_alert(alert);
        }
        let Some(mailer) = &self.mailer else {
            return self.mark_sent(alert).await;
        };
        let recipients = self.store.super_admin_emails().await?;
        if recipients.is_empty() {
            warn!(alert_id = %alert.id, "alert e-mail not sent: no super admin has an e-mail address");
            return self.mark_sent(alert).await;
        }
        let (subject, body) = match serde_json::from_str::<AlertDetail>(&alert.detail) {
            Ok(detail) => compose(alert, &detail, &self.public_url),
            Err(err) => {
                error!(cause = %err, alert_id = %alert.id, "alert detail unreadable; not e-mailed");
                return self.mark_sent(alert).await;
            }
        };

        let sent = tokio::select! {
            sent = mailer.send(&recipients, &subject, body) => sent,
            // Left unsent: the next start sends it.
            _ = cancel.cancelled() => return Ok(()),
        };
        match sent {
            Ok(()) => {
                info!(alert_id = %alert.id, recipients = recipients.len(), "alert e-mail sent");
                self.unmarked().insert(alert.id.clone());
                self.mark_sent(alert).await
            }
            Err(err) => self.postpone(alert, &err).await,
        }
    }

    async fn mark_sent(&self, alert: &Alert) -> Result<(), AlertError> {
        self.store
            .mark_alert_sent(&alert.id, self.clock.now())
            .await?;
        self.unmarked().remove(&alert.id);
        Ok(())
    }

    fn unmarked(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.sent_unmarked.lock().expect("alert set lock")
    }

    async fn postpone(&self, alert: &Alert, err: &MailError) -> Result<(), AlertError> {
        let wait = retry_delay(alert.send_attempts);
        let retry_at = self.clock.now() + chrono::Duration::from_std(wait).unwrap_or_default();
        warn!(
            cause = %err,
            alert_id = %alert.id,
            retry_at = %retry_at,
            "alert e-mail not sent; will try again"
        );
        self.store
            .postpone_alert(&alert.id, &err.to_string(), retry_at)
            .await?;
        Ok(())
    }
}

fn log_alert(alert: &Alert) {
    warn!(
        kind = %alert.kind,
        endpoint_id = %alert.endpoint_id,
        detail = %alert.detail,
        "endpoint alert"
    );
}

/// The wait before the next try after `failed_before` earlier failures and this one.
pub fn retry_delay(failed_before: i64) -> Duration {
    let doublings = u32::try_from(failed_before.clamp(0, 16)).unwrap_or(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// The subject and plain-text body of an alert's e-mail.
pub fn compose(alert: &Alert, detail: &AlertDetail, public_url: &str) -> (String, String) {
    let name = one_line(&detail.endpoint_name);
    let history = format!("{public_url}/endpoints/{}", alert.endpoint_id);
    let facts = facts(detail, &history);
    match AlertKind::parse(&alert.kind) {
        Some(AlertKind::EndpointRecovered) => (
            format!("[Herald] Endpoint \"{name}\" has recovered"),
            format!(
                "The endpoint \"{name}\" is answering again: an attempt succeeded at\n\
                 {}.\n\n{facts}\n\
                 Deliveries that failed during the outage are not sent again by\n\
                 themselves: resend them from the Event History.\n",
                time(Some(detail.at))
            ),
        ),
        _ => (
            format!("[Herald] Endpoint \"{name}\" is failing"),
            format!(
                "Herald has been failing to deliver webhooks to the endpoint \"{name}\"\n\
                 for a whole retry window: a delivery has now failed for good.\n\n{facts}\n\
                 Herald goes on retrying the pending deliveries and sends one more\n\
                 e-mail when the endpoint answers again. Failed deliveries are not\n\
                 sent again by themselves: resend them from the Event History once\n\
                 the endpoint works.\n"
            ),
        ),
    }
}

fn facts(detail: &AlertDetail, history: &str) -> String {
    format!(
        "Endpoint:           {}\n\
         URL:                {}\n\
         Failing since:      {}\n\
         Failed deliveries:  {}\n\
         Still pending:      {}\n\
         Last reply:         {}\n\n\
         Event History:\n{history}\n",
        one_line(&detail.endpoint_name),
        detail.endpoint_url,
        time(detail.failing_since),
        detail.failed_deliveries,
        detail.pending_deliveries,
        last_reply(detail),
    )
}

fn last_reply(detail: &AlertDetail) -> String {
    match (detail.last_status, &detail.last_error) {
        (Some(status), Some(error)) => format!("status {status} ({error})"),
        (Some(status), None) => format!("status {status}"),
        (None, Some(error)) => format!("no reply: {error}"),
        (None, None) => "none".to_string(),
    }
}

fn time(at: Option<Timestamp>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// An endpoint name as one line of text; names are the API's to limit, not ours.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_between_tries_doubles_up_to_an_hour() {
        let waits: Vec<u64> = (0..9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_delay(1000).as_secs(), 3600);
    }

    #[test]
    fn the_last_reply_names_the_status_and_the_error() {
        let mut detail = AlertDetail {
            endpoint_name: "billing\nsync".to_string(),
            endpoint_url: "https://billing.example.com/hook".to_string(),
            failing_since: None,
            failed_deliveries: 2,
            pending_deliveries: 1,
            last_status: Some(503),
            last_error: Some("http_status: status 503".to_string()),
            at: chrono::Utc::now(),
        };
        assert_eq!(last_reply(&detail), "status 503 (http_status: status 503)");
        detail.last_status = None;
        assert_eq!(last_reply(&detail), "no reply: http_status: status 503");
        let alert = Alert {
            id: "alr_1".to_string(),
            kind: "endpoint_failing".to_string(),
            endpoint_id: "ep_1".to_string(),
            created_at: detail.at,
            detail: String::new(),
            sent_at: None,
            send_attempts: 0,
            last_send_error: None,
            next_send_at: None,
        };
        let (subject, body) = compose(&alert, &detail, "https://h.example.com");
        assert_eq!(subject, "[Herald] Endpoint \"billing sync\" is failing");
        assert!(
            body.contains("https://h.example.com/endpoints/ep_1"),
            "{body}"
        );
        assert!(body.lines().all(|l| l.len() <= 78), "{body}");
    }
}
