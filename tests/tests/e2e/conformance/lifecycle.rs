//! The job lifecycle over the protocol: ordering, scheduling, retries, dead
//! letters, leases, long polls, retention and events.

use std::time::{Duration, Instant, SystemTime};

use jobctl_proto::v1::submit_request::Schedule;
use jobctl_proto::v1::{
    CancelRequest, EventKind, FailRequest, GetQueueStatsRequest, HeartbeatRequest, JobState,
    LeaseRequest, ListFailedRequest, Progress, ReleaseRequest, RequeueRequest, SubmitRequest,
    WatchProgressRequest,
};
use jobctl_tests::*;
use tonic::Code;

const SEC: Duration = Duration::from_secs(1);

conformance! {
    priority_orders_leases_higher_first_then_fifo;
    delayed_job_is_not_leasable_before_its_time;
    retry_backoff_then_dead_letter_then_requeue;
    fail_with_retry_after_overrides_the_backoff;
    non_retryable_failure_dead_letters_at_once;
    release_returns_job_without_using_an_attempt;
    heartbeats_extend_the_lease_and_report_progress;
    lease_long_poll_is_woken_by_a_submit;
    lease_long_poll_is_woken_when_a_delayed_job_becomes_due;
    lease_long_poll_without_work_returns_empty_after_its_wait;
    lease_returns_up_to_max_jobs_in_one_call;
    lease_takes_from_queues_in_order_of_preference;
    finished_jobs_disappear_after_their_retention;
    watch_progress_streams_every_event_in_order_and_ends_after_terminal;
    queue_stats_count_jobs_by_state;
    get_status_reports_the_whole_job;
    execution_timeout_ends_an_attempt_even_while_heartbeating;
    cancel_of_a_job_waiting_for_its_retry_is_immediate_and_final;
}

fn delayed(queue: &str, payload: &str, delay: Duration) -> SubmitRequest {
    SubmitRequest {
        schedule: Some(Schedule::Delay(pb_duration(delay))),
        ..submit_request(queue, "k", payload)
    }
}

async fn priority_orders_leases_higher_first_then_fifo(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let mut expected = Vec::new();
    let submitted: Vec<(i32, &str)> = vec![
        (0, "p0-a"),
        (5, "p5-a"),
        (-3, "neg"),
        (5, "p5-b"),
        (1000, "top"),
        (0, "p0-b"),
        (-1000, "bottom"),
        (5, "p5-c"),
    ];
    for (priority, name) in &submitted {
        let id = submit(
            &srv.job,
            SubmitRequest {
                priority: *priority,
                ..submit_request("prio", "k", *name)
            },
        )
        .await;
        expected.push((*priority, name.to_string(), id));
    }
    // Stable sort keeps submission order within a priority.
    expected.sort_by_key(|(p, _, _)| -p);
    let expected: Vec<String> = expected.into_iter().map(|(_, n, _)| n).collect();

    // One at a time...
    let mut one_by_one = Vec::new();
    for _ in 0..3 {
        let leased = lease(&srv.worker, "prio", 1).await;
        assert_eq!(leased.len(), 1);
        one_by_one.push(String::from_utf8(leased[0].payload.clone()).expect("utf-8"));
    }
    // ...and in one batch.
    let rest: Vec<String> = lease(&srv.worker, "prio", 100)
        .await
        .into_iter()
        .map(|l| String::from_utf8(l.payload).expect("utf-8"))
        .collect();
    let mut got = one_by_one;
    got.extend(rest);
    assert_eq!(got, expected);
}

async fn delayed_job_is_not_leasable_before_its_time(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let start = Instant::now();
    let later = submit(&srv.job, delayed("delay", "later", SEC)).await;
    let at = submit(
        &srv.job,
        SubmitRequest {
            schedule: Some(Schedule::RunAt(pb_timestamp(
                SystemTime::now() + Duration::from_millis(1500),
            ))),
            ..submit_request("delay", "k", "at")
        },
    )
    .await;
    let now = submit(&srv.job, submit_request("delay", "k", "now")).await;
    let job = get_job(&srv.job, &later).await;
    assert_eq!(job.state(), JobState::Scheduled);
    assert!(job.run_at.is_some());
    assert_eq!(get_job(&srv.job, &at).await.state(), JobState::Scheduled);

    let first = lease(&srv.worker, "delay", 10).await;
    assert_eq!(
        first.iter().map(|l| l.job_id.as_str()).collect::<Vec<_>>(),
        [now.as_str()],
        "only the undelayed job is ready"
    );
    let l = lease_one(&srv.worker, "delay").await;
    let after = start.elapsed();
    assert_eq!(l.job_id, later);
    assert!(
        after >= Duration::from_millis(950),
        "leased after {after:?}"
    );
    let l = lease_one(&srv.worker, "delay").await;
    let after = start.elapsed();
    assert_eq!(l.job_id, at);
    assert!(
        after >= Duration::from_millis(1450),
        "leased after {after:?}"
    );
}

/// Retries back off (SCHEDULED for at least the backoff, then QUEUED), the
/// last failure dead-letters the job, and a re-queue runs it again.
async fn retry_backoff_then_dead_letter_then_requeue(backend: Backend) {
    let srv = TestServer::start_on(&backend, &["--default-backoff-jitter", "0"]).await;
    let initial = Duration::from_millis(300);
    let id = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 3,
            retry: Some(backoff(initial, Duration::from_secs(5), 2.0)),
            ..submit_request("retry", "k", "x")
        },
    )
    .await;
    let mut worker = srv.worker();
    for (attempt, backoff) in [(1, initial), (2, initial * 2)] {
        let leased = lease_one(&srv.worker, "retry").await;
        assert_eq!(
            (leased.job_id.as_str(), leased.attempt),
            (id.as_str(), attempt)
        );
        let failed_at = Instant::now();
        let r = worker
            .fail(fail_request(&leased, &format!("boom {attempt}"), true))
            .await
            .expect("fail")
            .into_inner();
        assert_eq!(r.state(), JobState::Scheduled);
        assert!(r.next_run_at.is_some(), "a retry says when it will run");
        let job = get_job(&srv.job, &id).await;
        assert_eq!(job.state(), JobState::Scheduled);
        assert_eq!(
            job.error.as_ref().map(|e| e.message.as_str()),
            Some(format!("boom {attempt}").as_str())
        );
        let queued = wait_for_state(&srv.job, &id, JobState::Queued, Duration::from_secs(5)).await;
        let waited = failed_at.elapsed();
        assert!(
            waited >= backoff - Duration::from_millis(50),
            "attempt {attempt}: SCHEDULED for {waited:?}, less than the {backoff:?} backoff"
        );
        assert!(waited < backoff + Duration::from_secs(2), "{waited:?}");
        assert_eq!(queued.attempt, attempt);
    }
    let leased = lease_one(&srv.worker, "retry").await;
    assert_eq!(leased.attempt, 3);
    let r = worker
        .fail(fail_request(&leased, "boom 3", true))
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(r.state(), JobState::Failed, "attempts exhausted");
    let job = get_job(&srv.job, &id).await;
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(job.attempt, 3);
    assert_eq!(
        job.error.as_ref().map(|e| e.message.as_str()),
        Some("boom 3")
    );
    assert!(lease(&srv.worker, "retry", 10).await.is_empty());

    let list = |queue: &'static str| {
        let mut admin = srv.admin();
        async move {
            admin
                .list_failed(ListFailedRequest {
                    queue: queue.into(),
                    page_size: 0,
                    page_token: String::new(),
                })
                .await
                .expect("list_failed")
                .into_inner()
                .jobs
        }
    };
    let dead = list("retry").await;
    assert_eq!(
        dead.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert_eq!(dead[0].state(), JobState::Failed);
    assert!(list("other").await.is_empty());

    let r = srv
        .admin()
        .requeue(RequeueRequest { job_id: id.clone() })
        .await
        .expect("requeue")
        .into_inner();
    assert_eq!(r.state(), JobState::Queued);
    let job = get_job(&srv.job, &id).await;
    assert_eq!(job.state(), JobState::Queued);
    assert_eq!(job.attempt, 0, "a re-queued job's attempts start over");
    assert!(list("retry").await.is_empty(), "no longer a dead letter");
    let leased = lease_one(&srv.worker, "retry").await;
    assert_eq!(leased.attempt, 1);
    complete(&srv.worker, &leased, b"finally").await;
    assert_eq!(get_job(&srv.job, &id).await.state(), JobState::Succeeded);
}

async fn fail_with_retry_after_overrides_the_backoff(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 3,
            retry: Some(backoff(
                Duration::from_secs(60),
                Duration::from_secs(60),
                1.0,
            )),
            ..submit_request("ra", "k", "x")
        },
    )
    .await;
    let leased = lease_one(&srv.worker, "ra").await;
    let failed_at = Instant::now();
    let r = srv
        .worker()
        .fail(FailRequest {
            retry_after: Some(pb_duration(Duration::from_millis(700))),
            ..fail_request(&leased, "rate limited", true)
        })
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(r.state(), JobState::Scheduled);
    let l = lease_one(&srv.worker, "ra").await;
    assert_eq!(l.job_id, id);
    let waited = failed_at.elapsed();
    assert!(
        waited >= Duration::from_millis(650) && waited < Duration::from_secs(5),
        "retry_after 700ms (backoff 60s) gave {waited:?}"
    );
}

async fn non_retryable_failure_dead_letters_at_once(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 10,
            ..submit_request("fatal", "k", "x")
        },
    )
    .await;
    let leased = lease_one(&srv.worker, "fatal").await;
    let r = srv
        .worker()
        .fail(fail_request(&leased, "bad input", false))
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(r.state(), JobState::Failed);
    let job = get_job(&srv.job, &id).await;
    assert_eq!((job.state(), job.attempt), (JobState::Failed, 1));
    assert!(job.finished_at.is_some());
}

/// Release hands a job back at once, without using up an attempt.
async fn release_returns_job_without_using_an_attempt(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 1,
            ..submit_request("rel", "k", "x")
        },
    )
    .await;
    let mut worker = srv.worker();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let leased = lease_one(&srv.worker, "rel").await;
        assert_eq!(leased.job_id, id);
        assert_eq!(leased.attempt, 1, "a released job's attempt is not used up");
        tokens.push(leased.lease_token.clone());
        let r = worker
            .release(ReleaseRequest {
                job_id: id.clone(),
                lease_token: leased.lease_token.clone(),
                checkpoint: None,
            })
            .await
            .expect("release")
            .into_inner();
        assert_eq!(r.state(), JobState::Queued);
        assert_eq!(get_job(&srv.job, &id).await.state(), JobState::Queued);
    }
    // A token from before the release is stale.
    let stale = lease_one(&srv.worker, "rel").await;
    let mut old = stale.clone();
    old.lease_token = tokens[0].clone();
    expect_code(
        worker.complete(complete_request(&old, b"old")).await,
        Code::FailedPrecondition,
        "complete with a token from before a release",
    );
    complete(&srv.worker, &stale, b"ok").await;
    let job = get_job(&srv.job, &id).await;
    assert_eq!(
        (job.state(), job.result.as_slice()),
        (JobState::Succeeded, &b"ok"[..])
    );
}

/// Heartbeats keep a lease alive past its TTL and carry progress.
async fn heartbeats_extend_the_lease_and_report_progress(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(SEC)),
            ..submit_request("hb", "k", "x")
        },
    )
    .await;
    let leased = lease_one(&srv.worker, "hb").await;
    let mut worker = srv.worker();
    let start = Instant::now();
    let mut last_expiry = leased.lease_expires_at.map(|t| system_time(&t));
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(2500) {
        n += 1;
        let hb = worker
            .heartbeat(HeartbeatRequest {
                progress: Some(Progress {
                    percent: n as f64,
                    current: n,
                    total: 100,
                    message: format!("step {n}"),
                }),
                ..heartbeat_request(&leased)
            })
            .await
            .unwrap_or_else(|s| panic!("heartbeat {n} after {:?}: {s:?}", start.elapsed()))
            .into_inner();
        let expiry = hb.lease_expires_at.as_ref().map(system_time);
        assert!(
            expiry >= last_expiry,
            "a heartbeat never shortens the lease"
        );
        last_expiry = expiry;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let job = get_job(&srv.job, &id).await;
    assert_eq!(job.state(), JobState::Running);
    assert_eq!(job.attempt, 1);
    let progress = job.progress.expect("progress");
    assert_eq!((progress.current, progress.total), (n, 100));
    assert_eq!(progress.message, format!("step {n}"));
    complete(&srv.worker, &leased, b"ok").await;
}

async fn lease_long_poll_is_woken_by_a_submit(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let mut worker = srv.worker();
    let polling = tokio::spawn(async move {
        let start = Instant::now();
        let r = worker
            .lease(LeaseRequest {
                worker_id: "poller".into(),
                queues: vec!["lp".into()],
                max_jobs: 5,
                wait: Some(pb_duration(Duration::from_secs(15))),
            })
            .await;
        (start.elapsed(), r)
    });
    // Let the poll reach the server and start waiting (part of the scenario,
    // not a wait for readiness).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!polling.is_finished(), "Lease with nothing ready waits");
    let submitted_at = Instant::now();
    let id = submit(&srv.job, submit_request("lp", "k", "x")).await;
    let (elapsed, r) = tokio::time::timeout(Duration::from_secs(5), polling)
        .await
        .expect("the long poll returns soon after the submit")
        .expect("task");
    let jobs = r.expect("lease").into_inner().jobs;
    assert_eq!(
        jobs.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert!(
        submitted_at.elapsed() < Duration::from_secs(2),
        "woken {:?} after the submit (poll lasted {elapsed:?})",
        submitted_at.elapsed()
    );
}

async fn lease_long_poll_is_woken_when_a_delayed_job_becomes_due(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(&srv.job, delayed("lpd", "x", Duration::from_millis(700))).await;
    let start = Instant::now();
    let jobs = srv
        .worker()
        .lease(LeaseRequest {
            worker_id: "poller".into(),
            queues: vec!["lpd".into()],
            max_jobs: 1,
            wait: Some(pb_duration(Duration::from_secs(15))),
        })
        .await
        .expect("lease")
        .into_inner()
        .jobs;
    let elapsed = start.elapsed();
    assert_eq!(
        jobs.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_secs(3),
        "a job due in 700ms was handed to a waiting Lease after {elapsed:?}"
    );
}

async fn lease_long_poll_without_work_returns_empty_after_its_wait(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    submit(&srv.job, submit_request("elsewhere", "k", "x")).await;
    let start = Instant::now();
    let jobs = srv
        .worker()
        .lease(LeaseRequest {
            worker_id: "poller".into(),
            queues: vec!["empty".into()],
            max_jobs: 10,
            wait: Some(pb_duration(Duration::from_millis(800))),
        })
        .await
        .expect("lease")
        .into_inner()
        .jobs;
    let elapsed = start.elapsed();
    assert!(jobs.is_empty());
    assert!(
        elapsed >= Duration::from_millis(750) && elapsed < Duration::from_secs(3),
        "an empty long poll of 800ms took {elapsed:?}"
    );
}

async fn lease_returns_up_to_max_jobs_in_one_call(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(submit(&srv.job, submit_request("batch", "k", format!("{i}"))).await);
    }
    let first = lease(&srv.worker, "batch", 5).await;
    assert_eq!(first.len(), 5);
    let second = srv
        .worker()
        .lease(LeaseRequest {
            worker_id: "w".into(),
            queues: vec!["batch".into()],
            max_jobs: 100,
            wait: Some(pb_duration(Duration::from_secs(5))),
        })
        .await
        .expect("lease")
        .into_inner()
        .jobs;
    assert_eq!(second.len(), 2, "what is ready is returned at once");
    let mut got: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|l| l.job_id.clone())
        .collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "every job exactly once");
    assert!(
        first
            .iter()
            .chain(&second)
            .all(|l| !l.lease_token.is_empty())
    );
    // max_jobs 0 means 1.
    submit(&srv.job, submit_request("batch", "k", "a")).await;
    submit(&srv.job, submit_request("batch", "k", "b")).await;
    assert_eq!(lease(&srv.worker, "batch", 0).await.len(), 1);
}

async fn lease_takes_from_queues_in_order_of_preference(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let low = submit(&srv.job, submit_request("low", "k", "x")).await;
    let high = submit(&srv.job, submit_request("high", "k", "x")).await;
    let leased = srv
        .worker()
        .lease(LeaseRequest {
            worker_id: "w".into(),
            queues: vec!["high".into(), "low".into()],
            max_jobs: 1,
            wait: None,
        })
        .await
        .expect("lease")
        .into_inner()
        .jobs;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job_id, high);
    assert_eq!(leased[0].queue, "high");
    let leased = lease(&srv.worker, "low", 1).await;
    assert_eq!(leased[0].job_id, low);
}

/// A finished job with a retention of 1s is gone after it: NOT_FOUND, its
/// history too, out of the queue's counts and dead letters, and (on Redis)
/// none of its keys are left.
async fn finished_jobs_disappear_after_their_retention(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let short = |payload: &str| SubmitRequest {
        retention: Some(pb_duration(SEC)),
        max_attempts: 1,
        ..submit_request("ret", "k", payload)
    };
    let succeeded = submit(&srv.job, short("a")).await;
    let failed = submit(&srv.job, short("b")).await;
    let cancelled = submit(&srv.job, short("c")).await;
    let kept = submit(&srv.job, submit_request("ret", "k", "kept")).await;

    for leased in lease(&srv.worker, "ret", 2).await {
        if leased.job_id == succeeded {
            complete(&srv.worker, &leased, b"ok").await;
        } else {
            assert_eq!(leased.job_id, failed);
            srv.worker()
                .fail(fail_request(&leased, "no", false))
                .await
                .expect("fail");
        }
    }
    srv.job()
        .cancel(CancelRequest {
            job_id: cancelled.clone(),
            reason: String::new(),
        })
        .await
        .expect("cancel");
    let job = get_job(&srv.job, &succeeded).await;
    assert_eq!(job.state(), JobState::Succeeded);
    let finished_at = system_time(job.finished_at.as_ref().expect("finished_at"));
    let expires_at = system_time(job.expires_at.as_ref().expect("expires_at"));
    let retention = secs_between(expires_at, finished_at);
    assert!(
        (retention - 1.0).abs() < 0.5,
        "expires_at - finished_at = {retention}s"
    );
    let stats = |queue: &'static str| {
        let mut admin = srv.admin();
        async move {
            admin
                .get_queue_stats(GetQueueStatsRequest {
                    queue: queue.into(),
                })
                .await
                .expect("stats")
                .into_inner()
        }
    };
    let dead_letters = || {
        let mut admin = srv.admin();
        async move {
            admin
                .list_failed(ListFailedRequest {
                    queue: "ret".into(),
                    page_size: 100,
                    page_token: String::new(),
                })
                .await
                .expect("list_failed")
                .into_inner()
                .jobs
                .into_iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }
    };
    let s = stats("ret").await;
    assert_eq!(
        (s.queued, s.finished, s.failed),
        (1, 3, 1),
        "before the retention: {s:?}"
    );
    assert_eq!(dead_letters().await, std::slice::from_ref(&failed));
    let ulids: Vec<String> = [&succeeded, &failed, &cancelled]
        .iter()
        .map(|id| split_job_id(id).1.to_owned())
        .collect();
    if let Some(before) = backend.redis_snapshot().await {
        for ulid in &ulids {
            assert!(
                !before.mentioning(ulid).is_empty(),
                "job {ulid} is in Redis"
            );
        }
    }

    for id in [&succeeded, &failed, &cancelled] {
        eventually(
            &format!("{id} to be forgotten"),
            Duration::from_secs(5),
            || async {
                match try_get_job(&srv.job, id).await {
                    Err(s) if s.code() == Code::NotFound => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        let watch = srv
            .job()
            .watch_progress(WatchProgressRequest {
                job_id: id.to_string(),
                after_seq: 0,
            })
            .await;
        let first = match watch {
            Ok(stream) => stream.into_inner().message().await.map(|m| m.is_some()),
            Err(s) => Err(s),
        };
        expect_code(first, Code::NotFound, "watching a forgotten job");
    }
    if let Some(redis) = backend.redis() {
        let conn = redis.conn().await;
        eventually(
            "every trace of the jobs to leave Redis",
            Duration::from_secs(5),
            || {
                let mut conn = conn.clone();
                let ulids = ulids.clone();
                async move {
                    let snapshot = Snapshot::take(&mut conn).await;
                    let left: Vec<_> = ulids.iter().flat_map(|u| snapshot.mentioning(u)).collect();
                    if left.is_empty() { Ok(()) } else { Err(left) }
                }
            },
        )
        .await;
    }
    assert_eq!(get_job(&srv.job, &kept).await.state(), JobState::Queued);
    let s = stats("ret").await;
    assert_eq!(
        (s.queued, s.finished, s.failed),
        (1, 0, 0),
        "after the retention: {s:?}"
    );
    assert!(dead_letters().await.is_empty(), "no longer a dead letter");
}

/// WatchProgress delivers every event once, in order, with strictly
/// increasing sequence numbers, resumes after `after_seq`, and ends after the
/// terminal event.
async fn watch_progress_streams_every_event_in_order_and_ends_after_terminal(backend: Backend) {
    let srv = TestServer::start_on(&backend, &WATCH_EVERY_UPDATE).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 2,
            retry: Some(backoff(
                Duration::from_millis(10),
                Duration::from_millis(10),
                1.0,
            )),
            ..submit_request("watch", "k", "x")
        },
    )
    .await;
    let mut live = srv
        .job()
        .watch_progress(WatchProgressRequest {
            job_id: id.clone(),
            after_seq: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(m) = live.message().await.expect("watch stream") {
            events.push(m.event.expect("event"));
        }
        events
    });
    let mut worker = srv.worker();
    let a1 = lease_one(&srv.worker, "watch").await;
    for pct in [10.0, 20.0] {
        worker
            .heartbeat(HeartbeatRequest {
                progress: Some(Progress {
                    percent: pct,
                    current: 0,
                    total: 0,
                    message: format!("{pct}%"),
                }),
                ..heartbeat_request(&a1)
            })
            .await
            .expect("heartbeat");
    }
    worker
        .fail(fail_request(&a1, "flaky", true))
        .await
        .expect("fail");
    let a2 = lease_one(&srv.worker, "watch").await;
    complete(&srv.worker, &a2, b"result").await;

    let events = tokio::time::timeout(Duration::from_secs(5), collector)
        .await
        .expect("the watch ends after the terminal event")
        .expect("collector");
    assert!(!events.is_empty());
    for pair in events.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "seq strictly increasing: {events:?}"
        );
    }
    assert!(events.iter().all(|e| e.job_id == id));
    let states: Vec<JobState> = events
        .iter()
        .filter(|e| e.kind() == EventKind::StateChanged)
        .map(|e| e.state())
        .collect();
    for expected in [
        JobState::Queued,
        JobState::Running,
        JobState::Scheduled,
        JobState::Succeeded,
    ] {
        assert!(
            states.contains(&expected),
            "a {expected:?} event in {states:?}"
        );
    }
    let last = events.last().expect("events");
    assert_eq!(last.state(), JobState::Succeeded);
    assert_eq!(last.result, b"result");
    let progress: Vec<f64> = events
        .iter()
        .filter(|e| e.kind() == EventKind::Progress)
        .filter_map(|e| e.progress.as_ref().map(|p| p.percent))
        .collect();
    assert_eq!(progress, [10.0, 20.0]);
    let job = get_job(&srv.job, &id).await;
    assert_eq!(job.last_seq, last.seq);

    // Replay after a given seq: exactly the later events, then the end.
    let k = events[events.len() / 2].seq;
    let mut replay = srv
        .job()
        .watch_progress(WatchProgressRequest {
            job_id: id.clone(),
            after_seq: k,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut replayed = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(5), replay.message())
        .await
        .expect("a finished job's watch ends at once")
        .expect("watch stream")
    {
        replayed.push(m.event.expect("event").seq);
    }
    let expected: Vec<u64> = events.iter().map(|e| e.seq).filter(|s| *s > k).collect();
    assert_eq!(replayed, expected);
}

async fn queue_stats_count_jobs_by_state(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    for i in 0..3 {
        submit(&srv.job, submit_request("stats", "k", format!("{i}"))).await;
    }
    submit(&srv.job, delayed("stats", "later", Duration::from_secs(60))).await;
    let leased = lease(&srv.worker, "stats", 2).await;
    complete(&srv.worker, &leased[0], b"ok").await;
    let stats = srv
        .admin()
        .get_queue_stats(GetQueueStatsRequest {
            queue: "stats".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.queue, "stats");
    assert_eq!(
        (
            stats.scheduled,
            stats.queued,
            stats.running,
            stats.failed,
            stats.finished
        ),
        (1, 1, 1, 0, 1),
        "{stats:?}"
    );
}

/// GetStatus reports what was submitted and what happened: every field of
/// the request, the attempt, the worker, progress, result and timestamps in
/// order.
async fn get_status_reports_the_whole_job(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let request = SubmitRequest {
        priority: 7,
        max_attempts: 4,
        retry: Some(backoff(
            Duration::from_millis(250),
            Duration::from_secs(9),
            3.0,
        )),
        lease_ttl: Some(pb_duration(Duration::from_secs(20))),
        timeout: Some(pb_duration(Duration::from_secs(600))),
        idempotency_key: "report-2024-05".into(),
        labels: labels(&[("tenant", "acme"), ("kind", "pdf")]),
        retention: Some(pb_duration(Duration::from_secs(3600))),
        ..submit_request("status", "export", "payload-bytes")
    };
    let r = srv
        .job()
        .submit(request.clone())
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(r.state(), JobState::Queued);
    let id = r.job_id;
    assert!(id.starts_with("status:"), "{id}");
    let queued = get_job(&srv.job, &id).await;
    assert_eq!(queued.id, id);
    assert_eq!(queued.queue, "status");
    assert_eq!(queued.kind, "export");
    assert_eq!(queued.payload, b"payload-bytes");
    assert_eq!(queued.state(), JobState::Queued);
    assert_eq!(queued.priority, 7);
    assert_eq!(queued.attempt, 0);
    assert_eq!(queued.max_attempts, 4);
    assert_eq!(queued.labels, request.labels);
    assert_eq!(queued.idempotency_key, "report-2024-05");
    assert_eq!(queued.lease_ttl, request.lease_ttl);
    assert_eq!(queued.timeout, request.timeout);
    assert_eq!(queued.retention, request.retention);
    let retry = queued.retry.expect("retry policy");
    assert_eq!(
        retry.initial_backoff,
        Some(pb_duration(Duration::from_millis(250)))
    );
    assert_eq!(retry.max_backoff, Some(pb_duration(Duration::from_secs(9))));
    assert_eq!(retry.multiplier, 3.0);
    assert!(queued.created_at.is_some());
    assert!(queued.started_at.is_none() && queued.finished_at.is_none());
    assert!(!queued.cancel_requested);

    let mut lease_req = lease_request("status", 1);
    lease_req.worker_id = "reporter-1".into();
    let leased = srv
        .worker()
        .lease(lease_req)
        .await
        .expect("lease")
        .into_inner()
        .jobs;
    let leased = leased.first().expect("a job");
    assert_eq!(
        leased.labels, request.labels,
        "labels travel with the lease"
    );
    assert_eq!(
        (leased.kind.as_str(), leased.queue.as_str()),
        ("export", "status")
    );
    assert_eq!(leased.max_attempts, 4);
    assert_eq!(leased.lease_ttl, request.lease_ttl);
    srv.worker()
        .heartbeat(HeartbeatRequest {
            progress: Some(Progress {
                percent: 40.0,
                current: 4,
                total: 10,
                message: "rendering".into(),
            }),
            ..heartbeat_request(leased)
        })
        .await
        .expect("heartbeat");
    let running = get_job(&srv.job, &id).await;
    assert_eq!(running.state(), JobState::Running);
    assert_eq!(running.attempt, 1);
    assert_eq!(running.worker_id, "reporter-1");
    assert!(running.lease_expires_at.is_some());
    assert_eq!(
        running.progress,
        Some(Progress {
            percent: 40.0,
            current: 4,
            total: 10,
            message: "rendering".into()
        })
    );
    complete(&srv.worker, leased, b"the-report").await;
    let done = get_job(&srv.job, &id).await;
    assert_eq!(done.state(), JobState::Succeeded);
    assert_eq!(done.result, b"the-report");
    assert!(done.error.is_none());
    let t = |ts: &Option<prost_types::Timestamp>, what: &str| {
        system_time(ts.as_ref().unwrap_or_else(|| panic!("{what} is set")))
    };
    let (created, started, finished) = (
        t(&done.created_at, "created_at"),
        t(&done.started_at, "started_at"),
        t(&done.finished_at, "finished_at"),
    );
    assert!(created <= started && started <= finished, "{done:?}");
    let kept = secs_between(t(&done.expires_at, "expires_at"), finished);
    assert!(
        (kept - 3600.0).abs() < 1.0,
        "expires_at = finished_at + retention, not +{kept}s"
    );
    assert!(
        done.last_seq >= 3,
        "queued, running, succeeded at least: {}",
        done.last_seq
    );
}

/// A job's execution timeout ends its attempt at the deadline even while
/// its worker keeps heartbeating.
async fn execution_timeout_ends_an_attempt_even_while_heartbeating(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let timeout = Duration::from_millis(1500);
    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(Duration::from_secs(10))),
            timeout: Some(pb_duration(timeout)),
            max_attempts: 1,
            ..submit_request("timeout", "k", "x")
        },
    )
    .await;
    let before = backend.time().await;
    let leased = lease_one(&srv.worker, "timeout").await;
    let started = Instant::now();
    let deadline = system_time(
        leased
            .deadline
            .as_ref()
            .expect("a job with a timeout has a deadline"),
    );
    let off = secs_between(deadline, before + timeout);
    // (Redis TIME has microseconds, job times milliseconds.) The store's
    // clock is Redis's, or this process's for the embedded store.
    assert!(
        (-0.01..1.0).contains(&off),
        "deadline is lease time + timeout ({off:.3}s off)"
    );
    let expires = system_time(leased.lease_expires_at.as_ref().expect("lease_expires_at"));
    assert!(expires <= deadline, "the lease never outlives the deadline");
    let mut worker = srv.worker();
    loop {
        match worker.heartbeat(heartbeat_request(&leased)).await {
            Ok(hb) => {
                let until = hb.into_inner().lease_expires_at.map(|t| system_time(&t));
                assert!(
                    until <= Some(deadline),
                    "a heartbeat never extends past the deadline"
                );
            }
            Err(s) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the attempt outlived its 1.5s timeout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1300),
        "{:?}",
        started.elapsed()
    );
    let job = wait_for_state(&srv.job, &id, JobState::Failed, Duration::from_secs(5)).await;
    assert!(job.error.is_some());
}

/// A job waiting out a retry backoff is cancelled at once.
async fn cancel_of_a_job_waiting_for_its_retry_is_immediate_and_final(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 3,
            retry: Some(backoff(
                Duration::from_millis(300),
                Duration::from_millis(300),
                1.0,
            )),
            ..submit_request("cr", "k", "x")
        },
    )
    .await;
    let leased = lease_one(&srv.worker, "cr").await;
    srv.worker()
        .fail(fail_request(&leased, "flaky", true))
        .await
        .expect("fail");
    assert_eq!(get_job(&srv.job, &id).await.state(), JobState::Scheduled);
    let r = srv
        .job()
        .cancel(CancelRequest {
            job_id: id.clone(),
            reason: "give up".into(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(r.state(), JobState::Cancelled);
    holds_for(
        "the cancelled job staying cancelled",
        Duration::from_millis(800),
        || async {
            let job = get_job(&srv.job, &id).await;
            let leased = lease(&srv.worker, "cr", 1).await;
            if job.state() == JobState::Cancelled && leased.is_empty() {
                Ok(())
            } else {
                Err(format!("{:?}, leased {}", job.state(), leased.len()))
            }
        },
    )
    .await;
}
