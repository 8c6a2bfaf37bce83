"""One entry of the room's transcript (spec "Sequencing"), as the host keeps it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._events import OfferInfo
from ._make import maker


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One entry of the transcript. `frame` is its encoded plaintext, shared by all members."""

    seq: int
    ts: int
    kind: str  # "chat" or "event"
    sender: int | None
    text: str | None
    event: str | None
    member: int | None
    name: str | None
    summary: str | None
    frame: bytes
    #: `joined` only: the member's verification phrase, for the host's eyes. Never on the wire
    #: (it is not in `frame`), and kept out of the repr so that logging an entry cannot log it.
    phrase: str | None = field(default=None, repr=False)
    #: Files (events `file-offer`, `file-offer-ended`): `frame` is the `offer` or `unoffer`
    #: frame that connections with files/1 get, `fallback` the generic `event` the others get.
    fallback: bytes | None = field(default=None, repr=False)
    #: Files: the offer, without its files (`room.files.offer(id)` has them while it lives;
    #: `frame` holds the first page).
    offer: OfferInfo | None = None


_MAKE_ENTRY = maker(TranscriptEntry)


def chat_entry(seq: int, ts: int, sender: int, text: str, frame: bytes) -> TranscriptEntry:
    """`TranscriptEntry(seq, ts, "chat", sender, text, None, None, None, None, frame)`, made
    without the frozen dataclass's __init__ (see `_make`): one per chat message."""
    entry: TranscriptEntry = _MAKE_ENTRY(
        seq, ts, "chat", sender, text, None, None, None, None, frame, None, None, None
    )
    return entry


def held_bytes(entry: TranscriptEntry) -> int:
    # The cap is on memory: each entry holds its encoded frame(s) and, decoded, its text.
    fallback = len(entry.fallback) if entry.fallback else 0
    return len(entry.frame) + fallback + (len(entry.text) if entry.text else 0)
