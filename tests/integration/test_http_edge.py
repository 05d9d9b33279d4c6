"""The served functions' HTTP edge over real sockets: `python -m duetide.web.serve` (what the
image and the local stack run) on loopback, fed raw bytes.

Request heads, bodies, read times and connections are bounded, and every refusal,
including those made before the function runs, is JSON `{"error": {...}}` (issue 10,
items 7 and 11). Slow clients do not hold up others.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from duetide.config import get_settings
from duetide.storage import migrate
from duetide.web.auth import issue_local_token
from tests.support import serving_function, wait_for

ROOT = Path(__file__).resolve().parents[2]
SECRET = "http-edge-test-secret-of-enough-length"
MAX_BODY = 4096
MAX_HEAD = 16_384


@contextmanager
def served(home: Path, **settings: str) -> Iterator[int]:
    """The tasks function under duetide.web.serve on a free loopback port, on SQLite."""
    home.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{home / 'duetide.db'}"
    migrate.upgrade(url)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DUETIDE_HOME": str(home),
        "DUETIDE_JWT_SECRET": SECRET,
        "KAFKA_BOOTSTRAP_SERVERS": "",
        "DUETIDE_MAX_BODY_BYTES": str(MAX_BODY),
        "THREADS": "2",
        **settings,
    }
    with serving_function(home, env) as port:
        yield port


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A server that gives a request head, then its body, one second each."""
    with served(tmp_path_factory.mktemp("quick"), DUETIDE_HTTP_READ_TIMEOUT_S="1") as port:
        yield port


@pytest.fixture(scope="module")
def token() -> str:
    os.environ["DUETIDE_JWT_SECRET"] = SECRET  # restored below: issue with the servers' secret
    get_settings.cache_clear()
    try:
        return issue_local_token("alice")
    finally:
        del os.environ["DUETIDE_JWT_SECRET"]
        get_settings.cache_clear()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        assert self.headers.get("content-type") == "application/json", self
        error = json.loads(self.body)["error"]
        assert set(error) == {"code", "message", "details"}, error
        assert error["details"] == [], error  # the one shape, also for refusals on the socket
        return error


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def send(sock: socket.socket, data: bytes, chunk: int = 1 << 20) -> None:
    """Send as much of `data` as the server takes; it may stop reading and close."""
    try:
        for start in range(0, len(data), chunk):
            sock.sendall(data[start : start + chunk])
    except (BrokenPipeError, ConnectionResetError):
        pass


def read_answer(sock: socket.socket) -> Answer:
    """One HTTP/1.1 answer (Content-Length framed), read from the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock)
        assert chunk, f"connection closed without an answer after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = _recv(sock)
        assert chunk, "connection closed in the middle of the answer"
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""  # Linux hands over what arrived before a reset first


def exchange(port: int, data: bytes) -> Answer:
    with connect(port) as sock:
        send(sock, data)
        return read_answer(sock)


def still_open(sock: socket.socket) -> bool:
    """True while the server has neither answered nor closed the connection."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


# --- request heads -------------------------------------------------------------------------


def test_a_16_mib_request_line_is_431_json(quick):
    line = b"GET /tasks?q=" + b"a" * (16 * 1024 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = exchange(quick, line)
    assert answer.status == 431
    assert answer.error()["code"] == "headers_too_large"
    assert answer.headers["connection"] == "close"


@pytest.mark.parametrize("size", [MAX_HEAD, 64 * 1024])
def test_headers_over_the_limit_are_431_json(quick, size):
    """One send: the head may reach the server in one read (measured by the bridge) or in
    several (refused by the parser while incomplete); both answer the same."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * size + b"\r\n\r\n"
    answer = exchange(quick, head)
    assert answer.status == 431
    assert answer.error()["code"] == "headers_too_large"


def test_a_head_just_under_the_limit_is_served(quick):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (MAX_HEAD - 200) + b"\r\n\r\n"
    assert exchange(quick, head).status == 200


def bearer(port: int, token: str) -> Answer:
    return exchange(
        port, f"GET /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )


def test_a_token_over_8_kb_is_401_json(quick, token):
    answer = bearer(quick, token + "x" * 9000)
    assert answer.status == 401
    assert answer.error()["code"] == "unauthorized"
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_token_over_the_head_limit_is_431_json(quick, token):
    answer = bearer(quick, token + "x" * MAX_HEAD)
    assert answer.status == 431
    assert answer.error()["code"] == "headers_too_large"


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
        b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n",
    ],
    ids=["not-http", "header-without-colon", "nul-in-header", "bad-content-length"],
)
def test_malformed_http_is_400_json(quick, data):
    answer = exchange(quick, data)
    assert answer.status == 400
    assert answer.error()["code"] == "bad_request"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
        b"GET /healthz HTTP/1.0\r\nHost: a\r\nHost: a\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a b\r\n",
        b"GET /healthz HTTP/1.1\r\nHost:\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a/b\r\n",
    ],
    ids=["none", "two", "two-in-1.0", "space", "empty", "slash"],
)
def test_a_request_without_one_valid_host_is_400_json(quick, head):
    """RFC 9112, 3.2. They were served: `POST /calendar/feed-token` with two Host
    fields answered `http:/calendar/...`, and revoked the URL that worked (an audit)."""
    answer = exchange(quick, head + b"\r\n")
    assert answer.status == 400
    assert "Host" in answer.error()["message"]


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: duetide.example.com\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: [::1]:8080\r\n",
        b"GET /healthz HTTP/1.0\r\n",  # HTTP/1.0 needs none
    ],
    ids=["name", "address-port", "ipv6", "1.0-without"],
)
def test_a_valid_host_is_served(quick, head):
    assert exchange(quick, head + b"\r\n").status == 200


# --- read times --------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"GET /healthz", b"GET /healthz HTTP/2.0"])
def test_a_version_other_than_1_0_and_1_1_is_505_json(quick, line):
    """llhttp reads a request line without a version as HTTP/0.9: it was served."""
    answer = exchange(quick, line + b"\r\nHost: x\r\n\r\n")
    assert answer.status == 505
    assert answer.error()["code"] == "http_version_not_supported"


def test_a_head_sent_too_slowly_is_408_json(quick):
    with connect(quick) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = read_answer(sock)
    assert answer.status == 408
    assert answer.error()["code"] == "request_timeout"


def test_a_body_sent_too_slowly_is_408_json(quick, token):
    with connect(quick) as sock:
        sock.sendall(
            b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\n".encode()
            + b'Content-Length: 100\r\n\r\n{"title": '
        )
        answer = read_answer(sock)
    assert answer.status == 408
    assert answer.error()["code"] == "request_timeout"
    listed = requests.get(
        f"http://127.0.0.1:{quick}/tasks", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert listed.json()["items"] == []


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(quick):
    with connect(quick) as sock:
        assert _recv(sock) == b""


# --- bodies ---------------------------------------------------------------------------------


def post_tasks(token: str, body: bytes, *headers: str) -> bytes:
    lines = [
        "POST /tasks HTTP/1.1", "Host: x", "Content-Type: application/json",
        f"Authorization: Bearer {token}", *headers,
    ]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_a_body_announced_over_the_limit_is_413_json_before_it_is_sent(quick, token):
    answer = exchange(quick, post_tasks(token, b"", f"Content-Length: {MAX_BODY + 1}"))
    assert answer.status == 413
    assert answer.error()["code"] == "payload_too_large"


def chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def test_a_chunked_body_over_the_limit_is_413_json(quick, token):
    answer = exchange(
        quick, post_tasks(token, chunked(b" " * (MAX_BODY + 1)), "Transfer-Encoding: chunked")
    )
    assert answer.status == 413
    assert answer.error()["code"] == "payload_too_large"


def test_chunked_bodies_and_kept_alive_connections_are_served(quick, token):
    with connect(quick) as sock:
        sock.sendall(
            post_tasks(token, chunked(b'{"title": "chunked"}'), "Transfer-Encoding: chunked")
        )
        created = read_answer(sock)
        assert created.status == 201, created
        sock.sendall(f"GET /tasks/{json.loads(created.body)['id']} HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {token}\r\n\r\n".encode())  # fmt: skip
        fetched = read_answer(sock)
    assert fetched.status == 200 and json.loads(fetched.body)["title"] == "chunked"


def test_a_trailer_field_is_not_taken_for_a_header(quick, token):
    """uvicorn added the trailer fields of a chunked body to the request's headers: a
    token sent after the body, past whatever checked the head, authenticated it."""
    lines = ["POST /tasks HTTP/1.1", "Host: x", "Content-Type: application/json",
             "Transfer-Encoding: chunked"]  # fmt: skip
    body = b'{"title": "smuggled"}'
    trailer = f"Authorization: Bearer {token}\r\n".encode()
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    request += f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n" + trailer + b"\r\n"
    answer = exchange(quick, request)
    assert answer.status == 401, answer
    listed = requests.get(
        f"http://127.0.0.1:{quick}/tasks", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert "smuggled" not in listed.text


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"0\r\nX-Big: " + b"a" * (MAX_HEAD + 200) + b"\r\n\r\n", id="trailer"),
        pytest.param(b"1" + b";x=y" * (MAX_HEAD // 4 + 50) + b"\r\n", id="extensions"),
    ],
)
def test_a_chunked_bodys_framing_over_the_head_limit_is_431_json(quick, token, framing):
    """Trailer fields and chunk extensions counted against no limit: a client sent a
    73 MiB trailer (the process grew by 135 MB and answered others after 4.5 s; llhttp
    copies a field's value whole at each read) for as long as the read timeout let it."""
    with connect(quick) as sock:
        sock.sendall(post_tasks(token, b"", "Transfer-Encoding: chunked"))
        sock.sendall(b"5\r\nhello\r\n")
        for start in range(0, len(framing), 1024):  # read by read, as a slow client sends
            send(sock, framing[start : start + 1024])
        answer = read_answer(sock)
    assert answer.status == 431, answer
    assert answer.error()["code"] == "headers_too_large"
    assert exchange(quick, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status == 200


def test_pipelined_answers_come_in_order_with_a_refusal_last(quick, token):
    """A refusal was written at once: three requests read before a malformed one, the
    client's first answer was the 400, and the other two were lost."""
    get = f"GET /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    with connect(quick) as sock:
        sock.sendall(get.encode() * 3 + b"GARBAGE\r\n\r\n")
        answers = b""
        while chunk := _recv(sock):  # the server closes after the refusal
            answers += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)  # bodies end without a newline
    assert statuses == [b"200", b"200", b"200", b"400"]


def test_a_client_that_half_closes_after_its_request_gets_the_answer(quick, token):
    """uvicorn closed the connection on the client's FIN: the request ran (the task was
    created) and its answer was lost."""
    with connect(quick) as sock:
        sock.sendall(post_tasks(token, b'{"title": "half"}', "Content-Length: 17"))
        sock.shutdown(socket.SHUT_WR)
        created = read_answer(sock)
        assert created.status == 201, created
        assert _recv(sock) == b""  # then the server closes its side too


def test_a_stream_whose_client_closes_gives_its_slot_back_at_once(quick, token):
    """Kept open after the client's FIN (for a half-closed client's answer), a stream went
    on until a write failed, minutes later, holding its slot: the user's next stream got
    429, and others 503."""
    stream = f"GET /activity/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    with connect(quick) as sock:
        sock.sendall(stream.encode())
        assert _recv(sock).startswith(b"HTTP/1.1 200")

    def reopened() -> bool:
        with connect(quick) as again:
            again.sendall(stream.encode())
            return _recv(again).startswith(b"HTTP/1.1 200")

    wait_for(reopened, "the closed stream's slot to come back", timeout_s=10)


# --- slow clients and connections -----------------------------------------------------------


def test_twelve_slow_bodies_do_not_hold_up_a_get(tmp_path, token):
    """Two worker threads, twelve clients each stuck in its body, a minute to finish it:
    a GET is answered while all twelve are still open."""
    with (
        served(tmp_path / "patient", DUETIDE_HTTP_READ_TIMEOUT_S="60") as port,
        ExitStack() as stack,
    ):
        slow = [stack.enter_context(connect(port)) for _ in range(12)]
        for sock in slow:
            sock.sendall(post_tasks(token, b'{"title": ', "Content-Length: 100"))
        response = requests.get(
            f"http://127.0.0.1:{port}/tasks",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert response.status_code == 200
        assert all(still_open(sock) for sock in slow)


def test_connections_over_the_cap_are_503_json(tmp_path):
    with (
        served(tmp_path / "capped", DUETIDE_HTTP_MAX_CONNECTIONS="3") as port,
        ExitStack() as stack,
    ):
        held = [stack.enter_context(connect(port)) for _ in range(3)]
        with connect(port) as extra:
            answer = read_answer(extra)
        assert answer.status == 503
        assert answer.error()["code"] == "unavailable"
        assert answer.headers["retry-after"] == "1"
        assert all(still_open(sock) for sock in held)
        held[0].close()  # a place comes free
        wait_for(
            lambda: exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status == 200,
            "a connection to be accepted again",
        )


def test_clients_that_do_not_read_their_answers_are_dropped_and_free_their_slots(tmp_path):
    """Two clients pipelining requests and reading no answer held both places of the cap
    for as long as they stayed connected: every other client got 503."""
    with (
        served(
            tmp_path / "unread", DUETIDE_HTTP_MAX_CONNECTIONS="2", DUETIDE_HTTP_READ_TIMEOUT_S="1"
        ) as port,
        ExitStack() as stack,
    ):
        for _ in range(2):
            sock = stack.enter_context(connect(port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            send(sock, b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
        with connect(port) as extra:
            assert read_answer(extra).status == 503  # both places taken
        wait_for(
            lambda: exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status == 200,
            "the stalled clients to be dropped",
        )


# --- answers --------------------------------------------------------------------------------


def test_a_204_over_the_socket_has_no_body_content_type_or_length(quick, token):
    """RFC 9110: a 204 has no content, and so names neither its type nor a length."""
    with connect(quick) as sock:
        sock.sendall(post_tasks(token, b'{"title": "gone"}', "Content-Length: 17"))
        created = read_answer(sock)
        assert created.status == 201, created
        task_id = json.loads(created.body)["id"]
        sock.sendall(f"DELETE /tasks/{task_id} HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {token}\r\n\r\n".encode())  # fmt: skip
        deleted = read_answer(sock)
        assert deleted.status == 204 and deleted.body == b""
        assert "content-type" not in deleted.headers
        assert "content-length" not in deleted.headers
        sock.sendall(f"GET /tasks/{task_id} HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {token}\r\n\r\n".encode())  # fmt: skip
        assert read_answer(sock).status == 404  # the connection goes on after the 204
