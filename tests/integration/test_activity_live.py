"""Live activity over real sockets (issue 15): the server-sent events stream
(`GET /activity/stream`) and the long-poll (`GET /activity?wait=`), served by
`python -m duetide.web.serve` on loopback over this test's database (SQLite and
PostgreSQL), while the changes come from the tasks function and are delivered to the
real activity function as the KafkaSource would (`Pipeline`).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from sqlmodel import col, select

from duetide import events
from duetide.config import get_settings
from duetide.services.activity import TASK_TYPES
from duetide.services.activity_feed import END_MARGIN, decode_token, encode_token
from duetide.storage import db
from duetide.storage.models import ActivityEntry, utcnow
from duetide.web.auth import issue_local_token
from tests.integration.conftest import function_client
from tests.integration.test_activity import Pipeline
from tests.support import served_process, serving_function, wait_for

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serving(home: Path, **settings: str) -> Iterator[int]:
    """The tasks function under duetide.web.serve on a free loopback port, over the
    database the `env` fixture configured (its environment is inherited)."""
    env = {**os.environ, "THREADS": "4", "DUETIDE_ACTIVITY_POLL_S": "0.1", **settings}
    with serving_function(home, env) as port:
        yield port


@pytest.fixture
def port(env: str, tmp_path: Path) -> Iterator[int]:
    with serving(
        tmp_path / "serve",
        DUETIDE_ACTIVITY_MAX_STREAMS="1",
        DUETIDE_ACTIVITY_MAX_WAITERS="1",
        DUETIDE_LOG_LEVEL="INFO",  # each request logged: the token must not be
    ) as port:
        yield port


@pytest.fixture
def pipeline(env: str) -> Pipeline:
    return Pipeline(function_client("activity"), function_client("recurrence"))


class EventStream:
    """A minimal EventSource: one connection to /activity/stream, its events parsed."""

    def __init__(self, port: int, token: str, last_id: str | None = None, query: str = ""):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Last-Event-ID": last_id} if last_id else {}
        self.conn.request("GET", f"/activity/stream?access_token={token}{query}", headers=headers)
        self.response = self.conn.getresponse()
        self.retry: int | None = None

    def next_event(self) -> dict[str, Any]:
        """The next event (comments and `retry:` are read past)."""
        fields: dict[str, Any] = {}
        while True:
            line = self.response.readline().decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if not line:
                if "data" in fields:
                    return fields
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "retry":
                self.retry = int(value)
            else:
                fields[name] = value

    def close(self) -> None:
        self.conn.close()


def logged_ids(owner: str) -> list[str]:
    with db.session_scope(read_only=True) as session:
        return list(
            session.exec(
                select(ActivityEntry.event_id)
                .where(ActivityEntry.owner == owner)
                .order_by(col(ActivityEntry.seq))
            ).all()
        )


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def changes(client: FlaskClient, headers: dict[str, str], n: int, tag: str) -> None:
    ids = [
        ok(client.post("/tasks", json={"title": f"{tag} {i}"}, headers=headers), 201)["id"]
        for i in range(n)
    ]
    for task_id in ids[::2]:
        ok(client.patch(f"/tasks/{task_id}", json={"title": f"{tag} renamed"}, headers=headers))
    ok(client.post(f"/tasks/{ids[1]}/complete", headers=headers))
    ok(client.delete(f"/tasks/{ids[-1]}", headers=headers), 204)


def test_a_stream_resumed_with_last_event_id_misses_nothing_and_repeats_nothing(
    port: int,
    client: FlaskClient,
    alice: dict[str, str],
    bob: dict[str, str],
    pipeline: Pipeline,
    tmp_path: Path,
) -> None:
    token = issue_local_token("alice")
    ok(client.post("/tasks", json={"title": "bob's"}, headers=bob), 201)
    changes(client, alice, 8, "first")
    pipeline.pump()
    first_part = logged_ids("alice")

    stream = EventStream(port, token)
    assert stream.response.status == 200
    assert stream.response.getheader("Content-Type", "").startswith("text/event-stream")
    seen: list[dict[str, Any]] = [stream.next_event() for _ in range(5)]
    assert stream.retry is not None and stream.retry > 0
    stream.close()  # gone mid-burst: more entries were due

    changes(client, alice, 8, "second")  # logged while nobody listens
    pipeline.pump()
    total = logged_ids("alice")
    assert len(total) > len(first_part) > 5

    # The server frees the one stream slot once it sees the client gone (within a poll):
    # until then the same user's stream is a 429 (its share, taken first) or a 503. Only
    # a 503 was waited for, and a resume 90 ms after the close failed (a CI run).
    def resumed() -> EventStream | None:
        again = EventStream(port, token, last_id=seen[-1]["id"])
        if again.response.status in (429, 503):
            assert again.response.getheader("Retry-After") == "1"
            again.close()
            return None
        return again

    stream = wait_for(resumed, "the slot of the closed stream to be given back")
    assert stream.response.status == 200
    try:
        while len(seen) < len(total):
            seen.append(stream.next_event())
        # Live: a change made now arrives on the open stream.
        changes(client, alice, 2, "live")
        pipeline.pump()
        total = logged_ids("alice")
        while len(seen) < len(total):
            seen.append(stream.next_event())
    finally:
        stream.close()
    items = [json.loads(event["data"]) for event in seen]
    assert [item["event_id"] for item in items] == total  # in order, once, only alice's
    assert [event["event"] for event in seen] == [item["type"] for item in items]
    assert len({event["id"] for event in seen}) == len(seen)
    log = (tmp_path / "serve" / "serve.log").read_text()
    assert "/activity/stream" in log and token not in log


def test_a_long_poll_answers_when_an_entry_is_logged_and_empty_when_the_wait_ends(
    port: int, client: FlaskClient, alice: dict[str, str], bob: dict[str, str], pipeline: Pipeline
) -> None:
    base = f"http://127.0.0.1:{port}/activity"
    start = requests.get(base, headers=alice, timeout=10).json()["since"]
    bobs = requests.get(base, headers=bob, timeout=10).json()["since"]

    began = time.monotonic()
    empty = requests.get(f"{base}?since={start}&wait=1", headers=alice, timeout=10)
    assert empty.status_code == 200, empty.text
    assert time.monotonic() - began >= 1
    assert empty.json()["items"] == []
    # The same place in the log (its stamp may move with the clock).
    assert decode_token(empty.json()["since"])[0] == decode_token(start)[0]

    answers: list[requests.Response] = []

    def start_waiter() -> threading.Thread:
        answers.clear()
        thread = threading.Thread(
            target=lambda: answers.append(
                requests.get(f"{base}?since={start}&wait=25", headers=alice, timeout=30)
            )
        )
        thread.start()
        return thread

    waiter = start_waiter()
    try:
        # The one waiter slot is taken once the request waits: another user's is refused
        # (the same user's would be refused for its share, 429). (A probe that came first
        # took the slot itself: the waiter then was refused, and is sent again.)
        def refused() -> tuple[requests.Response] | None:
            nonlocal waiter
            other = requests.get(f"{base}?since={bobs}&wait=1", headers=bob, timeout=10)
            if other.status_code == 503:
                return (other,)
            waiter.join(timeout=1)
            if not waiter.is_alive():
                assert answers[0].status_code == 503, answers[0].text
                waiter = start_waiter()
            return None

        (over,) = wait_for(refused, "the long-poll to wait")
        assert over.headers["Retry-After"] == "1"
        assert over.json()["error"]["code"] == "unavailable"
        began = time.monotonic()
        ok(client.post("/tasks", json={"title": "arrives"}, headers=alice), 201)
        pipeline.pump()
    finally:
        waiter.join(timeout=30)
    assert time.monotonic() - began < 10  # well before the 25 s wait ends
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    page = answer.json()
    assert [item["task"]["title"] for item in page["items"]] == ["arrives"]
    assert decode_token(page["since"])[0] > decode_token(start)[0]


def test_a_bad_since_or_token_is_an_error_before_the_stream_starts(port: int) -> None:
    url = f"http://127.0.0.1:{port}/activity/stream"
    token = issue_local_token("alice")
    bad = requests.get(url, params={"access_token": token, "since": "bm9wZQ"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 401
    forged = requests.get(url, params={"access_token": "x.y.z"}, timeout=10)
    assert forged.status_code == 401
    wait = requests.get(
        f"http://127.0.0.1:{port}/activity",
        params={"wait": "26"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert wait.status_code == 422


def test_a_stream_ends_after_its_lifetime(env: str, tmp_path: Path) -> None:
    with serving(tmp_path / "short", DUETIDE_ACTIVITY_STREAM_LIFETIME_S="1") as port:
        stream = EventStream(port, issue_local_token("alice"))
        began = time.monotonic()
        assert stream.response.read().startswith(b"retry: ")  # to the end of the stream
        assert time.monotonic() - began < 10
        stream.close()


def test_a_quiet_stream_hands_its_client_a_fresh_id_to_resume_from(
    env: str, tmp_path: Path, client: FlaskClient, alice: dict[str, str], pipeline: Pipeline
) -> None:
    # The last entry is almost as old as the retention: resuming from its own id would be
    # a 410 within minutes, though the stream had shown everything after it.
    ok(client.post("/tasks", json={"title": "long ago"}, headers=alice), 201)
    pipeline.pump()
    last_seq = max_seq("alice")
    retention = timedelta(days=get_settings().duetide_activity_retention_days)
    aging = encode_token(last_seq, utcnow() - retention + timedelta(minutes=5))
    with serving(tmp_path / "short", DUETIDE_ACTIVITY_STREAM_LIFETIME_S="1") as port:
        began = utcnow()
        quiet = EventStream(port, issue_local_token("alice"), last_id=aging)
        body = quiet.response.read().decode()  # to the end of its lifetime
        quiet.close()
        ids = [line.removeprefix("id: ") for line in body.splitlines() if line.startswith("id: ")]
        assert "data:" not in body and ids, body
        seq, stamp = decode_token(ids[-1])
        assert seq == last_seq
        assert stamp >= began - END_MARGIN - timedelta(seconds=1)  # tokens hold whole seconds

        # Resuming from that id misses nothing and repeats nothing.
        ok(client.post("/tasks", json={"title": "now"}, headers=alice), 201)
        pipeline.pump()
        resumed = EventStream(port, issue_local_token("alice"), last_id=ids[-1])
        event = resumed.next_event()
        resumed.close()
    assert json.loads(event["data"])["event_id"] == logged_ids("alice")[-1]
    assert decode_token(event["id"])[0] == max_seq("alice") > last_seq


def test_a_stream_catching_up_spends_a_read_a_batch_as_paging_would(
    env: str, tmp_path: Path
) -> None:
    """A stream from the start of a long log sent it all at full speed for the request's
    one read: 97,804 entries, 101 MB and 18 s of CPU in 20 s (a review, 2026-12-07).
    Each batch after a full one is now a read, as a page of `GET /activity` is."""
    from duetide.web.live import STREAM_BATCH

    with db.session_scope() as session:
        for n in range(3 * STREAM_BATCH + 50):
            session.add(
                ActivityEntry(
                    owner="alice", type=events.TASK_DELETED, event_id=f"e{n}", source="/t",
                    task_id=f"t{n}", actor="user:alice", at=utcnow(), state=None,
                )
            )  # fmt: skip
    token = issue_local_token("alice")
    with serving(tmp_path / "paced", DUETIDE_READ_RATE_PER_MINUTE="3") as port:
        stream = EventStream(port, token)  # a read: 2 left
        seen = [stream.next_event()["data"] for _ in range(3 * STREAM_BATCH)]  # 2 batches more
        listed = requests.get(
            f"http://127.0.0.1:{port}/activity",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        stream.close()
    assert len(set(seen)) == 3 * STREAM_BATCH
    assert listed.status_code == 429  # the stream spent the budget; before, 2 reads were left


def test_a_stream_is_charged_for_its_size_as_a_page_of_the_feed_is(
    env: str, tmp_path: Path
) -> None:
    """A read a batch whatever its size: 100 MB of large entries streamed in 1.7 s for a
    few reads, where `GET /activity` charges a read more for each 256 KiB (an audit,
    2026-12-07). A batch of 100 entries of some 30 KB is 11 reads more."""
    from duetide.web.live import STREAM_BATCH

    large = "b" * 10_000
    with db.session_scope() as session:
        for n in range(STREAM_BATCH):
            session.add(
                ActivityEntry(
                    owner="alice", type=events.TASK_UPDATED, event_id=f"e{n}", source="/t",
                    task_id=f"t{n}", actor="user:alice", at=utcnow(),
                    state={"title": "t", "status": "open", "description": large},
                    changes={"description": {"before": large, "after": large}},
                )
            )  # fmt: skip
    token = issue_local_token("alice")
    with serving(tmp_path / "paced", DUETIDE_READ_RATE_PER_MINUTE="6") as port:
        stream = EventStream(port, token)  # a read: 5 left
        received = sum(len(stream.next_event()["data"]) for _ in range(STREAM_BATCH))
        listed = requests.get(
            f"http://127.0.0.1:{port}/tasks",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        stream.close()
    assert received > 2_900_000
    assert listed.status_code == 429  # before, 5 reads were left (4 if a batch more was read)


def test_a_stream_whose_client_sent_another_request_behind_it_and_left_frees_its_slot(
    env: str, tmp_path: Path
) -> None:
    """uvicorn tells only the latest request read that its client has gone: the stream
    before it went on, its slot held until a heartbeat's write failed, 30-45 s later, and
    the same user's new stream was a 429 meanwhile (an audit, 2026-12-07)."""
    token = issue_local_token("alice")
    head = f"GET /activity/stream?access_token={token} HTTP/1.1\r\nHost: x\r\n\r\n"

    def stream_status(served: int) -> bytes:
        with socket.create_connection(("127.0.0.1", served), timeout=10) as probe:
            probe.sendall(head.encode())
            return probe.recv(200).split(b"\r\n", 1)[0]

    with serving(tmp_path / "serve", DUETIDE_ACTIVITY_MAX_STREAMS="1") as served:
        with socket.create_connection(("127.0.0.1", served), timeout=10) as client:
            client.sendall((head + "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").encode())
            assert client.recv(65536).startswith(b"HTTP/1.1 200")  # the stream is on
        # The client has gone: its slot is free within a poll or two, not a heartbeat.
        wait_for(lambda: stream_status(served) == b"HTTP/1.1 200 OK", "the slot back", 5)


def max_seq(owner: str) -> int:
    with db.session_scope(read_only=True) as session:
        seqs = session.exec(select(ActivityEntry.seq).where(ActivityEntry.owner == owner)).all()
    return max(seq for seq in seqs if seq is not None)


# --- a real EventSource: headless Chromium --------------------------------------------

PAGE = """<!doctype html><meta charset="utf-8"><title>activity</title><ol id="events"></ol>
<script>
const [api, token, types, total] = %s;
const list = document.getElementById("events");
let opens = 0, created = false, count = 0;
const source = new EventSource(`${api}/activity/stream?access_token=${token}`);
source.onopen = () => {
  opens += 1;
  // Changes made only once the first stream has ended and EventSource reconnected with
  // Last-Event-ID: they arrive on a resumed stream, after what the first one sent.
  if (opens === 2 && !created) {
    created = true;
    for (const title of ["four", "five", "six"]) {
      fetch(`${api}/tasks`, {method: "POST", body: JSON.stringify({title}),
        headers: {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"}});
    }
  }
};
const seen = (e) => {
  const item = document.createElement("li");
  item.textContent = `${e.type} ${e.lastEventId} ${JSON.parse(e.data).event_id}`;
  list.appendChild(item);
  count += 1;
  if (count >= total) {
    source.close();
    const done = document.createElement("p");
    done.id = "done";
    done.textContent = `opens ${opens}`;
    document.body.appendChild(done);
  }
};
for (const type of types) source.addEventListener(type, seen);
</script>
"""


def test_a_browsers_event_source_resumes_without_gaps_or_repeats(
    env: str,
    tmp_path: Path,
    client: FlaskClient,
    alice: dict[str, str],
    pipeline: Pipeline,
) -> None:
    from tests.integration.test_docs_page import CHROMIUM_FLAGS, chromium

    browser = chromium()
    for title in ("one", "two", "three"):
        ok(client.post("/tasks", json={"title": title}, headers=alice), 201)
    pipeline.pump()
    done = threading.Event()

    def deliver() -> None:  # the KafkaSource: the page's creates reach the activity log
        while not done.wait(0.1):
            pipeline.pump()

    with serving(tmp_path / "serve", DUETIDE_ACTIVITY_STREAM_LIFETIME_S="1") as port:
        types = sorted(TASK_TYPES)
        page = tmp_path / "activity.html"
        config = [f"http://127.0.0.1:{port}", issue_local_token("alice"), types, 6]
        page.write_text(PAGE % json.dumps(config))
        command = [
            browser,
            *CHROMIUM_FLAGS,
            *(["--no-sandbox"] if os.geteuid() == 0 else []),
            # The page is a file: its requests to the server are cross-origin, and the API
            # sends no CORS headers; the stream itself is what is tested here.
            "--disable-web-security",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ]
        pump = threading.Thread(target=deliver)
        pump.start()
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=120)
        finally:
            done.set()
            pump.join()
    assert run.returncode == 0, run.stderr[-3000:]
    dom = run.stdout
    assert 'id="done"' in dom, dom[-3000:]
    opens = int(dom.split('id="done">opens ', 1)[1].split("<", 1)[0])
    assert opens >= 2  # the resumed stream carried the last three
    lines = [line.split(" ") for line in (part.split("</li>")[0] for part in dom.split("<li>")[1:])]
    assert [event_id for _, _, event_id in lines] == logged_ids("alice")
    assert len({last_id for _, last_id, _ in lines}) == 6
    assert [event_type for event_type, _, _ in lines] == [events.TASK_CREATED] * 6


def test_a_stream_whose_read_finds_the_pool_exhausted_ends_for_the_client_to_resume(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database error ends the stream cleanly (EventSource resumes from its last id);
    a pool's wait that timed out escaped instead, the stream cut off by an error (a
    review, 2026-12-07)."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from duetide.web import live

    monkeypatch.setenv("DUETIDE_ACTIVITY_POLL_S", "0.05")
    get_settings.cache_clear()

    def exhausted(owner: str, since: str | None) -> list[Any]:
        raise PoolTimeout("QueuePool limit reached")

    monkeypatch.setattr(live, "_read", exhausted)
    chunks = list(live._events("alice", None, [], utcnow()))
    assert chunks[0].startswith(b"retry: ") and chunks[-1] == b""


def test_a_stream_waiting_for_its_users_budget_keeps_its_heartbeat(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream catching up waits for its user's read budget, which a debt of large
    answers can hold for a minute: it sent nothing meanwhile, past a proxy's idle timeout
    (a review of the change, 2026-12-07). It keeps its heartbeat."""
    from duetide.services import ratelimit
    from duetide.web import live

    monkeypatch.setenv("DUETIDE_READ_RATE_PER_MINUTE", "1")
    monkeypatch.setenv("DUETIDE_ACTIVITY_POLL_S", "0.05")
    get_settings.cache_clear()
    ratelimit.read_budget.cache_clear()
    budget = ratelimit.read_budget()
    assert budget is not None
    budget.debit("alice", 1)  # the bucket is empty: a minute to wait
    monkeypatch.setattr(live, "HEARTBEAT_S", 0.2)
    full: list[Any] = [("token", None)] * live.STREAM_BATCH  # a full one: more to catch up
    monkeypatch.setattr(live, "sse_event", lambda token, item: b"data: x\n\n")
    stream = live._events("alice", None, full, utcnow())
    chunks = [next(stream) for _ in range(1 + live.STREAM_BATCH)]  # retry:, the batch
    waiting = next(chunk for chunk in stream if chunk)  # the first bytes while it waits
    assert chunks[-1] == b"data: x\n\n" and waiting == b": heartbeat\n\n"
    ratelimit.read_budget.cache_clear()


def test_a_stream_open_when_the_server_is_told_to_stop_ends_for_its_client_to_resume(
    env: str, tmp_path: Path
) -> None:
    """SIGTERM (Knative stopping the pod) with a stream open: it ends as at its lifetime,
    its last chunk sent with an id to resume from, and the process exits with only JSON
    lines in its log. The stream held the shutdown's whole grace (25 s), was then cut
    mid-answer, and uvicorn's tracebacks went out as plain text (an audit, 2026-12-07)."""
    settings = {**os.environ, "THREADS": "4", "DUETIDE_ACTIVITY_POLL_S": "0.1"}
    with served_process(tmp_path / "serve", settings) as (port, process):
        stream = EventStream(port, issue_local_token("alice"))
        assert stream.response.readline().startswith(b"retry: ")
        process.terminate()
        rest = stream.response.read()  # to its end: IncompleteRead (or a timeout) if cut
        assert rest.endswith(b"\n\n") and b"\nid: " in b"\n" + rest, rest
        # uvicorn ends a graceful shutdown by raising the signal it caught again
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        stream.close()
    lines = (tmp_path / "serve" / "serve.log").read_text().splitlines()
    assert all(json.loads(line)["function"] == "tasks" for line in lines), lines
