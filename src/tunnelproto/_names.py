"""Display names are untrusted input: they end up in every member's agent context."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

MAX_NAME_CHARS = 64
DEFAULT_NAME = "guest"


def sanitize_name(raw: str) -> str:
    """Strip control and format characters (newlines, bidi overrides, zero-width tricks), fold
    runs of white space, cap at MAX_NAME_CHARS. Never returns an empty name."""
    return one_line(raw, MAX_NAME_CHARS) or DEFAULT_NAME


def one_line(raw: str, limit: int) -> str:
    """Untrusted text made fit for one line of human-readable output (a name, or a reason a
    peer gave): white space, line breaks included, folded to single spaces, every other control
    or format character dropped, at most `limit` characters. May be empty."""
    head = raw[: limit * 8]
    if head.isascii() and head.isprintable():
        # The usual name ("ana", "m3"): no control character and no white space but the plain
        # space, so the loop below would keep every character as it is.
        return " ".join(head.split())[:limit].strip()
    kept = []
    for ch in head:
        cat = unicodedata.category(ch)
        if ch.isspace():
            kept.append(" ")
        elif cat[0] == "C":  # Cc control, Cf format, Cs surrogate, Co private use, Cn unassigned
            continue
        else:
            kept.append(ch)
    return " ".join("".join(kept).split())[:limit].strip()


def unique_name(name: str, taken: Iterable[str]) -> str:
    """'ana' stays 'ana' if free, else becomes 'ana (2)', 'ana (3)', ... within the length cap."""
    taken_folded = {t.casefold() for t in taken}
    if name.casefold() not in taken_folded:
        return name
    n = 2
    while True:
        suffix = f" ({n})"
        candidate = name[: MAX_NAME_CHARS - len(suffix)].rstrip() + suffix
        if candidate.casefold() not in taken_folded:
            return candidate
        n += 1
