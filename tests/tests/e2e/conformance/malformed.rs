//! Malformed input is refused without a panic, writes nothing, and the
//! server keeps serving.

use std::time::Duration;

use jobctl_proto::v1::{
    CancelRequest, CompleteRequest, FailRequest, GetStatusRequest, HeartbeatRequest, JobError,
    ReleaseRequest, RequeueRequest, SubmitRequest, WatchProgressRequest,
};
use jobctl_tests::*;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Status};

conformance! {
    malformed_and_unknown_job_ids_are_not_found_and_write_nothing;
    garbage_frames_are_refused_without_a_panic_and_the_server_keeps_serving;
    huge_strings_are_handled_without_a_panic;
}

const ULID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// Ids that are malformed or name no job.
fn bad_ids() -> Vec<String> {
    vec![
        "nocolon".into(),
        ":".into(),
        "q:".into(),
        format!(":{ULID}"),
        "q:not-a-ulid".into(),
        format!("q:{ULID}X"),
        format!("q:{ULID}"),
        format!("bad queue:{ULID}"),
        format!("{{q}}:{ULID}"),
        format!("q:{ULID}:extra"),
        format!("*:{ULID}"),
        "*".into(),
        "q:*".into(),
        format!("default:q:{ULID}"),
        format!("q\n:{ULID}"),
        format!("{}:{ULID}", "q".repeat(10_000)),
    ]
}

/// Codes a malformed or unknown id may get: NOT_FOUND, or INVALID_ARGUMENT
/// for an empty or absurdly long one.
fn acceptable(id: &str, code: Code) -> bool {
    code == Code::NotFound || ((id.is_empty() || id.len() > 1000) && code == Code::InvalidArgument)
}

async fn malformed_and_unknown_job_ids_are_not_found_and_write_nothing(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    // A real job, so its id can be bent into wrong ones.
    let real = submit(&srv.job, submit_request("q", "k", "x")).await;
    let (_, real_ulid) = split_job_id(&real);
    let mut ids = bad_ids();
    ids.push(String::new());
    ids.push("x".repeat(1 << 20));
    ids.push(format!("other:{real_ulid}"));
    ids.push(format!("Q:{real_ulid}"));

    // Nothing written: no key on Redis, and on either store the real job and
    // the queues the ids name are as they were.
    let queues = ["q", "other", "Q"];
    let before = StateSnapshot::take(&backend, &srv, &[&real], &queues).await;
    let mut problems = Vec::new();
    for id in &ids {
        let short: String = id.chars().take(40).collect();
        let checks: Vec<(&str, Result<(), Status>)> = vec![
            (
                "GetStatus",
                srv.job()
                    .get_status(GetStatusRequest { job_id: id.clone() })
                    .await
                    .map(drop),
            ),
            (
                "Cancel",
                srv.job()
                    .cancel(CancelRequest {
                        job_id: id.clone(),
                        reason: "x".into(),
                    })
                    .await
                    .map(drop),
            ),
            ("WatchProgress", watch_first(&srv, id).await),
            (
                "Requeue",
                srv.admin()
                    .requeue(RequeueRequest { job_id: id.clone() })
                    .await
                    .map(drop),
            ),
            (
                "Heartbeat",
                srv.worker()
                    .heartbeat(HeartbeatRequest {
                        job_id: id.clone(),
                        lease_token: "token".into(),
                        progress: None,
                        checkpoint: Some(b"cp".to_vec()),
                    })
                    .await
                    .map(drop),
            ),
            (
                "Complete",
                srv.worker()
                    .complete(CompleteRequest {
                        job_id: id.clone(),
                        lease_token: "token".into(),
                        result: b"r".to_vec(),
                    })
                    .await
                    .map(drop),
            ),
            (
                "Fail",
                srv.worker()
                    .fail(FailRequest {
                        job_id: id.clone(),
                        lease_token: "token".into(),
                        error: Some(JobError::default()),
                        retryable: true,
                        retry_after: None,
                        checkpoint: None,
                    })
                    .await
                    .map(drop),
            ),
            (
                "Release",
                srv.worker()
                    .release(ReleaseRequest {
                        job_id: id.clone(),
                        lease_token: "token".into(),
                        checkpoint: None,
                    })
                    .await
                    .map(drop),
            ),
        ];
        for (rpc, result) in checks {
            match result {
                // Its own tests (lifecycle.rs) cover a missing WatchProgress.
                Err(s) if rpc == "WatchProgress" && s.code() == Code::Unimplemented => {}
                Ok(()) => problems.push(format!("{rpc}({short:?}): accepted")),
                Err(s) if !acceptable(id, s.code()) => {
                    problems.push(format!("{rpc}({short:?}): expected NOT_FOUND, got {s:?}"));
                }
                Err(_) => {}
            }
        }
    }
    let after = StateSnapshot::take(&backend, &srv, &[&real], &queues).await;
    let diff = before.diff(&after);
    if !diff.is_empty() {
        problems.push(format!("the store changed:\n{diff}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(get_job(&srv.job, &real).await.payload, b"x");
    assert_no_panics();
}

/// Starts a watch and reads its first message: the error, if any.
async fn watch_first(srv: &TestServer, id: &str) -> Result<(), Status> {
    let mut stream = srv
        .job()
        .watch_progress(WatchProgressRequest {
            job_id: id.into(),
            after_seq: 0,
        })
        .await?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(s),
        Err(_) => Err(Status::deadline_exceeded(
            "the watch neither failed nor ended",
        )),
    }
}

/// Bytes that are not a valid protobuf encoding of any message.
fn invalid_protobuf() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "string field with invalid UTF-8",
            vec![0x0a, 0x02, 0xff, 0xfe],
        ),
        ("length past the end", vec![0x0a, 0x10, b'a']),
        ("wire type 7", vec![0x0f, 0x01]),
        ("field number 0", vec![0x00, 0x01]),
        ("varint of 11 bytes", {
            let mut v = vec![0x18];
            v.extend([0xff; 10]);
            v.push(0x01);
            v
        }),
        ("truncated varint", vec![0x18, 0xff]),
        ("huge length", vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        ("group start without end", vec![0x0b]),
        (
            "nested message with invalid UTF-8",
            vec![0x1a, 0x04, 0x0a, 0x02, 0xc3, 0x28],
        ),
    ]
}

/// Garbage in gRPC frames (random bytes, invalid protobuf, unknown methods)
/// and garbage on the socket: refused without a panic, and the server still
/// serves.
async fn garbage_frames_are_refused_without_a_panic_and_the_server_keeps_serving(backend: Backend) {
    let srv = TestServer::start_on(&backend, &["--max-lease-wait", "1s"]).await;
    let mut problems = Vec::new();

    for (method, streaming) in &METHODS {
        for (what, body) in invalid_protobuf() {
            match send_raw(&srv.channel(), None, method, *streaming, body).await {
                Ok(()) => {}
                // Decoding errors are INTERNAL in gRPC's own mapping; a
                // server may also say INVALID_ARGUMENT.
                Err(s) if matches!(s.code(), Code::Internal | Code::InvalidArgument) => {}
                // Bytes that happened to decode into a valid request that
                // names nothing.
                Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {}
                // Its own tests (lifecycle.rs) cover a missing WatchProgress.
                Err(s) if method.ends_with("/WatchProgress") && s.code() == Code::Unimplemented => {
                }
                Err(s) => problems.push(format!("{method} with {what}: {s:?}")),
            }
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6a6f6263);
    for round in 0..20 {
        for (method, streaming) in &METHODS {
            let len = rng.random_range(0..2048);
            let mut body = vec![0u8; len];
            rng.fill(&mut body[..]);
            if let Err(s) = send_raw(&srv.channel(), None, method, *streaming, body).await
                && matches!(
                    s.code(),
                    Code::Unknown | Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
                )
            {
                problems.push(format!("{method} with random bytes (round {round}): {s:?}"));
            }
        }
    }
    for method in ["/jobctl.v1.JobService/Nope", "/jobctl.v1.Nope/Submit", "/x"] {
        let s = send_raw(&srv.channel(), None, method, false, vec![1, 2, 3]).await;
        match s {
            Err(s) if s.code() == Code::Unimplemented => {}
            other => problems.push(format!("{method}: expected UNIMPLEMENTED, got {other:?}")),
        }
    }

    // Not HTTP/2 at all, and an HTTP/2 preface followed by junk.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for prefix in [
        &b""[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut junk = prefix.to_vec();
        let mut tail = vec![0u8; 4096];
        rng.fill(&mut tail[..]);
        junk.extend(tail);
        let mut socket = tokio::net::TcpStream::connect(srv.addr)
            .await
            .expect("connect");
        let _ = socket.write_all(&junk).await;
        let mut sink = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut sink)).await;
        if closed.is_err() {
            problems.push(format!(
                "the server kept a garbage connection ({} byte prefix) open for 10s",
                prefix.len()
            ));
        }
    }

    // Still serving, with the same connection and a new one.
    let id = submit(&srv.job, submit_request("after", "k", "x")).await;
    let leased = lease_one(&srv.worker, "after").await;
    assert_eq!(leased.job_id, id);
    complete(&srv.worker, &leased, b"ok").await;
    let fresh =
        jobctl_proto::v1::job_service_client::JobServiceClient::connect(srv.endpoint.clone())
            .await
            .expect("a new connection");
    assert_eq!(get_job(&fresh, &id).await.result, b"ok");
    assert!(!srv.has_stopped(), "the server is still running");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_no_panics();
}

/// Huge strings where the contract sets no explicit limit: accepted or
/// refused cleanly, never a crash.
async fn huge_strings_are_handled_without_a_panic(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let huge = "h".repeat(3 << 20);
    let mut outcomes = Vec::new();
    let ok_or = |r: Result<(), Status>| match r {
        Ok(()) => Ok(()),
        Err(s)
            if matches!(
                s.code(),
                Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
            ) =>
        {
            Ok(())
        }
        Err(s) => Err(s),
    };

    outcomes.push((
        "submit with a huge label",
        ok_or(
            srv.job()
                .submit(SubmitRequest {
                    labels: labels(&[("k", huge.as_str())]),
                    ..submit_request("q", "k", "x")
                })
                .await
                .map(drop),
        ),
    ));
    outcomes.push((
        "submit with a huge payload",
        ok_or(
            srv.job()
                .submit(submit_request("q", "k", vec![0u8; 6 << 20]))
                .await
                .map(drop),
        ),
    ));
    let id = submit(&srv.job, submit_request("q", "k", "x")).await;
    outcomes.push((
        "cancel with a huge reason",
        ok_or(
            srv.job()
                .cancel(CancelRequest {
                    job_id: id.clone(),
                    reason: huge.clone(),
                })
                .await
                .map(drop),
        ),
    ));
    let id2 = submit(&srv.job, submit_request("q2", "k", "x")).await;
    let mut lease_req = lease_request("q2", 1);
    lease_req.worker_id = huge.clone();
    outcomes.push((
        "lease with a huge worker id",
        ok_or(srv.worker().lease(lease_req).await.map(drop)),
    ));
    let leased = lease_one(&srv.worker, "q2").await;
    assert_eq!(leased.job_id, id2);
    outcomes.push((
        "fail with a huge error",
        ok_or(
            srv.worker()
                .fail(FailRequest {
                    error: Some(JobError {
                        message: huge.clone(),
                        code: huge.clone(),
                        details: huge.clone(),
                    }),
                    ..fail_request(&leased, "", true)
                })
                .await
                .map(drop),
        ),
    ));
    outcomes.push((
        "heartbeat with a huge progress message",
        ok_or(
            srv.worker()
                .heartbeat(HeartbeatRequest {
                    progress: Some(jobctl_proto::v1::Progress {
                        percent: 1.0,
                        current: 1,
                        total: 1,
                        message: huge.clone(),
                    }),
                    ..heartbeat_request(&leased)
                })
                .await
                .map(drop),
        ),
    ));
    let bad: Vec<_> = outcomes
        .into_iter()
        .filter_map(|(what, r)| r.err().map(|s| format!("{what}: {s:?}")))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    let after = submit(&srv.job, submit_request("q3", "k", "x")).await;
    assert!(get_job(&srv.job, &after).await.id == after);
    assert_no_panics();
}
