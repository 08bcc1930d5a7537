"""Auth (bearer tokens, TLS, client certificates) and the trace context
that travels from the submitter's span to the worker's."""

from __future__ import annotations

import uuid

import pytest
from conftest import CLIENT_KEY, WAIT, WORKER_KEY, SecureServer, Server, running
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import jobctl
from jobctl import JobState

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


def test_tokens_tls_and_client_certificates(secure_server: SecureServer) -> None:
    pki = secure_server.pki
    tls = jobctl.TLS(ca_cert=pki.ca)
    q = f"py-{uuid.uuid4().hex[:8]}"
    with jobctl.Client(secure_server.url, token=CLIENT_KEY, tls=tls) as client:
        job = client.submit(q, "secure", b"over tls")
        with pytest.raises(jobctl.PermissionDenied):
            client.queue_stats(q)  # the client role is no operator

        worker = jobctl.Worker(secure_server.url, queues=[q], token=WORKER_KEY, tls=tls, lease_wait=1)

        @worker.handler("secure")
        def handle(ctx: jobctl.JobContext) -> bytes:
            return ctx.payload + b", done"

        with running(worker):
            done = client.wait(job.job_id, timeout=WAIT)
        assert (done.state, done.result) == (JobState.SUCCEEDED, b"over tls, done")

    # No credentials: refused before anything is read.
    with jobctl.Client(secure_server.url, tls=tls) as anonymous:
        with pytest.raises(jobctl.Unauthenticated):
            anonymous.status(job.job_id)
    # A client certificate is an identity of its own (namespace tenant-b from
    # its CN): it cannot see tenant-a's job, but submits its own.
    mtls = jobctl.TLS(ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    with jobctl.Client(secure_server.url, tls=mtls) as other_tenant:
        with pytest.raises(jobctl.NotFound):
            other_tenant.status(job.job_id)
        mine = other_tenant.submit(q, "secure")
        assert other_tenant.status(mine.job_id).state == JobState.QUEUED
    # A plaintext client cannot talk to the TLS port.
    with jobctl.Client(f"http://{secure_server.server.address}", token=CLIENT_KEY, timeout=2) as plain:
        with pytest.raises(jobctl.JobctlError):
            plain.status(job.job_id)


def test_the_submitters_span_is_the_parent_of_the_workers(server: Server, queue: str) -> None:
    tracer = PROVIDER.get_tracer("test")
    inside: list[trace.SpanContext] = []
    worker = jobctl.Worker(server.url, queues=[queue], lease_wait=1, tracer_provider=PROVIDER)

    @worker.handler("traced")
    def traced(ctx: jobctl.JobContext) -> bytes:
        inside.append(trace.get_current_span().get_span_context())
        return ctx.trace_context.get("traceparent", "").encode()

    with jobctl.Client(server.url) as client:
        with tracer.start_as_current_span("checkout") as parent:
            job = client.submit(queue, "traced")
        submitter = parent.get_span_context()
        with running(worker):
            done = client.wait(job.job_id, timeout=WAIT)
    assert done.state == JobState.SUCCEEDED
    trace_id = format(submitter.trace_id, "032x")
    # The lease handed the worker the submitter's W3C traceparent...
    assert done.result.decode().split("-")[1:3] == [trace_id, format(submitter.span_id, "016x")]
    # ...and the handler ran inside the span `job traced`, its child.
    assert inside and inside[0].trace_id == submitter.trace_id
    spans: list[ReadableSpan] = [
        s for s in EXPORTER.get_finished_spans() if s.attributes and s.attributes.get("job_id") == job.job_id
    ]
    assert len(spans) == 1
    span = spans[0]
    assert span.name == "job traced"
    assert span.parent is not None and span.parent.span_id == submitter.span_id
    assert span.context is not None and span.context.span_id == inside[0].span_id
    assert span.kind == trace.SpanKind.CONSUMER
    assert span.attributes is not None
    assert (span.attributes["job_id"], span.attributes["queue"], span.attributes["attempt"]) == (job.job_id, queue, 1)
    # A traced job completes with a call of its own, so that the server's
    # span of it joins the trace.
    assert worker.stats.batched_completions == 0 and worker.stats.succeeded == 1
