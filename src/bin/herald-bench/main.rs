//! `herald-bench`: starts Herald and its own receiver on loopback, runs each scenario for
//! a bounded time, and prints one line of figures per scenario. It measures; it never
//! judges: no figure makes it fail. See docs/PERFORMANCE.md for what each scenario does.

mod herald;
mod load;
mod receiver;
mod scenarios;

use std::path::PathBuf;

use clap::Parser;

/// Measure Herald's throughput and latency on this machine.
#[derive(Parser, Debug)]
#[command(name = "herald-bench")]
pub struct Args {
    /// The herald binary to measure [default: the one beside this benchmark]
    #[arg(long)]
    herald: Option<PathBuf>,
    /// Database URL to run Herald on; the default is SQLite in a temporary directory
    #[arg(long)]
    database_url: Option<String>,
    /// Small sizes, to show in seconds that every scenario still works
    #[arg(long)]
    quick: bool,
    /// Scenarios to run, comma-separated
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ceiling,ingest,e2e,steady,isolation,backlog"
    )]
    scenarios: Vec<String>,
    /// Deliveries waiting on a dead endpoint in the backlog scenario [default: 1000000]
    #[arg(long)]
    backlog: Option<usize>,
    /// Events in each end-to-end burst [default: 50000]
    #[arg(long)]
    burst: Option<usize>,
}

impl Args {
    /// The binary under test, always set once the arguments are parsed.
    fn herald(&self) -> &std::path::Path {
        self.herald.as_deref().expect("main sets the binary")
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.herald.is_none() {
        args.herald = Some(std::env::current_exe()?.with_file_name("herald"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(scenarios::run(args))
}
