"""Signed commands: the canonical form other producers must reproduce (RFC 8785, JCS),
and the HMAC over it."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from duetide import events
from duetide.events.signing import canonical_json, sign_command, signed_content, verifies


def test_object_keys_are_sorted_by_utf16_code_units_as_rfc_8785_shows():
    """RFC 8785 section 3.2.3: the emoji (a surrogate pair, D83D) sorts before U+FB33,
    unlike in code point order."""
    value = {
        "\u20ac": "Euro Sign", "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One",
        "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }  # fmt: skip
    keys = ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    expected = "{" + ",".join(f'"{k}":"{value[k]}"' for k in keys).replace("\r", "\\r") + "}"
    assert canonical_json(value) == expected.encode()


def test_strings_are_escaped_as_rfc_8785_shows():
    """RFC 8785 section 3.2.2.2: only ", \\ and control characters are escaped."""
    assert (
        canonical_json('\u20ac$\u000f\nA\'B"\\\\"/') == '"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"'.encode()
    )


def test_literals_arrays_and_nesting_have_no_whitespace():
    value = {"b": [1, True, None, {"z": False, "a": -7}], "a": "x"}
    assert canonical_json(value) == b'{"a":"x","b":[1,true,null,{"a":-7,"z":false}]}'


@pytest.mark.parametrize("value", [1.5, 1.0, 2**53, -(2**53), float("nan"), b"x", {1: "x"}])
def test_what_jcs_would_write_differently_cannot_be_signed(value):
    with pytest.raises(ValueError):
        canonical_json({"v": value})


def test_the_signature_is_hmac_sha256_over_the_canonical_command():
    event = events.build(event_id="order-1", type=events.CMD_TASK_CREATE, source="/crm",
                         subject="", data={"task": {"title": "Call"}})  # fmt: skip
    sign_command(event, user="xavier", system="crm", key="k" * 32)
    content = (
        b'{"data":{"task":{"title":"Call"}},"duetidesystem":"crm","duetideuser":"xavier",'
        b'"id":"order-1","source":"/crm","type":"dev.duetide.task.create.v1"}'
    )
    assert signed_content(event_id="order-1", source="/crm", type=events.CMD_TASK_CREATE,
                          user="xavier", system="crm", data=event.data) == content  # fmt: skip
    expected = hmac.new(b"k" * 32, content, hashlib.sha256).hexdigest()
    assert (event["duetideuser"], event["duetidesystem"], event["duetidesig"]) == (
        "xavier", "crm", expected,
    )  # fmt: skip


def test_any_of_a_systems_keys_verifies_while_a_key_is_rotated():
    content = b"{}"
    old, new = "o" * 32, "n" * 32
    mac = hmac.new(new.encode(), content, hashlib.sha256).hexdigest()
    assert verifies((old, new), content, mac)
    assert not verifies((old,), content, mac)
    assert not verifies((old, new), b"{ }", mac)
