//! Every limit is enforced with the right code, names the field, and writes
//! nothing (on Redis: no key changes; on either store: the jobs and queues
//! the test knows read the same through the API); requests right at a limit
//! are accepted.

use std::time::Duration;

use jobctl_proto::v1::submit_request::Schedule;
use jobctl_proto::v1::{
    FailRequest, HeartbeatRequest, LeaseRequest, ReleaseRequest, RetryPolicy, SubmitRequest,
};
use jobctl_tests::*;
use tonic::Code;

conformance! {
    every_submit_limit_is_refused_with_the_right_code_and_nothing_written;
    requests_right_at_the_limits_are_accepted;
    oversized_results_and_checkpoints_are_refused_and_nothing_written;
    bad_lease_requests_are_refused_and_batches_are_capped;
    durations_and_timestamps_outside_protobuf_ranges_are_invalid_argument;
    payloads_far_over_the_limit_are_resource_exhausted_too;
}

/// Small limits, so requests over them are cheap to make.
const LIMITS: &[&str] = &[
    "--max-payload-bytes",
    "64",
    "--max-result-bytes",
    "48",
    "--max-checkpoint-bytes",
    "32",
    "--max-labels",
    "2",
    "--max-label-key-bytes",
    "8",
    "--max-label-value-bytes",
    "10",
    "--max-name-bytes",
    "12",
    "--max-idempotency-key-bytes",
    "16",
    "--max-lease-batch",
    "5",
];

fn base() -> SubmitRequest {
    submit_request("q", "k", "x")
}

fn neg(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: -(ms / 1000),
        nanos: -i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

fn retry(f: impl FnOnce(&mut RetryPolicy)) -> Option<RetryPolicy> {
    let mut policy = backoff(Duration::from_millis(100), Duration::from_secs(1), 2.0);
    policy.jitter = 0.1;
    f(&mut policy);
    Some(policy)
}

/// Each case: what, the request, the code, a field the error must name.
fn refused_submits() -> Vec<(&'static str, SubmitRequest, Code, &'static str)> {
    use Code::{InvalidArgument as Bad, ResourceExhausted as TooBig};
    vec![
        (
            "payload over the limit",
            SubmitRequest {
                payload: vec![7; 65],
                ..base()
            },
            TooBig,
            "payload",
        ),
        (
            "too many labels",
            SubmitRequest {
                labels: labels(&[("a", "1"), ("b", "2"), ("c", "3")]),
                ..base()
            },
            Bad,
            "label",
        ),
        (
            "label key too long",
            SubmitRequest {
                labels: labels(&[("123456789", "v")]),
                ..base()
            },
            Bad,
            "label",
        ),
        (
            "label value too long",
            SubmitRequest {
                labels: labels(&[("k", "12345678901")]),
                ..base()
            },
            Bad,
            "label",
        ),
        (
            "queue name too long",
            SubmitRequest {
                queue: "q".repeat(13),
                ..base()
            },
            Bad,
            "queue",
        ),
        (
            "empty queue name",
            SubmitRequest {
                queue: String::new(),
                ..base()
            },
            Bad,
            "queue",
        ),
        (
            "queue name with a space",
            SubmitRequest {
                queue: "my queue".into(),
                ..base()
            },
            Bad,
            "queue",
        ),
        (
            "queue name with a colon",
            SubmitRequest {
                queue: "a:b".into(),
                ..base()
            },
            Bad,
            "queue",
        ),
        (
            "queue name with braces",
            SubmitRequest {
                queue: "{tag}".into(),
                ..base()
            },
            Bad,
            "queue",
        ),
        (
            "queue name with a slash",
            SubmitRequest {
                queue: "a/b".into(),
                ..base()
            },
            Bad,
            "queue",
        ),
        (
            "queue name with a star",
            SubmitRequest {
                queue: "q*".into(),
                ..base()
            },
            Bad,
            "queue",
        ),
        (
            "queue name with non-ASCII",
            SubmitRequest {
                queue: "é".into(),
                ..base()
            },
            Bad,
            "queue",
        ),
        (
            "queue name with a newline",
            SubmitRequest {
                queue: "q\n".into(),
                ..base()
            },
            Bad,
            "queue",
        ),
        (
            "kind too long",
            SubmitRequest {
                kind: "k".repeat(13),
                ..base()
            },
            Bad,
            "kind",
        ),
        (
            "empty kind",
            SubmitRequest {
                kind: String::new(),
                ..base()
            },
            Bad,
            "kind",
        ),
        (
            "priority above 1000",
            SubmitRequest {
                priority: 1001,
                ..base()
            },
            Bad,
            "priority",
        ),
        (
            "priority below -1000",
            SubmitRequest {
                priority: -1001,
                ..base()
            },
            Bad,
            "priority",
        ),
        (
            "priority i32::MAX",
            SubmitRequest {
                priority: i32::MAX,
                ..base()
            },
            Bad,
            "priority",
        ),
        (
            "negative delay",
            SubmitRequest {
                schedule: Some(Schedule::Delay(neg(1000))),
                ..base()
            },
            Bad,
            "delay",
        ),
        (
            "negative lease_ttl",
            SubmitRequest {
                lease_ttl: Some(neg(5000)),
                ..base()
            },
            Bad,
            "lease_ttl",
        ),
        (
            "negative timeout",
            SubmitRequest {
                timeout: Some(neg(5000)),
                ..base()
            },
            Bad,
            "timeout",
        ),
        (
            "negative retention",
            SubmitRequest {
                retention: Some(neg(5000)),
                ..base()
            },
            Bad,
            "retention",
        ),
        (
            "negative initial backoff",
            SubmitRequest {
                retry: retry(|r| r.initial_backoff = Some(neg(100))),
                ..base()
            },
            Bad,
            "backoff",
        ),
        (
            "negative max backoff",
            SubmitRequest {
                retry: retry(|r| r.max_backoff = Some(neg(100))),
                ..base()
            },
            Bad,
            "backoff",
        ),
        (
            "negative multiplier",
            SubmitRequest {
                retry: retry(|r| r.multiplier = -2.0),
                ..base()
            },
            Bad,
            "multiplier",
        ),
        (
            "NaN multiplier",
            SubmitRequest {
                retry: retry(|r| r.multiplier = f64::NAN),
                ..base()
            },
            Bad,
            "multiplier",
        ),
        (
            "jitter above 1",
            SubmitRequest {
                retry: retry(|r| r.jitter = 1.5),
                ..base()
            },
            Bad,
            "jitter",
        ),
        (
            "negative jitter",
            SubmitRequest {
                retry: retry(|r| r.jitter = -0.1),
                ..base()
            },
            Bad,
            "jitter",
        ),
        (
            "NaN jitter",
            SubmitRequest {
                retry: retry(|r| r.jitter = f64::NAN),
                ..base()
            },
            Bad,
            "jitter",
        ),
        (
            "idempotency key too long",
            SubmitRequest {
                idempotency_key: "i".repeat(17),
                ..base()
            },
            Bad,
            "idempotency_key",
        ),
    ]
}

async fn every_submit_limit_is_refused_with_the_right_code_and_nothing_written(backend: Backend) {
    let srv = TestServer::start_on(&backend, LIMITS).await;
    // One job already there, so "nothing written" covers existing data too.
    let existing = submit(&srv.job, base()).await;
    let mut failures = Vec::new();
    for (what, request, code, field) in refused_submits() {
        let before = StateSnapshot::take(&backend, &srv, &[&existing], &["q"]).await;
        let result = srv.job().submit(request).await;
        let after = StateSnapshot::take(&backend, &srv, &[&existing], &["q"]).await;
        match result {
            Ok(r) => failures.push(format!("{what}: accepted as {}", r.into_inner().job_id)),
            Err(status) => {
                if status.code() != code {
                    failures.push(format!("{what}: expected {code:?}, got {status:?}"));
                } else if !status_mentions(&status, field) {
                    failures.push(format!(
                        "{what}: the error does not name the field {field:?}: {status:?}"
                    ));
                }
            }
        }
        let diff = before.diff(&after);
        if !diff.is_empty() {
            failures.push(format!("{what}: the store changed:\n{diff}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(!srv.has_stopped());
    assert_no_panics();
}

async fn requests_right_at_the_limits_are_accepted(backend: Backend) {
    let srv = TestServer::start_on(&backend, LIMITS).await;
    let queue = "Az09_.-Az09_";
    assert_eq!(queue.len(), 12);
    let id = submit(
        &srv.job,
        SubmitRequest {
            queue: queue.into(),
            kind: "k".repeat(12),
            payload: vec![1; 64],
            priority: 1000,
            labels: labels(&[("12345678", "1234567890"), ("b", "")]),
            idempotency_key: "i".repeat(16),
            ..base()
        },
    )
    .await;
    submit(
        &srv.job,
        SubmitRequest {
            priority: -1000,
            ..submit_request(queue, "k", "")
        },
    )
    .await;
    let leased = lease_one(&srv.worker, queue).await;
    assert_eq!(leased.job_id, id);
    assert_eq!(leased.payload.len(), 64);
    srv.worker()
        .heartbeat(HeartbeatRequest {
            checkpoint: Some(vec![2; 32]),
            ..heartbeat_request(&leased)
        })
        .await
        .expect("a checkpoint at the limit");
    complete(&srv.worker, &leased, &[3; 48]).await;
    let job = get_job(&srv.job, &id).await;
    assert_eq!(job.result.len(), 48);
    assert_eq!(job.checkpoint.map(|c| c.len()), Some(32));
}

/// Results and checkpoints over their limits are refused on every call
/// that carries them, and the job and its lease stay as they were.
async fn oversized_results_and_checkpoints_are_refused_and_nothing_written(backend: Backend) {
    let srv = TestServer::start_on(&backend, LIMITS).await;
    let id = submit(&srv.job, base()).await;
    let leased = lease_one(&srv.worker, "q").await;
    let mut worker = srv.worker();
    let before = StateSnapshot::take(&backend, &srv, &[&id], &["q"]).await;

    let s = expect_code(
        worker.complete(complete_request(&leased, &[0; 49])).await,
        Code::ResourceExhausted,
        "complete with a result over the limit",
    );
    assert!(status_mentions(&s, "result"), "{s:?}");
    let s = expect_code(
        worker
            .heartbeat(HeartbeatRequest {
                checkpoint: Some(vec![0; 33]),
                ..heartbeat_request(&leased)
            })
            .await,
        Code::ResourceExhausted,
        "heartbeat with a checkpoint over the limit",
    );
    assert!(status_mentions(&s, "checkpoint"), "{s:?}");
    expect_code(
        worker
            .fail(FailRequest {
                checkpoint: Some(vec![0; 33]),
                ..fail_request(&leased, "x", true)
            })
            .await,
        Code::ResourceExhausted,
        "fail with a checkpoint over the limit",
    );
    expect_code(
        worker
            .release(ReleaseRequest {
                job_id: id.clone(),
                lease_token: leased.lease_token.clone(),
                checkpoint: Some(vec![0; 33]),
            })
            .await,
        Code::ResourceExhausted,
        "release with a checkpoint over the limit",
    );
    before.assert_unchanged(
        &StateSnapshot::take(&backend, &srv, &[&id], &["q"]).await,
        "oversized results and checkpoints",
    );

    // The lease is intact.
    complete(&srv.worker, &leased, b"small").await;
    assert_eq!(get_job(&srv.job, &id).await.result, b"small");
}

async fn bad_lease_requests_are_refused_and_batches_are_capped(backend: Backend) {
    let srv = TestServer::start_on(&backend, LIMITS).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(submit(&srv.job, submit_request("q", "k", format!("{i}"))).await);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let before = StateSnapshot::take(&backend, &srv, &ids, &["q"]).await;
    let request = |queues: Vec<String>, wait: Option<prost_types::Duration>| LeaseRequest {
        worker_id: "w".into(),
        queues,
        max_jobs: 1,
        wait,
    };
    for (what, req) in [
        ("no queues", request(vec![], None)),
        ("an empty queue name", request(vec![String::new()], None)),
        ("a bad queue name", request(vec!["a b".into()], None)),
        ("a queue name too long", request(vec!["q".repeat(13)], None)),
        (
            "a bad queue among good ones",
            request(vec!["q".into(), "a:b".into()], None),
        ),
        (
            "a negative wait",
            request(vec!["q".into()], Some(neg(1000))),
        ),
    ] {
        let s = expect_code(srv.worker().lease(req).await, Code::InvalidArgument, what);
        assert!(
            status_mentions(&s, "queue") || status_mentions(&s, "wait"),
            "{what}: the error names the field: {s:?}"
        );
    }
    before.assert_unchanged(
        &StateSnapshot::take(&backend, &srv, &ids, &["q"]).await,
        "refused leases",
    );

    // Asking for more than --max-lease-batch is refused or capped, never
    // exceeded.
    match srv
        .worker()
        .lease(LeaseRequest {
            max_jobs: 1000,
            ..request(vec!["q".into()], None)
        })
        .await
    {
        Ok(r) => {
            let n = r.into_inner().jobs.len();
            assert!(
                n <= 5,
                "a Lease returned {n} jobs, over --max-lease-batch 5"
            );
        }
        Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{s:?}"),
    }
}

/// `google.protobuf.Duration` and `Timestamp` values outside the ranges the
/// protobuf spec allows (nanos beyond +/-999,999,999, or signs that differ
/// between seconds and nanos) are bad input, not something to normalise.
async fn durations_and_timestamps_outside_protobuf_ranges_are_invalid_argument(backend: Backend) {
    let srv = TestServer::start_on(&backend, LIMITS).await;
    let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
    let cases = vec![
        (
            "delay with nanos of 2s",
            SubmitRequest {
                schedule: Some(Schedule::Delay(d(1, 2_000_000_000))),
                ..base()
            },
            "delay",
        ),
        (
            "delay with mixed signs",
            SubmitRequest {
                schedule: Some(Schedule::Delay(d(1, -5))),
                ..base()
            },
            "delay",
        ),
        (
            "lease_ttl with nanos of 2s",
            SubmitRequest {
                lease_ttl: Some(d(5, 2_000_000_000)),
                ..base()
            },
            "lease_ttl",
        ),
        (
            "retention with mixed signs",
            SubmitRequest {
                retention: Some(d(60, -1)),
                ..base()
            },
            "retention",
        ),
        (
            "backoff with nanos of -2s",
            SubmitRequest {
                retry: retry(|r| r.initial_backoff = Some(d(-1, -2_000_000_000))),
                ..base()
            },
            "backoff",
        ),
        (
            "run_at with negative nanos",
            SubmitRequest {
                schedule: Some(Schedule::RunAt(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -5,
                })),
                ..base()
            },
            "run_at",
        ),
        (
            "run_at with nanos of 1s",
            SubmitRequest {
                schedule: Some(Schedule::RunAt(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 1_000_000_000,
                })),
                ..base()
            },
            "run_at",
        ),
    ];
    let mut failures = Vec::new();
    for (what, request, field) in cases {
        let before = StateSnapshot::take(&backend, &srv, &[], &["q"]).await;
        let result = srv.job().submit(request).await;
        let after = StateSnapshot::take(&backend, &srv, &[], &["q"]).await;
        match result {
            Ok(r) => failures.push(format!("{what}: accepted as {}", r.into_inner().job_id)),
            Err(s) if s.code() != Code::InvalidArgument => {
                failures.push(format!("{what}: expected InvalidArgument, got {s:?}"));
            }
            Err(s) if !status_mentions(&s, field) => {
                failures.push(format!("{what}: the error does not name {field:?}: {s:?}"));
            }
            Err(_) => {}
        }
        let diff = before.diff(&after);
        if !diff.is_empty() {
            failures.push(format!("{what}: the store changed:\n{diff}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A payload over the limit is RESOURCE_EXHAUSTED however far over it is,
/// including messages past the transport's own size limit (which is also
/// gRPC's standard code for an oversized message), and nothing is written.
async fn payloads_far_over_the_limit_are_resource_exhausted_too(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await; // default limit: 1 MiB
    let before = StateSnapshot::take(&backend, &srv, &[], &["q"]).await;
    let mut failures = Vec::new();
    for size in [(1 << 20) + 1, 2 << 20, 8 << 20] {
        match srv
            .job()
            .submit(submit_request("q", "k", vec![0u8; size]))
            .await
        {
            Ok(r) => failures.push(format!(
                "{size} bytes: accepted as {}",
                r.into_inner().job_id
            )),
            Err(s) if s.code() != Code::ResourceExhausted => {
                failures.push(format!(
                    "{size} bytes: expected ResourceExhausted, got {s:?}"
                ));
            }
            Err(_) => {}
        }
    }
    before.assert_unchanged(
        &StateSnapshot::take(&backend, &srv, &[], &["q"]).await,
        "oversized payloads",
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    submit(&srv.job, submit_request("q", "k", vec![0u8; 1 << 20])).await;
}
