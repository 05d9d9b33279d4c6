"""A Kafka-protocol proxy on loopback that alters fetch responses as the embedded broker
sometimes answers them.

It stands between the clients and the embedded broker (which advertises the proxy's
address) and passes every frame through, except that, for one partition number (of
every topic), a Fetch response can
- lose one batch: the embedded broker's produce/fetch race, where a fetch finds a later
  producer's batch before an earlier one is stored (RELIABILITY.md, scenario 7c);
- lose all its records, keeping the high watermark, when the fetch's wait is short: the
  embedded broker listing a partition of many batches and running out of the fetch's
  wait (eventing.FLOWING_FETCH_WAIT_MS).
Neither can be made to happen on demand or in a test's time with the broker alone.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka.protocol.consumer.fetch import FetchRequest, FetchResponse

FETCH_API_KEY = 1
_LOOPBACK = "127.0.0.1"


@dataclass
class _Hidden:
    partition: int
    offset: int
    shown_holes: int  # responses where a later batch went out without this one
    times: int | None  # that many, then the batch is shown again (None: never)


def _batches(records: bytes) -> list[tuple[int, bytes]]:
    """(base offset, bytes) of each record batch in a partition's `records` field."""
    batches, at = [], 0
    while at + 12 <= len(records):
        base_offset, length = struct.unpack_from(">qi", records, at)
        end = at + 12 + length
        batches.append((base_offset, records[at:end]))
        at = end
    return batches


class FetchFaultProxy:
    """`with FetchFaultProxy(upstream) as proxy:`; `upstream()` gives the broker's
    (host, port) when a client connects, so the broker may start after the proxy."""

    def __init__(self, upstream: Callable[[], tuple[str, int]]) -> None:
        self._upstream = upstream
        self._server = socket.create_server((_LOOPBACK, 0))
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._hidden: _Hidden | None = None
        self._starved: tuple[int, int] | None = None  # (partition, shortest wait served)
        self._starved_responses = 0
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()

    def hide(self, partition: int, offset: int, *, times: int | None) -> None:
        """Leave the batch at `offset` out of fetch responses for `partition` until a
        later batch has gone out without it `times` times (None: for good)."""
        with self._lock:
            self._hidden = _Hidden(partition, offset, 0, times)

    def reset(self) -> None:
        """Pass everything through again."""
        with self._lock:
            self._hidden, self._starved, self._starved_responses = None, None, 0

    def starve(self, partition: int, *, below_ms: int) -> None:
        """Answer fetches that wait less than `below_ms` with no records of `partition`
        (the high watermark as the broker gave it)."""
        with self._lock:
            self._starved = (partition, below_ms)

    def starved_responses(self) -> int:
        """How many fetch responses lost records to `starve`."""
        with self._lock:
            return self._starved_responses

    def shown_holes(self) -> int:
        """How many fetch responses carried later batches without the hidden one."""
        with self._lock:
            return self._hidden.shown_holes if self._hidden else 0

    def __enter__(self) -> FetchFaultProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                broker = socket.create_connection(self._upstream(), timeout=10)
            except OSError:  # the broker is down: the client sees a closed connection
                client.close()
                continue
            broker.settimeout(None)
            with self._lock:
                self._sockets += [client, broker]
            asked: dict[int, tuple[int, int, int]] = {}  # correlation id -> key, version, wait
            threading.Thread(
                target=self._requests, args=(client, broker, asked), daemon=True
            ).start()
            threading.Thread(
                target=self._responses, args=(broker, client, asked), daemon=True
            ).start()

    def _requests(self, source: socket.socket, sink: socket.socket, asked: dict[int, Any]) -> None:
        for frame in _frames(source):
            api_key, version, correlation_id = struct.unpack_from(">hhi", frame)
            wait = -1
            if api_key == FETCH_API_KEY:
                wait = FetchRequest.decode(frame, version=version, header=True).max_wait_ms
            asked[correlation_id] = (api_key, version, wait)
            if not _send(sink, frame):
                return
        sink.close()

    def _responses(self, source: socket.socket, sink: socket.socket, asked: dict[int, Any]) -> None:
        for frame in _frames(source):
            (correlation_id,) = struct.unpack_from(">i", frame)
            api_key, version, wait = asked.pop(correlation_id, (None, None, None))
            if api_key == FETCH_API_KEY:
                frame = self._rewrite_fetch(frame, version, wait)
            if not _send(sink, frame):
                return
        sink.close()

    def _rewrite_fetch(self, frame: bytes, version: int, wait: int) -> bytes:
        with self._lock:
            hidden, starved = self._hidden, self._starved
            if (
                hidden is not None
                and hidden.times is not None
                and hidden.shown_holes >= hidden.times
            ):
                hidden = None
            if starved is not None and wait >= starved[1]:
                starved = None
            if hidden is None and starved is None:
                return frame
            response = FetchResponse.decode(frame, version=version, header=True)
            changed = False
            for topic in response.responses:
                for data in topic.partitions:
                    if not data.records:
                        continue
                    if starved is not None and data.partition_index == starved[0]:
                        data.records = b""
                        self._starved_responses += 1
                        changed = True
                    elif hidden is not None and data.partition_index == hidden.partition:
                        changed |= _hide(data, hidden)
            return response.encode(header=True) if changed else frame


def _hide(data: Any, hidden: _Hidden) -> bool:
    """Drop the hidden batch from one partition's records; whether it was there."""
    batches = _batches(bytes(data.records))
    kept = [raw for base, raw in batches if base != hidden.offset]
    if len(kept) == len(batches):
        return False
    data.records = b"".join(kept)
    if any(base > hidden.offset for base, _ in batches):
        hidden.shown_holes += 1
    return True


def _frames(sock: socket.socket) -> Any:
    """The payloads of the size-prefixed frames read from `sock`, until it closes."""
    while True:
        head = _read(sock, 4)
        if head is None:
            return
        payload = _read(sock, struct.unpack(">i", head)[0])
        if payload is None:
            return
        yield payload


def _read(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        try:
            chunk = sock.recv(min(left, 1 << 16))
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(sock: socket.socket, payload: bytes) -> bool:
    try:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        return True
    except OSError:
        return False
