"""One deadline for a whole network exchange, whatever the peer does."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class Deadline:
    """Shuts down the connections it watches `seconds` after it began.

    A socket's timeout bounds each read only: a peer sending a byte of its status line,
    headers or body every few seconds held the caller as long as it went on (one of
    notify's workers, 12 s for a webhook's 5 s timeout, found by probing; the CLI without
    end). At the deadline a timer shuts each watched connection down, which ends any read
    or write blocked on it. It goes by a duplicate of the descriptor taken when the
    socket is watched, right after its connect: the TLS wrapper detaches the socket it
    wraps, a proxy's CONNECT comes before that, and a duplicate cannot be a descriptor
    the process has since reused for something else. Connecting itself is bounded by
    the socket's timeout; the TLS handshake by `ssl`, and by this.
    """

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._ended = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self._ended:
                return
            duplicate = sock.dup()
            self._watched.append(duplicate)
            if self.expired:
                _shut(duplicate)

    def end(self) -> None:
        """Once the exchange is over: the duplicates are closed, the timer stopped."""
        self._timer.cancel()
        with self._lock:
            self._ended = True
            for duplicate in self._watched:
                duplicate.close()
            self._watched.clear()

    def _expire(self) -> None:
        with self._lock:
            if self._ended:
                return
            self.expired = True
            for duplicate in self._watched:
                _shut(duplicate)

    def __enter__(self) -> Deadline:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the peer closed it already: nothing left to end
        sock.shutdown(socket.SHUT_RDWR)
