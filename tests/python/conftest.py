"""Fixtures of the Python client test: Python stubs generated from proto/ at
test time, a fresh redis-server on a free port, and the jobctl-server binary
against it on a free port.

The server binary is $JOBCTL_SERVER_BIN, or jobctl-server in
${CARGO_TARGET_DIR:-<repo>/target}/debug (scripts/test.sh builds it first).
"""

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"
READY_TIMEOUT = 30.0


def _server_binary():
    explicit = os.environ.get("JOBCTL_SERVER_BIN")
    if explicit:
        return pathlib.Path(explicit)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "jobctl-server"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """The jobctl.v1 modules, generated with grpcio-tools into a temp dir."""
    from grpc_tools import protoc
    import grpc_tools

    out = tmp_path_factory.mktemp("generated")
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("jobctl/v1/*.proto"))
    assert protos, f"no .proto files under {PROTO_DIR}"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ]
    )
    assert code == 0, f"protoc failed with {code}"
    sys.path.insert(0, str(out))
    from jobctl.v1 import (  # noqa: E402  (generated above)
        job_pb2,
        job_service_pb2,
        job_service_pb2_grpc,
        worker_service_pb2,
        worker_service_pb2_grpc,
    )

    class Modules:
        job = job_pb2
        jobs = job_service_pb2
        jobs_grpc = job_service_pb2_grpc
        workers = worker_service_pb2
        workers_grpc = worker_service_pb2_grpc

    return Modules


class Process:
    """A child process whose output is collected (and shown on failure)."""

    def __init__(self, name, args, cwd):
        self.name = name
        self.lines = []
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self):
        return "\n".join(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _redis_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A fresh redis-server on a free port (never 6379), killed afterwards."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (apt-get install redis-server)"
    for _ in range(5):
        port = _free_port()
        data = tmp_path_factory.mktemp("redis")
        redis = Process(
            "redis-server",
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data)],
            cwd=data,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and redis.proc.poll() is None and not _redis_answers(port):
            time.sleep(0.02)
        if redis.proc.poll() is None and _redis_answers(port):
            yield f"redis://127.0.0.1:{port}"
            redis.stop()
            return
        # Lost the port to another process: try another one.
        redis.stop()
    pytest.fail(f"redis-server did not start; last output:\n{redis.output()}")


@pytest.fixture(scope="session")
def server(redis_url, tmp_path_factory):
    """The jobctl-server binary on 127.0.0.1:<free port>; yields its address."""
    binary = _server_binary()
    assert binary.exists(), f"{binary} is missing: run cargo build --workspace --bins first"
    server = Process(
        "jobctl-server",
        [
            str(binary),
            "--listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--redis-url", redis_url,
            "--key-prefix", "pytest",
        ],
        cwd=tmp_path_factory.mktemp("server"),
    )
    marker = "jobctl-server listening on "
    deadline = time.monotonic() + READY_TIMEOUT
    address = None
    while address is None and time.monotonic() < deadline and server.proc.poll() is None:
        address = next((l.split(marker, 1)[1].strip() for l in list(server.lines) if marker in l), None)
        time.sleep(0.02)
    if address is None:
        server.stop()
        pytest.fail(f"jobctl-server did not report its address; output:\n{server.output()}")
    yield address
    server.stop()


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(server) as channel:
        grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT)
        yield channel
