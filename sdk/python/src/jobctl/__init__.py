"""jobctl: a Python SDK for the jobctl job-control service.

- `Client` / `AsyncClient`: submit jobs (one or a batch), read their status,
  cancel them, and watch their events (gap-free across dropped streams).
- `Worker`: run handlers for the jobs of some queues, registered per kind
  with `@worker.handler("kind")`.

The generated protobuf and gRPC modules are `jobctl.v1.*` (made from the
`.proto` contract when the package is built).
"""

from jobctl._connect import TLS
from jobctl._types import (
    EventKind,
    Job,
    JobError,
    JobEvent,
    JobSpec,
    JobState,
    Progress,
    RetryPolicy,
    Submitted,
)
from jobctl.client import AsyncClient, CancelResult, Client, QueueStats
from jobctl.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    JobctlError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from jobctl.worker import Cancelled, Fatal, JobContext, LeaseLost, Retry, Worker, WorkerError, WorkerStats

__version__ = "0.1.0"

__all__ = [
    "TLS",
    "AlreadyExists",
    "AsyncClient",
    "CancelResult",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "EventKind",
    "FailedPrecondition",
    "Fatal",
    "InvalidArgument",
    "Job",
    "JobContext",
    "JobError",
    "JobEvent",
    "JobSpec",
    "JobState",
    "JobctlError",
    "LeaseLost",
    "NotFound",
    "PermissionDenied",
    "Progress",
    "QueueStats",
    "ResourceExhausted",
    "Retry",
    "RetryPolicy",
    "Submitted",
    "Unauthenticated",
    "Unavailable",
    "Worker",
    "WorkerError",
    "WorkerStats",
]
