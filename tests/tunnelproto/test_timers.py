"""Everything that happens because time passed: handshake timeout, keepalive, idle close,
slow consumers, and the transcript cap. Time is the `now` the harness passes; nothing sleeps."""

from __future__ import annotations

import pytest
from harness import START, Net, Peer

from tunnelproto import (
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_KEEPALIVE_TIMEOUT,
    CLOSE_SLOW_CONSUMER,
    MAX_FRAME,
    ConnectionEnded,
    Disconnect,
    MemberConnection,
    MemberState,
    RoomConfig,
    RoomEvent,
    Send,
    _member,
)

# ---------------------------------------------------------------------------------- handshake


def test_room_drops_a_connection_that_sends_no_message_1_after_5_seconds() -> None:
    # A member sends message 1 one round trip after its upgrade; a socket that stays silent
    # gives its pending slot back at 5 s, not at the whole handshake's 10 s.
    net = Net()
    conn = net.open_raw()
    assert net.room.next_deadline() == START + 5.0
    net.tick(4.99)
    assert net.raw_disconnected(conn) is None
    net.tick(0.01)
    assert net.raw_disconnected(conn) == Disconnect(conn, CLOSE_HANDSHAKE_TIMEOUT, "handshake timeout")


def test_message_1_in_time_gets_the_whole_handshake_deadline() -> None:
    net = Net()
    (invite,) = net.mint(1)
    mc = MemberConnection(net.link(invite), "ana", net.now)
    conn = net.open_raw()
    net.tick(4.9)
    net.feed_raw(conn, mc.data_to_send()[0])  # message 1, just in time; no ack follows
    assert net.room.next_deadline() == START + 10.0
    net.tick(5.09)
    assert net.raw_disconnected(conn) is None
    net.tick(0.01)
    assert net.raw_disconnected(conn) == Disconnect(conn, CLOSE_HANDSHAKE_TIMEOUT, "handshake timeout")


def test_a_join_that_never_confirms_is_dropped_and_gives_its_invite_back() -> None:
    net = Net()
    (invite,) = net.mint(1)
    mc = MemberConnection(net.link(invite), "ana", net.now)
    conn = net.open_raw()
    out = net.feed_raw(conn, mc.data_to_send()[0])
    assert isinstance(out[0], Send) and out[0].data[0] == 0x00  # an encrypted welcome
    # The member never sends its confirming ack.
    net.tick(10.0)
    assert net.raw_disconnected(conn) == Disconnect(conn, CLOSE_HANDSHAKE_TIMEOUT, "handshake timeout")
    assert [m.name for m in net.room.roster()] == ["host"]
    assert net.join("ana", invite).is_open  # the invite admitted nobody, so it still works


def test_member_gives_up_on_a_silent_host_after_10_seconds() -> None:
    net = Net()
    (invite,) = net.mint(1)
    mc = MemberConnection(net.link(invite), "ana", START)
    assert mc.next_deadline() == START + 10.0
    mc.handle_timer(START + 9.9)
    assert mc.next_event() is None
    mc.handle_timer(START + 10.0)
    end = mc.next_event()
    assert isinstance(end, ConnectionEnded) and end.reason == "timeout" and end.resumable
    assert mc.state is MemberState.ERROR
    assert mc.next_deadline() is None


# ---------------------------------------------------------------------------------- keepalive


def test_room_pings_a_silent_member_at_20s_and_drops_it_at_60s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the room's timers here: bob's own (which would end the connection at 50 s, 30 s
    # after the room's ping, his last traffic) are the next test's subject.
    monkeypatch.setattr(_member, "DEAD_AFTER", 3600.0)
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    t0 = net.now
    bob.hold_out = True  # bob's messages stop reaching the room (the room still reaches bob)
    mark = len(net.room_out)
    net.tick(19.9)
    assert not [s for s in net.room_out[mark:] if s.conn == bob.conn_id]
    net.tick(0.1)
    pings = [s for s in net.room_out[mark:] if s.conn == bob.conn_id]
    assert len(pings) == 1 and isinstance(pings[0], Send)
    # bob sent its own ping (it too heard nothing for 20 s) and answered the room's: both held.
    assert len(bob.outbox) == 2
    net.tick(39.9)
    assert bob.disconnects == []
    net.tick(0.1)
    assert bob.disconnects == [
        Disconnect(bob.conn_id or 0, CLOSE_KEEPALIVE_TIMEOUT, "keepalive timeout")
    ]
    assert net.now == t0 + 60.0
    end = bob.last_end()
    assert end is not None and end.resumable
    gone = [e for e in ana.entries if isinstance(e, RoomEvent) and e.kind == "disconnected"]
    assert [(e.member_id, e.name) for e in gone] == [(bob.member_id, "bob")]
    assert ana.is_open
    net.check()


def test_member_pings_a_silent_room_at_20s_and_gives_up_at_30s() -> None:
    net = Net()
    ana = net.join("ana")
    ana.hold_in = True  # nothing from the room reaches ana any more
    sent = len(ana.sent)
    net.tick(19.9)
    assert len(ana.sent) == sent
    net.tick(0.1)
    assert len(ana.sent) == sent + 1  # the ping
    net.tick(9.9)
    assert ana.is_open
    net.tick(0.1)
    end = ana.last_end()
    assert end == ConnectionEnded("timeout", end.message if end else "", resumable=True)
    assert "30 s" in end.message
    assert not ana.transport_open


def _partitioned_at(net: Net, peer: Peer, *, room_talks: bool) -> tuple[float, list[int]]:
    """Cut `peer` off both ways and let time pass, the host talking every 5 s or not. Returns
    how long the member took to end its connection, and the close codes of the room's own
    timeouts for that connection by then (the harness tells the room once the member ends)."""
    start = net.now
    peer.hold_in = peer.hold_out = True
    conn = peer.conn_id
    while peer.last_end() is None:
        net.tick(0.5)
        if room_talks and (net.now - start) % 5 == 1:
            net.host_say(f"at {net.now - start:g} s")
    timeouts = [
        d.code
        for d in net.room_out
        if isinstance(d, Disconnect)
        and d.conn == conn
        and d.code in (CLOSE_KEEPALIVE_TIMEOUT, CLOSE_SLOW_CONSUMER)
    ]
    return net.now - start, timeouts


def test_a_partitioned_member_knows_no_later_than_the_room() -> None:
    # A partition loses every packet both ways and closes nothing. The room notices by its
    # stall timer (30 s, when entries are in flight) or its keepalive (60 s); the member by
    # its unanswered ping. The member must not go on saying "connected" after the room has
    # marked it gone.
    for room_talks in (False, True):
        net = Net()
        net.join("ana")
        bob = net.join("bob")
        member_end, room_timeouts = _partitioned_at(net, bob, room_talks=room_talks)
        assert room_timeouts == [], f"the room gave up on bob first ({room_talks=})"
        assert member_end == 30.0, room_talks
        assert bob.last_end() is not None and bob.last_end().resumable  # type: ignore[union-attr]
        # The seat is held: bob resumes and catches up on what the host said meanwhile.
        net.resume(bob)
        assert bob.is_open
        net.check()


def test_an_idle_but_healthy_connection_lives_on_keepalives() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    net.tick(29 * 60.0)
    assert ana.is_open and bob.is_open
    assert ana.disconnects == bob.disconnects == []
    # Keepalives are not transcript entries.
    assert ana.seqs == [1, 2]


# ---------------------------------------------------------------------------------- idle


def test_thirty_minutes_without_chat_closes_the_room_for_everyone() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    net.tick(20 * 60.0)
    net.say(ana, "still working on it")
    last_chat = net.now
    net.tick(29 * 60.0 + 59.0)
    assert not net.room.closed
    assert net.room.next_deadline() is not None
    net.tick(1.0)
    assert net.room.closed and net.room.close_reason == "idle-closed"
    assert net.now == last_chat + 30 * 60.0
    for peer in (ana, bob):
        last = peer.entries[-1]
        assert isinstance(last, RoomEvent) and last.kind == "idle-closed"
        end = peer.last_end()
        assert end is not None and end.reason == "idle-closed" and not end.resumable
    net.check()


def test_idle_timeout_is_configurable_and_a_host_say_counts_as_chat() -> None:
    net = Net(config=RoomConfig(idle_timeout=100.0))
    ana = net.join("ana")
    net.tick(90.0)
    net.host_say("ping")
    net.tick(90.0)
    assert not net.room.closed
    net.tick(10.0)
    assert net.room.closed
    assert ana.last_end() is not None


def test_join_and_leave_do_not_keep_a_room_alive() -> None:
    net = Net(config=RoomConfig(idle_timeout=100.0))
    net.tick(60.0)
    net.join("ana")
    net.tick(40.0)
    assert net.room.closed


# ---------------------------------------------------------------------------------- slow consumers


def test_a_member_that_stops_reading_is_cut_off_and_host_output_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The room's stall timer is the subject: a member whose reader is stuck does not run its own
    # keepalive either (which would end the connection at the same moment).
    monkeypatch.setattr(_member, "DEAD_AFTER", 3600.0)
    window = 8192
    net = Net(config=RoomConfig(window=window, stall_timeout=30.0))
    ana, slow = net.join("ana"), net.join("slow")
    slow.hold_in = True
    mark = len(net.room_out)
    for i in range(300):
        net.host_say(f"{i:03d} " + "z" * 1000, pump=False)
        net.pump()
    to_slow = [s for s in net.room_out[mark:] if s.conn == slow.conn_id and isinstance(s, Send)]
    # The room queued no more than a window (plus one frame) for the member that stopped
    # reading, though 300 KB were said; the transcript, not a queue, holds the rest.
    assert sum(len(s.data) for s in to_slow) <= window + MAX_FRAME
    assert len(ana.texts) == 300  # the others are not held back
    net.tick(29.9)
    assert slow.disconnects == []
    net.tick(0.1)
    assert [d.code for d in slow.disconnects] == [CLOSE_SLOW_CONSUMER]
    assert ana.is_open
    # It can resume and catch up with nothing lost.
    net.resume(slow)
    assert slow.is_open
    net.check()
    assert slow.texts == ana.texts
    assert slow.seqs == list(range(1, net.room.last_seq + 1))


def test_a_slow_but_steady_reader_is_not_cut_off() -> None:
    net = Net(config=RoomConfig(window=4096, stall_timeout=30.0))
    net.join("ana")
    steady = net.join("steady")
    steady.hold_in = True
    for _ in range(20):
        for j in range(10):
            net.host_say(f"{j} " + "q" * 900, pump=False)
        net.pump()
        net.tick(20.0)  # well under the stall timeout, then it reads what is there
        batch, steady.inbox = steady.inbox, []
        for data in batch:
            net._deliver_to_member(steady, data)
        net.pump()
        # ... and stays connected though the host keeps 20 s ahead of it
    assert steady.disconnects == []
    net.release(steady)
    net.check()
    assert len(steady.texts) == 200


# ---------------------------------------------------------------------------------- transcript cap


def test_transcript_cap_drops_oldest_and_late_joiners_hear_about_it() -> None:
    net = Net(config=RoomConfig(transcript_cap=4000))
    for i in range(100):
        net.host_say(f"message {i:03d} " + "w" * 80)
    room = net.room
    assert room.first_seq > 1
    kept = room.entries_since(0)
    assert sum(len(e.frame) for e in kept) <= 4000
    assert [e.seq for e in kept] == list(range(room.first_seq, room.last_seq + 1))
    late = net.join("late")
    (notice,) = late.notices
    assert notice.kind == "history-truncated" and notice.first_seq == room.first_seq
    # The notice comes before the history it truncates, and the rest is complete.
    evs = late.events
    assert evs.index(notice) < evs.index(late.entries[0])
    assert late.seqs == list(range(notice.first_seq, room.last_seq + 1))
    net.check()


def test_resume_from_before_the_kept_history_gets_a_notice_then_the_rest() -> None:
    net = Net(config=RoomConfig(transcript_cap=3000))
    ana = net.join("ana")
    net.drop(ana)
    for i in range(100):
        net.host_say(f"while away {i:03d} " + "v" * 50)
    net.resume(ana)
    assert ana.is_open
    (notice,) = ana.notices
    assert notice.first_seq == net.room.first_seq
    net.check()
    assert ana.seqs[-1] == net.room.last_seq
