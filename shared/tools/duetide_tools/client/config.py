"""Where the client finds the API and its token: the environment, else the file that
`duetide login` writes (`$XDG_CONFIG_HOME/duetide/config.json`, mode 0600)."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_config_path

from duetide_tools.client.errors import UsageError

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Target:
    url: str
    token: str


def config_path() -> Path:
    return user_config_path("duetide") / "config.json"


def saved() -> dict[str, str]:
    """The file's `url` and `token`; {} when there is none, UsageError when unreadable."""
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path} ({exc}): run `duetide login` again") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a JSON object: run `duetide login` again")
    return {k: v for k, v in data.items() if k in ("url", "token") and isinstance(v, str)}


def target() -> Target:
    """DUETIDE_URL and DUETIDE_TOKEN win over the file, each on its own; empty is unset.
    The file is read only for what they leave out: a damaged one stopped every command
    with both set (an audit, 2026-12-07)."""
    url, token = os.environ.get("DUETIDE_URL"), os.environ.get("DUETIDE_TOKEN")
    stored = saved() if not (url and token) else {}
    url = url or stored.get("url") or DEFAULT_URL
    token = (token or stored.get("token") or "").strip()
    if not token:
        raise UsageError(
            "no token: run `duetide login`, or set DUETIDE_TOKEN (`scripts/up` prints one)"
        )
    return Target(url=checked_url(url), token=checked_token(token))


def checked_url(url: str) -> str:
    """An http(s) URL the client can send to, or a UsageError that says why."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"the API URL must start with http:// or https://, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (it checks the port)
    except ValueError as exc:
        raise UsageError(f"the API URL {url!r} is malformed: {exc}") from None
    if parts.username is not None or parts.password is not None:
        # not echoed: every message naming the URL printed the password in it
        raise UsageError("the API URL holds a user name or password: drop it, the token signs in")
    if not parts.hostname or not url.isascii() or not url.isprintable():
        raise UsageError(f"the API URL {url!r} must name a host, in printable ASCII")
    return url


def checked_token(token: str) -> str:
    """The token as sent in a header: printable ASCII without spaces. Never echoed: a
    malformed token is still a secret (the header check printed it whole)."""
    if not token.isascii() or not token.isprintable() or " " in token:
        raise UsageError(
            "the token holds characters a header cannot carry (spaces, control characters "
            "or non-ASCII): copy it again, or run `duetide login`"
        )
    return token


def save(url: str, token: str) -> Path:
    """Write the file readable by its owner only, atomically: no moment where another
    user could read the token, and no half-written file after a crash."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as out:  # mkstemp creates it with mode 0600
            json.dump({"url": url, "token": token}, out, indent=2)
            out.write("\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
