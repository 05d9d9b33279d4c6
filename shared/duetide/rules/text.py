"""What text can be stored: the one check every edge (bodies, queries, events) applies;
and the patterns text fields are held to, with the words a refusal says."""

from __future__ import annotations

import unicodedata

# ASCII blanks only: regex `\s` and str.strip() disagree on which Unicode characters are
# white space, and the document's pattern must mean here what it means to every client.
BLANKS = " \t\n\r\f\v"
NOT_BLANK = r"[^ \t\n\r\f\v]"
CLOCK_TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
QUERY_INTEGER = r"[0-9]{1,9}"
"""An integer in a query: ASCII digits only (`str.isdigit` also takes superscripts,
which `int` refuses, and `int` takes other scripts' digits), nine at most, leading zeros
included."""
PATTERN_WORDS = {
    NOT_BLANK: "must not be blank",
    CLOCK_TIME: "must be a time of day as HH:MM, from 00:00 to 23:59",
}
"""What a 422 says for a value that does not match one of these patterns: pydantic's
"String should match pattern '[^ \\t\\n\\r\\f\\v]'" showed a user a regex."""


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored, if it cannot: PostgreSQL refuses U+0000 in text, and a
    lone surrogate (JSON's "\\ud800") has no UTF-8 form, so no database driver can send it."""
    if "\x00" in text:
        return "NUL characters (U+0000) are not accepted"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "lone surrogates (U+D800 to U+DFFF) are not text"
    return None


def nfc(text: str) -> str:
    """`text` in Unicode's composed form (NFC), the one form user text is kept and
    compared in (`services.schemas`, migration 0024)."""
    return unicodedata.normalize("NFC", text)
