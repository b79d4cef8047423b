//! Three `herald serve` processes on one PostgreSQL database, like a deployment behind
//! a load balancer: they share the work, one is killed with SIGKILL partway, and every
//! acknowledged event still arrives, in order per endpoint, with no duplicates but the
//! attempts that were in flight at the kill.
//!
//! Runs only with `HERALD_TEST_STORE=postgres` and returns at once otherwise: on SQLite
//! one process owns the data directory, so a second one cannot start.
//!
//! The ignored test at the end is the measurement in docs/DEPLOYMENT.md; run it with
//! `HERALD_TEST_STORE=postgres cargo test --release --test multiprocess -- --ignored
//! --nocapture`.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{call, free_port, Install, Process};
use common::{on_postgres, Receiver, Reply};
use serde_json::json;

/// One event as a host application saw it: when it first asked, and when it got 202.
#[derive(Clone, Debug)]
struct Sent {
    id: String,
    event_type: &'static str,
    asked: Instant,
    acknowledged: Instant,
}

/// Several `herald serve` processes on one install, reached like a load balancer would.
struct Fleet {
    install: Install,
    processes: Vec<Process>,
    token: String,
    http: reqwest::Client,
}

impl Fleet {
    /// Starts `count` processes one after the other (the first makes the schema and
    /// the first token).
    async fn start(count: usize) -> Fleet {
        let install = Install::new().await;
        let processes: Vec<Process> = (0..count)
            .map(|_| {
                Process::start_with(&install, free_port(), &["--max-concurrent-endpoints", "64"])
            })
            .collect();
        let token = install.token();
        Fleet {
            install,
            processes,
            token,
            http: reqwest::Client::new(),
        }
    }

    fn log(&self, process: &Process) -> String {
        let port = process.base.rsplit(':').next().unwrap();
        let path = self.install.data.path().join(format!("serve-{port}.log"));
        std::fs::read_to_string(path).unwrap()
    }

    /// Every process's log lines that mention one of `words`, for a failure message.
    fn logs_about(&self, words: &[&str]) -> String {
        let mut found = String::new();
        for (n, process) in self.processes.iter().enumerate() {
            for line in self.log(process).lines() {
                if words.iter().any(|word| line.contains(word)) {
                    found.push_str(&format!("process {n}: {line}\n"));
                }
            }
        }
        found
    }

    /// The stored rows of the deliveries of some events, for a failure message.
    async fn rows_of(&self, events: &[&str]) -> String {
        let url = &self.install.database.as_ref().unwrap().url;
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT format('seq %s, event %s, accepted at %s, first attempted at %s', \
               seq, event_id, created_at, first_attempt_at) \
             FROM deliveries WHERE event_id = ANY($1) ORDER BY seq",
        )
        .bind(events.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        .fetch_all(&pool)
        .await
        .unwrap();
        rows.join("\n")
    }

    fn bases(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.base.clone()).collect()
    }

    async fn endpoint(&self, url: &str, event_type: &str) {
        let body = json!({"name": event_type, "url": url, "events": [event_type], "verify": false});
        let (status, answer) = call(
            &self.http,
            &self.processes[0].base,
            &self.token,
            reqwest::Method::POST,
            "/api/v1/endpoints",
            body,
        )
        .await;
        assert_eq!(status, 201, "{answer}");
    }

    /// `clients` host applications emit `events` events between them, each waiting for
    /// its 202 before the next, round-robin over `types`. A client whose process does
    /// not answer tries the next one with the same `Idempotency-Key`, as a host behind
    /// a load balancer would.
    fn emit(&self, clients: usize, events: usize, types: &'static [&'static str]) -> Emitting {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|client| {
                let (http, bases, token, sent) = (
                    self.http.clone(),
                    self.bases(),
                    self.token.clone(),
                    sent.clone(),
                );
                tokio::spawn(async move {
                    let mut target = client % bases.len();
                    for n in (client..events).step_by(clients) {
                        let event_type = types[n % types.len()];
                        let body =
                            json!({"event": event_type, "object_id": n, "current": {"n": n}});
                        let asked = Instant::now();
                        let id = loop {
                            let response = http
                                .post(format!("{}/api/v1/events", bases[target]))
                                .bearer_auth(&token)
                                .header("idempotency-key", format!("event-{n}"))
                                .json(&body)
                                .send()
                                .await;
                            match response {
                                Ok(r) if r.status() == 202 => {
                                    let answer: serde_json::Value = r.json().await.unwrap();
                                    break answer["id"].as_str().unwrap().to_string();
                                }
                                _ => target = (target + 1) % bases.len(),
                            }
                        };
                        sent.lock().unwrap().push(Sent {
                            id,
                            event_type,
                            asked,
                            acknowledged: Instant::now(),
                        });
                    }
                })
            })
            .collect();
        Emitting { sent, tasks }
    }
}

struct Emitting {
    sent: Arc<Mutex<Vec<Sent>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Emitting {
    async fn finish(self) -> Vec<Sent> {
        for task in self.tasks {
            task.await.unwrap();
        }
        let sent = self.sent.lock().unwrap().clone();
        sent
    }
}

/// Per receiver path, the webhook ids in the order they first arrived, and how many
/// arrived more than once.
fn arrivals(receiver: &Receiver) -> (HashMap<String, Vec<String>>, usize) {
    let mut seen = HashSet::new();
    let mut first: HashMap<String, Vec<String>> = HashMap::new();
    let mut repeats = 0;
    for post in receiver.posts() {
        let id = post.header("webhook-id").to_string();
        if seen.insert((post.path.clone(), id.clone())) {
            first.entry(post.path.clone()).or_default().push(id);
        } else {
            repeats += 1;
        }
    }
    (first, repeats)
}

/// The order a receiver may rely on: an event whose 202 came back before another was
/// even asked for arrives first. Events that were in flight together may come in
/// either order, since neither was accepted before the other.
fn check_order(arrived: &[String], sent: &HashMap<String, Sent>) -> Result<(), (String, String)> {
    let mut latest_asked: Option<(Instant, &str)> = None;
    for id in arrived {
        let event = &sent[id];
        if let Some((asked, earlier)) = latest_asked {
            if asked > event.acknowledged {
                return Err((earlier.to_string(), id.clone()));
            }
        }
        if latest_asked.is_none_or(|(asked, _)| event.asked > asked) {
            latest_asked = Some((event.asked, id));
        }
    }
    Ok(())
}

/// One endpoint per type; an endpoint's lane makes one attempt at a time across all
/// processes, so more endpoints mean more lanes at work together.
const TYPES: &[&str] = &[
    "account.created",
    "account.updated",
    "invoice.paid",
    "invoice.created",
    "ticket.created",
    "ticket.closed",
    "job.created",
    "job.completed",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_the_work_and_survive_one_killed_mid_delivery() {
    if !on_postgres() {
        return;
    }
    let events = 10_000;
    let receiver = Receiver::answering(Reply::Status(200)).await;
    let mut fleet = Fleet::start(3).await;
    let paths: Vec<String> = TYPES.iter().map(|t| format!("/{t}")).collect();
    for (path, event_type) in paths.iter().zip(TYPES) {
        let url = format!("http://127.0.0.1:{}{path}", receiver.port);
        fleet.endpoint(&url, event_type).await;
    }

    let emitting = fleet.emit(12, events, TYPES);
    while receiver.posts().len() < events / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = &mut fleet.processes[1];
    killed.signal("-KILL");
    assert!(killed.wait_exit(Duration::from_secs(5)));
    let posts_at_kill = receiver.posts().len();
    let began = Instant::now();
    let sent = emitting.finish().await;
    eprintln!(
        "killed after {posts_at_kill} posts; the rest acknowledged in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    assert_eq!(
        sent.len(),
        events,
        "every event was acknowledged by some process"
    );
    assert!(
        posts_at_kill < events,
        "the kill came while deliveries were pending"
    );

    // Deliveries held by the killed process wait for their leases: attempt timeout
    // (5 s) plus the engine's 30 s margin.
    let expected = events;
    let started = Instant::now();
    loop {
        let (first, _) = arrivals(&receiver);
        let arrived: usize = first.values().map(Vec::len).sum();
        if arrived == expected {
            eprintln!(
                "all arrived {:.1} s after the last acknowledgement",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{} of {expected} deliveries never arrived",
            expected - arrived
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (first, repeats) = arrivals(&receiver);
    // A lane has at most its claimed batch (64) attempted and not yet recorded.
    assert!(
        repeats <= 64 * paths.len(),
        "{repeats} duplicates; only the attempts unsettled at the kill (one batch per endpoint at most) may repeat"
    );
    let by_id: HashMap<String, Sent> = sent.iter().map(|s| (s.id.clone(), s.clone())).collect();
    for (path, event_type) in paths.iter().zip(TYPES) {
        let arrived = &first[path];
        let wanted: HashSet<&String> = sent
            .iter()
            .filter(|s| s.event_type == *event_type)
            .map(|s| &s.id)
            .collect();
        assert_eq!(arrived.iter().collect::<HashSet<_>>(), wanted, "{path}");
        if let Err((earlier, later)) = check_order(arrived, &by_id) {
            let logs = fleet.logs_about(&[&earlier, &later]);
            let rows = fleet.rows_of(&[&earlier, &later]).await;
            panic!(
                "{path}: {earlier} arrived before {later}, though it was sent only after \
                 {later} was accepted; what the processes logged about both:\n{logs}\n{rows}"
            );
        }
    }

    // Every process made attempts: the work was shared.
    for (n, process) in fleet.processes.iter().enumerate() {
        assert!(
            fleet.log(process).contains("delivery succeeded"),
            "process {n} made no attempt"
        );
    }
}

/// Measures how ingest and delivery throughput grow with processes; see
/// docs/DEPLOYMENT.md for the figures and the machine they were taken on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run it by hand"]
async fn throughput_with_one_two_and_three_processes() {
    // On SQLite, one process: the baseline the others are measured against.
    let most = if on_postgres() { 3 } else { 1 };
    let events: usize = std::env::var("HERALD_BENCH_EVENTS").map_or(8_000, |n| n.parse().unwrap());
    for processes in 1..=most {
        let receiver = Receiver::answering(Reply::Status(200)).await;
        let fleet = Fleet::start(processes).await;
        for event_type in TYPES {
            let url = format!("http://127.0.0.1:{}/{event_type}", receiver.port);
            fleet.endpoint(&url, event_type).await;
        }

        let started = Instant::now();
        let sent = fleet.emit(32, events, TYPES).finish().await;
        let ingest = started.elapsed();
        while arrivals(&receiver).0.values().map(Vec::len).sum::<usize>() < sent.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivered = started.elapsed();
        println!(
            "processes={processes} events={events} ingest={:.0}/s delivered={:.0}/s (all delivered after {:.1} s)",
            events as f64 / ingest.as_secs_f64(),
            events as f64 / delivered.as_secs_f64(),
            delivered.as_secs_f64()
        );
    }
}
