//! Worker processes (the SDK-built `jobctl-test-worker`) killed with
//! SIGKILL in the middle of their jobs, against a server on either store:
//! nothing is lost and checkpoints survive. (Killed server replicas and Redis
//! going away are Redis-only: `availability.rs`.)

use std::time::{Duration, Instant};

use jobctl_proto::v1::{JobState, SubmitRequest};
use jobctl_tests::*;

const SEC: Duration = Duration::from_secs(1);

conformance! {
    worker_process_killed_mid_job_is_re_leased_and_completed;
    checkpointed_job_resumes_after_its_worker_process_is_killed;
}

/// A worker process killed with SIGKILL in the middle of a job: the job's
/// lease expires, another worker leases it and completes it.
async fn worker_process_killed_mid_job_is_re_leased_and_completed(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(SEC)),
            max_attempts: 3,
            retry: Some(backoff(
                Duration::from_millis(10),
                Duration::from_millis(10),
                1.0,
            )),
            ..submit_request("kill", "sleep", r#"{"ms": 60000, "retry_ms": 10}"#)
        },
    )
    .await;
    let mut a = WorkerProcess::spawn(test_worker_bin!(), &srv.endpoint, "worker-a", "kill", 1);
    let job = wait_for_state(&srv.job, &id, JobState::Running, Duration::from_secs(15)).await;
    assert_eq!(job.worker_id, "worker-a");
    a.kill().await;
    let killed_at = Instant::now();
    let _b = WorkerProcess::spawn(test_worker_bin!(), &srv.endpoint, "worker-b", "kill", 1);
    let job = wait_for_state(&srv.job, &id, JobState::Succeeded, Duration::from_secs(15)).await;
    assert_eq!(job.attempt, 2);
    assert_eq!(job.worker_id, "worker-b");
    assert_eq!(job.result, b"worker-b:2");
    assert!(killed_at.elapsed() < Duration::from_secs(10));
}

/// A checkpointing job whose worker process is SIGKILLed part-way resumes
/// from its last checkpoint on the next worker instead of starting over; a
/// failing job goes to the dead letters with the handler's message.
async fn checkpointed_job_resumes_after_its_worker_process_is_killed(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(
        &srv.job,
        SubmitRequest {
            lease_ttl: Some(pb_duration(SEC)),
            max_attempts: 3,
            retry: Some(backoff(
                Duration::from_millis(10),
                Duration::from_millis(10),
                1.0,
            )),
            ..submit_request("resume", "checkpointed", r#"{"steps": 30, "step_ms": 100}"#)
        },
    )
    .await;
    let fatal = submit(
        &srv.job,
        SubmitRequest {
            max_attempts: 3,
            ..submit_request(
                "resume",
                "fail",
                r#"{"fatal": true, "message": "bad row 7"}"#,
            )
        },
    )
    .await;
    let mut a = WorkerProcess::spawn(test_worker_bin!(), &srv.endpoint, "first", "resume", 2);
    let done_before_kill: u64 =
        eventually("a few checkpoints", Duration::from_secs(15), || async {
            let job = get_job(&srv.job, &id).await;
            let steps = job
                .checkpoint
                .as_deref()
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            if steps >= 3 { Ok(steps) } else { Err(steps) }
        })
        .await;
    a.kill().await;
    let _b = WorkerProcess::spawn(test_worker_bin!(), &srv.endpoint, "second", "resume", 2);
    let job = wait_for_state(&srv.job, &id, JobState::Succeeded, Duration::from_secs(15)).await;
    assert_eq!(job.attempt, 2);
    let result = String::from_utf8(job.result).expect("utf-8");
    let resumed_from: u64 = result
        .strip_prefix("resumed_from=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected result {result:?}"));
    assert!(
        resumed_from >= done_before_kill && resumed_from < 30,
        "the second attempt resumed from step {resumed_from}; {done_before_kill} were checkpointed before the kill"
    );

    let job = wait_for_state(&srv.job, &fatal, JobState::Failed, Duration::from_secs(5)).await;
    assert_eq!(job.attempt, 1);
    assert_eq!(job.error.map(|e| e.message), Some("bad row 7".to_owned()));
}
