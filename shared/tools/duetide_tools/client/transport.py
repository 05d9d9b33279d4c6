"""HTTP to the tasks API with the standard library: bounded in time and size, no
redirects (the token is for this API alone), every failure a `ClientError`."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from duetide_tools.client.errors import ApiError, ClientError

TIMEOUT_S = 15.0
MAX_ANSWER_BYTES = 16 << 20
"""The most of an answer read: a page of 200 tasks is far less."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then raised as an HTTPError and reported


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class Api:
    url: str
    token: str
    timeout_s: float = TIMEOUT_S

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        return self.call("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, body=body)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)

    def call(
        self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None
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
        deadline = time.monotonic() + self.timeout_s
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as answer:
                return _decode(_read_by(answer, deadline), self.url)
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            raise ClientError(unreachable(self.url, exc.reason)) from None
        except TimeoutError:
            raise ClientError(f"no answer from {self.url} within {self.timeout_s:g} s") from None
        except (OSError, http.client.HTTPException) as exc:  # reset, closed mid-answer
            raise ClientError(unreachable(self.url, exc)) from None
        except ValueError:  # http.client's checks of the request line and headers
            raise ClientError(
                f"the request to {self.url} could not be written as HTTP (the URL or the "
                "token holds characters HTTP cannot carry)"
            ) from None


def _read_by(answer: http.client.HTTPResponse, deadline: float) -> bytes:
    """The answer, read chunk by chunk until `deadline`: the socket's timeout bounds one
    read only, and a server sending a byte every few seconds held the client without end."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_ANSWER_BYTES:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = answer.read1(64 * 1024)
        if not chunk:
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
    if len(raw) > MAX_ANSWER_BYTES:
        raise ClientError(f"the answer from {url} is larger than {MAX_ANSWER_BYTES} bytes")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ClientError(f"{url} did not answer JSON: is it the duetide API?") from None


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
