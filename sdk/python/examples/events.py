"""What both example apps share: a job's status and events as JSON, and a
Server-Sent Events frame per `JobEvent`."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jobctl

PAGE = (pathlib.Path(__file__).parent / "page.html").read_text()


def job_json(job: jobctl.Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state.name,
        "attempt": job.attempt,
        "progress": {"percent": job.progress.percent, "message": job.progress.message},
        "result": job.result.decode(errors="replace"),
        "error": job.error.message if job.error else None,
    }


def sse_frame(event: jobctl.JobEvent) -> str:
    """One SSE message: its `id` is the sequence number, so a browser that
    reconnects sends it back as `Last-Event-ID` and resumes after it."""
    data = {
        "seq": event.seq,
        "kind": event.kind.name,
        "state": event.state.name,
        "percent": event.progress.percent,
        "message": event.progress.message,
        "terminal": event.is_terminal,
        "result": event.result.decode(errors="replace"),
        "error": event.error.message if event.error else None,
    }
    return f"id: {event.seq}\nevent: job\ndata: {json.dumps(data)}\n\n"


def after_seq(last_event_id: str | None, after: str | None) -> int:
    """Where a (re)connecting browser resumes: `Last-Event-ID`, or `?after=`."""
    for value in (last_event_id, after):
        if value and value.isdigit():
            return int(value)
    return 0
