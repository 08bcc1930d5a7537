"""A FastAPI service that hands exports to jobctl: POST /exports answers
202 with the job's URL at once; GET /jobs/{id} is its status; GET
/jobs/{id}/events forwards WatchProgress to the browser as Server-Sent
Events (resumable with Last-Event-ID).

    JOBCTL_SERVER=http://127.0.0.1:50051 uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, Field

sys.path.insert(0, os.path.dirname(__file__))
import jobctl  # noqa: E402
from events import PAGE, after_seq, job_json, sse_frame  # noqa: E402


class ExportRequest(BaseModel):
    rows: int = Field(default=20, ge=1, le=10_000)


def create_app(server: str | None = None, *, queue: str = "exports") -> FastAPI:
    clients: dict[str, jobctl.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client per process, made inside the event loop that uses it.
        clients["jobctl"] = jobctl.AsyncClient(server) if server else jobctl.AsyncClient.from_env()
        yield
        await clients["jobctl"].close()

    app = FastAPI(title="exports", lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.post("/exports", status_code=202)
    async def start_export(body: ExportRequest, response: Response) -> dict[str, Any]:
        job = await clients["jobctl"].submit(queue, "export", json.dumps({"rows": body.rows}), max_attempts=3)
        url = f"/jobs/{job.job_id}"
        response.headers["Location"] = url
        return {"job_id": job.job_id, "url": url, "events": f"{url}/events"}

    @app.get("/jobs/{job_id}")
    async def status(job_id: str) -> dict[str, Any]:
        try:
            return job_json(await clients["jobctl"].status(job_id))
        except jobctl.NotFound:
            raise HTTPException(404, f"no job {job_id}") from None

    @app.post("/jobs/{job_id}/cancel", status_code=202)
    async def cancel(job_id: str) -> dict[str, Any]:
        try:
            answer = await clients["jobctl"].cancel(job_id, reason="cancelled from the page")
        except jobctl.NotFound:
            raise HTTPException(404, f"no job {job_id}") from None
        return {"state": answer.state.name}

    @app.get("/jobs/{job_id}/events")
    async def events(
        job_id: str, after: str | None = None, last_event_id: str | None = Header(default=None)
    ) -> StreamingResponse:
        client = clients["jobctl"]
        try:
            await client.status(job_id)  # a 404 before the stream starts
        except jobctl.NotFound:
            raise HTTPException(404, f"no job {job_id}") from None

        async def stream() -> AsyncIterator[str]:
            async for event in client.watch(job_id, after_seq(last_event_id, after)):
                yield sse_frame(event)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


app = create_app()
"""The app uvicorn serves (connects as the `JOBCTL_*` variables say)."""
