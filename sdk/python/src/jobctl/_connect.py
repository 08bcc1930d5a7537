"""Where the server is and how to reach it: the target, TLS, the bearer
token and the metadata of every call."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from jobctl import _trace

DEFAULT_SERVER = "http://127.0.0.1:50051"

Pem = bytes | str | os.PathLike[str]
"""PEM data (bytes, or text starting with `-----BEGIN`) or the path of a PEM file."""


def read_pem(value: Pem) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    return pathlib.Path(value).read_bytes()


@dataclass(frozen=True)
class TLS:
    """TLS settings: the CA that signs the server's certificate (default:
    the system's roots), a client certificate and key for mTLS, and the name
    the server's certificate carries when it differs from the host."""

    ca_cert: Pem | None = None
    client_cert: Pem | None = None
    client_key: Pem | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca_cert) if self.ca_cert is not None else None,
            private_key=read_pem(self.client_key) if self.client_key is not None else None,
            certificate_chain=read_pem(self.client_cert) if self.client_cert is not None else None,
        )


@dataclass(frozen=True)
class Connection:
    """Everything a channel needs; shared by the clients and the worker."""

    target: str
    tls: TLS | None
    metadata: tuple[tuple[str, str], ...]
    options: tuple[tuple[str, Any], ...]

    @classmethod
    def make(
        cls,
        server: str,
        *,
        token: str | None,
        tls: TLS | bool | None,
        metadata: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> Connection:
        target, scheme_tls = parse_server(server)
        if tls is True or (tls is None and scheme_tls):
            tls = TLS()
        elif tls is False:
            tls = None
        if scheme_tls is False and tls is not None:
            raise ValueError(f"{server!r} is http://: use https:// (or no scheme) with TLS")
        pairs = list(metadata.items() if isinstance(metadata, Mapping) else (metadata or ()))
        for key, value in pairs:
            if key != key.lower() or not key or key.endswith("-bin"):
                raise ValueError(f"metadata key {key!r} must be lowercase ASCII (and not binary)")
            if not all(" " <= c <= "~" or c == "\t" for c in value):
                raise ValueError(f"metadata value of {key!r} is not printable ASCII")
        if token is not None:
            token = token.strip()
            if not token or not all("!" <= c <= "~" for c in token):
                raise ValueError("the bearer token must be printable ASCII without spaces")
            pairs.append(("authorization", f"Bearer {token}"))
        opts = list(options)
        if tls is not None and tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
        return cls(target, tls, tuple(pairs), tuple(opts))

    def call_metadata(self, extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str | bytes], ...]:
        """The metadata of one call: the configured entries, the current
        span's trace context, then `extra`."""
        metadata = list(self.metadata)
        _trace.inject(metadata)
        metadata.extend(extra)
        return tuple(metadata)

    def channel(self) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(self.target, options=self.options)
        return grpc.secure_channel(self.target, self.tls.credentials(), options=self.options)

    def aio_channel(self) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.tls.credentials(), options=self.options)


def parse_server(server: str) -> tuple[str, bool | None]:
    """`http://host:port`, `https://host:port` or `host:port` as a grpc
    target, and whether the scheme asks for TLS (None: no scheme)."""
    server = server.strip()
    scheme: bool | None = None
    for prefix, tls in (("http://", False), ("https://", True)):
        if server.startswith(prefix):
            server, scheme = server[len(prefix) :], tls
            break
    server = server.rstrip("/")
    if not server or "/" in server or "://" in server:
        raise ValueError(f"{server!r} is not a server address (host:port, http:// or https://)")
    if ":" not in server.rsplit("]", 1)[-1]:
        server += ":443" if scheme else ":50051"
    return server, scheme


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The connection settings in the `JOBCTL_*` variables the CLI, the Rust
    SDK and the Helm chart use: `JOBCTL_SERVER`, `JOBCTL_TOKEN` or
    `JOBCTL_TOKEN_FILE`, `JOBCTL_CA_CERT`, `JOBCTL_CLIENT_CERT` with
    `JOBCTL_CLIENT_KEY`, `JOBCTL_TLS_DOMAIN`."""
    env = os.environ if environ is None else environ
    get: Callable[[str], str | None] = lambda name: (env.get(name) or "").strip() or None
    token = get("JOBCTL_TOKEN")
    token_file = get("JOBCTL_TOKEN_FILE")
    if token and token_file:
        raise ValueError("set JOBCTL_TOKEN or JOBCTL_TOKEN_FILE, not both")
    if token_file:
        token = pathlib.Path(token_file).read_text().strip()
    cert, key = get("JOBCTL_CLIENT_CERT"), get("JOBCTL_CLIENT_KEY")
    if (cert is None) != (key is None):
        raise ValueError("JOBCTL_CLIENT_CERT and JOBCTL_CLIENT_KEY go together")
    ca, domain = get("JOBCTL_CA_CERT"), get("JOBCTL_TLS_DOMAIN")
    tls = None
    if ca or cert or domain:
        tls = TLS(ca_cert=ca, client_cert=cert, client_key=key, server_name=domain)
    return {"server": get("JOBCTL_SERVER") or DEFAULT_SERVER, "token": token, "tls": tls}
