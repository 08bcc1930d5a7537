"""The Flask twin of fastapi_app.py: POST /exports answers 202 with the
job's URL; GET /jobs/<id> is its status; GET /jobs/<id>/events forwards
WatchProgress as Server-Sent Events (resumable with Last-Event-ID).

    JOBCTL_SERVER=http://127.0.0.1:50051 flask --app examples/flask_app.py run --with-threads
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

from flask import Flask, Response, abort, jsonify, request, stream_with_context

sys.path.insert(0, os.path.dirname(__file__))
import jobctl  # noqa: E402
from events import PAGE, after_seq, job_json, sse_frame  # noqa: E402


def create_app(client: jobctl.Client | None = None, *, queue: str = "exports") -> Flask:
    app = Flask(__name__)
    jobs = client or jobctl.Client.from_env()  # thread-safe: one per process

    @app.get("/")
    def page() -> str:
        return PAGE

    @app.post("/exports")
    def start_export() -> tuple[Response, int, dict[str, str]]:
        body = request.get_json(silent=True) or {}
        rows = body.get("rows", 20)
        if not isinstance(rows, int) or not 1 <= rows <= 10_000:
            abort(422, "rows must be an integer between 1 and 10000")
        job = jobs.submit(queue, "export", json.dumps({"rows": rows}), max_attempts=3)
        url = f"/jobs/{job.job_id}"
        return jsonify(job_id=job.job_id, url=url, events=f"{url}/events"), 202, {"Location": url}

    @app.get("/jobs/<job_id>")
    def status(job_id: str) -> Response:
        try:
            return jsonify(job_json(jobs.status(job_id)))
        except jobctl.NotFound:
            abort(404, f"no job {job_id}")

    @app.post("/jobs/<job_id>/cancel")
    def cancel(job_id: str) -> tuple[Response, int]:
        try:
            answer = jobs.cancel(job_id, reason="cancelled from the page")
        except jobctl.NotFound:
            abort(404, f"no job {job_id}")
        return jsonify(state=answer.state.name), 202

    @app.get("/jobs/<job_id>/events")
    def events(job_id: str) -> Response:
        try:
            jobs.status(job_id)  # a 404 before the stream starts
        except jobctl.NotFound:
            abort(404, f"no job {job_id}")
        start = after_seq(request.headers.get("Last-Event-ID"), request.args.get("after"))

        def stream() -> Iterator[str]:
            for event in jobs.watch(job_id, start):
                yield sse_frame(event)

        return Response(
            stream_with_context(stream()), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app
