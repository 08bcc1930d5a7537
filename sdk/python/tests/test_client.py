"""The clients (blocking and asyncio) against the real server, on both stores."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import threading
import uuid

import pytest
from conftest import WAIT, Proxy, Server, free_port, running, start_server

import jobctl
from jobctl import JobSpec, JobState, RetryPolicy


def test_submit_sends_every_option_and_status_reads_them_back(client: jobctl.Client, queue: str) -> None:
    run_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    submitted = client.submit(
        queue,
        "export",
        '{"month": "2026-10"}',
        priority=7,
        run_at=run_at,
        max_attempts=5,
        retry=RetryPolicy(initial_backoff=dt.timedelta(seconds=2), max_backoff=60, multiplier=3.0, jitter=0.1),
        lease_ttl=dt.timedelta(seconds=45),
        timeout=120,
        idempotency_key="export-2026-10",
        labels={"customer": "acme", "plan": "pro"},
        retention=dt.timedelta(hours=2),
        request_id="py-req-42",
    )
    assert submitted.job_id.startswith(queue + ":")
    assert not submitted.deduplicated
    assert submitted.state == JobState.SCHEDULED
    assert submitted.request_id == "py-req-42"

    job = client.status(submitted.job_id)
    assert (job.id, job.queue, job.kind, job.state) == (submitted.job_id, queue, "export", JobState.SCHEDULED)
    assert job.payload == b'{"month": "2026-10"}'
    assert job.priority == 7
    assert job.max_attempts == 5
    assert job.attempt == 0
    assert job.idempotency_key == "export-2026-10"
    assert job.labels == {"customer": "acme", "plan": "pro"}
    assert job.lease_ttl == dt.timedelta(seconds=45)
    assert job.timeout == dt.timedelta(seconds=120)
    assert job.retention == dt.timedelta(hours=2)
    assert job.retry is not None
    assert job.retry.initial_backoff == dt.timedelta(seconds=2)
    assert job.retry.max_backoff == dt.timedelta(seconds=60)
    assert (job.retry.multiplier, job.retry.jitter) == (3.0, 0.1)
    assert job.run_at is not None and abs((job.run_at - run_at).total_seconds()) < 0.01
    assert job.last_seq == 1

    # A delay instead of a run time schedules it too; both at once is refused.
    delayed = client.submit(queue, "export", delay=dt.timedelta(minutes=5))
    assert delayed.state == JobState.SCHEDULED
    with pytest.raises(ValueError):
        client.submit(queue, "export", run_at=run_at, delay=5)


def test_the_same_idempotency_key_gives_the_same_job(client: jobctl.Client, queue: str) -> None:
    first = client.submit(queue, "mail", b"to: a@example.com", idempotency_key="welcome-a")
    again = client.submit(queue, "mail", b"to: a@example.com", idempotency_key="welcome-a")
    assert again.job_id == first.job_id
    assert again.deduplicated and not first.deduplicated
    with pytest.raises(jobctl.AlreadyExists):
        client.submit(queue, "mail", b"to: somebody else", idempotency_key="welcome-a")


def test_a_batch_is_all_or_none(client: jobctl.Client, queue: str) -> None:
    jobs = [JobSpec(queue, "resize", f"photo-{i}", priority=i) for i in range(5)]
    results = client.submit_batch(jobs)
    assert len(results) == 5 and len({r.job_id for r in results}) == 5
    assert all(r.state == JobState.QUEUED for r in results)
    assert [client.status(r.job_id).payload for r in results] == [f"photo-{i}".encode() for i in range(5)]

    other = f"{queue}-bad"
    bad = [JobSpec(other, "resize", "ok"), JobSpec(other, "resize", "ok", priority=5000)]
    with pytest.raises(jobctl.InvalidArgument) as refused:
        client.submit_batch(bad)
    assert "priority" in refused.value.message
    stats = client.queue_stats(other)
    assert (stats.queued, stats.scheduled, stats.finished) == (0, 0, 0)


def test_errors_are_typed_and_name_the_field(client: jobctl.Client) -> None:
    with pytest.raises(jobctl.NotFound) as missing:
        client.status("nowhere:01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert missing.value.code.name == "NOT_FOUND"
    with pytest.raises(jobctl.InvalidArgument) as invalid:
        client.submit("", "k", request_id="py-bad-1")
    assert "queue" in invalid.value.message
    assert invalid.value.request_id == "py-bad-1"
    with pytest.raises(jobctl.NotFound):
        client.cancel("nowhere:01ARZ3NDEKTSV4RRFFQ69G5FAV")


def test_cancelling_a_queued_job_ends_it_at_once(client: jobctl.Client, queue: str) -> None:
    job = client.submit(queue, "export")
    answer = client.cancel(job.job_id, reason="user pressed cancel")
    assert answer.state == JobState.CANCELLED
    status = client.status(job.job_id)
    assert status.state == JobState.CANCELLED
    events = list(client.watch(job.job_id))
    assert [e.state for e in events] == [JobState.QUEUED, JobState.CANCELLED]
    assert events[-1].is_terminal


def _progress_worker(server_url: str, queue: str, steps: int, gate: threading.Event | None = None) -> jobctl.Worker:
    worker = jobctl.Worker(server_url, queues=[queue], concurrency=2, progress_interval=0, lease_wait=1)

    @worker.handler("steps")
    def steps_handler(ctx: jobctl.JobContext) -> bytes:
        for i in range(1, steps + 1):
            if gate is not None and i == steps // 2:
                assert gate.wait(WAIT)
            ctx.progress(current=i, total=steps, message=f"step {i}")
        return b"all done"

    return worker


def test_watch_delivers_every_event_in_order_and_ends_after_the_terminal_one(
    server: Server, client: jobctl.Client, queue: str
) -> None:
    job = client.submit(queue, "steps")
    with running(_progress_worker(server.url, queue, 4)):
        events = list(client.watch(job.job_id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].state == JobState.QUEUED
    assert events[-1].state == JobState.SUCCEEDED and events[-1].result == b"all done"
    assert {e.job_id for e in events} == {job.job_id}
    # Resuming after a sequence number delivers only what came after it.
    later = list(client.watch(job.job_id, after_seq=2))
    assert [e.seq for e in later] == [e.seq for e in events[2:]]
    done = client.wait(job.job_id, timeout=WAIT)
    assert done.state == JobState.SUCCEEDED and done.progress.current == 4


def test_watch_resumes_gap_free_after_the_connection_drops(server: Server, proxy: Proxy, queue: str) -> None:
    gate = threading.Event()
    with jobctl.Client(proxy.address) as through_proxy, jobctl.Client(server.url) as direct:
        job = direct.submit(queue, "steps")
        seen: list[jobctl.JobEvent] = []
        with running(_progress_worker(server.url, queue, 40, gate)):
            for event in through_proxy.watch(job.job_id):
                seen.append(event)
                if event.kind == jobctl.EventKind.PROGRESS and not gate.is_set():
                    # Halfway: every connection through the proxy dies; the
                    # worker goes on, and the watch must reconnect.
                    proxy.cut()
                    gate.set()
        final = direct.status(job.job_id)
    assert proxy.accepted >= 2, "the watch never reconnected"
    assert [e.seq for e in seen] == list(range(1, final.last_seq + 1))
    assert seen[-1].state == JobState.SUCCEEDED


def test_a_watch_moves_to_another_replica_when_its_server_dies(
    redis_url: str, tmp_path: pathlib.Path, queue: str
) -> None:
    """Two replicas on one Redis; the watcher's replica is killed mid-job
    and its reconnect lands on the other: no event is lost or repeated."""
    prefix = f"pysdk-{uuid.uuid4().hex[:8]}"
    first = start_server(tmp_path, "redis", redis_url, key_prefix=prefix)
    second = start_server(tmp_path, "redis", redis_url, key_prefix=prefix)
    proxy = Proxy(first.address)
    gate = threading.Event()
    try:
        with jobctl.Client(proxy.address) as watcher, jobctl.Client(second.url) as direct:
            job = direct.submit(queue, "steps")
            seen: list[jobctl.JobEvent] = []
            with running(_progress_worker(second.url, queue, 40, gate)):
                for event in watcher.watch(job.job_id):
                    seen.append(event)
                    if event.kind == jobctl.EventKind.PROGRESS and not gate.is_set():
                        proxy.switch(second.address)
                        first.process.stop()  # the watcher's replica dies
                        proxy.cut()
                        gate.set()
            final = direct.status(job.job_id)
    finally:
        proxy.close()
        first.process.stop()
        second.process.stop()
    assert [e.seq for e in seen] == list(range(1, final.last_seq + 1))
    assert seen[-1].state == JobState.SUCCEEDED


def test_the_async_client_submits_watches_and_resumes(server: Server, proxy: Proxy, queue: str) -> None:
    gate = threading.Event()

    async def scenario() -> tuple[list[jobctl.JobEvent], jobctl.Job, list[jobctl.Submitted]]:
        async with jobctl.AsyncClient(proxy.address) as client:
            job = await client.submit(queue, "steps", b"x", labels={"via": "asyncio"})
            assert job.request_id
            batch = await client.submit_batch([JobSpec(f"{queue}-b", "noop") for _ in range(3)])
            seen = []
            async for event in client.watch(job.job_id):
                seen.append(event)
                if event.kind == jobctl.EventKind.PROGRESS and not gate.is_set():
                    proxy.cut()
                    gate.set()
            status = await client.wait(job.job_id, timeout=WAIT)
            cancelled = await client.cancel(batch[0].job_id)
            assert cancelled.state == JobState.CANCELLED
            with pytest.raises(jobctl.NotFound):
                await client.status(f"{queue}:01ARZ3NDEKTSV4RRFFQ69G5FAV")
            return seen, status, batch

    with running(_progress_worker(server.url, queue, 40, gate)):
        seen, status, batch = asyncio.run(scenario())
    assert len(batch) == 3
    assert status.state == JobState.SUCCEEDED and status.labels == {"via": "asyncio"}
    assert [e.seq for e in seen] == list(range(1, status.last_seq + 1))
    assert proxy.accepted >= 2


def test_a_watch_that_cannot_reconnect_gives_up_with_the_error(client: jobctl.Client, queue: str) -> None:
    job = client.submit(queue, "export")
    with jobctl.Client(f"127.0.0.1:{free_port()}") as nowhere:
        with pytest.raises(jobctl.Unavailable):
            list(nowhere.watch(job.job_id, give_up_after=0.3))
    with pytest.raises(jobctl.NotFound):
        list(client.watch(f"{queue}:01ARZ3NDEKTSV4RRFFQ69G5FAV"))


def test_server_addresses_and_options_are_checked() -> None:
    for bad in ("", "http://", "ftp://host:1/x", "a/b"):
        with pytest.raises(ValueError):
            jobctl.Client(bad)
    with pytest.raises(ValueError):
        jobctl.Client("http://127.0.0.1:1", tls=True)
    with pytest.raises(ValueError):
        jobctl.Client("127.0.0.1:1", token="has space")
    with pytest.raises(ValueError):
        jobctl.Client("127.0.0.1:1", metadata={"Upper": "x"})
    with pytest.raises(ValueError):
        jobctl.Worker("127.0.0.1:1", concurrency=0)
    with pytest.raises(ValueError):
        jobctl.Worker("127.0.0.1:1", queues=[])
    worker = jobctl.Worker("127.0.0.1:1")
    worker.register("k", lambda ctx: None)
    with pytest.raises(ValueError, match="more than one handler"):
        worker.register("k", lambda ctx: None)
