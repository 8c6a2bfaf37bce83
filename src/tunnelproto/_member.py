"""The joining side: one `MemberConnection` per transport connection.

    conn = MemberConnection(link, "ana", now)        # queues handshake message 1
    for data in conn.data_to_send(): ws.send(data)
    conn.receive_data(message, now)                  # one transport message
    while (event := conn.next_event()) is not None: ...
    conn.say("hello")                                # returns a ref; SayAccepted(ref, seq) follows

When the connection drops, `resume_state()` captures what a new connection needs to take the
seat back: `MemberConnection(link, name, now, resume=state)`. The resumed connection replays
what was missed and re-sends any say that the room had not yet stamped; the room drops
duplicates by ref, so a say is never lost and never doubled.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import _frames as f
from ._channel import (
    MAX_FRAME,
    MSG2_NOISE,
    MSG2_PLAIN_REFUSE,
    Channel,
    Message,
    message_bytes,
    new_handshake,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    ChatMessage,
    ConnectionEnded,
    Refused,
    RoomEvent,
    RosterChanged,
    SayAccepted,
    SayRejected,
    TunnelEvent,
    Welcomed,
)
from ._files_member import FilesResume, MemberFiles
from ._link import JoinLink, ticket_id, ticket_psk
from ._make import maker
from ._names import one_line
from ._noise import NoiseError
from ._phrase import derive_phrase
from ._removal import REMOVED, removed_message
from ._room import check_text
from ._state import (
    BATCH_CAP,
    MEMBER_ACCEPTS,
    MEMBER_ACCEPTS_FILES,
    MEMBER_HANDSHAKE_ACCEPTS,
    MemberState,
)

SOFTWARE = "tunnel-mcp-python/1"
HANDSHAKE_TIMEOUT = 10.0
PING_AFTER = 20.0
#: How long the member waits for any answer to its ping. A live host answers at once, and hears
#: the member's ping before its own 20 s ping timer fires, so 10 s of silence after a ping means
#: the link is gone. The member then knows (at 30 s) no later than the host does: its stall
#: timer fires at 30 s while entries are in flight, its dead timer at 60 s when nothing is.
PONG_TIMEOUT = 10.0
DEAD_AFTER = PING_AFTER + PONG_TIMEOUT
#: Most says awaiting their seq at once; past it `say()` refuses (the room is not answering).
MAX_UNACKED_SAYS = 256
#: Capabilities a member may announce in hello, and their length.
MAX_CAPS = 8
MAX_CAP_CHARS = 32
#: With batch/1 (spec section 12): how long an ack may wait for company (a say, a credit, a
#: pong it can ride along with) before it goes alone, and the share of the host's window
#: (`welcome.limits.window`) received unacknowledged after which it goes at the next drain.
ACK_DELAY = 0.05
ACK_WINDOW_SHARE = 4
#: The window assumed when a host with batch/1 does not say (the room's default).
DEFAULT_WINDOW = 1024 * 1024

_MAKE_CHAT = maker(ChatMessage)
_MAKE_ACCEPTED = maker(SayAccepted)


@dataclass(frozen=True, slots=True)
class ResumeState:
    """What survives a dropped connection. Holds the ticket secret: keep it in memory only."""

    member_id: int
    name: str
    goal: str
    ticket: bytes
    last_seq: int
    next_ref: int
    unacked: tuple[tuple[int, str], ...]  # says sent but not yet seen stamped
    phrase: str  # the verification phrase of the join: a resume keeps it
    #: Files: unfinished fetches, shares not yet stamped, my offers, the offers known.
    files: FilesResume | None = None

    def __repr__(self) -> str:
        return (
            f"ResumeState(member_id={self.member_id}, last_seq={self.last_seq}, "
            f"unacked={len(self.unacked)}, ticket=<hidden>)"
        )


class MemberConnection:
    def __init__(
        self,
        link: JoinLink,
        name: str,
        now: float,
        *,
        resume: ResumeState | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        caps: tuple[str, ...] = (),
    ) -> None:
        if len(caps) > MAX_CAPS or any(len(c) > MAX_CAP_CHARS for c in caps):
            # Keeps hello well inside the room's handshake message 1 limit.
            raise LocalProtocolError(
                f"at most {MAX_CAPS} capabilities of {MAX_CAP_CHARS} characters", "bad-caps"
            )
        self._host_error: str | None = None
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise LocalProtocolError("the name is not valid Unicode text", "bad-name") from None
        self.link = link
        self.state = MemberState.HANDSHAKE
        self.resumed_from = resume
        self.member_id: int | None = resume.member_id if resume else None
        self.name = resume.name if resume else name
        self.goal: str | None = resume.goal if resume else None
        self.roster: tuple[f.MemberEntry, ...] = ()
        #: The seat's verification phrase, from the join handshake's hash (None until welcomed;
        #: a resume keeps the join's). Show it to the user, who compares it with the host's.
        self.phrase: str | None = resume.phrase if resume else None
        self.last_seq = resume.last_seq if resume else 0
        self.limits: dict[str, int] = {}
        self._ticket: bytes | None = resume.ticket if resume else None
        self._next_ref = resume.next_ref if resume else 1
        self._unacked: dict[int, str] = dict(resume.unacked) if resume else {}
        self._acked_sent = self.last_seq
        #: batch/1: when the pending ack must go at the latest, and the bytes it acknowledges.
        self._ack_due: float | None = None
        self._unacked_bytes = 0
        self._ack_every = DEFAULT_WINDOW // ACK_WINDOW_SHARE
        self._events: deque[TunnelEvent] = deque()
        self._out: list[bytes] = []
        self._channel: Channel | None = None
        self._opened_at = now
        self._last_rx = now
        self._ping_outstanding = False
        self.caps = tuple(caps)
        #: File offers and transfers (spec "Files"); on once the welcome has files/1.
        self.files = MemberFiles(self, resume.files if resume else None)

        # The secret (link or ticket) is never the key itself: the key id and the PSK are each
        # derived from it under their own label (spec section 4).
        if resume is not None:
            key_id = ticket_id(resume.ticket, link.tunnel_id)
            psk = ticket_psk(resume.ticket, link.tunnel_id)
        else:
            key_id, psk = link.invite_id, link.psk
        self._hs = new_handshake(initiator=True, tunnel_id=link.tunnel_id, psk=psk, rng=rng)
        hello = f.Hello(
            v=f.PROTOCOL_VERSION,
            name=name[:128],  # the room keeps 64 after stripping; this bounds hello
            sw=SOFTWARE,
            caps=caps,
            last=resume.last_seq if resume else None,
        )
        msg1 = self._hs.write_message(hello.encode())
        self._out.append(bytes([f.PROTOCOL_VERSION]) + key_id + msg1)

    # ------------------------------------------------------------------ API

    def data_to_send(self) -> list[bytes]:
        # Acks are coalesced here: one per drain, for the highest seq we hold. They pace the
        # room's window (history and live traffic) and tell it what we have. So are credits.
        # With batch/1 an ack also waits (up to ACK_DELAY, or a share of the window) for a
        # frame to ride with, since a lone ack costs both ends a whole transport message.
        if self.files._credit:  # (a call less per drain when no fetch granted credit)
            self.files.flush_credit()
        channel = self._channel
        if self.state is MemberState.OPEN and self.last_seq > self._acked_sent:
            assert channel is not None
            if (
                not channel.batch
                or channel.queued
                or self._unacked_bytes >= self._ack_every
            ):
                self._queue_ack()
        out, self._out = self._out, []
        if channel is not None and channel.queued:
            out += channel.seal_queued()
        return out

    def next_event(self) -> TunnelEvent | None:
        return self._events.popleft() if self._events else None

    def say(self, text: str) -> int:
        if self.state is not MemberState.OPEN:
            raise LocalProtocolError("not connected to the room", "not-open")
        # Checked before the say is kept for re-sending: a kept unencodable one would make
        # every resume fail.
        check_text(text, LocalProtocolError)
        if len(self._unacked) >= MAX_UNACKED_SAYS:
            raise LocalProtocolError("too many messages awaiting the room; wait", "backlog")
        ref = self._next_ref  # `_take_ref`, in line
        self._next_ref = ref + 1
        self._unacked[ref] = text
        self._emit(f.encode_say(ref, text))
        return ref

    def has_bulk(self) -> bool:
        """File chunks are waiting for `pull_bulk` (sharing only)."""
        return self.files.has_bulk()

    def pull_bulk(self, max_bytes: int) -> int:
        """Seal about `max_bytes` of file chunks now; they come out of the next `data_to_send()`
        behind everything sealed before. Call it only when the outbound queue is low: chat
        sealed meanwhile then goes first. Returns the bytes sealed."""
        return self.files.pull_bulk(max_bytes)

    def leave(self) -> None:
        """Leave the room for good (the seat is freed; no resume)."""
        if self.state is MemberState.OPEN:
            self._queue(f.Close(reason="left"))
        self._end("left", "you left the room", resumable=False)

    def resume_state(self) -> ResumeState | None:
        """What a new connection needs to take the seat back, or None if there is no seat."""
        if (
            self._ticket is None
            or self.member_id is None
            or self.goal is None
            or self.phrase is None
        ):
            return None
        return ResumeState(
            member_id=self.member_id,
            name=self.name,
            goal=self.goal,
            ticket=self._ticket,
            last_seq=self.last_seq,
            next_ref=self._next_ref,
            unacked=tuple(sorted(self._unacked.items())),
            phrase=self.phrase,
            files=self.files.snapshot(),
        )

    def connection_lost(self, now: float) -> None:
        """The transport died under us."""
        if self.state in (MemberState.HANDSHAKE, MemberState.OPEN):
            message = "the connection dropped"
            if self._host_error is not None:
                message += f" (the host reported {self._host_error})"
            self._end("connection-lost", message, resumable=True)
            self.state = MemberState.ERROR

    def receive_data(self, data: Message, now: float) -> None:
        """One transport message (any bytes-like object). Raises RemoteProtocolError (and the
        connection is dead) if the room broke the protocol; never anything else for any input."""
        if type(data) is not bytes:
            data = message_bytes(data)
        if self.state not in (MemberState.HANDSHAKE, MemberState.OPEN):
            return
        self._last_rx = now
        self._ping_outstanding = False
        try:
            if self.state is MemberState.HANDSHAKE:
                self._on_msg2(data)
            else:
                channel = self._channel
                assert channel is not None
                held = self.last_seq
                for frame in channel.open_all(data):
                    if self.state is not MemberState.OPEN:
                        break  # a close (or a refusal of the seat) ended the connection
                    self._on_frame(frame)
                if channel.batch and self.last_seq > held:
                    self._unacked_bytes += len(data)
                    if self._ack_due is None:
                        self._ack_due = now + ACK_DELAY
        except RemoteProtocolError as exc:
            self._end(exc.code, f"protocol error from the host: {exc}", resumable=True)
            self.state = MemberState.ERROR
            raise

    def next_deadline(self) -> float | None:
        if self.state is MemberState.HANDSHAKE:
            return self._opened_at + HANDSHAKE_TIMEOUT
        if self.state is MemberState.OPEN:
            if self._ping_outstanding:
                deadline = self._last_rx + DEAD_AFTER
            else:
                deadline = self._last_rx + PING_AFTER
            if self._ack_due is not None and self._ack_due < deadline:
                return self._ack_due
            return deadline
        return None

    def handle_timer(self, now: float) -> None:
        if self.state is MemberState.HANDSHAKE and now >= self._opened_at + HANDSHAKE_TIMEOUT:
            self._end("timeout", "the host did not answer the handshake in time", resumable=True)
            self.state = MemberState.ERROR
        elif self.state is MemberState.OPEN:
            if now >= self._last_rx + DEAD_AFTER:
                self._end(
                    "timeout",
                    f"no traffic from the host for {DEAD_AFTER:g} s (it did not answer a ping)",
                    resumable=True,
                )
                self.state = MemberState.ERROR
            else:
                if self._ack_due is not None and now >= self._ack_due:
                    self._queue_ack()
                if not self._ping_outstanding and now >= self._last_rx + PING_AFTER:
                    self._ping_outstanding = True
                    self._queue(f.Ping())

    # ------------------------------------------------------------------ internals

    def _take_ref(self) -> int:
        """The next ref: says and shares share one numbering (spec "Sequencing")."""
        ref = self._next_ref
        self._next_ref += 1
        return ref

    def _queue(self, frame: f.Frame) -> None:
        self._emit(frame.encode())

    def _emit(self, plaintext: bytes) -> None:
        """One encoded frame: sealed now, or with batch/1 queued in the channel and sealed with
        whatever else is queued at the next drain."""
        channel = self._channel
        assert channel is not None
        if channel.batch:
            channel.queued.append(plaintext)  # `Channel.queue`, in line
        else:
            self._out.append(channel.seal(plaintext))

    def _queue_ack(self) -> None:
        self._emit(f.encode_ack(self.last_seq))
        self._acked_sent = self.last_seq
        self._ack_due = None
        self._unacked_bytes = 0

    def _end(
        self, reason: str, message: str, *, resumable: bool, summary: str | None = None
    ) -> None:
        if self.state in (MemberState.CLOSED, MemberState.ERROR):
            return
        self.state = MemberState.CLOSED
        self._events.append(ConnectionEnded(reason, message, resumable, summary))

    def _on_msg2(self, data: bytes) -> None:
        if len(data) > MAX_FRAME or not data:
            raise RemoteProtocolError("handshake message 2 has a bad size", "malformed")
        kind, body = data[0], data[1:]
        if kind == MSG2_PLAIN_REFUSE:
            # Unauthenticated: anyone on the path could forge this. It can only make us give up,
            # which they could do anyway by dropping the connection.
            frame = f.decode_frame(body)
            if not isinstance(frame, f.Refuse):
                raise RemoteProtocolError("plaintext reply must be a refusal", "unexpected")
            self._refused(frame, authenticated=False)
            return
        if kind != MSG2_NOISE:
            raise RemoteProtocolError("unknown handshake message 2 type", "malformed")
        try:
            payload = self._hs.read_message(body)
        except NoiseError:
            raise RemoteProtocolError(
                "the host failed to authenticate (it does not know the link secret)", "handshake"
            ) from None
        frame = f.decode_frame(payload)
        if type(frame) not in MEMBER_HANDSHAKE_ACCEPTS:
            raise RemoteProtocolError("handshake payload must be welcome or refuse", "unexpected")
        if isinstance(frame, f.Refuse):
            self._refused(frame, authenticated=True)
            return
        assert isinstance(frame, f.Welcome)
        if len(frame.ticket) != 32:
            raise RemoteProtocolError("welcome carries a malformed ticket", "malformed")
        resume = self.resumed_from
        if frame.resumed != (resume is not None):
            raise RemoteProtocolError("welcome.resumed does not match our request", "malformed")
        if resume is not None and (frame.you != resume.member_id or frame.last < resume.last_seq):
            raise RemoteProtocolError("resume welcome does not match our seat", "malformed")
        send, recv = self._hs.split()
        self._channel = Channel(
            send, recv, batch=BATCH_CAP in self.caps and BATCH_CAP in (frame.caps or ())
        )
        if resume is None:
            self.phrase = derive_phrase(self._hs.handshake_hash)
        assert self.phrase is not None
        self.state = MemberState.OPEN
        self.member_id = frame.you
        self.name = frame.name
        self.goal = frame.goal
        self.roster = frame.roster
        self._ticket = frame.ticket
        self.limits = dict(frame.limits)
        window = self.limits.get("window", DEFAULT_WINDOW)
        self._ack_every = max(1, window // ACK_WINDOW_SHARE)
        if resume is None and frame.first > 1:
            self.last_seq = 0
        # Key confirmation: the room seats us only once this first ack arrives. It travels
        # alone (section 7), so it is sealed now even where frames are batched.
        self._queue(f.Ack(seq=self.last_seq))
        self._acked_sent = self.last_seq
        self._out += self._channel.seal_queued()
        self.files.on_welcome(frame)
        # Re-sent in ref order, says and shares together: the room drops a ref it has handled,
        # so one sent after a higher one would be lost.
        resend: list[tuple[int, tuple[f.Frame, ...]]] = [
            (ref, (f.Say(ref=ref, text=text),)) for ref, text in self._unacked.items()
        ]
        for _, frames in sorted(resend + self.files.resend(), key=lambda item: item[0]):
            for say_or_share in frames:
                self._queue(say_or_share)
        self.files.after_welcome()
        self._events.append(
            Welcomed(
                frame.you,
                frame.name,
                frame.goal,
                frame.roster,
                frame.last,
                frame.resumed,
                self.limits,
                self.phrase,
            )
        )

    def _refused(self, frame: f.Refuse, *, authenticated: bool) -> None:
        # The host's words end up in error messages and statuses: one line, no control codes.
        message = one_line(frame.msg, 500)
        self._events.append(Refused(frame.code, message))
        if authenticated and frame.code == REMOVED:
            # Our seat was removed while we were away. Only an encrypted refusal says so: a
            # plaintext one could come from anyone on the path.
            self._end(REMOVED, removed_message(None), resumable=False)
            return
        self._end("refused", message, resumable=False)

    def _on_frame(self, frame: f.Frame) -> None:
        if type(frame) is f.Message:
            # Chat, the busiest frame by far (in MEMBER_ACCEPTS): checked first.
            self._on_message(frame)
            return
        if type(frame) in MEMBER_ACCEPTS_FILES and self.files.enabled:
            if isinstance(frame, f.Offer | f.Unoffer):
                self._expect_seq(frame.seq)
            self.files.on_frame(frame)
            return
        if type(frame) not in MEMBER_ACCEPTS:
            raise RemoteProtocolError(
                f"{frame.TYPE!r} frame is not allowed from the room", "unexpected"
            )
        if isinstance(frame, f.Event):
            if frame.kind == "history-truncated":
                if frame.seq != 0 or frame.first is None or frame.first <= self.last_seq + 1:
                    raise RemoteProtocolError("bad history-truncated notice", "malformed")
                self.last_seq = frame.first - 1
                self._events.append(RoomEvent(0, frame.kind, frame.ts, first_seq=frame.first))
                return
            self._expect_seq(frame.seq)
            self._events.append(
                RoomEvent(frame.seq, frame.kind, frame.ts, frame.member, frame.name, frame.summary)
            )
        elif isinstance(frame, f.Roster):
            self.roster = frame.members
            self._events.append(RosterChanged(frame.members))
        elif isinstance(frame, f.Ping):
            self._queue(f.Pong())
        elif isinstance(frame, f.Error):
            if frame.ref is not None and frame.ref in self._unacked:
                del self._unacked[frame.ref]
                self._events.append(
                    SayRejected(frame.ref, frame.code, one_line(frame.msg, 500), frame.retry)
                )
            elif self.files.on_error(frame):
                pass  # it refused one of our shares
            elif frame.ref is None:
                # A connection-level error (slow-consumer, bad-ack, ...): the host closes the
                # connection next; keep its reason so the drop is reported truthfully.
                self._host_error = f"{one_line(frame.code, 32)}: {one_line(frame.msg, 200)}"
        elif isinstance(frame, f.Close):
            reason = one_line(frame.reason, 64)
            if reason == REMOVED:
                message = removed_message(frame.summary)
            else:
                message = f"the host ended the connection: {reason}"
                if self._host_error is not None:  # e.g. flooding: the error said why
                    message += f" ({self._host_error})"
            self._end(reason, message, resumable=False, summary=frame.summary)
        # Pong: receiving it refreshed _last_rx; nothing else to do.

    def _on_message(self, frame: f.Message) -> None:
        seq = frame.seq
        if seq != self.last_seq + 1:
            self._expect_seq(seq)  # raises
        self.last_seq = seq
        events = self._events
        if frame.from_ == self.member_id and frame.ref in self._unacked:
            del self._unacked[frame.ref]
            events.append(_MAKE_ACCEPTED(frame.ref, seq))
        # ChatMessage(seq, frame.from_, frame.ts, frame.text), without its __init__ (`_make`).
        events.append(_MAKE_CHAT(seq, frame.from_, frame.ts, frame.text))

    def _expect_seq(self, seq: int) -> None:
        # Total order with no gap and no duplicate is an invariant the room owes us: a broken
        # one means a buggy or malicious host, and we stop rather than show a wrong transcript.
        if seq != self.last_seq + 1:
            raise RemoteProtocolError(
                f"out-of-order transcript entry (got seq {seq}, expected {self.last_seq + 1})",
                "bad-seq",
            )
        self.last_seq = seq
