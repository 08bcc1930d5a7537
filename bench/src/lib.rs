//! The jobctl benchmark suite (see BENCHMARKS.md at the top of the
//! repository): each workload starts what it needs (its own `redis-server`
//! and a jobctl server, unless given addresses), runs a few times, and
//! reports the median and spread of each quantity.

pub mod env;
pub mod report;
pub mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub use env::Env;
pub use report::Metric;

/// A workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Jobs/s accepted: single Submit from concurrent clients, and SubmitBatch.
    Submit,
    /// One producer, one Submit at a time: jobs/s and each call's latency.
    SubmitSeq,
    /// Jobs/s from a preloaded queue through plain loops on the raw contract
    /// (Lease 100, then one Complete per job; then one CompleteBatch per
    /// lease), as a worker in any language would.
    Workers,
    /// Jobs/s from a preloaded queue through the Rust worker SDK, and Redis
    /// commands per job (INFO commandstats) by command.
    Drain,
    /// Submit → a watcher sees SUCCEEDED, one job at a time on an idle system.
    Roundtrip,
    /// One job's progress at 50 Hz to many watchers: delivery latency and
    /// Redis connections.
    Fanout,
    /// Redis memory per queued job, and Lease time at that depth vs 1,000.
    Memory,
    /// Redis commands/s while workers long-poll an empty queue.
    Idle,
    /// `--jobs` every-second schedules (10,000): fire lag and Redis CPU per
    /// fire.
    Schedules,
    /// ListJobs page time with 1,000,000 jobs in the queue: the newest
    /// page, a page deep in a time range, one state's small set, and a
    /// filter that matches nothing (a full scan-limited page).
    List,
    /// Submit and drain over many queues on a Redis Cluster of 1 shard and
    /// of 3 shards: jobs/s and Redis CPU per job on each shard.
    Shards,
    /// Every workload above, in that order.
    All,
}

/// `jobctl-bench <workload> [flags]`.
#[derive(Parser, Clone, Debug)]
#[command(name = "jobctl-bench", version, about = "Benchmarks jobctl")]
pub struct Options {
    /// What to measure.
    #[arg(value_enum)]
    pub workload: Workload,

    /// Runs of each measurement (the median and the spread are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,

    /// Jobs per run: drain and workers 100,000; submit 20,000 single and
    /// 100,000 batched; submit-seq 20,000; memory 1,000,000; list
    /// 1,000,000; round trip 2,000.
    #[arg(long)]
    pub jobs: Option<usize>,

    /// Concurrent Submit calls (single submits).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// Jobs per SubmitBatch call.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,

    /// Worker processes' worth of SDK workers (each its own connection).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,

    /// Lease-and-complete loops of the workers workload.
    #[arg(long, default_value_t = 8)]
    pub loops: usize,

    /// Jobs each worker runs at once.
    #[arg(long, default_value_t = 128)]
    pub worker_concurrency: usize,

    /// Watcher counts of the fan-out workload.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000])]
    pub watchers: Vec<usize>,

    /// How long fan-out sends progress and idle waits, in seconds (fan-out
    /// 5 s, idle 30 s by default).
    #[arg(long)]
    pub duration: Option<f64>,

    /// Queues of the shards workload (spread over the shards by name).
    #[arg(long, default_value_t = 12)]
    pub queues: usize,

    /// Long-polling workers of the idle workload.
    #[arg(long, default_value_t = 100)]
    pub idle_workers: usize,

    /// Use this jobctl server instead of starting one (`http://host:port`).
    #[arg(long)]
    pub server: Option<String>,

    /// Use this Redis (for the server the bench starts, and for INFO).
    #[arg(long)]
    pub redis_url: Option<String>,

    /// Start this `jobctl-server` binary (for example
    /// target/release/jobctl-server) instead of serving in-process.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,

    /// Print only JSON lines.
    #[arg(long)]
    pub json: bool,
}

impl Options {
    /// Options for a workload with every default (for tests).
    pub fn defaults(workload: Workload) -> Self {
        Options::parse_from(["jobctl-bench", workload_name(workload)])
    }

    fn duration_or(&self, default: Duration) -> Duration {
        self.duration
            .filter(|d| d.is_finite() && *d > 0.0)
            .map_or(default, Duration::from_secs_f64)
    }
}

/// The command-line name of a workload.
pub fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Submit => "submit",
        Workload::SubmitSeq => "submit-seq",
        Workload::Workers => "workers",
        Workload::Drain => "drain",
        Workload::Roundtrip => "roundtrip",
        Workload::Fanout => "fanout",
        Workload::Memory => "memory",
        Workload::Idle => "idle",
        Workload::Schedules => "schedules",
        Workload::List => "list",
        Workload::Shards => "shards",
        Workload::All => "all",
    }
}

/// Runs the workload(s) and returns every metric; `progress` is told what
/// is happening (one line per step).
pub async fn run(options: &Options, progress: &dyn Fn(&str)) -> Result<Vec<Metric>, String> {
    let all = [
        Workload::Submit,
        Workload::SubmitSeq,
        Workload::Drain,
        Workload::Workers,
        Workload::Roundtrip,
        Workload::Fanout,
        Workload::Memory,
        Workload::Idle,
        Workload::Schedules,
        Workload::List,
        Workload::Shards,
    ];
    let chosen: Vec<Workload> = match options.workload {
        Workload::All => all.to_vec(),
        w => vec![w],
    };
    let mut metrics = Vec::new();
    for w in chosen {
        progress(&format!("== {}", workload_name(w)));
        let found = match w {
            Workload::Submit => workloads::submit(options, progress).await?,
            Workload::SubmitSeq => workloads::submit_seq(options, progress).await?,
            Workload::Workers => workloads::workers(options, progress).await?,
            Workload::Drain => workloads::drain(options, progress).await?,
            Workload::Roundtrip => workloads::roundtrip(options, progress).await?,
            Workload::Fanout => workloads::fanout(options, progress).await?,
            Workload::Memory => workloads::memory(options, progress).await?,
            Workload::Idle => workloads::idle(options, progress).await?,
            Workload::Schedules => workloads::schedules(options, progress).await?,
            Workload::List => workloads::list(options, progress).await?,
            Workload::Shards => workloads::shards(options, progress).await?,
            Workload::All => Vec::new(),
        };
        metrics.extend(found);
    }
    Ok(metrics)
}
