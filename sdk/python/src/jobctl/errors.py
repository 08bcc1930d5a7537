"""Errors: every failed call raises a `JobctlError` subclass that keeps the
gRPC status code, so callers can tell "no such job" from "bad input" from
"retry later" without touching grpc."""

from __future__ import annotations

import grpc


class JobctlError(Exception):
    """A call the server refused, or one that did not get through."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = "") -> None:
        super().__init__(f"{code.name.lower()}: {message}" if message else code.name.lower())
        self.code = code
        self.message = message
        self.request_id = request_id
        """The `x-request-id` the server answered with, when it did."""


class NotFound(JobctlError):
    """No such job (or one of another namespace)."""


class InvalidArgument(JobctlError):
    """Bad input; the message names the field."""


class AlreadyExists(JobctlError):
    """An idempotency key reused for a different request."""


class FailedPrecondition(JobctlError):
    """A stale lease token or an illegal transition."""


class ResourceExhausted(JobctlError):
    """Over a size limit, or a watcher cut off for not reading."""


class Unavailable(JobctlError):
    """The server or its Redis is unreachable or overloaded: retry."""


class Unauthenticated(JobctlError):
    """No valid credentials."""


class PermissionDenied(JobctlError):
    """The caller's role may not call this RPC."""


class DeadlineExceeded(JobctlError):
    """No answer in time."""


_BY_CODE: dict[grpc.StatusCode, type[JobctlError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def status_code(error: BaseException) -> grpc.StatusCode:
    """The status code of a failed grpc call (sync or asyncio)."""
    code = getattr(error, "code", None)
    if callable(code):
        value = code()
        if isinstance(value, grpc.StatusCode):
            return value
    return grpc.StatusCode.UNKNOWN


def from_rpc(error: BaseException) -> JobctlError:
    """The `JobctlError` of a failed grpc call."""
    code = status_code(error)
    details = getattr(error, "details", None)
    message = str(details() or "") if callable(details) else str(error)
    request_id = ""
    for getter in ("trailing_metadata", "initial_metadata"):
        read = getattr(error, getter, None)
        pairs = read() if callable(read) else None
        for key, value in pairs or ():
            if key == "x-request-id" and isinstance(value, str):
                request_id = value
    return _BY_CODE.get(code, JobctlError)(code, message, request_id)
