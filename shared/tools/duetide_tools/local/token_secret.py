"""Which DUETIDE_HOME's secret `duetide token` signs with.

A token signed with any other secret than the stack's is answered with 401, and the
old behaviour (generate a secret into the default home when there is none) hid that
until the first request. So the home is chosen in this order, and when none holds a
secret the command fails naming what it looked at, instead of generating one:

1. DUETIDE_HOME, when set: the user named it (its secret must exist);
2. the home of the running `duetide up` (`duetide_tools.local.running`);
3. the default home, when a secret is already there (a stack that ran before and will
   run again with it).

DUETIDE_JWT_SECRET, when set, is used as is before any of this (the caller checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from duetide.config import JWT_SECRET_FILE
from duetide_tools.local.running import RunningStack


class SecretNotFound(RuntimeError):
    """No secret to sign with; the message says where it looked and what to do."""


def locate(env_home: str | None, default_home: Path, stacks: Sequence[RunningStack]) -> Path:
    """The file holding the secret to sign local tokens with (see the module docstring)."""
    if env_home:
        path = Path(env_home) / JWT_SECRET_FILE
        if not path.is_file():
            raise SecretNotFound(
                f"no JWT secret in DUETIDE_HOME ({path} does not exist): start `duetide up` "
                "with this DUETIDE_HOME first, or set DUETIDE_JWT_SECRET"
            )
        return path
    homes = sorted({stack.home for stack in stacks})
    if len(homes) > 1:
        listing = "; ".join(f"{s.url} (pid {s.pid}) DUETIDE_HOME={s.home}" for s in stacks)
        raise SecretNotFound(
            f"{len(stacks)} stacks are running with different homes ({listing}): "
            "set DUETIDE_HOME to the one you want a token for"
        )
    if stacks:
        stack = stacks[-1]
        if stack.secret_from_env:
            raise SecretNotFound(
                f"the stack on {stack.url} (pid {stack.pid}) signs with the "
                "DUETIDE_JWT_SECRET of its environment: set the same DUETIDE_JWT_SECRET here"
            )
        path = Path(stack.home) / JWT_SECRET_FILE
        if not path.is_file():
            raise SecretNotFound(f"the stack on {stack.url} has no secret at {path}")
        return path
    path = default_home / JWT_SECRET_FILE
    if path.is_file():
        return path
    raise SecretNotFound(
        f"no running `duetide up` found and no JWT secret in {default_home}: start "
        "`duetide up` first, or set DUETIDE_HOME to the home of the stack you talk to"
    )
