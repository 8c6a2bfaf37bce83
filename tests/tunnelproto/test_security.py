"""What the protocol protects: nothing readable on the wire, no seat for a replayer, and one bad
connection never harms another."""

from __future__ import annotations

import pytest
from harness import Net, Peer, seal_as_member

from tunnelproto import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REFUSED,
    Disconnect,
    LocalProtocolError,
    MemberConnection,
    Refused,
    Room,
    RoomEvent,
    Send,
    _frames,
)
from tunnelproto._link import ticket_psk

GOAL = "GOAL-refactor-the-zebra-importer"
HOST = "HOSTNAME-Quintessa"
NAMES = ["NAME-Bartholomew", "NAME-Cordelia"]
TEXTS = ["CHAT-first-secret-line", "CHAT-second-secret-line", "CHAT-host-secret-line"]
SUMMARY = "SUMMARY-we-shipped-the-zebra"


def test_nothing_readable_ever_crosses_the_wire() -> None:
    net = Net(goal=GOAL, host_name=HOST)
    bart, cord = (net.join(n) for n in NAMES)
    net.say(bart, TEXTS[0])
    net.say(cord, TEXTS[1])
    net.host_say(TEXTS[2])
    net.drop(cord)
    net.host_say(TEXTS[2] + "-while-away")
    net.resume(cord)
    late = net.join("NAME-Latecomer")
    net.leave(bart)
    net.close(SUMMARY)
    assert late.is_open is False and late.texts[:3] == [TEXTS[0], TEXTS[1], TEXTS[2]]
    wire = b"\n".join(net.wire)
    assert len(net.wire) > 20
    needles = [GOAL, HOST, *NAMES, "NAME-Latecomer", *TEXTS, SUMMARY]
    for needle in needles:
        for piece in (needle, needle[:8], needle[-8:]):
            assert piece.encode() not in wire, piece
    # Nor any key material: invite secrets and resume ticket secrets.
    for peer in (bart, cord, late):
        assert peer.link.secret not in wire
        assert peer.link.secret[:8] not in wire
        for mc in peer.connections:
            state = mc.resume_state()
            if state is not None:
                assert state.ticket[:8] not in wire
    # Nobody was refused, so the room never had a reason to say anything in the clear.
    sends = [item for item in net.room_out if isinstance(item, Send)]
    first_per_conn = {}
    for item in sends:
        first_per_conn.setdefault(item.conn, item)
    assert all(item.data[0] == 0x00 for item in first_per_conn.values())  # Noise message 2


def test_goal_names_and_summary_must_be_encodable() -> None:
    with pytest.raises(LocalProtocolError):
        Room("bad \ud800 goal", "h", 0.0)
    net = Net()
    with pytest.raises(LocalProtocolError):
        net.join("bad \udc00 name")
    with pytest.raises(LocalProtocolError):
        net.room.close("bad \ud800", net.now)
    assert not net.room.closed


def _capture(net: Net, peer: Peer, texts: list[str]) -> list[bytes]:
    """Let `peer` say `texts` but hold its messages; return them, one per say."""
    peer.hold_out = True
    for text in texts:
        net.say(peer, text)
    held, peer.outbox = peer.outbox, []
    peer.hold_out = False
    assert len(held) == len(texts)
    return held


@pytest.mark.parametrize("attack", ["reorder", "replay", "forge", "truncate", "empty", "cross"])
def test_a_bad_transport_message_kills_only_its_connection(attack: str) -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    one, two = _capture(net, bob, ["one", "two"])
    victim = bob
    if attack == "reorder":
        sequence = [two, one]
    elif attack == "replay":
        sequence = [one, one]
    elif attack == "forge":
        sequence = [one[:5] + bytes([one[5] ^ 0x40]) + one[6:]]
    elif attack == "truncate":
        sequence = [one[:-1]]
    elif attack == "empty":
        sequence = [b""]
    else:  # bob's message, also injected on ana's connection
        for data in (one, two):
            net.room.receive(bob.conn_id or 0, data, net.now)
        net.pump()
        victim, sequence = ana, [one]
    for data in sequence:
        net.room.receive(victim.conn_id or 0, data, net.now)
        net.pump()
    assert [d.code for d in victim.disconnects] == [CLOSE_PROTOCOL_ERROR]
    other = ana if victim is bob else bob
    assert other.is_open and other.disconnects == []
    net.host_say("the room still works")
    assert other.texts[-1] == "the room still works"
    # The victim's seat is only disconnected; it can resume and finish its says.
    net.resume(victim)
    assert victim.is_open
    net.check()
    if victim is bob:
        assert bob.texts.count("one") == 1 and bob.texts.count("two") == 1
        assert "one" in ana.texts and "two" in ana.texts


def test_replayed_join_message_after_the_join_seats_nobody() -> None:
    net = Net()
    (invite,) = net.mint(1)
    ana = net.join("ana", invite)
    msg1 = ana.sent[0]
    roster = net.room.roster()
    conn = net.open_raw()
    out = net.feed_raw(conn, msg1)
    # The room can answer (it holds the invite key) but only with an encrypted refusal.
    assert isinstance(out[0], Send) and out[0].data[0] == 0x00
    assert out[1] == Disconnect(conn, CLOSE_REFUSED, "used")
    assert net.room.roster() == roster
    assert ana.is_open


def test_replayed_join_message_before_the_join_neither_seats_nor_burns_the_invite() -> None:
    net = Net()
    (invite,) = net.mint(1)
    ana = net.join("ana", invite, pump=False)
    # The relay records ana's whole attempt: message 1, then (after the room's answer) her ack.
    (msg1,) = ana.mc.data_to_send()
    net.room.receive(ana.conn_id or 0, msg1, net.now)
    ana.hold_out = True
    net.pump()
    (ack,) = ana.outbox
    net.drop(ana)  # and the attempt dies before the room got the ack
    for replay in ([msg1], [msg1, ack], [msg1, ack, ack]):
        conn = net.open_raw()
        for data in replay:
            net.feed_raw(conn, data)
        assert [m.name for m in net.room.roster()] == ["host"]
        if len(replay) > 1:
            # The ack was sealed under the first session's keys: it cannot confirm this one.
            assert net.raw_disconnected(conn) == Disconnect(
                conn, CLOSE_PROTOCOL_ERROR, "protocol error: decrypt"
            )
        else:
            net.room.connection_lost(conn, net.now)
    # Nobody got in, and the invite still admits its rightful member.
    again = net.join("ana", invite)
    assert again.is_open
    assert [m.name for m in net.room.roster()] == ["host", "ana"]


def test_a_replay_racing_the_real_member_does_not_steal_the_seat() -> None:
    net = Net()
    (invite,) = net.mint(1)
    ana = net.join("ana", invite, pump=False)
    msg1 = ana.mc.data_to_send()[0]
    # The relay forwards a copy first; the room reserves the invite for that copy.
    conn = net.open_raw()
    net.feed_raw(conn, msg1)
    net.room.receive(ana.conn_id or 0, msg1, net.now)
    net.pump()
    refused = [e for e in ana.events if isinstance(e, Refused)]
    assert [r.code for r in refused] == ["in-use"]
    # The copy can never confirm; when it times out the invite is free again.
    net.tick(10.0)
    assert net.raw_disconnected(conn) is not None
    assert net.join("ana", invite).is_open


def test_replayed_resume_message_is_useless_once_the_resume_succeeded() -> None:
    net = Net()
    ana = net.join("ana")
    net.drop(ana)
    mark = len(ana.sent)
    net.resume(ana)
    resume_msg1 = ana.sent[mark]
    assert resume_msg1[1:17] != ana.link.invite_id
    conn = net.open_raw()
    out = net.feed_raw(conn, resume_msg1)
    assert out[0].data[0] == 0x01  # type: ignore[union-attr]  # the ticket is gone: unknown
    assert b"unknown-invite" in out[0].data  # type: ignore[union-attr]
    assert ana.is_open


def test_a_member_cannot_speak_as_someone_else() -> None:
    # The room stamps the sender from the connection, never from the frame.
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    msg = _frames.Message(seq=99, ts=0, text="i am bob", ref=1, from_=bob.member_id or 0)
    net.room.receive(ana.conn_id or 0, seal_as_member(ana, msg.encode()), net.now)
    net.pump()
    assert [d.code for d in ana.disconnects] == [CLOSE_PROTOCOL_ERROR]
    assert bob.is_open and "i am bob" not in bob.texts
    ana2 = net.join("eve")
    net.room.receive(ana2.conn_id or 0, seal_as_member(ana2, _frames.Say(ref=1, text="hi").encode()), net.now)
    net.pump()
    said = [e for e in bob.entries if not isinstance(e, RoomEvent)]
    assert said[-1].sender_id == ana2.member_id  # type: ignore[union-attr]


def test_a_member_connection_cannot_be_opened_with_a_link_from_another_tunnel() -> None:
    net = Net()
    other = Room("other", "x", 0.0)
    (foreign,) = other.mint_invites(1, 0.0)
    # Same secret, other tunnel: the invite id differs, so this room has no such invite.
    link = foreign.link("https://h.example", net.room.tunnel_id)
    peer = net.join("eve", link)
    assert [e.code for e in peer.events if isinstance(e, Refused)] == ["unknown-invite"]
    mc = MemberConnection(link, "eve", 0.0)
    assert mc.data_to_send()[0][1:17] != foreign.invite_id


def test_ticket_secrets_stay_out_of_reprs() -> None:
    from harness import Net

    net = Net()
    peer = net.join("ana")
    state = peer.mc.resume_state()
    assert state is not None
    secret = state.ticket
    room = net.room
    seat = room._seats[peer.mc.member_id]  # type: ignore[index]
    psk = ticket_psk(secret, room.tunnel_id)
    assert psk in seat.tickets.values()  # the room keeps the PSK, not the secret
    for shown in (repr(seat), repr(room.__dict__), repr(state)):
        for key in (secret, psk):
            assert repr(key)[2:-1] not in shown and key.hex() not in shown
    welcome = _frames.Welcome(
        goal="g", you=2, name="a", roster=(), last=0, first=1, ticket=secret, resumed=False, limits={}
    )
    assert repr(secret)[2:-1] not in repr(welcome)
