"""Fixtures shared by every test layer: the embedded broker and unique topic names."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from duetide_tools.local.broker import EmbeddedBroker

# Tests reach loopback only: webhooks (and the DNS look-ups their checks would make for
# generated host names) are limited to it for every process the tests start.
os.environ["DUETIDE_WEBHOOK_HOSTS"] = "127.0.0.1,localhost,::1"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One Tansu broker for the whole session (started on first use); its log is kept."""
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as running:
        yield running


def unique_name(prefix: str) -> str:
    """`prefix` plus a random suffix: topics and groups no other test shares."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Make topic names unique to this test: `unique_topic("events")`."""
    test = request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:30]

    def named(prefix: str = "topic") -> str:
        return unique_name(f"{prefix}-{test}")

    return named
