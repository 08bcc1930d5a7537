"""The client of `JobService` (and the queue counts of `AdminService`),
blocking (`Client`) and asyncio (`AsyncClient`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from jobctl import _connect
from jobctl._connect import TLS, Connection
from jobctl._types import Duration, Job, JobEvent, JobSpec, JobState, RetryPolicy, Submitted
from jobctl.errors import JobctlError, from_rpc
from jobctl.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
)

DEFAULT_TIMEOUT = 10.0
"""Seconds a unary call may take."""

# Why a watch stream may end before the job's terminal event, all worth a
# reconnect from the last sequence number seen: the server going away or
# shedding load (UNAVAILABLE), a reader cut off for falling behind
# (RESOURCE_EXHAUSTED), a connection that broke mid-stream.
_RESUMABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)


@dataclass(frozen=True)
class CancelResult:
    """The answer to a cancel: the job's state after the call (CANCELLED,
    or RUNNING with `cancel_requested` while its worker winds down)."""

    state: JobState
    cancel_requested: bool


@dataclass(frozen=True)
class QueueStats:
    """A queue's jobs by state (`AdminService.GetQueueStats`, operator role)."""

    queue: str
    scheduled: int
    queued: int
    running: int
    failed: int
    finished: int


class _Resume:
    """The bookkeeping of a watch that reconnects: the last sequence number
    delivered, and the backoff between attempts that delivered nothing."""

    def __init__(self, after_seq: int, give_up_after: float | None) -> None:
        self.last_seq = after_seq
        self.give_up_after = give_up_after
        self.failing_since: float | None = None
        self.attempt = 0

    def accept(self, event: JobEvent) -> bool:
        """Whether the event is new (a replay after a reconnect may repeat
        events already delivered; they are skipped)."""
        if event.seq <= self.last_seq:
            return False
        self.last_seq = event.seq
        self.failing_since = None
        self.attempt = 0
        return True

    def request(self, job_id: str) -> job_service_pb2.WatchProgressRequest:
        return job_service_pb2.WatchProgressRequest(job_id=job_id, after_seq=self.last_seq)

    def pause(self, error: JobctlError) -> float:
        """Seconds to wait before reconnecting, or raises `error` when it is
        not worth a retry or the retries have gone on for too long."""
        if error.code not in _RESUMABLE:
            raise error
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        elif self.give_up_after is not None and now - self.failing_since > self.give_up_after:
            raise error
        delay = min(5.0, 0.05 * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return delay * (0.5 + random.random() / 2)


def _ended_early(job_id: str) -> JobctlError:
    return JobctlError(
        grpc.StatusCode.UNAVAILABLE, f"the watch of {job_id} ended before the job did"
    )


def _batch(jobs: Iterable[JobSpec]) -> job_service_pb2.SubmitBatchRequest:
    return job_service_pb2.SubmitBatchRequest(jobs=[j.to_pb() for j in jobs])


def _request_id(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str):
            return value
    return ""


def _stats(r: admin_service_pb2.GetQueueStatsResponse) -> QueueStats:
    return QueueStats(r.queue, r.scheduled, r.queued, r.running, r.failed, r.finished)


class Client:
    """A blocking client of a jobctl server. Thread-safe; one per process is
    plenty (it holds one HTTP/2 connection).

    ```python
    with Client("http://127.0.0.1:50051") as client:
        job = client.submit("reports", "export", b'{"month": "2026-10"}')
        for event in client.watch(job.job_id):
            print(event.seq, event.state.name, event.progress.percent)
    ```

    `server` is `host:port`, `http://host:port` or `https://host:port`;
    `token` is sent as `authorization: Bearer <token>`; `tls` (or an
    `https://` server) makes the connection TLS, with a CA and a client
    certificate where `TLS` says. The current OpenTelemetry span's
    `traceparent` goes with every call (with `opentelemetry-api` installed).
    """

    def __init__(
        self,
        server: str = _connect.DEFAULT_SERVER,
        *,
        token: str | None = None,
        tls: TLS | bool | None = None,
        metadata: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._conn = Connection.make(server, token=token, tls=tls, metadata=metadata, options=options)
        self._timeout = timeout
        self._channel = self._conn.channel()
        self._jobs = job_service_pb2_grpc.JobServiceStub(self._channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)

    @classmethod
    def from_env(cls, **overrides: Any) -> Client:
        """A client configured by the `JOBCTL_*` variables (see the README)."""
        return cls(**{**_connect.from_env(), **overrides})

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def submit(
        self,
        queue: str,
        kind: str,
        payload: bytes | str = b"",
        *,
        priority: int = 0,
        run_at: dt.datetime | None = None,
        delay: Duration | None = None,
        max_attempts: int = 0,
        retry: RetryPolicy | None = None,
        lease_ttl: Duration | None = None,
        timeout: Duration | None = None,
        idempotency_key: str = "",
        labels: Mapping[str, str] | None = None,
        retention: Duration | None = None,
        request_id: str | None = None,
    ) -> Submitted:
        """Enqueues a job and returns its id at once. Unset options take
        the server's defaults; `request_id` is sent as `x-request-id`."""
        spec = JobSpec(
            queue, kind, payload, priority, run_at, delay, max_attempts, retry,
            lease_ttl, timeout, idempotency_key, dict(labels or {}), retention,
        )  # fmt: skip
        return self.submit_job(spec, request_id=request_id)

    def submit_job(self, spec: JobSpec, *, request_id: str | None = None) -> Submitted:
        """`submit` of a prepared `JobSpec`."""
        extra = [("x-request-id", request_id)] if request_id else []
        try:
            response, call = self._jobs.Submit.with_call(
                spec.to_pb(), metadata=self._conn.call_metadata(extra), timeout=self._timeout
            )
        except grpc.RpcError as error:
            raise from_rpc(error) from None
        return Submitted.from_pb(response, _request_id(call.initial_metadata()))

    def submit_batch(self, jobs: Iterable[JobSpec]) -> list[Submitted]:
        """Enqueues many jobs of one queue in one call, all or none."""
        try:
            response = self._jobs.SubmitBatch(
                _batch(jobs), metadata=self._conn.call_metadata(), timeout=self._timeout
            )
        except grpc.RpcError as error:
            raise from_rpc(error) from None
        return [Submitted.from_pb(r) for r in response.results]

    def status(self, job_id: str) -> Job:
        """The job's state, progress, attempts and result or error."""
        try:
            response = self._jobs.GetStatus(
                job_service_pb2.GetStatusRequest(job_id=job_id),
                metadata=self._conn.call_metadata(),
                timeout=self._timeout,
            )
        except grpc.RpcError as error:
            raise from_rpc(error) from None
        return Job.from_pb(response.job)

    def cancel(self, job_id: str, reason: str = "") -> CancelResult:
        """Cancels a queued job at once, or asks a running job's worker to stop."""
        try:
            response = self._jobs.Cancel(
                job_service_pb2.CancelRequest(job_id=job_id, reason=reason),
                metadata=self._conn.call_metadata(),
                timeout=self._timeout,
            )
        except grpc.RpcError as error:
            raise from_rpc(error) from None
        return CancelResult(JobState.of(response.state), response.cancel_requested)

    def queue_stats(self, queue: str) -> QueueStats:
        """A queue's jobs by state (needs the operator role)."""
        try:
            response = self._admin.GetQueueStats(
                admin_service_pb2.GetQueueStatsRequest(queue=queue),
                metadata=self._conn.call_metadata(),
                timeout=self._timeout,
            )
        except grpc.RpcError as error:
            raise from_rpc(error) from None
        return _stats(response)

    def watch(
        self, job_id: str, after_seq: int = 0, *, give_up_after: float | None = 60.0
    ) -> Iterator[JobEvent]:
        """Every event of the job after `after_seq`, in order, each exactly
        once, ending after the terminal one.

        A stream that breaks (the server restarting, a connection dropped, a
        reader cut off for falling behind) is reopened from the last
        sequence number delivered, so the events stay gap-free; the watch
        gives up, raising the last error, once reconnecting has failed for
        `give_up_after` seconds in a row (None: never)."""
        resume = _Resume(after_seq, give_up_after)
        while True:
            call = self._jobs.WatchProgress(
                resume.request(job_id), metadata=self._conn.call_metadata()
            )
            try:
                for response in call:
                    event = JobEvent.from_pb(response.event)
                    if resume.accept(event):
                        if event.is_terminal:
                            # The server ends the stream right after the
                            # terminal event: read it to its end rather
                            # than reset it (many resets on one connection
                            # trip HTTP/2's rapid-reset guard).
                            for _ in call:
                                pass
                            yield event
                            return
                        yield event
                error = _ended_early(job_id)
            except grpc.RpcError as failure:
                error = from_rpc(failure)
            finally:
                call.cancel()
            time.sleep(resume.pause(error))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Waits for the job to end (by watching it) and returns its final
        status; raises `TimeoutError` after `timeout` seconds."""
        done = threading.Event()
        failure: list[BaseException] = []

        def follow() -> None:
            try:
                for _ in self.watch(job_id):
                    pass
            except BaseException as error:  # handed to the caller
                failure.append(error)
            finally:
                done.set()

        if timeout is None:
            follow()
        else:
            threading.Thread(target=follow, daemon=True).start()
            if not done.wait(timeout):
                raise TimeoutError(f"job {job_id} did not end within {timeout}s")
        if failure:
            raise failure[0]
        return self.status(job_id)


class AsyncClient:
    """The asyncio twin of `Client` (same arguments, same methods, awaited;
    `watch` is an async iterator). Make it inside the event loop that uses it.
    """

    def __init__(
        self,
        server: str = _connect.DEFAULT_SERVER,
        *,
        token: str | None = None,
        tls: TLS | bool | None = None,
        metadata: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._conn = Connection.make(server, token=token, tls=tls, metadata=metadata, options=options)
        self._timeout = timeout
        self._channel = self._conn.aio_channel()
        self._jobs = job_service_pb2_grpc.JobServiceStub(self._channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncClient:
        """A client configured by the `JOBCTL_*` variables (see the README)."""
        return cls(**{**_connect.from_env(), **overrides})

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def submit(
        self,
        queue: str,
        kind: str,
        payload: bytes | str = b"",
        *,
        priority: int = 0,
        run_at: dt.datetime | None = None,
        delay: Duration | None = None,
        max_attempts: int = 0,
        retry: RetryPolicy | None = None,
        lease_ttl: Duration | None = None,
        timeout: Duration | None = None,
        idempotency_key: str = "",
        labels: Mapping[str, str] | None = None,
        retention: Duration | None = None,
        request_id: str | None = None,
    ) -> Submitted:
        """See `Client.submit`."""
        spec = JobSpec(
            queue, kind, payload, priority, run_at, delay, max_attempts, retry,
            lease_ttl, timeout, idempotency_key, dict(labels or {}), retention,
        )  # fmt: skip
        return await self.submit_job(spec, request_id=request_id)

    async def submit_job(self, spec: JobSpec, *, request_id: str | None = None) -> Submitted:
        """`submit` of a prepared `JobSpec`."""
        extra = [("x-request-id", request_id)] if request_id else []
        call = self._jobs.Submit(
            spec.to_pb(), metadata=self._conn.call_metadata(extra), timeout=self._timeout
        )
        try:
            response = await call
            initial = await call.initial_metadata()
        except grpc.aio.AioRpcError as error:
            raise from_rpc(error) from None
        return Submitted.from_pb(response, _request_id(list(initial or ())))

    async def submit_batch(self, jobs: Iterable[JobSpec]) -> list[Submitted]:
        """See `Client.submit_batch`."""
        try:
            response = await self._jobs.SubmitBatch(
                _batch(jobs), metadata=self._conn.call_metadata(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc(error) from None
        return [Submitted.from_pb(r) for r in response.results]

    async def status(self, job_id: str) -> Job:
        """See `Client.status`."""
        try:
            response = await self._jobs.GetStatus(
                job_service_pb2.GetStatusRequest(job_id=job_id),
                metadata=self._conn.call_metadata(),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc(error) from None
        return Job.from_pb(response.job)

    async def cancel(self, job_id: str, reason: str = "") -> CancelResult:
        """See `Client.cancel`."""
        try:
            response = await self._jobs.Cancel(
                job_service_pb2.CancelRequest(job_id=job_id, reason=reason),
                metadata=self._conn.call_metadata(),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc(error) from None
        return CancelResult(JobState.of(response.state), response.cancel_requested)

    async def queue_stats(self, queue: str) -> QueueStats:
        """See `Client.queue_stats`."""
        try:
            response = await self._admin.GetQueueStats(
                admin_service_pb2.GetQueueStatsRequest(queue=queue),
                metadata=self._conn.call_metadata(),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc(error) from None
        return _stats(response)

    async def watch(
        self, job_id: str, after_seq: int = 0, *, give_up_after: float | None = 60.0
    ) -> AsyncIterator[JobEvent]:
        """See `Client.watch`: gap-free across dropped streams."""
        resume = _Resume(after_seq, give_up_after)
        while True:
            call = self._jobs.WatchProgress(
                resume.request(job_id), metadata=self._conn.call_metadata()
            )
            try:
                async for response in call:
                    event = JobEvent.from_pb(response.event)
                    if resume.accept(event):
                        if event.is_terminal:
                            async for _ in call:  # read to its end (see Client.watch)
                                pass
                            yield event
                            return
                        yield event
                error = _ended_early(job_id)
            except grpc.aio.AioRpcError as failure:
                error = from_rpc(failure)
            finally:
                call.cancel()
            await asyncio.sleep(resume.pause(error))

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """See `Client.wait`."""

        async def follow() -> None:
            async for _ in self.watch(job_id):
                pass

        try:
            await asyncio.wait_for(follow(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"job {job_id} did not end within {timeout}s") from None
        return await self.status(job_id)


__all__ = ["AsyncClient", "CancelResult", "Client", "QueueStats"]
