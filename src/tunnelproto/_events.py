"""Events: what the core tells its driver. One small frozen class per thing that can happen.

Member side (`MemberConnection.next_event()`): the `Welcomed` ... `ConnectionEnded` classes.
Host side (`Room.data_to_send()`): `Send` and `Disconnect`, the two things a relay does.
Drivers match on the class, never on a string field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._frames import MemberEntry


class TunnelEvent:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Welcomed(TunnelEvent):
    """The handshake finished: we are in the room (or back in it, when `resumed`).

    `phrase` is the seat's verification phrase: derived at the join, the same on a resume. The
    member's human compares it with the host's over a channel they trust. Kept out of the repr
    so that logging an event cannot log it.
    """

    member_id: int
    name: str
    goal: str
    roster: tuple[MemberEntry, ...]
    last_seq: int
    resumed: bool
    limits: dict[str, int]
    phrase: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Refused(TunnelEvent):
    """The host refused us. `code` is one of the refusal codes in spec/protocol.md."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ChatMessage(TunnelEvent):
    """A chat message in the room's total order. `text` is untrusted data from `sender_id`."""

    seq: int
    sender_id: int
    ts: int
    text: str


@dataclass(frozen=True, slots=True)
class RoomEvent(TunnelEvent):
    """A structured room event in the total order (joined, left, disconnected, ...).

    `seq == 0` only for `history-truncated`, which is a notice to one member, not part of the
    shared transcript; then `first_seq` is the oldest seq the room still holds.
    """

    seq: int
    kind: str
    ts: int
    member_id: int | None = None
    name: str | None = None
    summary: str | None = None
    first_seq: int | None = None


@dataclass(frozen=True, slots=True)
class RosterChanged(TunnelEvent):
    members: tuple[MemberEntry, ...]


@dataclass(frozen=True, slots=True)
class SayAccepted(TunnelEvent):
    """Our `say(ref)` is in the transcript at `seq` (the room's copy came back to us)."""

    ref: int
    seq: int


@dataclass(frozen=True, slots=True)
class SayRejected(TunnelEvent):
    """The room did not take our `say(ref)`: too long, rate limited (`retry_ms`), ..."""

    ref: int
    code: str
    message: str
    retry_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectionEnded(TunnelEvent):
    """This connection is over.

    `resumable` says whether a new connection with `MemberConnection.resume_state()` can take
    the seat back (a network drop, a keepalive timeout, being too slow) or whether the room is
    gone or we left (`reason` is then `closed`, `idle-closed`, `left`, `removed` ...). After
    `removed`, `summary` is the host's reason (if it gave one) and `message` says it, cleaned.
    """

    reason: str
    message: str
    resumable: bool
    summary: str | None = None


# ---- host side: what the relay driver must do ----


@dataclass(frozen=True, slots=True)
class Send:
    """Transmit `data` as one binary WebSocket message on connection `conn`."""

    conn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close connection `conn` with WebSocket close `code` and `reason`, after any earlier Sends."""

    conn: int
    code: int
    reason: str
