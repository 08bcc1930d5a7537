"""The no-op job of the drain benchmark, for every system measured, and the
counter that times it: each handler call records the time; the rate is
(jobs - 1) / (last call - first call), measured the same way for all.

Imported by name (not as __main__) so Celery and RQ find the task."""

from __future__ import annotations

import json
import os
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any

JOBS = int(os.environ.get("BENCH_JOBS", "0"))
_lock = threading.Lock()
_count = 0
_first = 0.0
on_done: Callable[[], None] = lambda: None
"""Called (once, from a handler) when the last job ran."""


def record() -> None:
    global _count, _first
    now = time.perf_counter()
    with _lock:
        _count += 1
        count = _count
        if count == 1:
            _first = now
    if count == JOBS:
        elapsed = now - _first
        rate = (JOBS - 1) / elapsed if elapsed > 0 else float("inf")
        # A file, not stdout: Celery's worker turns stdout into log lines.
        pathlib.Path(os.environ["BENCH_OUT"]).write_text(json.dumps({"jobs": JOBS, "seconds": elapsed, "rate": rate}))
        on_done()


def noop(*args: Any, **kwargs: Any) -> None:
    """The RQ job (and what the other handlers call)."""
    record()


def celery_app(broker: str) -> Any:
    from celery import Celery

    app = Celery("bench", broker=broker)
    app.conf.update(
        task_ignore_result=True,
        worker_prefetch_multiplier=64,
        task_acks_late=False,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    def celery_noop() -> None:
        record()

    app.task(name="bench.noop")(celery_noop)
    return app
