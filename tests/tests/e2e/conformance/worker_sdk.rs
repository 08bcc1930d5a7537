//! The worker SDK against a real server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobctl_proto::v1::{JobState, SubmitRequest};
use jobctl_tests::*;
use jobctl_worker::{HandlerError, JobContext, Worker};
use tokio::sync::oneshot;

conformance! {
    sdk_worker_completes_retries_and_dead_letters_jobs, worker_threads = 4;
    sdk_worker_shutdown_hands_running_jobs_back, worker_threads = 4;
}

/// Runs `worker` until the returned sender fires (or is dropped).
fn run(
    worker: Worker,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), jobctl_worker::Error>>,
) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));
    (stop_tx, task)
}

async fn sdk_worker_completes_retries_and_dead_letters_jobs(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let calls = flaky_calls.clone();
    let worker = Worker::builder(srv.endpoint.clone())
        .worker_id("sdk")
        .queues(["sdk"])
        .concurrency(4)
        .lease_wait(Duration::from_millis(500))
        .progress_interval(Duration::from_millis(50))
        .shutdown_grace(Duration::from_secs(1))
        .handler("upper", |ctx: JobContext| async move {
            ctx.set_progress(50.0, "halfway");
            Ok(ctx.payload().to_ascii_uppercase())
        })
        .handler("flaky", move |ctx: JobContext| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if ctx.attempt() < 3 {
                    Err(HandlerError::retry_after(
                        "not yet",
                        Duration::from_millis(10),
                    ))
                } else {
                    Ok(format!("attempt {}", ctx.attempt()).into_bytes())
                }
            }
        })
        .handler("doomed", |_ctx: JobContext| async move {
            Err(HandlerError::fatal("cannot ever work").with_code("E_DOOMED"))
        })
        .build()
        .expect("build worker");
    let (stop, task) = run(worker);

    let upper = submit(&srv.job, submit_request("sdk", "upper", "hello")).await;
    let flaky = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 5,
            ..submit_request("sdk", "flaky", "")
        },
    )
    .await;
    let doomed = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 5,
            ..submit_request("sdk", "doomed", "")
        },
    )
    .await;
    let unknown = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 1,
            ..submit_request("sdk", "no-such-kind", "")
        },
    )
    .await;
    let timeout = Duration::from_secs(10);
    let job = wait_for_state(&srv.job, &upper, JobState::Succeeded, timeout).await;
    assert_eq!(job.result, b"HELLO");
    let job = wait_for_state(&srv.job, &flaky, JobState::Succeeded, timeout).await;
    assert_eq!((job.attempt, job.result.as_slice()), (3, &b"attempt 3"[..]));
    assert_eq!(flaky_calls.load(Ordering::SeqCst), 3);
    let job = wait_for_state(&srv.job, &doomed, JobState::Failed, timeout).await;
    assert_eq!(job.attempt, 1, "a fatal error is not retried");
    let error = job.error.expect("error");
    assert_eq!(error.message, "cannot ever work");
    assert_eq!(error.code, "E_DOOMED");
    let job = wait_for_state(&srv.job, &unknown, JobState::Failed, timeout).await;
    assert!(
        job.error.is_some(),
        "a job of a kind without a handler fails with an error"
    );

    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the worker stops")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
}

/// A worker shutting down hands its running jobs back (Release) once the
/// grace period is over, so another worker can take them at once.
async fn sdk_worker_shutdown_hands_running_jobs_back(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let worker = Worker::builder(srv.endpoint.clone())
        .worker_id("leaving")
        .queues(["bye"])
        .concurrency(1)
        .lease_wait(Duration::from_millis(500))
        .progress_interval(Duration::from_millis(100))
        .shutdown_grace(Duration::from_millis(200))
        .handler("slow", |ctx: JobContext| async move {
            ctx.checkpoint_now(b"got this far".to_vec())
                .await
                .map_err(|e| HandlerError::retry(e.to_string()))?;
            tokio::select! {
                () = ctx.cancelled() => Err(HandlerError::cancelled()),
                () = tokio::time::sleep(Duration::from_secs(60)) => Ok(Vec::new()),
            }
        })
        .build()
        .expect("build worker");
    let (stop, task) = run(worker);
    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(Duration::from_secs(30))),
            ..submit_request("bye", "slow", "")
        },
    )
    .await;
    eventually("the checkpoint", Duration::from_secs(10), || async {
        let job = get_job(&srv.job, &id).await;
        if job.checkpoint.is_some() {
            Ok(())
        } else {
            Err(job.state())
        }
    })
    .await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the worker stops within its grace")
        .expect("task")
        .expect("clean shutdown");
    let job = get_job(&srv.job, &id).await;
    assert_eq!(
        job.state(),
        JobState::Queued,
        "released, not left to expire its 30s lease"
    );
    let leased = lease_one(&srv.worker, "bye").await;
    assert_eq!(leased.job_id, id);
    assert_eq!(leased.attempt, 1, "a release does not use up the attempt");
    assert_eq!(leased.checkpoint.as_deref(), Some(&b"got this far"[..]));
}
