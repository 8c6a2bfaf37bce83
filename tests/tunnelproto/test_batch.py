"""batch/1 (spec sections 8.3 and 12): several frames in one transport message, delayed acks.

Through the public API and the in-memory harness; where a member must misbehave, its own
session keys seal what a modified client could send.
"""

from __future__ import annotations

import pytest
from harness import BULK_BATCH, FakeHost, Net, seal_as_member

from tunnelproto import (
    BATCH_CAP,
    CLOSE_FLOODING,
    CLOSE_PROTOCOL_ERROR,
    Disconnect,
    JoinLink,
    MemberConnection,
    MemberState,
    RemoteProtocolError,
    RoomConfig,
    _frames,
)
from tunnelproto._member import ACK_DELAY, PING_AFTER
from tunnelproto._state import ConnState


def test_batch_is_on_only_where_both_sides_announce_it() -> None:
    net = Net()
    ana = net.join("ana", batch=True)
    bob = net.join("bob")
    (welcome,) = ana.welcomes()
    assert welcome.limits["window"] == net.room.config.window
    assert ana.mc._channel is not None and ana.mc._channel.batch
    assert bob.mc._channel is not None and not bob.mc._channel.batch
    assert "window" not in bob.welcomes()[0].limits  # what an older member got, unchanged
    conns = net.room._conns
    assert conns[ana.conn_id or 0].batch and not conns[bob.conn_id or 0].batch
    net.check()


def test_a_host_burst_reaches_a_batch_member_in_one_message() -> None:
    net = Net()
    ana = net.join("ana", batch=True)
    bob = net.join("bob")
    ana_before, bob_before = len(ana.received), len(bob.received)
    for i in range(5):
        net.host_say(f"line {i}", pump=False)
    net.pump()
    assert len(ana.received) - ana_before == 1  # five messages, one seal, one nonce
    assert len(bob.received) - bob_before == 5  # one frame per message without batch/1
    assert ana.texts[-5:] == bob.texts[-5:] == [f"line {i}" for i in range(5)]
    net.check()


def test_says_queued_together_go_in_one_message_and_come_back_in_one() -> None:
    net = Net()
    ana = net.join("ana", batch=True)
    sent_before, received_before = len(ana.sent), len(ana.received)
    refs = [net.say(ana, f"say {i}", pump=False) for i in range(4)]
    net.pump()
    assert len(ana.sent) - sent_before == 1
    assert len(ana.received) - received_before == 1
    assert all(ref in ana.accepted for ref in refs)
    net.check()


def test_the_confirming_ack_travels_alone() -> None:
    net = Net()
    eve = net.join("eve", batch=True, pump=False)
    (msg1,) = eve.mc.data_to_send()
    net.room.receive(eve.conn_id or 0, msg1, net.now)
    eve.hold_in = True
    net.pump()
    (msg2,) = eve.inbox
    eve.inbox.clear()
    eve.mc.receive_data(msg2, net.now)
    (confirm,) = eve.mc.data_to_send()  # the ack alone, as the member always sends it
    del confirm
    # A modified member puts a say behind its confirming ack in the same message.
    batch = _frames.Ack(seq=0).encode() + _frames.Say(ref=1, text="sneaked in").encode()
    net.room.receive(eve.conn_id or 0, seal_as_member(eve, batch), net.now)
    out = net.room.data_to_send()
    assert [d.code for d in out if isinstance(d, Disconnect)] == [CLOSE_PROTOCOL_ERROR]
    assert len(net.room.roster()) == 1  # nobody was seated
    assert all(e.text != "sneaked in" for e in net.room.entries_since(0))


def test_a_member_acks_late_unless_something_else_goes_or_the_window_fills() -> None:
    net = Net(config=RoomConfig(window=4000))
    ana = net.join("ana", batch=True)
    assert ana.mc._ack_every == 1000
    net.tick(1.0)
    conn = net.room._conns[ana.conn_id or 0]
    assert not conn.inflight
    net.host_say("a small one")
    assert conn.inflight  # not acknowledged yet: the ack waits for company
    deadline = ana.mc.next_deadline()
    assert deadline is not None and deadline <= net.now + ACK_DELAY
    net.tick(ACK_DELAY)
    assert not conn.inflight  # it went alone once its delay was up
    # An ack rides along with a say at once.
    net.host_say("another")
    assert conn.inflight
    sent = len(ana.sent)
    ref = net.say(ana, "and mine")
    assert len(ana.sent) == sent + 1  # the say and the ack in one message
    # Only the say's own stamped copy is left to acknowledge.
    assert [seq for seq, _ in conn.inflight] == [ana.accepted[ref]]
    net.tick(ACK_DELAY)
    # Past a quarter of the window unacknowledged, the ack goes at the next drain.
    for i in range(3):
        net.host_say("x" * 400 + str(i), pump=False)
    net.pump()
    assert not conn.inflight
    net.check()


def test_a_close_ends_the_batch_it_arrives_in() -> None:
    net = Net()
    ana = net.join("ana", batch=True)
    batch = (
        _frames.Say(ref=1, text="first").encode()
        + _frames.Close(reason="left").encode()
        + _frames.Say(ref=2, text="after leaving").encode()
    )
    net.room.receive(ana.conn_id or 0, seal_as_member(ana, batch), net.now)
    net.pump()
    texts = [e.text for e in net.room.entries_since(0) if e.kind == "chat"]
    assert texts == ["first"]
    assert [e.event for e in net.room.entries_since(0) if e.kind == "event"][-1] == "left"


def test_a_member_reads_nothing_after_a_close_in_the_same_batch() -> None:
    net = Net()
    ana = net.join("ana", batch=True)
    net.host_say("before", pump=False)
    net.room.close("done", net.now)  # the closed event, then close{closed}, in one message
    net.pump()
    assert ana.mc.state is MemberState.CLOSED
    assert ana.texts[-1] == "before"
    net.check()


def test_every_frame_of_a_batch_is_charged_to_the_budget() -> None:
    net = Net(config=RoomConfig(inbound_frame_burst=50, inbound_frames_per_sec=1.0))
    ana = net.join("ana", batch=True)
    pongs = _frames.Pong().encode() * 60  # one message, sixty frames the room ignores
    net.room.receive(ana.conn_id or 0, seal_as_member(ana, pongs), net.now)
    out = net.room.data_to_send()
    assert [d.code for d in out if isinstance(d, Disconnect)] == [CLOSE_FLOODING]
    assert net.room._conns.get(ana.conn_id or 0) is None


def test_a_batch_member_and_a_plain_one_see_the_same_total_order() -> None:
    net = Net()
    ana, bob = net.join("ana", batch=True), net.join("bob")
    cy = net.join("cy", batch=True, files=True)
    for i in range(20):
        net.say([ana, bob, cy][i % 3], f"m{i}", pump=i % 4 == 0)
        if i % 5 == 0:
            net.host_say(f"h{i}", pump=False)
    net.pump()
    net.tick(1.0)
    assert ana.texts == bob.texts == cy.texts
    assert all(net.room._conns[p.conn_id or 0].state is ConnState.OPEN for p in (ana, bob, cy))
    net.check()


def test_a_resume_keeps_batch_and_replays_in_batches() -> None:
    net = Net()
    ana = net.join("ana", batch=True)
    net.drop(ana)
    for i in range(10):
        net.host_say(f"missed {i}", pump=False)
    net.pump()
    before = len(ana.received)
    net.resume(ana)
    assert ana.mc._channel is not None and ana.mc._channel.batch
    assert ana.texts[-10:] == [f"missed {i}" for i in range(10)]
    assert len(ana.received) - before <= 3  # the welcome, then the replay in one or two
    assert BATCH_CAP in ana.caps
    net.check()


def test_a_member_that_asked_for_batch_keeps_one_frame_a_message_with_an_older_host() -> None:
    link = JoinLink("https://h.example", "abcdefghijklmnop", bytes(range(32)))
    mc = MemberConnection(link, "ana", 1000.0, caps=(BATCH_CAP,))
    host = FakeHost(link)
    (msg1,) = mc.data_to_send()
    mc.receive_data(host.welcome(msg1), 1000.0)  # no caps: an older host
    assert mc.state is MemberState.OPEN
    (confirm,) = mc.data_to_send()
    assert host.open(confirm) == _frames.Ack(seq=0)
    # The host's entries, one per message; each drain acks at once (nothing waits).
    mc.receive_data(host.frame(_frames.Message(seq=1, ts=0, text="hi", ref=0, from_=1)), 1000.1)
    (ack,) = mc.data_to_send()
    assert host.open(ack) == _frames.Ack(seq=1)
    assert mc.next_deadline() == 1000.1 + PING_AFTER
    mc.say("one")
    mc.say("two")
    sent = mc.data_to_send()
    assert [host.open(data) for data in sent] == [
        _frames.Say(ref=1, text="one"),
        _frames.Say(ref=2, text="two"),
    ]
    # A batch from such a host is malformed: the member never agreed to read one.
    batch = _frames.Ping().encode() + _frames.Ping().encode()
    with pytest.raises(RemoteProtocolError):
        mc.receive_data(host.seal(batch), 1000.2)


def _error_frame_of(size: int) -> bytes:
    """An encoded `error` frame of exactly `size` bytes."""
    bare = len(_frames.Error(code="malformed", msg="").encode())
    for n in range(size - bare - 8, size - bare + 1):
        frame = _frames.Error(code="malformed", msg="x" * n).encode()
        if len(frame) == size:
            return frame
    raise AssertionError(f"no error frame of {size} bytes")


@pytest.mark.parametrize("over", [0, 1])
def test_queued_frames_fill_messages_up_to_max_plaintext_and_never_split_a_frame(
    over: int,
) -> None:
    from tunnelproto import MAX_PLAINTEXT
    from tunnelproto._channel import Channel
    from tunnelproto._noise import CipherState

    key = bytes(range(32))
    sender = Channel(CipherState(key), CipherState(key), batch=True)
    receiver = Channel(CipherState(key), CipherState(key), batch=True)
    ping, pong = _frames.Ping().encode(), _frames.Pong().encode()
    frames = [ping, _error_frame_of(MAX_PLAINTEXT + over - len(ping) - len(pong)), pong]
    for frame in frames:
        sender.queue(frame)
    messages = sender.seal_queued()
    assert sender.queued == [] and sender.seal_queued() == []
    # All in one message when they fit exactly; one byte more and the last frame goes alone.
    assert len(messages) == 1 + over
    opened = [frame for message in messages for frame in receiver.open_all(message)]
    assert [f.encode() for f in opened] == frames


def test_other_output_tells_whether_a_drain_has_more_than_the_hosts_own_says() -> None:
    # A relay that holds the host's says back (autocork) leaves the drain for later while only
    # they wait: a member's ack alone makes no output, so it must not report any.
    net = Net()
    ana = net.join("ana", batch=True)
    bob = net.join("bob")
    room = net.room
    assert not room.other_output
    ana.hold_out = bob.hold_out = True
    net.host_say("one")
    net.tick(ACK_DELAY)  # ana's delayed ack is due
    acks = [(peer, data) for peer in (ana, bob) for data in peer.outbox]
    assert {peer.name for peer, _ in acks} == {"ana", "bob"}
    ana.outbox.clear()
    bob.outbox.clear()
    assert not room.other_output
    net.host_say("two", pump=False)
    assert not room.other_output  # only the host's say waits
    for peer, data in acks:
        room.receive(peer.conn_id or 0, data, net.now)
        assert not room.other_output  # an ack alone: still only the say
    ana.hold_out = bob.hold_out = False
    net.say(ana, "from ana", pump=False)
    net.send_now(ana)
    assert room.other_output  # ana's say: its entry for everyone, its ack
    net.pump()
    assert not room.other_output  # drained
    assert ana.texts[-3:] == bob.texts[-3:] == ["one", "two", "from ana"]
    net.host_say("three", pump=False)
    net.room.remove(bob.member_id or 0, None, net.now)  # any other host call that sends
    assert room.other_output
    net.pump()
    net.check()


def test_other_output_reports_file_events_and_chunks_to_pull() -> None:
    # Chunks from a sharer make no frame at once: for the host's own fetch they become events
    # (`files.take_events`), for a member's they wait for `pull_bulk`. Either is output.
    net = Net()
    ana = net.join("ana", batch=True, files=True)
    bob = net.join("bob", batch=True, files=True)
    room = net.room
    contents = [bytes(range(256)) * 256]
    offer = net.offer_of(ana, net.share(ana, contents))
    fetches = (
        lambda: room.files.fetch(offer, 0, net.now),
        lambda: net.fetch(bob, offer, 0, contents),
    )
    for fetch in fetches:
        ana.hold_out = True
        fetch()
        net.pump()  # the fetch reached ana; what ana sends waits
        for data in ana.outbox:
            room.receive(ana.conn_id or 0, data, net.now)
        ana.outbox.clear()
        for item in room.data_to_send():
            net._route(item)
        assert ana.mc.has_bulk() and not room.other_output
        ana.hold_out = False
        ana.mc.pull_bulk(BULK_BATCH)
        (chunk, *rest) = ana.mc.data_to_send()
        room.receive(ana.conn_id or 0, chunk, net.now)
        assert room.other_output
        for data in rest:
            room.receive(ana.conn_id or 0, data, net.now)
        net.pump()
        assert not room.other_output
    assert bob.disk.complete
    net.check()
