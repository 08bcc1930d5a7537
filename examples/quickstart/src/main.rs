//! The first thing to run: starts jobctl (on the embedded store unless
//! `--redis-url` is given), a worker that "renders thumbnails", submits a
//! job and follows it from QUEUED to SUCCEEDED. Then it keeps serving, so
//! the `jobctl` CLI can be tried against it, until Ctrl-C (or exits at once
//! with `--exit`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use jobctl_client::{Client, SubmitOptions};
use jobctl_proto::v1::{JobState, WatchProgressRequest};
use jobctl_worker::{HandlerError, JobContext, Worker};
use tokio::sync::oneshot;

#[derive(Parser)]
#[command(about = "Run jobctl, a worker and a client, and watch a job go through")]
struct Args {
    /// gRPC address to serve on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Keep state in this Redis instead of in memory.
    #[arg(long, env = "JOBCTL_REDIS_URL")]
    redis_url: Option<String>,
    /// Exit after the demo job instead of serving on.
    #[arg(long)]
    exit: bool,
    /// Images the demo job renders.
    #[arg(long, default_value_t = 10)]
    images: u32,
}

/// The demo handler: renders `n` thumbnails, reporting progress and a
/// checkpoint after each, resuming from the checkpoint on a retry.
async fn render_thumbnails(ctx: JobContext) -> Result<Vec<u8>, HandlerError> {
    let total: u32 = std::str::from_utf8(ctx.payload())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| HandlerError::fatal("payload must be a number of images"))?;
    let start: u32 = ctx
        .checkpoint()
        .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok())
        .unwrap_or(0);
    for done in start..total {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = ctx.cancelled() => return Err(HandlerError::cancelled()),
        }
        let done = done + 1;
        ctx.set_progress_units(
            u64::from(done),
            u64::from(total),
            format!("rendered {done}/{total} thumbnails"),
        );
        ctx.checkpoint_now(done.to_string().into_bytes())
            .await
            .map_err(|e| HandlerError::retry(e.to_string()))?;
    }
    Ok(format!("{total} thumbnails in s3://example/thumbs/").into_bytes())
}

fn state_name(state: i32) -> &'static str {
    JobState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_"))
        .unwrap_or("UNKNOWN")
}

async fn demo(endpoint: &str, images: u32) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(endpoint).await?;
    let submitted = client
        .submit(
            SubmitOptions::new("default", "thumbnails").payload(images.to_string().into_bytes()),
        )
        .await?;
    println!("submitted job {}, watching its events:", submitted.job_id);
    let mut events = client
        .job_service()
        .watch_progress(WatchProgressRequest {
            job_id: submitted.job_id.clone(),
            after_seq: 0,
        })
        .await?
        .into_inner();
    while let Some(message) = events.message().await? {
        let Some(event) = message.event else { continue };
        let progress = event.progress.clone().unwrap_or_default();
        let bar_len = ((progress.percent / 5.0) as usize).min(20);
        println!(
            "  #{:<3} {:<9} [{:<20}] {:>3.0}%  {}",
            event.seq,
            state_name(event.state),
            "#".repeat(bar_len),
            progress.percent,
            progress.message
        );
        match event.state() {
            JobState::Succeeded => {
                println!("done: {}", String::from_utf8_lossy(&event.result));
                return Ok(());
            }
            JobState::Failed | JobState::Cancelled => {
                let error = event.error.map(|e| e.message).unwrap_or_default();
                return Err(format!("job ended {}: {error}", state_name(event.state)).into());
            }
            _ => {}
        }
    }
    Err("the event stream ended before the job did".into())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot listen on {}: {e} (pick another with --listen)",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    let endpoint = format!("http://{addr}");
    let mut config = match jobctl_server::Config::try_parse_from(["jobctl-server"]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    config.redis_url = args.redis_url.clone();
    match &args.redis_url {
        Some(url) => println!("jobctl serving on {endpoint}, state in redis at {url}"),
        None => println!(
            "jobctl serving on {endpoint}, embedded store: state lives in memory and is lost on exit"
        ),
    }
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(jobctl_server::serve(config, listener, async {
        let _ = server_stopped.await;
    }));
    let worker = match Worker::builder(endpoint.clone())
        .queues(["default"])
        .concurrency(4)
        .handler("thumbnails", render_thumbnails)
        .build()
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async {
        let _ = worker_stopped.await;
    }));
    println!("worker running handler \"thumbnails\" on queue \"default\"");

    let mut code = ExitCode::SUCCESS;
    if let Err(e) = demo(&endpoint, args.images).await {
        eprintln!("error: {e}");
        code = ExitCode::FAILURE;
    }
    if !args.exit && code == ExitCode::SUCCESS {
        println!();
        println!("jobctl keeps serving. In another terminal, try:");
        println!(
            "  cargo run -q -p jobctl-client -- --server {endpoint} submit default thumbnails --payload 20"
        );
        println!("  cargo run -q -p jobctl-client -- --server {endpoint} status <job id>");
        println!("Ctrl-C stops it.");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_worker.send(());
    let _ = worker.await;
    let _ = stop_server.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: server: {e}");
            code = ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: server task: {e}");
            code = ExitCode::FAILURE;
        }
    }
    code
}
