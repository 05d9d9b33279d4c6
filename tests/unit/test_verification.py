"""The pure parts of target verification and of folding user text into a header."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from duetide.channels import email, verification
from duetide.errors import RateLimited

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
STAMP = int(NOW.timestamp())


def test_codes_are_random_from_an_unambiguous_alphabet():
    codes = {verification.new_code() for _ in range(200)}
    assert len(codes) == 200
    for code in codes:
        assert len(code) == verification.CODE_LENGTH
        assert set(code) <= set(verification.CODE_ALPHABET)
        assert not set(code) & set("01OI")


def test_a_typed_code_is_normalised():
    code = "ABCD2345WXYZ"
    assert verification.grouped(code) == "ABCD-2345-WXYZ"
    assert verification.normalise_code(" abcd-2345 wxyz\n") == code


def test_the_stored_hash_is_bound_to_user_address_and_code():
    base = verification.code_hash("alice", "a@example.org", "ABCD2345WXYZ")
    assert len(base) == 64 and "ABCD2345WXYZ" not in base
    assert base != verification.code_hash("bob", "a@example.org", "ABCD2345WXYZ")
    assert base != verification.code_hash("alice", "b@example.org", "ABCD2345WXYZ")
    assert base != verification.code_hash("alice", "a@example.org", "ABCD2345WXYX")
    # no ambiguity from joining: ("a", "b@c") and ("a\0b", "c") are different inputs
    assert verification.code_hash("a", "b", "c") != verification.code_hash("a,b", "", "c")


def test_the_budget_is_a_sliding_hour_per_kind():
    sends = {"email": [STAMP - 3599, STAMP - 10], "webhook": [STAMP - 5]}

    with pytest.raises(RateLimited) as refused:
        verification.charged(sends, "email", NOW, per_hour=2)
    assert refused.value.headers["Retry-After"] == "1"  # the older send leaves the hour then
    later = verification.charged(sends, "email", NOW + timedelta(seconds=1), per_hour=2)
    assert later["email"] == [STAMP - 10, STAMP + 1]  # pruned, one added
    assert later["webhook"] == [STAMP - 5]  # another kind, its own budget
    assert sends["email"] == [STAMP - 3599, STAMP - 10]  # a new dict: the JSON column sees it
    assert verification.charged(None, "webhook", NOW, per_hour=1) == {"webhook": [STAMP]}


@pytest.mark.parametrize(
    "body, echoed",
    [
        (b"tok_123", True),  # Microsoft Graph: the token as the body
        (b"tok_123\r\n", True),
        (b'{"challenge": "tok_123"}', True),  # Slack: a JSON object
        # The challenge sent back whole: an echo service, whose owner agreed to nothing.
        (b'{"type": "url_verification", "challenge": "tok_123"}', False),
        (b'{"challenge": "tok_12"}', False),
        (b'{"challenge": ["tok_123"]}', False),
        (b'["tok_123"]', False),
        (b"", False),
        (b'{"received": true}', False),
        (b"\xff\xfe", False),
        (b"[" * 100_000, False),
        (b'{"challenge": ' + b"9" * 5000 + b"}", False),  # past int()'s digit limit
    ],
)
def test_an_answer_echoes_the_challenge_only_exactly(body: bytes, echoed: bool):
    assert verification.echoes(body, "tok_123") is echoed


def test_the_confirmation_mail_carries_only_fixed_text_and_the_code():
    subject, body = verification.confirmation_mail("ABCD2345WXYZ", NOW)
    assert subject == "Confirm your e-mail address for duetide reminders"
    assert "ABCD-2345-WXYZ" in body and "2026-11-24T12:00:00+00:00" in body
    assert email.header_text(subject, 200) == subject


@pytest.mark.parametrize(
    "text, folded",
    [
        ("Pay rent", "Pay rent"),
        ("Pay rent\r\nBcc: victim@example.test", "Pay rent Bcc: victim@example.test"),
        ("a\rb\nc\r\n\r\nd", "a b c d"),
        ("tab\there\x0bvt\x0cff", "tab here vt ff"),
        ("next\x85line\u2028sep\u2029par", "next line sep par"),
        ("nul\x00bell\x07del\x7f", "nul bell del"),
        ("  padded  ", "padded"),
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),
        ("Grüße ✓", "Grüße ✓"),
    ],
)
def test_header_text_folds_line_breaks_and_controls_into_spaces(text: str, folded: str):
    assert email.header_text(text, 200) == folded


def test_header_text_is_clipped():
    assert email.header_text("x" * 500, 200) == "x" * 200


@pytest.mark.parametrize(
    "value, bare",
    [
        ("alice@example.org", "alice@example.org"),
        ("Alice <alice@example.org>", "alice@example.org"),
        ("first.last+tag@mail.example.org", "first.last+tag@mail.example.org"),
        ("duetide@localhost", "duetide@localhost"),
    ],
)
def test_the_one_address_check_accepts_plain_ascii_mailboxes(value: str, bare: str):
    assert email.validate_address(value) == bare


@pytest.mark.parametrize(
    "value",
    [
        "jörg@example.org",  # needs SMTPUTF8: a relay without it fails every send
        "alice@exämple.org",
        '"a b"@example.org',
        "a@b@example.org",
        "alice@example.org, bob@example.org",
        "alice@-example.org",
        "alice@example..org",
        "alice.@example.org",
        ".alice@example.org",
        "alice@example.org.",
        "alice@[127.0.0.1]",
        "x" * 65 + "@example.org",
        "a@" + ".".join(["x" * 60] * 5),
        "alice@example.org\r\nBcc: x@example.org",
        "not an address",
        "",
    ],
)
def test_the_one_address_check_refuses_what_a_relay_could_not_take(value: str):
    with pytest.raises(ValueError) as refused:
        email.validate_address(value)
    assert value not in str(refused.value) or not value
