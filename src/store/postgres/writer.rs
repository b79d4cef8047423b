//! Group commit on PostgreSQL for the hot writes: event ingest, claims and attempt
//! records.
//!
//! One task per process owns one connection for these writes. It takes every job
//! waiting in its queue, runs them in one transaction (each behind its own savepoint, so
//! one job's error leaves the others intact), commits once, and only then answers each
//! caller. A commit is a round trip and a WAL flush; sharing one between many jobs is
//! what makes that affordable. (SQLite has its own writer, `store::sqlite::writer`.)
//!
//! What a job does on the connection is `queue.rs`'s, behind [`BatchWrites`]; this
//! module only batches, orders the jobs so that processes never wait on each other in
//! a cycle, and answers.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::model::{AfterAttempt, Attempt, NewEvent};
use crate::store::{Accepted, ClaimRequest, Claimed, Recorded, StoreError, StoreResult};

/// The most jobs in one transaction; bounds how long one commit keeps callers waiting.
const MAX_BATCH: usize = 512;

const QUEUE_CAPACITY: usize = 8192;

/// What a store does for each kind of job, on the connection of an open transaction.
#[async_trait]
pub(super) trait BatchWrites: Send + Sync + 'static {
    type Conn: Send;

    /// The statement that opens the batch's transaction.
    const BEGIN: &'static str;

    async fn acquire(&self) -> StoreResult<Self::Conn>;
    /// Closes a connection for good, instead of returning it to its pool.
    async fn close(conn: Self::Conn);
    /// Runs statements without parameters (the simple protocol: several may be sent
    /// at once, separated by `;`).
    async fn exec(conn: &mut Self::Conn, sql: &'static str) -> StoreResult<()>;
    async fn insert_event(conn: &mut Self::Conn, event: &NewEvent) -> StoreResult<Accepted>;
    /// Claims up to `limit` of the endpoint's due deliveries, in order.
    async fn claim(
        conn: &mut Self::Conn,
        request: &ClaimRequest,
        limit: usize,
    ) -> StoreResult<Vec<Claimed>>;
    /// Records an attempt; false when the delivery no longer exists.
    async fn record(
        conn: &mut Self::Conn,
        claimed: &Claimed,
        attempt: &Attempt,
        after: AfterAttempt,
    ) -> StoreResult<bool>;

    /// Runs last in every transaction that stored at least one new delivery.
    async fn after_new_deliveries(_conn: &mut Self::Conn) -> StoreResult<()> {
        Ok(())
    }
}

enum Job {
    Insert(NewEvent, oneshot::Sender<StoreResult<Accepted>>),
    Claim(
        ClaimRequest,
        usize,
        oneshot::Sender<StoreResult<Vec<Claimed>>>,
    ),
    Record(Box<RecordJob>, oneshot::Sender<StoreResult<Recorded>>),
}

struct RecordJob {
    claimed: Claimed,
    attempt: Attempt,
    after: AfterAttempt,
    then_claim: Option<ClaimRequest>,
}

/// A job's result, held until the transaction commits.
enum Done {
    Insert(
        StoreResult<Accepted>,
        oneshot::Sender<StoreResult<Accepted>>,
    ),
    Claim(
        StoreResult<Vec<Claimed>>,
        oneshot::Sender<StoreResult<Vec<Claimed>>>,
    ),
    Record(
        Box<StoreResult<Recorded>>,
        oneshot::Sender<StoreResult<Recorded>>,
    ),
}

impl Done {
    fn failed(&self) -> bool {
        match self {
            Done::Insert(result, _) => result.is_err(),
            Done::Claim(result, _) => result.is_err(),
            Done::Record(result, _) => result.is_err(),
        }
    }

    /// Whether this job stored at least one new delivery.
    fn stored_deliveries(&self) -> bool {
        matches!(self, Done::Insert(Ok(accepted), _) if accepted.deliveries > 0 && !accepted.replayed)
    }

    fn answer(self) {
        // A caller that stopped waiting has nothing left to learn.
        let _ = match self {
            Done::Insert(result, reply) => reply.send(result).map_err(drop),
            Done::Claim(result, reply) => reply.send(result).map_err(drop),
            Done::Record(result, reply) => reply.send(*result).map_err(drop),
        };
    }

    fn answer_error(self, why: &str) {
        let _ = match self {
            Done::Insert(_, reply) => reply.send(unavailable(why)).map_err(drop),
            Done::Claim(_, reply) => reply.send(unavailable(why)).map_err(drop),
            Done::Record(_, reply) => reply.send(unavailable(why)).map_err(drop),
        };
    }
}

impl Job {
    async fn run<W: BatchWrites>(self, conn: &mut W::Conn) -> Done {
        match self {
            Job::Insert(event, reply) => Done::Insert(W::insert_event(conn, &event).await, reply),
            Job::Claim(request, limit, reply) => {
                Done::Claim(W::claim(conn, &request, limit).await, reply)
            }
            Job::Record(job, reply) => {
                Done::Record(Box::new(record_and_claim::<W>(conn, *job).await), reply)
            }
        }
    }

    /// Turns a job that never ran into a result that says why.
    fn not_run(self, why: &str) -> Done {
        match self {
            Job::Insert(_, reply) => Done::Insert(unavailable(why), reply),
            Job::Claim(_, _, reply) => Done::Claim(unavailable(why), reply),
            Job::Record(_, reply) => Done::Record(Box::new(unavailable(why)), reply),
        }
    }

    /// The order in which jobs of one batch run. Claims and records lock their
    /// endpoint's row on PostgreSQL; taking those locks in one global order (by
    /// endpoint id, before any insert) means two processes' batches can never wait for
    /// each other in a cycle. Inserts follow, ordered by idempotency key, for the same
    /// reason with the key's unique index.
    fn lock_order(&self) -> (u8, &str) {
        match self {
            Job::Claim(request, _, _) => (0, &request.endpoint_id),
            Job::Record(job, _) => (0, &job.claimed.endpoint.id),
            Job::Insert(event, _) => (1, event.idempotency_key.as_deref().unwrap_or("")),
        }
    }
}

fn unavailable<T>(why: &str) -> StoreResult<T> {
    Err(StoreError::Unavailable(why.to_string()))
}

async fn record_and_claim<W: BatchWrites>(
    conn: &mut W::Conn,
    job: RecordJob,
) -> StoreResult<Recorded> {
    let stored = W::record(conn, &job.claimed, &job.attempt, job.after).await?;
    let next = match &job.then_claim {
        Some(request) => W::claim(conn, request, 1).await?.pop(),
        None => None,
    };
    Ok(Recorded { stored, next })
}

/// The queue in front of the writer task.
pub(super) struct WriterQueue {
    jobs: mpsc::Sender<Job>,
}

impl WriterQueue {
    pub(super) fn start<W: BatchWrites>(target: W) -> WriterQueue {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(target, queue));
        WriterQueue { jobs }
    }

    async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Job,
    ) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the database writer has stopped".to_string());
        self.jobs.send(job(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    pub(super) async fn insert_event(&self, event: NewEvent) -> StoreResult<Accepted> {
        self.submit(|reply| Job::Insert(event, reply)).await
    }

    pub(super) async fn claim(
        &self,
        request: ClaimRequest,
        limit: usize,
    ) -> StoreResult<Vec<Claimed>> {
        self.submit(|reply| Job::Claim(request, limit, reply)).await
    }

    pub(super) async fn record(
        &self,
        claimed: Claimed,
        attempt: Attempt,
        after: AfterAttempt,
        then_claim: Option<ClaimRequest>,
    ) -> StoreResult<Recorded> {
        let job = RecordJob {
            claimed,
            attempt,
            after,
            then_claim,
        };
        self.submit(|reply| Job::Record(Box::new(job), reply)).await
    }
}

async fn run<W: BatchWrites>(target: W, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        batch.sort_by(|a, b| a.lock_order().cmp(&b.lock_order()));
        commit_batch(&target, batch).await;
    }
}

async fn commit_batch<W: BatchWrites>(target: &W, batch: Vec<Job>) {
    let mut conn = match target.acquire().await {
        Ok(conn) => conn,
        Err(err) => return fail_unrun(batch, &err.to_string()),
    };
    if let Err(err) = W::exec(&mut conn, W::BEGIN).await {
        return fail_unrun(batch, &err.to_string());
    }

    let mut done = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    while let Some(job) = jobs.next() {
        if let Err(err) = W::exec(&mut conn, "SAVEPOINT job").await {
            done.push(job.not_run(&err.to_string()));
            done.extend(jobs.map(|job| job.not_run(&err.to_string())));
            return abandon::<W>(conn, done, &err).await;
        }
        let result = job.run::<W>(&mut conn).await;
        let cleanup = match result.failed() {
            true => W::exec(&mut conn, "ROLLBACK TO job; RELEASE job").await,
            false => W::exec(&mut conn, "RELEASE job").await,
        };
        done.push(result);
        // A savepoint that cannot be closed leaves the transaction aborted. PostgreSQL
        // would then turn COMMIT into a silent rollback, so nothing may be answered as
        // stored: every job of the batch fails.
        if let Err(err) = cleanup {
            done.extend(jobs.map(|job| job.not_run(&err.to_string())));
            return abandon::<W>(conn, done, &err).await;
        }
    }

    let wake_others = done.iter().any(Done::stored_deliveries);
    if wake_others {
        if let Err(err) = W::after_new_deliveries(&mut conn).await {
            return abandon::<W>(conn, done, &err).await;
        }
    }
    match W::exec(&mut conn, "COMMIT").await {
        Ok(()) => done.into_iter().for_each(Done::answer),
        Err(err) => abandon::<W>(conn, done, &err).await,
    }
}

/// Rolls the batch back and answers every job with the error. A connection that
/// cannot even roll back is closed rather than handed back to the pool mid-transaction.
async fn abandon<W: BatchWrites>(mut conn: W::Conn, done: Vec<Done>, err: &StoreError) {
    if W::exec(&mut conn, "ROLLBACK").await.is_err() {
        W::close(conn).await;
    }
    fail_all(done, &err.to_string());
}

fn fail_unrun(batch: Vec<Job>, why: &str) {
    let why = format!("not run: the transaction could not start: {why}");
    fail_all(
        batch.into_iter().map(|job| job.not_run(&why)).collect(),
        &why,
    );
}

fn fail_all(done: Vec<Done>, why: &str) {
    warn!(
        cause = why,
        jobs = done.len(),
        "a batch of writes was not committed"
    );
    for job in done {
        job.answer_error(why);
    }
}
