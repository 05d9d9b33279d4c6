"""The identity provider's key set (JWKS), fetched within a bound of time and size.

PyJWT's client bounds each socket read, not the fetch, reads the answer whole, and
holds its lock across the network: a provider that answered a byte every 2 s held every
request needing a key for as long as it went on (`/healthz` too, once the workers were
all waiting), 300 MiB of answer took 900 MiB of memory, a reset connection was an
OSError nothing caught (500), and while the provider failed each token with a made-up
`kid` fetched again (an audit, 2026-12-07). Here a fetch runs on a thread of its own,
one at a time, waited for `FETCH_S`; reads at most `MAX_BYTES`; any failure is the
provider's (`PyJWKClientConnectionError`: 503), and for `FAILED_COOLDOWN_S` after one
no fetch is tried. Imported with PyJWT, on the first token checked.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from typing import Any

import jwt

FETCH_S = 5.0
MAX_BYTES = 256 * 1024
FAILED_COOLDOWN_S = 5.0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class KeySetClient(jwt.PyJWKClient):
    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri, **options)
        self._failed_at = -math.inf
        self._fetching: threading.Thread | None = None

    def fetch_data(self) -> Any:
        if time.monotonic() - self._failed_at < FAILED_COOLDOWN_S:
            raise jwt.PyJWKClientConnectionError("the key set could not be fetched moments ago")
        if self._fetching is not None and self._fetching.is_alive():  # still on its way
            raise jwt.PyJWKClientConnectionError("the last fetch of the key set is not over")
        got: dict[str, Any] = {}

        def fetch() -> None:
            try:
                got["keys"] = self._read()
            except Exception as exc:  # handed to the caller below
                got["error"] = exc

        self._fetching = threading.Thread(target=fetch, name="duetide-jwks", daemon=True)
        self._fetching.start()
        self._fetching.join(FETCH_S)
        error = got.get("error")
        if isinstance(error, jwt.PyJWKClientError):  # not a key set: the token's 401
            raise error
        if "keys" not in got:
            self._failed_at = time.monotonic()
            cause = type(error).__name__ if error is not None else f"no answer in {FETCH_S:g} s"
            raise jwt.PyJWKClientConnectionError(f"the key set could not be fetched: {cause}")
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(got["keys"])
        self._last_successful_fetch = time.monotonic()  # PyJWT's cooldown for unknown kids
        return got["keys"]

    def _read(self) -> dict[str, Any]:
        handlers: list[Any] = [_NoRedirects()]
        if self.ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ssl_context))
        request = urllib.request.Request(self.uri, headers=self.headers)
        with urllib.request.build_opener(*handlers).open(request, timeout=self.timeout) as answer:
            body = answer.read(MAX_BYTES + 1)
        if len(body) > MAX_BYTES:
            raise OverflowError(f"the key set is larger than {MAX_BYTES} bytes")
        try:
            keys = json.loads(body)
        except ValueError:
            raise jwt.PyJWKClientError("the key set is not JSON") from None
        if not isinstance(keys, dict):
            raise jwt.PyJWKClientError("the key set is not a JSON object")
        return keys
