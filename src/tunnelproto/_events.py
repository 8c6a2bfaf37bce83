"""Events: what the core tells its driver. One small frozen class per thing that can happen.

Member side (`MemberConnection.next_event()`): the `Welcomed` ... `ConnectionEnded` classes.
Host side (`Room.data_to_send()`): `Send` and `Disconnect`, the two things a relay does.
Drivers match on the class, never on a string field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._frames import FileEntry, MemberEntry


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


# ---- files (spec "Files"): offers, manifests, transfers ----


@dataclass(frozen=True, slots=True)
class OfferInfo:
    """An offer as this side knows it. `files` is the manifest so far: the first page that came
    with the offer (all of it when `len(files) == count`); `request_files()` gets the rest.
    `name` and `note` are the sharer's words: untrusted data, like chat text."""

    id: int
    sharer: int
    name: str
    count: int
    total: int
    files: tuple[FileEntry, ...]
    note: str | None = None
    seq: int = 0
    ts: int = 0


@dataclass(frozen=True, slots=True)
class TransferInfo:
    """A transfer in progress, for status: `at` bytes of `size` have passed this side."""

    transfer: int
    offer: int
    file: int
    size: int
    at: int
    sharer: int
    receiver: int
    parked: bool = False  # the sharer is away; the transfer goes on when it resumes


@dataclass(frozen=True, slots=True)
class FileOffer(TunnelEvent):
    """An offer in the room's total order (`offer.seq`). Our own offers come back too."""

    offer: OfferInfo

    @property
    def seq(self) -> int:
        return self.offer.seq


@dataclass(frozen=True, slots=True)
class FileOfferEnded(TunnelEvent):
    """The offer `offer_id` ended, in the total order: `reason` is withdrawn, left, removed or
    expired. Its transfers end with FetchAborted(code="gone")."""

    seq: int
    ts: int
    offer_id: int
    sharer: int
    reason: str


@dataclass(frozen=True, slots=True)
class ShareAccepted(TunnelEvent):
    """Our `share(ref)` is offer `offer_id`, in the transcript at `seq`."""

    ref: int
    offer_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class ShareRejected(TunnelEvent):
    """The room did not take our `share(ref)`: caps, a bad path, rate limited (`retry_ms`)."""

    ref: int
    code: str
    message: str
    retry_ms: int | None = None


@dataclass(frozen=True, slots=True)
class FileList(TunnelEvent):
    """The whole manifest of offer `offer_id`, after `request_files()`."""

    offer_id: int
    files: tuple[FileEntry, ...]


@dataclass(frozen=True, slots=True)
class FileListFailed(TunnelEvent):
    """The manifest of offer `offer_id` could not be listed: the offer is gone."""

    offer_id: int
    message: str


@dataclass(frozen=True, slots=True)
class ReadRequest(TunnelEvent):
    """We share: read `size` bytes of file `file` of our offer `offer_id` from `offset`, then
    hand them to `provide_chunk(transfer, offset, data)` (or `read_failed`) on the same object
    that asked. At most one request per transfer is outstanding."""

    transfer: int
    offer_id: int
    file: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class ChunkReceived(TunnelEvent):
    """We receive: bytes `offset` .. `offset + len(data)` of our fetch `transfer`, in order.
    Write them, then `grant()` the credit back."""

    transfer: int
    offset: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class FetchComplete(TunnelEvent):
    """Every byte of our fetch `transfer` has come (the last ChunkReceived was before this)."""

    transfer: int


@dataclass(frozen=True, slots=True)
class FetchAborted(TunnelEvent):
    """Our fetch `transfer` ended early: `code` is gone, bad-fetch, busy, changed, unreadable
    or closed; `message` (the host's or sharer's words, cleaned) says why."""

    transfer: int
    code: str
    message: str
