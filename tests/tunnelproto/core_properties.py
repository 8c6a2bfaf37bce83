"""Property targets over the core, shared by tests/tunnelproto (small budget) and fuzz/ (large).

Each `check_*` function is the body of one property; the test modules wrap it with `@given` and
the settings of their budget. `RoomMachine` is the stateful model of a whole room.
"""

from __future__ import annotations

import inspect
from typing import Any

from harness import FakeHost, Net, Peer, craft_msg1, seal_as_member
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tunnelproto import (
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_KEEPALIVE_TIMEOUT,
    CLOSE_LEFT,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REFUSED,
    CLOSE_REPLACED,
    CLOSE_ROOM_CLOSED,
    CLOSE_SLOW_CONSUMER,
    MAX_FRAME,
    ConnectionEnded,
    Disconnect,
    Invite,
    JoinLink,
    LinkError,
    LocalProtocolError,
    MemberConnection,
    MemberState,
    Refused,
    RemoteProtocolError,
    RoomConfig,
    Send,
    TunnelEvent,
    Welcomed,
)
from tunnelproto import _link as _link_module
from tunnelproto._codec import Value, decode, encode

CLOSE_CODES = {
    CLOSE_NORMAL,
    CLOSE_ROOM_CLOSED,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_KEEPALIVE_TIMEOUT,
    CLOSE_SLOW_CONSUMER,
    CLOSE_REPLACED,
    CLOSE_LEFT,
    CLOSE_REFUSED,
}

# ---------------------------------------------------------------------------------- strategies

small_ints = st.integers(0, 12) | st.integers(0, 2**64 - 1) | st.integers(-(2**64), -1)
#: Includes one text just over MAX_TEXT_BYTES.
texts = (
    st.text(max_size=40)
    | st.sampled_from(["", " ", "\x00\n\u202e"])
    | st.builds(lambda: "x" * 32769)  # built, so the strategy's repr stays short
)
FRAME_TYPES = [
    "hello", "welcome", "refuse", "say", "message", "event", "ack", "roster", "ping", "pong",
    "ticket", "close", "error", "bogus",
]
EVENT_KINDS = [
    "joined", "left", "disconnected", "reconnected", "closed", "idle-closed", "history-truncated",
    "nope",
]
roster_entries = st.fixed_dictionaries(
    {},
    optional={
        "id": small_ints,
        "name": texts,
        "host": st.booleans(),
        "on": st.booleans() | small_ints,
    },
)
anything: st.SearchStrategy[Value] = st.recursive(
    st.none() | st.booleans() | small_ints | st.binary(max_size=40) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def field(typ: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually the right type, sometimes anything at all."""
    return typ | anything


#: Plaintext frames that are often nearly right: a known type with plausible fields.
frame_values: st.SearchStrategy[Value] = st.fixed_dictionaries(
    {"t": st.sampled_from(FRAME_TYPES) | texts},
    optional={
        "seq": field(small_ints),
        "ref": field(small_ints),
        "ts": field(small_ints),
        "from": field(small_ints),
        "text": field(texts),
        "kind": field(st.sampled_from(EVENT_KINDS)),
        "member": field(small_ints),
        "name": field(texts),
        "summary": field(texts),
        "first": field(small_ints),
        "code": field(texts),
        "msg": field(texts),
        "retry": field(small_ints),
        "reason": field(texts),
        "members": field(st.lists(roster_entries, max_size=3)),
        "roster": field(st.lists(roster_entries, max_size=3)),
        "v": field(small_ints),
        "sw": field(texts),
        "caps": field(st.lists(texts, max_size=3)),
        "last": field(small_ints),
        "goal": field(texts),
        "you": field(small_ints),
        "ticket": field(st.binary(min_size=31, max_size=33)),
        "resumed": field(st.booleans()),
        "limits": field(st.dictionaries(st.text(max_size=5), small_ints, max_size=3)),
    },
)


def _encode_or_raw(value: Value) -> bytes:
    try:
        return encode(value)
    except (TypeError, ValueError):
        return b"\xa0"


plaintexts = st.one_of(
    frame_values.map(_encode_or_raw),
    anything.map(_encode_or_raw),
    st.binary(max_size=80),
)


@st.composite
def mutations(draw: st.DrawFn, base: bytes) -> bytes:
    """A valid message with a few bytes changed, cut, or added."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 40))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


# ---------------------------------------------------------------------------------- garbage in

ROOM_STATES = ["handshake", "confirming", "open"]


def check_room_garbage(state: str, data: st.DataObject) -> None:
    """Anything fed to a Room connection, in any state, is reported as a Disconnect of that
    connection (or accepted); room.receive never raises; every other member keeps working."""
    net = Net()
    ana = net.join("ana")
    net.say(ana, "before")
    (invite,) = net.mint(1)
    link = net.link(invite)
    eve: Peer | None = None
    if state == "handshake":
        conn = net.open_raw()
        real = MemberConnection(link, "eve", net.now, rng=net.rng).data_to_send()[0]
        kind = data.draw(st.sampled_from(["raw", "mutated", "hello", "version"]), label="kind")
        if kind == "raw":
            payloads = [data.draw(st.binary(max_size=300), label="raw")]
        elif kind == "mutated":
            payloads = [data.draw(mutations(real), label="mutated")]
        elif kind == "hello":
            payloads = [craft_msg1(link, data.draw(plaintexts, label="hello"), rng=net.rng)]
        else:
            version = data.draw(st.integers(0, 255), label="version")
            payloads = [bytes([version]) + real[1:]]
        payloads += data.draw(st.lists(st.binary(max_size=100), max_size=2), label="more")
    else:
        eve = net.join("eve", invite, pump=False)
        if state == "confirming":
            # The room has answered eve's message 1 and waits for her confirming ack.
            (msg1,) = eve.mc.data_to_send()
            net.room.receive(eve.conn_id or 0, msg1, net.now)
            eve.hold_in = True
            net.pump()
            (msg2,) = eve.inbox
            eve.inbox.clear()
            eve.mc.receive_data(msg2, net.now)
            eve.mc.data_to_send()  # her real ack is never sent
        else:
            net.pump()
            assert eve.is_open
            net.say(eve, "eve was here")
        conn = eve.conn_id or 0
        count = data.draw(st.integers(1, 3), label="count")
        payloads = []
        for _ in range(count):
            kind = data.draw(st.sampled_from(["raw", "sealed", "mutated"]), label="kind")
            if kind == "raw":
                payloads.append(data.draw(st.binary(max_size=200), label="raw"))
            elif kind == "sealed":
                payloads.append(seal_as_member(eve, data.draw(plaintexts, label="plaintext")))
            else:
                payloads.append(data.draw(mutations(seal_as_member(eve, b"\xa1atdping")), label="m"))
    mark = len(net.room_out)
    for payload in payloads:
        net.room.receive(conn, payload, net.now)  # must not raise, whatever the payload
        net.pump()
    for item in net.room_out[mark:]:
        assert isinstance(item, Send | Disconnect)
        if isinstance(item, Send):
            assert len(item.data) <= MAX_FRAME
        else:
            assert item.code in CLOSE_CODES
    # Nobody was seated by garbage.
    seated = {m.id for m in net.room.roster()}
    assert seated <= {1, ana.member_id, eve.member_id if eve is not None and state == "open" else -1}
    # The others keep working.
    net.tick(1.0)
    net.host_say("after the garbage")
    ref = net.say(ana, "ana still talks")
    assert ana.is_open and ana.disconnects == []
    assert ana.texts[-2:] == ["after the garbage", "ana still talks"]
    assert ref in ana.accepted
    net.check([ana])
    # Time passing cleans up whatever the garbage left half-open.
    net.tick(61.0)
    assert ana.is_open
    net.check([ana])


MEMBER_STATES = ["handshake", "welcome", "open"]
LINK = JoinLink("https://h.example", "abcdefghijklmnop", bytes(range(32)))


def _feed_member(mc: MemberConnection, payloads: list[bytes]) -> list[TunnelEvent]:
    failed = False
    for payload in payloads:
        try:
            mc.receive_data(payload, 1000.0)
        except RemoteProtocolError:
            failed = True
            assert mc.state is MemberState.ERROR
        # Every other call stays safe whatever happened.
        mc.data_to_send()
        mc.next_deadline()
    mc.handle_timer(1000.0)
    mc.handle_timer(2000.0)
    events = []
    while (ev := mc.next_event()) is not None:
        assert isinstance(ev, TunnelEvent)
        events.append(ev)
    ends = [ev for ev in events if isinstance(ev, ConnectionEnded)]
    assert len(ends) <= 1
    if failed:
        assert ends
    return events


def check_member_garbage(state: str, data: st.DataObject) -> None:
    """Anything fed to a MemberConnection raises RemoteProtocolError or nothing."""
    mc = MemberConnection(LINK, "ana", 1000.0)
    (msg1,) = mc.data_to_send()
    host = FakeHost(LINK)
    payloads: list[bytes] = []
    if state == "handshake":
        kind = data.draw(st.sampled_from(["raw", "plain", "noise"]), label="kind")
        if kind == "raw":
            payloads.append(data.draw(st.binary(max_size=200), label="raw"))
        elif kind == "plain":
            payloads.append(b"\x01" + data.draw(plaintexts, label="plain"))
        else:
            payloads.append(host.answer(msg1, data.draw(plaintexts, label="payload")))
    else:
        welcome = host.welcome(msg1)
        if state == "welcome":
            payloads.append(data.draw(mutations(welcome), label="mutated welcome"))
        else:
            mc.receive_data(welcome, 1000.0)
            assert mc.state is MemberState.OPEN
            mc.say("hello")
            mc.data_to_send()
            for _ in range(data.draw(st.integers(1, 4), label="count")):
                kind = data.draw(st.sampled_from(["raw", "sealed", "mutated"]), label="kind")
                if kind == "raw":
                    payloads.append(data.draw(st.binary(max_size=200), label="raw"))
                elif kind == "sealed":
                    payloads.append(host.seal(data.draw(plaintexts, label="plaintext")))
                else:
                    sealed = host.seal(b"\xa1atdping")
                    payloads.append(data.draw(mutations(sealed), label="mutated"))
    _feed_member(mc, payloads)


def check_codec(data: bytes) -> None:
    try:
        value = decode(data)
    except RemoteProtocolError:
        return
    assert encode(value) == data


_LINK_SOURCE = inspect.getsource(_link_module)


def check_link_parse(text: str) -> None:
    try:
        link = JoinLink.parse(text)
    except LinkError as exc:
        secret = text.strip().strip("<>\"'").split("#", 1)[1] if "#" in text else ""
        # Hypothesis borrows string constants from the code under test, so a "secret" can be
        # a piece of an error message ("malforme"); only text the parser does not already
        # contain could have come from the input.
        if len(secret) >= 8 and secret not in _LINK_SOURCE:
            assert secret not in str(exc), "a parse error echoed the secret"
        return
    assert len(link.secret) == 32
    assert JoinLink.parse(str(link)) == link
    assert link.websocket_url.startswith(("ws://", "wss://"))
    assert "#" not in link.websocket_url


link_texts = st.text(max_size=120) | st.builds(
    lambda scheme, host, path, tid, secret: f"{scheme}://{host}{path}/t/{tid}#{secret}",
    st.sampled_from(["https", "http", "wss", "ws", "ftp", "HTTPS", ""]),
    st.text(max_size=20) | st.sampled_from(["h.example", "[::1]:80", "a:99999", "u@h", "h:0"]),
    st.text(max_size=10) | st.just(""),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789_-/", max_size=70),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=!", max_size=50)
    | st.just("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"),
)


# ---------------------------------------------------------------------------------- stateful


MACHINE_CONFIG = RoomConfig(
    capacity=5,
    invite_ttl=300.0,
    grace=120.0,
    rate_burst=4,
    rate_per_sec=1.0,
    window=4096,
)
NAMES = ["ana", "bob", "ana", "ANA", "x\n\u202ey", "z" * 70]
DURATIONS = [0.5, 2.0, 5.0, 21.0, 31.0, 61.0, 125.0]
#: Long waits (past invite expiry, the idle timeout) end most of the story, so they are rarer.
LONG_DURATIONS = [301.0, 1801.0]


class RoomMachine(RuleBasedStateMachine):
    """A room with up to four members who join (with fresh, reused or expired invites), talk,
    leave, drop, resume, and a clock that walks or jumps forward. After every step every
    member's view of the transcript must be the room's: same order, no gap, no duplicate."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net(config=MACHINE_CONFIG, seed=b"machine")
        self.invites: list[Invite] = []
        self.admitted: dict[int, list[Peer]] = {}
        self.expired_tries: list[Peer] = []
        self.captured: list[tuple[bytes, ...]] = []
        self.counter = 0

    # -------------------------------------------------------------- helpers

    def _text(self) -> str:
        self.counter += 1
        return f"msg {self.counter}"

    def _open_peers(self) -> list[Peer]:
        return [p for p in self.net.peers if p.is_open]

    def _resumable(self) -> list[Peer]:
        out = []
        for p in self.net.peers:
            end = p.last_end()
            if not p.is_open and end is not None and end.resumable and p.mc.resume_state():
                out.append(p)
        return out

    @staticmethod
    def _pick(items: list[Peer], i: int) -> Peer:
        return items[i % len(items)]

    # -------------------------------------------------------------- rules

    @rule(n=st.integers(1, 3))
    def mint(self, n: int) -> None:
        room = self.net.room
        if room.closed or n > room.free_seats(self.net.now):
            try:
                self.net.mint(n)
            except LocalProtocolError:
                return
            raise AssertionError("minted past capacity or after close")
        self.invites += self.net.mint(n)

    @initialize(n=st.integers(0, 3))
    def first_members(self, n: int) -> None:
        for k in range(n):
            self.join(None, NAMES[k], capture=True)

    @rule(i=st.none() | st.integers(0, 50), name=st.sampled_from(NAMES), capture=st.booleans())
    def join(self, i: int | None, name: str, capture: bool) -> None:
        """A member dials in with a fresh invite (i None), or with any invite minted so far:
        used, expired or still good."""
        if i is None or not self.invites:
            room = self.net.room
            if room.closed or room.free_seats(self.net.now) < 1:
                return
            self.invites += self.net.mint(1)
            i = len(self.invites) - 1
        invite = self.invites[i % len(self.invites)]
        used = bool(self.admitted.get(id(invite)))
        expired = self.net.now >= invite.expires_at
        closed = self.net.room.closed
        peer = self.net.join(name, invite)
        if capture and peer.sent:
            self.captured.append(tuple(peer.sent[:2]))
        welcomed = [ev for ev in peer.events if isinstance(ev, Welcomed)]
        refused = [ev for ev in peer.events if isinstance(ev, Refused)]
        if welcomed:
            self.admitted.setdefault(id(invite), []).append(peer)
        if closed:
            assert peer.refused_at_door
        elif used:
            assert not welcomed and [r.code for r in refused] in (["used"], ["unknown-invite"])
        elif expired:
            self.expired_tries.append(peer)
            assert not welcomed and [r.code for r in refused] in (["expired"], ["unknown-invite"])
        else:
            assert welcomed and not refused, peer.events

    @rule(name=st.sampled_from(NAMES))
    def join_fresh(self, name: str) -> None:
        """Joining with a fresh invite is the common case; it gets its own rule so that rooms
        have members most of the time."""
        self.join(None, name, capture=False)

    @precondition(lambda self: self.captured)
    @rule(i=st.integers(0, 50), with_ack=st.booleans())
    def replay_join(self, i: int, with_ack: bool) -> None:
        """Someone on the path replays a recorded join on a new connection."""
        if self.net.room.closed:
            return
        recorded = self.captured[i % len(self.captured)]
        before = self.net.room.roster()
        conn = self.net.room.open_connection(self.net.now)
        if conn is None:
            return
        for data in recorded[: 2 if with_ack else 1]:
            self.net.feed_raw(conn, data)
        self.net.room.connection_lost(conn, self.net.now)
        self.net.pump()
        assert self.net.room.roster() == before

    @precondition(lambda self: any(p.is_open for p in self.net.peers))
    @rule(i=st.integers(0, 50), burst=st.integers(1, 6))
    def say(self, i: int, burst: int) -> None:
        peer = self._pick(self._open_peers(), i)
        for _ in range(burst):
            self.net.say(peer, self._text(), pump=False)
        self.net.pump()

    @rule()
    def host_say(self) -> None:
        if self.net.room.closed:
            try:
                self.net.host_say(self._text())
            except LocalProtocolError:
                return
            raise AssertionError("the host spoke in a closed room")
        self.net.host_say(self._text())

    @precondition(lambda self: any(p.is_open for p in self.net.peers))
    @rule(i=st.integers(0, 50), gate=st.integers(0, 2))
    def leave(self, i: int, gate: int) -> None:
        if gate != 0:
            return  # leaving for good empties the room: only now and then
        peer = self._pick(self._open_peers(), i)
        member_id = peer.member_id
        self.net.leave(peer)
        assert member_id is not None and self.net.room.member_name(member_id) is None

    @precondition(lambda self: any(p.is_open for p in self.net.peers))
    @rule(i=st.integers(0, 50), room_notices=st.booleans())
    def drop(self, i: int, room_notices: bool) -> None:
        self.net.drop(self._pick(self._open_peers(), i), room_notices=room_notices)

    @precondition(lambda self: any(p.is_open for p in self.net.peers))
    @rule(i=st.integers(0, 50), reached_room=st.booleans())
    def say_then_drop(self, i: int, reached_room: bool) -> None:
        """A say right before the connection dies: lost on the way, or stamped with the
        answer lost on the way back."""
        peer = self._pick(self._open_peers(), i)
        self.net.say(peer, self._text(), pump=False)
        if reached_room:
            peer.hold_in = True
            self.net.pump()
        self.net.drop(peer)

    @precondition(lambda self: self._resumable())
    @rule(i=st.integers(0, 50))
    def resume(self, i: int) -> None:
        self._resume(self._pick(self._resumable(), i))

    def _resume(self, peer: Peer) -> None:
        member_id = peer.member_id
        assert member_id is not None
        seat_held = self.net.room.member_name(member_id) is not None
        closed = self.net.room.closed
        self.net.resume(peer)
        if closed:
            assert peer.refused_at_door
        elif seat_held:
            first = peer.current_events()[0]
            assert isinstance(first, Welcomed) and first.resumed, peer.current_events()
            assert first.member_id == member_id
        else:
            assert not peer.is_open
            assert [type(ev) for ev in peer.current_events()][:1] == [Refused]

    @precondition(lambda self: self._resumable())
    @rule(
        i=st.integers(0, 50),
        losses=st.lists(st.sampled_from(["welcome", "ack"]), min_size=1, max_size=6),
        finish=st.booleans(),
    )
    def resume_interrupted(self, i: int, losses: list[str], finish: bool) -> None:
        """Resumes whose connections die mid-handshake, one after another: the welcome (with
        its new ticket) never reaches the member, or her confirming ack never reaches the room.
        Whatever ticket she ends up holding must still take her seat back."""
        peer = self._pick(self._resumable(), i)
        for lose in losses:
            if self.net.room.closed:
                return
            self.net.resume(peer, pump=False)
            if lose == "welcome":
                peer.hold_in = True
            else:
                self.net.send_now(peer)
                peer.hold_out = True
            self.net.pump()
            if lose == "ack" and self.net.room.member_name(peer.member_id or 0) is not None:
                first = peer.current_events()[0]
                assert isinstance(first, Welcomed) and first.resumed, peer.current_events()
            self.net.drop(peer)
        if finish and peer in self._resumable():
            self._resume(peer)

    @rule(dt=st.sampled_from(DURATIONS))
    def tick(self, dt: float) -> None:
        self.net.tick(dt)

    @rule(dt=st.sampled_from(DURATIONS))
    def jump(self, dt: float) -> None:
        self.net.jump(dt)

    @rule(dt=st.sampled_from(LONG_DURATIONS), gate=st.integers(0, 3), sleep=st.booleans())
    def wait_long(self, dt: float, gate: int, sleep: bool) -> None:
        if gate == 0:
            if sleep:
                self.net.jump(dt)
            else:
                self.net.tick(dt)

    @rule(summary=st.none() | st.text(max_size=20), gate=st.integers(0, 7))
    def close(self, summary: str | None, gate: int) -> None:
        if gate != 0:
            return  # closing ends the story: only now and then
        was_closed = self.net.room.closed
        open_before = self._open_peers()
        self.net.close(summary)
        if not was_closed:
            for peer in open_before:
                end = peer.last_end()
                assert end is not None and end.reason == "closed" and end.summary == summary

    # -------------------------------------------------------------- invariants

    @invariant()
    def transcripts_agree(self) -> None:
        self.net.check()

    @invariant()
    def invites_admit_at_most_one_and_expired_ones_none(self) -> None:
        for peers in self.admitted.values():
            assert len(peers) <= 1
        for peer in self.expired_tries:
            assert not peer.welcomes()

    @invariant()
    def open_members_are_settled_and_see_the_roster(self) -> None:
        room = self.net.room
        for peer in self._open_peers():
            assert not room.closed
            assert peer.mc.roster == room.roster()
            # Every say has been answered: stamped (once) or refused.
            assert set(peer.said) == set(peer.accepted) | set(peer.rejected)
            assert peer.member_id is not None
            assert room.member_name(peer.member_id) == peer.welcomes()[0].name
        seats = {m.id for m in room.roster()}
        assert len(seats) <= MACHINE_CONFIG.capacity
