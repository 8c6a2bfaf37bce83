"""Plain data the sessions hand to their callers (the MCP layer, the CLI, tests).

These are snapshots: copying them out of a session never exposes live state, and none of them
ever holds a secret (no link secret, no key, no resume ticket). A join link is the one exception
by design: `InviteInfo.join_link` *is* the secret the human forwards, and it is only ever returned
to the host that minted it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from tunnel_trio.errors import JoinRefusedError as JoinRefusedError
from tunnel_trio.errors import NotOpenError as NotOpenError
from tunnel_trio.errors import SayQueuedError as SayQueuedError
from tunnel_trio.errors import TunnelError as TunnelError

# Nothing here imports tunnelproto: importing any of its modules imports the whole protocol
# core (~70 ms). The MCP server loads this module with its tools, which the client's first
# `tools/list` waits for; the session layer (and so the core) loads later, in the background.
# (A test keeps it so.)

Role = Literal["host", "member"]
ConnectionState = Literal["connecting", "connected", "reconnecting", "closed"]
MessageKind = Literal["chat", "event", "file"]
#: Kinds of room events, as they appear on the wire and in `TranscriptMessage.event`.
EventKind = Literal[
    "joined",
    "left",
    "disconnected",
    "reconnected",
    "removed",
    "closed",
    "idle-closed",
    "history-truncated",
    "undelivered",
    "file-offer",
    "file-offer-ended",
]


@dataclass(frozen=True, slots=True)
class MemberInfo:
    id: int
    name: str
    is_host: bool


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member as a status shows it. `phrase` is the member's verification phrase: the host
    sees every member's, a member only its own (None elsewhere, and for the host's own row). It
    is for the human to compare with the other end's, so it is kept out of the repr (and so out
    of any log line that prints a status)."""

    id: int
    name: str
    is_host: bool
    connected: bool
    phrase: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class OfferFile:
    """One file of an offer: its path inside the offer ('/'-separated; the sharer's words,
    untrusted data like chat text), its size in bytes and its SHA-256 (hex)."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class FileOfferInfo:
    """A file offer as a transcript message and a status show it.

    `name` and `note` are the sharer's words (untrusted data, like chat text). `files` lists
    the first `MAX_FILES_SHOWN` (see `tunnel_trio.files`) of its `count` files; `plan_receive`
    lists them all. `hash` is the SHA-256 (hex) of the whole manifest, one line per file in
    manifest order, ``"<sha256 hex>  <path>\n"`` (the `sha256sum` format): both ends compute it
    from the manifest they hold, so two humans can compare it. None while a member holds only
    the first page of a very large manifest. `is_folder`: a folder's offer (else one file)."""

    offer_id: int
    sharer: MemberInfo
    name: str
    count: int
    total: int
    files: tuple[OfferFile, ...]
    hash: str | None
    is_folder: bool
    note: str | None = None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class TranscriptMessage:
    """One entry of the room's transcript, in the room-wide total order.

    `kind == "chat"`: `text` is what `sender` said (untrusted data, never instructions).
    `kind == "file"`: a file offer, in the total order. `event` is "file-offer" (`sender`
    offers `file`) or "file-offer-ended" (`file` can no longer be received; `reason` says why:
    withdrawn, its sharer left or was removed, or it expired).
    `kind == "event"`: `event` names what happened, `subject` is the member it happened to
    (for joined/left/disconnected/reconnected/removed), `text` is the host's words: its summary
    for `closed`, its reason for `removed`. A kind this version does not know is passed on as
    it came (a well-formed kind, see spec "Frames"), with its subject and text.
    `phrase`: on the host's own `joined` entries only, the member's verification phrase (never
    on a member's copy: the room does not send phrases); kept out of the repr.
    `seq` is 0 only for a local notice that is not part of the shared transcript:
    `history-truncated`; `undelivered` (`text` is one of our own queued messages that did not
    reach the room, `reason` says why); and, for a member whose tunnel ended without the room's
    own `closed` event (the host vanished, or refused to take us back), a last `closed` whose
    `reason` says why.
    """

    seq: int
    kind: MessageKind
    ts: float
    sender: MemberInfo | None
    text: str | None = None
    event: EventKind | None = None
    subject: MemberInfo | None = None
    phrase: str | None = field(default=None, repr=False)
    reason: str | None = None
    file: FileOfferInfo | None = None


class _UnfrozenMessage:
    """TranscriptMessage's slots without its frozen __setattr__: `chat_message` fills one with
    plain stores and then gives it its real class (`tunnelproto._make.maker`, written out: see
    the imports). A slot setter per field was a C call each, about 50 ns."""

    __slots__ = ("seq", "kind", "ts", "sender", "text", "event", "subject", "phrase", "reason",
                 "file")  # fmt: skip


if _UnfrozenMessage.__slots__ != tuple(f.name for f in fields(TranscriptMessage)):
    raise TypeError("TranscriptMessage: its fields are not _UnfrozenMessage's slots")


def chat_message(
    seq: int, ts: float, sender: MemberInfo | None, text: str | None
) -> TranscriptMessage:
    """`TranscriptMessage(seq=seq, kind="chat", ts=ts, sender=sender, text=text)`, made without
    the frozen dataclass's __init__ (see `tunnelproto._make`): every session makes one per chat
    message, the busiest object of chat."""
    message: Any = object.__new__(_UnfrozenMessage)
    message.seq = seq
    message.kind = "chat"
    message.ts = ts
    message.sender = sender
    message.text = text
    message.event = None
    message.subject = None
    message.phrase = None
    message.reason = None
    message.file = None
    message.__class__ = TranscriptMessage
    return message  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class InviteInfo:
    join_link: str = field(repr=False)  # the secret itself: only the host's own result shows it
    expires_in_sec: int


@dataclass(frozen=True, slots=True)
class PendingInvite:
    expires_in_sec: int


@dataclass(frozen=True, slots=True)
class ListenResult:
    """One page of messages after a seq. `more`: the page was cut at its message or byte cap,
    and more messages wait after `last_seq` (listen again at once)."""

    messages: list[TranscriptMessage]
    last_seq: int
    timed_out: bool
    more: bool = False


@dataclass(frozen=True, slots=True)
class TranscriptWindow:
    """The newest messages that fit the caps; `earlier`: older messages exist before them."""

    messages: list[TranscriptMessage]
    last_seq: int
    earlier: bool


@dataclass(frozen=True, slots=True)
class SayReceipt:
    """What became of a say: stamped with `seq`, or `queued` (no seq yet: the host has not
    confirmed it, and it goes out once the connection is back; do not send it again)."""

    seq: int | None
    queued: bool = False


@dataclass(frozen=True, slots=True)
class SessionStatus:
    role: Role
    goal: str
    tunnel_id: str
    self_member: MemberInfo
    members: list[MemberStatus]
    pending_invites: list[PendingInvite]
    last_seq: int
    transport: str | None  # host: the transport's name; member: None
    public_url: str | None  # host: the public base URL (no secret in it); member: None
    connection: ConnectionState
    cloudflared_alive: bool | None  # None unless the transport is cloudflared
    warnings: list[str] = field(default_factory=list)
    closed_reason: str | None = None
    #: Once closed: what ended it, in words to show (e.g. "the host removed you from the room
    #: (the host's reason: ...)"); None while open.
    closed_message: str | None = None
    #: While reconnecting: seconds left before the member stops trying (the tunnel then closes).
    gives_up_in_sec: int | None = None
    #: Says the host has not confirmed yet that will go out once the connection is back.
    queued_says: int = 0
    #: The live file offers in the room, oldest first (ours included).
    offers: list[FileOfferInfo] = field(default_factory=list)
    #: Our receives that are running or can be continued.
    receives: list[ReceiveProgress] = field(default_factory=list)


# ---- files (issue 10) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file left out, and why (a sharer's scan: a `files_disk.SKIP_*` reason; a receive: the
    file is already there, or it could not be received)."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class PreparedShare:
    """What sharing `path` would offer, for the human to approve before anything is sent:
    `share(prepared)` publishes exactly this (the files are read only when a receiver fetches
    them, and a file that changed since is refused, not sent)."""

    path: str  # the real, absolute path that is read
    name: str  # the offer's name: the file's or the folder's
    is_folder: bool
    files: tuple[OfferFile, ...]
    count: int
    total: int
    hash: str
    skipped: tuple[SkippedFile, ...]
    #: Skipped entries beyond those listed (counted only).
    skipped_unlisted: int
    warnings: tuple[str, ...]
    note: str | None
    scan: object = field(repr=False, compare=False)  # the files_disk.Share behind it


@dataclass(frozen=True, slots=True)
class ShareResult:
    """A published offer: every member sees it as a `file` message at `seq`."""

    offer_id: int
    seq: int
    name: str
    is_folder: bool
    files: tuple[OfferFile, ...]
    count: int
    total: int
    hash: str
    skipped: tuple[SkippedFile, ...]
    skipped_unlisted: int
    warnings: tuple[str, ...]
    note: str | None


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One file a receive writes: its path in the offer, where it goes, and whether it replaces
    a file there (only with overwrite)."""

    path: str
    target: str
    size: int
    sha256: str
    replaces: bool


@dataclass(frozen=True, slots=True)
class PreparedReceive:
    """Where receiving an offer would write, checked before one byte is written, for the human
    to approve: `receive(prepared)` writes exactly there. `skipped`: files already at their
    target with the same size and SHA-256 (not fetched again)."""

    offer_id: int
    name: str
    sharer: MemberInfo
    destination: str  # the real, absolute folder the files go into
    files: tuple[PlannedFile, ...]
    count: int
    total: int
    overwrite: bool
    skipped: tuple[SkippedFile, ...]
    plan: object = field(repr=False, compare=False)  # the files_disk.ReceivePlan behind it


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """A file written and verified: its path in the offer, where it is, size, SHA-256 (hex)."""

    path: str
    target: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ReceiveResult:
    """What a receive did so far.

    `complete`: every file is written (or already was: `skipped`). `running`: it goes on in
    the background (the wait ended first): call `receive` again to wait more, or
    `cancel_receive`. `resumable`: it stopped but `receive` again continues from the bytes
    already received and verified. `failed`: files that could not be received, and why; no
    partial file of theirs is left. `error`: why the receive stopped early, if it did.
    `delivered_bytes`: what the room delivered for it in this process, resumes included: equal
    to `received_bytes` when no byte came twice (a dropped connection resumes from the last
    byte delivered)."""

    offer_id: int
    destination: str
    written: tuple[ReceivedFile, ...]
    skipped: tuple[SkippedFile, ...]
    failed: tuple[SkippedFile, ...]
    complete: bool
    running: bool
    resumable: bool
    received_bytes: int
    total_bytes: int
    error: str | None = None
    delivered_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ReceiveProgress:
    """A receive, for status: `state` is "running", "resumable" (stopped; `receive` again
    continues it), or how it ended ("complete", "failed") until a `receive` call reports it."""

    offer_id: int
    name: str
    destination: str
    files_done: int
    count: int
    received_bytes: int
    total_bytes: int
    state: Literal["running", "resumable", "complete", "failed"]
