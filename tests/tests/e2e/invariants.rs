//! One test (or a few) per invariant of the design brief.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use jobctl_proto::v1::{
    CancelRequest, FailRequest, GetQueueStatsRequest, HeartbeatRequest, JobState,
    ListFailedRequest, Progress, ReleaseRequest, RequeueRequest, SubmitRequest,
    WatchProgressRequest,
};
use jobctl_tests::snapshot::all_keys;
use jobctl_tests::*;
use jobctl_worker::{HandlerError, JobContext, Worker};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

const SEC: Duration = Duration::from_secs(1);

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
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariant_1_nothing_lost_when_workers_die() {
    const JOBS: usize = 300;
    const QUEUE: &str = "crashy";
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;

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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_1_expired_lease_puts_job_back_then_fails_it_when_attempts_run_out() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_2_stale_lease_token_is_refused_and_changes_nothing() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;
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

    let mut conn = redis.conn().await;
    let before = Snapshot::take(&mut conn).await;
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
    let after = Snapshot::take(&mut conn).await;
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_3_terminal_states_are_final() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;
    let q = "final";
    let mut worker = srv.worker();
    let mut admin = srv.admin();
    let mut jobs = srv.job();

    // SUCCEEDED.
    let done = submit(&srv.job, submit_request(q, "k", "a")).await;
    let leased = lease_one(&srv.worker, q).await;
    complete(&srv.worker, &leased, b"result").await;
    let mut conn = redis.conn().await;
    let before = Snapshot::take(&mut conn).await;
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
    before.assert_unchanged(&Snapshot::take(&mut conn).await, "calls on a SUCCEEDED job");

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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_4_cancel_of_running_job_is_answered_by_next_heartbeat() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_4_worker_ignoring_cancel_loses_its_lease_and_job_ends_cancelled() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;
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
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariant_4_cancel_fires_the_sdk_handlers_token() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_5_checkpoints_survive_retries() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;
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
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariant_5_sdk_handler_resumes_from_its_checkpoint() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;
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
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariant_7_concurrent_duplicate_submits_make_exactly_one_job() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &[]).await;
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

    let mut conn = redis.conn().await;
    let keys = all_keys(&mut conn).await;
    let job_keys: Vec<_> = keys.iter().filter(|k| k.contains(":job:")).collect();
    assert_eq!(job_keys.len(), 1, "one job record in Redis: {job_keys:?}");
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
    let before = Snapshot::take(&mut conn).await;
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
    before.assert_unchanged(&Snapshot::take(&mut conn).await, "refused duplicates");

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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_7_idempotency_key_is_forgotten_after_its_ttl() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &["--idempotency-ttl", "1s"]).await;
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

/// Invariant 8 (one clock): with Redis's clock two hours ahead of the
/// server's, lease deadlines and schedules follow Redis's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_8_leases_and_schedules_use_redis_clock() {
    let redis = RedisServer::start_with_faketime("+2h").await;
    let skew = secs_between(redis.time().await, SystemTime::now());
    assert!(
        (skew - 7200.0).abs() < 60.0,
        "redis-server under libfaketime should run 2h ahead, but is {skew}s ahead"
    );
    let srv = TestServer::start(&redis, &[]).await;
    let ttl = Duration::from_secs(3);
    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(ttl)),
            ..submit_request("clock", "k", "x")
        },
    )
    .await;
    let redis_before = redis.time().await;
    let leased = lease_one(&srv.worker, "clock").await;
    let redis_after = redis.time().await;
    let expires = system_time(leased.lease_expires_at.as_ref().expect("lease_expires_at"));
    let low = secs_between(expires, redis_before + ttl);
    let high = secs_between(expires, redis_after + ttl);
    assert!(
        low >= -0.5 && high <= 0.5,
        "lease_expires_at should be Redis TIME + ttl: it is {low:.3}s from (Redis before + ttl) and \
         {high:.3}s from (Redis after + ttl); local clock + ttl would be {:.0}s off",
        secs_between(expires, SystemTime::now() + ttl)
    );

    // Not reaped early by a reaper that mixes clocks.
    holds_for("the 3s lease", Duration::from_millis(1500), || async {
        let job = get_job(&srv.job, &id).await;
        if job.state() == JobState::Running {
            Ok(())
        } else {
            Err(format!("{:?}", job.state()))
        }
    })
    .await;
    let hb = srv
        .worker()
        .heartbeat(heartbeat_request(&leased))
        .await
        .expect("the lease is still ours")
        .into_inner();
    let extended = system_time(hb.lease_expires_at.as_ref().expect("lease_expires_at"));
    let now_redis = redis.time().await;
    assert!(
        secs_between(extended, now_redis + ttl).abs() < 1.0,
        "a heartbeat extends the lease to Redis TIME + ttl"
    );
    complete(&srv.worker, &leased, b"ok").await;

    // A delay of 1s is 1s on Redis's clock.
    let submitted = Instant::now();
    let delayed = submit(
        &srv.job,
        SubmitRequest {
            schedule: Some(jobctl_proto::v1::submit_request::Schedule::Delay(
                pb_duration(SEC),
            )),
            ..submit_request("clock", "k", "later")
        },
    )
    .await;
    let job = get_job(&srv.job, &delayed).await;
    assert_eq!(job.state(), JobState::Scheduled);
    let run_at = system_time(job.run_at.as_ref().expect("run_at"));
    assert!(
        secs_between(run_at, redis.time().await).abs() < 1.5,
        "run_at is Redis TIME + delay"
    );
    assert!(lease(&srv.worker, "clock", 1).await.is_empty());
    let leased = lease_one(&srv.worker, "clock").await;
    let waited = submitted.elapsed();
    assert_eq!(leased.job_id, delayed);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "a job delayed by 1s became leasable after {waited:?}"
    );
}

/// The time at the start of a log line like `2026-11-22T03:02:57.579323Z ...`.
fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.strip_suffix('Z')?;
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from 1970-01-01 to y-m-day (proleptic Gregorian).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(days * 86_400 + hh * 3600 + mm * 60)
            + Duration::from_secs_f64(ss),
    )
}

/// Invariant 8 across replicas: a replica whose clock runs an hour fast
/// neither reaps leases early nor hands out leases that never expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_8_replica_with_skewed_clock_does_not_change_lease_deadlines() {
    let libfaketime = jobctl_tests::redis_server::find_libfaketime()
        .expect("libfaketime is not installed (apt-get install faketime)");
    let redis = RedisServer::start().await;
    let honest = TestServer::start(&redis, &[]).await;
    let preload = libfaketime.to_string_lossy().into_owned();
    let fast = ServerProcess::start_wrapped(
        &[],
        &[
            ("LD_PRELOAD", preload.as_str()),
            ("FAKETIME", "+1h"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
        &redis.url(),
        &[],
    )
    .await;
    // Its log lines carry its own clock: check that it really runs fast.
    let logged = eventually("a timestamped log line", Duration::from_secs(5), || async {
        fast.output()
            .lines()
            .find_map(log_time)
            .ok_or_else(|| fast.output())
    })
    .await;
    let skew = secs_between(logged, SystemTime::now());
    assert!(
        (skew - 3600.0).abs() < 60.0,
        "the replica under libfaketime should log 1h ahead, but is {skew:.0}s off"
    );
    let fast_worker = jobctl_proto::v1::worker_service_client::WorkerServiceClient::connect(
        fast.endpoint.clone(),
    )
    .await
    .expect("connect to the fast replica");
    let fast_jobs =
        jobctl_proto::v1::job_service_client::JobServiceClient::connect(fast.endpoint.clone())
            .await
            .expect("connect to the fast replica");

    let ttl = Duration::from_secs(2);
    let id = submit(
        &fast_jobs,
        SubmitRequest {
            lease_ttl: Some(pb_duration(ttl)),
            max_attempts: 3,
            retry: Some(backoff(
                Duration::from_millis(10),
                Duration::from_millis(10),
                1.0,
            )),
            ..submit_request("skew", "k", "x")
        },
    )
    .await;
    let leased = lease_one(&fast_worker, "skew").await;
    let expires = system_time(leased.lease_expires_at.as_ref().expect("lease_expires_at"));
    let off = secs_between(expires, redis.time().await + ttl);
    assert!(
        off.abs() < 1.0,
        "lease_expires_at is {off:.1}s away from Redis TIME + ttl"
    );
    let leased_at = Instant::now();
    holds_for("the lease on both replicas", SEC, || async {
        let job = get_job(&honest.job, &id).await;
        if job.state() == JobState::Running {
            Ok(())
        } else {
            Err(format!("{:?}", job.state()))
        }
    })
    .await;
    // Without heartbeats it does expire, on time.
    eventually("the lease to expire", Duration::from_secs(5), || async {
        let job = get_job(&honest.job, &id).await;
        if job.state() != JobState::Running {
            Ok(())
        } else {
            Err("still running")
        }
    })
    .await;
    assert!(leased_at.elapsed() >= Duration::from_millis(1800));

    // A 1s delay submitted through the fast replica is 1s.
    let submitted = Instant::now();
    let delayed = submit(
        &fast_jobs,
        SubmitRequest {
            schedule: Some(jobctl_proto::v1::submit_request::Schedule::Delay(
                pb_duration(SEC),
            )),
            ..submit_request("skew-delay", "k", "x")
        },
    )
    .await;
    let leased = lease_one(&honest.worker, "skew-delay").await;
    assert_eq!(leased.job_id, delayed);
    let waited = submitted.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "a job delayed by 1s via the fast replica became leasable after {waited:?}"
    );
}

/// Invariant 9: the whole lifecycle works on a Redis Cluster node (which
/// refuses scripts whose keys span hash slots); every key carries its
/// queue's hash tag, and a job's keys follow from its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_9_every_transition_works_on_redis_cluster_with_one_hash_tag_per_queue() {
    const PREFIX: &str = "jc9";
    let redis = RedisServer::start_cluster().await;
    let srv = TestServer::start(&redis, &["--key-prefix", PREFIX]).await;
    let (qa, qb) = ("alpha.q-1", "beta_q");
    let mut worker = srv.worker();
    let mut jobs = srv.job();
    let fast_retry = Some(backoff(
        Duration::from_millis(10),
        Duration::from_millis(10),
        1.0,
    ));

    // submit, duplicate submit
    let j1_request = SubmitRequest {
        priority: 5,
        idempotency_key: "once".into(),
        labels: labels(&[("team", "a")]),
        max_attempts: 3,
        retry: fast_retry,
        ..submit_request(qa, "k", "one")
    };
    let j1 = submit(&srv.job, j1_request.clone()).await;
    let dup = jobs
        .submit(j1_request)
        .await
        .expect("duplicate")
        .into_inner();
    assert!(dup.deduplicated);
    // promote
    let j2 = submit(
        &srv.job,
        SubmitRequest {
            schedule: Some(jobctl_proto::v1::submit_request::Schedule::Delay(
                pb_duration(Duration::from_millis(200)),
            )),
            ..submit_request(qa, "k", "two")
        },
    )
    .await;
    // lease, heartbeat, fail (retry), promote, lease, complete
    let l1 = lease_one(&srv.worker, qa).await;
    assert_eq!(l1.job_id, j1);
    worker
        .heartbeat(HeartbeatRequest {
            progress: Some(Progress {
                percent: 50.0,
                current: 1,
                total: 2,
                message: "half".into(),
            }),
            checkpoint: Some(b"half".to_vec()),
            ..heartbeat_request(&l1)
        })
        .await
        .expect("heartbeat");
    worker
        .fail(FailRequest {
            retry_after: Some(pb_duration(Duration::from_millis(10))),
            ..fail_request(&l1, "again", true)
        })
        .await
        .expect("fail");
    let mut seen = BTreeSet::new();
    let mut l1b = None;
    let mut l2 = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while l1b.is_none() || l2.is_none() {
        assert!(Instant::now() < deadline, "j1 and j2 leased again");
        for l in lease(&srv.worker, qa, 2).await {
            seen.insert(l.job_id.clone());
            if l.job_id == j1 {
                l1b = Some(l);
            } else if l.job_id == j2 {
                l2 = Some(l);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (l1b, l2) = (l1b.expect("j1"), l2.expect("j2"));
    assert_eq!(l1b.checkpoint.as_deref(), Some(&b"half"[..]));
    complete(&srv.worker, &l1b, b"done").await;
    // cancel while running, heartbeat sees it, fail -> CANCELLED
    jobs.cancel(CancelRequest {
        job_id: j2.clone(),
        reason: "no".into(),
    })
    .await
    .expect("cancel running");
    assert!(
        worker
            .heartbeat(heartbeat_request(&l2))
            .await
            .expect("heartbeat")
            .into_inner()
            .cancel_requested
    );
    worker
        .fail(fail_request(&l2, "cancelled", true))
        .await
        .expect("fail after cancel");
    // cancel while queued
    let j4 = submit(&srv.job, submit_request(qa, "k", "four")).await;
    jobs.cancel(CancelRequest {
        job_id: j4.clone(),
        reason: String::new(),
    })
    .await
    .expect("cancel queued");
    // reap -> FAILED, list, requeue, lease, release, lease, complete
    let j3 = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(SEC)),
            max_attempts: 1,
            ..submit_request(qb, "k", "three")
        },
    )
    .await;
    let l3 = lease_one(&srv.worker, qb).await;
    assert_eq!(l3.job_id, j3);
    wait_for_state(&srv.job, &j3, JobState::Failed, Duration::from_secs(5)).await;
    let dead = srv
        .admin()
        .list_failed(ListFailedRequest {
            queue: qb.into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .expect("list_failed")
        .into_inner();
    assert_eq!(dead.jobs.len(), 1);
    srv.admin()
        .requeue(RequeueRequest { job_id: j3.clone() })
        .await
        .expect("requeue");
    let l3 = lease_one(&srv.worker, qb).await;
    worker
        .release(ReleaseRequest {
            job_id: j3.clone(),
            lease_token: l3.lease_token.clone(),
            checkpoint: None,
        })
        .await
        .expect("release");
    let l3 = lease_one(&srv.worker, qb).await;
    complete(&srv.worker, &l3, b"three").await;
    // retention: a finished job's record is deleted when it expires
    let short = submit(
        &srv.job,
        SubmitRequest {
            retention: Some(pb_duration(SEC)),
            ..submit_request(qb, "k", "short-lived")
        },
    )
    .await;
    let l5 = lease_one(&srv.worker, qb).await;
    assert_eq!(l5.job_id, short);
    complete(&srv.worker, &l5, b"gone soon").await;
    eventually(
        "the short-lived job to expire",
        Duration::from_secs(5),
        || async {
            match try_get_job(&srv.job, &short).await {
                Err(s) if s.code() == Code::NotFound => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // watch, stats
    // (WatchProgress is a read, not a transition; its own tests in
    // lifecycle.rs fail if it is missing.)
    match jobs
        .watch_progress(WatchProgressRequest {
            job_id: j1.clone(),
            after_seq: 0,
        })
        .await
    {
        Err(s) if s.code() == Code::Unimplemented => {}
        Err(s) => panic!("watch: {s:?}"),
        Ok(stream) => {
            let mut stream = stream.into_inner();
            let mut events = Vec::new();
            while let Some(m) = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("the watch ends after the terminal event")
                .expect("watch stream")
            {
                events.push(m.event.expect("event"));
            }
            assert_eq!(events.last().map(|e| e.state()), Some(JobState::Succeeded));
        }
    }
    for q in [qa, qb] {
        queue_stats(&srv, q).await;
    }
    for (id, state) in [
        (&j1, JobState::Succeeded),
        (&j2, JobState::Cancelled),
        (&j3, JobState::Succeeded),
        (&j4, JobState::Cancelled),
    ] {
        assert_eq!(get_job(&srv.job, id).await.state(), state, "{id}");
    }

    // Keys: every one but the queue registry (one set, naming every queue;
    // scripts never touch it) carries its queue's hash tag.
    let mut conn = redis.conn().await;
    let snapshot = Snapshot::take(&mut conn).await;
    let tags: BTreeSet<String> = [qa, qb].iter().map(|q| format!("default:{q}")).collect();
    let mut untagged = Vec::new();
    for (key, value) in &snapshot.keys {
        assert!(
            key.starts_with(&format!("{PREFIX}:")),
            "{key} lacks the key prefix"
        );
        let tag = key
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(tag, _)| tag.to_owned());
        match tag {
            Some(tag) => assert!(
                tags.contains(&tag),
                "key {key} carries the hash tag {tag:?}, not one of its queue's {tags:?}"
            ),
            None => untagged.push((key.clone(), value.clone())),
        }
    }
    assert_eq!(
        untagged.len(),
        1,
        "exactly one key (the queue registry) without a hash tag: {:?}",
        untagged.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    let (registry, value) = &untagged[0];
    assert!(
        [
            format!("{PREFIX}:ns:default:queues"),
            format!("{PREFIX}:queues")
        ]
        .contains(registry),
        "the untagged key {registry} is the queue registry"
    );
    let StoredValue::Set(members) = value else {
        panic!("{registry} should be a set, is {}", value.type_name());
    };
    let members: Vec<String> = members
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    for q in [qa, qb] {
        assert!(
            members
                .iter()
                .any(|m| m == q || m.ends_with(&format!(":{q}"))),
            "the registry {registry} names queue {q}: {members:?}"
        );
    }
    // A job's keys follow from its id.
    for id in [&j1, &j2, &j3, &j4] {
        let (queue, ulid) = split_job_id(id);
        let job_key = format!("{PREFIX}:{{default:{queue}}}:job:{ulid}");
        let events_key = format!("{PREFIX}:{{default:{queue}}}:ev:{ulid}");
        assert_eq!(
            snapshot.keys.get(&job_key).map(StoredValue::type_name),
            Some("hash"),
            "{job_key}"
        );
        assert_eq!(
            snapshot.keys.get(&events_key).map(StoredValue::type_name),
            Some("stream"),
            "{events_key}"
        );
    }
    // And they all hash to the slot of their queue.
    for q in [qa, qb] {
        let slots: BTreeSet<i64> = {
            let mut slots = BTreeSet::new();
            for key in snapshot.keys_containing(&format!("{{default:{q}}}")) {
                let slot: i64 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("CLUSTER KEYSLOT");
                slots.insert(slot);
            }
            slots
        };
        assert_eq!(slots.len(), 1, "keys of queue {q} span slots {slots:?}");
    }
    let log = redis.log();
    assert!(!log.contains("CROSSSLOT"), "{log}");
}
