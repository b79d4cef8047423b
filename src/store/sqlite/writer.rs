//! Group commit for the hot writes: event ingest, claims, attempt records, test
//! deliveries and the expiry sweep.
//!
//! One thread owns a connection of its own for these writes. It takes every job
//! waiting in its queue, runs them in one transaction, commits once, and only then
//! answers each caller. The thread runs the statements itself (see `hot`), so a batch
//! of hundreds of jobs costs one wake-up of the thread rather than two thread hand-offs
//! per statement.
//!
//! A commit does not wait for the disk. A batch that acknowledges events hands its
//! answers to a second thread, which syncs the write-ahead log and only then gives
//! them: a sync is what makes an acknowledgement durable, and sharing one between
//! every batch committed meanwhile is what makes it affordable. The writer goes on
//! with the next batch while the disk works, so a claim never waits for a sync.
//!
//! The store's other writes use the pool's connection. SQLite lets one connection
//! write at a time, so the two take turns through the store's write turn, a fair
//! lock, instead of waiting on the database's busy timeout.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::warn;

use super::hot;
use crate::clock::Timestamp;
use crate::model::NewEvent;
use crate::store::{
    Accepted, AttemptOutcome, ClaimRequest, Claimed, RecordedMany, StoreError, StoreResult,
};

/// The most jobs in one transaction; bounds how long one commit keeps callers waiting.
const MAX_BATCH: usize = 512;

const QUEUE_CAPACITY: usize = 8192;

/// How long a statement waits for a lock held by another connection (a reader's
/// checkpoint, or a tool that opened the file) before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may write to the database now: the writer thread for each batch, or one of
/// the store's other writes. Fair, so neither starves the other.
pub(super) type WriteTurn = Arc<Mutex<()>>;

enum Job {
    Insert(NewEvent),
    InsertTest(NewEvent, String, Timestamp),
    Claim(ClaimRequest, usize),
    Record(RecordJob),
    Expire(Timestamp, Timestamp),
}

struct RecordJob {
    outcomes: Vec<AttemptOutcome>,
    then_claim: Option<(ClaimRequest, usize)>,
}

/// Where a job's answer goes.
enum Reply {
    Insert(oneshot::Sender<StoreResult<Accepted>>),
    Claimed(oneshot::Sender<StoreResult<Claimed>>),
    Claims(oneshot::Sender<StoreResult<Vec<Claimed>>>),
    Record(oneshot::Sender<StoreResult<RecordedMany>>),
    Count(oneshot::Sender<StoreResult<u64>>),
}

/// A job's result, held until the transaction commits.
enum Output {
    Insert(StoreResult<Accepted>),
    Claimed(Box<StoreResult<Claimed>>),
    Claims(StoreResult<Vec<Claimed>>),
    Record(StoreResult<RecordedMany>),
    Count(StoreResult<u64>),
}

impl Job {
    fn run(&self, conn: &Connection) -> Output {
        match self {
            Job::Insert(event) => Output::Insert(hot::insert_event(conn, event)),
            Job::InsertTest(event, endpoint_id, lease_until) => Output::Claimed(Box::new(
                hot::insert_test_delivery(conn, event, endpoint_id, *lease_until),
            )),
            Job::Claim(request, limit) => Output::Claims(hot::claim(conn, request, *limit)),
            Job::Record(job) => Output::Record(record_and_claim(conn, job)),
            Job::Expire(cutoff, now) => Output::Count(hot::expire_overdue(conn, *cutoff, *now)),
        }
    }

    fn acknowledges(&self) -> bool {
        matches!(self, Job::Insert(_))
    }
}

impl Output {
    /// Whether the job failed inside the database, which may have left it half-done.
    fn database_error(&self) -> bool {
        let failed = |r: Option<&StoreError>| {
            matches!(r, Some(StoreError::Database(_) | StoreError::Embedded(_)))
        };
        match self {
            Output::Insert(r) => failed(r.as_ref().err()),
            Output::Claimed(r) => failed(r.as_ref().as_ref().err()),
            Output::Claims(r) => failed(r.as_ref().err()),
            Output::Record(r) => failed(r.as_ref().err()),
            Output::Count(r) => failed(r.as_ref().err()),
        }
    }
}

impl Reply {
    fn send(self, output: Output) {
        // A caller that stopped waiting has nothing left to learn.
        let _ = match (self, output) {
            (Reply::Insert(to), Output::Insert(r)) => to.send(r).map_err(drop),
            (Reply::Claimed(to), Output::Claimed(r)) => to.send(*r).map_err(drop),
            (Reply::Claims(to), Output::Claims(r)) => to.send(r).map_err(drop),
            (Reply::Record(to), Output::Record(r)) => to.send(r).map_err(drop),
            (Reply::Count(to), Output::Count(r)) => to.send(r).map_err(drop),
            (reply, _) => return reply.fail("internal: mismatched answer"),
        };
    }

    fn fail(self, why: &str) {
        let _ = match self {
            Reply::Insert(to) => to.send(unavailable(why)).map_err(drop),
            Reply::Claimed(to) => to.send(unavailable(why)).map_err(drop),
            Reply::Claims(to) => to.send(unavailable(why)).map_err(drop),
            Reply::Record(to) => to.send(unavailable(why)).map_err(drop),
            Reply::Count(to) => to.send(unavailable(why)).map_err(drop),
        };
    }
}

fn unavailable<T>(why: &str) -> StoreResult<T> {
    Err(StoreError::Unavailable(why.to_string()))
}

fn record_and_claim(conn: &Connection, job: &RecordJob) -> StoreResult<RecordedMany> {
    // A lane's outcomes are all for its one endpoint.
    let mut no_outage = false;
    let mut stored = Vec::with_capacity(job.outcomes.len());
    for outcome in &job.outcomes {
        stored.push(hot::record(
            conn,
            &outcome.claimed,
            &outcome.attempt,
            outcome.after,
            &mut no_outage,
        )?);
    }
    hot::touch_endpoints(conn, &job.outcomes)?;
    let next = match &job.then_claim {
        Some((request, limit)) => hot::claim(conn, request, *limit)?,
        None => Vec::new(),
    };
    Ok(RecordedMany { stored, next })
}

/// The queue in front of the writer thread.
pub(super) struct WriterQueue {
    jobs: mpsc::Sender<(Job, Reply)>,
}

impl WriterQueue {
    /// Opens the writing connection to the database at `path` and starts its thread.
    pub(super) fn start(path: &Path, turn: WriteTurn) -> StoreResult<WriterQueue> {
        let conn = open(path)?;
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let (synced, unsynced) = std_mpsc::channel();
        let mut log = path.as_os_str().to_owned();
        log.push("-wal");
        let log = PathBuf::from(log);
        let cannot = |err: std::io::Error| {
            StoreError::Unavailable(format!("cannot start the writer: {err}"))
        };
        std::thread::Builder::new()
            .name("herald-sqlite-sync".to_string())
            .spawn(move || sync_then_answer(&log, unsynced))
            .map_err(cannot)?;
        std::thread::Builder::new()
            .name("herald-sqlite-writer".to_string())
            .spawn(move || run(conn, turn, queue, synced))
            .map_err(cannot)?;
        Ok(WriterQueue { jobs })
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

    pub(super) async fn insert_test_delivery(
        &self,
        event: NewEvent,
        endpoint_id: &str,
        lease_until: Timestamp,
    ) -> StoreResult<Claimed> {
        let job = Job::InsertTest(event, endpoint_id.to_string(), lease_until);
        self.submit(job, Reply::Claimed).await
    }

    pub(super) async fn claim(
        &self,
        request: ClaimRequest,
        limit: usize,
    ) -> StoreResult<Vec<Claimed>> {
        self.submit(Job::Claim(request, limit), Reply::Claims).await
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

    pub(super) async fn expire_overdue(
        &self,
        cutoff: Timestamp,
        now: Timestamp,
    ) -> StoreResult<u64> {
        self.submit(Job::Expire(cutoff, now), Reply::Count).await
    }
}

fn open(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    // The file is already in WAL mode (the pool set it); these are per connection.
    // Commits do not sync: the sync thread does, before any acknowledgement. A
    // statement that may fail halfway keeps its undo record in a temporary file unless
    // temporary storage is in memory; on disk it was a sixth of the writer's time.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

fn run(
    conn: Connection,
    turn: WriteTurn,
    mut queue: mpsc::Receiver<(Job, Reply)>,
    synced: std_mpsc::Sender<Answers>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let _turn = turn.blocking_lock();
        if let Err(batch) = run_in_transaction(&conn, batch, &synced) {
            // One job broke the batch; each job gets a transaction of its own.
            for job in batch {
                if let Err(rest) = run_in_transaction(&conn, vec![job], &synced) {
                    fail_all(rest.into_iter().map(|(_, reply)| reply), "database error");
                }
            }
        }
    }
}

/// A committed batch's answers, to give once the write-ahead log is on disk.
type Answers = Vec<(Reply, Output)>;

/// Runs the jobs in one transaction and answers them after the commit. Jobs refuse what
/// they refuse (an unknown event type, a reused idempotency key) before they write
/// anything, so a refusal leaves the batch intact; a database error may leave a job
/// half-done, so it rolls the batch back and hands the jobs back unanswered.
///
/// Only an acknowledgement waits for the sync: a claim or an attempt record lost to a
/// power cut means that delivery is sent once more, which at-least-once delivery
/// allows. A crash of the process alone loses no commit either way.
fn run_in_transaction(
    conn: &Connection,
    batch: Vec<(Job, Reply)>,
    synced: &std_mpsc::Sender<Answers>,
) -> Result<(), Vec<(Job, Reply)>> {
    if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
        fail_all(batch.into_iter().map(|(_, reply)| reply), &err.to_string());
        return Ok(());
    }
    let mut outputs = Vec::with_capacity(batch.len());
    for (job, _) in &batch {
        let output = job.run(conn);
        if output.database_error() {
            let _ = conn.execute_batch("ROLLBACK");
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
    if let Err(err) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        fail_all(batch.into_iter().map(|(_, reply)| reply), &err.to_string());
        return Ok(());
    }
    let acknowledges = batch.iter().any(|(job, _)| job.acknowledges());
    let answers = batch.into_iter().map(|(_, reply)| reply).zip(outputs);
    if acknowledges {
        if let Err(std_mpsc::SendError(answers)) = synced.send(answers.collect()) {
            fail_all(answers.into_iter().map(|(reply, _)| reply), "sync stopped");
        }
    } else {
        for (reply, output) in answers {
            reply.send(output);
        }
    }
    Ok(())
}

/// The sync thread: syncs the write-ahead log once for every batch committed since the
/// last sync, then gives their answers. An answer whose sync failed is an error: its
/// event is committed but perhaps not on disk, so it is not acknowledged.
fn sync_then_answer(log: &Path, unsynced: std_mpsc::Receiver<Answers>) {
    while let Ok(first) = unsynced.recv() {
        let mut waiting = vec![first];
        waiting.extend(unsynced.try_iter());
        // Opened for each sync, a few microseconds beside the sync itself, so the file
        // synced is always the log SQLite writes now.
        let outcome = File::open(log).and_then(|file| file.sync_data());
        for answers in waiting {
            for (reply, output) in answers {
                match &outcome {
                    Ok(()) => reply.send(output),
                    Err(err) => reply.fail(&format!("cannot sync the database: {err}")),
                }
            }
        }
    }
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
