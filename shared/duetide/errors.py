"""Errors are values with a code: one hierarchy, mapped to the JSON error shape in http.py."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error a client caused or can act on; `status` and `code` are the public contract."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """`{"error": {"code", "message", "details"}}`: `details` is always there, a list
        (`[{"field", "message"}, ...]` for a 422, else empty), so a client reads one shape."""
        return error_body(self.code, self.message, self.details)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one error shape, also for answers made without an ApiError (500, the framework's)."""
    return {"error": {"code": code, "message": message, "details": details or []}}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class InvalidCloudEvent(ApiError):
    status, code = 400, "invalid_cloudevent"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str = "a valid bearer token is required", **kwargs: Any):
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="duetide"'})
        super().__init__(message, **kwargs)


class Forbidden(ApiError):
    """Who sent the request is known, and may not do this (a command for another user)."""

    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class RequestTimeout(ApiError):
    status, code = 408, "request_timeout"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Gone(ApiError):
    status, code = 410, "gone"


class PreconditionFailed(ApiError):
    """An If-Match that no longer names the resource as it is: someone changed it since."""

    status, code = 412, "precondition_failed"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(ApiError):
    status, code = 422, "validation_failed"

    @classmethod
    def of(cls, field: str | None, message: str) -> ValidationFailed:
        """One invalid field (None: the body as a whole), named in the message and in
        `details`, where a client finds it as for any field pydantic refuses."""
        return cls(
            f"invalid value for {field or 'body'}: {message}",
            details=[{"field": field, "message": message}],
        )


class QueryTooBroad(ApiError):
    """A read that would take longer than its bound: the same request would again, so
    not a 503; the message says how to narrow it."""

    status, code = 422, "query_too_broad"


class HeadersTooLarge(ApiError):
    status, code = 431, "headers_too_large"


class VersionNotSupported(ApiError):
    status, code = 505, "http_version_not_supported"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"


class Unavailable(ApiError):
    """Transient trouble (database busy or down): the caller should retry."""

    status, code = 503, "unavailable"
