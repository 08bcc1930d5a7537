//! One test (or a few) per invariant of the design brief, on both stores.
//! Invariant 6 across a replica kill, 8 (one clock: Redis's) and 9 (Redis
//! Cluster hash tags) need Redis: `availability.rs` and `invariants.rs`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jobctl_proto::v1::{
    CancelRequest, FailRequest, GetQueueStatsRequest, HeartbeatRequest, JobState,
    ListFailedRequest, Progress, ReleaseRequest, RequeueRequest, SubmitRequest,
};
use jobctl_tests::snapshot::all_keys;
use jobctl_tests::*;
use jobctl_worker::{HandlerError, JobContext, Worker};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

const SEC: Duration = Duration::from_secs(1);

conformance! {
    invariant_1_nothing_lost_when_workers_die, worker_threads = 4;
    invariant_1_expired_lease_puts_job_back_then_fails_it_when_attempts_run_out;
    invariant_2_stale_lease_token_is_refused_and_changes_nothing;
    invariant_3_terminal_states_are_final;
    invariant_4_cancel_of_running_job_is_answered_by_next_heartbeat;
    invariant_4_worker_ignoring_cancel_loses_its_lease_and_job_ends_cancelled;
    invariant_4_cancel_fires_the_sdk_handlers_token, worker_threads = 4;
    invariant_5_checkpoints_survive_retries;
    invariant_5_sdk_handler_resumes_from_its_checkpoint, worker_threads = 4;
    invariant_7_concurrent_duplicate_submits_make_exactly_one_job, worker_threads = 4;
    invariant_7_idempotency_key_is_forgotten_after_its_ttl;
}

/// Sleep jobs for the test worker, with a lease of 1s and plenty of attempts.
fn sleep_job(queue: &str, first_ms: u64, retry_ms: u64) -> SubmitRequest {
    SubmitRequest {
        lease_ttl: Some(pb_duration(SEC)),
        max_attempts: 20,
        retry: Some(backoff(
            Duration::from_millis(20),
            Duration::from_millis(100),
            2.0,
        )),
        ..submit_request(
            queue,
            "sleep",
            format!(r#"{{"ms": {first_ms}, "retry_ms": {retry_ms}}}"#),
        )
    }
}

async fn queue_stats(srv: &TestServer, queue: &str) -> jobctl_proto::v1::GetQueueStatsResponse {
    srv.admin()
        .get_queue_stats(GetQueueStatsRequest {
            queue: queue.into(),
        })
        .await
        .expect("get_queue_stats")
        .into_inner()
}

/// Invariant 1: worker processes SIGKILLed in the middle of their jobs, again
/// and again, while a few hundred jobs run: every job still succeeds.
async fn invariant_1_nothing_lost_when_workers_die(backend: Backend) {
    const JOBS: usize = 300;
    const QUEUE: &str = "crashy";
    let srv = TestServer::start_on(&backend, &[]).await;

    let ids: Vec<String> = futures::stream::iter(0..JOBS)
        .map(|_| {
            let job = srv.job();
            async move { submit(&job, sleep_job(QUEUE, 150, 5)).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), JOBS);

    let bin = test_worker_bin!();
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|i| WorkerProcess::spawn(bin, &srv.endpoint, &format!("w{i}"), QUEUE, 8))
        .collect();

    // Kill a worker whenever the others have made some progress, while jobs
    // are running, and replace it.
    for round in 0..4 {
        let target = (round + 1) * 40;
        eventually(
            "progress between kills",
            Duration::from_secs(15),
            || async {
                let stats = queue_stats(&srv, QUEUE).await;
                if stats.finished as usize >= target && stats.running > 0 {
                    Ok(())
                } else {
                    Err(format!("{stats:?}"))
                }
            },
        )
        .await;
        let victim = round % workers.len();
        workers[victim].kill().await;
        workers[victim] =
            WorkerProcess::spawn(bin, &srv.endpoint, &format!("w{}", 3 + round), QUEUE, 8);
    }

    eventually("every job to finish", Duration::from_secs(20), || async {
        let stats = queue_stats(&srv, QUEUE).await;
        if stats.finished as usize == JOBS {
            Ok(())
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await;

    let jobs: Vec<_> = futures::stream::iter(ids.iter())
        .map(|id| {
            let job = srv.job();
            async move { get_job(&job, id).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let not_succeeded: Vec<_> = jobs
        .iter()
        .filter(|j| j.state() != JobState::Succeeded)
        .map(|j| (j.id.clone(), j.state(), j.error.clone()))
        .collect();
    assert!(not_succeeded.is_empty(), "jobs lost: {not_succeeded:?}");
    let retried = jobs.iter().filter(|j| j.attempt > 1).count();
    assert!(
        retried > 0,
        "workers were killed mid-job, so some job must have needed a second attempt"
    );
    let stats = queue_stats(&srv, QUEUE).await;
    assert_eq!(
        (stats.queued, stats.scheduled, stats.running, stats.failed),
        (0, 0, 0, 0),
        "{stats:?}"
    );
}

/// Invariant 1 for a worker that hangs: its lease expires, the job goes back
/// with backoff while attempts remain, then to FAILED.
async fn invariant_1_expired_lease_puts_job_back_then_fails_it_when_attempts_run_out(
    backend: Backend,
) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(SEC)),
            max_attempts: 2,
            retry: Some(backoff(
                Duration::from_millis(400),
                Duration::from_millis(400),
                1.0,
            )),
            ..submit_request("hang", "k", "x")
        },
    )
    .await;

    let first = lease_one(&srv.worker, "hang").await;
    assert_eq!((first.job_id.as_str(), first.attempt), (id.as_str(), 1));
    let leased_at = Instant::now();
    // A hung worker: no heartbeat. The lease must hold until its TTL...
    holds_for("the first lease", Duration::from_millis(700), || async {
        let job = get_job(&srv.job, &id).await;
        if job.state() == JobState::Running {
            Ok(())
        } else {
            Err(format!("{:?} after {:?}", job.state(), leased_at.elapsed()))
        }
    })
    .await;
    // ...and then end: back to SCHEDULED with the retry backoff (counted
    // as a failed attempt)...
    let scheduled =
        wait_for_state(&srv.job, &id, JobState::Scheduled, Duration::from_secs(5)).await;
    assert_eq!(scheduled.attempt, 1);
    assert!(scheduled.error.is_some(), "a lost lease records an error");
    let expired_at = system_time(first.lease_expires_at.as_ref().expect("lease_expires_at"));
    let run_at = system_time(scheduled.run_at.as_ref().expect("run_at"));
    let backoff = secs_between(run_at, expired_at);
    assert!(
        backoff >= 0.39,
        "the retry waits the 400ms backoff after the lease expired, not {backoff:.3}s"
    );
    // ...and it is handed out again, as attempt 2.
    let second = lease_one(&srv.worker, "hang").await;
    assert!(leased_at.elapsed() >= Duration::from_millis(900));
    assert_eq!((second.job_id.as_str(), second.attempt), (id.as_str(), 2));
    assert_ne!(second.lease_token, first.lease_token);

    // The second attempt hangs too: no attempts left, so FAILED.
    let failed = wait_for_state(&srv.job, &id, JobState::Failed, Duration::from_secs(10)).await;
    assert_eq!(failed.attempt, 2);
    assert!(failed.error.is_some(), "a lost lease records an error");
    assert!(lease(&srv.worker, "hang", 10).await.is_empty());
    let dead = srv
        .admin()
        .list_failed(ListFailedRequest {
            queue: "hang".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("list_failed")
        .into_inner();
    assert_eq!(
        dead.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
}

/// Invariant 2: a worker whose lease expired (a zombie) cannot heartbeat,
/// complete, fail or release the job that another worker now holds, and
/// its calls change nothing; the newer attempt's result wins.
async fn invariant_2_stale_lease_token_is_refused_and_changes_nothing(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(SEC)),
            max_attempts: 5,
            retry: Some(backoff(
                Duration::from_millis(10),
                Duration::from_millis(10),
                1.0,
            )),
            ..submit_request("fence", "k", "x")
        },
    )
    .await;
    let zombie = lease_one(&srv.worker, "fence").await;
    // The zombie stops heartbeating; its lease expires and the job is leased
    // again with a new token.
    let current = lease_one(&srv.worker, "fence").await;
    assert_eq!(current.job_id, id);
    assert_eq!(current.attempt, 2);
    assert_ne!(
        current.lease_token, zombie.lease_token,
        "every lease has a new token"
    );

    let before = StateSnapshot::take(&backend, &srv, &[&id], &["fence"]).await;
    let mut worker = srv.worker();
    let stale_heartbeat = HeartbeatRequest {
        progress: Some(Progress {
            percent: 99.0,
            current: 99,
            total: 100,
            message: "zombie".into(),
        }),
        checkpoint: Some(b"zombie".to_vec()),
        ..heartbeat_request(&zombie)
    };
    expect_code(
        worker.heartbeat(stale_heartbeat.clone()).await,
        Code::FailedPrecondition,
        "heartbeat with a stale token",
    );
    expect_code(
        worker.complete(complete_request(&zombie, b"zombie")).await,
        Code::FailedPrecondition,
        "complete with a stale token",
    );
    expect_code(
        worker.fail(fail_request(&zombie, "zombie", true)).await,
        Code::FailedPrecondition,
        "retryable fail with a stale token",
    );
    expect_code(
        worker.fail(fail_request(&zombie, "zombie", false)).await,
        Code::FailedPrecondition,
        "fatal fail with a stale token",
    );
    expect_code(
        worker
            .release(ReleaseRequest {
                job_id: id.clone(),
                lease_token: zombie.lease_token.clone(),
                checkpoint: None,
            })
            .await,
        Code::FailedPrecondition,
        "release with a stale token",
    );
    let mut forged = zombie.clone();
    forged.lease_token = format!("{}x", current.lease_token);
    expect_code(
        worker.complete(complete_request(&forged, b"forged")).await,
        Code::FailedPrecondition,
        "complete with a made-up token",
    );
    let after = StateSnapshot::take(&backend, &srv, &[&id], &["fence"]).await;
    before.assert_unchanged(&after, "calls with a stale token");

    // The current holder is unaffected and its result is the one kept.
    complete(&srv.worker, &current, b"winner").await;
    expect_code(
        worker.complete(complete_request(&zombie, b"zombie")).await,
        Code::FailedPrecondition,
        "complete with a stale token after the job ended",
    );
    expect_code(
        worker.heartbeat(stale_heartbeat).await,
        Code::FailedPrecondition,
        "heartbeat with a stale token after the job ended",
    );
    let job = get_job(&srv.job, &id).await;
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(job.result, b"winner");
    assert_eq!(job.attempt, 2);
    assert_ne!(job.checkpoint.as_deref(), Some(&b"zombie"[..]));
}

/// Invariant 3: a finished job never runs again; only an operator's
/// re-queue brings a FAILED job back.
async fn invariant_3_terminal_states_are_final(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let q = "final";
    let mut worker = srv.worker();
    let mut admin = srv.admin();
    let mut jobs = srv.job();

    // SUCCEEDED.
    let done = submit(&srv.job, submit_request(q, "k", "a")).await;
    let leased = lease_one(&srv.worker, q).await;
    complete(&srv.worker, &leased, b"result").await;
    let before = StateSnapshot::take(&backend, &srv, &[&done], &[q]).await;
    // The holder repeating its Complete (say its answer was lost) may be told
    // the job SUCCEEDED; anything else is refused. Either way nothing changes.
    match worker.complete(complete_request(&leased, b"again")).await {
        Ok(r) => assert_eq!(r.into_inner().state(), JobState::Succeeded),
        Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}"),
    }
    expect_code(
        worker.fail(fail_request(&leased, "late", true)).await,
        Code::FailedPrecondition,
        "fail of a SUCCEEDED job",
    );
    expect_code(
        worker.heartbeat(heartbeat_request(&leased)).await,
        Code::FailedPrecondition,
        "heartbeat of a SUCCEEDED job",
    );
    expect_code(
        admin
            .requeue(RequeueRequest {
                job_id: done.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "requeue of a SUCCEEDED job",
    );
    match jobs
        .cancel(CancelRequest {
            job_id: done.clone(),
            reason: "too late".into(),
        })
        .await
    {
        Ok(r) => assert_eq!(r.into_inner().state(), JobState::Succeeded),
        Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}"),
    }
    before.assert_unchanged(
        &StateSnapshot::take(&backend, &srv, &[&done], &[q]).await,
        "calls on a SUCCEEDED job",
    );

    // CANCELLED while QUEUED, and while SCHEDULED.
    let queued = submit(&srv.job, submit_request(q, "k", "b")).await;
    let scheduled = submit(
        &srv.job,
        SubmitRequest {
            schedule: Some(jobctl_proto::v1::submit_request::Schedule::Delay(
                pb_duration(Duration::from_millis(200)),
            )),
            ..submit_request(q, "k", "c")
        },
    )
    .await;
    for id in [&queued, &scheduled] {
        let r = jobs
            .cancel(CancelRequest {
                job_id: id.clone(),
                reason: "not needed".into(),
            })
            .await
            .expect("cancel")
            .into_inner();
        assert_eq!(r.state(), JobState::Cancelled);
        expect_code(
            admin.requeue(RequeueRequest { job_id: id.clone() }).await,
            Code::FailedPrecondition,
            "requeue of a CANCELLED job",
        );
    }

    // FAILED (not retryable).
    let failed = submit(&srv.job, submit_request(q, "k", "d")).await;
    let leased = lease_one(&srv.worker, q).await;
    assert_eq!(leased.job_id, failed);
    let r = worker
        .fail(fail_request(&leased, "bad input", false))
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(r.state(), JobState::Failed);

    // Long enough for the delayed job's time to pass and for several
    // maintenance ticks: nothing is leasable, nothing changes state.
    holds_for("terminal jobs staying put", SEC, || {
        let worker = srv.worker();
        let jobs = srv.job();
        let ids = [
            (done.clone(), JobState::Succeeded),
            (queued.clone(), JobState::Cancelled),
            (scheduled.clone(), JobState::Cancelled),
            (failed.clone(), JobState::Failed),
        ];
        async move {
            let leased = lease(&worker, q, 10).await;
            if !leased.is_empty() {
                return Err(format!("leased {:?}", leased[0].job_id));
            }
            for (id, state) in ids {
                let job = get_job(&jobs, &id).await;
                if job.state() != state {
                    return Err(format!("{id} is {:?}, expected {state:?}", job.state()));
                }
            }
            Ok(())
        }
    })
    .await;
    assert_eq!(get_job(&srv.job, &done).await.result, b"result");

    // The explicit exception: an operator re-queues the FAILED job.
    let r = admin
        .requeue(RequeueRequest {
            job_id: failed.clone(),
        })
        .await
        .expect("requeue of a FAILED job")
        .into_inner();
    assert_eq!(r.state(), JobState::Queued);
    let again = lease_one(&srv.worker, q).await;
    assert_eq!(again.job_id, failed);
    assert_eq!(
        again.attempt, 1,
        "a re-queued job starts with fresh attempts"
    );
}

/// Invariant 4 over the protocol: Cancel of a RUNNING job is answered by the
/// next heartbeat, and the worker's Fail then ends it CANCELLED (not retried).
async fn invariant_4_cancel_of_running_job_is_answered_by_next_heartbeat(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 5,
            ..submit_request("c", "k", "x")
        },
    )
    .await;
    let leased = lease_one(&srv.worker, "c").await;
    let mut worker = srv.worker();
    let hb = worker
        .heartbeat(heartbeat_request(&leased))
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(!hb.cancel_requested);

    let r = srv
        .job()
        .cancel(CancelRequest {
            job_id: id.clone(),
            reason: "user pressed stop".into(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(r.state(), JobState::Running);
    assert!(r.cancel_requested);
    let job = get_job(&srv.job, &id).await;
    assert_eq!(job.state(), JobState::Running);
    assert!(job.cancel_requested);
    assert_eq!(job.cancel_reason, "user pressed stop");

    let hb = worker
        .heartbeat(heartbeat_request(&leased))
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(
        hb.cancel_requested,
        "the next heartbeat says the job was cancelled"
    );
    assert_eq!(hb.cancel_reason, "user pressed stop");

    let r = worker
        .fail(fail_request(&leased, "stopped", true))
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(r.state(), JobState::Cancelled);
    assert_eq!(get_job(&srv.job, &id).await.state(), JobState::Cancelled);
    holds_for(
        "the cancelled job not coming back",
        Duration::from_millis(500),
        || async {
            match lease(&srv.worker, "c", 10).await.first() {
                Some(j) => Err(format!("leased {}", j.job_id)),
                None => Ok(()),
            }
        },
    )
    .await;
}

/// Invariant 4 for a worker that ignores the cancellation: it loses the
/// lease when the lease expires, and the job ends CANCELLED, never retried.
async fn invariant_4_worker_ignoring_cancel_loses_its_lease_and_job_ends_cancelled(
    backend: Backend,
) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(SEC)),
            max_attempts: 5,
            retry: Some(backoff(
                Duration::from_millis(10),
                Duration::from_millis(10),
                1.0,
            )),
            ..submit_request("c", "k", "x")
        },
    )
    .await;
    let leased = lease_one(&srv.worker, "c").await;
    srv.job()
        .cancel(CancelRequest {
            job_id: id.clone(),
            reason: String::new(),
        })
        .await
        .expect("cancel");
    let job = wait_for_state(&srv.job, &id, JobState::Cancelled, Duration::from_secs(5)).await;
    assert!(job.finished_at.is_some());
    expect_code(
        srv.worker()
            .complete(complete_request(&leased, b"ignored the cancel"))
            .await,
        Code::FailedPrecondition,
        "complete after the lease was lost",
    );
    holds_for(
        "the cancelled job not coming back",
        Duration::from_millis(500),
        || async {
            match lease(&srv.worker, "c", 10).await.first() {
                Some(j) => Err(format!("leased {}", j.job_id)),
                None => Ok(()),
            }
        },
    )
    .await;
}

/// Invariant 4 through the SDK: cancelling a running job fires the
/// handler's cancellation token, and the job ends CANCELLED.
async fn invariant_4_cancel_fires_the_sdk_handlers_token(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<String>();
    let (fired_tx, mut fired_rx) = mpsc::unbounded_channel::<(String, bool)>();
    let worker = Worker::builder(srv.endpoint.clone())
        .worker_id("sdk-cancel")
        .queues(["c"])
        .concurrency(2)
        .lease_wait(Duration::from_millis(500))
        .progress_interval(Duration::from_millis(100))
        .shutdown_grace(SEC)
        .handler("wait", move |ctx: JobContext| {
            let started = started_tx.clone();
            let fired = fired_tx.clone();
            async move {
                let _ = started.send(ctx.id().to_owned());
                let token = ctx.cancellation_token();
                tokio::select! {
                    () = ctx.cancelled() => {
                        let _ = fired.send((ctx.id().to_owned(), token.is_cancelled()));
                        Err(HandlerError::cancelled())
                    }
                    () = tokio::time::sleep(Duration::from_secs(30)) => Ok(b"not cancelled".to_vec()),
                }
            }
        })
        .build()
        .expect("build worker");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));

    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(Duration::from_secs(10))),
            ..submit_request("c", "wait", "")
        },
    )
    .await;
    let started = tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
        .await
        .expect("the handler starts");
    assert_eq!(started.as_deref(), Some(id.as_str()));

    let cancelled_at = Instant::now();
    let r = srv
        .job()
        .cancel(CancelRequest {
            job_id: id.clone(),
            reason: "stop".into(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(r.state(), JobState::Running);
    let fired = tokio::time::timeout(Duration::from_secs(5), fired_rx.recv())
        .await
        .expect("the handler's cancellation token fires within 5s");
    assert_eq!(fired, Some((id.clone(), true)));
    let job = wait_for_state(&srv.job, &id, JobState::Cancelled, Duration::from_secs(5)).await;
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(5),
        "cancellation reached the worker long before the 10s lease would expire"
    );
    assert_eq!(job.attempt, 1);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
}

/// Invariant 5 over the protocol: the last checkpoint reported (by
/// heartbeat, by Fail, by Release, or before the lease was lost) is handed
/// to the next attempt with its lease.
async fn invariant_5_checkpoints_survive_retries(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(SEC)),
            max_attempts: 10,
            retry: Some(backoff(
                Duration::from_millis(10),
                Duration::from_millis(10),
                1.0,
            )),
            ..submit_request("cp", "k", "x")
        },
    )
    .await;
    let mut worker = srv.worker();

    let a1 = lease_one(&srv.worker, "cp").await;
    assert_eq!(a1.attempt, 1);
    assert_eq!(a1.checkpoint, None, "a first attempt has no checkpoint");
    worker
        .heartbeat(HeartbeatRequest {
            checkpoint: Some(b"rows=100".to_vec()),
            ..heartbeat_request(&a1)
        })
        .await
        .expect("heartbeat with a checkpoint");
    let r = worker
        .fail(FailRequest {
            retry_after: Some(pb_duration(Duration::from_millis(10))),
            ..fail_request(&a1, "flaky", true)
        })
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(r.state(), JobState::Scheduled);

    // After a failed attempt.
    let a2 = lease_one(&srv.worker, "cp").await;
    assert_eq!(a2.attempt, 2);
    assert_eq!(a2.checkpoint.as_deref(), Some(&b"rows=100"[..]));
    worker
        .heartbeat(HeartbeatRequest {
            checkpoint: Some(b"rows=200".to_vec()),
            ..heartbeat_request(&a2)
        })
        .await
        .expect("heartbeat with a checkpoint");
    assert_eq!(
        get_job(&srv.job, &id).await.checkpoint.as_deref(),
        Some(&b"rows=200"[..])
    );

    // After a lost lease (the worker died after checkpointing).
    let a3 = lease_one(&srv.worker, "cp").await;
    assert_eq!(a3.attempt, 3);
    assert_eq!(a3.checkpoint.as_deref(), Some(&b"rows=200"[..]));

    // A checkpoint carried by Fail.
    worker
        .fail(FailRequest {
            checkpoint: Some(b"rows=300".to_vec()),
            retry_after: Some(pb_duration(Duration::from_millis(10))),
            ..fail_request(&a3, "flaky", true)
        })
        .await
        .expect("fail with a checkpoint");
    let a4 = lease_one(&srv.worker, "cp").await;
    assert_eq!(a4.attempt, 4);
    assert_eq!(a4.checkpoint.as_deref(), Some(&b"rows=300"[..]));

    // A checkpoint carried by Release.
    worker
        .release(ReleaseRequest {
            job_id: id.clone(),
            lease_token: a4.lease_token.clone(),
            checkpoint: Some(b"rows=400".to_vec()),
        })
        .await
        .expect("release with a checkpoint");
    let a5 = lease_one(&srv.worker, "cp").await;
    assert_eq!(a5.checkpoint.as_deref(), Some(&b"rows=400"[..]));
    complete(&srv.worker, &a5, b"done").await;
    let job = get_job(&srv.job, &id).await;
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(job.checkpoint.as_deref(), Some(&b"rows=400"[..]));
}

/// Invariant 5 through the SDK: attempt 1 checkpoints and fails; attempt 2
/// sees the checkpoint in `ctx.checkpoint()` and resumes.
async fn invariant_5_sdk_handler_resumes_from_its_checkpoint(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(u32, Option<Vec<u8>>)>();
    let worker = Worker::builder(srv.endpoint.clone())
        .worker_id("sdk-resume")
        .queues(["resume"])
        .concurrency(1)
        .lease_wait(Duration::from_millis(500))
        .progress_interval(Duration::from_millis(100))
        .shutdown_grace(SEC)
        .handler("export", move |ctx: JobContext| {
            let seen = seen_tx.clone();
            async move {
                let checkpoint = ctx.checkpoint().map(<[u8]>::to_vec);
                let _ = seen.send((ctx.attempt(), checkpoint.clone()));
                match checkpoint {
                    None => {
                        ctx.checkpoint_now(b"step-3".to_vec())
                            .await
                            .map_err(|e| HandlerError::retry(e.to_string()))?;
                        Err(HandlerError::retry_after(
                            "connection reset",
                            Duration::from_millis(10),
                        ))
                    }
                    Some(cp) => {
                        let mut out = b"resumed from ".to_vec();
                        out.extend(cp);
                        Ok(out)
                    }
                }
            }
        })
        .build()
        .expect("build worker");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));

    let id = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 3,
            ..submit_request("resume", "export", "")
        },
    )
    .await;
    let job = wait_for_state(&srv.job, &id, JobState::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(job.result, b"resumed from step-3");
    assert_eq!(job.attempt, 2);
    let mut seen = Vec::new();
    while let Ok(s) = seen_rx.try_recv() {
        seen.push(s);
    }
    assert_eq!(seen, [(1, None), (2, Some(b"step-3".to_vec()))]);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
}

/// Invariant 7: fifty concurrent submits with one idempotency key make one
/// job; the same key with a different request is refused.
async fn invariant_7_concurrent_duplicate_submits_make_exactly_one_job(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let request = SubmitRequest {
        idempotency_key: "order-42".into(),
        labels: labels(&[("customer", "c1")]),
        ..submit_request("idem", "invoice", "payload-1")
    };
    let answers: Vec<_> = futures::future::join_all((0..50).map(|_| {
        let mut job = srv.job();
        let request = request.clone();
        async move {
            job.submit(request)
                .await
                .expect("duplicate submit")
                .into_inner()
        }
    }))
    .await;
    let ids: HashSet<_> = answers.iter().map(|a| a.job_id.clone()).collect();
    assert_eq!(ids.len(), 1, "one job id for one key: {ids:?}");
    let fresh = answers.iter().filter(|a| !a.deduplicated).count();
    assert_eq!(fresh, 1, "exactly one submit created the job");
    let id = ids.into_iter().next().expect("one id");

    let stats = queue_stats(&srv, "idem").await;
    assert_eq!(
        (stats.queued, stats.scheduled, stats.running, stats.finished),
        (1, 0, 0, 0),
        "one job in the queue: {stats:?}"
    );
    if let Some(redis) = backend.redis() {
        let keys = all_keys(&mut redis.conn().await).await;
        let job_keys: Vec<_> = keys.iter().filter(|k| k.contains(":job:")).collect();
        assert_eq!(job_keys.len(), 1, "one job record in Redis: {job_keys:?}");
    }
    let leased = lease(&srv.worker, "idem", 100).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job_id, id);

    // Still the same job once it has finished.
    complete(&srv.worker, &leased[0], b"ok").await;
    let again = srv
        .job()
        .submit(request.clone())
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(
        (again.job_id.as_str(), again.deduplicated),
        (id.as_str(), true)
    );

    // The same key with a different request.
    let before = StateSnapshot::take(&backend, &srv, &[&id], &["idem"]).await;
    for (what, changed) in [
        (
            "payload",
            SubmitRequest {
                payload: b"payload-2".to_vec(),
                ..request.clone()
            },
        ),
        (
            "kind",
            SubmitRequest {
                kind: "refund".into(),
                ..request.clone()
            },
        ),
    ] {
        expect_code(
            srv.job().submit(changed).await,
            Code::AlreadyExists,
            &format!("the same key with a different {what}"),
        );
    }
    before.assert_unchanged(
        &StateSnapshot::take(&backend, &srv, &[&id], &["idem"]).await,
        "refused duplicates",
    );

    // Keys are per queue.
    let other = srv
        .job()
        .submit(SubmitRequest {
            queue: "idem-2".into(),
            ..request.clone()
        })
        .await
        .expect("submit")
        .into_inner();
    assert!(!other.deduplicated);
    assert_ne!(other.job_id, id);
}

/// Invariant 7, the edge of "within its TTL": once the idempotency key has
/// expired, the same key makes a new job.
async fn invariant_7_idempotency_key_is_forgotten_after_its_ttl(backend: Backend) {
    let srv = TestServer::start_on(&backend, &["--idempotency-ttl", "1s"]).await;
    let request = SubmitRequest {
        idempotency_key: "k".into(),
        ..submit_request("idem", "k", "x")
    };
    let first = srv
        .job()
        .submit(request.clone())
        .await
        .expect("submit")
        .into_inner();
    assert!(!first.deduplicated);
    let submitted = Instant::now();
    let second = srv
        .job()
        .submit(request.clone())
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(
        (second.job_id.as_str(), second.deduplicated),
        (first.job_id.as_str(), true)
    );
    let fresh = eventually("the key to expire", Duration::from_secs(5), || {
        let mut job = srv.job();
        let request = request.clone();
        async move {
            let r = job
                .submit(request)
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if r.deduplicated {
                Err("still deduplicated".to_owned())
            } else {
                Ok(r)
            }
        }
    })
    .await;
    assert!(submitted.elapsed() >= Duration::from_millis(900));
    assert_ne!(fresh.job_id, first.job_id);
}
