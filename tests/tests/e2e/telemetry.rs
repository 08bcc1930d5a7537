//! Trace context and request ids: the submitter's `traceparent` becomes the
//! parent of the worker's span, the server's spans carry the job id, and
//! every Submit answer carries a request id. Spans are exported by the real
//! `jobctl-server` and `jobctl-test-worker` processes (configured only by
//! `OTEL_*` variables) to a real OTLP receiver in the test.

use std::time::Duration;

use jobctl_proto::v1::SubmitRequest;
use jobctl_tests::*;
use tonic::Request;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const SUBMITTER_SPAN: &str = "b7ad6b7169203331";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{SUBMITTER_SPAN}-01")
}

/// A Submit request carrying `metadata`.
fn with_metadata(
    request: SubmitRequest,
    metadata: &[(&'static str, &str)],
) -> Request<SubmitRequest> {
    let mut request = Request::new(request);
    for (key, value) in metadata {
        request
            .metadata_mut()
            .insert(*key, value.parse().expect("ascii metadata"));
    }
    request
}

fn env(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// The first received span that `matches`, polling until one arrives.
async fn span(
    receiver: &OtlpReceiver,
    what: &str,
    matches: impl Fn(&ReceivedSpan) -> bool,
) -> ReceivedSpan {
    eventually(what, Duration::from_secs(20), || async {
        let spans = receiver.spans();
        spans.iter().find(|s| matches(s)).cloned().ok_or_else(|| {
            spans
                .iter()
                .map(|s| format!("{}:{}", s.service, s.span.name))
                .collect::<Vec<_>>()
        })
    })
    .await
}

#[tokio::test]
async fn the_worker_span_continues_the_submitters_trace() {
    let redis = RedisServer::start().await;
    let receiver = OtlpReceiver::start().await;
    let server_env = receiver.env("jobctl-server-under-test");
    let server = ServerProcess::start_wrapped(&[], &env(&server_env), &redis.url(), &[]).await;
    let worker_env = receiver.env("worker-under-test");
    let _worker = WorkerProcess::spawn_with_env(
        test_worker_bin!(),
        &server.endpoint,
        "traced-worker",
        "traced",
        1,
        &env(&worker_env),
    );
    let mut client =
        jobctl_proto::v1::job_service_client::JobServiceClient::connect(server.endpoint.clone())
            .await
            .expect("connect");
    let submitted = client
        .submit(with_metadata(
            submit_request("traced", "echo", b"hello".to_vec()),
            &[
                ("traceparent", &traceparent()),
                ("x-request-id", "req-trace-1"),
            ],
        ))
        .await
        .expect("submit")
        .into_inner();
    let job_id = submitted.job_id;
    wait_for_state(
        &client,
        &job_id,
        jobctl_proto::v1::JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;

    // The worker's span: same trace, the submitter's span as its parent,
    // the job's fields as attributes.
    let worker_span = span(&receiver, "the worker's job span", |s| {
        s.service == "worker-under-test" && s.attribute("job_id").as_deref() == Some(&job_id)
    })
    .await;
    assert_eq!(worker_span.trace_id(), TRACE_ID);
    assert_eq!(worker_span.parent_span_id(), SUBMITTER_SPAN);
    assert_eq!(worker_span.span.name, "job echo");
    assert_eq!(worker_span.attribute("kind").as_deref(), Some("echo"));
    assert_eq!(worker_span.attribute("queue").as_deref(), Some("traced"));
    assert_eq!(worker_span.attribute("attempt").as_deref(), Some("1"));
    assert_eq!(
        worker_span.attribute("request_id").as_deref(),
        Some("req-trace-1")
    );

    // The server's Submit span: in the same trace, under the submitter's
    // span, with the job id.
    let submit_span = span(&receiver, "the server's Submit span", |s| {
        s.service == "jobctl-server-under-test" && s.span.name == "jobctl.v1.JobService/Submit"
    })
    .await;
    assert_eq!(submit_span.trace_id(), TRACE_ID);
    assert_eq!(submit_span.parent_span_id(), SUBMITTER_SPAN);
    assert_eq!(
        submit_span.attribute("job_id").as_deref(),
        Some(job_id.as_str())
    );
    assert_eq!(
        submit_span.attribute("request_id").as_deref(),
        Some("req-trace-1")
    );

    // The worker's Complete call continues the worker's span on the server.
    let complete_span = span(&receiver, "the server's Complete span", |s| {
        s.service == "jobctl-server-under-test" && s.span.name == "jobctl.v1.WorkerService/Complete"
    })
    .await;
    assert_eq!(complete_span.trace_id(), TRACE_ID);
    assert_eq!(complete_span.parent_span_id(), worker_span.span_id());
    assert_eq!(
        complete_span.attribute("job_id").as_deref(),
        Some(job_id.as_str())
    );

    // The lease of the job is a span of the worker's Lease call, linked to
    // the submitter's span.
    let lease_span = span(&receiver, "the server's span of the job's lease", |s| {
        s.span.name == "jobctl lease" && s.attribute("job_id").as_deref() == Some(&job_id)
    })
    .await;
    assert_eq!(lease_span.attribute("attempt").as_deref(), Some("1"));
    assert!(
        lease_span.span.links.iter().any(|l| {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            hex(&l.trace_id) == TRACE_ID && hex(&l.span_id) == SUBMITTER_SPAN
        }),
        "{:?}",
        lease_span.span.links
    );

    // GetStatus spans name the job too (the polling above made some).
    let status_span = span(&receiver, "a GetStatus span", |s| {
        s.span.name == "jobctl.v1.JobService/GetStatus"
    })
    .await;
    assert_eq!(
        status_span.attribute("job_id").as_deref(),
        Some(job_id.as_str())
    );
}

#[tokio::test]
async fn submit_without_a_request_id_gets_one_that_reaches_the_worker() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis, &[]).await;
    let response = server
        .job()
        .submit(submit_request("rid", "k", b"".to_vec()))
        .await
        .expect("submit");
    let request_id = response
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an x-request-id in the answer")
        .to_owned();
    assert_eq!(request_id.len(), 26, "a ULID: {request_id}");
    let leased = lease_one(&server.worker(), "rid").await;
    assert_eq!(leased.job_id, response.into_inner().job_id);
    assert_eq!(
        leased.trace_context.get("x-request-id"),
        Some(&request_id),
        "{:?}",
        leased.trace_context
    );

    // Each Submit gets its own.
    let again = server
        .job()
        .submit(submit_request("rid", "k", b"".to_vec()))
        .await
        .expect("submit");
    let second = again.metadata().get("x-request-id").expect("request id");
    assert_ne!(second.to_str().ok(), Some(request_id.as_str()));
}

#[tokio::test]
async fn submit_echoes_the_callers_request_id_and_keeps_the_trace_context() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis, &[]).await;
    let response = server
        .job()
        .submit(with_metadata(
            submit_request("echo", "k", b"".to_vec()),
            &[
                ("x-request-id", "req-42"),
                ("traceparent", &traceparent()),
                ("tracestate", "vendor=x"),
            ],
        ))
        .await
        .expect("submit");
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-42")
    );
    let leased = lease_one(&server.worker(), "echo").await;
    let tc = &leased.trace_context;
    assert_eq!(tc.get("x-request-id").map(String::as_str), Some("req-42"));
    assert_eq!(tc.get("traceparent"), Some(&traceparent()));
    assert_eq!(tc.get("tracestate").map(String::as_str), Some("vendor=x"));

    // A refused Submit says which request it refused, too.
    let refused = server
        .job()
        .submit(with_metadata(
            submit_request("", "k", b"".to_vec()),
            &[("x-request-id", "req-43")],
        ))
        .await
        .expect_err("an empty queue name is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        refused
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-43")
    );
}

/// Not a test but a measurement (run by hand, it asserts nothing): the
/// server's CPU time per Submit with export off and on, from
/// `/proc/<pid>/stat`, which a busy machine skews less than wall time.
/// `JOBCTL_BASELINE_SERVER_BIN` adds another build (say, main's) to compare.
///
/// `cargo nextest run -p jobctl-tests --run-ignored only -E 'test(submit_cpu_cost)' --no-capture`
#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn submit_cpu_cost_with_and_without_export() {
    const SUBMITS: usize = 3000;
    let redis = RedisServer::start().await;
    let receiver = OtlpReceiver::start().await;
    let exporting = receiver.env("jobctl-server-measured");
    let baseline = std::env::var("JOBCTL_BASELINE_SERVER_BIN")
        .ok()
        .map(|bin| format!("exec {bin} \"$@\""));
    // (name, wrapper command, environment)
    type Run<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let mut runs: Vec<Run> = vec![
        ("export off", vec![], vec![]),
        ("exporting", vec![], env(&exporting)),
    ];
    if let Some(exec) = &baseline {
        runs.insert(
            0,
            ("baseline binary", vec!["sh", "-c", exec.as_str()], vec![]),
        );
    }
    for round in 1..=3 {
        for (name, wrapper, env) in &runs {
            let server = ServerProcess::start_wrapped(wrapper, env, &redis.url(), &[]).await;
            let pid = server.pid().expect("running");
            let cpu_seconds = || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, rest)| rest.split_whitespace().collect())
                    .unwrap_or_default();
                let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
                (ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)) / 100.0
            };
            let client = jobctl_proto::v1::job_service_client::JobServiceClient::connect(
                server.endpoint.clone(),
            )
            .await
            .expect("connect");
            let before = cpu_seconds();
            let start = std::time::Instant::now();
            for i in 0..SUBMITS {
                let mut client = client.clone();
                let traceparent = format!("00-{TRACE_ID}-{i:016x}-01");
                client
                    .submit(with_metadata(
                        submit_request("measure", "k", b"x".to_vec()),
                        &[("traceparent", &traceparent)],
                    ))
                    .await
                    .expect("submit");
            }
            let wall = start.elapsed().as_secs_f64() * 1e6 / SUBMITS as f64;
            let cpu = (cpu_seconds() - before) * 1e6 / SUBMITS as f64;
            println!(
                "round {round} {name:16} server cpu {cpu:5.0} us/submit, wall {wall:5.0} us/submit"
            );
        }
    }
}
