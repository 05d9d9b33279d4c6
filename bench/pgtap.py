"""A loopback proxy in front of PostgreSQL that records what an app asks of it: every
simple query and every executed statement (by its SQL text), and every round trip.

It reads the frontend/backend protocol (version 3) without changing a byte: `Parse`
names a statement's SQL, `Bind` ties a portal to a statement, `Execute` runs a portal,
`Query` is a simple query, and each `Sync` or `Query` is answered by one
`ReadyForQuery`, which ends a round trip and says whether a transaction is open. The
app must connect without TLS (`sslmode=disable`, `gssencmode=disable`): an encrypted
stream cannot be read.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104


@dataclass(frozen=True)
class Event:
    """One thing a connection did: `query` (simple), `execute` (a prepared or unnamed
    statement run), `parse` (a statement prepared) or `ready` (a round trip ended)."""

    connection: int
    kind: str
    sql: str = ""


@dataclass
class _Connection:
    statements: dict[str, str] = field(default_factory=dict)
    portals: dict[str, str] = field(default_factory=dict)
    waiting: int = 0  # Sync and Query messages not yet answered by ReadyForQuery
    status: str = "I"  # the last ReadyForQuery: I idle, T in a transaction, E failed
    ready: bool = False  # the start-up's ReadyForQuery came (it answers no message)
    open: bool = True


def _cstring(data: bytes, start: int = 0) -> tuple[str, int]:
    end = data.index(b"\0", start)
    return data[start:end].decode(), end + 1


def _startup_read(buffer: bytearray) -> bool:
    """Drop the start-up message from `buffer` once it is whole; False until then."""
    if len(buffer) < 8:
        return False
    if int.from_bytes(buffer[4:8], "big") in (SSL_REQUEST, GSSENC_REQUEST):
        raise RuntimeError("pgtap cannot read encrypted connections")
    length = int.from_bytes(buffer[:4], "big")
    if len(buffer) < length:
        return False
    del buffer[:length]
    return True


def _messages(buffer: bytearray) -> Iterator[tuple[str, bytes]]:
    """Take the whole typed messages off the front of `buffer`."""
    while len(buffer) >= 5:
        length = int.from_bytes(buffer[1:5], "big")
        if len(buffer) < 1 + length:
            return
        kind, body = chr(buffer[0]), bytes(buffer[5 : 1 + length])
        del buffer[: 1 + length]
        yield kind, body


class WireTap:
    """Listen on a loopback port and forward each connection to `upstream`, recording."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.events: list[Event] = []
        self._connections: dict[int, _Connection] = {}
        self._changed = threading.Condition()
        self._closed = False
        threading.Thread(target=self._accept, name="pgtap-accept", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.listener.close()

    def mark(self) -> int:
        with self._changed:
            return len(self.events)

    def since(self, mark: int) -> list[Event]:
        with self._changed:
            return self.events[mark:]

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until every connection has had all its messages answered and is outside a
        transaction: the app has finished with the database for now."""

        def idle() -> bool:
            return all(
                c.waiting == 0 and c.status == "I" for c in self._connections.values() if c.open
            )

        with self._changed:
            return self._changed.wait_for(idle, timeout_s)

    def state(self) -> dict[int, tuple[int, str]]:
        """Each open connection's unanswered messages and transaction status."""
        with self._changed:
            return {n: (c.waiting, c.status) for n, c in self._connections.items() if c.open}

    # --- forwarding -------------------------------------------------------------------

    def _accept(self) -> None:
        number = 0
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            number += 1
            server = socket.create_connection(self.upstream)
            with self._changed:
                self._connections[number] = _Connection()
            for source, sink, frontend in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(number, source, sink, frontend), daemon=True
                ).start()

    def _pump(
        self, number: int, source: socket.socket, sink: socket.socket, frontend: bool
    ) -> None:
        """Forward one direction, each chunk recorded before it is forwarded (so a message
        is always recorded before the reply to it)."""
        buffer = bytearray()
        read = self._frontend if frontend else self._backend
        started = not frontend  # the frontend's first message (start-up) has no type byte
        try:
            while chunk := source.recv(65536):
                buffer += chunk
                if not started:
                    started = _startup_read(buffer)
                if started:
                    for kind, body in _messages(buffer):
                        read(number, kind, body)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._changed:
                self._connections[number].open = False
                self._changed.notify_all()
            for end in (source, sink):
                end.close()

    def _frontend(self, number: int, kind: str, body: bytes) -> None:
        with self._changed:
            connection = self._connections[number]
            if kind == "Q":
                connection.waiting += 1
                self.events.append(Event(number, "query", _cstring(body)[0]))
            elif kind == "P":
                name, at = _cstring(body)
                connection.statements[name] = _cstring(body, at)[0]
                self.events.append(Event(number, "parse", connection.statements[name]))
            elif kind == "B":
                portal, at = _cstring(body)
                connection.portals[portal] = _cstring(body, at)[0]
            elif kind == "E":
                statement = connection.portals.get(_cstring(body)[0], "")
                self.events.append(
                    Event(number, "execute", connection.statements.get(statement, "?"))
                )
            elif kind == "S":
                connection.waiting += 1

    def _backend(self, number: int, kind: str, body: bytes) -> None:
        if kind != "Z":
            return
        with self._changed:
            connection = self._connections[number]
            if connection.ready:
                connection.waiting -= 1
            connection.ready = True
            connection.status = chr(body[0])
            self.events.append(Event(number, "ready"))
            self._changed.notify_all()
