"""OpenTelemetry, when `opentelemetry-api` is installed (the `otel` extra):
the current span's W3C trace context goes out with every call, and a
worker's attempt runs in a span whose parent is the submitter's. Without it
every function here does nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: TraceContextTextMapPropagator | None = TraceContextTextMapPropagator()
except ImportError:  # pragma: no cover - exercised without the extra
    _PROPAGATOR = None

REQUEST_ID = "x-request-id"


def inject(metadata: list[tuple[str, str]]) -> None:
    """Adds the current span's `traceparent` (and `tracestate`) to a call's
    metadata, when there is a valid span to continue."""
    if _PROPAGATOR is None or not current_is_traced():
        return
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    metadata.extend(carrier.items())


def current_is_traced() -> bool:
    """Whether the current span is a valid OpenTelemetry span."""
    if _PROPAGATOR is None:
        return False
    return bool(_trace.get_current_span().get_span_context().is_valid)


@contextlib.contextmanager
def job_span(
    *,
    kind: str,
    job_id: str,
    queue: str,
    attempt: int,
    worker_id: str,
    trace_context: Mapping[str, str],
    tracer_provider: Any = None,
) -> Iterator[None]:
    """Runs the block in the span `job <kind>`, a child of the submitter's
    span carried in the lease's trace context."""
    if _PROPAGATOR is None:
        yield
        return
    carrier: MutableMapping[str, str] = dict(trace_context)
    parent = _PROPAGATOR.extract(carrier)
    attributes: dict[str, Any] = {
        "job_id": job_id,
        "kind": kind,
        "queue": queue,
        "attempt": attempt,
        "worker_id": worker_id,
    }
    if REQUEST_ID in trace_context:
        attributes["request_id"] = trace_context[REQUEST_ID]
    tracer = _trace.get_tracer("jobctl", tracer_provider=tracer_provider)
    with tracer.start_as_current_span(
        f"job {kind}", context=parent, kind=_trace.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        try:
            yield
        except BaseException as error:
            span.record_exception(error)
            span.set_status(_trace.Status(_trace.StatusCode.ERROR, str(error)))
            raise

