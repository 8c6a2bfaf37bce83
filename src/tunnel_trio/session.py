"""Sessions: the trio-native API the MCP layer calls, one object per role.

    host = await open_host(nursery, "fix the flaky test", name="ana")
    link = host.initial_invites[0].join_link           # the human forwards this
    guest = await join(nursery, link, name="ben")
    seq = await guest.say("hello")
    result = await host.listen(since_seq=0, timeout=25)
    shared = await guest.share(await guest.prepare_share("logs/"))  # files: see files.py
    received = await host.receive(await host.plan_receive(shared.offer_id, "/tmp/in"))
    await host.close("done")                            # ends the room for everyone

Errors a user can act on are `TunnelError`s whose messages say what to do; nothing here
puts a link secret, key or ticket into a message, a log line or a status.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import re
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Literal

import trio

from tunnelproto import (
    MAX_FRAME,
    ChatMessage,
    ChunkReceived,
    ConnectionEnded,
    FetchAborted,
    FetchComplete,
    FileList,
    FileListFailed,
    FileOffer,
    FileOfferEnded,
    JoinLink,
    LinkError,
    LocalProtocolError,
    MemberConnection,
    MemberEntry,
    MemberState,
    ReadRequest,
    Refused,
    RoomEvent,
    RosterChanged,
    SayAccepted,
    SayRejected,
    ShareAccepted,
    ShareRejected,
    TranscriptEntry,
    TunnelEvent,
    Welcomed,
    sanitize_name,
)
from tunnelproto import Room as _Room
from tunnelproto import RoomConfig as _RoomConfig
from tunnelproto._files import KIND_OFFER, KIND_OFFER_ENDED

from ._guest import DialError, Guest
from ._host import Relay, wall_clock_offset
from ._waits import Parked, Timers
from ._ws import WebSocket
from .files import HostFiles, MemberFiles, SessionFiles
from .session_types import (
    ConnectionState,
    FileOfferInfo,
    InviteInfo,
    JoinRefusedError,
    ListenResult,
    MemberInfo,
    MemberStatus,
    NotOpenError,
    PendingInvite,
    PreparedReceive,
    PreparedShare,
    ReceiveProgress,
    ReceiveResult,
    SayQueuedError,
    SayReceipt,
    SessionStatus,
    ShareResult,
    TranscriptMessage,
    TranscriptWindow,
    TunnelError,
    chat_message,
)
from .transports import LocalTransport, Transport

log = logging.getLogger("tunnel_trio.session")

RoomConfig = _RoomConfig
#: Bytes of transcript a session keeps (the host uses its room's cap; a member this default).
DEFAULT_TRANSCRIPT_CAP = 64 * 1024 * 1024
#: What one kept message costs besides its text (object, names, ints), roughly.
MESSAGE_OVERHEAD = 200


def _size(message: TranscriptMessage) -> int:
    # Memory, not characters: a text with one emoji takes 4 bytes a character.
    size = MESSAGE_OVERHEAD + (sys.getsizeof(message.text) if message.text else 0)
    if message.file is not None:
        size += _offer_size(message.file)
    return size


#: What JSON escapes in a string (with ensure_ascii off): quotes, backslashes, controls.
_JSON_ESCAPED = re.compile(r'["\\\x00-\x1f]')


def _json_text(text: str) -> int:
    if text.isascii() and _JSON_ESCAPED.search(text) is None:
        return len(text) + 2  # most chat: the text between two quotes, as json.dumps writes it
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _offer_size(offer: FileOfferInfo) -> int:
    """About what an offer adds to a message, as JSON (and, within a factor, in memory)."""
    size = OFFER_JSON_OVERHEAD + _json_text(offer.name) + (_json_text(offer.note) if offer.note
                                                           else 0)
    return size + sum(FILE_JSON_OVERHEAD + _json_text(f.path) for f in offer.files)


def json_size(message: TranscriptMessage) -> int:
    """About how many bytes `message` takes as JSON in a tool result."""
    if message.kind == "chat" and message.reason is None and message.subject is None:
        # The busy case (every chat message a listen pages), the sum below without its loops.
        text, sender = message.text, message.sender
        size = MESSAGE_JSON_OVERHEAD + (_json_text(text) if text else 0)
        if sender is not None:
            size += 40 + len(sender.name.encode("utf-8", "surrogatepass"))
        if message.file is not None:
            size += _offer_size(message.file)
        return size
    size = MESSAGE_JSON_OVERHEAD
    for text in (message.text, message.reason):
        if text:
            size += _json_text(text)
    for who in (message.sender, message.subject):
        if who is not None:
            size += 40 + len(who.name.encode("utf-8", "surrogatepass"))
    if message.file is not None:
        size += _offer_size(message.file)
    return size


#: Member names a session remembers; more than a roster frame can hold (the codec's item cap).
MAX_KNOWN_NAMES = 4096
#: How long a say waits for the host's confirmation before it is reported as queued.
SAY_TIMEOUT = 30.0
JOIN_TIMEOUT = 30.0
IN_USE_RETRY = 3.0
#: What one listen returns at most: this many messages, and about this many bytes of them as
#: JSON (text escaped as JSON escapes it). A page is always at least one message. 64 KiB keeps
#: a page well inside what MCP clients accept from one tool call (Claude Code's default is
#: 25,000 tokens); `more` says when the rest waits.
LISTEN_MAX_MESSAGES = 256
LISTEN_MAX_BYTES = 64 * 1024
#: A message's JSON besides its text and names: seq, kind, ts, ids, field names.
MESSAGE_JSON_OVERHEAD = 160
#: An offer's JSON besides its name, note and paths (ids, count, total, hash), and per file
#: besides its path (size, SHA-256 in hex).
OFFER_JSON_OVERHEAD = 200
FILE_JSON_OVERHEAD = 110
#: Times a queued say is sent again after the host rate-limited it, and the longest wait for it
#: (a host that asks for more, or keeps refusing, gets the say reported as undelivered).
QUEUED_RETRIES = 10
QUEUED_RETRY_MAX_WAIT = 60.0
#: Local notices kept for the next listen at most (one per undelivered say: at most the
#: member's MAX_UNACKED_SAYS at once, in practice).
MAX_NOTICES = 1024
#: What `say()` raises with when `send()` would report the message queued.
QUEUED_NOTE = (
    "the host has not confirmed the message yet (the connection may be down): it is queued and "
    "goes out once the connection is back; do not send it again"
)

#: Stands in for a message the transcript cap pushed out, until the list is compacted.
_DROPPED = TranscriptMessage(seq=0, kind="event", ts=0.0, sender=None)


class _Transcript:
    """The session-side transcript: TranscriptMessages in seq order, plus change notification."""

    def __init__(self, cap_bytes: int) -> None:
        self._cap_bytes = cap_bytes
        self._bytes = 0
        # Seqs are contiguous, so the message with seq s sits at index s - first_seq + head:
        # listen finds its starting point in O(1) instead of scanning the transcript.
        self._messages: list[TranscriptMessage] = []
        self._head = 0
        self.last_seq = 0
        #: The session's timer (its task runs while the session does): waits need no cancel
        #: scope each.
        self.timers = Timers()
        # Who waits for the next change: a burst of messages that nobody waits on costs nothing.
        self._waiting: list[Parked] = []

    def since(self, seq: int) -> list[TranscriptMessage]:
        if self._head >= len(self._messages):
            return []
        first = self._messages[self._head].seq
        return self._messages[self._head + max(0, seq + 1 - first) :]

    def iter_since(self, seq: int) -> Iterator[TranscriptMessage]:
        """The messages with seq > `seq`, oldest first (no copy: do not await in between)."""
        if self._head >= len(self._messages):
            return
        first = self._messages[self._head].seq
        for i in range(self._head + max(0, seq + 1 - first), len(self._messages)):
            yield self._messages[i]

    def iter_newest(self) -> Iterator[TranscriptMessage]:
        """The messages newest first (no copy: do not await in between)."""
        for i in range(len(self._messages) - 1, self._head - 1, -1):
            yield self._messages[i]

    def add(self, message: TranscriptMessage) -> None:
        if 0 < message.seq <= self.last_seq:
            return  # a replay we already hold (a fresh rejoin after a lost confirmation)
        if message.seq > 0:
            if self._head < len(self._messages) and message.seq != self.last_seq + 1:
                # A gap (history truncated while we were away): restart the contiguous run.
                self._messages, self._head, self._bytes = [], 0, 0
            self._messages.append(message)
            # (`_size`, written out for the usual message: a Python call less per message)
            text = message.text
            self._bytes += (
                MESSAGE_OVERHEAD + (sys.getsizeof(text) if text else 0)
                if message.file is None
                else _size(message)
            )
            self.last_seq = message.seq
            # Bounded like the room's own transcript: the oldest go first, the newest stays.
            while self._bytes > self._cap_bytes and len(self._messages) - self._head > 1:
                self._bytes -= _size(self._messages[self._head])
                self._messages[self._head] = _DROPPED  # let its text go now, not at compaction
                self._head += 1
            if self._head > 1024 and self._head * 2 > len(self._messages):
                del self._messages[: self._head]
                self._head = 0
        if self._waiting:
            self.poke()

    def poke(self) -> None:
        waiting = self._waiting
        if waiting:
            self._waiting = []
            for parked in waiting:
                parked.wake()

    async def wait(self, deadline: float = math.inf) -> bool:
        """Until the next change (True) or `deadline` (False)."""
        parked = Parked(self.timers)
        self._waiting.append(parked)
        try:
            woken = await self.timers.wait(parked, deadline)
        finally:
            if parked.task is None and parked in self._waiting:
                # Timed out or cancelled: not left behind for the next change (a listener
                # that times out every 30 s of a quiet day would otherwise pile up).
                self._waiting.remove(parked)
        return woken


class _Names:
    """Member id -> MemberInfo, remembering members who left (their messages stay readable).

    Names come from the host, which may be hostile: each is sanitized as the room does it (so
    at most 64 characters, on one line), and only the most recent MAX_KNOWN_NAMES ids are kept.
    """

    def __init__(self) -> None:
        self._known: OrderedDict[int, MemberInfo] = OrderedDict()

    def update(self, roster: tuple[MemberEntry, ...]) -> None:
        """`roster` as the room made it, or as `_sanitized` cleaned it."""
        for m in roster:
            self._remember(MemberInfo(m.id, m.name, m.host))

    def learn(self, member_id: int | None, name: str | None) -> None:
        if member_id is not None and name is not None and member_id not in self._known:
            self._remember(MemberInfo(member_id, sanitize_name(name), False))

    def _remember(self, info: MemberInfo) -> None:
        self._known[info.id] = info
        self._known.move_to_end(info.id)
        while len(self._known) > MAX_KNOWN_NAMES:
            self._known.popitem(last=False)

    def get(self, member_id: int | None) -> MemberInfo | None:
        if member_id is None:
            return None
        known = self._known.get(member_id)
        if known is not None:
            return known  # the usual case: no stand-in made (it was, per message)
        return MemberInfo(member_id, f"member {member_id}", False)


#: How many cleaned roster rows a member session remembers, and the longest raw name it
#: remembers one for (longer ones, which no honest host sends, are cleaned every time).
CLEAN_ROWS = 1024
CLEAN_ROW_NAME_CHARS = 256


def _sanitized(
    roster: tuple[MemberEntry, ...], cleaned: dict[MemberEntry, MemberEntry] | None = None
) -> tuple[MemberEntry, ...]:
    """The roster with every name cleaned as the room cleans names (a host may not have).

    `cleaned` remembers rows already cleaned: every join and leave sends each member the whole
    roster again, so in a room of n the same n rows come back at every change, and cleaning
    each name again cost more than reading the roster."""
    rows = []
    for m in roster:
        row = cleaned.get(m) if cleaned is not None else None
        if row is None:
            row = MemberEntry(id=m.id, name=sanitize_name(m.name), host=m.host, on=m.on)
            if cleaned is not None and len(m.name) <= CLEAN_ROW_NAME_CHARS:
                if len(cleaned) >= CLEAN_ROWS:
                    cleaned.clear()
                cleaned[m] = row
        rows.append(row)
    return tuple(rows)


def _event_message(
    seq: int,
    ts: int,
    kind: str,
    names: _Names,
    member: int | None,
    summary: str | None,
    phrase: str | None = None,
) -> TranscriptMessage:
    return TranscriptMessage(
        seq=seq,
        kind="event",
        ts=ts / 1000,
        sender=None,
        text=summary,
        event=kind,  # type: ignore[arg-type]
        subject=names.get(member),
        phrase=phrase,
    )


class _Session:
    role: Literal["host", "member"]
    self_member: MemberInfo
    files: SessionFiles

    def __init__(self) -> None:
        self.closed = False
        self.closed_reason: str | None = None
        #: What ended the session, in words to show, when something other than our own close
        #: ended it (e.g. the host removed us).
        self.closed_message: str | None = None
        self._transcript = _Transcript(DEFAULT_TRANSCRIPT_CAP)
        self._names = _Names()
        self._scope = trio.CancelScope()
        self._notices: list[TranscriptMessage] = []
        #: A member's last word when its tunnel ended without the room's `closed` event.
        self._final: TranscriptMessage | None = None

    async def listen(
        self,
        since_seq: int,
        timeout: float,
        *,
        include_own: bool = False,
        notices: bool = True,
        max_messages: int = LISTEN_MAX_MESSAGES,
        max_bytes: int = LISTEN_MAX_BYTES,
    ) -> ListenResult:
        """Messages with seq > since_seq, at once if there are any, else the first to arrive
        within `timeout` (then `timed_out`). Own chat is left out unless `include_own`.

        One call returns at most `max_messages` messages and about `max_bytes` of them (always
        at least one): `more` then says that the rest waits after `last_seq`. Local notices
        (`undelivered`) are handed out once, to the first listen with `notices` (the default);
        a member's last `closed` notice comes with every listen that reaches the end."""
        transcript = self._transcript
        if since_seq < 0:
            raise TunnelError("sinceSeq must be 0 or more")
        if since_seq > transcript.last_seq:
            # Most likely a seq from an earlier tunnel: waiting for it would hide this tunnel's
            # messages below it, so say so instead.
            raise TunnelError(
                f"sinceSeq {since_seq} is beyond this tunnel's last seq {transcript.last_seq}; seqs "
                "start again at 1 in every tunnel: pass 0, or a lastSeq this tunnel returned"
            )
        timeout = max(0.0, timeout)
        if since_seq < transcript.last_seq or self.closed or (notices and self._notices):
            page = self._page(since_seq, include_own, notices, max_messages, max_bytes)
            if page.messages or self.closed:
                return page  # a listener behind the transcript: no wait
            since_seq = page.last_seq
        # else: a listener at the end of the transcript (the usual case) has nothing to page
        deadline = trio.current_time() + timeout
        while await transcript.wait(deadline):
            page = self._page(since_seq, include_own, notices, max_messages, max_bytes)
            if page.messages or self.closed:
                return page
            since_seq = page.last_seq
        return ListenResult([], max(since_seq, 0), True)

    def _page(
        self,
        since_seq: int,
        include_own: bool,
        notices: bool,
        max_messages: int,
        max_bytes: int,
    ) -> ListenResult:
        """What listen returns now (no waiting): notices first, then the transcript after
        `since_seq` up to the caps."""
        out: list[TranscriptMessage] = []
        if notices and self._notices:
            out += self._notices
            self._notices = []
        used = sum(json_size(m) for m in out)
        shown = 0
        last = since_seq
        more = False
        first = True
        for message in self._transcript.iter_since(since_seq):
            if first and message.seq > since_seq + 1:
                # History was capped (by the room or by our own copy): say so, never skip.
                out.append(
                    TranscriptMessage(
                        seq=0,
                        kind="event",
                        ts=message.ts,
                        sender=None,
                        text=f"messages {since_seq + 1}..{message.seq - 1} are no longer "
                        "available (the transcript is capped)",
                        event="history-truncated",
                    )
                )
            first = False
            own = (
                message.kind == "chat"
                and message.sender is not None
                and message.sender.id == self.self_member.id
            )
            if own and not include_own:
                last = message.seq
                continue
            size = json_size(message)
            if shown and (shown >= max_messages or used + size > max_bytes):
                more = True
                break
            out.append(message)
            shown += 1
            used += size
            last = message.seq
        if not more and self.closed and self._final is not None:
            out.append(self._final)
        return ListenResult(out, last, False, more)

    def newest(
        self, max_messages: int = LISTEN_MAX_MESSAGES, max_bytes: int = LISTEN_MAX_BYTES
    ) -> TranscriptWindow:
        """The newest messages (own ones included) that fit the caps, oldest first; for a
        view of where the conversation is now (the transcript resource)."""
        window: list[TranscriptMessage] = []
        used = 0
        earlier = False
        for message in self._transcript.iter_newest():
            size = json_size(message)
            if window and (len(window) >= max_messages or used + size > max_bytes):
                earlier = True
                break
            window.append(message)
            used += size
        window.reverse()
        if window and window[0].seq > 1:
            earlier = True  # older messages were capped away (or are beyond the window)
        if self.closed and self._final is not None:
            window.append(self._final)
        return TranscriptWindow(window, self._transcript.last_seq, earlier)

    def _notice(self, message: TranscriptMessage) -> None:
        """A local notice for the next listen (bounded: the oldest go first)."""
        self._notices.append(message)
        del self._notices[: -MAX_NOTICES]
        self._transcript.poke()

    # ---- files (issue 10; the work is in files.py) ----

    async def prepare_share(
        self, path: str, *, note: str | None = None, cwd: str | None = None
    ) -> PreparedShare:
        """Scan a file or folder to share (in a worker thread): what would be offered, and what
        is skipped and why. Nothing is sent: show it to the human, then `share(prepared)`."""
        return await self.files.prepare_share(path, note=note, cwd=cwd)

    async def share(self, what: str | PreparedShare, *, note: str | None = None) -> ShareResult:
        """Offer a prepared share (or scan the path `what` first) to the room. Every member
        sees it as a `file` message; it lives while we are in the room, for the room's offer
        TTL (30 min by default), or until `unshare`."""
        return await self.files.share(what, note=note)

    def unshare(self, offer_id: int) -> None:
        """Withdraw one of our offers (receivers get `withdrawn`)."""
        self.files.unshare(offer_id)

    def offers(self) -> list[FileOfferInfo]:
        """The live file offers in the room, oldest first."""
        return self.files.offers()

    async def plan_receive(
        self,
        offer_id: int,
        save_to: str | None = None,
        *,
        overwrite: bool = False,
        cwd: str | None = None,
    ) -> PreparedReceive:
        """Where receiving `offer_id` would write every file (`save_to`, or the default under
        ~/Downloads/tunnel-mcp), checked before anything is written: show it to the human,
        then `receive(plan)`."""
        return await self.files.plan_receive(offer_id, save_to, overwrite=overwrite, cwd=cwd)

    async def receive(
        self,
        what: int | PreparedReceive,
        save_to: str | None = None,
        *,
        overwrite: bool = False,
        wait: float | None = None,
        cwd: str | None = None,
    ) -> ReceiveResult:
        """Receive an offer (as planned, or plan it first), verify every file's SHA-256, and
        return what was written. `wait`: return after that many seconds with `running` if it
        is not done (it goes on; call again to wait more). See `files.SessionFiles.receive`."""
        return await self.files.receive(what, save_to, overwrite=overwrite, wait=wait, cwd=cwd)

    async def cancel_receive(self, offer_id: int) -> bool:
        """Stop receiving `offer_id`; its partial files are removed (finished files stay)."""
        return await self.files.cancel_receive(offer_id)

    def receives(self) -> list[ReceiveProgress]:
        return self.files.receives()

    def _require_open(self) -> None:
        if self.closed and self.closed_reason == "removed" and self.closed_message:
            raise NotOpenError(
                f"{self.closed_message}. This tunnel is over for you; your link is used, so "
                "only a new link from the host can bring you back"
            )
        if self.closed:
            raise NotOpenError(
                f"the tunnel is closed ({self.closed_reason or 'closed'}): "
                "call tunnel_open or tunnel_join to start another"
            )


class HostSession(_Session):
    role: Literal["host"] = "host"

    def __init__(self, room: _Room, transport: Transport) -> None:
        super().__init__()
        self._transcript = _Transcript(room.config.transcript_cap)
        self.room = room
        self.transport = transport
        self.files = HostFiles(self)
        self.relay = Relay(
            room, on_change=self._on_room_change, on_files=self.files.on_room_events
        )
        self.tunnel_id = room.tunnel_id
        self.goal = room.goal
        self.self_member = MemberInfo(room.host_id, room.host_name, True)
        self.initial_invites: list[InviteInfo] = []
        self.public_url: str | None = None
        self._seen_seq = 0
        self._roster_version = -1
        self._room_closed = trio.Event()
        self._stopped = trio.Event()

    def _on_room_change(self) -> None:
        # Called after every room call (each ack too): only do per-member work on a change.
        # (Each file chunk relayed is such a call: nothing here may wake listeners for it.)
        if self.room.roster_version != self._roster_version:
            self._roster_version = self.room.roster_version
            self._names.update(self.room.roster())
            self._transcript.poke()
        if self.room.last_seq != self._seen_seq:
            add, names = self._transcript.add, self._names
            for entry in self.room.entries_since(self._seen_seq):
                if entry.kind == "chat":  # the usual entry: `_to_message`'s last case, first
                    add(chat_message(entry.seq, entry.ts / 1000, names.get(entry.sender), entry.text))
                else:
                    add(self._to_message(entry))  # wakes listeners
            self._seen_seq = self.room.last_seq
        if self.room.closed and not self.closed:
            self.closed = True
            self.closed_reason = self.room.close_reason
            self._transcript.poke()
            self._room_closed.set()  # _run lets the goodbyes out, then stops everything

    def _to_message(self, entry: TranscriptEntry) -> TranscriptMessage:
        self._names.learn(entry.member, entry.name)
        if entry.offer is not None and entry.event == KIND_OFFER:
            # While it lives the room has its whole manifest; the entry keeps none of it.
            offer = self.room.files.offer(entry.offer.id) or entry.offer
            return self.files.offer_message(offer)
        if entry.offer is not None and entry.event == KIND_OFFER_ENDED:
            return self.files.ended_message(
                entry.seq, entry.ts, entry.offer.id, entry.offer.sharer, entry.summary or ""
            )
        if entry.kind == "chat":
            return chat_message(entry.seq, entry.ts / 1000, self._names.get(entry.sender), entry.text)
        assert entry.event is not None
        return _event_message(
            entry.seq, entry.ts, entry.event, self._names, entry.member, entry.summary, entry.phrase
        )

    def invite(self, count: int = 1) -> list[InviteInfo]:
        self._require_open()
        if not 1 <= count <= 64:
            raise TunnelError("count must be between 1 and 64")
        now = trio.current_time()
        try:
            invites = self.room.mint_invites(count, now)
        except LocalProtocolError as exc:
            raise TunnelError(f"{exc}: close the tunnel or wait for someone to leave") from None
        assert self.public_url is not None
        return [
            InviteInfo(
                join_link=str(inv.link(self.public_url, self.tunnel_id)),
                expires_in_sec=int(inv.expires_at - now),
            )
            for inv in invites
        ]

    async def say(self, text: str) -> int:
        self._require_open()
        try:
            entry = self.relay.say(lambda now: self.room.say(text, now), len(text))
        except LocalProtocolError as exc:
            raise TunnelError(str(exc)) from None
        assert isinstance(entry, TranscriptEntry)
        await trio.lowlevel.checkpoint()  # a loop of host says must not starve the relay
        return entry.seq

    def remove(self, member_id: int, reason: str | None = None) -> TranscriptMessage:
        """Remove a member for good: its seat and tickets end at once (no resume), everyone sees
        a `removed` event (returned) carrying `reason`, and the member is told, reason included."""
        self._require_open()
        if isinstance(member_id, bool) or not isinstance(member_id, int):
            raise TunnelError("memberId must be a member's id, a whole number from tunnel_status")
        if member_id == self.room.host_id:
            raise TunnelError(
                f"member {member_id} is you, the host: to end the room for everyone, close the "
                "tunnel instead"
            )
        try:
            entry = self.relay.call(lambda now: self.room.remove(member_id, reason, now))
        except LocalProtocolError as exc:
            known = self._names._known.get(member_id)
            who = f"member {member_id} ({known.name})" if known else f"member {member_id}"
            if exc.code == "gone":
                raise TunnelError(
                    f"{who} is no longer in the room (it left or was removed already): there "
                    "is nothing to remove"
                ) from None
            if exc.code == "joining":
                raise TunnelError(
                    f"{who} is still joining (its handshake is not complete): try again in a "
                    "few seconds"
                ) from None
            if exc.code == "no-member":
                raise TunnelError(
                    f"there is no member {member_id} in this tunnel: tunnel_status lists the "
                    "members and their ids"
                ) from None
            raise TunnelError(str(exc)) from None
        assert isinstance(entry, TranscriptEntry)
        return self._to_message(entry)

    async def send(self, text: str, *, wait: float | None = None) -> SayReceipt:
        """`say`, as a receipt (the host's own says are stamped at once, never queued)."""
        return SayReceipt(await self.say(text))

    def status(self) -> SessionStatus:
        now = trio.current_time()
        warnings = []
        if self.transport.warning:
            warnings.append(self.transport.warning)
        alive = self.transport.alive()
        if not alive and not self.closed:
            warnings.append(
                f"the {self.transport.name} transport has stopped: new members cannot reach "
                "the room; close it and open a new tunnel"
            )
        return SessionStatus(
            role="host",
            goal=self.goal,
            tunnel_id=self.tunnel_id,
            self_member=self.self_member,
            members=[
                MemberStatus(
                    m.id, m.name, m.host, m.on if not self.closed else False, self.room.phrase(m.id)
                )
                for m in self.room.roster()
            ],
            pending_invites=[PendingInvite(int(left)) for left in self.room.pending_invites(now)]
            if not self.closed
            else [],
            last_seq=self.room.last_seq,
            transport=self.transport.name,
            public_url=self.public_url,
            connection="closed" if self.closed else "connected",
            cloudflared_alive=alive if self.transport.name == "cloudflared" else None,
            warnings=warnings,
            closed_reason=self.closed_reason,
            offers=self.offers() if not self.closed else [],
            receives=self.receives(),
        )

    async def close(self, summary: str | None = None) -> None:
        if not self.closed:
            self.relay.call(lambda now: self.room.close(summary, now))
        self._room_closed.set()
        await self._stopped.wait()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._transcript.timers.run)
                    await nursery.start(self.files.run)
                    host, port = self.transport.bind_address()
                    bound = await nursery.start(self.relay.run, host, port)
                    self.public_url = await self.transport.start(nursery, bound)
                    task_status.started()
                    await self._room_closed.wait()
                    # Give the goodbyes a moment to go out, then tear everything down.
                    await self.relay.drain(2.0)
                    nursery.cancel_scope.cancel()
        finally:
            self.closed = True
            self.closed_reason = self.closed_reason or "closed"
            with trio.CancelScope(shield=True):
                try:
                    await self.transport.stop()
                except Exception:  # noqa: BLE001 - teardown must finish; the cause is logged
                    log.exception("stopping the transport failed")
            self._transcript.poke()
            self._stopped.set()


async def open_host(
    nursery: trio.Nursery,
    goal: str,
    *,
    name: str,
    invites: int = 1,
    transport: Transport | None = None,
    config: RoomConfig | None = None,
) -> HostSession:
    """Open a room, start the relay and the transport, mint the first invites."""
    try:
        room = _Room(
            goal,
            name,
            trio.current_time(),
            config=config,
            epoch_offset=wall_clock_offset(),
        )
    except LocalProtocolError as exc:
        raise TunnelError(str(exc)) from None
    transport = transport or LocalTransport()
    session = HostSession(room, transport)
    try:
        await nursery.start(session._run)
    except Exception as group:
        # Startup runs in the session's own nursery, so its errors arrive wrapped in an
        # ExceptionGroup; a single one underneath is what the user needs to see.
        leaf = _single_leaf(group)
        # OSError: the port could not be bound; ours: transport errors (cloudflared missing,
        # rate limited, ...), whose messages already say what to do.
        if isinstance(leaf, OSError):
            raise TunnelError(f"could not start the tunnel: {_bind_problem(leaf)}") from None
        if type(leaf).__module__.startswith("tunnel_trio"):
            raise TunnelError(f"could not start the tunnel: {leaf}") from None
        raise
    session._on_room_change()
    try:
        session.initial_invites = session.invite(invites)
    except TunnelError as exc:
        await session.close()
        guests = room.config.capacity - 1
        if invites > guests:
            raise TunnelError(
                f"a room holds {guests} guests besides the host: ask for at most {guests} invites"
            ) from None
        raise exc from None
    return session


def _single_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _PendingSay(Parked):
    """A say waiting for the host's SayAccepted or SayRejected; parked on it (a timed wait
    without a cancel scope) is the `send` waiting for the answer.

    `queued`: its `send` call returned without an answer (the say is in the connection's
    unconfirmed set, re-sent on every resume); `_on_event` settles it when the answer comes.
    """

    __slots__ = ("queued", "result", "text", "tries")

    def __init__(self, timers: Timers, text: str, *, queued: bool = False, tries: int = 0) -> None:
        # (Parked's fields, set here: its __init__ would be one more call per say)
        self._timers = timers
        self.task = None
        self.result: SayAccepted | SayRejected | None = None
        self.text = text
        self.queued = queued
        self.tries = tries

    def answer(self, result: SayAccepted | SayRejected) -> None:
        if self.result is None:
            self.result = result
            self.wake()


class MemberSession(_Session):
    role: Literal["member"] = "member"

    def __init__(self, link: JoinLink, name: str, **dial: object) -> None:
        super().__init__()
        self.link = link
        self.tunnel_id = link.tunnel_id
        self.goal = ""
        self.self_member = MemberInfo(0, name, False)
        self.connection: ConnectionState = "connecting"
        self._roster: tuple[MemberEntry, ...] = ()
        self._cleaned_rows: dict[MemberEntry, MemberEntry] = {}
        # One waiter per unconfirmed say, woken only by its own answer: with a shared event,
        # n pipelined says would all wake (and re-check) on every answer.
        self._says: dict[int, _PendingSay] = {}
        #: Where queued says that the host rate-limited are re-sent from (the join's nursery).
        self._nursery: trio.Nursery | None = None
        self._resending = 0  # queued says waiting to be sent again after a rate limit
        self._welcomed = trio.Event()
        #: Set once the session is over (`_run` has ended).
        self._stopped = trio.Event()
        self._refused: Refused | None = None
        self._end: ConnectionEnded | None = None
        self._phrase: str | None = None
        self._phrase_changed = False
        self.files = MemberFiles(self)
        #: trio.current_time, one Python call instead of three (the session lives in one run).
        self._clock_now = trio.lowlevel.current_clock().current_time
        timers = self._transcript.timers
        self.guest = Guest(link, name, self._on_event, self._on_state, timers=timers, **dial)  # type: ignore[arg-type]

    def _on_state(self, state: str) -> None:
        if state in ("connected", "reconnecting", "closed"):
            self.connection = state  # type: ignore[assignment]
        if state == "closed":
            self.closed = True
        self._transcript.poke()

    def _on_event(self, event: TunnelEvent) -> None:
        if type(event) is ChatMessage:
            # The busiest paths of chat, checked first.
            self._transcript.add(
                chat_message(
                    event.seq, event.ts / 1000, self._names.get(event.sender_id), event.text
                )
            )
            return
        if type(event) is SayAccepted:
            # Our own say's seq (its ChatMessage follows): no transcript change, no poke.
            waiting = self._says.get(event.ref)
            if waiting is not None:
                if waiting.queued:
                    del self._says[event.ref]
                else:
                    waiting.answer(event)
            return
        if isinstance(event, _FILE_DATA_EVENTS):
            # The busy path of a transfer: no transcript change, so no listener is woken.
            self.files.on_event(event, self.guest.conn)
            return
        if isinstance(event, _FILE_EVENTS):
            message = self.files.on_event(event, self.guest.conn)
            if message is not None:
                self._transcript.add(message)
        elif isinstance(event, Welcomed):
            if self._welcomed.is_set() and not event.resumed:
                # A fresh rejoin (our first confirmation was lost): the new seat has new refs,
                # so says still waiting on the old seat's refs can never be confirmed.
                lost = (
                    "the connection was re-established as a new member, and this message may "
                    "not have been delivered: send it again if it matters"
                )
                for ref, pending in self._says.items():
                    if pending.queued:
                        self._undelivered(pending.text, lost)
                    else:
                        pending.answer(SayRejected(ref, "lost", lost))
                self._says.clear()  # the new seat's refs start again at 1
                self.files._fresh_join()
            if self._phrase is not None and event.phrase != self._phrase:
                self._phrase_changed = True  # a fresh rejoin: a new seat, a new phrase
            self._phrase = event.phrase
            self.goal = event.goal
            self.self_member = MemberInfo(event.member_id, sanitize_name(event.name), False)
            self._roster = _sanitized(event.roster, self._cleaned_rows)
            self._names.update(self._roster)
            self._welcomed.set()
        elif isinstance(event, Refused):
            self._refused = event
        elif isinstance(event, RoomEvent):
            self._names.learn(event.member_id, event.name)
            if event.kind == "history-truncated":
                pass  # the gap in seqs tells listen to report it
            else:
                self._transcript.add(
                    _event_message(
                        event.seq, event.ts, event.kind, self._names, event.member_id, event.summary
                    )
                )
        elif isinstance(event, RosterChanged):
            self._roster = _sanitized(event.members, self._cleaned_rows)
            self._names.update(self._roster)
        elif isinstance(event, (SayAccepted, SayRejected)):
            waiting = self._says.get(event.ref)
            if waiting is not None and waiting.queued:
                del self._says[event.ref]
                if isinstance(event, SayRejected):
                    self._queued_say_refused(waiting, event)
            elif waiting is not None:
                waiting.answer(event)
        elif isinstance(event, ConnectionEnded):
            self._end = event
            if not event.resumable:
                if not self.closed and event.reason not in ("closed", "idle-closed"):
                    # The room's own `closed` event did not end this tunnel: say why it ended.
                    self._final = TranscriptMessage(
                        seq=0,
                        kind="event",
                        ts=time.time(),
                        sender=None,
                        event="closed",
                        reason=event.message,
                    )
                self.closed = True
                self.closed_reason = event.reason
                self.closed_message = event.message
                self.connection = "closed"
                for pending in self._says.values():
                    if pending.queued:
                        self._undelivered(
                            pending.text,
                            "the tunnel closed before the host confirmed it; it may or may not "
                            "have reached the others",
                        )
                    pending.wake()  # no answer: send() sees `closed`
                self._says = {ref: p for ref, p in self._says.items() if not p.queued}
        self._transcript.poke()

    def _undelivered(self, text: str, why: str) -> None:
        self._notice(
            TranscriptMessage(
                seq=0,
                kind="event",
                ts=time.time(),
                sender=self.self_member,
                text=text,
                event="undelivered",
                reason=why,
            )
        )

    def _queued_say_refused(self, pending: _PendingSay, refusal: SayRejected) -> None:
        """The host refused a say whose `send` already returned `queued`. Rate-limited (likely
        when a resume re-sends many at once): send it again after the wait, a few times;
        anything else: tell the next listen it was not delivered."""
        wait = (refusal.retry_ms or 0) / 1000
        if (
            refusal.code == "rate-limited"
            and refusal.retry_ms is not None
            and wait <= QUEUED_RETRY_MAX_WAIT
            and pending.tries < QUEUED_RETRIES
            and self._nursery is not None
        ):
            self._resending += 1
            self._nursery.start_soon(self._send_later, pending.text, wait, pending.tries + 1)
        else:
            self._undelivered(pending.text, f"the host did not accept it: {refusal.message}")

    async def _send_later(self, text: str, wait: float, tries: int) -> None:
        try:
            await trio.sleep(wait)
            conn = await self._open_connection(math.inf)
            assert conn is not None
            ref = conn.say(text)
        except (TunnelError, LocalProtocolError) as exc:
            self._undelivered(text, f"it could not be sent again: {exc}")
            return
        finally:
            self._resending -= 1
        self._says[ref] = _PendingSay(self._transcript.timers, text, queued=True, tries=tries)
        self.guest.flush()

    async def _open_connection(self, deadline: float) -> MemberConnection | None:
        """The connection once it is open (now, or by `deadline`: else None). Raises
        NotOpenError when the tunnel closes meanwhile."""
        self._require_open()
        conn = self.guest.conn
        if conn is not None and conn.state is MemberState.OPEN:
            return conn  # the usual case, without a cancel scope per say
        with trio.move_on_at(deadline):
            while True:
                self._require_open()
                conn = self.guest.conn
                if conn is not None and conn.state is MemberState.OPEN:
                    return conn
                await self._transcript.wait()
        return None

    async def say(self, text: str) -> int:
        """Say `text`; returns its seq once the host stamped it. Raises SayQueuedError when the
        host has not confirmed it within SAY_TIMEOUT (it is queued, see `send`), TunnelError
        when it was not sent or the host refused it."""
        seq = await self._send(text, None)
        if seq is None:
            raise SayQueuedError(QUEUED_NOTE)
        return seq

    async def send(self, text: str, *, wait: float | None = None) -> SayReceipt:
        """Say `text` and wait up to `wait` seconds (default SAY_TIMEOUT) for the host to stamp
        it. Never reports a failure for a message that may still be delivered:

        - stamped: `SayReceipt(seq)`;
        - handed to the connection but not confirmed in time (the link is down, or the host
          is slow): `SayReceipt(None, queued=True)`. The connection re-sends it on every
          resume until the host answers, and the host stamps it at most once; if it is lost
          after all (a fresh rejoin, the tunnel closing, a refusal), the next listen gets an
          `undelivered` notice with its text;
        - not sent at all (the connection stayed down for the whole wait, or the host is
          rate-limiting us for longer than that): TunnelError, nothing goes out later;
        - refused by the host: TunnelError with the host's reason.

        A rate-limited say is sent again after the wait the host asks for, within `wait`."""
        seq = await self._send(text, wait)
        return SayReceipt(None, queued=True) if seq is None else SayReceipt(seq)

    async def _send(self, text: str, wait: float | None) -> int | None:
        """`send`, with the seq for `SayReceipt(seq)` and None for a queued say."""
        deadline = self._clock_now() + max(0.0, SAY_TIMEOUT if wait is None else wait)
        while True:
            self._require_open()
            conn = self.guest.conn
            if conn is None or conn.state is not MemberState.OPEN:
                conn = await self._open_connection(deadline)  # else no coroutine per say
            if conn is None:
                raise TunnelError(
                    "not sent: the connection to the host is down"
                    + self._retrying()
                    + "; nothing was delivered: send it again once tunnel_status shows "
                    "connected"
                )
            try:
                ref = conn.say(text)
            except LocalProtocolError as exc:
                raise TunnelError(str(exc)) from None
            pending = self._says[ref] = _PendingSay(self._transcript.timers, text)
            if len(self._says) > 1:
                # Others are on their way: let says made in the same turn of the scheduler
                # share a transport message (batch/1); a lone say goes at once.
                self.guest.flush_soon()
            else:
                self.guest.flush()
            timers = self._transcript.timers
            while pending.result is None and not self.closed:
                if not await timers.wait(pending, deadline):
                    break
            result = pending.result
            if result is None and not self.closed:
                pending.queued = True  # _on_event settles it
                return None
            if self._says.get(ref) is pending:
                del self._says[ref]
            if result is None:
                raise NotOpenError(
                    "the tunnel closed before the host confirmed the message; "
                    "it may not have been delivered"
                )
            if isinstance(result, SayAccepted):
                return result.seq
            if result.code == "rate-limited" and result.retry_ms is not None:
                retry_at = trio.current_time() + result.retry_ms / 1000
                if retry_at > deadline:
                    raise TunnelError(
                        "not sent: the host is rate-limiting your messages; send it again in "
                        f"{max(1, math.ceil(retry_at - trio.current_time()))} s"
                    )
                await trio.sleep_until(retry_at)
                continue
            raise TunnelError(f"the host did not accept the message: {result.message}")

    def _retrying(self) -> str:
        left = self._gives_up_in()
        if left is None:
            return ""
        return f" (reconnecting; the tunnel closes in {left} s unless the connection comes back)"

    def _gives_up_in(self) -> int | None:
        at = self.guest.gives_up_at
        if at is None or self.closed:
            return None
        return max(0, math.ceil(at - trio.current_time()))

    @property
    def phrase(self) -> str | None:
        """Our verification phrase (None until welcomed): the human reads it to the host's
        human over a channel they trust; different words mean someone is in between."""
        return self._phrase

    def status(self) -> SessionStatus:
        me = self.self_member.id
        # While our link is down we cannot know who is on: nobody is shown connected.
        linked = self.connection == "connected"
        left = self._gives_up_in() if self.connection == "reconnecting" else None
        queued = self._resending + sum(1 for p in self._says.values() if p.queued)
        warnings = []
        if self._phrase_changed:
            warnings.append(
                "your verification phrase changed: the connection was re-established as a new "
                "member, so compare the new phrase with the host"
            )
        if left is not None:
            warnings.append(
                "the connection to the host is down: reconnecting, for "
                f"{left} s more at most; then the tunnel closes"
            )
        if queued:
            warnings.append(
                f"{queued} message{'s' if queued != 1 else ''} you said "
                f"{'are' if queued != 1 else 'is'} queued, not yet confirmed by the host: "
                "sent once the connection is back (do not send again)"
            )
        if self._final is not None and self._final.reason:
            warnings.append(f"the tunnel ended: {self._final.reason}")
        return SessionStatus(
            role="member",
            goal=self.goal,
            tunnel_id=self.tunnel_id,
            self_member=self.self_member,
            members=[
                MemberStatus(
                    m.id, m.name, m.host, m.on and linked, self._phrase if m.id == me else None
                )
                for m in self._roster
            ],
            pending_invites=[],
            last_seq=self._transcript.last_seq,
            transport=None,
            public_url=None,
            connection=self.connection,
            cloudflared_alive=None,
            warnings=warnings,
            closed_reason=self.closed_reason,
            closed_message=self.closed_message,
            gives_up_in_sec=left,
            queued_says=queued,
            offers=self.offers() if not self.closed else [],
            receives=self.receives(),
        )

    async def close(self, summary: str | None = None) -> None:
        """Leave the room (a member cannot close it for others)."""
        if not self.closed:
            self.closed = True
            self.closed_reason = "left"
            self.connection = "closed"
            await self.guest.leave()
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + 2.0)
        await self._stopped.wait()

    async def _run(self, first: tuple[WebSocket, MemberConnection]) -> None:
        """The session's life in the join's nursery, from the welcome on: `first` is the
        connection the join got welcomed on (`Guest.handshake`)."""
        try:
            with self._scope:
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._transcript.timers.run)
                        # Reads and receives run in this nursery: a task and a nursery of
                        # their own cost every join, most of which never move a file.
                        self.files.bind(nursery)
                        try:
                            await self.guest.run(first)
                        finally:
                            nursery.cancel_scope.cancel()
                finally:
                    self.files.end()
        finally:
            if not self.closed:
                self.closed = True
                self.connection = "closed"
                self.closed_reason = self.closed_reason or (
                    self._end.reason if self._end else "closed"
                )
            self._transcript.poke()
            self._stopped.set()


#: Member events that only move file bytes (no transcript change).
_FILE_DATA_EVENTS = (ReadRequest, ChunkReceived, FetchComplete, FetchAborted)
#: The other file events.
_FILE_EVENTS = (FileOffer, FileOfferEnded, ShareAccepted, ShareRejected, FileList, FileListFailed)


def _bind_problem(exc: OSError) -> str:
    """Why the relay's listening socket could not be opened, and what to do about it."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return f"{reason}: another program uses that port; choose another port or leave it out"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{reason}: that address is not one of this machine's; bind to one of its own "
            "addresses (see `ip addr` or `ifconfig`)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{reason}: ports below 1024 need privileges; use a port of 1024 or above"
    return reason


def _dial_settings(
    link: str,
    ssl_context: ssl.SSLContext | None,
    resolve_override: Mapping[tuple[str, int], tuple[str, int]] | None,
) -> tuple[JoinLink, ssl.SSLContext | None, Mapping[tuple[str, int], tuple[str, int]] | None]:
    """The parsed link and how to dial it: what the caller gave, else what the environment
    says (TUNNEL_CA_BUNDLE for wss, TUNNEL_CONNECT_TO). Raises TunnelError saying what to fix."""
    try:
        parsed = JoinLink.parse(link)
        if ssl_context is None and parsed.websocket_url.startswith("wss:"):
            from ._tls import client_ssl_context

            ssl_context = client_ssl_context()
        if resolve_override is None:
            from ._connect_to import connect_to_from_env

            resolve_override = connect_to_from_env() or None
            if resolve_override:
                log.info("TUNNEL_CONNECT_TO: dialling %s", _describe_overrides(resolve_override))
    except (LinkError, ValueError) as exc:
        raise TunnelError(str(exc)) from None
    return parsed, ssl_context, resolve_override


def _describe_overrides(overrides: Mapping[tuple[str, int], tuple[str, int]]) -> str:
    return ", ".join(f"{h}:{p} at {th}:{tp}" for (h, p), (th, tp) in overrides.items())


async def join(
    nursery: trio.Nursery,
    link: str,
    *,
    name: str,
    ssl_context: ssl.SSLContext | None = None,
    resolve_override: Mapping[tuple[str, int], tuple[str, int]] | None = None,
    connect_timeout: float = 15.0,
) -> MemberSession:
    """Join the room behind `link`. Returns once the host welcomed us; raises TunnelError."""
    parsed, ssl_context, resolve_override = _dial_settings(link, ssl_context, resolve_override)
    from ._doh import resolve_fallback

    deadline = trio.current_time() + JOIN_TIMEOUT
    while True:
        try:
            return await _join_once(
                nursery,
                parsed,
                name,
                deadline,
                ssl_context=ssl_context,
                resolve_fallback=resolve_fallback,
                resolve_override=resolve_override,
                connect_timeout=connect_timeout,
            )
        except JoinRefusedError as exc:
            # "in-use": another handshake holds the invite, often our own earlier attempt
            # whose connection died; the room frees it within its 10 s handshake timeout.
            if exc.code != "in-use" or trio.current_time() + IN_USE_RETRY >= deadline:
                raise
            log.info("invite in use; retrying in %.0f s", IN_USE_RETRY)
            await trio.sleep(IN_USE_RETRY)


async def _join_once(
    nursery: trio.Nursery,
    parsed: JoinLink,
    name: str,
    deadline: float,
    **dial: object,
) -> MemberSession:
    session = MemberSession(parsed, name, **dial)
    session._nursery = nursery
    # The dial and the handshake run in this task (see `Guest.handshake`); the session's
    # tasks start once the host has welcomed us. Cancelled, timed out or failing before
    # that, the join leaves nothing running: the connection is closed on the way out.
    with trio.move_on_at(deadline):
        try:
            first = await session.guest.handshake()
        except DialError as exc:
            raise TunnelError(f"could not reach the host: {exc}") from None
        if first is None:
            if session._refused is not None:
                raise JoinRefusedError(session._refused.code, session._refused.message)
            reason = session._end.message if session._end else "the connection closed"
            raise TunnelError(f"could not join: {reason}")
        try:
            nursery.start_soon(session._run, first)
        except BaseException:
            with trio.CancelScope(shield=True):
                await first[0].aclose()
            raise
        return session
    raise TunnelError("the host did not answer within 30 s: check the link and try again")


async def relay_answers(link: str, *, timeout: float = 10.0) -> bool:
    """Whether a relay still accepts a WebSocket at `link`'s address (the secret is not used).

    For checking that a closed tunnel really is gone: once the host's relay (and its
    cloudflared) has stopped, the dial fails, whether the port refuses, the name no longer
    resolves, or Cloudflare's edge answers 530 for a tunnel with no connector. Dials the way
    `join` does (TUNNEL_CONNECT_TO, TUNNEL_CA_BUNDLE, the DoH fallback) but sends nothing.
    """
    from ._doh import resolve_fallback
    from ._ws import WebSocketError, connect_websocket

    parsed, context, overrides = _dial_settings(link, None, None)
    try:
        ws = await connect_websocket(
            parsed.websocket_url,
            max_message_size=MAX_FRAME,
            connect_timeout=timeout,
            ssl_context=context,
            resolve_fallback=resolve_fallback,
            resolve_override=dict(overrides) if overrides else None,
        )
    except (WebSocketError, OSError):
        return False
    except Exception:  # noqa: BLE001 - e.g. DohError: nothing answered, which is the point
        log.debug("relay probe failed", exc_info=True)
        return False
    await ws.aclose()
    return True
