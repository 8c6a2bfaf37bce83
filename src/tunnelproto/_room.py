"""The host side: one `Room` owns invites, seats, the transcript and every member connection.

The driver calls `open_connection()` for each new WebSocket, `receive()` for each binary message,
`connection_lost()` when a socket dies, `handle_timer()` at `next_deadline()`, and drains
`data_to_send()` after each call. The host's own member talks to the room by direct calls
(`say`, `close`), with no crypto. No call here raises because of what a peer sent: a bad
connection is reported as a `Disconnect` and only that connection ends.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _frames as f
from ._budget import InboundBudget
from ._channel import (
    MAX_FRAME,
    MSG2_NOISE,
    MSG2_PLAIN_REFUSE,
    SEAL_OVERHEAD,
    Channel,
    Message,
    message_bytes,
    new_handshake,
    split_msg1,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import Disconnect, Send
from ._files import DEFAULT_FILE_WINDOW, END_LEFT, END_REMOVED
from ._files_room import RoomFiles
from ._link import (
    SECRET_LEN,
    TUNNEL_ID_BYTES,
    JoinLink,
    b64url,
    invite_id,
    invite_psk,
    ticket_id,
    ticket_psk,
)
from ._make import maker
from ._names import sanitize_name, unique_name
from ._noise import NoiseError
from ._phrase import derive_phrase
from ._removal import REMOVED, RemovedTickets, check_reason
from ._state import BATCH_CAP, FILES_CAP, ROOM_ACCEPTS, ROOM_ACCEPTS_FILES, ConnState
from ._transcript import TranscriptEntry, chat_entry
from ._transcript import held_bytes as _held_bytes

#: What an OPEN connection may send (the usual case, looked up once).
_ACCEPTS_OPEN = ROOM_ACCEPTS[ConnState.OPEN]
#: Send(conn, data) for each sealed message of the room (see `_make`).
_MAKE_SEND = maker(Send)

# ---- limits (spec section "Limits"); each one has a clear error when hit ----
#: Max chat text, in UTF-8 bytes.
MAX_TEXT_BYTES = 32 * 1024
#: Max goal, in characters (it rides in every welcome).
MAX_GOAL_CHARS = 4000
#: Max host summary on close, in characters.
MAX_SUMMARY_CHARS = 4000
DEFAULT_CAPACITY = 16
#: Largest capacity: a welcome or roster frame for this many members with the longest names
#: (64 characters, 4 UTF-8 bytes each) plus the longest goal stays under the max plaintext.
MAX_CAPACITY = 64
#: Connections not yet OPEN at once. At the cap the oldest one still waiting for message 1 is
#: closed to make room (see `Room.open_connection`), so the cap is what an attacker must keep
#: refilling: it is sized well above the sockets one client needs (1) and a whole room resuming
#: at once (`DEFAULT_CAPACITY`), and each pending connection holds little (no keys before
#: message 1, at most one `MAX_FRAME` message being reassembled by the driver).
DEFAULT_MAX_PENDING = 32
#: Refused says remembered per seat for re-sends after a resume (a member holds at most 256
#: unanswered says, see `_member.MAX_UNACKED_SAYS`).
MAX_REMEMBERED_REFUSALS = 256
#: Unconfirmed resume tickets a seat keeps valid at once (each from a welcome whose ack was lost).
MAX_TICKETS_PER_SEAT = 4

# ---- WebSocket close codes the room asks the driver to use (spec "Close codes") ----
CLOSE_NORMAL = 1000
CLOSE_ROOM_CLOSED = 4000
CLOSE_PROTOCOL_ERROR = 4001
CLOSE_HANDSHAKE_TIMEOUT = 4002
CLOSE_KEEPALIVE_TIMEOUT = 4003
CLOSE_SLOW_CONSUMER = 4004
CLOSE_REPLACED = 4005
CLOSE_LEFT = 4006
CLOSE_REMOVED = 4007
CLOSE_REFUSED = 4008
CLOSE_TOO_MANY_PENDING = 4009
CLOSE_FLOODING = 4010

REFUSAL_MESSAGES = {
    "unknown-invite": "this tunnel has no such invite: ask the host for a fresh link",
    "used": "this invite was already used (links are single-use): ask the host for a new one",
    "expired": "this invite expired: ask the host for a new link",
    "in-use": (
        "someone is joining with this invite right now (perhaps your own earlier attempt, which "
        "times out within 10 s): try again in 10 s, or ask the host for a new link"
    ),
    "room-full": "the room is full: ask the host to make room",
    "version-unsupported": "the host speaks another protocol version: update tunnel-mcp",
    "closed": "the room has closed",
    "bad-resume": "the resume request was invalid: join again with a new link",
    REMOVED: "the host removed you from the room: ask the host for a new link to come back",
}


def _is_utf8(text: str) -> bool:
    """False for text with lone surrogates, which no frame can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _flooding(unit: str) -> RemoteProtocolError:
    """What ends a connection whose seat's inbound budget (`unit`: bytes or frames) ran out."""
    return RemoteProtocolError(
        f"you sent more {unit} than the room takes (refused and ignored frames count too): "
        "you were removed from the room",
        "flooding",
    )


def check_text(text: str, error: type[LocalProtocolError] | type[RemoteProtocolError]) -> None:
    """The rules for chat text, shared by the member (before sending) and the room."""
    if not isinstance(text, str) or not text.strip():
        raise error("the message is empty", "empty")
    if text.isascii():
        size = len(text)  # what it takes as UTF-8, without encoding it (most chat)
        valid = True
    else:
        size = len(text.encode("utf-8", "surrogatepass"))
        # Lone surrogates cannot travel as UTF-8.
        valid = size > MAX_TEXT_BYTES or _is_utf8(text)
    if size > MAX_TEXT_BYTES:
        raise error(
            f"the message is too long ({size} bytes, max {MAX_TEXT_BYTES}): split it",
            "too-long",
        )
    if not valid:
        raise error("the message is not valid Unicode text", "malformed")


@dataclass(slots=True)
class RoomConfig:
    capacity: int = DEFAULT_CAPACITY  # members including the host
    invite_ttl: float = 600.0
    handshake_timeout: float = 10.0  # from the connection's arrival to key confirmation
    message1_timeout: float = 5.0  # from the connection's arrival to a complete message 1
    max_pending: int = DEFAULT_MAX_PENDING  # unauthenticated connections at once
    idle_timeout: float = 30 * 60.0  # no chat for this long closes the room
    grace: float = 120.0  # a dropped member's seat is held this long
    transcript_cap: int = 64 * 1024 * 1024  # bytes of encoded frames kept for history/resume
    window: int = 1024 * 1024  # unacknowledged bytes in flight to one member
    stall_timeout: float = 30.0  # window full and no ack for this long: slow consumer
    ping_after: float = 20.0
    dead_after: float = 60.0
    rate_burst: int = 20  # say/ping tokens a member may spend at once
    rate_per_sec: float = 5.0  # token refill
    offer_ttl: float = 30 * 60.0  # a file offer ends this long after it was made
    file_window: int = DEFAULT_FILE_WINDOW  # bytes a receiver may have outstanding per transfer
    # The inbound budget (spec section 18): what a seat's frames may cost the host, whatever
    # they are. Sized so that an honest member never meets it: says at the rate limit at the
    # largest size, an ack for every entry, pings, and all 256 unanswered says re-sent at once
    # after a resume (256 x 32 KiB is 8 MiB: half the byte burst).
    inbound_frame_burst: int = 1024  # frames at once (an ack that retires entries is free)
    inbound_frames_per_sec: float = 100.0
    inbound_byte_burst: int = 16 * 1024 * 1024  # transport bytes at once
    inbound_bytes_per_sec: float = 512 * 1024


@dataclass(slots=True)
class Invite:
    invite_id: bytes
    #: The link's secret, until the invite is used or expires: then only `psk` is kept (to
    #: refuse a late redeemer inside Noise), and the link can no longer be rebuilt from memory.
    secret: bytes | None
    psk: bytes
    expires_at: float
    state: str = "open"  # open | reserved | used
    reserved_by: int | None = None

    def __repr__(self) -> str:
        return f"Invite(state={self.state!r}, expires_at={self.expires_at!r}, secret=<hidden>)"

    def link(self, base_url: str, tunnel_id: str) -> JoinLink:
        if self.secret is None:
            raise LocalProtocolError("this invite was used or expired: its link is gone", "gone")
        return JoinLink(base_url=base_url, tunnel_id=tunnel_id, secret=self.secret)

    def forget_secret(self) -> None:
        self.secret = None


@dataclass(slots=True)
class Seat:
    id: int
    name: str
    is_host: bool
    conn: int | None = None
    connected: bool = False
    disconnected_at: float = 0.0
    # Valid resume tickets, id -> PSK, oldest first: the confirmed one plus any handed out in
    # a resume welcome whose confirmation never arrived (the member may hold either). The
    # ticket secrets themselves are not kept: the member holds them.
    tickets: dict[bytes, bytes] = field(default_factory=dict, repr=False)  # PSKs
    last_ref: int = 0
    tokens: float = 0.0
    tokens_at: float = 0.0
    #: The inbound budget (spec section 18), per seat so that reconnecting does not refill it.
    budget: InboundBudget | None = None
    #: Recent refused says by ref, so a re-send after resume is refused again (bounded).
    refused: dict[int, f.Error] = field(default_factory=dict)
    #: The verification phrase of the seat's join handshake (None for the host's own seat).
    phrase: str | None = field(default=None, repr=False)

    def entry(self) -> f.MemberEntry:
        return f.MemberEntry(id=self.id, name=self.name, host=self.is_host, on=self.connected)


@dataclass(slots=True)
class _Pending:
    """What a connection in CONFIRMING is about to become."""

    seat_id: int
    name: str
    new_ticket: bytes = field(repr=False)  # a secret
    invite: Invite | None  # join
    resume_seat: Seat | None  # resume
    last: int  # resume: highest seq the member holds
    phrase: str | None = field(default=None, repr=False)  # join: from this handshake's hash


@dataclass(slots=True)
class _Conn:
    id: int
    opened_at: float
    last_rx: float
    state: ConnState = ConnState.HANDSHAKE
    channel: Channel | None = None
    pending: _Pending | None = None
    seat_id: int | None = None
    ping_outstanding: bool = False
    cursor: int = 1  # next seq to send
    inflight: deque[tuple[int, int]] = field(default_factory=deque)
    inflight_bytes: int = 0
    stall_since: float = 0.0
    files: bool = False  # "files/1" is in force on this connection
    batch: bool = False  # "batch/1" is in force on this connection


class Room:
    def __init__(
        self,
        goal: str,
        host_name: str,
        now: float,
        *,
        config: RoomConfig | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        tunnel_id: str | None = None,
        epoch_offset: float = 0.0,
    ) -> None:
        self.config = config or RoomConfig()
        if not 2 <= self.config.capacity <= MAX_CAPACITY:
            raise LocalProtocolError(f"capacity must be 2..{MAX_CAPACITY}")
        if not isinstance(goal, str) or not goal.strip():
            raise LocalProtocolError("the goal must be a non-empty text", "bad-goal")
        if len(goal) > MAX_GOAL_CHARS:
            raise LocalProtocolError(
                f"the goal is too long ({len(goal)} characters, max {MAX_GOAL_CHARS})", "bad-goal"
            )
        if not _is_utf8(goal):
            raise LocalProtocolError("the goal is not valid Unicode text", "bad-goal")
        self.goal = goal
        self._rng = rng
        self.tunnel_id = tunnel_id or b64url(rng(TUNNEL_ID_BYTES))
        # Timestamps on messages are wall-clock ms; timers run on the caller's (monotonic) `now`.
        self._epoch_offset = epoch_offset
        self._next_member_id = 2
        self.host_id = 1
        host = Seat(id=1, name=sanitize_name(host_name), is_host=True, connected=True)
        self._seats: dict[int, Seat] = {1: host}
        self._invites: dict[bytes, Invite] = {}
        self._tickets: dict[bytes, Seat] = {}
        self._removed_tickets = RemovedTickets()
        self._conns: dict[int, _Conn] = {}
        self._next_conn = 1
        self._out: list[Send | Disconnect] = []
        # See `other_output`: set wherever output is queued, kept as it was by `say`.
        self._other_output = False
        #: Connections (batch/1) with frames queued in their channel, sealed at the next drain.
        self._queued: dict[int, _Conn] = {}
        self._entries: list[TranscriptEntry] = []
        self._head = 0  # index of the oldest kept entry in _entries
        self._kept_bytes = 0
        self.last_seq = 0
        self.first_seq = 1
        self._last_chat_at = now
        self.closed = False
        self.close_reason: str | None = None
        #: Bumped whenever the roster changes, so drivers need not compare rosters.
        self.roster_version = 0
        #: File offers and transfers (spec "Files"): the host's API for sharing and receiving.
        self.files = RoomFiles(self)

    # ------------------------------------------------------------------ host API

    @property
    def host_name(self) -> str:
        return self._seats[self.host_id].name

    def mint_invites(self, count: int, now: float) -> list[Invite]:
        """Mint `count` single-use invites; never more than the room has free seats."""
        if self.closed:
            raise LocalProtocolError("the room is closed", "closed")
        if count < 1:
            raise LocalProtocolError("count must be at least 1", "bad-count")
        free = self.free_seats(now)
        if count > free:
            raise LocalProtocolError(
                f"the room is full: {free} seat(s) left of {self.config.capacity}", "room-full"
            )
        minted = []
        for _ in range(count):
            secret = self._rng(SECRET_LEN)
            inv = Invite(
                invite_id=invite_id(secret, self.tunnel_id),
                secret=secret,
                psk=invite_psk(secret, self.tunnel_id),
                expires_at=now + self.config.invite_ttl,
            )
            self._invites[inv.invite_id] = inv
            minted.append(inv)
        self._prune_invites(now)
        return minted

    def free_seats(self, now: float) -> int:
        taken = len(self._seats) + sum(
            1
            for inv in self._invites.values()
            if inv.state == "reserved" or (inv.state == "open" and inv.expires_at > now)
        )
        return max(0, self.config.capacity - taken)

    def pending_invites(self, now: float) -> list[float]:
        """Seconds left on each invite that can still be redeemed."""
        return sorted(
            inv.expires_at - now
            for inv in self._invites.values()
            if inv.state == "open" and inv.expires_at > now
        )

    def roster(self) -> tuple[f.MemberEntry, ...]:
        return tuple(seat.entry() for seat in self._seats.values())

    def member_name(self, member_id: int) -> str | None:
        seat = self._seats.get(member_id)
        return seat.name if seat else None

    def phrase(self, member_id: int) -> str | None:
        """The verification phrase of a member's seat, fixed at its join: the host's human
        compares it with the member's. None for the host itself and for ids not in the room.
        The room never sends it to anyone."""
        seat = self._seats.get(member_id)
        return seat.phrase if seat else None

    def entries_since(self, seq: int) -> list[TranscriptEntry]:
        start = max(seq + 1, self.first_seq)
        return self._entries[self._head + start - self.first_seq :]

    def say(self, text: str, now: float) -> TranscriptEntry:
        """The host's own chat message. What it queues does not set `other_output`."""
        if self.closed:
            raise LocalProtocolError("the room is closed", "closed")
        check_text(text, LocalProtocolError)
        other = self._other_output
        entry = self._append_chat(self.host_id, text, 0, now)
        self._other_output = other
        return entry

    def close(self, summary: str | None, now: float) -> None:
        """End the room for everyone; `summary` reaches every member in the `closed` event."""
        if self.closed:
            return
        if summary is not None:
            summary = summary[:MAX_SUMMARY_CHARS]
            if not _is_utf8(summary):
                raise LocalProtocolError("the summary is not valid Unicode text", "bad-summary")
        self._shutdown("closed", summary, now)

    def remove(self, member_id: int, reason: str | None, now: float) -> TranscriptEntry:
        """End a member's seat at once and for good (host only): its connections get
        `close{reason: removed}` and CLOSE_REMOVED, its tickets die (a resume with one is
        refused `removed`), and everyone else sees the `removed` event this returns."""
        if self.closed:
            raise LocalProtocolError("the room is closed", "closed")
        if member_id == self.host_id:
            raise LocalProtocolError("the host cannot remove itself", "bad-member")
        seat = self._seats.get(member_id)
        if seat is None:
            if any(
                c.pending is not None and c.pending.seat_id == member_id
                for c in self._conns.values()
            ):
                # Welcomed, not yet confirmed: nobody has seen this id in the room yet.
                raise LocalProtocolError(f"member {member_id} is still joining", "joining")
            if 1 < member_id < self._next_member_id:
                raise LocalProtocolError(f"member {member_id} is no longer in the room", "gone")
            raise LocalProtocolError(f"there is no member {member_id}", "no-member")
        reason = check_reason(reason)
        del self._seats[seat.id]
        for old in seat.tickets:
            self._tickets.pop(old, None)
        self._removed_tickets.add(seat.tickets)
        # The seat's connections (the open one, and any resume waiting for its confirmation).
        conns = [
            c
            for c in self._conns.values()
            if c.seat_id == seat.id or (c.pending is not None and c.pending.resume_seat is seat)
        ]
        # The event goes first, so the removed member too gets it if its window has room.
        entry = self._append_event(REMOVED, now, member=seat.id, name=seat.name, summary=reason)
        self.files.on_seat_gone(seat.id, END_REMOVED, now)
        for conn in conns:
            conn.seat_id = None  # the seat is gone: no "disconnected" event
            self._send_frame(conn, f.Close(reason=REMOVED, summary=reason))
            self._drop(conn, now, CLOSE_REMOVED, REMOVED)
        self._broadcast_roster()
        return entry

    @property
    def other_output(self) -> bool:
        """Whether anything but the host's own says (`say`) was queued since the last
        `data_to_send()`: frames or closes for connections, file events (`files.take_events`),
        chunks waiting for `pull_bulk`. While it is False, a driver that holds the host's says
        back to send several together (the reference relay's autocork) may leave the drain
        for later: what it would send is only those says."""
        return self._other_output or self.files.has_events()

    def data_to_send(self) -> list[Send | Disconnect]:
        """Everything queued, in order (the frames of a batch/1 connection sealed together).
        Clears `other_output`: drain `files.take_events()` and pull bulk with it."""
        self._other_output = False
        if self._queued:
            queued, self._queued = self._queued, {}
            for conn in queued.values():
                self._seal_queued(conn)
        out, self._out = self._out, []
        return out

    def _seal_queued(self, conn: _Conn) -> None:
        assert conn.channel is not None
        for message in conn.channel.seal_queued():
            self._out.append(_MAKE_SEND(conn.id, message))

    def bulk_connections(self) -> list[int]:
        """Connections with bulk (file chunks) waiting: the driver wakes their writers, which
        call `pull_bulk` when their outbound queue runs low."""
        return self.files.bulk_connections()

    def pull_bulk(self, conn_id: int, max_bytes: int) -> int:
        """Seal about `max_bytes` of bulk for `conn_id` now; it comes out of the next
        `data_to_send()` as Sends behind everything sealed before (seal order is send order).
        Call it only when that connection's outbound queue is low. Returns the bytes sealed."""
        return self.files.pull_bulk(conn_id, max_bytes)

    # ------------------------------------------------------------------ connections

    def open_connection(self, now: float) -> int | None:
        """A new transport connection arrived. None: refuse it; the driver closes it with
        CLOSE_ROOM_CLOSED if the room is closed, else CLOSE_TOO_MANY_PENDING.

        With `max_pending` connections not yet OPEN, the oldest of them still waiting for
        message 1 is closed (CLOSE_TOO_MANY_PENDING) to make room, rather than the newcomer
        refused: otherwise a few idle sockets, reopened as they time out, would lock every
        member out. A real member sends message 1 one round trip after its upgrade, so it is
        never the oldest idle connection for long; an attacker opening more only pushes out
        its own. Past message 1 a connection holds a live invite or ticket and is not evicted;
        only when every pending connection is that far is the newcomer refused.
        """
        if self.closed:
            return None
        pending = [c for c in self._conns.values() if c.state is not ConnState.OPEN]
        if len(pending) >= self.config.max_pending:
            # _conns keeps arrival order, so the first one waiting for message 1 is the oldest.
            idle = next((c for c in pending if c.state is ConnState.HANDSHAKE), None)
            if idle is None:
                return None
            self._drop(idle, now, CLOSE_TOO_MANY_PENDING, "too many pending connections")
        conn = _Conn(id=self._next_conn, opened_at=now, last_rx=now)
        self._next_conn += 1
        self._conns[conn.id] = conn
        return conn.id

    def receive(self, conn_id: int, data: Message, now: float) -> None:
        """One transport message (any bytes-like object) from connection `conn_id`."""
        if type(data) is not bytes:
            data = message_bytes(data)
        conn = self._conns.get(conn_id)
        if conn is None:
            return  # already closed: the driver raced us, nothing to do
        conn.last_rx = now
        conn.ping_outstanding = False
        try:
            if conn.state is ConnState.HANDSHAKE:
                self._on_msg1(conn, data, now)
                return
            assert conn.channel is not None
            if conn.state is ConnState.OPEN:
                # Charged before decrypting: decryption is the cost the budget bounds.
                # A message the budget cannot pay for is the connection's last: a Noise
                # transport message cannot be skipped (its nonce), so the only way to refuse
                # it is to end the connection (spec section 18).
                budget = self._seats[conn.seat_id].budget  # type: ignore[index]
                if budget is not None and not budget.bytes.spend(len(data), now):
                    raise _flooding("bytes")
            frames = conn.channel.open_all(data)
            if conn.state is ConnState.CONFIRMING and len(frames) > 1:
                # Section 7: the confirming ack travels alone, so no frame of a member that
                # has no seat yet is ever processed (or left uncharged).
                raise RemoteProtocolError("the key confirmation must travel alone", "unexpected")
            for frame in frames:
                state = conn.state
                if state is ConnState.CLOSED:
                    return  # an earlier frame of this batch ended the connection
                # (OPEN looked up without hashing the enum: a Python call per frame)
                accepts = _ACCEPTS_OPEN if state is ConnState.OPEN else ROOM_ACCEPTS[state]
                if type(frame) not in accepts and not (
                    conn.files
                    and conn.state is ConnState.OPEN
                    and type(frame) in ROOM_ACCEPTS_FILES
                ):
                    raise RemoteProtocolError(
                        f"{frame.TYPE!r} frame is not allowed in state {conn.state.value}",
                        "unexpected",
                    )
                if conn.state is ConnState.CONFIRMING:
                    assert isinstance(frame, f.Ack)
                    self._confirm(conn, frame, now)
                else:
                    self._on_frame(conn, frame, now)
        except RemoteProtocolError as exc:
            self._fail(conn, exc, now)

    def connection_lost(self, conn_id: int, now: float) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._drop(conn, now, None, "")

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        if self.closed:
            return None
        # A running minimum: the driver asks after every call into the room (every message).
        cfg = self.config
        earliest = self._last_chat_at + cfg.idle_timeout
        offers_end = self.files.next_deadline()
        if offers_end is not None and offers_end < earliest:
            earliest = offers_end
        # An open connection's keepalive: the ping is due before the dead timer unless one is
        # already outstanding.
        ping_after, dead_after, stall_timeout = cfg.ping_after, cfg.dead_after, cfg.stall_timeout
        open_state = ConnState.OPEN
        for conn in self._conns.values():
            if conn.state is not open_state:
                deadline = self._handshake_deadline(conn)
            else:
                deadline = conn.last_rx + dead_after
                if not conn.ping_outstanding and conn.last_rx + ping_after < deadline:
                    deadline = conn.last_rx + ping_after
                if conn.inflight and conn.stall_since + stall_timeout < deadline:
                    deadline = conn.stall_since + stall_timeout
            if deadline < earliest:
                earliest = deadline
        for seat in self._seats.values():
            if not seat.is_host and not seat.connected and seat.disconnected_at + cfg.grace < earliest:
                earliest = seat.disconnected_at + cfg.grace
        return earliest

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        cfg = self.config
        for conn in list(self._conns.values()):
            if conn.state is not ConnState.OPEN:
                if now >= self._handshake_deadline(conn):
                    self._drop(conn, now, CLOSE_HANDSHAKE_TIMEOUT, "handshake timeout")
                continue
            if now >= conn.last_rx + cfg.dead_after:
                self._drop(conn, now, CLOSE_KEEPALIVE_TIMEOUT, "keepalive timeout")
            elif conn.inflight and now >= conn.stall_since + cfg.stall_timeout:
                self._send_frame(
                    conn,
                    f.Error(code="slow-consumer", msg="you stopped reading; resume to catch up"),
                )
                self._drop(conn, now, CLOSE_SLOW_CONSUMER, "slow consumer")
            elif not conn.ping_outstanding and now >= conn.last_rx + cfg.ping_after:
                conn.ping_outstanding = True
                self._send_frame(conn, f.Ping())
        for seat in list(self._seats.values()):
            if not seat.is_host and not seat.connected and now >= seat.disconnected_at + cfg.grace:
                self._vacate(seat, now)
        self.files.handle_timer(now)
        if now >= self._last_chat_at + cfg.idle_timeout:
            self._shutdown("idle-closed", None, now)

    def _handshake_deadline(self, conn: _Conn) -> float:
        # Message 1 is due one round trip after the upgrade, so a connection that sends
        # nothing gives its pending slot back well before the whole handshake's deadline.
        cfg = self.config
        limit = cfg.handshake_timeout
        if conn.state is ConnState.HANDSHAKE:
            limit = min(limit, cfg.message1_timeout)
        return conn.opened_at + limit

    # ------------------------------------------------------------------ internals: handshake

    def _plain_refuse(self, conn: _Conn, code: str, now: float) -> None:
        body = f.Refuse(code=code, msg=REFUSAL_MESSAGES[code]).encode()
        self._out.append(Send(conn.id, bytes([MSG2_PLAIN_REFUSE]) + body))
        self._other_output = True
        self._drop(conn, now, CLOSE_REFUSED, code)

    def _on_msg1(self, conn: _Conn, data: bytes, now: float) -> None:
        version, key_id, noise_msg = split_msg1(data)
        if version != f.PROTOCOL_VERSION:
            self._plain_refuse(conn, "version-unsupported", now)
            return
        invite = self._invites.get(key_id)
        seat = self._tickets.get(key_id)
        removed_psk = self._removed_tickets.get(key_id) if seat is None else None
        if invite is None and seat is None and removed_psk is None:
            # We hold no key for this id, so this refusal cannot be encrypted (spec 4.3).
            self._plain_refuse(conn, "unknown-invite", now)
            return
        if invite is not None:
            psk = invite.psk
        elif seat is not None:
            psk = seat.tickets[key_id]
        else:
            assert removed_psk is not None
            psk = removed_psk
        hs = new_handshake(initiator=False, tunnel_id=self.tunnel_id, psk=psk, rng=self._rng)
        try:
            payload = hs.read_message(noise_msg)
        except NoiseError:
            raise RemoteProtocolError(
                "handshake message 1 did not decrypt (wrong secret?)", "handshake"
            ) from None
        hello = f.decode_frame(payload)
        if not isinstance(hello, f.Hello):
            raise RemoteProtocolError("handshake payload must be hello", "unexpected")

        code = self._refusal(hello, invite, seat, now)
        if code is not None:
            reply = hs.write_message(f.Refuse(code=code, msg=REFUSAL_MESSAGES[code]).encode())
            self._out.append(Send(conn.id, bytes([MSG2_NOISE]) + reply))
            self._other_output = True
            self._drop(conn, now, CLOSE_REFUSED, code)
            return

        new_ticket = self._rng(SECRET_LEN)
        if invite is not None:
            invite.state = "reserved"
            invite.reserved_by = conn.id
            member_id = self._next_member_id
            self._next_member_id += 1
            taken = [s.name for s in self._seats.values()] + [
                c.pending.name for c in self._conns.values() if c.pending is not None
            ]
            name = unique_name(sanitize_name(hello.name), taken)
            pending = _Pending(member_id, name, new_ticket, invite, None, 0)
            roster = self.roster() + (f.MemberEntry(id=member_id, name=name, host=False, on=True),)
        else:
            assert seat is not None and hello.last is not None
            # One resume of a seat confirms at a time: a member retries only once its earlier
            # attempt is dead to it, and without this one member could fill every pending slot
            # with resumes it never confirms (those are never pushed out to make room).
            for other in list(self._conns.values()):
                if other.pending is not None and other.pending.resume_seat is seat:
                    self._drop(other, now, CLOSE_REPLACED, "replaced by a newer resume")
            pending = _Pending(seat.id, seat.name, new_ticket, None, seat, hello.last)
            # The new ticket is valid from now on, not only from confirmation: if this
            # connection dies after the welcome reached the member but before its ack reached
            # us, the member holds only the new ticket. Both die at the next confirmation.
            self._add_ticket(seat, new_ticket, used=key_id)
            roster = self.roster()
        conn.files = FILES_CAP in hello.caps
        conn.batch = BATCH_CAP in hello.caps
        limits = {
            "text": MAX_TEXT_BYTES,
            "frame": MAX_FRAME,
            "members": self.config.capacity,
            "burst": self.config.rate_burst,
            "per_min": int(self.config.rate_per_sec * 60),
        }
        if conn.files:
            limits["file_window"] = self.config.file_window
        if conn.batch:
            limits["window"] = self.config.window  # a member paces its delayed acks by it
        caps = tuple(c for c, on in ((FILES_CAP, conn.files), (BATCH_CAP, conn.batch)) if on)
        welcome = f.Welcome(
            goal=self.goal,
            you=pending.seat_id,
            name=pending.name,
            roster=roster,
            last=self.last_seq,
            first=self.first_seq,
            ticket=new_ticket,
            resumed=invite is None,
            limits=limits,
            caps=caps or None,
        )
        reply = hs.write_message(welcome.encode())
        self._out.append(Send(conn.id, bytes([MSG2_NOISE]) + reply))
        self._other_output = True
        if invite is not None:
            # Only a join fixes the phrase: the seat keeps it across resumes.
            pending.phrase = derive_phrase(hs.handshake_hash)
        send, recv = hs.split()
        conn.channel = Channel(send, recv, batch=conn.batch)
        conn.pending = pending
        conn.state = ConnState.CONFIRMING

    def _refusal(
        self, hello: f.Hello, invite: Invite | None, seat: Seat | None, now: float
    ) -> str | None:
        if self.closed:
            return "closed"
        if hello.v != f.PROTOCOL_VERSION:
            return "version-unsupported"
        if invite is not None:
            if invite.state == "used":
                return "used"
            if invite.expires_at <= now and invite.state == "open":
                return "expired"
            if invite.state == "reserved":
                return "in-use"
            if len(self._seats) + self._reserved_count() >= self.config.capacity:
                return "room-full"
            if hello.last is not None:
                return "bad-resume"
            return None
        if seat is None:
            return REMOVED  # the ticket of a seat the host removed
        if hello.last is None or hello.last > self.last_seq:
            return "bad-resume"
        return None

    def _add_ticket(self, seat: Seat, secret: bytes, *, used: bytes) -> None:
        # The member now holds either `used` (this welcome may be lost too) or the new ticket,
        # so both move to the young end; the first entry is the confirmed ticket, which a member
        # whose every resume welcome got lost still holds, so it is never the one evicted.
        if used != next(iter(seat.tickets)):
            seat.tickets[used] = seat.tickets.pop(used)
        new_id = ticket_id(secret, self.tunnel_id)
        seat.tickets[new_id] = ticket_psk(secret, self.tunnel_id)
        self._tickets[new_id] = seat
        while len(seat.tickets) > MAX_TICKETS_PER_SEAT:
            oldest_unconfirmed = list(seat.tickets)[1]
            del seat.tickets[oldest_unconfirmed]
            self._tickets.pop(oldest_unconfirmed, None)

    def _reserved_count(self) -> int:
        return sum(1 for inv in self._invites.values() if inv.state == "reserved")

    def _confirm(self, conn: _Conn, ack: f.Ack, now: float) -> None:
        pending = conn.pending
        assert pending is not None
        if ack.seq > self.last_seq:
            raise RemoteProtocolError("ack for a seq the room never sent", "bad-ack")
        conn.pending = None
        conn.state = ConnState.OPEN
        conn.seat_id = pending.seat_id
        new_id = ticket_id(pending.new_ticket, self.tunnel_id)
        new_psk = ticket_psk(pending.new_ticket, self.tunnel_id)
        if pending.invite is not None:
            pending.invite.state = "used"
            pending.invite.reserved_by = None
            pending.invite.forget_secret()
            cfg = self.config
            seat = Seat(
                id=pending.seat_id,
                name=pending.name,
                is_host=False,
                conn=conn.id,
                connected=True,
                tickets={new_id: new_psk},
                tokens=float(cfg.rate_burst),
                tokens_at=now,
                phrase=pending.phrase,
                budget=InboundBudget(
                    byte_burst=cfg.inbound_byte_burst,
                    bytes_per_sec=cfg.inbound_bytes_per_sec,
                    frame_burst=cfg.inbound_frame_burst,
                    frames_per_sec=cfg.inbound_frames_per_sec,
                    now=now,
                ),
            )
            self._seats[seat.id] = seat
            self._tickets[new_id] = seat
            conn.cursor = 1
            self._append_event("joined", now, member=seat.id, name=seat.name, phrase=seat.phrase)
        else:
            seat = pending.resume_seat  # type: ignore[assignment]
            assert seat is not None
            if seat.id not in self._seats:
                # The grace period ran out while this resume was in flight.
                self._send_frame(conn, f.Close(reason="left"))
                self._drop(conn, now, CLOSE_LEFT, "seat expired")
                return
            # Every other ticket dies now that the member provably holds this one.
            for old in seat.tickets:
                self._tickets.pop(old, None)
            seat.tickets = {new_id: new_psk}
            self._tickets[new_id] = seat
            for other in list(self._conns.values()):
                if other is conn:
                    continue
                if other.seat_id == seat.id or (
                    other.pending is not None and other.pending.resume_seat is seat
                ):
                    other.seat_id = None  # no "disconnected" event: the seat moves, not empties
                    self._drop(other, now, CLOSE_REPLACED, "replaced by a resumed connection")
            was_disconnected = not seat.connected
            seat.conn, seat.connected = conn.id, True
            conn.cursor = pending.last + 1
            if was_disconnected:
                self._append_event("reconnected", now, member=seat.id, name=seat.name)
        self._broadcast_roster()
        self.files.on_open(conn)
        self._pump(conn, now)

    # ------------------------------------------------------------------ internals: open frames

    def _on_frame(self, conn: _Conn, frame: f.Frame, now: float) -> None:
        seat = self._seats[conn.seat_id]  # type: ignore[index]
        if type(frame) is f.Say:
            # The usual frame, first: charged as below, without the five type tests on its way.
            if seat.budget is not None and not seat.budget.frames.spend(1.0, now):
                raise _flooding("frames")
            self.files.before_say(conn)  # a share's manifest pages come first
            self._on_say(conn, seat, frame, now)
            return
        if type(frame) in ROOM_ACCEPTS_FILES:
            # File frames are charged like any frame, except those the room asked for
            # (`RoomFiles.paced`: a chunk within a pull's credit, a credit answering a chunk the
            # host sent): their number is bounded by the credit receivers grant, so they
            # are free of the frame budget, as an ack that retires entries is. A paced chunk's
            # data bytes are given back too (charging them would cut off every sharer of a
            # large file once the byte burst ran out); the rest of its message stays charged,
            # so padding a 1-byte chunk with unknown keys costs what any frame costs.
            if self.files.paced(conn.id, frame):
                if isinstance(frame, f.Chunk) and seat.budget is not None:
                    seat.budget.bytes.refund(len(frame.data), now)
            else:
                self._spend_frame(seat, now)
            self.files.on_frame(conn, seat, frame, now)
            return
        if isinstance(frame, f.Ack) and self._on_ack(conn, frame.seq, now):
            return  # retired entries: paced by what the room sent, so free of the frame budget
        if not isinstance(frame, f.Close):  # the last frame of a connection costs nothing
            # (`_spend_frame`, in line: it runs for every frame)
            if seat.budget is not None and not seat.budget.frames.spend(1.0, now):
                raise _flooding("frames")
        if isinstance(frame, f.Ack):
            pass  # an ack that retired nothing: charged above, nothing else to do
        elif isinstance(frame, f.Say):
            self.files.before_say(conn)  # a share's manifest pages come first
            self._on_say(conn, seat, frame, now)
        elif isinstance(frame, f.Ping):
            # Pings spend rate tokens too, so a ping flood cannot make us queue pongs unboundedly.
            if self._take_token(seat, now) is None:
                self._send_frame(conn, f.Pong())
        elif isinstance(frame, f.Close):
            # Leaving empties the seat at once: no "disconnected" (which means the seat is held
            # for a resume) before the "left".
            conn.seat_id = None
            self._send_frame(conn, f.Close(reason="left"))
            self._drop(conn, now, CLOSE_NORMAL, "left")
            self._vacate(seat, now)
        # Pong: nothing to do, receiving it already refreshed last_rx.

    def _on_ack(self, conn: _Conn, seq: int, now: float) -> bool:
        """Retire what `seq` acknowledges; True if that was anything."""
        if seq >= conn.cursor:
            raise RemoteProtocolError("ack for a seq the room never sent", "bad-ack")
        progressed = False
        while conn.inflight and conn.inflight[0][0] <= seq:
            _, size = conn.inflight.popleft()
            conn.inflight_bytes -= size
            progressed = True
        if progressed:
            conn.stall_since = now
            self._pump(conn, now)
        return progressed

    def _on_say(self, conn: _Conn, seat: Seat, say: f.Say, now: float) -> None:
        if say.ref <= seat.last_ref:
            # A re-send after resume of something we already handled: idempotent. A stamped say
            # reaches the member again through the replay; a refused one must be refused again,
            # or a member whose error frame was lost in the drop would wait for it forever.
            refused = seat.refused.get(say.ref)
            if refused is not None:
                self._send_frame(conn, refused)
            return
        seat.last_ref = say.ref
        try:
            check_text(say.text, RemoteProtocolError)
        except RemoteProtocolError as exc:
            self._refuse_say(conn, seat, f.Error(code=exc.code, msg=str(exc), ref=say.ref))
            return
        wait = self._take_token(seat, now)
        if wait is not None:
            self._refuse_say(
                conn,
                seat,
                f.Error(
                    code="rate-limited",
                    msg="you are sending too fast; wait and send again",
                    ref=say.ref,
                    retry=wait,
                ),
            )
            return
        self._append_chat(seat.id, say.text, say.ref, now)

    def _refuse_say(self, conn: _Conn, seat: Seat, error: f.Error) -> None:
        assert error.ref is not None
        seat.refused[error.ref] = error
        if len(seat.refused) > MAX_REMEMBERED_REFUSALS:
            del seat.refused[next(iter(seat.refused))]
        self._send_frame(conn, error)

    @staticmethod
    def _spend_frame(seat: Seat, now: float) -> None:
        if seat.budget is not None and not seat.budget.frames.spend(1.0, now):
            raise _flooding("frames")

    def _take_token(self, seat: Seat, now: float) -> int | None:
        """Token bucket. None: a token was spent; else ms until one is available."""
        cfg = self.config
        seat.tokens = min(cfg.rate_burst, seat.tokens + (now - seat.tokens_at) * cfg.rate_per_sec)
        seat.tokens_at = now
        if seat.tokens >= 1.0:
            seat.tokens -= 1.0
            return None
        return max(1, int((1.0 - seat.tokens) / cfg.rate_per_sec * 1000))

    # ------------------------------------------------------------------ internals: transcript

    def _ts(self, now: float) -> int:
        return max(0, int((now + self._epoch_offset) * 1000))

    def _append_chat(self, sender: int, text: str, ref: int, now: float) -> TranscriptEntry:
        seq = self.last_seq + 1
        ts = max(0, int((now + self._epoch_offset) * 1000))  # `_ts`, in line (every message)
        entry = chat_entry(seq, ts, sender, text, f.encode_message(seq, ts, text, ref, sender))
        self._last_chat_at = now
        self._append(entry, now)
        return entry

    def _append_event(
        self,
        kind: str,
        now: float,
        *,
        member: int | None = None,
        name: str | None = None,
        summary: str | None = None,
        phrase: str | None = None,
    ) -> TranscriptEntry:
        seq = self.last_seq + 1
        ts = self._ts(now)
        frame = f.Event(
            kind=kind, seq=seq, ts=ts, member=member, name=name, summary=summary
        ).encode()
        entry = TranscriptEntry(
            seq, ts, "event", None, summary, kind, member, name, summary, frame, phrase
        )
        self._append(entry, now)
        return entry

    def _append(self, entry: TranscriptEntry, now: float) -> None:
        self._entries.append(entry)
        self.last_seq = entry.seq
        # `_held_bytes`, in line for the usual entry (no fallback frame)
        self._kept_bytes += (
            len(entry.frame) + (len(entry.text) if entry.text else 0)
            if entry.fallback is None
            else _held_bytes(entry)
        )
        # Past the cap the oldest entries go; joiners and resumers then get history-truncated.
        while self._kept_bytes > self.config.transcript_cap and self.first_seq < self.last_seq:
            self._kept_bytes -= _held_bytes(self._entries[self._head])
            self._head += 1
            self.first_seq += 1
        if self._head > 1024 and self._head * 2 > len(self._entries):
            del self._entries[: self._head]
            self._head = 0
        for conn in self._conns.values():
            if conn.state is ConnState.OPEN:
                self._pump(conn, now)

    def _pump(self, conn: _Conn, now: float) -> None:
        """Send transcript entries from the connection's cursor while its window has room.

        The window is what keeps memory bounded: a member gets at most `window` unacknowledged
        bytes, a late joiner's history flows in as it acks, and one that stops acking is cut
        off at `stall_timeout` (it can resume: the transcript, not a queue, holds its backlog).
        """
        assert conn.channel is not None
        while conn.cursor <= self.last_seq and conn.inflight_bytes < self.config.window:
            if conn.cursor < self.first_seq:
                notice = f.Event(
                    kind="history-truncated", seq=0, ts=self._ts(now), first=self.first_seq
                )
                self._send_frame(conn, notice)
                conn.cursor = self.first_seq
                continue
            entry = self._entries[self._head + conn.cursor - self.first_seq]
            # File entries have a generic `event` for connections without files/1.
            plain = entry.frame if entry.fallback is None or conn.files else entry.fallback
            self._emit(conn, plain)
            size = len(plain) + SEAL_OVERHEAD  # its size sealed alone, batched or not
            if not conn.inflight:
                conn.stall_since = now
            conn.inflight.append((entry.seq, size))
            conn.inflight_bytes += size
            conn.cursor += 1

    def _emit(self, conn: _Conn, plaintext: bytes) -> None:
        """One encoded frame for `conn`: sealed now, or with batch/1 queued in its channel and
        sealed with whatever else is queued at the next drain (`data_to_send`)."""
        channel = conn.channel
        assert channel is not None
        self._other_output = True
        if channel.batch:
            if not channel.queued:
                self._queued[conn.id] = conn
            channel.queued.append(plaintext)  # `Channel.queue`, in line
        else:
            self._out.append(_MAKE_SEND(conn.id, channel.seal(plaintext)))

    def _send_frame(self, conn: _Conn, frame: f.Frame) -> None:
        if conn.channel is not None:
            self._emit(conn, frame.encode())

    def _broadcast_roster(self) -> None:
        self.roster_version += 1
        plaintext = f.Roster(members=self.roster()).encode()  # once, sealed per connection
        for conn in self._conns.values():
            if conn.state is ConnState.OPEN and conn.channel is not None:
                self._emit(conn, plaintext)

    # ------------------------------------------------------------------ internals: endings

    def _fail(self, conn: _Conn, exc: RemoteProtocolError, now: float) -> None:
        if conn.state is not ConnState.HANDSHAKE:
            self._send_frame(conn, f.Error(code=exc.code, msg=str(exc)))
        if exc.code == "flooding" and conn.seat_id is not None:
            # Over its budget: the member loses its seat, as if it had left. Holding the seat
            # would let it resume at once, again and again, and every round trip would cost a
            # handshake and put 'disconnected'/'reconnected' in everyone's transcript.
            seat = self._seats[conn.seat_id]
            conn.seat_id = None
            self._send_frame(conn, f.Close(reason="flooding"))
            self._drop(conn, now, CLOSE_FLOODING, "flooding")
            self._vacate(seat, now)
            return
        self._drop(conn, now, CLOSE_PROTOCOL_ERROR, f"protocol error: {exc.code}")

    def _drop(self, conn: _Conn, now: float, code: int | None, reason: str) -> None:
        """End one connection. code None: the driver already knows it is gone."""
        if self._conns.pop(conn.id, None) is None:
            return
        prev = conn.state
        conn.state = ConnState.CLOSED
        self.files.on_conn_closed(conn.id)
        if self._queued.pop(conn.id, None) is not None:
            if code is not None:
                self._seal_queued(conn)  # its last frames go out before the close
            else:
                assert conn.channel is not None
                conn.channel.queued.clear()  # the transport is gone already
        if code is not None:
            self._out.append(Disconnect(conn.id, code, reason))
            self._other_output = True
        if conn.pending is not None and conn.pending.invite is not None:
            # A join that never confirmed gives its invite back (it admitted nobody).
            inv = conn.pending.invite
            if inv.state == "reserved" and inv.reserved_by == conn.id:
                inv.state, inv.reserved_by = "open", None
        if prev is ConnState.OPEN and conn.seat_id is not None and not self.closed:
            seat = self._seats.get(conn.seat_id)
            if seat is not None and seat.conn == conn.id:
                seat.conn, seat.connected, seat.disconnected_at = None, False, now
                self._append_event("disconnected", now, member=seat.id, name=seat.name)
                self._broadcast_roster()

    def _vacate(self, seat: Seat, now: float) -> None:
        if self._seats.pop(seat.id, None) is None:
            return
        for old in seat.tickets:
            self._tickets.pop(old, None)
        self._append_event("left", now, member=seat.id, name=seat.name)
        self.files.on_seat_gone(seat.id, END_LEFT, now)
        self._broadcast_roster()

    def _shutdown(self, reason: str, summary: str | None, now: float) -> None:
        self._append_event(reason, now, summary=summary)
        self.closed = True
        self.close_reason = reason
        self.files.on_room_closed()
        for conn in list(self._conns.values()):
            if conn.state is ConnState.OPEN:
                self._send_frame(conn, f.Close(reason=reason, summary=summary))
                self._drop(conn, now, CLOSE_NORMAL, reason)
            else:
                self._drop(conn, now, CLOSE_ROOM_CLOSED, reason)
        self._invites.clear()
        self._tickets.clear()
        self._removed_tickets.clear()

    def _prune_invites(self, now: float) -> None:
        # Dead invites are kept so a late redeemer hears "used"/"expired" rather than "unknown",
        # but only the newest 64: the host may mint for hours.
        dead = [
            k
            for k, inv in self._invites.items()
            if inv.state == "used" or (inv.state == "open" and inv.expires_at <= now)
        ]
        for k in dead[: max(0, len(dead) - 64)]:
            del self._invites[k]
        for k in dead:
            if k in self._invites:
                self._invites[k].forget_secret()
