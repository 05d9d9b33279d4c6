"""Durations come back in the readable ISO 8601 form a person would write."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from duetide.rules.durations import iso_duration
from duetide.services.schemas import Duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "PT0S"), (1, "PT1S"), (900, "PT15M"), (3_600, "PT1H"), (5_400, "PT1H30M"),
        (86_400, "P1D"), (93_600, "P1DT2H"), (604_800, "P7D"), (90_061, "P1DT1H1M1S"),
    ],
)  # fmt: skip
def test_canonical_form(seconds: int, text: str) -> None:
    assert iso_duration(seconds) == text


@given(st.integers(min_value=0, max_value=400 * 86_400))
def test_the_form_reads_back_as_the_same_duration(seconds: int) -> None:
    """What the API answers is what it accepts: the text means the same seconds."""
    assert TypeAdapter(Duration).validate_python(iso_duration(seconds)).total_seconds() == seconds


def test_a_negative_duration_is_refused() -> None:
    with pytest.raises(ValueError):
        iso_duration(-1)
