"""The harness of the SDK's tests: the real `jobctl-server` binary on both
stores (embedded, and a fresh `redis-server` on a free port that this file
starts and stops), a TLS server with API keys and client certificates, a TCP
proxy whose connections a test can cut, and a worker run in a thread.

The SDK under test is the installed wheel (scripts/test.sh builds it and
installs it into a fresh venv), never `src/`: `test_packaging.py` checks.

The server binary is $JOBCTL_SERVER_BIN, or jobctl-server in
${CARGO_TARGET_DIR:-<repo>/target}/debug.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

import jobctl

REPO = pathlib.Path(__file__).resolve().parents[3]
READY_TIMEOUT = 30.0
WAIT = 30.0
"""Longest any test waits for something to happen (never a sleep: a poll)."""


def server_binary() -> pathlib.Path:
    explicit = os.environ.get("JOBCTL_SERVER_BIN")
    if explicit:
        return pathlib.Path(explicit)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "jobctl-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def eventually(check: Callable[[], object], what: str, timeout: float = WAIT) -> object:
    """Polls `check` until it returns something truthy; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class Process:
    """A child process whose output is collected (and shown on failure)."""

    def __init__(self, args: list[str], cwd: pathlib.Path, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(tmp: pathlib.Path) -> Iterator[str]:
    """A fresh redis-server on a free port (never 6379), stopped afterwards."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (apt-get install redis-server)"
    for attempt in range(5):
        port = free_port()
        data = tmp / f"redis-{attempt}"
        data.mkdir()
        redis = Process(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data)],
            cwd=data,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and redis.proc.poll() is None and not _redis_answers(port):
            time.sleep(0.01)
        if redis.proc.poll() is None and _redis_answers(port):
            try:
                yield f"redis://127.0.0.1:{port}"
            finally:
                redis.stop()
            return
        redis.stop()  # lost the port to another process: try another one
    pytest.fail(f"redis-server did not start:\n{redis.output()}")


@dataclass
class Server:
    """A running jobctl-server."""

    address: str
    process: Process
    store: str

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def start_server(
    tmp: pathlib.Path, store: str, redis_url: str | None, *extra: str, key_prefix: str | None = None
) -> Server:
    binary = server_binary()
    assert binary.exists(), f"{binary} is missing: run cargo build --workspace --bins first"
    args = [
        str(binary),
        "--listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0",
        "--maintenance-interval", "100ms",
        "--shutdown-grace", "1s",
        *extra,
    ]  # fmt: skip
    if redis_url is not None:
        args += ["--redis-url", redis_url, "--key-prefix", key_prefix or f"pysdk-{uuid.uuid4().hex[:8]}"]
    process = Process(args, cwd=tmp)
    marker = "jobctl-server listening on "
    deadline = time.monotonic() + READY_TIMEOUT
    address = None
    while address is None and time.monotonic() < deadline and process.proc.poll() is None:
        address = next((line.split(marker, 1)[1].strip() for line in list(process.lines) if marker in line), None)
        time.sleep(0.01)
    if address is None:
        process.stop()
        pytest.fail(f"jobctl-server did not report its address:\n{process.output()}")
    return Server(address, process, store)


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def redis_url(session_tmp: pathlib.Path) -> Iterator[str]:
    with redis_server(session_tmp) as url:
        yield url


@pytest.fixture(scope="session", params=["embedded", "redis"])
def server(request: pytest.FixtureRequest, session_tmp: pathlib.Path) -> Iterator[Server]:
    """The server on each store: the embedded one, and Redis."""
    store: str = request.param
    url = request.getfixturevalue("redis_url") if store == "redis" else None
    tmp = session_tmp / f"server-{store}"
    tmp.mkdir()
    started = start_server(tmp, store, url)
    yield started
    started.process.stop()


@pytest.fixture
def client(server: Server) -> Iterator[jobctl.Client]:
    with jobctl.Client(server.url) as c:
        yield c


@pytest.fixture
def queue() -> str:
    """A queue of this test's own."""
    return f"py-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def running(worker: jobctl.Worker) -> Iterator[jobctl.Worker]:
    """Runs the worker in a thread of its own until the block ends, then
    stops it (gracefully) and waits for it."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(worker.run_async())
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=WAIT)
        assert not thread.is_alive(), "the worker did not stop"
    if failure:
        raise failure[0]


# --- TLS ---------------------------------------------------------------------


@dataclass
class Pki:
    ca: bytes
    server_cert: pathlib.Path
    server_key: pathlib.Path
    ca_path: pathlib.Path
    client_cert: bytes
    client_key: bytes


def _pki(tmp: pathlib.Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobctl test ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(name: x509.Name, server: bool) -> tuple[bytes, bytes]:
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), pem_key(k)

    server_cert, server_key = leaf(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), True)
    client_cert, client_key = leaf(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "tenant-b"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "client"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "worker"),
            ]
        ),
        False,
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    paths = {}
    for name, data in (("ca.pem", ca_pem), ("server.pem", server_cert), ("server.key", server_key)):
        (tmp / name).write_bytes(data)
        paths[name] = tmp / name
    return Pki(ca_pem, paths["server.pem"], paths["server.key"], paths["ca.pem"], client_cert, client_key)


CLIENT_KEY = "py-client-key-0123456789abcdef"
WORKER_KEY = "py-worker-key-0123456789abcdef"


@dataclass
class SecureServer:
    server: Server
    pki: Pki

    @property
    def url(self) -> str:
        return f"https://{self.server.address}"


@pytest.fixture(scope="session")
def secure_server(session_tmp: pathlib.Path) -> Iterator[SecureServer]:
    """An embedded-store server with TLS, API keys (a client and a worker
    key of namespace `tenant-a`) and client certificates (mTLS)."""
    tmp = session_tmp / "secure"
    tmp.mkdir()
    pki = _pki(tmp)
    keys = tmp / "api-keys"
    keys.write_text(f"{CLIENT_KEY} tenant-a client py-client\n{WORKER_KEY} tenant-a worker py-worker\n")
    started = start_server(
        tmp,
        "embedded",
        None,
        "--tls-cert", str(pki.server_cert),
        "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca_path),
        "--api-keys-file", str(keys),
    )  # fmt: skip
    yield SecureServer(started, pki)
    started.process.stop()


# --- a TCP proxy whose connections can be cut ---------------------------------


class Proxy:
    """Forwards 127.0.0.1:<port> to a server; `cut()` drops every open
    connection (as a load balancer or a dying replica would)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.lock:
                    upstream = self.upstream
                up = socket.create_connection(upstream)
            except OSError:
                down.close()
                continue
            with self.lock:
                self.sockets += [down, up]
                self.accepted += 1
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def switch(self, upstream: str) -> None:
        """Sends new connections to another server."""
        host, port = upstream.rsplit(":", 1)
        with self.lock:
            self.upstream = (host, int(port))

    def cut(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def proxy(server: Server) -> Iterator[Proxy]:
    p = Proxy(server.address)
    yield p
    p.close()
