"""Whether this process has been told to stop (SIGTERM from Knative or a container
runtime, SIGINT or SIGTERM from `duetide up`).

`duetide.web.serve` sets it from the signal; what waits on the request's time (the
activity long-poll and stream, `duetide.web.live`) waits on it too and ends at once.
Otherwise an open stream (5 minutes) held the shutdown for its whole grace (25 s),
and was then cut without its last chunk, a client seeing a broken answer where an
ended stream would have had it resume from its last id (an audit, 2026-12-07)."""

from __future__ import annotations

import threading

STOPPING = threading.Event()


def pause(seconds: float) -> bool:
    """Sleep `seconds`, or less if the process is told to stop meanwhile; whether it is."""
    return STOPPING.wait(max(seconds, 0.0))
