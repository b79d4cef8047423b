//! Group commit for the hot writes: event ingest, claims and attempt records.
//!
//! One task owns the writing connection for these writes. It takes every job waiting
//! in its queue, runs them in one transaction (each behind its own savepoint, so one
//! job's error leaves the others intact), commits once, and only then answers each
//! caller. A full sync per commit is what makes an answer durable; sharing it between
//! many jobs is what makes that affordable.

use sqlx::sqlite::SqlitePool;
use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::{claim_in, insert_event_in, record_in};
use crate::model::{AfterAttempt, Attempt, NewEvent};
use crate::store::{Accepted, ClaimRequest, Claimed, Recorded, StoreError, StoreResult};

/// The most jobs in one transaction; bounds how long one commit keeps callers waiting.
const MAX_BATCH: usize = 512;

const QUEUE_CAPACITY: usize = 8192;

enum Job {
    Insert(NewEvent, oneshot::Sender<StoreResult<Accepted>>),
    Claim(ClaimRequest, oneshot::Sender<StoreResult<Option<Claimed>>>),
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
        StoreResult<Option<Claimed>>,
        oneshot::Sender<StoreResult<Option<Claimed>>>,
    ),
    Record(
        StoreResult<Recorded>,
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

    fn answer(self) {
        // A caller that stopped waiting has nothing left to learn.
        let _ = match self {
            Done::Insert(result, reply) => reply.send(result).map_err(drop),
            Done::Claim(result, reply) => reply.send(result).map_err(drop),
            Done::Record(result, reply) => reply.send(result).map_err(drop),
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
    async fn run(self, conn: &mut SqliteConnection) -> Done {
        match self {
            Job::Insert(event, reply) => Done::Insert(insert_event_in(conn, &event).await, reply),
            Job::Claim(request, reply) => Done::Claim(claim_in(conn, &request).await, reply),
            Job::Record(job, reply) => Done::Record(record_and_claim(conn, *job).await, reply),
        }
    }

    /// Turns a job that never ran into a result that says why.
    fn not_run(self) -> Done {
        let why = "not run: the transaction could not start";
        match self {
            Job::Insert(_, reply) => Done::Insert(unavailable(why), reply),
            Job::Claim(_, reply) => Done::Claim(unavailable(why), reply),
            Job::Record(_, reply) => Done::Record(unavailable(why), reply),
        }
    }
}

fn unavailable<T>(why: &str) -> StoreResult<T> {
    Err(StoreError::Unavailable(why.to_string()))
}

async fn record_and_claim(conn: &mut SqliteConnection, job: RecordJob) -> StoreResult<Recorded> {
    let stored = record_in(conn, &job.claimed, &job.attempt, job.after).await?;
    let next = match &job.then_claim {
        Some(request) => claim_in(conn, request).await?,
        None => None,
    };
    Ok(Recorded { stored, next })
}

/// The queue in front of the writer task.
pub(super) struct WriterQueue {
    jobs: mpsc::Sender<Job>,
}

impl WriterQueue {
    pub(super) fn start(pool: SqlitePool) -> WriterQueue {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(pool, queue));
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

    pub(super) async fn claim(&self, request: ClaimRequest) -> StoreResult<Option<Claimed>> {
        self.submit(|reply| Job::Claim(request, reply)).await
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

async fn run(pool: SqlitePool, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&pool, batch).await;
    }
}

async fn commit_batch(pool: &SqlitePool, batch: Vec<Job>) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(err) => {
            return fail_all(
                batch.into_iter().map(Job::not_run).collect(),
                &err.to_string(),
            )
        }
    };
    if let Err(err) = exec(&mut conn, "BEGIN IMMEDIATE").await {
        return fail_all(
            batch.into_iter().map(Job::not_run).collect(),
            &err.to_string(),
        );
    }

    let mut done = Vec::with_capacity(batch.len());
    for job in batch {
        if let Err(err) = exec(&mut conn, "SAVEPOINT job").await {
            done.push(job.not_run());
            warn!(cause = %err, "cannot open a savepoint");
            continue;
        }
        let result = job.run(&mut conn).await;
        if result.failed() {
            let _ = exec(&mut conn, "ROLLBACK TO job").await;
        }
        let _ = exec(&mut conn, "RELEASE job").await;
        done.push(result);
    }

    match exec(&mut conn, "COMMIT").await {
        Ok(()) => done.into_iter().for_each(Done::answer),
        Err(err) => {
            let _ = exec(&mut conn, "ROLLBACK").await;
            fail_all(done, &err.to_string());
        }
    }
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

async fn exec(conn: &mut SqliteConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(conn).await.map(drop)
}
