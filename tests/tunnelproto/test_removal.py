"""The host removes a member: the seat and its tickets end at once, everyone sees `removed`."""

from __future__ import annotations

import pytest
from harness import FakeHost, Net

from tunnelproto import (
    CLOSE_REFUSED,
    CLOSE_REMOVED,
    MAX_REASON_CHARS,
    ConnectionEnded,
    LocalProtocolError,
    MemberConnection,
    MemberState,
    Refused,
    RoomConfig,
    RoomEvent,
    _frames,
)
from tunnelproto._removal import MAX_REMOVED_TICKETS


def _ends(events: list[object]) -> list[ConnectionEnded]:
    return [ev for ev in events if isinstance(ev, ConnectionEnded)]


def test_removing_a_connected_member() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    net.say(bob, "spam")
    bob_id = bob.member_id
    assert bob_id is not None
    entry = net.remove(bob_id, "the phrase did not match")
    assert (entry.event, entry.member, entry.name, entry.summary) == (
        "removed",
        bob_id,
        "bob",
        "the phrase did not match",
    )
    # Everyone sees it in the total order, bob too (it went out before his close).
    for peer in (ana, bob):
        (seen,) = [e for e in peer.entries if isinstance(e, RoomEvent) and e.kind == "removed"]
        assert (seen.seq, seen.member_id, seen.name, seen.summary) == (
            entry.seq,
            bob_id,
            "bob",
            "the phrase did not match",
        )
    # Bob's connection ends for good, with the host's reason, and the removal close code.
    (end,) = _ends(bob.events)
    assert end.reason == "removed" and not end.resumable
    assert end.summary == "the phrase did not match"
    assert "removed you" in end.message and "the phrase did not match" in end.message
    assert [d.code for d in bob.disconnects] == [CLOSE_REMOVED]
    assert bob.mc.state is MemberState.CLOSED and bob.mc.resume_state() is not None
    # The seat is gone: roster, name, phrase; nobody saw a "disconnected".
    assert [m.name for m in net.room.roster()] == ["host", "ana"]
    assert ana.mc.roster == net.room.roster()
    assert net.room.member_name(bob_id) is None and net.room.phrase(bob_id) is None
    assert "disconnected" not in [e.kind for e in ana.entries if isinstance(e, RoomEvent)]
    # Ana goes on.
    net.say(ana, "still here")
    assert ana.is_open
    net.check()


def test_a_removed_member_cannot_resume_and_is_told_why() -> None:
    net = Net()
    bob = net.join("bob")
    net.remove(bob.member_id or 0, None)
    net.resume(bob)
    (refused,) = [ev for ev in bob.current_events() if isinstance(ev, Refused)]
    assert refused.code == "removed"
    (end,) = _ends(bob.current_events())
    assert end.reason == "removed" and not end.resumable
    assert end.message == "the host removed you from the room"
    assert [d.code for d in bob.disconnects][-1] == CLOSE_REFUSED
    # And the link that let him in is used.
    again = net.join("bob", bob.link)
    assert [r.code for r in again.events if isinstance(r, Refused)] == ["used"]
    assert [m.name for m in net.room.roster()] == ["host"]


def test_removing_a_disconnected_member_ends_the_seat_without_waiting_for_grace() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    net.drop(bob)
    entry = net.remove(bob.member_id or 0, "gone too long")
    assert [m.name for m in net.room.roster()] == ["host", "ana"]
    assert ana.entries[-1].seq == entry.seq
    # The grace timer has nothing left to do: no "left" later.
    net.tick(200.0)
    kinds = [e.kind for e in ana.entries if isinstance(e, RoomEvent)]
    assert kinds.count("removed") == 1 and "left" not in kinds[kinds.index("removed") :]
    # His resume, when it comes, is refused with the truth, encrypted.
    net.resume(bob)
    assert [r.code for r in bob.current_events() if isinstance(r, Refused)] == ["removed"]
    net.check()


def test_removing_a_member_in_the_middle_of_its_resume() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    net.drop(bob)
    net.resume(bob, pump=False)
    net.send_now(bob)
    bob.hold_out = True  # bob has his welcome; his confirming ack has not arrived
    net.pump()
    assert bob.is_open
    net.remove(bob.member_id or 0, "no")
    end = bob.last_end()
    assert end is not None and end.reason == "removed" and not end.resumable
    assert [d.code for d in bob.disconnects][-1] == CLOSE_REMOVED
    net.release(bob)  # the late ack finds nothing
    assert [m.name for m in net.room.roster()] == ["host", "ana"]
    net.check([ana])


def test_a_removed_member_with_a_full_window_still_gets_its_close() -> None:
    net = Net(config=RoomConfig(window=300))
    ana, bob = net.join("ana"), net.join("bob")
    bob.hold_out = True  # bob's acks stop reaching the room: his window fills
    for i in range(5):
        net.host_say(f"message {i} " + "x" * 100)
    assert len(bob.entries) < len(ana.entries)
    net.remove(bob.member_id or 0, "not acking")
    end = bob.last_end()
    assert end is not None and end.reason == "removed"
    # The event was not in his window; he never got it, and got nothing out of order either.
    assert "removed" not in [e.kind for e in bob.entries if isinstance(e, RoomEvent)]
    net.check()


def test_what_the_host_cannot_remove() -> None:
    net = Net()
    ana = net.join("ana")
    with pytest.raises(LocalProtocolError) as info:
        net.room.remove(net.room.host_id, None, net.now)
    assert info.value.code == "bad-member"
    with pytest.raises(LocalProtocolError) as info:
        net.room.remove(42, None, net.now)
    assert info.value.code == "no-member"
    net.remove(ana.member_id or 0)
    with pytest.raises(LocalProtocolError) as info:
        net.room.remove(ana.member_id or 0, None, net.now)
    assert info.value.code == "gone"
    with pytest.raises(LocalProtocolError) as info:
        net.room.remove(ana.member_id or 0, "\ud800", net.now)  # checked after the seat
    assert info.value.code == "gone"
    bob = net.join("bob")
    with pytest.raises(LocalProtocolError) as info:
        net.room.remove(bob.member_id or 0, "bad \ud800 text", net.now)
    assert info.value.code == "bad-reason"
    assert bob.is_open  # a refused removal changed nothing
    net.close()
    with pytest.raises(LocalProtocolError) as info:
        net.room.remove(bob.member_id or 0, None, net.now)
    assert info.value.code == "closed"


def test_the_reason_is_bounded_and_blank_is_none() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    long = net.remove(ana.member_id or 0, "y" * (MAX_REASON_CHARS + 500))
    assert long.summary == "y" * MAX_REASON_CHARS
    end = ana.last_end()
    assert end is not None and len(end.message) < 600  # the member's one line is cut shorter
    blank = net.remove(bob.member_id or 0, " \n ")
    assert blank.summary is None
    end = bob.last_end()
    assert end is not None and end.message == "the host removed you from the room"


def test_the_member_cleans_the_hosts_reason() -> None:
    net = Net()
    link = net.link(net.mint(1)[0])
    member = MemberConnection(link, "ana", 0.0)
    host = FakeHost(link)
    member.receive_data(host.welcome(member.data_to_send()[0]), 0.0)
    reason = "line one\nline two \u202eevil\x1b[31m"
    member.receive_data(host.frame(_frames.Close(reason="removed", summary=reason)), 0.0)
    events = []
    while (ev := member.next_event()) is not None:
        events.append(ev)
    (end,) = _ends(events)
    assert end.reason == "removed" and not end.resumable
    assert end.message == "the host removed you from the room (the host's reason: " + (
        "line one line two evil[31m)"
    )
    assert end.summary == reason  # the raw words are data, for whoever renders them


def test_a_plaintext_removed_refusal_is_not_believed() -> None:
    """Only an encrypted refusal can say `removed`: anyone on the path can forge a plaintext one."""
    net = Net()
    link = net.link(net.mint(1)[0])
    member = MemberConnection(link, "ana", 0.0)
    member.data_to_send()
    forged = b"\x01" + _frames.Refuse(code="removed", msg="you were removed").encode()
    member.receive_data(forged, 0.0)
    events = []
    while (ev := member.next_event()) is not None:
        events.append(ev)
    (end,) = _ends(events)
    assert end.reason == "refused"


def test_removed_tickets_are_remembered_within_a_bound() -> None:
    net = Net(config=RoomConfig(capacity=64))
    first = net.join("first")
    net.remove(first.member_id or 0)
    # Each removed seat leaves at least one ticket behind; the room keeps the newest 64.
    for i in range(MAX_REMOVED_TICKETS):
        peer = net.join(f"m{i}")
        net.drop(peer)
        net.resume(peer)  # two tickets have existed for this seat; one is live
        net.remove(peer.member_id or 0)
        assert len(net.room._removed_tickets._tickets) <= MAX_REMOVED_TICKETS
    # The first one's ticket is forgotten: its resume now hears the generic refusal.
    net.resume(first)
    assert [r.code for r in first.current_events() if isinstance(r, Refused)] == ["unknown-invite"]
    net.close()
    assert len(net.room._removed_tickets._tickets) == 0


def test_an_unknown_event_kind_is_a_generic_event_for_a_member() -> None:
    net = Net()
    link = net.link(net.mint(1)[0])
    member = MemberConnection(link, "ana", 0.0)
    host = FakeHost(link)
    member.receive_data(host.welcome(member.data_to_send()[0]), 0.0)
    member.receive_data(host.frame(_frames.Event(kind="x-new", seq=1, ts=5, member=7)), 0.0)
    member.receive_data(
        host.frame(_frames.Event(kind="joined", seq=2, ts=6, member=8, name="b")), 0.0
    )
    events = []
    while (ev := member.next_event()) is not None:
        events.append(ev)
    room_events = [(e.seq, e.kind, e.member_id) for e in events if isinstance(e, RoomEvent)]
    assert room_events == [(1, "x-new", 7), (2, "joined", 8)]
    assert member.state is MemberState.OPEN


def test_a_member_still_joining_cannot_be_removed_yet() -> None:
    net = Net()
    ana = net.join("ana", pump=False)
    net.send_now(ana)
    ana.hold_out = True  # welcomed, but the room has not seen her confirming ack
    net.pump()
    assert ana.is_open and ana.member_id is not None
    with pytest.raises(LocalProtocolError) as info:
        net.room.remove(ana.member_id, None, net.now)
    assert info.value.code == "joining"
    net.release(ana)
    net.remove(ana.member_id)
    assert [m.name for m in net.room.roster()] == ["host"]
