//! The job span: a child of the submitter's span, with the job's fields,
//! exported through an explicitly given tracer provider.
//!
//! The subscriber is set for this thread only and the runtime is
//! single-threaded, so this test never touches (or depends on) global
//! tracing state, whichever test runner runs it.

#![allow(clippy::unwrap_used)]

mod fake;

use std::time::Duration;

use jobctl_worker::telemetry::Telemetry;
use jobctl_worker::{JobContext, Worker};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SUBMITTER_SPAN_ID: &str = "00f067aa0ba902b7";

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[test]
fn the_handler_runs_in_a_span_that_continues_the_submitters_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let telemetry = Telemetry::with_provider(provider.clone());
    let subscriber = tracing_subscriber::registry().with(telemetry.layer());
    let guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (seen_in_handler, complete_traceparent) = runtime.block_on(async {
        let server = fake::serve().await;
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let worker = Worker::builder(server.endpoint())
            .worker_id("w1")
            .queues(["q"])
            .lease_wait(Duration::from_millis(200))
            .handler("traced", move |ctx: JobContext| {
                let seen_tx = seen_tx.clone();
                async move {
                    // The handler sees its span (and so its trace) as current.
                    let context = tracing::Span::current().context();
                    let span = context.span();
                    let _ = seen_tx.send(span.span_context().trace_id());
                    tracing::info!("handling");
                    Ok(ctx.id().as_bytes().to_vec())
                }
            })
            .build()
            .unwrap();
        let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
        let mut job = fake::job("q:j1", "traced", b"");
        job.attempt = 2;
        job.trace_context.insert(
            "traceparent".into(),
            format!("00-{TRACE_ID}-{SUBMITTER_SPAN_ID}-01"),
        );
        job.trace_context
            .insert("x-request-id".into(), "req-1".into());
        server.fake.push(job);
        server
            .fake
            .wait_for("complete", |s| s.completed("q:j1").is_some())
            .await;
        stop.cancel();
        run.await.unwrap().unwrap();
        let traceparent = server
            .fake
            .state()
            .complete_traceparents
            .get("q:j1")
            .cloned();
        (seen_rx.recv().await, traceparent)
    });
    drop(guard);
    provider.force_flush().unwrap();

    let trace_id = TraceId::from_hex(TRACE_ID).unwrap();
    assert_eq!(seen_in_handler, Some(trace_id));
    let spans = exporter.get_finished_spans().unwrap();
    let job_span = spans
        .iter()
        .find(|s| s.name == "job traced")
        .unwrap_or_else(|| panic!("no job span among {spans:#?}"));
    assert_eq!(job_span.span_context.trace_id(), trace_id);
    assert_eq!(
        job_span.parent_span_id,
        SpanId::from_hex(SUBMITTER_SPAN_ID).unwrap()
    );
    let attributes = &job_span.attributes;
    assert_eq!(attribute(attributes, "job_id"), Some(&Value::from("q:j1")));
    assert_eq!(attribute(attributes, "kind"), Some(&Value::from("traced")));
    assert_eq!(attribute(attributes, "queue"), Some(&Value::from("q")));
    assert_eq!(attribute(attributes, "attempt"), Some(&Value::I64(2)));
    assert_eq!(
        attribute(attributes, "request_id"),
        Some(&Value::from("req-1"))
    );
    // The handler's log line is an event of the job span.
    assert!(job_span.events.iter().any(|e| e.name == "handling"));
    // Complete carried the job span's context, so the server's span for it
    // joins the trace.
    assert_eq!(
        complete_traceparent,
        Some(format!(
            "00-{TRACE_ID}-{}-01",
            job_span.span_context.span_id()
        ))
    );
}
