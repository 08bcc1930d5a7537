//! A worker process for the end-to-end tests, built on the worker SDK, that
//! the tests kill with SIGKILL.
//!
//! Handlers (payloads are JSON):
//!
//! - `sleep` `{"ms": 50, "retry_ms": 10, "result": "..."}`: sleeps `ms` on the
//!   first attempt and `retry_ms` (default `ms`) on later ones, stopping early
//!   when cancelled; returns `result` or `<worker id>:<attempt>`.
//! - `checkpointed` `{"steps": 5, "step_ms": 20}`: runs the steps from its
//!   checkpoint on (the number of steps done), checkpointing after each;
//!   returns `resumed_from=<k>`.
//! - `fail` `{"fatal": false, "message": "..."}`: fails, for retry or for good.
//! - `echo`: returns the payload.
//!
//! Spans go over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Usage: `jobctl-test-worker --endpoint http://127.0.0.1:50051 --worker-id w1
//! --queue q [--concurrency 4]`.

use std::time::Duration;

use clap::Parser;
use jobctl_worker::{HandlerError, JobContext, Worker};
use serde_json::Value;

#[derive(Parser, Debug)]
struct Args {
    /// The jobctl server.
    #[arg(long)]
    endpoint: String,
    /// The worker id to lease with.
    #[arg(long)]
    worker_id: String,
    /// Queues to serve.
    #[arg(long, required = true)]
    queue: Vec<String>,
    /// Jobs run at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs on stderr; spans exported when the OTEL_* variables say so.
    let telemetry = jobctl_worker::telemetry::init_from_env("jobctl-test-worker")?;
    let args = Args::parse();
    let worker_id = args.worker_id.clone();
    let sleep_id = worker_id.clone();
    let worker = Worker::builder(args.endpoint.clone())
        .worker_id(worker_id.clone())
        .queues(args.queue.clone())
        .concurrency(args.concurrency as usize)
        .lease_batch(args.concurrency as usize)
        .lease_wait(Duration::from_millis(500))
        .progress_interval(Duration::from_millis(100))
        .shutdown_grace(Duration::from_secs(1))
        .handler("sleep", move |ctx: JobContext| {
            let worker_id = sleep_id.clone();
            async move { sleep(ctx, worker_id).await }
        })
        .handler("checkpointed", |ctx: JobContext| async move {
            checkpointed(ctx).await
        })
        .handler("fail", |ctx: JobContext| async move { fail(ctx).await })
        .handler("echo", |ctx: JobContext| async move {
            Ok(ctx.payload().to_vec())
        })
        .build()?;
    println!("worker {worker_id} ready");
    worker.run_until_signal().await?;
    telemetry.shutdown().await;
    Ok(())
}

fn payload(ctx: &JobContext) -> Value {
    serde_json::from_slice(ctx.payload()).unwrap_or(Value::Null)
}

fn millis(value: &Value, field: &str) -> Option<Duration> {
    value
        .get(field)
        .and_then(Value::as_u64)
        .map(Duration::from_millis)
}

async fn sleep(ctx: JobContext, worker_id: String) -> Result<Vec<u8>, HandlerError> {
    let p = payload(&ctx);
    let first = millis(&p, "ms").unwrap_or(Duration::from_millis(10));
    let pause = if ctx.attempt() > 1 {
        millis(&p, "retry_ms").unwrap_or(first)
    } else {
        first
    };
    tokio::select! {
        () = tokio::time::sleep(pause) => {}
        () = ctx.cancelled() => return Err(HandlerError::cancelled()),
    }
    let result = match p.get("result").and_then(Value::as_str) {
        Some(r) => r.to_owned(),
        None => format!("{worker_id}:{}", ctx.attempt()),
    };
    Ok(result.into_bytes())
}

async fn checkpointed(ctx: JobContext) -> Result<Vec<u8>, HandlerError> {
    let p = payload(&ctx);
    let steps = p.get("steps").and_then(Value::as_u64).unwrap_or(5);
    let step = millis(&p, "step_ms").unwrap_or(Duration::from_millis(20));
    let resumed_from: u64 = ctx
        .checkpoint()
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for done in resumed_from..steps {
        tokio::select! {
            () = tokio::time::sleep(step) => {}
            () = ctx.cancelled() => return Err(HandlerError::cancelled()),
        }
        ctx.checkpoint_now((done + 1).to_string().into_bytes())
            .await
            .map_err(|e| HandlerError::retry(format!("checkpoint: {e}")))?;
    }
    Ok(format!("resumed_from={resumed_from}").into_bytes())
}

async fn fail(ctx: JobContext) -> Result<Vec<u8>, HandlerError> {
    let p = payload(&ctx);
    let message = p
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("failed on purpose")
        .to_owned();
    if p.get("fatal").and_then(Value::as_bool).unwrap_or(false) {
        Err(HandlerError::fatal(message))
    } else {
        Err(HandlerError::retry(message))
    }
}
