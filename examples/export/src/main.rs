//! `cargo run -p jobctl-export-example`, then open the printed address and
//! press Export. See README.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use jobctl_export_example::{Options, start};

#[derive(Parser)]
#[command(
    about = "The \"export data\" flow on jobctl: a page, a live progress bar over Server-Sent Events, a CSV download"
)]
struct Args {
    /// Address of the HTTP service (the page).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Use this jobctl server (e.g. http://127.0.0.1:50051) instead of
    /// starting one in this process on the embedded store.
    #[arg(long, value_name = "URL")]
    jobctl: Option<String>,
    /// Rows an export writes.
    #[arg(long, default_value_t = 20_000)]
    rows: u64,
    /// Rows per chunk (one progress update and one checkpoint each).
    #[arg(long, default_value_t = 500)]
    chunk_rows: u64,
    /// Pause per chunk, standing in for the query that produces it.
    #[arg(long, default_value = "100ms", value_parser = parse_millis)]
    chunk_delay: Duration,
    /// End each event stream after N events, as a proxy with a short timeout
    /// would, to watch the page resume with Last-Event-ID.
    #[arg(long, value_name = "N")]
    cut_streams_after: Option<usize>,
    /// Where the CSV files are written [default: <temp dir>/jobctl-exports].
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    let ms = s.strip_suffix("ms").unwrap_or(s);
    ms.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("milliseconds, like 100ms: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,jobctl_export_example=info".into()),
        )
        .init();
    let options = Options {
        http: args.http,
        jobctl: args.jobctl,
        rows: args.rows,
        chunk_rows: args.chunk_rows,
        chunk_delay: args.chunk_delay,
        out_dir: args
            .out_dir
            .unwrap_or_else(|| std::env::temp_dir().join("jobctl-exports")),
        cut_streams_after: args.cut_streams_after,
    };
    let out_dir = options.out_dir.clone();
    let running = match start(options).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            if matches!(e, jobctl_export_example::Error::Bind { what: "http", .. }) {
                eprintln!("       pick another address with --http 127.0.0.1:8081");
            }
            return ExitCode::FAILURE;
        }
    };
    if running.embedded {
        println!(
            "jobctl on {} (embedded store: state is lost on exit)",
            running.jobctl_endpoint
        );
    } else {
        println!("jobctl at {}", running.jobctl_endpoint);
    }
    println!(
        "worker: queue \"exports\", kind \"export_csv\", files in {}",
        out_dir.display()
    );
    println!();
    println!("open {} and press Export (Ctrl-C stops)", running.url());
    let result = running
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
