//! `jobctl-bench <workload> [flags]`: see BENCHMARKS.md.

use clap::Parser;
use jobctl_bench::{Options, report};

/// The in-process server gets the allocator the `jobctl-server` binary has.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = Options::parse();
    let json = options.json;
    let say = move |line: &str| {
        if !json {
            eprintln!("{line}");
        }
    };
    match jobctl_bench::run(&options, &say).await {
        Ok(metrics) => {
            if !json {
                println!("\n{}", report::table(&metrics));
            }
            for m in &metrics {
                println!("{}", m.json());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jobctl-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
