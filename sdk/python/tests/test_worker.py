"""The worker against the real server, on both stores: handlers by kind,
results, progress, checkpoints, retry and fatal by exception, cancellation,
deadlines, heartbeats, batched completions and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import signal
import sys
import threading

from conftest import WAIT, Process, Server, eventually, running

import jobctl
from jobctl import JobState, RetryPolicy

FAST_RETRY = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, multiplier=2.0, jitter=0.0)


def make_worker(server: Server, queue: str, **options: object) -> jobctl.Worker:
    settings: dict[str, object] = {"queues": [queue], "lease_wait": 1.0, "concurrency": 4}
    settings.update(options)
    return jobctl.Worker(server.url, **settings)  # type: ignore[arg-type]


def test_handlers_run_by_kind_and_their_results_are_stored(
    server: Server, client: jobctl.Client, queue: str
) -> None:
    worker = make_worker(server, queue, concurrency=8)

    @worker.handler("bytes")
    def as_bytes(ctx: jobctl.JobContext) -> bytes:
        return ctx.payload.upper()

    @worker.handler("json")
    def as_json(ctx: jobctl.JobContext) -> dict[str, object]:
        return {"sum": sum(ctx.json()), "attempt": ctx.attempt, "worker": ctx.worker_id}

    @worker.handler("async")
    async def as_async(ctx: jobctl.JobContext) -> str:
        await asyncio.sleep(0)
        return f"async {ctx.kind} on {ctx.queue}"

    jobs = client.submit_batch(
        [jobctl.JobSpec(queue, "bytes", f"job-{i}") for i in range(30)]
        + [jobctl.JobSpec(queue, "json", "[1, 2, 3]"), jobctl.JobSpec(queue, "async")]
    )
    with running(worker):
        done = [client.wait(j.job_id, timeout=WAIT) for j in jobs]
    assert all(d.state == JobState.SUCCEEDED for d in done), [d.state for d in done]
    assert [d.result for d in done[:30]] == [f"JOB-{i}".encode() for i in range(30)]
    assert done[30].result == f'{{"sum": 6, "attempt": 1, "worker": "{worker.worker_id}"}}'.encode()
    assert done[31].result == f"async async on {queue}".encode()
    # Untraced jobs are completed in batches (which also lease the next ones).
    assert worker.stats.succeeded == 32
    assert worker.stats.complete_batches >= 1
    assert worker.stats.batched_completions == 32
    assert worker.stats.leased == 32


def test_progress_and_checkpoints_reach_the_server_and_a_retry_resumes(
    server: Server, client: jobctl.Client, queue: str
) -> None:
    worker = make_worker(server, queue, progress_interval=0)
    seen: list[bytes | None] = []

    @worker.handler("export")
    def export(ctx: jobctl.JobContext) -> bytes:
        seen.append(ctx.last_checkpoint)
        if ctx.attempt == 1:
            ctx.progress(30, "rows 1-30", current=30, total=100)
            ctx.checkpoint(b"30")
            raise jobctl.Retry("database went away", after=0.01)
        start = int(ctx.last_checkpoint or b"0")
        ctx.progress(current=100, total=100, message="all rows")
        return f"resumed from {start}".encode()

    job = client.submit(queue, "export", max_attempts=2, retry=FAST_RETRY)
    with running(worker):
        done = client.wait(job.job_id, timeout=WAIT)
    assert done.state == JobState.SUCCEEDED, done
    assert done.attempt == 2
    assert done.result == b"resumed from 30"
    assert seen == [None, b"30"]
    assert done.checkpoint == b"30"
    assert (done.progress.percent, done.progress.message) == (100.0, "all rows")
    events = list(client.watch(job.job_id))
    progress = [(e.attempt, e.progress.percent, e.progress.message) for e in events if e.kind == jobctl.EventKind.PROGRESS]
    assert progress == [(1, 30.0, "rows 1-30"), (2, 100.0, "all rows")]
    retried = [e for e in events if e.error is not None]
    assert retried and retried[0].error is not None and retried[0].error.message == "database went away"


def test_exception_types_decide_between_retry_and_fatal(
    server: Server, client: jobctl.Client, queue: str
) -> None:
    worker = make_worker(server, queue)
    calls: dict[str, int] = {}

    @worker.handler("parse", fatal_on=(ValueError,))
    def parse(ctx: jobctl.JobContext) -> int:
        return int(ctx.payload)  # ValueError on bad input: never retried

    @worker.handler("flaky")
    def flaky(ctx: jobctl.JobContext) -> bytes:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if ctx.attempt == 1:
            raise ConnectionError("smtp down")  # any other exception: retried
        return b"sent"

    @worker.handler("picky", retry_on=(ConnectionError,))
    def picky(ctx: jobctl.JobContext) -> bytes:
        raise KeyError("missing")  # not in retry_on: fatal

    @worker.handler("explicit")
    def explicit(ctx: jobctl.JobContext) -> bytes:
        raise jobctl.Fatal("card declined", code="declined", details="issuer said no")

    bad = client.submit(queue, "parse", b"not a number", max_attempts=3, retry=FAST_RETRY)
    retried = client.submit(queue, "flaky", max_attempts=3, retry=FAST_RETRY)
    picky_job = client.submit(queue, "picky", max_attempts=3, retry=FAST_RETRY)
    declined = client.submit(queue, "explicit", max_attempts=3)
    unknown = client.submit(queue, "nobody-handles-this", max_attempts=3)
    with running(worker):
        bad_done, retried_done, picky_done, declined_done, unknown_done = (
            client.wait(j.job_id, timeout=WAIT) for j in (bad, retried, picky_job, declined, unknown)
        )
    assert (bad_done.state, bad_done.attempt) == (JobState.FAILED, 1)
    assert bad_done.error is not None and bad_done.error.code == "ValueError"
    assert "invalid literal" in bad_done.error.message and "Traceback" in bad_done.error.details
    assert (retried_done.state, retried_done.attempt, retried_done.result) == (JobState.SUCCEEDED, 2, b"sent")
    assert (picky_done.state, picky_done.attempt) == (JobState.FAILED, 1)
    assert (declined_done.state, declined_done.attempt) == (JobState.FAILED, 1)
    assert declined_done.error == jobctl.JobError("card declined", "declined", "issuer said no")
    assert unknown_done.state == JobState.FAILED and unknown_done.error is not None
    assert unknown_done.error.code == "unknown_kind"
    assert "explicit" in unknown_done.error.details


def test_cancel_reaches_a_running_handler(server: Server, client: jobctl.Client, queue: str) -> None:
    worker = make_worker(server, queue)
    reasons: list[tuple[str | None, str]] = []

    @worker.handler("sync")
    def sync(ctx: jobctl.JobContext) -> bytes:
        assert ctx.cancelled.wait(WAIT), "never cancelled"
        reasons.append((ctx.cancel_reason, ctx.cancel_message))
        ctx.raise_if_cancelled()
        return b"unreachable"

    @worker.handler("async")
    async def coroutine(ctx: jobctl.JobContext) -> bytes:
        await asyncio.wait_for(ctx.wait_cancelled(), WAIT)
        reasons.append((ctx.cancel_reason, ctx.cancel_message))
        raise jobctl.Cancelled()

    jobs = [client.submit(queue, kind, lease_ttl=1) for kind in ("sync", "async")]
    with running(worker):
        for job in jobs:
            eventually(lambda: client.status(job.job_id).state == JobState.RUNNING, "the job to run")
            answer = client.cancel(job.job_id, reason="user pressed cancel")
            assert answer.state == JobState.RUNNING and answer.cancel_requested
        done = [client.wait(j.job_id, timeout=WAIT) for j in jobs]
    assert [d.state for d in done] == [JobState.CANCELLED, JobState.CANCELLED]
    assert reasons == [("requested", "user pressed cancel")] * 2
    assert all(d.error is not None and d.error.code == "cancelled" for d in done)
    assert done[0].error is not None and done[0].error.message == "cancelled: user pressed cancel"


def test_a_passed_deadline_cancels_the_handler_and_counts_as_a_timeout(
    server: Server, client: jobctl.Client, queue: str
) -> None:
    worker = make_worker(server, queue)

    @worker.handler("slow")
    def slow(ctx: jobctl.JobContext) -> bytes:
        assert ctx.deadline is not None
        assert ctx.cancelled.wait(WAIT)
        assert ctx.cancel_reason == "deadline"
        ctx.raise_if_cancelled()
        return b"unreachable"

    job = client.submit(queue, "slow", timeout=0.3, max_attempts=1)
    with running(worker):
        done = client.wait(job.job_id, timeout=WAIT)
    assert done.state == JobState.FAILED
    assert done.error is not None and done.error.code == "timeout"


def test_heartbeats_keep_the_lease_of_a_job_that_outlives_its_ttl(
    server: Server, client: jobctl.Client, queue: str
) -> None:
    worker = make_worker(server, queue)
    gate = threading.Event()

    @worker.handler("long")
    def long(ctx: jobctl.JobContext) -> bytes:
        assert gate.wait(WAIT)
        return b"finished"

    job = client.submit(queue, "long", lease_ttl=1, max_attempts=1)
    with running(worker):
        first = eventually(lambda: client.status(job.job_id).lease_expires_at, "the lease")
        assert isinstance(first, dt.datetime)
        # Until well past the first lease's expiry, the lease keeps being
        # extended (every third of its TTL) and the attempt stays the first.
        eventually(
            lambda: dt.datetime.now(dt.timezone.utc) > first + dt.timedelta(seconds=1.5),
            "the first lease's expiry to pass",
        )
        status = client.status(job.job_id)
        assert status.state == JobState.RUNNING and status.attempt == 1
        assert status.lease_expires_at is not None and status.lease_expires_at > first
        gate.set()
        done = client.wait(job.job_id, timeout=WAIT)
    assert (done.state, done.attempt, done.result) == (JobState.SUCCEEDED, 1, b"finished")


SIGTERM_WORKER = """
import logging, pathlib, sys, time, jobctl
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
server, queue, marker, grace = sys.argv[1:5]
worker = jobctl.Worker(server, queues=[queue], concurrency=2, shutdown_grace=float(grace), lease_wait=1.0)

@worker.handler("finishes")
def finishes(ctx):
    pathlib.Path(marker + ".started").touch()
    while not pathlib.Path(marker).exists():
        time.sleep(0.01)
    return b"finished during the drain"

@worker.handler("stuck")
def stuck(ctx):
    pathlib.Path(marker + ".started").touch()
    ctx.cancelled.wait()
    return b"never reported"

print("worker up", flush=True)
worker.run()
print("worker exited", flush=True)
"""


def run_until_sigterm(
    server: Server, client: jobctl.Client, queue: str, tmp: pathlib.Path, kind: str, grace: float
) -> jobctl.Job:
    """Runs a worker process until its one job runs, sends it SIGTERM (and
    lets a `finishes` job finish), waits for it to exit; the job's status."""
    script = tmp / "worker.py"
    script.write_text(SIGTERM_WORKER)
    marker = tmp / f"finish-{kind}"
    job = client.submit(queue, kind)
    proc = Process([sys.executable, str(script), server.url, queue, str(marker), str(grace)], cwd=tmp)
    try:
        # Its handler runs (not just its lease: a Lease answer still in
        # flight at SIGTERM is dropped, and its jobs wait out their leases).
        eventually(lambda: pathlib.Path(f"{marker}.started").exists(), "the handler to start")
        proc.proc.send_signal(signal.SIGTERM)
        marker.touch()
        assert proc.proc.wait(timeout=WAIT) == 0, proc.output()
    finally:
        proc.stop()
    assert "worker exited" in proc.output()
    return client.status(job.job_id)


def test_sigterm_lets_a_running_job_finish_within_the_grace(
    server: Server, client: jobctl.Client, queue: str, tmp_path: pathlib.Path
) -> None:
    done = run_until_sigterm(server, client, queue, tmp_path, "finishes", grace=WAIT)
    assert (done.state, done.result) == (JobState.SUCCEEDED, b"finished during the drain")


def test_sigterm_releases_what_is_unfinished_when_the_grace_is_over(
    server: Server, client: jobctl.Client, queue: str, tmp_path: pathlib.Path
) -> None:
    released = run_until_sigterm(server, client, queue, tmp_path, "stuck", grace=0.2)
    # Handed back: queued again, its attempt not used up, nothing reported.
    assert released.state == JobState.QUEUED, released
    assert released.result == b""
