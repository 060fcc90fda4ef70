"""Errors carry the TF Serving status code so REST and gRPC report the same failure the same way."""

from __future__ import annotations

from enum import Enum


class Code(Enum):
    """tensorflow.error.Code names (values are distinct so no member aliases another)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    INTERNAL = "INTERNAL"

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving's REST API maps the code to."""
        return _HTTP[self]


_HTTP = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.FAILED_PRECONDITION: 400,
    Code.UNAVAILABLE: 503,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.INTERNAL: 500,
}


class ServeError(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(message: str) -> ServeError:
    return ServeError(Code.NOT_FOUND, message)


def invalid(message: str) -> ServeError:
    return ServeError(Code.INVALID_ARGUMENT, message)
