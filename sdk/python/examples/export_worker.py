"""The worker behind the example apps: an "export" job that works through
its rows in steps, reporting progress and a checkpoint after each, so a
retried export resumes where the last attempt stopped and a cancel stops it
between two steps.

    python examples/export_worker.py            # JOBCTL_SERVER, default http://127.0.0.1:50051
"""

from __future__ import annotations

import json
import logging

import jobctl

QUEUE = "exports"


def build_worker(server: str | None = None, *, queue: str = QUEUE, step_seconds: float = 0.05) -> jobctl.Worker:
    options: dict[str, object] = {"queues": [queue], "concurrency": 4}
    worker = jobctl.Worker(server, **options) if server else jobctl.Worker.from_env(**options)  # type: ignore[arg-type]

    @worker.handler("export", fatal_on=(ValueError, KeyError))
    def export(ctx: jobctl.JobContext) -> dict[str, object]:
        rows = int(ctx.json()["rows"])  # a bad payload is never retried
        if not 1 <= rows <= 10_000:
            raise ValueError(f"rows must be between 1 and 10000, not {rows}")
        done = int(ctx.last_checkpoint or b"0")
        while done < rows:
            # Waiting on the cancellation event instead of sleeping makes a
            # cancel take effect within one step.
            if ctx.cancelled.wait(step_seconds):
                ctx.raise_if_cancelled()
            done += 1
            ctx.progress(current=done, total=rows, message=f"exported {done} of {rows} rows")
            ctx.checkpoint(str(done).encode())
        return {"rows": rows, "file": f"/downloads/{ctx.id}.csv"}

    return worker


def payload(rows: int) -> str:
    return json.dumps({"rows": rows})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    build_worker().run()
