"""What the benches that serve a function share: waiting until it answers."""

from __future__ import annotations

import subprocess
import time

import requests


def wait_healthy(
    base: str, process: subprocess.Popen[bytes], what: str, timeout_s: float = 30
) -> None:
    """Poll `base`/healthz until it answers 200; fail if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)
