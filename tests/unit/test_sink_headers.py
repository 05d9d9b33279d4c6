"""A binary-mode CloudEvent's header values are percent-decoded (HTTP binding, 3.1.3.2)."""

from __future__ import annotations

import pytest
from flask import Request
from werkzeug.test import EnvironBuilder

from duetide.errors import InvalidCloudEvent
from duetide.web.sink import decode


def binary_request(**attributes: str) -> Request:
    headers = {"ce-specversion": "1.0", "ce-type": "t", "ce-source": "/s", "ce-id": "1"}
    headers.update({f"ce-{name}": value for name, value in attributes.items()})
    environ = EnvironBuilder(
        method="POST", headers=list(headers.items()), data=b"{}", content_type="application/json"
    ).get_environ()
    return Request(environ)


def test_header_values_are_percent_decoded() -> None:
    event = decode(binary_request(subject="caf%C3%A9%20au%20lait", id="a%25b"), 1024)
    assert (event.subject, event.id) == ("café au lait", "a%b")


def test_values_without_escapes_are_taken_as_they_are() -> None:
    event = decode(binary_request(subject="task-1", key="k:2/3"), 1024)
    assert (event.subject, event.extensions["key"]) == ("task-1", "k:2/3")


def test_a_decoded_nul_is_refused_as_a_poison_event() -> None:
    with pytest.raises(InvalidCloudEvent, match="subject"):
        decode(binary_request(subject="a%00b"), 1024)


@pytest.mark.parametrize("escaped", ["evt-%FF", "evt-%C3", "evt-%ED%A0%80"])
def test_escapes_that_are_not_utf_8_are_refused_not_replaced(escaped: str) -> None:
    """They decoded to U+FFFD, so `evt-%FF` and `evt-%FE` were one id: the second event
    was answered `duplicate` and dropped. (`%ED%A0%80` encodes a lone surrogate.)"""
    with pytest.raises(InvalidCloudEvent, match="ce-id is not percent-encoded UTF-8"):
        decode(binary_request(id=escaped), 1024)
