//! Group commit for the hot writes: event ingest, claims and attempt records.
//!
//! One task owns the writing connection for these writes. It takes every job waiting
//! in its queue, runs them in one transaction, commits once, and only then answers each
//! caller. A full sync per commit is what makes an acknowledgement durable; sharing it
//! between many jobs is what makes that affordable.

use sqlx::sqlite::SqlitePool;
use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::{claim_in, insert_event_in, record_in, record_successes_in, touch_endpoints};
use crate::model::AfterAttempt;
use crate::model::NewEvent;
use crate::store::{
    Accepted, AttemptOutcome, ClaimRequest, Claimed, RecordedMany, StoreError, StoreResult,
};

/// The most jobs in one transaction; bounds how long one commit keeps callers waiting.
const MAX_BATCH: usize = 512;

const QUEUE_CAPACITY: usize = 8192;

enum Job {
    Insert(NewEvent),
    Claim(ClaimRequest, usize),
    Record(RecordJob),
}

struct RecordJob {
    outcomes: Vec<AttemptOutcome>,
    then_claim: Option<(ClaimRequest, usize)>,
}

/// Where a job's answer goes.
enum Reply {
    Insert(oneshot::Sender<StoreResult<Accepted>>),
    Claim(oneshot::Sender<StoreResult<Vec<Claimed>>>),
    Record(oneshot::Sender<StoreResult<RecordedMany>>),
}

/// A job's result, held until the transaction commits.
enum Output {
    Insert(StoreResult<Accepted>),
    Claim(StoreResult<Vec<Claimed>>),
    Record(StoreResult<RecordedMany>),
}

impl Job {
    async fn run(&self, conn: &mut SqliteConnection) -> Output {
        match self {
            Job::Insert(event) => Output::Insert(insert_event_in(conn, event).await),
            Job::Claim(request, limit) => Output::Claim(claim_in(conn, request, *limit).await),
            Job::Record(job) => Output::Record(record_and_claim(conn, job).await),
        }
    }

    fn acknowledges(&self) -> bool {
        matches!(self, Job::Insert(_))
    }
}

impl Output {
    /// Whether the job failed inside the database, which may have left it half-done.
    fn database_error(&self) -> bool {
        let failed = |r: Option<&StoreError>| matches!(r, Some(StoreError::Database(_)));
        match self {
            Output::Insert(r) => failed(r.as_ref().err()),
            Output::Claim(r) => failed(r.as_ref().err()),
            Output::Record(r) => failed(r.as_ref().err()),
        }
    }
}

impl Reply {
    fn send(self, output: Output) {
        // A caller that stopped waiting has nothing left to learn.
        let _ = match (self, output) {
            (Reply::Insert(to), Output::Insert(r)) => to.send(r).map_err(drop),
            (Reply::Claim(to), Output::Claim(r)) => to.send(r).map_err(drop),
            (Reply::Record(to), Output::Record(r)) => to.send(r).map_err(drop),
            (reply, _) => return reply.fail("internal: mismatched answer"),
        };
    }

    fn fail(self, why: &str) {
        let _ = match self {
            Reply::Insert(to) => to.send(unavailable(why)).map_err(drop),
            Reply::Claim(to) => to.send(unavailable(why)).map_err(drop),
            Reply::Record(to) => to.send(unavailable(why)).map_err(drop),
        };
    }
}

fn unavailable<T>(why: &str) -> StoreResult<T> {
    Err(StoreError::Unavailable(why.to_string()))
}

async fn record_and_claim(
    conn: &mut SqliteConnection,
    job: &RecordJob,
) -> StoreResult<RecordedMany> {
    let all_succeeded = job
        .outcomes
        .iter()
        .all(|o| o.after == AfterAttempt::Succeeded && !o.claimed.delivery.test);
    let stored = if all_succeeded && job.outcomes.len() > 1 {
        record_successes_in(conn, &job.outcomes).await?
    } else {
        let mut stored = Vec::with_capacity(job.outcomes.len());
        for outcome in &job.outcomes {
            stored.push(record_in(conn, &outcome.claimed, &outcome.attempt, outcome.after).await?);
        }
        stored
    };
    touch_endpoints(conn, &job.outcomes).await?;
    let next = match &job.then_claim {
        Some((request, limit)) => claim_in(conn, request, *limit).await?,
        None => Vec::new(),
    };
    Ok(RecordedMany { stored, next })
}

/// The queue in front of the writer task.
pub(super) struct WriterQueue {
    jobs: mpsc::Sender<(Job, Reply)>,
}

impl WriterQueue {
    pub(super) fn start(pool: SqlitePool) -> WriterQueue {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(pool, queue));
        WriterQueue { jobs }
    }

    async fn submit<T>(
        &self,
        job: Job,
        reply: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Reply,
    ) -> StoreResult<T> {
        let (to, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the database writer has stopped".to_string());
        self.jobs.send((job, reply(to))).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    pub(super) async fn insert_event(&self, event: NewEvent) -> StoreResult<Accepted> {
        self.submit(Job::Insert(event), Reply::Insert).await
    }

    pub(super) async fn claim(
        &self,
        request: ClaimRequest,
        limit: usize,
    ) -> StoreResult<Vec<Claimed>> {
        self.submit(Job::Claim(request, limit), Reply::Claim).await
    }

    pub(super) async fn record(
        &self,
        outcomes: Vec<AttemptOutcome>,
        then_claim: Option<(ClaimRequest, usize)>,
    ) -> StoreResult<RecordedMany> {
        self.submit(
            Job::Record(RecordJob {
                outcomes,
                then_claim,
            }),
            Reply::Record,
        )
        .await
    }
}

async fn run(pool: SqlitePool, mut queue: mpsc::Receiver<(Job, Reply)>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(err) => {
                fail_all(batch.into_iter().map(|(_, reply)| reply), &err.to_string());
                continue;
            }
        };
        let mut unsure = false;
        if let Err(batch) = commit_together(&mut conn, batch, &mut unsure).await {
            // One job broke the batch; each job gets a transaction of its own.
            for job in batch {
                if let Err(rest) = commit_together(&mut conn, vec![job], &mut unsure).await {
                    fail_all(rest.into_iter().map(|(_, reply)| reply), "database error");
                }
            }
        }
        if unsure {
            // A connection whose sync setting could not be restored is not reused: a new
            // one starts with full syncs.
            warn!("cannot restore full syncs on the writing connection; replacing it");
            conn.close_on_drop();
        }
    }
}

/// Runs the jobs in one transaction and answers them after the commit. Jobs refuse what
/// they refuse (an unknown event type, a reused idempotency key) before they write
/// anything, so a refusal leaves the batch intact; a database error may leave a job
/// half-done, so it rolls the batch back and hands the jobs back unanswered.
async fn commit_together(
    conn: &mut SqliteConnection,
    batch: Vec<(Job, Reply)>,
    unsure: &mut bool,
) -> Result<(), Vec<(Job, Reply)>> {
    // Only an acknowledgement needs a full sync before it is given: a claim or an
    // attempt record lost to a power cut means that delivery is sent once more, which
    // at-least-once delivery allows. Such commits reach the disk with the next synced
    // commit or checkpoint; a crash of the process alone loses nothing either way.
    let acknowledges = batch.iter().any(|(job, _)| job.acknowledges());
    if !acknowledges {
        let _ = exec(conn, "PRAGMA synchronous = NORMAL").await;
    }
    let result = run_in_transaction(conn, batch).await;
    if !acknowledges {
        // Every other write on this connection acknowledges something.
        *unsure |= exec(conn, "PRAGMA synchronous = FULL").await.is_err();
    }
    result
}

async fn run_in_transaction(
    conn: &mut SqliteConnection,
    batch: Vec<(Job, Reply)>,
) -> Result<(), Vec<(Job, Reply)>> {
    if let Err(err) = exec(conn, "BEGIN IMMEDIATE").await {
        fail_all(batch.into_iter().map(|(_, reply)| reply), &err.to_string());
        return Ok(());
    }
    let mut outputs = Vec::with_capacity(batch.len());
    for (job, _) in &batch {
        let output = job.run(conn).await;
        if output.database_error() {
            let _ = exec(conn, "ROLLBACK").await;
            if batch.len() == 1 {
                if let Some((_, reply)) = batch.into_iter().next() {
                    reply.send(output);
                }
                return Ok(());
            }
            return Err(batch);
        }
        outputs.push(output);
    }
    match exec(conn, "COMMIT").await {
        Ok(()) => {
            for ((_, reply), output) in batch.into_iter().zip(outputs) {
                reply.send(output);
            }
        }
        Err(err) => {
            let _ = exec(conn, "ROLLBACK").await;
            fail_all(batch.into_iter().map(|(_, reply)| reply), &err.to_string());
        }
    }
    Ok(())
}

fn fail_all(replies: impl Iterator<Item = Reply>, why: &str) {
    let mut count = 0;
    for reply in replies {
        reply.fail(why);
        count += 1;
    }
    warn!(
        cause = why,
        jobs = count,
        "a batch of writes was not committed"
    );
}

async fn exec(conn: &mut SqliteConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(conn).await.map(drop)
}
