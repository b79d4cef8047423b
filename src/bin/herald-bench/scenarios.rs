//! The scenarios: each starts its own Herald, runs for a bounded time, and prints one
//! line. Figures are read against the ceiling: the same load generator posting straight
//! to the same receiver.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::herald::{cpu_seconds, resident_mib, Herald};
use crate::load;
use crate::receiver::{self, Arrivals};
use crate::Args;

const CLIENTS: usize = 64;
const FAST_EVENT: &str = "account.status";
const DEAD_EVENT: &str = "invoice.created";

struct Sizes {
    seconds: Duration,
    burst: usize,
    steady_rate: u32,
    steady_seconds: Duration,
    backlog: usize,
    idle_seconds: Duration,
}

impl Sizes {
    fn of(args: &Args) -> Sizes {
        let full = Sizes {
            seconds: Duration::from_secs(10),
            burst: 50_000,
            steady_rate: 1000,
            steady_seconds: Duration::from_secs(30),
            backlog: 1_000_000,
            idle_seconds: Duration::from_secs(10),
        };
        let mut sizes = match args.quick {
            false => full,
            true => Sizes {
                seconds: Duration::from_secs(2),
                burst: 2_000,
                steady_rate: 200,
                steady_seconds: Duration::from_secs(3),
                backlog: 5_000,
                idle_seconds: Duration::from_secs(3),
            },
        };
        sizes.backlog = args.backlog.unwrap_or(sizes.backlog);
        sizes.burst = args.burst.unwrap_or(sizes.burst);
        sizes
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let sizes = Sizes::of(&args);
    let store = args
        .database_url
        .as_deref()
        .map_or("sqlite", |u| u.split(':').next().unwrap_or("?"));
    println!(
        "herald-bench: store={store} quick={} commit={}",
        args.quick,
        commit()
    );
    let mut ceiling = None;
    let mut steady_p99 = None;
    let mut e2e_rate = None;
    for scenario in &args.scenarios {
        match scenario.as_str() {
            "ceiling" => ceiling = Some(run_ceiling(&sizes).await),
            "ingest" => run_ingest(&args, &sizes, ceiling).await?,
            "e2e" => e2e_rate = Some(run_e2e(&args, &sizes, ceiling).await?),
            "steady" => steady_p99 = Some(run_steady(&args, &sizes).await?),
            "isolation" => run_isolation(&args, &sizes, steady_p99).await?,
            "backlog" => run_backlog(&args, &sizes, e2e_rate).await?,
            other => anyhow::bail!("unknown scenario '{other}'"),
        }
    }
    Ok(())
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn share(value: f64, ceiling: Option<f64>) -> String {
    ceiling.map_or(String::new(), |c| {
        format!(" ({:.1}% of ceiling)", 100.0 * value / c)
    })
}

async fn run_ceiling(sizes: &Sizes) -> f64 {
    let url = receiver::start_fast(Arrivals::default()).await;
    let answered = load::ceiling(&url, CLIENTS, sizes.seconds).await;
    let rate = answered as f64 / sizes.seconds.as_secs_f64();
    println!("ceiling    requests/s={rate:.0} clients={CLIENTS}");
    rate
}

async fn run_ingest(args: &Args, sizes: &Sizes, ceiling: Option<f64>) -> anyhow::Result<()> {
    let herald = Herald::start(args.herald(), args.database_url.as_deref(), &[]).await?;
    let url = receiver::start_fast(Arrivals::default()).await;
    herald.endpoint(&url, FAST_EVENT).await?;
    let (accepted, elapsed) =
        load::burst(&herald, FAST_EVENT, CLIENTS, usize::MAX, sizes.seconds).await;
    let rate = accepted.len() as f64 / elapsed.as_secs_f64();
    println!(
        "ingest     events/s={rate:.0}{} clients={CLIENTS}",
        share(rate, ceiling)
    );
    Ok(())
}

/// Latency from each event's 202 to each of its arrivals, in milliseconds, sorted.
fn latencies(accepted: &load::Accepted, arrivals: &HashMap<String, Vec<Instant>>) -> Vec<f64> {
    let mut all: Vec<f64> =
        accepted
            .iter()
            .flat_map(|(id, at)| {
                let at = *at;
                arrivals.get(id).into_iter().flatten().map(move |arrived| {
                    arrived.saturating_duration_since(at).as_secs_f64() * 1000.0
                })
            })
            .collect();
    all.sort_by(f64::total_cmp);
    all
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn wait_for(arrivals: &Arrivals, expected: usize, limit: Duration) -> Instant {
    let started = Instant::now();
    while arrivals.count() < expected && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Instant::now()
}

async fn run_e2e(args: &Args, sizes: &Sizes, ceiling: Option<f64>) -> anyhow::Result<f64> {
    let mut last = 0.0;
    for endpoints in [1, 10] {
        let (rate, _) = burst_to(args, sizes, endpoints, &[]).await?;
        println!("{}", rate.line(&format!("e2e x{endpoints:<3}"), ceiling));
        last = rate.per_second;
    }
    Ok(last)
}

struct BurstFigures {
    per_second: f64,
    delivered: usize,
    expected: usize,
    latency: Vec<f64>,
}

impl BurstFigures {
    fn line(&self, name: &str, ceiling: Option<f64>) -> String {
        format!(
            "{name} deliveries/s={:.0}{} delivered={}/{} latency_ms p50={:.1} p99={:.1} max={:.1}",
            self.per_second,
            share(self.per_second, ceiling),
            self.delivered,
            self.expected,
            percentile(&self.latency, 0.5),
            percentile(&self.latency, 0.99),
            self.latency.last().copied().unwrap_or(f64::NAN),
        )
    }
}

/// A burst of events to `endpoints` fast endpoints on a fresh Herald (or the given one).
async fn burst_to(
    args: &Args,
    sizes: &Sizes,
    endpoints: usize,
    extra: &[&str],
) -> anyhow::Result<(BurstFigures, Herald)> {
    let herald = Herald::start(args.herald(), args.database_url.as_deref(), extra).await?;
    let figures = burst_on(&herald, sizes, endpoints).await?;
    Ok((figures, herald))
}

async fn burst_on(
    herald: &Herald,
    sizes: &Sizes,
    endpoints: usize,
) -> anyhow::Result<BurstFigures> {
    let arrivals = Arrivals::default();
    let url = receiver::start_fast(arrivals.clone()).await;
    for n in 0..endpoints {
        herald.endpoint(&format!("{url}/{n}"), FAST_EVENT).await?;
    }
    let started = Instant::now();
    let (accepted, _) = load::burst(
        herald,
        FAST_EVENT,
        CLIENTS,
        sizes.burst,
        Duration::from_secs(600),
    )
    .await;
    let expected = accepted.len() * endpoints;
    let done = wait_for(&arrivals, expected, Duration::from_secs(600)).await;
    let delivered = arrivals.count();
    let latency = latencies(&accepted, &arrivals.take());
    Ok(BurstFigures {
        per_second: delivered as f64 / done.duration_since(started).as_secs_f64(),
        delivered,
        expected,
        latency,
    })
}

async fn run_steady(args: &Args, sizes: &Sizes) -> anyhow::Result<f64> {
    let herald = Herald::start(args.herald(), args.database_url.as_deref(), &[]).await?;
    let arrivals = Arrivals::default();
    let url = receiver::start_fast(arrivals.clone()).await;
    herald.endpoint(&url, FAST_EVENT).await?;
    let accepted = load::steady(&herald, FAST_EVENT, sizes.steady_rate, sizes.steady_seconds).await;
    wait_for(&arrivals, accepted.len(), Duration::from_secs(60)).await;
    let latency = latencies(&accepted, &arrivals.take());
    let p99 = percentile(&latency, 0.99);
    println!(
        "steady     rate={}/s for {}s latency_ms p50={:.2} p99={:.2} max={:.2}",
        sizes.steady_rate,
        sizes.steady_seconds.as_secs(),
        percentile(&latency, 0.5),
        p99,
        latency.last().copied().unwrap_or(f64::NAN),
    );
    Ok(p99)
}

async fn run_isolation(args: &Args, sizes: &Sizes, steady_p99: Option<f64>) -> anyhow::Result<()> {
    let herald = Herald::start(
        args.herald(),
        args.database_url.as_deref(),
        &["--attempt-timeout", "30s"],
    )
    .await?;
    let arrivals = Arrivals::default();
    let fast = receiver::start_fast(arrivals.clone()).await;
    let silent = receiver::start_silent().await;
    herald.endpoint(&silent, FAST_EVENT).await?;
    herald.endpoint(&fast, FAST_EVENT).await?;
    let accepted = load::steady(&herald, FAST_EVENT, sizes.steady_rate, sizes.steady_seconds).await;
    wait_for(&arrivals, accepted.len(), Duration::from_secs(60)).await;
    let latency = latencies(&accepted, &arrivals.take());
    let p99 = percentile(&latency, 0.99);
    let ratio = steady_p99.map_or(String::new(), |s| format!(" ({:.2}x steady p99)", p99 / s));
    println!(
        "isolation  healthy latency_ms p50={:.2} p99={p99:.2}{ratio} beside an endpoint that never answers",
        percentile(&latency, 0.5)
    );
    Ok(())
}

async fn run_backlog(args: &Args, sizes: &Sizes, empty_rate: Option<f64>) -> anyhow::Result<()> {
    let herald = Herald::start(args.herald(), args.database_url.as_deref(), &[]).await?;
    let dead = closed_port_url()?;
    herald.endpoint(&dead, DEAD_EVENT).await?;
    let filled = Instant::now();
    let (accepted, _) = load::burst(
        &herald,
        DEAD_EVENT,
        CLIENTS,
        sizes.backlog,
        Duration::from_secs(3600),
    )
    .await;
    let fill_seconds = filled.elapsed().as_secs_f64();

    let cpu_before = cpu_seconds(herald.pid());
    tokio::time::sleep(sizes.idle_seconds).await;
    let idle_cpu =
        100.0 * (cpu_seconds(herald.pid()) - cpu_before) / sizes.idle_seconds.as_secs_f64();
    let idle_rss = resident_mib(herald.pid());

    let figures = burst_on(&herald, sizes, 10).await?;
    let ratio = empty_rate.map_or(String::new(), |r| {
        format!(" ({:.2}x empty backlog)", figures.per_second / r)
    });
    println!(
        "backlog    waiting={} (filled in {fill_seconds:.0}s) idle_cpu={idle_cpu:.1}% rss_mib={idle_rss:.0} then e2e x10 deliveries/s={:.0}{ratio} rss_mib={:.0}",
        accepted.len(),
        figures.per_second,
        resident_mib(herald.pid()),
    );
    Ok(())
}

/// A URL on a loopback port where nothing listens: every attempt is refused at once.
fn closed_port_url() -> anyhow::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("http://127.0.0.1:{port}/dead"))
}
