//! Group commit on PostgreSQL for the hot writes: event ingest, claims and attempt
//! records.
//!
//! Each queue has one or more writer tasks; each owns a connection for these writes
//! and keeps it from one batch to the next. A writer takes every job waiting in its
//! queue, runs them in one transaction, commits once, and only then answers each
//! caller. A commit is a round trip and a WAL flush; sharing one between many jobs is
//! what makes that affordable, and a second writer sends its batch while the first
//! waits. Writers of one process order their locks as writers of separate processes do.
//! The store keeps events and lanes' work in queues of their own.
//! (SQLite has its own writer, `store::sqlite::writer`.)
//!
//! Jobs run straight in the transaction, with no savepoint of their own: a savepoint
//! and its release are two more round trips per job. A job that refuses (an unknown
//! event type, a reused idempotency key) does so before it writes anything, so the
//! batch goes on. A job that hits a database error leaves the transaction aborted:
//! the batch is rolled back and every job of it runs again in a transaction of its
//! own, so that only the one at fault answers with its error.
//!
//! What a job does on the connection is `queue.rs`'s, behind [`BatchWrites`]; this
//! module only batches, orders the jobs so that processes never wait on each other in
//! a cycle, and answers.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::{debug, warn};

use crate::model::NewEvent;
use crate::store::{
    Accepted, AttemptOutcome, ClaimRequest, Claimed, RecordedMany, StoreError, StoreResult,
};

/// The most jobs in one transaction; bounds how long one commit keeps callers waiting.
const MAX_BATCH: usize = 512;

const QUEUE_CAPACITY: usize = 8192;

/// What a store does for each kind of job, on the connection of an open transaction.
#[async_trait]
pub(super) trait BatchWrites: Send + Sync + 'static {
    type Conn: Send;

    /// The statement that opens the batch's transaction.
    const BEGIN: &'static str;
    /// Opens the transaction of a batch that acknowledges nothing (claims and attempt
    /// records only), whose commit need not wait for the disk.
    const BEGIN_UNSYNCED: &'static str = Self::BEGIN;

    async fn acquire(&self) -> StoreResult<Self::Conn>;
    /// Closes a connection for good, instead of returning it to its pool.
    async fn close(conn: Self::Conn);
    /// Runs statements without parameters (the simple protocol: several may be sent
    /// at once, separated by `;`).
    async fn exec(conn: &mut Self::Conn, sql: &'static str) -> StoreResult<()>;
    async fn insert_event(conn: &mut Self::Conn, event: &NewEvent) -> StoreResult<Accepted>;
    /// Stores several events that carry no idempotency key, in the order given; per
    /// event the answer `insert_event` would give. An error of the whole is a database
    /// error that leaves the transaction aborted.
    async fn insert_events(
        conn: &mut Self::Conn,
        events: &[&NewEvent],
    ) -> StoreResult<Vec<StoreResult<Accepted>>> {
        let mut answers = Vec::with_capacity(events.len());
        for event in events {
            answers.push(Self::insert_event(conn, event).await);
        }
        Ok(answers)
    }
    /// Claims up to `limit` of the endpoint's due deliveries, in order.
    async fn claim(
        conn: &mut Self::Conn,
        request: &ClaimRequest,
        limit: usize,
    ) -> StoreResult<Vec<Claimed>>;
    /// Records a lane's attempts in the order they were made; per outcome, false when
    /// its delivery no longer exists.
    async fn record(conn: &mut Self::Conn, outcomes: &[AttemptOutcome]) -> StoreResult<Vec<bool>>;

    /// Runs last in every transaction that stored at least one new delivery.
    async fn after_new_deliveries(_conn: &mut Self::Conn) -> StoreResult<()> {
        Ok(())
    }
}

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
    async fn run<W: BatchWrites>(&self, conn: &mut W::Conn) -> Output {
        match self {
            Job::Insert(event) => Output::Insert(W::insert_event(conn, event).await),
            Job::Claim(request, limit) => Output::Claim(W::claim(conn, request, *limit).await),
            Job::Record(job) => Output::Record(record_and_claim::<W>(conn, job).await),
        }
    }

    /// The order in which jobs of one batch run. Claims and records lock their
    /// endpoint's row on PostgreSQL; taking those locks in one global order (by
    /// endpoint id, before any insert) means two processes' batches can never wait for
    /// each other in a cycle. Inserts follow, ordered by idempotency key, for the same
    /// reason with the key's unique index. A record job holds one lane's outcomes, all
    /// for one endpoint, and claims for that endpoint next.
    fn lock_order(&self) -> (u8, &str) {
        match self {
            Job::Claim(request, _) => (0, &request.endpoint_id),
            Job::Record(job) => {
                let first = job.outcomes.first().map(|o| o.claimed.endpoint.id.as_str());
                let claim = job.then_claim.as_ref().map(|(r, _)| r.endpoint_id.as_str());
                (0, first.or(claim).unwrap_or(""))
            }
            Job::Insert(event) => (1, event.idempotency_key.as_deref().unwrap_or("")),
        }
    }
}

impl Output {
    fn error(&self) -> Option<&StoreError> {
        match self {
            Output::Insert(r) => r.as_ref().err(),
            Output::Claim(r) => r.as_ref().err(),
            Output::Record(r) => r.as_ref().err(),
        }
    }

    /// Whether the job failed in a way that may have left the transaction aborted or
    /// the job half-done. Refusals are decided before a job writes anything.
    fn broke_transaction(&self) -> bool {
        let refusal = |err: &StoreError| {
            matches!(
                err,
                StoreError::UnknownEventType | StoreError::IdempotencyMismatch
            )
        };
        self.error().is_some_and(|err| !refusal(err))
    }

    /// Whether this job stored at least one new delivery.
    fn stored_deliveries(&self) -> bool {
        let Output::Insert(Ok(accepted)) = self else {
            return false;
        };
        accepted.deliveries > 0 && !accepted.replayed
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

async fn record_and_claim<W: BatchWrites>(
    conn: &mut W::Conn,
    job: &RecordJob,
) -> StoreResult<RecordedMany> {
    let stored = W::record(conn, &job.outcomes).await?;
    let next = match &job.then_claim {
        Some((request, limit)) => W::claim(conn, request, *limit).await?,
        None => Vec::new(),
    };
    Ok(RecordedMany { stored, next })
}

/// The queue in front of the writer task.
pub(super) struct WriterQueue {
    jobs: mpsc::Sender<(Job, Reply)>,
}

impl WriterQueue {
    /// Starts `writers` writer tasks on one queue, each with a connection of its own.
    /// While one waits for the database to answer or to flush a commit, another can
    /// send its batch; they take their locks in the same order, as separate processes
    /// do.
    pub(super) fn start<W: BatchWrites + Clone>(target: W, writers: usize) -> WriterQueue {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..writers.max(1) {
            let writer = Writer {
                target: target.clone(),
                conn: None,
            };
            tokio::spawn(writer.run(queue.clone()));
        }
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
        let job = RecordJob {
            outcomes,
            then_claim,
        };
        self.submit(Job::Record(job), Reply::Record).await
    }
}

/// How a transaction ended.
enum Ended {
    /// Every job has its answer, and the connection can be used again.
    Answered,
    /// A job hit a database error and the transaction was rolled back; the jobs come
    /// back unanswered, to be run again.
    RolledBack(Vec<(Job, Reply)>),
    /// Every job has its answer, but the connection may be left mid-transaction: it
    /// must not be used again.
    ConnectionLost,
}

/// The writer task's state.
struct Writer<W: BatchWrites> {
    target: W,
    /// Kept from one batch to the next: the pool would ping it once when handing it
    /// back and once when lending it again, two round trips per batch.
    conn: Option<W::Conn>,
}

impl<W: BatchWrites> Writer<W> {
    async fn run(mut self, queue: Arc<Mutex<mpsc::Receiver<(Job, Reply)>>>) {
        loop {
            let mut batch = {
                let mut queue = queue.lock().await;
                let Some(first) = queue.recv().await else {
                    break;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                batch
            };
            batch.sort_by(|(a, _), (b, _)| a.lock_order().cmp(&b.lock_order()));
            self.commit_batch(batch).await;
        }
        if let Some(conn) = self.conn.take() {
            W::close(conn).await;
        }
    }

    async fn commit_batch(&mut self, batch: Vec<(Job, Reply)>) {
        let Ended::RolledBack(batch) = self.commit_together(batch).await else {
            return;
        };
        // One job broke the batch; each job gets a transaction of its own, so that only
        // the one at fault answers with its error.
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next() {
            if let Ended::ConnectionLost = self.commit_together(vec![job]).await {
                let why = "not run: the connection to the database was lost";
                fail_all(jobs.map(|(_, reply)| reply), why);
                return;
            }
        }
    }

    /// Runs the jobs in one transaction and answers them after the commit.
    async fn commit_together(&mut self, batch: Vec<(Job, Reply)>) -> Ended {
        let acknowledges = batch.iter().any(|(job, _)| matches!(job, Job::Insert(..)));
        let mut conn = match self.begin(acknowledges).await {
            Ok(conn) => conn,
            Err(err) => {
                let why = format!("not run: the transaction could not start: {err}");
                fail_all(batch.into_iter().map(|(_, reply)| reply), &why);
                return Ended::Answered;
            }
        };
        let ended = run_in_transaction::<W>(&mut conn, batch).await;
        match ended {
            Ended::ConnectionLost => W::close(conn).await,
            _ => self.conn = Some(conn),
        }
        ended
    }

    /// Opens a transaction on the kept connection. A connection that broke while it
    /// sat idle (the database restarted, say) fails here, before any job ran; it is
    /// replaced once.
    async fn begin(&mut self, acknowledges: bool) -> StoreResult<W::Conn> {
        let begin = match acknowledges {
            true => W::BEGIN,
            false => W::BEGIN_UNSYNCED,
        };
        if let Some(mut conn) = self.conn.take() {
            match W::exec(&mut conn, begin).await {
                Ok(()) => return Ok(conn),
                Err(_) => W::close(conn).await,
            }
        }
        let mut conn = self.target.acquire().await?;
        match W::exec(&mut conn, begin).await {
            Ok(()) => Ok(conn),
            Err(err) => {
                W::close(conn).await;
                Err(err)
            }
        }
    }
}

async fn run_in_transaction<W: BatchWrites>(conn: &mut W::Conn, batch: Vec<(Job, Reply)>) -> Ended {
    // Events without an idempotency key are stored together, by one call, where the
    // first of them comes in the batch's order (they sort after every claim and record,
    // and before every keyed insert).
    let unkeyed: Vec<usize> = (0..batch.len())
        .filter(|&i| matches!(&batch[i].0, Job::Insert(e) if e.idempotency_key.is_none()))
        .collect();
    let mut outputs: Vec<Option<Output>> = (0..batch.len()).map(|_| None).collect();
    for (i, (job, _)) in batch.iter().enumerate() {
        if outputs[i].is_some() {
            continue;
        }
        if unkeyed.len() > 1 && unkeyed[0] == i {
            let events: Vec<&NewEvent> = unkeyed
                .iter()
                .filter_map(|&k| match &batch[k].0 {
                    Job::Insert(event) => Some(event),
                    _ => None,
                })
                .collect();
            let answers = match W::insert_events(conn, &events).await {
                Ok(answers) => answers,
                Err(err) => return roll_back::<W>(conn, batch, Err(err)).await,
            };
            for (&k, answer) in unkeyed.iter().zip(answers) {
                let output = Output::Insert(answer);
                if output.broke_transaction() {
                    return roll_back::<W>(conn, batch, Ok(output)).await;
                }
                outputs[k] = Some(output);
            }
            continue;
        }
        let output = job.run::<W>(conn).await;
        if output.broke_transaction() {
            return roll_back::<W>(conn, batch, Ok(output)).await;
        }
        outputs[i] = Some(output);
    }
    let Some(outputs) = outputs.into_iter().collect::<Option<Vec<Output>>>() else {
        let missing = StoreError::Unavailable("a job of the batch got no answer".to_string());
        return roll_back::<W>(conn, batch, Err(missing)).await;
    };

    if outputs.iter().any(Output::stored_deliveries) {
        if let Err(err) = W::after_new_deliveries(conn).await {
            return roll_back::<W>(conn, batch, Err(err)).await;
        }
    }
    match W::exec(conn, "COMMIT").await {
        Ok(()) => {
            for ((_, reply), output) in batch.into_iter().zip(outputs) {
                reply.send(output);
            }
            Ended::Answered
        }
        // Whether a failed COMMIT took effect is unknown, so nothing is run again.
        Err(err) => {
            let lost = W::exec(conn, "ROLLBACK").await.is_err();
            fail_all(batch.into_iter().map(|(_, reply)| reply), &err.to_string());
            match lost {
                true => Ended::ConnectionLost,
                false => Ended::Answered,
            }
        }
    }
}

/// Rolls back a transaction that `failure` broke. A job alone answers with its own
/// error; a batch comes back to be run again job by job. A connection that cannot even
/// roll back is given up, and every job fails: the database is most likely away.
async fn roll_back<W: BatchWrites>(
    conn: &mut W::Conn,
    batch: Vec<(Job, Reply)>,
    failure: StoreResult<Output>,
) -> Ended {
    if let Err(err) = W::exec(conn, "ROLLBACK").await {
        fail_all(batch.into_iter().map(|(_, reply)| reply), &err.to_string());
        return Ended::ConnectionLost;
    }
    if batch.len() > 1 {
        let cause = match &failure {
            Ok(output) => output.error().map(ToString::to_string),
            Err(err) => Some(err.to_string()),
        };
        debug!(
            cause = cause.unwrap_or_default(),
            jobs = batch.len(),
            "a write broke its batch; running each job of it alone"
        );
        return Ended::RolledBack(batch);
    }
    if let Some((_, reply)) = batch.into_iter().next() {
        match failure {
            Ok(output) => reply.send(output),
            Err(err) => reply.fail(&err.to_string()),
        }
    }
    Ended::Answered
}

fn fail_all(replies: impl Iterator<Item = Reply>, why: &str) {
    let mut count = 0;
    for reply in replies {
        reply.fail(why);
        count += 1;
    }
    if count > 0 {
        warn!(
            cause = why,
            jobs = count,
            "a batch of writes was not committed"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A stand-in database that stores event ids: written inside a transaction, kept at
    /// its commit. Events of type "unknown" are refused; events of type "breaks" are
    /// half written, then fail as a database error would.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<FakeState>>);

    #[derive(Default)]
    struct FakeState {
        committed: Vec<String>,
        open: Vec<String>,
        statements: Vec<&'static str>,
    }

    #[async_trait]
    impl BatchWrites for Fake {
        type Conn = Fake;

        const BEGIN: &'static str = "BEGIN";

        async fn acquire(&self) -> StoreResult<Fake> {
            Ok(self.clone())
        }

        async fn close(_conn: Fake) {}

        async fn exec(conn: &mut Fake, sql: &'static str) -> StoreResult<()> {
            let mut state = conn.0.lock().unwrap();
            state.statements.push(sql);
            let open = std::mem::take(&mut state.open);
            match sql {
                "COMMIT" => state.committed.extend(open),
                "ROLLBACK" => {}
                _ => state.open = open,
            }
            Ok(())
        }

        async fn insert_event(conn: &mut Fake, event: &NewEvent) -> StoreResult<Accepted> {
            if event.event_type == "unknown" {
                return Err(StoreError::UnknownEventType);
            }
            conn.0.lock().unwrap().open.push(event.id.clone());
            if event.event_type == "breaks" {
                return Err(StoreError::Database(sqlx::Error::RowNotFound));
            }
            Ok(Accepted {
                event_id: event.id.clone(),
                deliveries: 0,
                replayed: false,
                endpoints: Vec::new(),
            })
        }

        async fn claim(
            _conn: &mut Fake,
            _request: &ClaimRequest,
            _limit: usize,
        ) -> StoreResult<Vec<Claimed>> {
            Ok(Vec::new())
        }

        async fn record(_conn: &mut Fake, outcomes: &[AttemptOutcome]) -> StoreResult<Vec<bool>> {
            Ok(vec![true; outcomes.len()])
        }
    }

    fn event(id: &str, event_type: &str) -> NewEvent {
        NewEvent {
            id: id.to_string(),
            event_type: event_type.to_string(),
            object_key: String::new(),
            body: String::new(),
            accepted_at: chrono::Utc::now(),
            idempotency_key: None,
            request_hash: String::new(),
        }
    }

    /// Three inserts submitted together: on this single-threaded runtime the writer
    /// task runs only once all three wait, so they form one batch.
    async fn insert_three(fake: &Fake, types: [&str; 3]) -> [StoreResult<Accepted>; 3] {
        let queue = WriterQueue::start(fake.clone(), 1);
        let (a, b, c) = tokio::join!(
            queue.insert_event(event("a", types[0])),
            queue.insert_event(event("b", types[1])),
            queue.insert_event(event("c", types[2])),
        );
        [a, b, c]
    }

    #[tokio::test]
    async fn a_job_that_breaks_its_batch_fails_alone_and_the_others_commit() {
        let fake = Fake::default();
        let [a, b, c] = insert_three(&fake, ["known", "breaks", "known"]).await;

        assert!(a.is_ok() && c.is_ok());
        assert!(matches!(b, Err(StoreError::Database(_))), "{b:?}");
        let state = fake.0.lock().unwrap();
        assert_eq!(state.committed, ["a", "c"]);
        let each_alone = [
            "BEGIN", "ROLLBACK", // the batch
            "BEGIN", "COMMIT", "BEGIN", "ROLLBACK", "BEGIN", "COMMIT",
        ];
        assert_eq!(state.statements, each_alone);
    }

    #[tokio::test]
    async fn a_refusal_leaves_its_batch_whole() {
        let fake = Fake::default();
        let [a, b, c] = insert_three(&fake, ["known", "unknown", "known"]).await;

        assert!(a.is_ok() && c.is_ok());
        assert!(matches!(b, Err(StoreError::UnknownEventType)), "{b:?}");
        let state = fake.0.lock().unwrap();
        assert_eq!(state.committed, ["a", "c"]);
        assert_eq!(state.statements, ["BEGIN", "COMMIT"]);
    }
}
