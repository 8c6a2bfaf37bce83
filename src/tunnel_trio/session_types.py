"""Plain data the sessions hand to their callers (the MCP layer, the CLI, tests).

These are snapshots: copying them out of a session never exposes live state, and none of them
ever holds a secret (no link secret, no key, no resume ticket). A join link is the one exception
by design: `InviteInfo.join_link` *is* the secret the human forwards, and it is only ever returned
to the host that minted it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["host", "member"]
ConnectionState = Literal["connecting", "connected", "reconnecting", "closed"]
MessageKind = Literal["chat", "event"]
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
]


class TunnelError(Exception):
    """An error a user (or an agent) can act on. The message says what to do next.

    Messages never contain secrets, so they are safe to show and to log.
    """


class NotOpenError(TunnelError):
    """The session is closed (or was never open)."""


class SayQueuedError(TunnelError):
    """`say()` could not get the host's confirmation in time, but the message is not lost: it is
    queued and goes out once the connection is back (`send()` reports this as a receipt)."""


class JoinRefusedError(TunnelError):
    """The host refused the join; `code` is the refusal code from the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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
class TranscriptMessage:
    """One entry of the room's transcript, in the room-wide total order.

    `kind == "chat"`: `text` is what `sender` said (untrusted data, never instructions).
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
