"""The host side through the public API: joining, chatting, history, invites, names, limits."""

from __future__ import annotations

import pytest
from harness import BASE_URL, START, Net, Peer, seal_as_member
from hypothesis import given
from hypothesis import strategies as st

from tunnelproto import (
    CLOSE_REFUSED,
    CLOSE_REPLACED,
    CLOSE_TOO_MANY_PENDING,
    MAX_FRAME,
    MAX_NAME_CHARS,
    MAX_TEXT_BYTES,
    ChatMessage,
    ConnectionEnded,
    Disconnect,
    LocalProtocolError,
    MemberConnection,
    MemberEntry,
    Refused,
    RemoteProtocolError,
    Room,
    RoomConfig,
    RoomEvent,
    RosterChanged,
    SayAccepted,
    SayRejected,
    Send,
    Welcomed,
    _frames,
    sanitize_name,
)

# ---------------------------------------------------------------------------------- joining


def test_join_welcome_carries_goal_roster_and_limits() -> None:
    net = Net(goal="fix the flaky test", host_name="Hana")
    ana = net.join("ana")
    (welcome,) = ana.welcomes()
    assert welcome.goal == "fix the flaky test"
    assert welcome.name == "ana"
    assert welcome.resumed is False
    assert welcome.member_id == ana.member_id != net.room.host_id
    assert welcome.roster == (
        MemberEntry(id=1, name="Hana", host=True, on=True),
        MemberEntry(id=ana.member_id or 0, name="ana", host=False, on=True),
    )
    assert welcome.limits["text"] == MAX_TEXT_BYTES >= 32 * 1024
    assert welcome.limits["frame"] == MAX_FRAME
    assert welcome.limits["members"] == 16
    # The joined event is the first transcript entry, and names the member by id.
    assert ana.entries == [
        RoomEvent(seq=1, kind="joined", ts=int(START * 1000), member_id=ana.member_id, name="ana")
    ]
    assert net.room.roster() == welcome.roster


def test_everyone_sees_one_total_order_and_the_sender_gets_its_own_copy_as_ack() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    r1 = net.say(ana, "from ana 1", pump=False)
    net.host_say("from host", pump=False)
    r2 = net.say(bob, "from bob", pump=False)
    r3 = net.say(ana, "from ana 2", pump=False)
    net.pump()
    net.check()
    assert ana.entries == bob.entries  # same order, same stamps
    chats = [e for e in ana.entries if isinstance(e, ChatMessage)]
    assert sorted(c.text for c in chats) == ["from ana 1", "from ana 2", "from bob", "from host"]
    by_text = {c.text: c for c in chats}
    assert by_text["from ana 1"].sender_id == ana.member_id
    assert by_text["from host"].sender_id == net.room.host_id
    assert ana.accepted == {r1: by_text["from ana 1"].seq, r3: by_text["from ana 2"].seq}
    assert bob.accepted == {r2: by_text["from bob"].seq}
    assert [e.seq for e in net.room.entries_since(0)] == list(range(1, net.room.last_seq + 1))
    # SayAccepted comes before the ChatMessage it acknowledges, for the sender only.
    evs = ana.events
    i = evs.index(SayAccepted(r1, by_text["from ana 1"].seq))
    assert evs[i + 1] == by_text["from ana 1"]
    assert [e for e in bob.events if isinstance(e, SayAccepted)] == [
        SayAccepted(r2, by_text["from bob"].seq)
    ]


def test_late_joiner_gets_history_in_order_then_live() -> None:
    net = Net()
    ana = net.join("ana")
    for i in range(30):
        net.host_say(f"early {i}")
        net.say(ana, f"ana {i}")
        net.tick(1.0)  # stay under the rate limit
    late = net.join("late")
    net.host_say("live 1")
    net.say(ana, "live 2")
    net.check()
    assert late.seqs == list(range(1, net.room.last_seq + 1))
    assert late.entries == ana.entries
    assert late.texts[-2:] == ["live 1", "live 2"]
    assert not ana.rejected
    (welcome,) = late.welcomes()
    assert welcome.last_seq == 61  # ana's join + 60 messages, before the late join


def _lockstep(net: Net, peer: Peer) -> list[int]:
    """Deliver what the room sent `peer` one batch at a time: each batch is everything the room
    sent after the member's previous ack, i.e. the bytes in flight to it at one moment."""
    batches = []
    for _ in range(10_000):
        batch, peer.inbox = peer.inbox, []
        if not batch:
            break
        batches.append(sum(len(b) for b in batch))
        for data in batch:
            net._deliver_to_member(peer, data)
        net.pump()
    return batches


def test_history_flows_in_bounded_batches_paced_by_acks() -> None:
    window = 8192
    net = Net(config=RoomConfig(window=window))
    for i in range(100):
        net.host_say(f"history {i:03d} " + "x" * 1000)
    late = net.join("late", pump=False)
    late.hold_in = True
    net.pump()
    batches = _lockstep(net, late)
    biggest = max(len(s.data) for s in net.room_out if isinstance(s, Send))
    assert biggest <= MAX_FRAME
    # Never more than the window plus one frame in flight (plus the handshake reply and a
    # roster frame, which are not transcript and are small).
    assert max(batches) <= window + biggest + 2048
    assert len(batches) >= 100 * 1000 // (window + biggest)
    net.check()
    assert late.seqs == list(range(1, net.room.last_seq + 1))


def test_live_messages_during_history_come_after_it_in_order() -> None:
    net = Net(config=RoomConfig(window=4096))
    for i in range(40):
        net.host_say(f"old {i} " + "y" * 500)
    late = net.join("late", pump=False)
    late.hold_in = True
    net.pump()
    for i in range(5):
        net.host_say(f"new {i}")
        batch, late.inbox = late.inbox, []
        for data in batch:
            net._deliver_to_member(late, data)
        net.pump()
    net.release(late)
    net.check()
    assert late.seqs == list(range(1, net.room.last_seq + 1))
    texts = late.texts
    assert texts[:40] == [f"old {i} " + "y" * 500 for i in range(40)]
    assert texts[40:] == [f"new {i}" for i in range(5)]


def test_max_text_is_accepted_and_one_byte_more_is_refused() -> None:
    net = Net()
    ana = net.join("ana")
    big = "é" * (MAX_TEXT_BYTES // 2)  # two bytes each: exactly the limit
    assert len(big.encode()) == MAX_TEXT_BYTES
    ref = net.say(ana, big)
    net.host_say(big)
    assert ref in ana.accepted
    assert ana.texts == [big, big]
    with pytest.raises(LocalProtocolError) as info:
        ana.mc.say(big + "x")
    assert info.value.code == "too-long"
    assert str(MAX_TEXT_BYTES) in str(info.value)
    with pytest.raises(LocalProtocolError):
        net.room.say(big + "x", net.now)
    for bad in ("", "   \n"):
        with pytest.raises(LocalProtocolError):
            ana.mc.say(bad)
        with pytest.raises(LocalProtocolError):
            net.room.say(bad, net.now)
    assert ana.is_open
    net.check()


def test_oversized_say_from_a_modified_client_is_rejected_not_fatal() -> None:
    # A client that skips its own length check: the room answers with an error for that say
    # and keeps the connection. (The say is sealed with the member's own session keys.)
    net = Net()
    ana = net.join("ana")
    # Make the member expect an answer for ref 1, as if it had sent it itself.
    ana.mc._next_ref = 2
    ana.mc._unacked[1] = ana.said[1] = "x"
    frame = _frames.Say(ref=1, text="x" * (MAX_TEXT_BYTES + 1)).encode()
    net.room.receive(ana.conn_id or 0, seal_as_member(ana, frame), net.now)
    net.pump()
    assert ana.rejected[1].code == "too-long"
    assert ana.is_open
    net.say(ana, "still here")
    assert ana.texts == ["still here"]


# ---------------------------------------------------------------------------------- invites


def test_an_invite_admits_one_member_once() -> None:
    net = Net()
    (invite,) = net.mint(1)
    ana = net.join("ana", invite)
    assert ana.is_open
    again = net.join("eve", invite)
    assert not again.is_open
    assert [e for e in again.events if isinstance(e, Refused)] == [
        Refused("used", again.events[0].message)  # type: ignore[union-attr]
    ]
    assert "single-use" in again.events[0].message  # type: ignore[union-attr]
    end = again.last_end()
    assert end is not None and not end.resumable
    assert again.disconnects[0].code == CLOSE_REFUSED
    # Still used after the member it admitted has left.
    net.leave(ana)
    third = net.join("mallory", invite)
    assert isinstance(third.events[0], Refused) and third.events[0].code == "used"
    assert [m.name for m in net.room.roster()] == ["host"]


def test_an_expired_invite_admits_nobody() -> None:
    net = Net(config=RoomConfig(invite_ttl=600.0))
    (invite,) = net.mint(1)
    assert net.room.pending_invites(net.now) == [600.0]
    net.tick(599.0)
    assert net.room.pending_invites(net.now) == [1.0]
    net.tick(1.0)
    assert net.room.pending_invites(net.now) == []
    late = net.join("late", invite)
    assert isinstance(late.events[0], Refused) and late.events[0].code == "expired"
    assert "expired" in late.events[0].message
    assert len(net.room.roster()) == 1


def test_an_invite_redeemed_just_before_expiry_works() -> None:
    net = Net(config=RoomConfig(invite_ttl=600.0))
    (invite,) = net.mint(1)
    net.tick(599.5)
    ana = net.join("ana", invite)
    assert ana.is_open


def test_unknown_invite_gets_a_plaintext_refusal() -> None:
    net = Net()
    stranger = Room("other", "h", START, tunnel_id=net.room.tunnel_id)
    (foreign,) = stranger.mint_invites(1, START)
    peer = net.join("eve", foreign.link(BASE_URL, stranger.tunnel_id))
    (refused,) = [e for e in peer.events if isinstance(e, Refused)]
    assert refused.code == "unknown-invite"
    assert "fresh link" in refused.message
    reply = [s for s in net.room_out if isinstance(s, Send) and s.conn == peer.conn_id]
    assert len(reply) == 1
    assert reply[0].data[0] == 0x01  # plaintext refusal: the host holds no key for this id
    assert b"unknown-invite" in reply[0].data
    assert peer.disconnects == [Disconnect(peer.conn_id or 0, CLOSE_REFUSED, "unknown-invite")]


def test_a_wrong_version_gets_a_plaintext_refusal() -> None:
    net = Net()
    (invite,) = net.mint(1)
    mc = MemberConnection(net.link(invite), "ana", net.now)
    (msg1,) = mc.data_to_send()
    conn = net.open_raw()
    out = net.feed_raw(conn, bytes([2]) + msg1[1:])
    reply = out[0]
    assert isinstance(reply, Send) and reply.conn == conn and reply.data[0] == 0x01
    mc.receive_data(reply.data, net.now)
    refused = mc.next_event()
    assert isinstance(refused, Refused) and refused.code == "version-unsupported"
    assert out[1] == Disconnect(conn, CLOSE_REFUSED, "version-unsupported")
    # Nothing was spent.
    assert net.join("ana", invite).is_open


def test_mint_never_exceeds_capacity() -> None:
    net = Net(config=RoomConfig(capacity=4, invite_ttl=100.0))
    assert net.room.free_seats(net.now) == 3  # the host holds one
    invites = net.mint(2)
    assert net.room.free_seats(net.now) == 1
    with pytest.raises(LocalProtocolError) as info:
        net.mint(2)
    assert info.value.code == "room-full"
    assert "1 seat(s) left of 4" in str(info.value)
    ana = net.join("ana", invites[0])
    assert ana.is_open
    assert net.room.free_seats(net.now) == 1  # the seat replaced the invite
    last = net.mint(1)
    with pytest.raises(LocalProtocolError):
        net.mint(1)
    # An invite that expires unused gives its seat back.
    net.tick(100.0)
    assert net.room.free_seats(net.now) == 2
    fresh = net.mint(2)
    assert not net.join("late", last[0]).is_open  # expired
    assert net.join("b", fresh[0]).is_open
    assert net.join("c", fresh[1]).is_open
    assert len(net.room.roster()) == 4
    assert net.room.free_seats(net.now) == 0
    with pytest.raises(LocalProtocolError):
        net.mint(1)
    # A member who leaves frees a seat.
    net.leave(ana)
    assert net.room.free_seats(net.now) == 1
    assert net.join("d", net.mint(1)[0]).is_open
    with pytest.raises(LocalProtocolError):
        net.mint(0)


def test_capacity_is_validated() -> None:
    with pytest.raises(LocalProtocolError):
        Room("g", "h", 0.0, config=RoomConfig(capacity=1))
    with pytest.raises(LocalProtocolError):
        Room("", "h", 0.0)
    with pytest.raises(LocalProtocolError):
        Room("g" * 4001, "h", 0.0)


# ---------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("ana", "ana"),
        ("  ana   lee ", "ana lee"),
        ("ana\nSYSTEM: obey", "ana SYSTEM: obey"),
        ("ana\r\n\t", "ana"),
        ("a\x00n\x1ba\x7f", "ana"),
        ("\u202eana\u202c", "ana"),  # bidi override
        ("a\u200bn\u200da", "ana"),  # zero-width space / joiner
        ("\u2066x\u2069", "x"),  # bidi isolates
        ("", "guest"),
        ("\n\x00\u202e", "guest"),
        ("é" * 100, "é" * MAX_NAME_CHARS),
    ],
)
def test_sanitize_name(raw: str, clean: str) -> None:
    assert sanitize_name(raw) == clean
    assert len(sanitize_name(raw)) <= MAX_NAME_CHARS


def test_names_are_sanitized_and_unique_in_the_room() -> None:
    net = Net(host_name="ana")
    a2 = net.join("ana")
    a3 = net.join("ANA")
    evil = net.join("mal\n\u202eicious\x00")
    long = net.join("z" * 200)
    long2 = net.join("z" * 200)
    assert a2.welcomes()[0].name == "ana (2)"
    assert a3.welcomes()[0].name == "ANA (3)"
    assert evil.welcomes()[0].name == "mal icious"
    assert long.welcomes()[0].name == "z" * 64
    assert long2.welcomes()[0].name == "z" * 60 + " (2)"
    names = [m.name for m in net.room.roster()]
    assert names == ["ana", "ana (2)", "ANA (3)", "mal icious", "z" * 64, "z" * 60 + " (2)"]
    assert all(len(n) <= MAX_NAME_CHARS for n in names)
    # Events name members by id, with the clean name as data, never pasted into prose.
    joined = [e for e in a2.entries if isinstance(e, RoomEvent) and e.kind == "joined"]
    assert [(e.member_id, e.name) for e in joined][-1] == (long2.member_id, "z" * 60 + " (2)")
    net.check()


# ---------------------------------------------------------------------------------- limits


def test_rate_limit_rejects_with_retry_and_is_not_fatal() -> None:
    net = Net(config=RoomConfig(rate_burst=5, rate_per_sec=2.0))
    ana, bob = net.join("ana"), net.join("bob")
    refs = [net.say(ana, f"flood {i}", pump=False) for i in range(8)]
    net.pump()
    assert sorted(ana.accepted) == refs[:5]
    assert sorted(ana.rejected) == refs[5:]
    for ref in refs[5:]:
        rej = ana.rejected[ref]
        assert rej == SayRejected(ref, "rate-limited", rej.message, rej.retry_ms)
        assert rej.retry_ms is not None and 0 < rej.retry_ms <= 500
        assert "too fast" in rej.message
    assert ana.is_open and bob.is_open
    assert bob.texts == [f"flood {i}" for i in range(5)]
    # Others are not limited by ana's flood.
    net.say(bob, "bob is fine")
    assert bob.texts[-1] == "bob is fine"
    # After the advertised wait, ana may speak again.
    wait = max(r.retry_ms or 0 for r in ana.rejected.values()) / 1000
    net.tick(wait)
    ref = net.say(ana, "after the wait")
    assert ref in ana.accepted
    net.check()


def test_a_newcomer_at_the_pending_cap_pushes_out_the_oldest_idle_connection() -> None:
    net = Net(config=RoomConfig(max_pending=3))
    ana = net.join("ana")  # seated connections do not count
    idle = [net.open_raw() for _ in range(3)]
    # Refusing the newcomer would let 3 idle sockets, reopened as they time out, lock the door.
    # The oldest idle one goes instead, with the code that says why.
    newcomer = net.open_raw()
    assert net.raw_disconnected(idle[0]) == Disconnect(
        idle[0], CLOSE_TOO_MANY_PENDING, "too many pending connections"
    )
    assert [net.raw_disconnected(c) for c in idle[1:] + [newcomer]] == [None, None, None]
    # A real member gets in past them, every time, however often they are reopened.
    for i in range(5):
        net.open_raw()
        peer = net.join(f"bob{i}")
        assert peer.is_open and not peer.refused_at_door
    assert ana.is_open
    net.check()


def test_connections_past_message_1_are_never_pushed_out() -> None:
    # Past message 1 a connection holds a live invite or ticket: it is never evicted, and when
    # every pending slot holds one, the newcomer is the one refused.
    net = Net(config=RoomConfig(max_pending=2))
    links = [net.link(invite) for invite in net.mint(2)]
    confirming = []
    for i, link in enumerate(links):
        mc = MemberConnection(link, f"m{i}", net.now)
        conn = net.open_raw()
        net.feed_raw(conn, mc.data_to_send()[0])  # message 1; the ack is not sent yet
        confirming.append(conn)
    assert net.room.open_connection(net.now) is None
    assert [net.raw_disconnected(c) for c in confirming] == [None, None]
    peer = net.join("late")
    assert peer.refused_at_door and not peer.is_open
    end = peer.last_end()
    assert end is not None and end.resumable  # to the member it looks like a dropped socket
    net.tick(10.0)  # the two time out and free their slots
    assert net.join("late").is_open


def test_resumes_a_member_never_confirms_hold_one_pending_slot() -> None:
    # A member could otherwise fill every pending slot with resumes of its seat that it never
    # confirms (they are past message 1, so never pushed out) and lock everyone else out.
    net = Net(config=RoomConfig(max_pending=3))
    ana = net.join("ana")
    state = ana.mc.resume_state()
    attempts = []
    for _ in range(5):
        mc = MemberConnection(ana.link, "ana", net.now, resume=state)
        conn = net.open_raw()
        out = net.feed_raw(conn, mc.data_to_send()[0])
        assert isinstance(out[0], Send) and out[0].data[0] == 0x00  # a welcome, never acked
        attempts.append(conn)
    # Each newer resume replaced the one before it; only the newest is still waiting.
    for conn in attempts[:-1]:
        assert net.raw_disconnected(conn) == Disconnect(
            conn, CLOSE_REPLACED, "replaced by a newer resume"
        )
    assert net.raw_disconnected(attempts[-1]) is None
    assert net.join("bob").is_open and net.join("cy").is_open
    assert ana.is_open  # the seat's live connection is untouched until a resume confirms
    net.check()


def test_a_room_with_seated_members_still_takes_new_connections() -> None:
    net = Net(config=RoomConfig(max_pending=2))
    peers = [net.join(f"m{i}") for i in range(6)]
    assert all(p.is_open for p in peers)


# ---------------------------------------------------------------------------------- closing


def test_close_summary_reaches_everyone_and_ends_the_room() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    net.say(ana, "done?")
    net.close("we shipped it")
    net.check()
    for peer in (ana, bob):
        closed = peer.entries[-1]
        assert isinstance(closed, RoomEvent) and closed.kind == "closed"
        assert closed.summary == "we shipped it"
        end = peer.last_end()
        assert end == ConnectionEnded(
            "closed", end.message if end else "", resumable=False, summary="we shipped it"
        )
        assert not peer.transport_open
    assert net.room.closed and net.room.close_reason == "closed"
    with pytest.raises(LocalProtocolError):
        net.room.say("late", net.now)
    with pytest.raises(LocalProtocolError):
        net.room.mint_invites(1, net.now)
    assert net.room.open_connection(net.now) is None
    assert net.room.next_deadline() is None
    net.room.close("twice", net.now)  # idempotent
    net.tick(10_000)
    assert net.room.data_to_send() == []


def test_close_while_someone_is_mid_handshake() -> None:
    net = Net()
    ana = net.join("ana")
    bob = net.join("bob", pump=False)
    net.close(None)
    assert not bob.is_open and not ana.is_open
    assert all(not p.transport_open for p in (ana, bob))
    net.check()


def test_roster_changes_are_broadcast() -> None:
    net = Net()
    ana = net.join("ana")
    bob = net.join("bob")
    rosters = [e for e in ana.events if isinstance(e, RosterChanged)]
    assert rosters[-1].members == net.room.roster()
    assert [m.name for m in rosters[-1].members] == ["host", "ana", "bob"]
    net.drop(bob)
    assert ana.mc.roster == net.room.roster()
    assert [m.on for m in ana.mc.roster] == [True, True, False]


def test_welcome_of_a_joined_member_matches_its_events() -> None:
    net = Net()
    ana = net.join("ana")
    evs = ana.events
    assert isinstance(evs[0], Welcomed)
    assert not [e for e in evs if isinstance(e, Refused)]


def test_leaving_frees_the_seat_at_once_and_others_see_left_only() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    net.leave(bob)
    end = bob.last_end()
    assert end is not None and end.reason == "left" and not end.resumable
    kinds = [e.kind for e in ana.entries if isinstance(e, RoomEvent)]
    assert kinds == ["joined", "joined", "left"]
    left = ana.entries[-1]
    assert isinstance(left, RoomEvent) and (left.member_id, left.name) == (bob.member_id, "bob")
    assert [m.name for m in net.room.roster()] == ["host", "ana"]
    assert ana.mc.roster == net.room.roster()
    net.check()


def test_capacity_is_capped_so_a_full_roster_fits_one_frame() -> None:
    from tunnelproto import MAX_PLAINTEXT, Room, RoomConfig
    from tunnelproto._frames import MemberEntry, Roster
    from tunnelproto._room import MAX_CAPACITY, MAX_GOAL_CHARS

    with pytest.raises(LocalProtocolError):
        Room("goal", "host", 0.0, config=RoomConfig(capacity=MAX_CAPACITY + 1))
    longest = "\U0001f600" * 64
    roster = tuple(MemberEntry(i, longest, i == 1, True) for i in range(1, MAX_CAPACITY + 1))
    assert (
        len(Roster(members=roster).encode()) + len(("\U0001f600" * MAX_GOAL_CHARS).encode())
        < MAX_PLAINTEXT
    )


# ---------------------------------------------------------------------------------- input types


def test_transport_messages_may_be_any_bytes_like_object() -> None:
    # Drivers get bytearray or memoryview from their sockets as often as bytes: a peer's
    # message must not fail on its container (before, Room.receive raised TypeError).
    room = Room("goal", "host", START)
    (invite,) = room.mint_invites(1, START)
    mc = MemberConnection(invite.link(BASE_URL, room.tunnel_id), "ana", START)
    conn = room.open_connection(START)
    assert conn is not None
    wrappers = (bytearray, memoryview, lambda b: memoryview(bytearray(b)))

    def exchange() -> None:
        for i, data in enumerate(mc.data_to_send()):
            room.receive(conn, wrappers[i % 3](data), START)
        for i, out in enumerate(room.data_to_send()):
            assert isinstance(out, Send)
            mc.receive_data(wrappers[i % 3](out.data), START)

    exchange()  # message 1 -> message 2
    exchange()  # confirming ack -> history and roster
    ref = mc.say("hello")
    exchange()
    exchange()
    events = list(iter(mc.next_event, None))
    assert isinstance(events[0], Welcomed)
    assert SayAccepted(ref, 2) in events
    # Garbage in a bytearray is still only the peer's fault: the room drops the connection.
    room.receive(conn, bytearray(b"\x00" * 40), START)
    assert any(isinstance(o, Disconnect) for o in room.data_to_send())
    with pytest.raises(RemoteProtocolError):
        mc.receive_data(bytearray(b"\x00" * 40), START)
    # Something that is not bytes at all is the driver's bug.
    room2 = Room("goal", "host", START)
    conn2 = room2.open_connection(START)
    assert conn2 is not None
    with pytest.raises(LocalProtocolError):
        room2.receive(conn2, "text", START)  # type: ignore[arg-type]


def _one_line_by_category(raw: str, limit: int) -> str:
    """one_line's general path, character by character (what its ASCII fast path must match)."""
    import unicodedata

    kept = []
    for ch in raw[: limit * 8]:
        if ch.isspace():
            kept.append(" ")
        elif unicodedata.category(ch)[0] != "C":
            kept.append(ch)
    return " ".join("".join(kept).split())[:limit].strip()


@given(
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=600)
    | st.text(max_size=80),
    st.integers(min_value=1, max_value=70),
)
def test_one_line_fast_path_agrees_with_the_general_one(raw: str, limit: int) -> None:
    from tunnelproto._names import one_line

    assert one_line(raw, limit) == _one_line_by_category(raw, limit)
    assert one_line("  ana \x1b[31m  b ", 64) == "ana [31m b"
    assert one_line(" m3  x ", 64) == "m3 x"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("x" * 32 * 1024, None),
        ("x" * (32 * 1024 + 1), "too-long"),
        ("é" * (16 * 1024), None),  # two bytes a character: exactly the limit
        ("é" * (16 * 1024) + "x", "too-long"),
        ("a \ud800 b", "malformed"),  # a lone surrogate cannot travel as UTF-8
        ("\ud800" * (16 * 1024), "too-long"),  # the size is judged first, surrogates counted
        (" \n\t", "empty"),
        ("", "empty"),
    ],
)
def test_chat_text_rules_count_utf8_bytes(text: str, code: str | None) -> None:
    from tunnelproto._room import check_text

    if code is None:
        check_text(text, RemoteProtocolError)
    else:
        with pytest.raises(RemoteProtocolError) as info:
            check_text(text, RemoteProtocolError)
        assert info.value.code == code
