//! The delivery engine: finds due deliveries, attempts them, records the outcome.
//!
//! A scheduler task asks the store which endpoints have due deliveries and starts one
//! lane per endpoint. A lane claims that endpoint's due deliveries in accepted order, in
//! batches that grow while the endpoint answers, and sends them one at a time, so an
//! answering endpoint sees its events in order and one slow endpoint holds up only its
//! own lane. The store is the queue; the engine keeps only
//! the set of running lanes in memory. The engine never answers an HTTP request and
//! never holds a database transaction across an attempt.

pub mod attempt;
pub mod egress;
mod lanes;
mod pacing;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::catalog::TEST_EVENT;
use crate::clock::{SharedClock, Timestamp};
use crate::ids::new_id;
use crate::model::{AfterAttempt, Attempt, Delivery, ErrorKind, NewEvent};
use crate::payload::{format_time, hex_sha256};
use crate::secrets::SecretBox;
use crate::settings::{DeliverySettings, RetrySchedule};
use crate::signing;
use crate::store::{AttemptOutcome, ClaimRequest, Claimed, RecordedMany, Store, StoreError};
use egress::EgressPolicy;
use lanes::{AfterLane, Lanes};

/// The longest wait between two looks at the store when nothing wakes the scheduler;
/// it bounds how long a lease left by a crashed process goes unnoticed.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a claim stays valid beyond the attempt timeout, so a lease never runs out
/// while its attempt is still in flight.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// The most deliveries a lane claims at once. A lane starts with one and doubles its
/// claim after each batch in which every attempt succeeded, so a healthy endpoint costs
/// one transaction per batch while a failing one claims no more than it attempts.
const MAX_CLAIM: usize = 256;

/// The most event bytes a lane means to hold in one claimed batch: an endpoint whose
/// events are large claims fewer of them at once.
const CLAIM_BYTES: usize = 4 * 1024 * 1024;

/// How long a lane keeps its endpoint while work is waiting. Then, if other processes
/// share the store, it hands the endpoint over, so that the work of a busy endpoint
/// moves between them instead of staying with whichever started first.
const LANE_TURN: Duration = Duration::from_secs(2);

/// How long a process leaves an endpoint alone after handing it over: long enough for
/// another process to take it, short enough to cost a lone process about 2% of a turn.
const HANDOVER_PAUSE: Duration = Duration::from_millis(40);

/// The longest wait between two attempts on the exponential schedule.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

pub struct Engine {
    store: Arc<dyn Store>,
    clock: SharedClock,
    settings: DeliverySettings,
    policy: EgressPolicy,
    client: Client,
    wake: Notify,
    /// Whether the next scheduler pass must ask the store which endpoints are due.
    look: AtomicBool,
    /// When something is next due, as the last pass that asked the store found.
    next_due: Mutex<Option<Timestamp>>,
    /// Endpoints given new deliveries while they had no lane: due at once, without
    /// asking the store.
    fresh: Mutex<HashSet<String>>,
    lanes: Mutex<Lanes>,
    pacing: pacing::Pacing,
    next_sweep: Mutex<Option<Timestamp>>,
    /// Endpoints changed or deleted since their lane last claimed.
    changed: Mutex<HashSet<String>>,
    secrets: Arc<SecretBox>,
    tracker: TaskTracker,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        clock: SharedClock,
        settings: DeliverySettings,
        secrets: Arc<SecretBox>,
    ) -> Arc<Engine> {
        let policy = EgressPolicy {
            allow_private: settings.allow_private,
            allow_networks: settings.allow_networks.clone().into(),
        };
        Arc::new(Engine {
            store,
            clock,
            client: attempt::build_client(&policy),
            policy,
            pacing: pacing::Pacing::new(settings.down_endpoint_rate),
            settings,
            wake: Notify::new(),
            look: AtomicBool::new(true),
            next_due: Mutex::new(None),
            fresh: Mutex::new(HashSet::new()),
            lanes: Mutex::new(Lanes::default()),
            next_sweep: Mutex::new(None),
            changed: Mutex::new(HashSet::new()),
            secrets,
            tracker: TaskTracker::new(),
        })
    }

    /// Seals and opens endpoint secrets.
    pub fn secrets(&self) -> &SecretBox {
        &self.secrets
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Tells the scheduler that deliveries may have become due.
    pub fn wake(&self) {
        self.look.store(true, AtomicOrdering::SeqCst);
        self.wake.notify_one();
    }

    /// Tells the scheduler that new deliveries, due now, were stored for these
    /// endpoints. One without a lane gets a lane at once, with no look at the store.
    /// One whose lane is running only has that noted: a lane claims again before it
    /// ends, and one that ends with deliveries stored after its last claim has its
    /// endpoint started again. A burst to busy endpoints thus costs the scheduler
    /// nothing.
    pub fn deliveries_stored(&self, endpoint_ids: &[String]) {
        let idle = self.lanes.lock().expect("lanes lock").stored(endpoint_ids);
        if !idle.is_empty() {
            self.fresh.lock().expect("fresh lock").extend(idle);
            self.wake.notify_one();
        }
    }

    /// Runs the scheduler until `cancel`, then waits (bounded) for in-flight attempts.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !cancel.is_cancelled() {
            match self.schedule(&cancel).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(err) => {
                    // The pass may have stopped before it started every lane it meant to.
                    self.look.store(true, AtomicOrdering::SeqCst);
                    warn!(cause = %err, retry_in_ms = backoff.as_millis() as u64, "scheduler cannot reach the store");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.drain().await;
    }

    async fn drain(&self) {
        self.tracker.close();
        let bound = self.settings.attempt_timeout + Duration::from_secs(1);
        if tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                lanes = self.tracker.len(),
                "shutdown did not wait for attempts still in flight; they stay pending"
            );
        }
    }

    /// One pass: start lanes for due endpoints, then sleep until something may be due.
    async fn schedule(self: &Arc<Self>, cancel: &CancellationToken) -> Result<(), StoreError> {
        let now = self.clock.now();
        self.sweep(now).await?;
        let (paused, resume) = self.pacing.paused(now);
        let running = self.lanes.lock().expect("lanes lock").len();
        let room = self
            .settings
            .max_concurrent_endpoints
            .saturating_sub(running);
        let fresh = std::mem::take(&mut *self.fresh.lock().expect("fresh lock"));
        let look = self.look.swap(false, AtomicOrdering::SeqCst);
        if look {
            self.lanes.lock().expect("lanes lock").looking();
        }
        if room > 0 {
            let mut busy: Vec<String> = self
                .lanes
                .lock()
                .expect("lanes lock")
                .endpoint_ids()
                .cloned()
                .collect();
            busy.extend(paused);
            let mut due: Vec<String> = fresh
                .into_iter()
                .filter(|endpoint_id| !busy.contains(endpoint_id))
                .take(room)
                .collect();
            if look && due.len() < room {
                busy.extend(due.iter().cloned());
                let more = room - due.len();
                due.extend(self.store.due_endpoints(now, &busy, more as i64).await?);
            }
            debug!(due = due.len(), busy = busy.len(), look, "scheduler pass");
            for endpoint_id in due {
                self.start_lane(endpoint_id, cancel.clone());
            }
        }

        // What becomes due later changes only through what also sets `look`: a retry
        // scheduled, an endpoint enabled, a lease left behind (found by the poll).
        let next_due = if look {
            let next_due = self.store.next_wake(now).await?;
            *self.next_due.lock().expect("next due lock") = next_due;
            next_due
        } else {
            *self.next_due.lock().expect("next due lock")
        };
        let next = [next_due, resume].into_iter().flatten().min();
        let clock = self.clock.clone();
        let until_due = async move {
            match next {
                Some(at) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = until_due => self.look.store(true, AtomicOrdering::SeqCst),
            _ = tokio::time::sleep(POLL_INTERVAL) => self.look.store(true, AtomicOrdering::SeqCst),
            _ = cancel.cancelled() => {}
        }
        Ok(())
    }

    /// Fails deliveries whose retry window ended while they waited, at most once per
    /// second of engine time. The sweep allows one retry interval past the window so it
    /// never races the last attempt, which is due at the window's very end.
    async fn sweep(&self, now: Timestamp) -> Result<(), StoreError> {
        let due = self
            .next_sweep
            .lock()
            .expect("sweep lock")
            .is_none_or(|at| now >= at);
        if !due {
            return Ok(());
        }
        let grace = self.settings.retry_window + self.settings.retry_interval;
        let expired = self
            .store
            .expire_overdue(now - chrono_duration(grace), now)
            .await?;
        if expired > 0 {
            warn!(
                expired,
                "deliveries failed: their retry window ended while they waited"
            );
        }
        *self.next_sweep.lock().expect("sweep lock") = Some(now + chrono::Duration::seconds(1));
        Ok(())
    }

    fn start_lane(self: &Arc<Self>, endpoint_id: String, cancel: CancellationToken) {
        if !self.lanes.lock().expect("lanes lock").start(&endpoint_id) {
            return;
        }
        let engine = self.clone();
        let span = tracing::info_span!("lane", endpoint_id = %endpoint_id);
        self.tracker.spawn(
            async move {
                let left_work = match engine.run_lane(&endpoint_id, &cancel).await {
                    Ok(LaneEnd::Drained { all_succeeded }) => !all_succeeded,
                    Ok(LaneEnd::Stopped) => true,
                    Ok(LaneEnd::TurnOver) => {
                        tokio::time::sleep(HANDOVER_PAUSE).await;
                        true
                    }
                    Err(err) => {
                        warn!(cause = %err, "lane stopped: store unavailable");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        true
                    }
                };
                engine.lane_ended(&endpoint_id, left_work);
            }
            .instrument(span),
        );
    }

    /// Takes an ended lane off the record and tells the scheduler what it must know.
    /// A lane that drained its endpoint, every attempt a success, usually costs the
    /// scheduler nothing; see [`Lanes::end`] for when it asks for a look at the store.
    fn lane_ended(&self, endpoint_id: &str, left_work: bool) {
        let after = self.lanes.lock().expect("lanes lock").end(
            endpoint_id,
            left_work,
            self.settings.max_concurrent_endpoints,
        );
        match after {
            AfterLane::Look => self.wake(),
            AfterLane::Restart => self.deliveries_stored(&[endpoint_id.to_string()]),
            AfterLane::Nothing => {}
        }
    }

    /// Attempts the endpoint's due deliveries one at a time until none is due, or its
    /// turn is over.
    async fn run_lane(
        &self,
        endpoint_id: &str,
        cancel: &CancellationToken,
    ) -> Result<LaneEnd, StoreError> {
        let mut turn = tokio::time::Instant::now();
        let mut size = 1;
        let mut all_succeeded = true;
        let (mut request, mut batch) = self.claim(endpoint_id, size).await?;
        loop {
            if batch.is_empty() {
                return Ok(LaneEnd::Drained { all_succeeded });
            }
            debug!(
                first = batch[0].seq,
                last = batch[batch.len() - 1].seq,
                count = batch.len(),
                "claimed"
            );
            let bytes: usize = batch.iter().map(|c| c.delivery.body.len()).sum();
            let claimed = batch.len();
            let (run, recorder) = self
                .attempt_batch(batch, request.lease_until, cancel)
                .await?;
            size = next_claim_size(size, claimed, bytes, run.all_succeeded);
            all_succeeded &= run.all_succeeded;
            let mut go_on = run.go_on && !cancel.is_cancelled();
            let mut turn_over = false;
            if go_on && turn.elapsed() >= LANE_TURN {
                // Alone, handing over would only make the next events wait for the
                // pause; when the store cannot say, the lane hands over.
                turn_over = self.store.other_processes().await.unwrap_or(true);
                go_on = !turn_over;
                turn = tokio::time::Instant::now();
            }
            if !run.left_over.is_empty() || !go_on {
                recorder.finish(None).await?;
                if !run.left_over.is_empty() {
                    // Given back so they are due again at once and nothing overtakes them.
                    self.store.release_claims(&run.left_over).await?;
                }
                if !go_on {
                    return Ok(if turn_over {
                        LaneEnd::TurnOver
                    } else {
                        LaneEnd::Stopped
                    });
                }
                (request, batch) = self.claim(endpoint_id, size).await?;
                continue;
            }
            // The whole batch was attempted: its last records and the next claim go to
            // the store as one job.
            request = self.claim_request(endpoint_id);
            batch = recorder.finish(Some((request.clone(), size))).await?;
        }
    }

    /// Tells lanes that an endpoint was changed or deleted, so a lane in the middle of a
    /// batch stops and claims again with what the endpoint is now.
    pub fn endpoint_changed(&self, endpoint_id: &str) {
        self.changed
            .lock()
            .expect("changed lock")
            .insert(endpoint_id.to_string());
    }

    /// Attempts a lane's claimed deliveries one after the other, in order, and records
    /// them in groups while the next attempts are on the wire: while one group is being
    /// committed, the outcomes that follow wait in memory, and go to the store together
    /// as soon as it is done. So an endpoint is never held up by the writer, and the
    /// writer commits many outcomes per job when it is the slower of the two. The
    /// returned recorder holds the last group; the lane finishes it, together with its
    /// next claim when there is one, so every record is committed before the lane's
    /// next batch starts and a crash can send again at most one claimed batch of an
    /// endpoint's deliveries. Stops early when the endpoint turns out to be down or was
    /// changed, when shutting down, or when an attempt could no longer end before the
    /// claim's lease does; what it did not attempt is handed back in `left_over`.
    async fn attempt_batch(
        &self,
        batch: Vec<Claimed>,
        lease_until: Timestamp,
        cancel: &CancellationToken,
    ) -> Result<(BatchRun, Recorder), StoreError> {
        let last_start = lease_until - chrono_duration(self.settings.attempt_timeout);
        let mut run = BatchRun {
            go_on: true,
            all_succeeded: true,
            left_over: Vec::new(),
        };
        let mut recorder = Recorder::new(self.store.clone());
        let mut batch = batch.into_iter();
        for claimed in batch.by_ref() {
            let changed = self
                .changed
                .lock()
                .expect("changed lock")
                .contains(&claimed.endpoint.id);
            if changed || cancel.is_cancelled() || self.clock.now() > last_start {
                run.go_on = changed && !cancel.is_cancelled();
                run.left_over.push(claimed.seq);
                break;
            }
            let outcome = self.attempt_one(claimed).await?;
            let succeeded = outcome.attempt.succeeded();
            let gone = outcome.attempt.status_code == Some(410);
            run.all_succeeded &= succeeded;
            let pace_ok = self.pacing.record(
                &outcome.claimed.endpoint.id,
                succeeded,
                outcome.attempt.attempted_at,
            );
            recorder.push(outcome).await?;
            if !pace_ok || gone {
                run.go_on = false;
                break;
            }
        }
        run.left_over.extend(batch.map(|claimed| claimed.seq));
        Ok((run, recorder))
    }

    /// Claims up to `size` of the endpoint's due deliveries on their own, with the
    /// request they were claimed under (its lease bounds the batch).
    async fn claim(
        &self,
        endpoint_id: &str,
        size: usize,
    ) -> Result<(ClaimRequest, Vec<Claimed>), StoreError> {
        let request = self.claim_request(endpoint_id);
        let batch = self.store.claim_many(request.clone(), size).await?;
        Ok((request, batch))
    }

    /// The lane's next claim. The claim reads the endpoint and its deliveries as they
    /// are now, so a change made or a delivery stored before this point needs no
    /// further notice.
    fn claim_request(&self, endpoint_id: &str) -> ClaimRequest {
        self.changed
            .lock()
            .expect("changed lock")
            .remove(endpoint_id);
        self.lanes.lock().expect("lanes lock").claiming(endpoint_id);
        let now = self.clock.now();
        ClaimRequest {
            endpoint_id: endpoint_id.to_string(),
            now,
            lease_until: now + chrono_duration(self.settings.attempt_timeout + LEASE_MARGIN),
        }
    }

    /// Attempts one claimed delivery and decides what follows, in the delivery's span.
    async fn attempt_one(&self, claimed: Claimed) -> Result<AttemptOutcome, StoreError> {
        let span = tracing::info_span!(
            "attempt",
            delivery_id = %claimed.delivery.id,
            event_id = %claimed.delivery.event_id,
            attempt = claimed.delivery.attempt_count + 1,
        );
        async {
            let attempt = self.attempt(&claimed).await;
            let after = self.decide(&claimed.delivery, &attempt);
            if attempt.status_code == Some(410) && !claimed.delivery.test {
                self.disable_gone(&claimed, &attempt).await?;
            }
            log_outcome(&attempt, after);
            Ok(AttemptOutcome {
                claimed,
                attempt,
                after,
            })
        }
        .instrument(span)
        .await
    }

    async fn attempt(&self, claimed: &Claimed) -> Attempt {
        let attempted_at = self.clock.now();
        let delivery = &claimed.delivery;
        let timestamp = attempted_at.timestamp();
        let opened: Result<Vec<String>, _> = claimed
            .endpoint
            .signing_secrets(attempted_at)
            .into_iter()
            .map(|sealed| self.secrets.open(sealed))
            .collect();
        let secrets = match opened {
            Ok(secrets) => secrets,
            Err(err) => {
                return attempt::not_sent(attempted_at, ErrorKind::Request, err.to_string())
            }
        };
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let signature = signing::signature_header(
            &secrets,
            &delivery.event_id,
            timestamp,
            delivery.body.as_bytes(),
        );

        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("webhook-id"),
            header_value(&delivery.event_id),
        );
        headers.insert(
            HeaderName::from_static("webhook-timestamp"),
            header_value(&timestamp.to_string()),
        );
        headers.insert(
            HeaderName::from_static("webhook-signature"),
            header_value(&signature),
        );
        let request = attempt::Request {
            method: Method::POST,
            url: &claimed.endpoint.url,
            headers,
            body: Some(delivery.body.clone()),
            timeout: self.settings.attempt_timeout,
        };
        attempt::send(
            &self.client,
            &self.policy,
            request,
            attempted_at,
            self.settings.success,
        )
        .await
    }

    /// The delivery's next state after this attempt: the retry schedule in one place.
    pub fn decide(&self, delivery: &Delivery, attempt: &Attempt) -> AfterAttempt {
        let Some(kind) = attempt.error_kind else {
            return AfterAttempt::Succeeded;
        };
        if delivery.test || !kind.is_retryable() {
            return AfterAttempt::Failed;
        }
        let first = delivery.first_attempt_at.unwrap_or(attempt.attempted_at);
        let deadline = first + chrono_duration(self.settings.retry_window);
        let next = self.next_after(first, delivery.attempt_count + 1, attempt.attempted_at);
        if next > deadline {
            return AfterAttempt::Failed;
        }
        let asked = attempt
            .retry_after
            .filter(|_| matches!(attempt.status_code, Some(429 | 503)))
            .map(|d| attempt.attempted_at + chrono_duration(d));
        match asked {
            Some(asked) if asked > next => AfterAttempt::RetryAt(asked.min(deadline)),
            _ => AfterAttempt::RetryAt(next),
        }
    }

    /// When to try again after the `failures`-th failure of an attempt made at `at`.
    ///
    /// The fixed schedule keeps to a grid counted from the first attempt, so the small
    /// delay before each attempt does not add up and push the last one out of the
    /// window; an attempt that starts late waits for the next point of the grid rather
    /// than catching up with a burst.
    fn next_after(&self, first: Timestamp, failures: i64, at: Timestamp) -> Timestamp {
        let interval = self.settings.retry_interval;
        match self.settings.retry_schedule {
            RetrySchedule::Fixed => {
                let elapsed = (at - first).to_std().unwrap_or(Duration::ZERO);
                let steps = (elapsed.as_micros() / interval.as_micros().max(1)) as u32 + 1;
                first + chrono_duration(interval.saturating_mul(steps))
            }
            RetrySchedule::Exponential => {
                let factor = 2u32.saturating_pow((failures - 1).clamp(0, 20) as u32);
                at + chrono_duration(interval.saturating_mul(factor).min(MAX_BACKOFF))
            }
        }
    }

    async fn disable_gone(&self, claimed: &Claimed, attempt: &Attempt) -> Result<(), StoreError> {
        let reason = format!(
            "receiver answered 410 Gone at {}",
            format_time(attempt.attempted_at)
        );
        warn!(endpoint_id = %claimed.endpoint.id, "endpoint disabled: receiver answered 410 Gone");
        self.store
            .disable_endpoint(&claimed.endpoint.id, &reason, self.clock.now())
            .await
    }

    /// Sends a test event to one endpoint now, records it as a test delivery, and
    /// returns the attempt. A failed test is not retried.
    pub async fn send_test(&self, endpoint_id: &str) -> Result<(Delivery, Attempt), StoreError> {
        let now = self.clock.now();
        let body = format!(
            "{{\"event\":\"{TEST_EVENT}\",\"object_id\":\"{endpoint_id}\",\"current\":{{\"created_at\":\"{}\",\"message\":\"test webhook from Herald\"}}}}",
            format_time(now)
        );
        let event = NewEvent {
            id: new_id("evt"),
            event_type: TEST_EVENT.to_string(),
            object_key: endpoint_id.to_string(),
            request_hash: hex_sha256(body.as_bytes()),
            body,
            accepted_at: now,
            idempotency_key: None,
        };
        let lease_until = now + chrono_duration(self.settings.attempt_timeout + LEASE_MARGIN);
        let claimed = self
            .store
            .insert_test_delivery(&event, endpoint_id, lease_until)
            .await?;
        let outcome = self.attempt_one(claimed).await?;
        self.store
            .record_attempt(&outcome.claimed, &outcome.attempt, outcome.after, None)
            .await?;
        Ok((outcome.claimed.delivery, outcome.attempt))
    }

    /// Sends a HEAD to a URL through the same guard as every attempt. The error names
    /// what the receiver answered.
    pub async fn check_url(&self, url: &str) -> Result<(), String> {
        let request = attempt::Request {
            method: Method::HEAD,
            url,
            headers: HeaderMap::new(),
            body: None,
            timeout: self.settings.attempt_timeout.min(Duration::from_secs(10)),
        };
        let attempt = attempt::send(
            &self.client,
            &self.policy,
            request,
            self.clock.now(),
            crate::settings::SuccessRule::Any2xx,
        )
        .await;
        match (attempt.status_code, attempt.error) {
            (Some(status), _) if status < 400 => Ok(()),
            (Some(status), _) => Err(format!("HEAD {url} answered status {status}")),
            (None, Some(error)) => Err(format!("HEAD {url} failed: {error}")),
            (None, None) => Err(format!("HEAD {url} got no reply")),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

/// Why a lane stopped.
enum LaneEnd {
    /// Its last claim found nothing due; whether every attempt it made succeeded, so
    /// that it scheduled no retry.
    Drained { all_succeeded: bool },
    /// It stopped with work perhaps left: the endpoint went down or answered 410, a
    /// lease ran short, or the engine is shutting down.
    Stopped,
    /// It handed the endpoint over after [`LANE_TURN`].
    TurnOver,
}

fn log_outcome(attempt: &Attempt, after: AfterAttempt) {
    let status = attempt.status_code;
    let error = attempt.error.as_deref().unwrap_or("");
    match after {
        AfterAttempt::Succeeded => info!(
            status,
            duration_ms = attempt.duration_ms,
            "delivery succeeded"
        ),
        AfterAttempt::RetryAt(at) => {
            info!(status, error, next_attempt_at = %at, "attempt failed, will retry")
        }
        AfterAttempt::Failed => warn!(status, error, "delivery failed"),
    }
}

/// A lane's attempt records on their way to the store: at most one group is being
/// committed at a time, and the outcomes that arrive meanwhile wait for it.
struct Recorder {
    store: Arc<dyn Store>,
    waiting: Vec<AttemptOutcome>,
    committing: Option<tokio::task::JoinHandle<Result<RecordedMany, StoreError>>>,
}

impl Recorder {
    fn new(store: Arc<dyn Store>) -> Recorder {
        Recorder {
            store,
            waiting: Vec::new(),
            committing: None,
        }
    }

    /// Adds an outcome; sends what is waiting unless a group is still being committed.
    async fn push(&mut self, outcome: AttemptOutcome) -> Result<(), StoreError> {
        self.waiting.push(outcome);
        if self.committing.as_ref().is_some_and(|c| !c.is_finished()) {
            return Ok(());
        }
        self.settle().await?;
        self.send(None);
        Ok(())
    }

    /// Returns once every outcome pushed is committed, with the claim `then_claim`
    /// made in the same job as the last of them.
    async fn finish(
        mut self,
        then_claim: Option<(ClaimRequest, usize)>,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.settle().await?;
        if self.waiting.is_empty() {
            return match then_claim {
                Some((request, limit)) => self.store.claim_many(request, limit).await,
                None => Ok(Vec::new()),
            };
        }
        self.send(then_claim);
        Ok(self.settle().await?.next)
    }

    fn send(&mut self, then_claim: Option<(ClaimRequest, usize)>) {
        let outcomes = std::mem::take(&mut self.waiting);
        let store = self.store.clone();
        self.committing = Some(tokio::spawn(async move {
            store.record_many(outcomes, then_claim).await
        }));
    }

    /// Waits for the group being committed, if any, and returns what it claimed.
    async fn settle(&mut self) -> Result<RecordedMany, StoreError> {
        let Some(committing) = self.committing.take() else {
            return Ok(RecordedMany::default());
        };
        let recorded = committing
            .await
            .map_err(|err| StoreError::Unavailable(format!("recording task failed: {err}")))??;
        if recorded.stored.contains(&false) {
            debug!("attempt not recorded: the endpoint was deleted meanwhile");
        }
        Ok(recorded)
    }
}

/// What a lane did with one batch of claims.
struct BatchRun {
    /// Claims not attempted, to give back.
    left_over: Vec<i64>,
    /// Whether the lane may claim more right away.
    go_on: bool,
    all_succeeded: bool,
}

/// How many deliveries a lane claims after a batch of `claimed` deliveries whose
/// events held `bytes` in all: one after a failure; otherwise twice as many, up to
/// [`MAX_CLAIM`], and no more than fit in [`CLAIM_BYTES`] at the batch's average size.
fn next_claim_size(size: usize, claimed: usize, bytes: usize, all_succeeded: bool) -> usize {
    if !all_succeeded {
        return 1;
    }
    let average = (bytes / claimed.max(1)).max(1);
    (size * 2).min(MAX_CLAIM).min(CLAIM_BYTES / average).max(1)
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

pub fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_doubles_while_every_attempt_succeeds_up_to_the_most() {
        assert_eq!(next_claim_size(1, 1, 200, true), 2);
        assert_eq!(next_claim_size(128, 128, 128 * 200, true), MAX_CLAIM);
        assert_eq!(next_claim_size(MAX_CLAIM, MAX_CLAIM, 200, true), MAX_CLAIM);
        assert_eq!(next_claim_size(64, 64, 64 * 200, false), 1);
    }

    #[test]
    fn a_claim_of_large_events_holds_no_more_bytes_than_its_bound() {
        let mib = 1024 * 1024;
        assert_eq!(next_claim_size(2, 2, 2 * mib, true), CLAIM_BYTES / mib);
        assert_eq!(next_claim_size(64, 64, 64 * 100 * 1024, true), 40);
        // An event larger than the bound still goes, one at a time.
        assert_eq!(next_claim_size(4, 1, 2 * CLAIM_BYTES, true), 1);
        // A batch that claimed nothing has no average to go by.
        assert_eq!(next_claim_size(4, 0, 0, true), 8);
    }
}
