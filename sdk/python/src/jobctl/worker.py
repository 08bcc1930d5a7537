"""The worker: leases jobs, runs their handlers, heartbeats, and ends each
attempt with Complete, Fail or Release. It mirrors the Rust SDK
(`worker-sdk/`): leases in batches (long poll), runs handlers under a
concurrency limit, heartbeats each job at a third of its lease TTL,
throttles progress (the last update always goes out before the job ends),
delivers cancellation to the handler, batches completions
(`CompleteBatch`, which also leases the next jobs), and on shutdown stops
leasing, waits a grace, then releases what is unfinished.

The worker runs on one asyncio event loop (`grpc.aio`). Plain functions
run in a pool of daemon threads (one per slot), coroutine functions on the
loop itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as dt
import inspect
import json
import logging
import os
import queue
import random
import signal
import socket
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import duration_pb2

from jobctl import _connect, _trace
from jobctl._connect import TLS, Connection
from jobctl._types import Duration, Progress, seconds
from jobctl.errors import JobctlError, from_rpc
from jobctl.v1 import job_pb2, worker_service_pb2, worker_service_pb2_grpc

log = logging.getLogger("jobctl.worker")

DEFAULT_CONCURRENCY = 4
DEFAULT_LEASE_WAIT = 20.0
DEFAULT_PROGRESS_INTERVAL = 0.1
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_RPC_TIMEOUT = 10.0
DEFAULT_HEARTBEAT_EVERY = 10.0
"""Heartbeat period when a lease does not say its TTL."""
MIN_HEARTBEAT_EVERY = 0.05
RELEASE_BUDGET = 5.0
"""How long handing a job back at shutdown may keep trying."""
MAX_COMPLETE_BATCH = 1000

CODE_CANCELLED = "cancelled"
CODE_UNKNOWN_KIND = "unknown_kind"
CODE_TIMEOUT = "timeout"
CODE_RESULT_REJECTED = "result_rejected"

_LEASE_LOST = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})
_REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# A Lease refused with one of these means a misconfigured worker: stop.
_LEASE_FATAL = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


# --- how a handler fails ----------------------------------------------------


class Retry(Exception):
    """Raise to fail this attempt and retry the job (after its backoff, or
    after `after`) while attempts remain."""

    def __init__(
        self,
        message: str = "retry",
        *,
        after: Duration | None = None,
        code: str = "",
        details: str = "",
        checkpoint: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.after, self.code = message, after, code
        self.details, self.checkpoint = details, checkpoint


class Fatal(Exception):
    """Raise to fail the job for good: it becomes a dead letter at once."""

    def __init__(self, message: str = "fatal", *, code: str = "", details: str = "") -> None:
        super().__init__(message)
        self.message, self.code, self.details = message, code, details


class Cancelled(Exception):
    """Raised by `JobContext.raise_if_cancelled` (or raise it yourself) to
    stop because the job was cancelled; the job ends CANCELLED."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)
        self.message = message


class WorkerError(Exception):
    """The server refused to lease jobs to this worker for good (bad
    credentials, a role that may not lease, a bad queue name)."""

    def __init__(self, cause: JobctlError) -> None:
        super().__init__(f"the server refuses to lease jobs to this worker: {cause}")
        self.cause = cause


# --- what a handler sees ----------------------------------------------------


class LeaseLost(Exception):
    """The worker no longer holds the job's lease (it expired, or the job was
    handed to another worker): nothing more can be reported about it."""


class JobContext:
    """What a handler gets: the job, its cancellation, and ways to report
    progress and checkpoints. Safe to use from the handler's thread."""

    def __init__(
        self,
        leased: worker_service_pb2.LeasedJob,
        worker_id: str,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        checkpoint: Callable[[bytes], Coroutine[Any, Any, None]],
    ) -> None:
        self.id: str = leased.job_id
        self.kind: str = leased.kind
        self.queue: str = leased.queue
        self.payload: bytes = leased.payload
        self.attempt: int = leased.attempt
        self.max_attempts: int = leased.max_attempts
        self.labels: Mapping[str, str] = dict(leased.labels)
        self.trace_context: Mapping[str, str] = dict(leased.trace_context)
        self.last_checkpoint: bytes | None = (
            leased.checkpoint if leased.HasField("checkpoint") else None
        )
        """The last checkpoint an earlier attempt reported: resume from it."""
        self.deadline: dt.datetime | None = (
            leased.deadline.ToDatetime(tzinfo=dt.timezone.utc) if leased.HasField("deadline") else None
        )
        self.worker_id = worker_id
        self.cancelled = threading.Event()
        """Set when the handler should stop: cancel requested, lease lost,
        deadline passed or the worker's shutdown grace is over."""
        self.cancel_reason: str | None = None
        """Why `cancelled` is set: `requested`, `lease_lost`, `deadline` or
        `shutdown`."""
        self.cancel_message = ""
        self._loop = loop
        self._wake = wake
        self._checkpoint = checkpoint
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._async_cancelled = asyncio.Event()
        self._on_fire: Callable[[], None] | None = None

    @property
    def is_last_attempt(self) -> bool:
        return self.max_attempts > 0 and self.attempt >= self.max_attempts

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def raise_if_cancelled(self) -> None:
        """Raises `Cancelled` once the job should stop."""
        if self.cancelled.is_set():
            raise Cancelled(f"cancelled: {self.cancel_message}" if self.cancel_message else "cancelled")

    async def wait_cancelled(self) -> None:
        """Returns once the job should stop (for coroutine handlers)."""
        await self._async_cancelled.wait()

    def progress(
        self,
        percent: float | None = None,
        message: str = "",
        *,
        current: int = 0,
        total: int = 0,
    ) -> None:
        """Reports progress; it reaches the server (and watchers) with the
        next heartbeat, at most one update per progress interval, always
        the latest. `percent` defaults to `current / total`."""
        if percent is None:
            percent = 100.0 * current / total if total else 0.0
        update = Progress(percent=float(percent), current=current, total=total, message=message)
        with self._lock:
            self._progress = update
        self._loop.call_soon_threadsafe(self._wake)

    def checkpoint(self, data: bytes) -> None:
        """Stores a checkpoint with the server now (blocking until it is
        kept): a retried attempt gets it as `last_checkpoint`. Raises
        `LeaseLost` when the lease is gone, `JobctlError` when refused. Call
        `acheckpoint` from a coroutine handler instead."""
        if _on_loop(self._loop):
            raise RuntimeError("checkpoint() blocks: await ctx.acheckpoint() in a coroutine handler")
        asyncio.run_coroutine_threadsafe(self._checkpoint(bytes(data)), self._loop).result()

    async def acheckpoint(self, data: bytes) -> None:
        """`checkpoint` for coroutine handlers."""
        await self._checkpoint(bytes(data))

    def _take_progress(self) -> Progress | None:
        with self._lock:
            update, self._progress = self._progress, None
        return update

    def _fire(self, reason: str, message: str = "") -> None:
        if self.cancelled.is_set():
            if reason == "requested" and self.cancel_reason != "requested":
                self.cancel_reason, self.cancel_message = reason, message
            return
        self.cancel_reason, self.cancel_message = reason, message
        self.cancelled.set()
        self._async_cancelled.set()
        if self._on_fire is not None:
            self._on_fire()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


# --- handlers ---------------------------------------------------------------

Handler = Callable[[JobContext], Any]
H = TypeVar("H", bound=Handler)


@dataclass
class WorkerStats:
    """What a worker has done since it was made (read it any time)."""

    leased: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    complete_batches: int = 0
    """`CompleteBatch` calls made."""
    batched_completions: int = 0
    """Jobs completed through `CompleteBatch` (the rest had a `Complete` of their own)."""


@dataclass(frozen=True)
class _Registered:
    fn: Handler
    is_async: bool
    fatal_on: tuple[type[BaseException], ...]
    retry_on: tuple[type[BaseException], ...]


@dataclass
class _Failure:
    message: str
    code: str
    details: str
    retryable: bool
    retry_after: float | None = None
    checkpoint: bytes | None = None


def _result_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


def _failure(error: BaseException, handler: _Registered | None) -> _Failure:
    """How an exception ends the attempt."""
    if isinstance(error, Retry):
        after = seconds(error.after) if error.after is not None else None
        return _Failure(error.message, error.code, error.details, True, after, error.checkpoint)
    if isinstance(error, Fatal):
        return _Failure(error.message, error.code, error.details, False)
    if isinstance(error, (Cancelled, LeaseLost)):
        return _Failure(str(error) or "cancelled", CODE_CANCELLED, "", False)
    details = "".join(traceback.format_exception(error))
    message = str(error) or type(error).__name__
    code = type(error).__name__
    if handler is not None and isinstance(error, handler.fatal_on):
        return _Failure(message, code, details, False)
    retry = handler is None or isinstance(error, handler.retry_on)
    return _Failure(message, code, details, retry)


def _decide(failure: _Failure, ctx: JobContext, error: BaseException) -> _Failure:
    """A cancelled job ends cancelled whatever its handler raised; a handler
    that stopped because the deadline passed is retried."""
    if ctx.cancel_reason == "requested":
        if isinstance(error, Cancelled) and ctx.cancel_message and failure.message == "cancelled":
            failure.message = f"cancelled: {ctx.cancel_message}"
        failure.code, failure.retryable, failure.retry_after = CODE_CANCELLED, False, None
    elif ctx.cancel_reason == "deadline" and isinstance(error, Cancelled):
        failure = _Failure("job deadline exceeded", CODE_TIMEOUT, "", True)
    return failure


class _Threads:
    """Daemon threads that run plain handlers: one per slot, started on
    demand, so a handler that never returns cannot hold up the process's
    exit the way a ThreadPoolExecutor's threads would."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._started = 0
        self._idle = 0
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue[
            tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None
        ] = queue.SimpleQueue()

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
            elif self._started < self._size:
                self._started += 1
                threading.Thread(target=self._run, name=f"jobctl-handler-{self._started}", daemon=True).start()
        self._work.put((fn, future))
        return future

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            fn, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as error:
                    future.set_exception(error)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        for _ in range(self._started):
            self._work.put(None)


class _Backoff:
    """Exponential backoff with equal jitter: `base` doubling up to `cap`."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        nominal = min(self.cap, self.base * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return nominal * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.attempt = 0


def heartbeat_every(lease_ttl: duration_pb2.Duration | None) -> float:
    """A third of the lease TTL (at least 50ms), or 10s when unknown."""
    if lease_ttl is None:
        return DEFAULT_HEARTBEAT_EVERY
    ttl = lease_ttl.seconds + lease_ttl.nanos / 1e9
    if ttl <= 0:
        return DEFAULT_HEARTBEAT_EVERY
    return max(MIN_HEARTBEAT_EVERY, ttl / 3)


# --- the worker -------------------------------------------------------------


class Worker:
    """Runs handlers for the jobs of some queues.

    ```python
    worker = Worker("http://127.0.0.1:50051", queues=["default"], concurrency=8)

    @worker.handler("thumbnails", fatal_on=(ValueError,))
    def thumbnails(ctx: JobContext) -> bytes:
        start = int(ctx.last_checkpoint or b"0")      # resume a retried job
        for i in range(start, 100):
            ctx.raise_if_cancelled()
            render(i)
            ctx.progress(i + 1, f"rendered {i + 1}")
            ctx.checkpoint(str(i + 1).encode())
        return b"done"

    worker.run()   # until SIGTERM/SIGINT, then drains
    ```

    Each attempt runs in the OpenTelemetry span `job <kind>` (with
    `opentelemetry-api` installed), a child of the submitter's span; its
    tracer comes from `tracer_provider`, or the global provider.

    A handler returns the result (bytes, str, None, or anything JSON can
    encode) or raises: `Retry` (optionally `after=`), `Fatal`, `Cancelled`,
    or any other exception, which is retried unless its type is in the
    handler's `fatal_on` (or not in its `retry_on`).
    """

    def __init__(
        self,
        server: str = _connect.DEFAULT_SERVER,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_batch: int | None = None,
        lease_wait: float = DEFAULT_LEASE_WAIT,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        batch_completions: bool = True,
        worker_id: str | None = None,
        token: str | None = None,
        tls: TLS | bool | None = None,
        metadata: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        fatal_on: Sequence[type[BaseException]] = (),
        retry_on: Sequence[type[BaseException]] = (Exception,),
        tracer_provider: Any = None,
    ) -> None:
        self._conn = Connection.make(server, token=token, tls=tls, metadata=metadata)
        unique: list[str] = []
        for q in queues:
            if not q.strip():
                raise ValueError(f"queues: {q!r} is not a queue name")
            if q not in unique:
                unique.append(q)
        if not unique:
            raise ValueError("queues: at least one queue is needed")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if lease_batch is not None and lease_batch < 1:
            raise ValueError("lease_batch must be at least 1")
        if rpc_timeout <= 0 or lease_wait < 0 or shutdown_grace < 0 or progress_interval < 0:
            raise ValueError("rpc_timeout must be positive; lease_wait, shutdown_grace and progress_interval not negative")
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(32):08x}"
        if not self.worker_id.strip() or not self.worker_id.isprintable():
            raise ValueError(f"worker_id {self.worker_id!r} must be non-empty printable text")
        self.queues = unique
        self.concurrency = concurrency
        self.lease_batch = min(lease_batch or concurrency, concurrency)
        self.lease_wait = lease_wait
        self.progress_interval = progress_interval
        self.shutdown_grace = shutdown_grace
        self.rpc_timeout = rpc_timeout
        self.batch_completions = batch_completions
        self._fatal_on = tuple(fatal_on)
        self._retry_on = tuple(retry_on)
        self._tracer_provider = tracer_provider
        self._handlers: dict[str, _Registered] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self.stats = WorkerStats()

    @classmethod
    def from_env(cls, **options: Any) -> Worker:
        """A worker connected as the `JOBCTL_*` variables say (plus
        `JOBCTL_WORKER_ID`); `options` as for the constructor."""
        settings = _connect.from_env()
        worker_id = (os.environ.get("JOBCTL_WORKER_ID") or "").strip() or None
        return cls(**{**settings, "worker_id": worker_id, **options})

    def handler(
        self,
        kind: str,
        *,
        fatal_on: Sequence[type[BaseException]] | None = None,
        retry_on: Sequence[type[BaseException]] | None = None,
    ) -> Callable[[H], H]:
        """Registers the decorated function as the handler of `kind`: a
        plain function (run in a thread) or a coroutine function."""

        def register(fn: H) -> H:
            self.register(kind, fn, fatal_on=fatal_on, retry_on=retry_on)
            return fn

        return register

    def register(
        self,
        kind: str,
        fn: Handler,
        *,
        fatal_on: Sequence[type[BaseException]] | None = None,
        retry_on: Sequence[type[BaseException]] | None = None,
    ) -> None:
        """`handler` without the decorator."""
        if not kind:
            raise ValueError("a handler needs a kind")
        if kind in self._handlers:
            raise ValueError(f"kind {kind!r} has more than one handler")
        self._handlers[kind] = _Registered(
            fn,
            inspect.iscoroutinefunction(fn),
            tuple(self._fatal_on if fatal_on is None else fatal_on),
            tuple(self._retry_on if retry_on is None else retry_on),
        )

    @property
    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    def stop(self) -> None:
        """Begins a graceful shutdown (from any thread): stop leasing, let
        running jobs finish within the shutdown grace, release the rest."""
        self._stop_requested = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Runs until SIGTERM or SIGINT (or `stop()`), then drains."""
        asyncio.run(self.run_async(install_signal_handlers=install_signal_handlers))

    async def run_async(self, *, install_signal_handlers: bool = False) -> None:
        """Runs on the current event loop until `stop()` (or, with
        `install_signal_handlers`, SIGTERM/SIGINT), then drains."""
        if not self._handlers:
            raise ValueError("no handlers registered: a worker without handlers would fail every job it leases")
        loop = asyncio.get_running_loop()
        self._loop, self._stop = loop, asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        installed: list[signal.Signals] = []
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
        run = _Run(self, loop, self._stop)
        try:
            await run.main()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self._loop = None
            self._stop_requested = False  # the worker can run again


class _Run:
    """One run of a worker: the lease loop, the jobs, the completer."""

    def __init__(self, worker: Worker, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        self.w = worker
        self.loop = loop
        self.stop = stop
        self.abandon = asyncio.Event()
        self.abandon_waiters: set[asyncio.Future[None]] = set()
        self.channel = worker._conn.aio_channel()
        self.stub = worker_service_pb2_grpc.WorkerServiceStub(self.channel)
        self.slots = asyncio.Semaphore(worker.concurrency)
        self.jobs: set[asyncio.Task[None]] = set()
        self.threads = _Threads(worker.concurrency)
        self.completions: asyncio.Queue[_Completion] = asyncio.Queue()
        self.batching = worker.batch_completions

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.w._conn.call_metadata()

    async def main(self) -> None:
        completer = asyncio.create_task(self.completer())
        log.info("worker started", extra={"worker_id": self.w.worker_id, "queues": self.w.queues})
        try:
            await self.lease_loop()
        finally:
            await self.drain()
            completer.cancel()
            await asyncio.gather(completer, return_exceptions=True)
            self.threads.shutdown()
            await self.channel.close()
            log.info("worker stopped")

    # -- leasing --------------------------------------------------------------

    async def until_stopped(self, aw: Awaitable[Any]) -> tuple[bool, Any]:
        """Awaits `aw` unless the worker stops first: (stopped, result)."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task.done():
            return False, task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:  # an answer that raced the stop: ignored
            pass
        return True, None

    async def lease_loop(self) -> None:
        failures, idle = _Backoff(0.1, 5.0), _Backoff(0.05, 2.0)
        wait = duration_pb2.Duration()
        wait.FromNanoseconds(int(self.w.lease_wait * 1e9))
        while not self.stop.is_set():
            stopped, _ = await self.until_stopped(self.slots.acquire())
            if stopped:
                return
            held = 1
            while held < self.w.lease_batch and not self.slots.locked():
                await self.slots.acquire()
                held += 1
            request = worker_service_pb2.LeaseRequest(
                worker_id=self.w.worker_id, queues=self.w.queues, max_jobs=held, wait=wait
            )
            asked = time.monotonic()
            call = self.stub.Lease(
                request, metadata=self.metadata(), timeout=self.w.lease_wait + self.w.rpc_timeout
            )
            try:
                stopped, answer = await self.until_stopped(call)
            except grpc.aio.AioRpcError as failure:
                self.free(held)
                error = from_rpc(failure)
                if error.code in _LEASE_FATAL:
                    log.error("the server refuses to lease jobs to this worker, stopping: %s", error)
                    raise WorkerError(error) from None
                pause = failures.next()
                log.warning("lease failed, retrying in %.2fs: %s", pause, error)
                await self.until_stopped(asyncio.sleep(pause))
                continue
            if stopped:
                # Jobs leased by a call dropped here run again once their
                # leases expire.
                self.free(held)
                return
            failures.reset()
            jobs = list(answer.jobs)
            if not jobs:
                self.free(held)
                if time.monotonic() - asked < self.w.lease_wait / 2:
                    # Back early and empty: pause a little so as never to spin.
                    await self.until_stopped(asyncio.sleep(idle.next()))
                else:
                    idle.reset()
                continue
            idle.reset()
            self.w.stats.leased += len(jobs)
            self.start(jobs, held)

    def free(self, slots: int) -> None:
        for _ in range(slots):
            self.slots.release()

    def start(self, jobs: Sequence[worker_service_pb2.LeasedJob], held: int) -> None:
        """Starts one task per job, each in one of the `held` slots; frees
        the slots left over and hands back jobs beyond them."""
        for job in jobs:
            if held > 0:
                held -= 1
                task = asyncio.ensure_future(_Job(self, job).run())
                self.jobs.add(task)
                task.add_done_callback(self.jobs.discard)
            else:
                log.warning("server leased more jobs than asked for, handing %s back", job.job_id)
                task = asyncio.ensure_future(self.release(job.job_id, job.lease_token))
                self.jobs.add(task)
                task.add_done_callback(self.jobs.discard)
        self.free(held)

    # -- shutdown -------------------------------------------------------------

    async def drain(self) -> None:
        if self.jobs:
            log.info("stopped leasing, waiting up to %.1fs for %d running jobs", self.w.shutdown_grace, len(self.jobs))
            await asyncio.wait(set(self.jobs), timeout=self.w.shutdown_grace)
        if not self.jobs:
            return
        log.warning("shutdown grace expired, handing back %d unfinished jobs", len(self.jobs))
        self.abandon.set()
        for waiter in list(self.abandon_waiters):
            if not waiter.done():
                waiter.set_result(None)
        await asyncio.wait(set(self.jobs), timeout=RELEASE_BUDGET + 1)
        for task in list(self.jobs):
            task.cancel()
        if self.jobs:
            await asyncio.wait(set(self.jobs))

    # -- calls about leased jobs ----------------------------------------------

    async def call(self, method: Callable[..., Any], request: Any) -> Any:
        """One call about a job, with the worker's metadata and deadline."""
        try:
            return await method(request, metadata=self.metadata(), timeout=self.w.rpc_timeout)
        except grpc.aio.AioRpcError as failure:
            raise from_rpc(failure) from None

    async def retry(self, method: Callable[..., Any], request: Any, *, until: float | None = None) -> Any:
        """`call`, retrying transient failures until the server answers, the
        shutdown grace is over (without `until`), or `until` (monotonic)
        passes; raises the last error then, or a refusal at once."""
        backoff = _Backoff()
        while True:
            try:
                return await self.call(method, request)
            except JobctlError as error:
                if error.code in _LEASE_LOST or error.code in _REFUSED:
                    raise
                pause = backoff.next()
                if until is not None:
                    if time.monotonic() + pause > until:
                        raise
                    await asyncio.sleep(pause)
                    continue
                if self.abandon.is_set():
                    raise
                log.warning("%s failed, retrying in %.2fs: %s", type(request).__name__, pause, error)
                abandoned, _ = await _race(asyncio.sleep(pause), self.abandon)
                if abandoned:
                    raise

    async def release(self, job_id: str, lease_token: str) -> None:
        """Hands a lease back without using up an attempt."""
        request = worker_service_pb2.ReleaseRequest(job_id=job_id, lease_token=lease_token)
        try:
            answer = await self.retry(self.stub.Release, request, until=time.monotonic() + RELEASE_BUDGET)
            log.info("job %s handed back (%s)", job_id, job_pb2.JobState.Name(answer.state))
            self.w.stats.released += 1
        except JobctlError as error:
            log.warning("could not hand job %s back, it runs again once its lease expires: %s", job_id, error)

    # -- batched completions ----------------------------------------------------

    async def completer(self) -> None:
        while True:
            batch = [await self.completions.get()]
            while len(batch) < MAX_COMPLETE_BATCH and not self.completions.empty():
                batch.append(self.completions.get_nowait())
            await self.send_batch(batch)

    async def send_batch(self, batch: list[_Completion]) -> None:
        slots = sum(1 for c in batch if c.slot)
        leasing = not self.stop.is_set()
        request = worker_service_pb2.CompleteBatchRequest(
            completions=[c.request for c in batch],
            lease_max_jobs=slots if leasing else 0,
            worker_id=self.w.worker_id,
            queues=self.w.queues,
        )
        try:
            response = await self.call(self.stub.CompleteBatch, request)
        except JobctlError as error:
            if error.code == grpc.StatusCode.UNIMPLEMENTED:
                log.debug("the server has no CompleteBatch, completing one by one")
                self.batching = False
            for c in batch:
                if not c.answer.done():
                    c.answer.set_result(None)  # fall back to a Complete of its own
            return
        results = list(response.results)
        self.w.stats.complete_batches += 1
        self.w.stats.leased += len(response.jobs)
        for i, c in enumerate(batch):
            if c.answer.done():
                continue
            if i >= len(results):
                c.answer.set_result(None)
            else:
                c.slot = False  # the slot is the completer's now
                c.answer.set_result(results[i])
        # Slots of jobs whose answer came back now carry the jobs leased
        # along; the ones left over are freed.
        handed = sum(1 for c in batch if c.slot is False and c.had_slot)
        self.start(list(response.jobs), handed)


@dataclass
class _Completion:
    request: worker_service_pb2.CompleteRequest
    answer: asyncio.Future[worker_service_pb2.CompleteBatchResult | None]
    slot: bool
    had_slot: bool


async def _race(aw: Awaitable[Any], event: asyncio.Event) -> tuple[bool, Any]:
    """Awaits `aw` unless `event` is set first: (event_won, result)."""
    task = asyncio.ensure_future(aw)
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        return False, task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return True, None


class _Job:
    """Drives one leased job: its handler, heartbeats, progress,
    checkpoints, and the call that ends the attempt."""

    def __init__(self, run: _Run, leased: worker_service_pb2.LeasedJob) -> None:
        self.run_ = run
        self.leased = leased
        self.job_id = leased.job_id
        self.token = leased.lease_token
        self.every = heartbeat_every(leased.lease_ttl if leased.HasField("lease_ttl") else None)
        self.wake = asyncio.Event()
        self.beat_lock = asyncio.Lock()
        self.lease_lost = False
        self.holds_slot = True
        self.next_beat = time.monotonic() + self.every
        self.retry_not_before = 0.0
        self.last_progress_sent = float("-inf")
        self.pending: Progress | None = None
        self.last_sent: Progress | None = None
        self.backoff = _Backoff()
        self.stop_by: float | None = None
        self.ended = False
        self.beats: asyncio.Task[None] | None = None
        self.ctx = JobContext(leased, run.w.worker_id, run.loop, self.progressed, self.checkpoint)

    async def run(self) -> None:
        try:
            if not self.job_id or not self.token:
                log.warning("server leased a job without an id or a lease token, ignoring it")
                return
            with _trace.job_span(
                kind=self.ctx.kind,
                job_id=self.job_id,
                queue=self.ctx.queue,
                attempt=self.ctx.attempt,
                worker_id=self.ctx.worker_id,
                trace_context=self.ctx.trace_context,
                tracer_provider=self.run_.w._tracer_provider,
            ):
                await self.attempt()
        finally:
            self.ended = True
            if self.holds_slot:
                self.run_.slots.release()

    async def attempt(self) -> None:
        handler = self.run_.w._handlers.get(self.ctx.kind)
        if handler is None:
            known = ", ".join(self.run_.w.kinds)
            log.warning("no handler for kind %r, failing job %s", self.ctx.kind, self.job_id)
            await self.fail(
                _Failure(f"no handler registered for kind {self.ctx.kind!r}", CODE_UNKNOWN_KIND, f"this worker handles: {known}", False)
            )
            return
        if handler.is_async:
            future: asyncio.Future[Any] = asyncio.ensure_future(handler.fn(self.ctx))
        else:
            context = contextvars.copy_context()
            future = asyncio.wrap_future(self.run_.threads.submit(lambda: context.run(handler.fn, self.ctx)))
        # The heartbeat task starts when the first heartbeat is due or the
        # handler reports progress: a short job never needs one.
        first_beat = self.run_.loop.call_later(self.every, self.start_heartbeats)
        deadline = self.arm_deadline()
        try:
            ended = await self.wait_for_handler(future)
        finally:
            first_beat.cancel()
            if deadline is not None:
                deadline.cancel()
            if self.beats is not None:
                self.beats.cancel()
                await asyncio.gather(self.beats, return_exceptions=True)
        if ended == "abandoned":
            self.ctx._fire("shutdown")
            future.cancel()
            if not self.lease_lost:
                log.warning("shutdown grace expired, handing job %s back", self.job_id)
                await self.run_.release(self.job_id, self.token)
            return
        if self.lease_lost:
            log.info("job %s finished after its lease was lost, discarding its result", self.job_id)
            return
        if ended == "overdue":
            future.cancel()
            log.warning("handler of job %s did not stop after its cancellation", self.job_id)
            error: BaseException = Cancelled()
        else:
            error_or_none = future.exception()
            if error_or_none is None:
                await self.flush()
                if not self.lease_lost:
                    await self.complete(_result_bytes(future.result()))
                return
            error = error_or_none
        await self.flush()
        if not self.lease_lost:
            await self.fail(_decide(_failure(error, handler), self.ctx, error))

    def start_heartbeats(self) -> None:
        if self.beats is None and not self.ended:
            self.beats = asyncio.ensure_future(self.heartbeats())

    def progressed(self) -> None:
        """The handler reported progress (called on the loop)."""
        self.start_heartbeats()
        self.wake.set()

    async def wait_any(self, future: asyncio.Future[Any], *, on_cancel: bool, until: float | None) -> None:
        """Returns once `future` is done, the shutdown grace is over, (with
        `on_cancel`) the job's cancellation fires, or `until` (monotonic)
        passes. One future and a few callbacks: no task per wait."""
        loop = self.run_.loop
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        if future.done() or self.run_.abandon.is_set() or (on_cancel and self.ctx.is_cancelled()):
            return
        future.add_done_callback(wake)
        self.run_.abandon_waiters.add(waiter)
        if on_cancel:
            self.ctx._on_fire = wake
        timer = loop.call_later(max(0.0, until - time.monotonic()), wake) if until is not None else None
        try:
            await waiter
        finally:
            future.remove_done_callback(wake)
            self.run_.abandon_waiters.discard(waiter)
            self.ctx._on_fire = None
            if timer is not None:
                timer.cancel()

    async def wait_for_handler(self, future: asyncio.Future[Any]) -> str:
        """Waits for the handler, the shutdown grace, or the stop grace after
        a cancellation: `done`, `abandoned` or `overdue`."""
        while True:
            if future.done():
                return "done"
            if self.run_.abandon.is_set():
                return "abandoned"
            if self.stop_by is None and self.ctx.is_cancelled():
                self.stop_by = time.monotonic() + self.run_.w.shutdown_grace
            if self.stop_by is not None and time.monotonic() >= self.stop_by:
                return "overdue"
            await self.wait_any(future, on_cancel=self.stop_by is None, until=self.stop_by)

    def arm_deadline(self) -> asyncio.TimerHandle | None:
        if self.ctx.deadline is None:
            return None
        left = (self.ctx.deadline - dt.datetime.now(dt.timezone.utc)).total_seconds()

        def passed() -> None:
            log.warning("job %s passed its deadline, cancelling the handler", self.job_id)
            self.ctx._fire("deadline")

        return self.run_.loop.call_later(max(0.0, left), passed)

    # -- heartbeats -------------------------------------------------------------

    def pull_progress(self) -> None:
        update = self.ctx._take_progress()
        if update is not None:
            self.pending = None if update == self.last_sent else update

    async def heartbeats(self) -> None:
        """Heartbeats every third of the lease TTL, and sends progress as
        the throttle lets it through, until cancelled."""
        while not self.lease_lost:
            self.pull_progress()
            due = self.next_beat
            if self.pending is not None:
                due = min(due, max(self.last_progress_sent + self.run_.w.progress_interval, self.retry_not_before))
            timeout = due - time.monotonic()
            if timeout > 0:
                # Sleep until due or woken by new progress, then look again.
                # (Not asyncio.wait_for: on 3.11 it can swallow the
                # cancellation that ends this loop.)
                self.wake.clear()
                timer = self.run_.loop.call_later(timeout, self.wake.set)
                try:
                    await self.wake.wait()
                finally:
                    timer.cancel()
                continue
            await self.beat()

    async def beat(self, checkpoint: bytes | None = None) -> None:
        """One heartbeat with the pending progress and an optional
        checkpoint; raises `LeaseLost` or a refusal only with a checkpoint."""
        async with self.beat_lock:
            progress, self.pending = self.pending, None
            request = worker_service_pb2.HeartbeatRequest(job_id=self.job_id, lease_token=self.token)
            if progress is not None:
                request.progress.CopyFrom(progress.to_pb())
            if checkpoint is not None:
                request.checkpoint = checkpoint
            try:
                answer = await self.run_.call(self.run_.stub.Heartbeat, request)
            except asyncio.CancelledError:
                if progress is not None and self.pending is None:
                    self.pending = progress  # flushed before the job ends
                raise
            except JobctlError as error:
                self.next_beat = time.monotonic() + min(self.backoff.next(), self.every)
                self.retry_not_before = self.next_beat
                if error.code in _LEASE_LOST:
                    self.lease_lost = True
                    log.warning("lease of job %s lost, cancelling the handler: %s", self.job_id, error)
                    self.ctx._fire("lease_lost")
                    if checkpoint is not None:
                        raise LeaseLost(f"lost the lease of job {self.job_id}") from None
                    return
                if progress is not None and self.pending is None and (checkpoint is not None or error.code not in _REFUSED):
                    self.pending = progress
                log.warning("heartbeat of job %s failed: %s", self.job_id, error)
                if checkpoint is not None:
                    raise
                return
            self.backoff.reset()
            now = time.monotonic()
            self.next_beat = now + self.every
            self.retry_not_before = 0.0
            if progress is not None:
                self.last_sent, self.last_progress_sent = progress, now
            if answer.cancel_requested and self.ctx.cancel_reason != "requested":
                log.info("cancellation of job %s requested, cancelling the handler", self.job_id)
                self.ctx._fire("requested", answer.cancel_reason)

    async def checkpoint(self, data: bytes) -> None:
        """Serves `JobContext.checkpoint`: a heartbeat carrying it, retried
        while the failures are transient."""
        while True:
            if self.lease_lost:
                raise LeaseLost(f"lost the lease of job {self.job_id}")
            if self.ended:
                raise LeaseLost(f"job {self.job_id} is no longer running on this worker")
            self.pull_progress()
            try:
                await self.beat(checkpoint=data)
                return
            except JobctlError as error:
                if error.code in _REFUSED or self.run_.abandon.is_set():
                    raise
            abandoned, _ = await _race(asyncio.sleep(max(0.0, self.next_beat - time.monotonic())), self.run_.abandon)
            if abandoned:
                raise LeaseLost(f"job {self.job_id} is being handed back")

    async def flush(self) -> None:
        """The last progress goes out before the job ends."""
        self.pull_progress()
        for _ in range(3):
            if self.pending is None or self.lease_lost or self.run_.abandon.is_set():
                return
            await self.beat()

    # -- ending the attempt -------------------------------------------------------

    async def complete(self, result: bytes) -> None:
        run = self.run_
        request = worker_service_pb2.CompleteRequest(job_id=self.job_id, lease_token=self.token, result=result)
        if run.batching and not _trace.current_is_traced():
            # A traced job completes with a call of its own, so that the
            # server's span of it joins the job's trace.
            answer: asyncio.Future[worker_service_pb2.CompleteBatchResult | None] = run.loop.create_future()
            completion = _Completion(request, answer, slot=True, had_slot=True)
            self.holds_slot = False
            run.completions.put_nowait(completion)
            await self.wait_any(answer, on_cancel=False, until=None)
            if completion.slot:
                self.holds_slot = True  # not sent, or fell back: the slot is still ours
            if not answer.done():  # the shutdown grace is over
                answer.cancel()
                await run.release(self.job_id, self.token)
                return
            result_pb = answer.result()
            if result_pb is not None:
                code = _code(result_pb.code)
                if code == grpc.StatusCode.OK:
                    log.debug("job %s completed", self.job_id)
                    run.w.stats.succeeded += 1
                    run.w.stats.batched_completions += 1
                    return
                if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT):
                    await self.fail(_Failure(f"the server refused the result: {result_pb.message}", CODE_RESULT_REJECTED, "", False))
                    return
                if code in _LEASE_LOST or code in _REFUSED:
                    log.warning("completion of job %s refused: %s", self.job_id, result_pb.message)
                    return
                # Transient: complete on its own below.
        try:
            await run.retry(run.stub.Complete, request)
            log.debug("job %s completed", self.job_id)
            run.w.stats.succeeded += 1
        except JobctlError as error:
            if error.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT):
                await self.fail(_Failure(f"the server refused the result: {error.message}", CODE_RESULT_REJECTED, "", False))
            elif error.code in _LEASE_LOST or error.code in _REFUSED:
                log.warning("completion of job %s refused, the result is lost: %s", self.job_id, error)
            else:
                log.warning("could not complete job %s before the shutdown grace expired", self.job_id)
                await run.release(self.job_id, self.token)

    async def fail(self, failure: _Failure) -> None:
        run = self.run_
        request = worker_service_pb2.FailRequest(
            job_id=self.job_id,
            lease_token=self.token,
            error=job_pb2.JobError(message=failure.message, code=failure.code, details=failure.details),
            retryable=failure.retryable,
        )
        if failure.retryable and failure.retry_after is not None:
            request.retry_after.FromNanoseconds(int(failure.retry_after * 1e9))
        if failure.checkpoint is not None:
            request.checkpoint = failure.checkpoint
        try:
            answer = await run.retry(run.stub.Fail, request)
            run.w.stats.failed += 1
            log.info(
                "job %s attempt failed (%s): %s", self.job_id, job_pb2.JobState.Name(answer.state), failure.message
            )
        except JobctlError as error:
            if error.code in _LEASE_LOST or error.code in _REFUSED:
                log.warning("fail of job %s refused: %s", self.job_id, error)
            else:
                log.warning("could not fail job %s before the shutdown grace expired", self.job_id)
                await run.release(self.job_id, self.token)


def _code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


__all__ = ["Cancelled", "Fatal", "Handler", "JobContext", "LeaseLost", "Retry", "Worker", "WorkerError", "WorkerStats"]
