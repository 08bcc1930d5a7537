//! A demo worker: handles kind `demo` in ten short steps, reporting progress
//! after each, checkpointing halfway, and stopping when cancelled.
//!
//! ```text
//! cargo run -p jobctl-worker --example demo_worker -- \
//!     [--server http://127.0.0.1:50051] [--queue default] [--step-ms 300] [--grace-ms 30000]
//! ```

use std::time::Duration;

use jobctl_worker::{HandlerError, JobContext, Progress, Worker};

const STEPS: u64 = 10;

struct Args {
    server: String,
    queue: String,
    step: Duration,
    grace: Duration,
}

fn usage() -> String {
    "usage: demo_worker [--server URL] [--queue NAME] [--step-ms MS] [--grace-ms MS]".to_owned()
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        server: "http://127.0.0.1:50051".to_owned(),
        queue: "default".to_owned(),
        step: Duration::from_millis(300),
        grace: Duration::from_secs(30),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if flag == "--help" || flag == "-h" {
            return Err(usage());
        }
        let value = match inline.or_else(|| it.next()) {
            Some(value) => value,
            None => return Err(format!("{flag} needs a value\n{}", usage())),
        };
        match flag.as_str() {
            "--server" => args.server = value,
            "--queue" => args.queue = value,
            "--step-ms" => args.step = millis(&flag, &value)?,
            "--grace-ms" => args.grace = millis(&flag, &value)?,
            _ => return Err(format!("unknown argument {flag}\n{}", usage())),
        }
    }
    Ok(args)
}

fn millis(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("{flag}: {value:?} is not a number of milliseconds"))
}

/// Runs ten steps from the checkpoint on (the number of steps done).
async fn demo(ctx: JobContext, step: Duration) -> Result<Vec<u8>, HandlerError> {
    let resumed_from = ctx
        .checkpoint()
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        .min(STEPS);
    for done in resumed_from + 1..=STEPS {
        tokio::select! {
            () = ctx.cancelled() => return Err(HandlerError::cancelled()),
            () = tokio::time::sleep(step) => {}
        }
        ctx.progress(Progress {
            percent: done as f64 * 100.0 / STEPS as f64,
            current: done,
            total: STEPS,
            message: format!("step {done} of {STEPS}"),
        });
        if done == STEPS / 2 {
            ctx.checkpoint_now(done.to_string().into_bytes()).await?;
        }
    }
    let result = format!(
        "demo done: {} payload bytes, attempt {}, resumed from step {resumed_from}",
        ctx.payload().len(),
        ctx.attempt()
    );
    Ok(result.into_bytes())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let step = args.step;
    let worker = Worker::builder(args.server)
        .queues([args.queue])
        .shutdown_grace(args.grace)
        .handler("demo", move |ctx: JobContext| demo(ctx, step))
        .build()?;
    worker.run_until_signal().await?;
    Ok(())
}
