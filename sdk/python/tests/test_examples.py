"""The example apps (FastAPI and Flask) end to end: the HTTP-202 pattern
over real HTTP, and their page in a real headless Chromium following a job
live over Server-Sent Events that forward WatchProgress."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from conftest import WAIT, Server, eventually, free_port, running

import jobctl

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import export_worker  # noqa: E402


@contextmanager
def fastapi_served(server: Server, queue: str) -> Iterator[str]:
    import uvicorn
    from fastapi_app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(server.url, queue=queue), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    app_server = uvicorn.Server(config)
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    eventually(lambda: app_server.started, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app_server.should_exit = True
        thread.join(WAIT)


@contextmanager
def flask_served(server: Server, queue: str) -> Iterator[str]:
    from flask_app import create_app
    from werkzeug.serving import make_server

    with jobctl.Client(server.url) as client:
        http_server = make_server("127.0.0.1", 0, create_app(client, queue=queue), threaded=True)
        thread = threading.Thread(target=http_server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{http_server.server_port}"
        finally:
            http_server.shutdown()
            thread.join(WAIT)


APPS: dict[str, Callable[[Server, str], AbstractContextManager[str]]] = {
    "fastapi": fastapi_served,
    "flask": flask_served,
}


@pytest.fixture(params=sorted(APPS))
def app_url(request: pytest.FixtureRequest, server: Server, queue: str) -> Iterator[str]:
    worker = export_worker.build_worker(server.url, queue=queue, step_seconds=0.02)
    with running(worker), APPS[request.param](server, queue) as url:
        yield url


def post_json(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, {}, {}


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=WAIT) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


def sse_events(url: str, last_event_id: int | None = None) -> list[dict[str, Any]]:
    """Reads a Server-Sent Events stream to its end."""
    base, path = url.split("//", 1)[1].split("/", 1)
    host, port = base.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=WAIT)
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    connection.request("GET", "/" + path, headers=headers)
    answer = connection.getresponse()
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    events, ids = [], []
    for raw in answer:
        line = raw.decode().rstrip("\n")
        if line.startswith("id: "):
            ids.append(int(line[4:]))
        elif line.startswith("data: "):
            events.append(json.loads(line[6:]))
    connection.close()
    assert ids == [e["seq"] for e in events]
    return events


def test_the_app_answers_202_with_the_jobs_url_and_streams_its_events(app_url: str) -> None:
    status, headers, body = post_json(app_url + "/exports", {"rows": 4})
    assert status == 202
    assert headers["location"] == body["url"] == f"/jobs/{body['job_id']}"
    events = sse_events(app_url + body["events"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["state"] == "QUEUED"
    assert events[-1]["state"] == "SUCCEEDED" and events[-1]["terminal"]
    assert json.loads(events[-1]["result"])["rows"] == 4
    progress = [e for e in events if e["kind"] == "PROGRESS"]
    assert progress and progress[-1]["percent"] == 100.0
    # A browser reconnecting with Last-Event-ID resumes after it.
    resumed = sse_events(app_url + body["events"], last_event_id=2)
    assert [e["seq"] for e in resumed] == [e["seq"] for e in events[2:]]
    job = get_json(app_url + body["url"])
    assert (job["state"], job["progress"]["percent"]) == ("SUCCEEDED", 100.0)
    # Bad input and unknown jobs get HTTP errors, not a job.
    assert post_json(app_url + "/exports", {"rows": 0})[0] == 422
    with pytest.raises(urllib.error.HTTPError) as missing:
        get_json(app_url + "/jobs/exports:01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert missing.value.code == 404


def _chromium(profile: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium never looks for (or downloads) one.
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="jobctl-chromium-")  # a fresh profile
    driver = _chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_a_browser_follows_an_export_live_over_server_sent_events(app_url: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(app_url + "/")
    rows = browser.find_element(By.ID, "rows")
    rows.clear()
    rows.send_keys("6")
    browser.find_element(By.ID, "export").click()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "state").text == "SUCCEEDED")

    job_url = browser.find_element(By.ID, "job-url").text
    assert job_url.startswith("/jobs/")
    items = browser.find_elements(By.CSS_SELECTOR, "#events li")
    seqs = [int(i.get_attribute("data-seq")) for i in items]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    kinds = [i.get_attribute("data-kind") for i in items]
    assert "PROGRESS" in kinds
    assert browser.find_element(By.ID, "bar").get_attribute("value") == "100"
    assert browser.find_element(By.ID, "message").text == "exported 6 of 6 rows"
    assert json.loads(browser.find_element(By.ID, "result").text)["rows"] == 6
    # The page's job link is the job's status, as the app serves it.
    assert get_json(app_url + job_url)["state"] == "SUCCEEDED"
