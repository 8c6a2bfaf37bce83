"""Resume: a dropped member takes its seat back with nothing lost, doubled or reordered."""

from __future__ import annotations

from harness import Net

from tunnelproto import (
    CLOSE_REPLACED,
    ChatMessage,
    Refused,
    RoomConfig,
    RoomEvent,
    SayAccepted,
    Welcomed,
)


def kinds(peer_entries: list[ChatMessage | RoomEvent]) -> list[str]:
    return [e.kind if isinstance(e, RoomEvent) else "chat" for e in peer_entries]


def test_resume_replays_what_was_missed_and_keeps_seat_and_name() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    net.say(ana, "before")
    net.drop(bob)
    for i in range(5):
        net.host_say(f"missed {i}")
        net.say(ana, f"ana missed {i}")
    net.resume(bob)
    welcome = bob.current_events()[0]
    assert isinstance(welcome, Welcomed) and welcome.resumed
    assert welcome.member_id == bob.member_id == bob.welcomes()[0].member_id
    assert welcome.name == "bob"
    net.say(ana, "after")
    net.check()
    assert bob.seqs == list(range(1, net.room.last_seq + 1))  # no loss, no dup, no reorder
    assert bob.entries == ana.entries
    # The room saw bob go and come back, as structured events.
    assert kinds(ana.entries).count("disconnected") == 1
    assert kinds(ana.entries).count("reconnected") == 1
    assert [m.name for m in net.room.roster()] == ["host", "ana", "bob"]
    assert all(m.on for m in net.room.roster())


def test_resume_twice_in_a_row() -> None:
    net = Net()
    ana = net.join("ana")
    for round_ in range(3):
        net.drop(ana)
        net.host_say(f"gap {round_}")
        net.resume(ana)
        assert ana.is_open
    net.check()
    assert ana.texts == ["gap 0", "gap 1", "gap 2"]
    assert len(ana.connections) == 4


def test_old_ticket_is_dead_after_a_successful_resume() -> None:
    net = Net()
    ana = net.join("ana")
    net.drop(ana)
    old_state = ana.mc.resume_state()
    assert old_state is not None
    net.resume(ana)
    assert ana.is_open
    net.drop(ana)
    net.resume(ana, state=old_state)
    refused = ana.current_events()[0]
    assert isinstance(refused, Refused) and refused.code == "unknown-invite"
    # The current ticket still works.
    net.resume(ana, state=ana.connections[-2].resume_state())
    assert ana.is_open
    net.check()


def test_grace_period_expiry_turns_disconnected_into_left() -> None:
    net = Net(config=RoomConfig(grace=120.0))
    ana, bob = net.join("ana"), net.join("bob")
    net.drop(bob)
    net.tick(119.0)
    assert [m.name for m in net.room.roster()] == ["host", "ana", "bob"]
    net.tick(1.0)
    assert [m.name for m in net.room.roster()] == ["host", "ana"]
    assert kinds(ana.entries)[-2:] == ["disconnected", "left"]
    left = ana.entries[-1]
    assert isinstance(left, RoomEvent) and left.member_id == bob.member_id
    net.resume(bob)
    refused = bob.current_events()[0]
    assert isinstance(refused, Refused)
    assert not bob.is_open
    assert net.room.free_seats(net.now) == 14
    net.check()


def test_resume_just_before_grace_expiry_keeps_the_seat() -> None:
    net = Net(config=RoomConfig(grace=120.0))
    bob = net.join("bob")
    net.drop(bob)
    net.tick(119.9)
    net.resume(bob)
    assert bob.is_open
    net.tick(10.0)
    assert [m.name for m in net.room.roster()] == ["host", "bob"]


def test_a_say_lost_in_flight_is_resent_once() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    ref = net.say(ana, "lost in flight", pump=False)
    net.drop(ana)  # the say never reached the room
    assert "lost in flight" not in bob.texts
    net.resume(ana)
    net.check()
    assert bob.texts == ["lost in flight"]
    assert ana.texts == ["lost in flight"]
    assert ref in ana.accepted


def test_a_say_stamped_just_before_the_drop_is_not_doubled() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    ana.hold_in = True  # the room's answer (ana's own copy) will be lost
    ref = net.say(ana, "stamped, answer lost")
    assert bob.texts == ["stamped, answer lost"]
    net.drop(ana)
    state = ana.mc.resume_state()
    assert state is not None and state.unacked == ((ref, "stamped, answer lost"),)
    net.resume(ana)  # ana re-sends the say; the room recognises the ref
    net.say(bob, "next")
    net.check()
    assert bob.texts == ["stamped, answer lost", "next"]
    assert ana.texts == ["stamped, answer lost", "next"]
    assert [e for e in ana.events if isinstance(e, SayAccepted)] == [
        SayAccepted(ref, ana.accepted[ref])
    ]


def test_a_rejected_say_whose_rejection_was_lost_is_rejected_again_after_resume() -> None:
    net = Net(config=RoomConfig(rate_burst=2, rate_per_sec=0.01))
    ana = net.join("ana")
    ana.hold_in = True
    refs = [net.say(ana, f"burst {i}", pump=False) for i in range(3)]
    net.pump()
    net.drop(ana)  # the acceptances and the rejection of the third are lost
    net.resume(ana)
    net.check()
    assert sorted(ana.accepted) == refs[:2]
    # Every say is settled: accepted or rejected, never left waiting forever.
    assert set(ana.accepted) | set(ana.rejected) == set(refs)
    assert ana.rejected[refs[2]].code == "rate-limited"
    state = ana.mc.resume_state()
    assert state is not None and state.unacked == ()


def test_a_half_open_connection_is_replaced_by_the_resume() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    old_conn = bob.conn_id
    net.drop(bob, room_notices=False)  # only bob noticed; the room still has the old socket
    net.host_say("meanwhile")
    net.resume(bob)
    assert bob.is_open
    replaced = [d for d in net.raw.get(old_conn or 0, []) if not hasattr(d, "data")]
    assert [d.code for d in replaced] == [CLOSE_REPLACED]  # type: ignore[union-attr]
    # The seat moved rather than emptied: nobody saw bob leave or come back.
    assert "disconnected" not in kinds(ana.entries)
    assert "reconnected" not in kinds(ana.entries)
    net.check()
    assert bob.texts == ["meanwhile"]


def test_resume_after_the_room_closed_is_refused_at_the_door() -> None:
    net = Net()
    ana = net.join("ana")
    net.drop(ana)
    net.close("bye")
    net.resume(ana)
    assert ana.refused_at_door and not ana.is_open


def test_resume_after_leave_is_impossible() -> None:
    net = Net()
    ana = net.join("ana")
    ticket_state = ana.mc.resume_state()
    net.leave(ana)
    end = ana.last_end()
    assert end is not None and end.reason == "left" and not end.resumable
    assert ticket_state is not None
    net.resume(ana, state=ticket_state)
    refused = ana.current_events()[0]
    assert isinstance(refused, Refused) and refused.code == "unknown-invite"


def test_two_resumes_racing_for_one_seat() -> None:
    net = Net()
    ana = net.join("ana")
    net.drop(ana)
    state = ana.mc.resume_state()
    net.resume(ana, state=state, pump=False)
    first = ana.mc
    first_conn = ana.conn_id
    net.resume(ana, state=state)  # the second attempt finishes first
    assert ana.is_open
    assert not first.state.value == "open"
    assert first_conn is not None
    net.check()
    assert [m.on for m in net.room.roster()] == [True, True]


def test_a_resume_whose_welcome_was_lost_leaves_both_tickets_usable() -> None:
    net = Net()
    ana = net.join("ana")
    net.drop(ana)
    old_state = ana.mc.resume_state()
    net.resume(ana, pump=False)
    ana.hold_in = True  # the welcome (with the new ticket) never reaches ana ...
    net.pump()
    net.drop(ana)
    net.resume(ana, state=old_state)  # ... so she retries with the ticket she has
    assert ana.is_open
    net.check()


def test_a_resume_whose_ack_was_lost_can_resume_with_the_new_ticket() -> None:
    net = Net()
    ana = net.join("ana")
    net.drop(ana)
    net.host_say("while away")
    net.resume(ana, pump=False)
    net.send_now(ana)  # message 1 goes out
    ana.hold_out = True  # ana gets the welcome (and a new ticket) but her ack is lost
    net.pump()
    assert ana.is_open
    net.drop(ana)
    net.resume(ana)  # with the new ticket, from the welcome
    assert ana.is_open
    net.check()
    assert ana.texts == ["while away"]


def test_many_lost_resume_welcomes_do_not_cost_the_seat() -> None:
    # A flaky network (or a relay replaying her message 1) makes the room hand out several
    # tickets that never reach ana; the one she holds must stay valid.
    net = Net()
    ana = net.join("ana")
    net.drop(ana)
    held = ana.mc.resume_state()
    for _ in range(6):
        net.resume(ana, state=held, pump=False)
        ana.hold_in = True
        net.pump()
        net.drop(ana)
    net.resume(ana, state=held)
    assert ana.is_open, ana.current_events()
    net.check()


def test_many_lost_welcomes_after_a_lost_ack_do_not_cost_the_seat() -> None:
    net = Net()
    ana = net.join("ana")
    net.drop(ana)
    net.resume(ana, pump=False)
    net.send_now(ana)
    ana.hold_out = True  # she gets a welcome and its new ticket; her ack is lost
    net.pump()
    net.drop(ana)
    held = ana.mc.resume_state()
    assert held is not None
    for _ in range(6):  # every later welcome is lost on the way to her
        net.resume(ana, state=held, pump=False)
        ana.hold_in = True
        net.pump()
        net.drop(ana)
    net.resume(ana, state=held)
    assert ana.is_open, ana.current_events()
    net.check()


def test_grace_running_out_during_the_resume_handshake_ends_it_cleanly() -> None:
    net = Net(config=RoomConfig(grace=120.0))
    ana, bob = net.join("ana"), net.join("bob")
    net.drop(bob)
    net.tick(119.0)
    net.resume(bob, pump=False)
    net.send_now(bob)  # message 1 arrives while the seat is still held ...
    bob.hold_out = True  # ... but the confirming ack is late
    net.pump()
    assert bob.is_open  # bob has its welcome
    net.tick(1.5)  # the grace period ends before the ack arrives
    assert [m.name for m in net.room.roster()] == ["host", "ana"]
    net.release(bob)
    end = bob.last_end()
    assert end is not None and end.reason == "left" and not end.resumable
    assert not bob.is_open
    assert [m.name for m in net.room.roster()] == ["host", "ana"]
    net.check([ana])
