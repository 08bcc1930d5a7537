"""The SDK's own types: plain dataclasses and enums, converted to and from
the generated protobuf messages here and nowhere else."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf import duration_pb2, timestamp_pb2

from jobctl.v1 import job_pb2, job_service_pb2

Duration = dt.timedelta | float
"""A duration: a `timedelta`, or seconds as a number."""


class JobState(enum.IntEnum):
    """A job's lifecycle state (`jobctl.v1.JobState`)."""

    UNSPECIFIED = job_pb2.JOB_STATE_UNSPECIFIED
    SCHEDULED = job_pb2.JOB_STATE_SCHEDULED
    QUEUED = job_pb2.JOB_STATE_QUEUED
    RUNNING = job_pb2.JOB_STATE_RUNNING
    SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
    FAILED = job_pb2.JOB_STATE_FAILED
    CANCELLED = job_pb2.JOB_STATE_CANCELLED

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def of(cls, value: int) -> JobState:
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED


class EventKind(enum.IntEnum):
    """What a `JobEvent` records (`jobctl.v1.EventKind`)."""

    UNSPECIFIED = job_pb2.EVENT_KIND_UNSPECIFIED
    STATE_CHANGED = job_pb2.EVENT_KIND_STATE_CHANGED
    PROGRESS = job_pb2.EVENT_KIND_PROGRESS
    CANCEL_REQUESTED = job_pb2.EVENT_KIND_CANCEL_REQUESTED

    @classmethod
    def of(cls, value: int) -> EventKind:
        try:
            return cls(value)
        except ValueError:
            return cls.UNSPECIFIED


@dataclass(frozen=True)
class Progress:
    """Progress reported by a worker."""

    percent: float = 0.0
    current: int = 0
    total: int = 0
    message: str = ""

    def to_pb(self) -> job_pb2.Progress:
        return job_pb2.Progress(
            percent=self.percent, current=self.current, total=self.total, message=self.message
        )

    @classmethod
    def from_pb(cls, p: job_pb2.Progress) -> Progress:
        return cls(percent=p.percent, current=p.current, total=p.total, message=p.message)


@dataclass(frozen=True)
class JobError:
    """Why an attempt failed."""

    message: str
    code: str = ""
    details: str = ""

    @classmethod
    def from_pb(cls, e: job_pb2.JobError) -> JobError:
        return cls(message=e.message, code=e.code, details=e.details)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between attempts; unset fields take the server's
    defaults."""

    initial_backoff: Duration | None = None
    max_backoff: Duration | None = None
    multiplier: float = 0.0
    jitter: float = 0.0

    def to_pb(self) -> job_pb2.RetryPolicy:
        policy = job_pb2.RetryPolicy(multiplier=self.multiplier, jitter=self.jitter)
        if self.initial_backoff is not None:
            policy.initial_backoff.CopyFrom(duration_to_pb(self.initial_backoff))
        if self.max_backoff is not None:
            policy.max_backoff.CopyFrom(duration_to_pb(self.max_backoff))
        return policy


@dataclass(frozen=True)
class JobSpec:
    """One job to submit: every option of `SubmitRequest`. Unset options
    take the server's defaults."""

    queue: str
    kind: str
    payload: bytes | str = b""
    priority: int = 0
    run_at: dt.datetime | None = None
    """When the job may first run (timezone-aware, or UTC when naive)."""
    delay: Duration | None = None
    """Run after this long instead; not together with `run_at`."""
    max_attempts: int = 0
    retry: RetryPolicy | None = None
    lease_ttl: Duration | None = None
    timeout: Duration | None = None
    idempotency_key: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    retention: Duration | None = None

    def to_pb(self) -> job_service_pb2.SubmitRequest:
        if self.run_at is not None and self.delay is not None:
            raise ValueError("give run_at or delay, not both")
        payload = self.payload.encode() if isinstance(self.payload, str) else bytes(self.payload)
        request = job_service_pb2.SubmitRequest(
            queue=self.queue,
            kind=self.kind,
            payload=payload,
            priority=self.priority,
            max_attempts=self.max_attempts,
            idempotency_key=self.idempotency_key,
            labels=dict(self.labels),
        )
        if self.run_at is not None:
            request.run_at.CopyFrom(time_to_pb(self.run_at))
        if self.delay is not None:
            request.delay.CopyFrom(duration_to_pb(self.delay))
        if self.retry is not None:
            request.retry.CopyFrom(self.retry.to_pb())
        if self.lease_ttl is not None:
            request.lease_ttl.CopyFrom(duration_to_pb(self.lease_ttl))
        if self.timeout is not None:
            request.timeout.CopyFrom(duration_to_pb(self.timeout))
        if self.retention is not None:
            request.retention.CopyFrom(duration_to_pb(self.retention))
        return request


@dataclass(frozen=True)
class Submitted:
    """The answer to a submit: the job's id, whether its idempotency key made
    it a duplicate, and its state."""

    job_id: str
    deduplicated: bool
    state: JobState
    request_id: str = ""
    """The `x-request-id` the server stored with the job (single submits)."""

    @classmethod
    def from_pb(cls, r: job_service_pb2.SubmitResponse, request_id: str = "") -> Submitted:
        return cls(r.job_id, r.deduplicated, JobState.of(r.state), request_id)


@dataclass(frozen=True)
class Job:
    """A job as `GetStatus` reports it."""

    id: str
    queue: str
    kind: str
    state: JobState
    payload: bytes
    priority: int
    attempt: int
    max_attempts: int
    progress: Progress
    result: bytes
    error: JobError | None
    cancel_requested: bool
    cancel_reason: str
    labels: Mapping[str, str]
    idempotency_key: str
    worker_id: str
    last_seq: int
    checkpoint: bytes | None
    created_at: dt.datetime | None
    run_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime | None
    lease_expires_at: dt.datetime | None
    expires_at: dt.datetime | None
    retry: RetryPolicy | None
    lease_ttl: dt.timedelta | None
    timeout: dt.timedelta | None
    retention: dt.timedelta | None

    @classmethod
    def from_pb(cls, j: job_pb2.Job) -> Job:
        return cls(
            id=j.id,
            queue=j.queue,
            kind=j.kind,
            state=JobState.of(j.state),
            payload=j.payload,
            priority=j.priority,
            attempt=j.attempt,
            max_attempts=j.max_attempts,
            progress=Progress.from_pb(j.progress),
            result=j.result,
            error=JobError.from_pb(j.error) if j.HasField("error") else None,
            cancel_requested=j.cancel_requested,
            cancel_reason=j.cancel_reason,
            labels=dict(j.labels),
            idempotency_key=j.idempotency_key,
            worker_id=j.worker_id,
            last_seq=j.last_seq,
            checkpoint=j.checkpoint if j.HasField("checkpoint") else None,
            created_at=time_from_pb(j, "created_at"),
            run_at=time_from_pb(j, "run_at"),
            started_at=time_from_pb(j, "started_at"),
            finished_at=time_from_pb(j, "finished_at"),
            updated_at=time_from_pb(j, "updated_at"),
            lease_expires_at=time_from_pb(j, "lease_expires_at"),
            expires_at=time_from_pb(j, "expires_at"),
            retry=RetryPolicy(
                initial_backoff=j.retry.initial_backoff.ToTimedelta(),
                max_backoff=j.retry.max_backoff.ToTimedelta(),
                multiplier=j.retry.multiplier,
                jitter=j.retry.jitter,
            )
            if j.HasField("retry")
            else None,
            lease_ttl=j.lease_ttl.ToTimedelta() if j.HasField("lease_ttl") else None,
            timeout=j.timeout.ToTimedelta() if j.HasField("timeout") else None,
            retention=j.retention.ToTimedelta() if j.HasField("retention") else None,
        )


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's ordered event history."""

    seq: int
    job_id: str
    kind: EventKind
    state: JobState
    progress: Progress
    time: dt.datetime | None
    attempt: int
    error: JobError | None
    result: bytes

    @property
    def is_terminal(self) -> bool:
        return self.kind == EventKind.STATE_CHANGED and self.state.is_terminal

    @classmethod
    def from_pb(cls, e: job_pb2.JobEvent) -> JobEvent:
        return cls(
            seq=e.seq,
            job_id=e.job_id,
            kind=EventKind.of(e.kind),
            state=JobState.of(e.state),
            progress=Progress.from_pb(e.progress),
            time=time_from_pb(e, "time"),
            attempt=e.attempt,
            error=JobError.from_pb(e.error) if e.HasField("error") else None,
            result=e.result,
        )


def seconds(d: Duration) -> float:
    return d.total_seconds() if isinstance(d, dt.timedelta) else float(d)


def duration_to_pb(d: Duration) -> duration_pb2.Duration:
    total = seconds(d)
    if total < 0:
        raise ValueError(f"a duration cannot be negative: {d!r}")
    whole = int(total)
    return duration_pb2.Duration(seconds=whole, nanos=int(round((total - whole) * 1e9)))


def time_to_pb(t: dt.datetime) -> timestamp_pb2.Timestamp:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(t.astimezone(dt.timezone.utc))
    return stamp


def time_from_pb(message: job_pb2.Job | job_pb2.JobEvent, name: str) -> dt.datetime | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=dt.timezone.utc)
