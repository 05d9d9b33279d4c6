"""What text can be stored: the one check every edge (bodies, queries, events) applies."""

from __future__ import annotations


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
