"""HTTP to the tasks API with the standard library: bounded in time and size, no
redirects (the token is for this API alone), every failure a `ClientError`."""

from __future__ import annotations

import functools
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from duetide.deadline import Deadline
from duetide_tools.client.errors import ApiError, ClientError, NotSent

TIMEOUT_S = 15.0
RESEND_WAITS = (0.0, 0.5, 1.0, 2.0)
"""The waits before each resend of a creating request whose answer was lost."""
UNKNOWN_OUTCOME = frozenset({502, 503, 504})
"""Answers after which a create may or may not have been made: a gateway that lost the
API's answer, or the API's own 503 (a database connection lost during the commit says
so; others were refused before any write). Each is sent again with the same key."""
MAX_ANSWER_BYTES = 16 << 20
"""The most of an answer read: a page of 200 tasks is far less."""


_current = threading.local()
"""The exchange under way in this thread: its `Deadline` watches each socket it opens."""


class _Watched(urllib.request.AbstractHTTPHandler):
    """Opens connections whose sockets the current exchange's deadline watches."""

    def do_open(self, http_class: Any, req: Any, **http_conn_args: Any) -> Any:
        return super().do_open(_watched(http_class), req, **http_conn_args)


@functools.cache
def _watched(http_class: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
    class Watched(http_class):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = _watched_connection

    return Watched


def _watched_connection(*args: Any, **kwargs: Any) -> socket.socket:
    sock = socket.create_connection(*args, **kwargs)
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)
    return sock


class _HTTPHandler(_Watched, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_Watched, urllib.request.HTTPSHandler):
    pass


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then raised as an HTTPError and reported


_OPENER = urllib.request.build_opener(_NoRedirects, _HTTPHandler, _HTTPSHandler)


@dataclass(frozen=True)
class Api:
    url: str
    token: str
    timeout_s: float = TIMEOUT_S

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        return self.call("GET", path, query=query)

    def page(self, path: str, query: dict[str, Any] | None = None, of: type = dict) -> Any:
        """A GET of a list: an object whose `items` is a list of `of` (objects, or the
        times of a forecast)."""
        answer = self.get(path, query)
        items = answer.get("items") if isinstance(answer, dict) else None
        if not isinstance(items, list) or not all(isinstance(item, of) for item in items):
            raise ClientError(_not_the_api(self.url))
        return answer

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, body=body)

    def create(self, path: str, body: Any) -> Any:
        """A POST that makes something, sent with an `Idempotency-Key`: when its answer
        is lost (the connection reset or cut, or no answer in time), the request may or
        may not have been made, so it is sent again with the key, and the server answers
        that as it answered the first instead of making a second. Again after
        `RESEND_WAITS`: a local function that crashed is back in about 3 s, and a resend
        at once met its refused port. If none gets an answer, the error says the request
        may have been carried out."""
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        outcome = self._try_create(path, body, headers)
        if not isinstance(outcome, ClientError):
            return outcome
        reached = not isinstance(outcome, NotSent)
        resending = time.monotonic()
        for n, wait in enumerate(RESEND_WAITS):
            wait = max(wait, _seconds(getattr(outcome, "retry_after", "")))
            if n and time.monotonic() - resending + wait > self.timeout_s:
                break  # an API that answers nothing: one resend, not one timeout each
            time.sleep(wait)
            outcome = self._try_create(path, body, headers)
            if not isinstance(outcome, ClientError):
                return outcome
            reached = reached or not isinstance(outcome, NotSent)
        if not reached:  # every try refused: nothing was made, nothing to look for
            raise outcome
        raise ClientError(
            f"{outcome}; the request may have been carried out before its answer was lost: "
            "look (`duetide task ls`) before sending it again"
        )

    def _try_create(self, path: str, body: Any, headers: dict[str, str]) -> Any:
        """The answer, or the `ClientError` that leaves the outcome unknown (returned, to
        resend); any other refusal is raised. A 503 was raised at once, and the user,
        told to send it again with the same Idempotency-Key, which the CLI had made and
        not shown, made the task twice (an audit, 2026-12-07)."""
        try:
            return self.call("POST", path, body=body, headers=headers)
        except ApiError as refused:
            if refused.status not in UNKNOWN_OUTCOME:
                raise
            return refused
        except ClientError as lost:
            return lost

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)

    def call(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The decoded JSON answer (None for a 204), or `ApiError` / `ClientError`."""
        url = self.url.rstrip("/") + path
        given = {k: v for k, v in (query or {}).items() if v is not None}
        if given:
            url += "?" + urllib.parse.urlencode(given)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        with Deadline(self.timeout_s) as deadline:
            _current.deadline = deadline
            try:
                answer = self._exchange(request)
            finally:
                _current.deadline = None
                # What a cut leaves is an error or a part that parses as a whole (headers
                # ended early, an empty body): either way the cause is the time.
                if deadline.expired:
                    raise ClientError(f"no answer from {self.url} within {self.timeout_s:g} s")
        return answer

    def _exchange(self, request: urllib.request.Request) -> Any:
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as answer:
                return _decode(_read(answer), self.url)
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            refused = isinstance(exc.reason, ConnectionRefusedError)
            raise (NotSent if refused else ClientError)(unreachable(self.url, exc.reason)) from None
        except TimeoutError:
            raise ClientError(f"no answer from {self.url} within {self.timeout_s:g} s") from None
        except (OSError, http.client.HTTPException) as exc:  # reset, closed mid-answer
            raise ClientError(unreachable(self.url, exc)) from None
        except ValueError:  # http.client's checks of the request line and headers
            raise ClientError(
                f"the request to {self.url} could not be written as HTTP (the URL or the "
                "token holds characters HTTP cannot carry)"
            ) from None


def _read(answer: http.client.HTTPResponse) -> bytes:
    """The answer, up to one byte past MAX_ANSWER_BYTES; an answer that ends before its
    Content-Length is an error (http.client's `read1` returns it short without one)."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_ANSWER_BYTES:
        chunk = answer.read1(64 * 1024)
        if not chunk:
            if answer.length:  # bytes promised and never sent
                raise http.client.IncompleteRead(b"".join(chunks), answer.length)
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def unreachable(url: str, reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return (
            f"cannot connect to the duetide API at {url} (connection refused): is it "
            "running? `scripts/up` starts it locally; DUETIDE_URL or `duetide login` "
            "points elsewhere"
        )
    if isinstance(reason, TimeoutError):
        return f"no answer from {url} in time"
    return f"cannot reach the duetide API at {url}: {reason}"


def _decode(raw: bytes, url: str) -> Any:
    """The answer's JSON object: the API answers nothing else (or nothing, a 204). A
    list or a number from something else at the URL was an "unexpected KeyError"."""
    if len(raw) > MAX_ANSWER_BYTES:
        raise ClientError(f"the answer from {url} is larger than {MAX_ANSWER_BYTES} bytes")
    if not raw:
        return None
    try:
        answer = json.loads(raw)
    except ValueError:
        raise ClientError(f"{url} did not answer JSON: is it the duetide API?") from None
    if not isinstance(answer, dict):
        raise ClientError(_not_the_api(url))
    return answer


def _not_the_api(url: str) -> str:
    return f"{url} did not answer as the duetide API does: is DUETIDE_URL the duetide API?"


def _api_error(exc: urllib.error.HTTPError) -> ApiError:
    try:
        raw = exc.read(MAX_ANSWER_BYTES)
        error = json.loads(raw)["error"]
        code, message = str(error["code"]), str(error["message"])
        details = error.get("details")
    except (ValueError, KeyError, TypeError, OSError):
        code, message, details = "http_error", f"the server answered {exc.code} {exc.reason}", None
    retry_after = exc.headers.get("Retry-After", "") if exc.headers else ""
    return ApiError(exc.code, code, message, details, retry_after)


def _seconds(retry_after: str) -> float:
    """A Retry-After in seconds (0 when absent or a date), at most a resend's whole bound."""
    digits = retry_after.isascii() and retry_after.isdigit()
    return min(float(retry_after), TIMEOUT_S) if digits else 0.0
