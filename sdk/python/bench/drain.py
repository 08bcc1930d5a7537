"""Drain rate of no-op jobs: a Python worker with the jobctl SDK side by
side with Celery and RQ, on the same Redis and machine.

    sdk/python/bench/run.sh                     # builds a venv, then runs this
    python drain.py --jobs 20000 --runs 3 --server-bin target/release/jobctl-server

Each run of each system gets a fresh redis-server on a free port (and, for
jobctl, a fresh jobctl-server against it), is preloaded with --jobs jobs,
then one worker process drains them; the worker times its handler calls
(first to last, the same for every system). Medians of --runs.

- jobctl: `jobctl.Worker`, plain-function handler on --concurrency threads
  (and `jobctl-async`: a coroutine handler), batched completions on.
- celery: a worker with the threads pool and the same --concurrency, Redis
  broker, results ignored, prefetch 64 (its fastest settings we found for
  no-op tasks in one process).
- rq: `SimpleWorker` (no fork per job: the default forking worker manages
  a few dozen jobs/s), burst mode, result_ttl=0; RQ runs one job at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[2]
QUEUE = "bench"
SYSTEMS = ("jobctl", "jobctl-async", "celery", "rq")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    data = tempfile.mkdtemp(prefix="pysdk-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", data],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_for(answers, "redis-server")
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def jobctl_server(binary: str, redis_url: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--redis-url", redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        marker = "jobctl-server listening on "
        for line in proc.stdout:
            if marker in line:
                address = line.split(marker, 1)[1].strip()
                break
        else:
            raise SystemExit("jobctl-server did not start")
        yield f"http://{address}"
    finally:
        proc.terminate()
        proc.wait()


def preload_jobctl(server: str, jobs: int) -> None:
    import jobctl

    with jobctl.Client(server, timeout=60) as client:
        payload = b"x" * 100
        for start in range(0, jobs, 500):
            batch = [jobctl.JobSpec(QUEUE, "noop", payload) for _ in range(min(500, jobs - start))]
            client.submit_batch(batch)


def preload_celery(broker: str, jobs: int) -> None:
    import noop_tasks

    app = noop_tasks.celery_app(broker)
    with app.producer_or_acquire() as producer:
        for _ in range(jobs):
            app.send_task("bench.noop", queue=QUEUE, producer=producer)


def preload_rq(redis_url: str, jobs: int) -> None:
    import redis
    from rq import Queue

    import noop_tasks

    queue = Queue(QUEUE, connection=redis.Redis.from_url(redis_url))
    for start in range(0, jobs, 1000):
        n = min(1000, jobs - start)
        queue.enqueue_many([Queue.prepare_data(noop_tasks.noop, result_ttl=0) for _ in range(n)])


def child(system: str, target: str, concurrency: int) -> None:
    """Runs one worker until it has run BENCH_JOBS jobs (a child process)."""
    import noop_tasks

    if system in ("jobctl", "jobctl-async"):
        import jobctl

        worker = jobctl.Worker(target, queues=[QUEUE], concurrency=concurrency, lease_wait=5)
        if system == "jobctl":
            worker.register("noop", lambda ctx: noop_tasks.record())
        else:

            async def noop(ctx: jobctl.JobContext) -> None:
                noop_tasks.record()

            worker.register("noop", noop)
        noop_tasks.on_done = worker.stop
        worker.run()
    elif system == "celery":
        app = noop_tasks.celery_app(target)
        noop_tasks.on_done = lambda: os._exit(0)
        app.worker_main(
            [
                "worker", "--pool=threads", f"--concurrency={concurrency}", "-Q", QUEUE,
                "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
            ]
        )  # fmt: skip
    elif system == "rq":
        import redis
        from rq import Queue, SimpleWorker

        connection = redis.Redis.from_url(target)
        SimpleWorker([Queue(QUEUE, connection=connection)], connection=connection).work(burst=True, logging_level="WARNING")
    else:
        raise SystemExit(f"unknown system {system}")


def one_run(system: str, jobs: int, concurrency: int, server_bin: str) -> float:
    with redis_server() as redis_url, contextlib.ExitStack() as stack:
        if system.startswith("jobctl"):
            target = stack.enter_context(jobctl_server(server_bin, redis_url))
            preload_jobctl(target, jobs)
        elif system == "celery":
            target = redis_url
            preload_celery(redis_url, jobs)
        else:
            target = redis_url
            preload_rq(redis_url, jobs)
        result = pathlib.Path(tempfile.mkdtemp(prefix="pysdk-bench-")) / "result.json"
        env = {**os.environ, "BENCH_JOBS": str(jobs), "BENCH_OUT": str(result), "PYTHONPATH": str(HERE)}
        out = subprocess.run(
            [sys.executable, str(HERE / "drain.py"), "--child", system, "--target", target, "--concurrency", str(concurrency)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if not result.exists():
            raise SystemExit(f"{system} worker reported nothing:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        rate: float = json.loads(result.read_text())["rate"]
        shutil.rmtree(result.parent, ignore_errors=True)
        return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--server-bin", default=str(REPO / "target" / "release" / "jobctl-server"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.target, args.concurrency)
        return
    systems = [s for s in args.systems.split(",") if s]
    results: dict[str, list[float]] = {}
    for run in range(args.runs):
        for system in systems:  # interleaved, so a noisy moment hits all alike
            rate = one_run(system, args.jobs, args.concurrency, args.server_bin)
            results.setdefault(system, []).append(rate)
            print(f"run {run + 1}: {system:13} {rate:9.0f} jobs/s", file=sys.stderr, flush=True)
    base = statistics.median(results["jobctl"]) if "jobctl" in results else None
    print(f"\n{args.jobs} no-op jobs, concurrency {args.concurrency}, medians of {args.runs}")
    print(f"{'system':13} {'jobs/s':>9} {'min':>9} {'max':>9} {'vs jobctl':>9}")
    for system, rates in results.items():
        median = statistics.median(rates)
        ratio = f"{median / base:.2f}" if base else "-"
        print(f"{system:13} {median:9.0f} {min(rates):9.0f} {max(rates):9.0f} {ratio:>9}")
    for system, rates in results.items():
        print(json.dumps({"system": system, "jobs": args.jobs, "concurrency": args.concurrency, "rates": rates, "median": statistics.median(rates)}))


if __name__ == "__main__":
    main()
