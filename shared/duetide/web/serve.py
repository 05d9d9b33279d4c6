"""`python -m duetide.web.serve --target tasks --source functions/tasks/main.py`: serve one
function with bounded requests.

functions-framework's own server (gunicorn's gthread worker) takes a thread per
connection before the request is read and sets `limit_request_line=0`, so a dozen
clients sending their bodies slowly, or a few 16 MiB request lines, starve everyone
else (bench/results/http_edge.md). Its options are hard-coded in a BaseApplication
(GUNICORN_CMD_ARGS is not read). Here the same Flask app (functions_framework.create_app,
so routing, error handlers and the function itself are unchanged) runs behind uvicorn:
requests are read on the event loop, where a slow client costs a socket and a buffer,
not a thread, and a request reaches the THREADS worker threads only once it is whole.

Every request is bounded, and every refusal is JSON `{"error": {...}}`:
- the request line and headers together: DUETIDE_HTTP_MAX_HEAD_BYTES (431);
- the time to send them, and then the body: DUETIDE_HTTP_READ_TIMEOUT_S each (408);
- the body: DUETIDE_MAX_BODY_BYTES, refused from Content-Length or while reading (413);
- a chunked body's framing (extensions, trailer fields): the head limit, besides 32 bytes
  a chunk for its size line (431); trailer fields are never merged into the headers;
- the answer: a client that stops taking it (its send buffer stays full) for
  DUETIDE_HTTP_READ_TIMEOUT_S is dropped, a stream's too;
- open connections: DUETIDE_HTTP_MAX_CONNECTIONS, more get 503 and are closed;
- malformed HTTP, and a Host header missing (HTTP/1.1), repeated or not host[:port]:
  400; a version other than 1.0 and 1.1 (a request line without one,
  HTTP/2.0 in plain text): 505.

Answers are sent whole with their length, except a `text/event-stream` one (the activity
stream), which is sent chunk by chunk as the app yields it and closed once the client
has gone (`WsgiBridge._stream`); the app bounds how many of those a process keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any, NoReturn

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from duetide import logs, telemetry
from duetide.config import ConfigError, get_settings
from duetide.errors import (
    ApiError,
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    VersionNotSupported,
    error_body,
)
from duetide.web.stopping import STOPPING

log = logging.getLogger("duetide.web.serve")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Scope = dict[str, Any]
LINGER_S, LINGER_MAX_BYTES = 2.0, 256 * 1024
EXIT_FLUSH_S = 3.0
"""How long a stopping process waits for the telemetry exporters (a collector that hangs
must not hold the stop: what is left is lost)."""
CHUNK_LINE_BYTES = 32
"""What a chunk's size line and CRLFs may take; its extensions and the trailer fields
share the head limit."""
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(:[0-9]{1,5})?")
"""RFC 9110's `Host = uri-host [ ":" port ]` (RFC 3986's IP literal or reg-name), not
empty: the app builds absolute URLs from it (a calendar feed's, shown once)."""


def _host_problem(hosts: list[bytes], version: str) -> str | None:
    """Why a request's Host fields are refused (RFC 9112, 3.2: 400 for an HTTP/1.1
    request without one, and for any with two or an invalid one): they were served, and
    `POST /calendar/feed-token` answered `http:/calendar/...` and revoked the old URL."""
    if not hosts:
        return "an HTTP/1.1 request needs a Host header" if version == "1.1" else None
    if len(hosts) > 1:
        return "a request has one Host header, not several"
    if not _HOST.fullmatch(hosts[0]):
        return "the Host header is not a host name or address, with an optional :port"
    return None


def error_bytes(err: ApiError) -> bytes:
    return json.dumps(err.body(), separators=(",", ":")).encode()


def head_too_large(limit: int) -> HeadersTooLarge:
    return HeadersTooLarge(f"the request line and headers are larger than {limit} bytes")


# --- the connection: request head, its deadline, the number of connections -------------


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools: llhttp, in C) with a deadline and a size
    limit for the request head, a cap on open connections, and JSON for its own refusals
    (uvicorn answers them in plain text).

    The head deadline runs from the connection, or from the first byte of a request on
    a kept-alive connection, until the head is complete: uvicorn itself only times idle
    kept-alive connections, so a client trickling header bytes would hold its connection
    forever. llhttp keeps a header it has not finished, and uvicorn the ones it has,
    without a limit, so the head is measured here: every read while a head is incomplete
    counts whole (a read that also ends the previous request's body counts that too: the
    bound errs on the strict side by at most one read), and a complete head by its parts
    (`WsgiBridge._check_head`). The body's deadline is the bridge's.

    httptools replaced h11 (pure Python) here, and uvloop asyncio's loop: a request that
    does no work (`GET /healthz`) costs 0.39 ms of CPU instead of 0.63, `GET /tasks` 1.31
    instead of 1.53 (bench/results/http_edge.md).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._head_timeout_s = settings.duetide_http_read_timeout_s
        self._max_connections = settings.duetide_http_max_connections
        self._max_head_bytes = settings.duetide_http_max_head_bytes
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._in_head = False  # a request's first byte came, its head is not complete
        self._head_bytes = 0
        self._in_body = False  # its head is complete, its body (and trailers) not yet
        self._framing_bytes = 0  # of a chunked body: extensions, trailer fields
        self._read_taken = 0  # bytes of the read under way that are body, head or chunk line
        self._running: Any = None  # the cycle whose app runs (one at a time, in order)
        self._refused = False
        self._refusal: ApiError | None = None  # decided, behind the answers owed before it
        self._stopped_by: ApiError | None = None
        self._eof = False
        self._dropped = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self._refuse(
                Unavailable(
                    "the server has too many open connections; retry",
                    headers={"Retry-After": "1"},
                )
            )
            return
        self._start_head_timer()  # the first request's head is due

    def connection_lost(self, exc: Exception | None) -> None:
        """Every request of the connection not answered yet reads a disconnect: uvicorn
        tells only the latest one read (`self.cycle`), so a stream whose client had sent
        a request behind it and left went on, its slot held until a heartbeat's write
        failed, 30-45 s later (an audit, 2026-12-07)."""
        self._stop_head_timer()
        self._stop_write_timer()
        for cycle in (self._running, *(queued[0] for queued in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            if self._refusal is not None:  # not yet sent: nothing more is read until it is
                self.transport.pause_reading()
                return
            self._dropped += len(data)  # the rest of a refused request, read so the
            if self._dropped > LINGER_MAX_BYTES:  # answer is not reset
                self.transport.close()
            return
        self._read_taken = 0
        super().data_received(data)
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head_bytes:
                self._refuse(head_too_large(self._max_head_bytes))
        elif self._in_body:  # the rest of the read: framing (that of an earlier message too)
            self._framing_bytes += max(0, len(data) - self._read_taken)
            if self._framing_bytes > self._max_head_bytes:
                self._refuse(self._framing_too_large())

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio.Protocol's contract
        """The client closed its side. A request it sent whole is still answered (then the
        connection closes); one it left incomplete has no answer to wait for, nor does a
        stream under way: its client has gone (kept open, a closed EventSource held its
        stream's slot until a write failed, minutes later). uvicorn closed at once: the
        request ran and its answer was lost."""
        self._eof = True
        cycle = self._running  # not `self.cycle`: a request read behind a stream is that
        streaming = cycle is not None and cycle.response_started and not cycle.response_complete
        incomplete = self._in_head or self._in_body or streaming
        return not incomplete and not self._owes_nothing()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        self._in_body = False
        self._start_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_body:
            super().on_header(name, value)
            return
        # A trailer field, after a chunked body: bounded, and never merged into the
        # headers, where the app took it for one (an `Authorization` sent after the body
        # passed for the request's; RFC 9110, 6.5.1). llhttp has already read it whole.
        if self._framing_bytes + len(name) + len(value) + 4 > self._max_head_bytes:
            self._stopped_by = self._framing_too_large()
            raise _StopParsing

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):  # llhttp reads a line without one as 0.9
            self._stopped_by = VersionNotSupported(f"HTTP/{version} is not served: use 1.1")
            raise _StopParsing
        host_problem = _host_problem([v for n, v in self.headers if n == b"host"], version)
        if host_problem:
            self._stopped_by = BadRequest(host_problem)
            raise _StopParsing
        self._in_body, self._framing_bytes = True, 0
        # Its size as sent, give or take optional spaces (a head begun in an earlier read
        # is taken whole here: the count errs towards leniency, by one head at most).
        self._read_taken += len(self.url) + 32
        self._read_taken += sum(len(name) + len(value) + 4 for name, value in self.headers)
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        self._read_taken += CHUNK_LINE_BYTES

    def on_body(self, body: bytes) -> None:
        self._read_taken += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._send_refusal_when_due()
        if self._eof and self._refusal is None and self._owes_nothing():
            self.transport.close()  # the client has sent all it will

    def pause_writing(self) -> None:
        """The client has stopped taking the answer: it has the read timeout to go on."""
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self._head_timeout_s, self._write_stalled)

    def resume_writing(self) -> None:
        self._stop_write_timer()
        super().resume_writing()

    def _write_stalled(self) -> None:
        """Drop it: a client sending requests and reading no answer held its connection
        (and a slot of the cap) for ever, and a close would wait for the flush."""
        self._write_timer = None
        log.warning(
            "a client stopped reading its answer; dropped",
            extra={"event": "http.write_stalled"},
        )
        self.transport.abort()

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _framing_too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            "the chunked body's extensions and trailer fields are larger than "
            f"{self._max_head_bytes} bytes"
        )

    def shutdown(self) -> None:
        """uvicorn stopping (a signal): each connection is told so, in every worker process
        (`stopping`: the streams and long-polls end now, not at the grace's end)."""
        STOPPING.set()
        if self._refused:  # answered and lingering: the parser may be in its error state
            self.transport.close()
            return
        super().shutdown()

    def _start_head_timer(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            self._refuse(RequestTimeout("the request head was not received in time"))
        elif self.cycle is None:
            self.transport.close()  # not a byte sent: nothing to answer

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn for any head llhttp refuses, and when a callback stopped it."""
        stopped, self._stopped_by = self._stopped_by, None
        self._refuse(stopped or BadRequest("malformed HTTP request"))

    def _refuse(self, err: ApiError) -> None:
        """Answer `err` and close, once the answers owed before it on this connection
        (pipelined requests read before the refused one) have gone: written at once, it
        passed for the answer of the first, and the others were lost. A refused request
        whose head was complete is not answered by the app."""
        self._stop_head_timer()
        if self._refused or self.transport.is_closing():
            return
        self._refused, self._refusal = True, err
        if self._in_body and self.cycle is not None:
            self._drop(self.cycle)
        self._send_refusal_when_due()

    def _drop(self, cycle: Any) -> None:
        """Take a request the edge answers away from the app: queued, it never runs;
        running, it reads a disconnect and sends nothing."""
        for queued in list(self.pipeline):
            if queued[0] is cycle:
                self.pipeline.remove(queued)
        cycle.disconnected = True
        cycle.message_event.set()

    def _owes_nothing(self) -> bool:
        running = self._running
        idle = running is None or running.response_complete or running.disconnected
        return idle and not self.pipeline

    def _send_refusal_when_due(self) -> None:
        """Write the refusal decided, then close after a short linger.

        Closing at once with unread bytes would make the kernel reset the connection,
        and the client could lose the answer before reading it; so the rest is read and
        dropped for LINGER_S or LINGER_MAX_BYTES, whichever comes first (the client sees
        the end of our data at once).
        """
        err = self._refusal
        if err is None or self.transport.is_closing():
            return
        if not self._owes_nothing():
            self.transport.pause_reading()
            return
        self._refusal = None
        body = error_bytes(err)
        reason = HTTPStatus(err.status).phrase
        head = (
            f"HTTP/1.1 {err.status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in err.headers.items())
            + "\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)


class _StopParsing(Exception):
    """Raised in a parser callback: llhttp stops there, and uvicorn, taking it for a
    parse error, calls `send_400_response`, which answers `EdgeProtocol._stopped_by`."""


# --- the request: body with its limits, then the WSGI app on a worker thread ------------


class WsgiBridge:
    """An ASGI app that reads a whole request within its limits, then runs the WSGI app
    (functions-framework's Flask app) on one of `threads` threads."""

    def __init__(self, app: WsgiApp, threads: int) -> None:
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")
        settings = get_settings()
        self.max_body_bytes = settings.duetide_max_body_bytes
        self.body_timeout_s = settings.duetide_http_read_timeout_s
        self.max_head_bytes = settings.duetide_http_max_head_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets are not served
            return
        try:
            self._check_head(scope)
            body = await self._read_body(scope, receive)
        except ApiError as err:
            await _send(send, err.status, _error_headers(err), error_bytes(err))
            return
        except ConnectionAbortedError:
            return  # the client went away: nobody to answer
        environ = wsgi_environ(scope, body)
        loop = asyncio.get_running_loop()
        status, headers, payload = await loop.run_in_executor(
            self.executor, run_wsgi, self.app, environ
        )
        if isinstance(payload, Streamed):
            await self._stream(receive, send, status, headers, payload)
        else:
            await _send(send, status, headers, payload)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """uvicorn's start and stop, in every worker. At the stop, once the requests are
        done, what the telemetry exporters hold is sent (bounded by EXIT_FLUSH_S): uvicorn
        ends a graceful shutdown by raising the signal again, which kills the process
        before the SDK's own flush at exit, and every scale-down lost the last spans and
        up to a minute of metrics (an audit, 2026-12-07)."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(telemetry.flush, EXIT_FLUSH_S)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: Streamed,
    ) -> None:
        """Send each chunk as the app yields it (chunked; the stream of `GET
        /activity/stream`), pulling one chunk at a time on a worker thread, and stop
        pulling once the client has gone: the app's iterator is then closed, which frees
        what it holds. An empty chunk is not sent; it lets the client's going be seen."""
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            while not gone.is_set():
                chunk = await loop.run_in_executor(self.executor, body.next_chunk)
                if chunk is None:
                    break
                if chunk and not gone.is_set():
                    # A client that stops reading stalls this send until the edge drops
                    # it (`EdgeProtocol._write_stalled`); the send then returns.
                    message = {"type": "http.response.body", "body": chunk, "more_body": True}
                    await send(message)
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await loop.run_in_executor(self.executor, body.close)

    def _check_head(self, scope: Scope) -> None:
        """A complete head, by its parts (`EdgeProtocol` bounds one still incomplete)."""
        size = len(scope["method"]) + len(scope["raw_path"]) + len(scope["query_string"]) + 12
        size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if size > self.max_head_bytes:
            raise head_too_large(self.max_head_bytes)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(f"request body is larger than {self.max_body_bytes} bytes")
        deadline = time.monotonic() + self.body_timeout_s
        body = bytearray()
        more = True
        while more:
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.001))
            except TimeoutError:
                raise RequestTimeout("the request body was not received in time") from None
            if message["type"] == "http.disconnect":
                raise ConnectionAbortedError
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                raise PayloadTooLarge(f"request body is larger than {self.max_body_bytes} bytes")
            more = message.get("more_body", False)
        return bytes(body)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value)  # llhttp has checked it is digits
    return None


def _error_headers(err: ApiError) -> list[tuple[bytes, bytes]]:
    headers = {"content-type": "application/json", "connection": "close", **err.headers}
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """The whole answer at once, its length named (without it uvicorn would chunk it);
    a 204 or 304 names none, as RFC 9110 (8.6) asks."""
    if status in (204, 304):
        headers = [(name, value) for name, value in headers if name != b"content-length"]
    elif not any(name == b"content-length" for name, _ in headers):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def wsgi_environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The PEP 3333 environ of a whole request; the body is in memory, its length known."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "REMOTE_ADDR": client[0] if client else "",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue  # the body is whole: its length is the one above
        key = "CONTENT_TYPE" if name == "CONTENT_TYPE" else f"HTTP_{name}"
        value = raw_value.decode("latin-1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class Streamed:
    """An answer the app streams: its iterator, pulled a chunk at a time (`WsgiBridge`)."""

    def __init__(self, result: Iterable[bytes]) -> None:
        self._result = result
        self._chunks = iter(result)

    def next_chunk(self) -> bytes | None:
        """The next chunk, or None at the end (or when the app fails: the status is sent)."""
        try:
            return next(self._chunks, None)
        except Exception:
            log.exception("a streamed answer failed", extra={"event": "http.unhandled"})
            return None

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("closing a streamed answer failed", extra={"event": "http.unhandled"})


def run_wsgi(
    app: WsgiApp, environ: dict[str, Any]
) -> tuple[int, list[tuple[bytes, bytes]], bytes | Streamed]:
    """Call the WSGI app and collect its whole answer (the API's answers are small), unless
    the app streams it: a `text/event-stream` answer is returned as `Streamed`."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None  # the legacy write() callable; Flask does not use it

    try:
        result = app(environ, start_response)
        status, headers = started
        streamed = any(
            k.lower() == "content-type" and v.startswith("text/event-stream") for k, v in headers
        )
        payload: bytes | Streamed
        if streamed:
            payload = Streamed(result)
        else:
            try:
                payload = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
    except Exception:
        log.exception(
            "the WSGI app failed outside its error handlers", extra={"event": "http.unhandled"}
        )
        body = json.dumps(error_body("internal", "internal error"), separators=(",", ":")).encode()
        return 500, [(b"content-type", b"application/json")], body
    encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return int(status.split(" ", 1)[0]), encoded, payload


# --- start-up -----------------------------------------------------------------------------


def app_from_env() -> WsgiBridge:
    """The ASGI app of the function FUNCTION_TARGET in FUNCTION_SOURCE (uvicorn's factory)."""
    import functions_framework

    target, source = os.environ["FUNCTION_TARGET"], os.environ["FUNCTION_SOURCE"]
    try:
        app = functions_framework.create_app(target, source)
    except ConfigError as exc:  # what the function checks as it starts (its secrets)
        _refuse(target, exc)
    threads = int(os.environ.get("THREADS") or (os.cpu_count() or 1) * 4)
    return WsgiBridge(app, threads)


def _refuse(function: str, exc: ConfigError) -> NoReturn:
    """Stop the start on a bad variable, named: the process's last word is a log line as
    any other (JSON, no traceback), its exit uvicorn's for a failed start."""
    logs.setup(function)
    log.error(str(exc), extra={"event": "config.invalid"})
    sys.exit(STARTUP_FAILURE)


STARTUP_FAILURE = 3
"""uvicorn's exit status for a start that failed (`uvicorn.server.STARTUP_FAILURE`)."""


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m duetide.web.serve", description=__doc__)
    env = os.environ.get
    cli.add_argument(
        "--target", default=env("FUNCTION_TARGET"), required=not env("FUNCTION_TARGET")
    )
    cli.add_argument("--source", default=env("FUNCTION_SOURCE", "main.py"))
    cli.add_argument("--host", default=env("HOST", "0.0.0.0"))
    cli.add_argument("--port", type=int, default=int(env("PORT", "8080")))
    cli.add_argument(
        "--fd",
        type=int,
        help="serve this inherited listening socket instead of binding --host/--port "
        "(duetide up holds each function's socket)",
    )
    return cli


def main(argv: list[str] | None = None) -> None:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    args = parser().parse_args(argv)
    # The factory reads these, in this process or in each worker process.
    os.environ.update(FUNCTION_TARGET=args.target, FUNCTION_SOURCE=os.path.abspath(args.source))
    try:
        settings = get_settings()  # a bad variable stops us here, named
    except ConfigError as exc:
        _refuse(args.target, exc)
    logs.setup(args.target, settings.duetide_log_level)  # uvicorn's supervisor's lines too
    config = uvicorn.Config(
        "duetide.web.serve:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=int(os.environ.get("WORKERS") or 1),
        http=EdgeProtocol,
        loop="auto",  # uvloop where it is installed (not on Windows), else asyncio's
        timeout_keep_alive=5,
        timeout_graceful_shutdown=25,
        lifespan="on",  # WsgiBridge._lifespan
        interface="asgi3",
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_config=None,
        log_level=os.environ.get("GUNICORN_LOG_LEVEL", "warning"),
    )
    # uvicorn's own `fd` takes the descriptor for a Unix socket; this one is TCP, its
    # family read from the descriptor.
    listener = config.bind_socket() if args.fd is None else socket.socket(fileno=args.fd)
    server = uvicorn.Server(config)
    if config.workers > 1:
        supervisor = Multiprocess(config, sockets=[listener])
        supervisor.run()
        if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
            sys.exit(STARTUP_FAILURE)  # a worker's start failed: the supervisor stopped
    else:
        server.run(sockets=[listener])
        if not server.started:
            sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
