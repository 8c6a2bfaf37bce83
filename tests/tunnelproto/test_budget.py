"""Every frame costs: the inbound budget of a seat (spec section 18), with a fake clock.

A member's frames are charged against a frame budget and a byte budget whatever they are (a
refused say, an ignored re-sent one, an ack that acknowledges nothing, a pong nobody asked for).
A frame the budget cannot pay for ends the connection and the seat: `error{flooding}`,
`close{reason: flooding}`, close 4010, and `left` for the others.
The honest patterns (says at the rate limit at the largest size, an ack for every entry, pings,
256 says re-sent at once after a resume, sharing and receiving a large file) must never meet it.
"""

from __future__ import annotations

import random

import pytest
from harness import Net, Peer, seal_as_member

from tunnelproto import (
    CLOSE_FLOODING,
    CLOSE_NORMAL,
    MAX_CHUNK,
    MAX_TEXT_BYTES,
    ConnectionEnded,
    Disconnect,
    ReadRequest,
    Refused,
    RoomConfig,
    _codec,
    _frames,
)

#: A say a little under the rate limit (5 a second), so float rounding never refuses one.
SAY_EVERY = 0.21
BIG = "é" * (MAX_TEXT_BYTES // 2)  # the largest text, in two-byte characters


def flooding_cuts(peer: Peer) -> list[Disconnect]:
    return [d for d in peer.disconnects if d.code == CLOSE_FLOODING]


def assert_never_cut(net: Net, *peers: Peer) -> None:
    for peer in peers:
        assert not flooding_cuts(peer), f"{peer.label} was cut off as a flooder"
        assert peer.is_open, f"{peer.label} lost its connection: {peer.last_end()}"
        assert not any(
            isinstance(item, Disconnect)
            and item.code == CLOSE_FLOODING
            and item.conn in peer.conn_ids
            for item in net.room_out
        )


def flood(net: Net, peer: Peer, make: object, limit: int) -> int:
    """Send frames made by `make(i)` (sealed with the member's keys) until the room cuts the
    connection; returns how many it took. Fails if `limit` frames go through uncut."""
    assert callable(make)
    cuts = len(peer.disconnects)
    for i in range(limit):
        data = seal_as_member(peer, make(i).encode())
        net.room.receive(peer.conn_id or 0, data, net.now)
        net.pump()
        if len(peer.disconnects) > cuts:
            return i + 1
    raise AssertionError(f"{limit} flood frames and no cut")


# ------------------------------------------------------------------------ honest members


def test_says_at_the_rate_limit_at_the_largest_size_are_never_cut() -> None:
    # Two minutes of 32 KiB says at 5 a second is ~20 MB: more than the byte burst, so only
    # the refill keeps this member in. Bob acks every entry, and a quiet minute brings pings.
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    refs = []
    for i in range(int(120 / SAY_EVERY)):
        refs.append(net.say(ana, BIG[:-1] + str(i % 10)))
        if i % 5 == 0:
            net.say(bob, f"short {i}")
        net.tick(SAY_EVERY)
    net.tick(60.0)  # silence: pings and pongs both ways
    assert_never_cut(net, ana, bob)
    assert all(ref in ana.accepted for ref in refs)
    assert not ana.rejected and not bob.rejected
    net.check()


def test_an_ack_for_every_entry_of_a_fast_host_costs_nothing() -> None:
    # The host member is not rate limited: 5000 says at one instant, and the member acks each
    # entry as it arrives (the harness flushes after every message). Acks that retire entries
    # are paced by what the room sent, so they are free of the frame budget (1024).
    net = Net()
    ana = net.join("ana")
    for i in range(5000):
        net.host_say(f"host {i}")
    assert_never_cut(net, ana)
    assert len(ana.texts) == 5000
    net.check()


def test_256_largest_says_re_sent_at_once_after_a_resume_are_never_cut() -> None:
    # The most an honest member can send at once: every unanswered say (MAX_UNACKED_SAYS) at
    # the largest size, re-sent right behind the confirming ack of a resume.
    net = Net()
    ana = net.join("ana")
    ana.hold_out = True  # a partition: the says never reach the room
    for i in range(256):
        net.say(ana, BIG[:-3] + f"{i:03d}")
    net.drop(ana)
    net.resume(ana)
    assert_never_cut(net, ana)
    # 20 fit the rate limit's burst; the rest are refused (rate limited), not fatal.
    assert len(ana.accepted) + len(ana.rejected) == 256
    assert {r.code for r in ana.rejected.values()} <= {"rate-limited"}
    net.check()


def test_refused_frames_below_the_refill_rate_are_never_cut() -> None:
    # A buggy but slow client: 50 refused says a second (half the frame refill) for a minute.
    net = Net()
    ana = net.join("ana")
    flood_ref = 1000

    for _ in range(60 * 50):
        flood_ref += 1
        data = seal_as_member(ana, _frames.Say(ref=flood_ref, text=" ").encode())
        net.room.receive(ana.conn_id or 0, data, net.now)
        net.pump()
        net.tick(1 / 50)
    assert_never_cut(net, ana)


def test_a_member_with_an_empty_budget_can_still_leave() -> None:
    net = Net(config=RoomConfig(inbound_frame_burst=3, inbound_frames_per_sec=0.001))
    ana = net.join("ana")
    for _ in range(3):
        net.room.receive(ana.conn_id or 0, seal_as_member(ana, _frames.Pong().encode()), net.now)
    net.pump()
    assert ana.is_open
    net.leave(ana)
    closes = [d for d in net.raw.get(ana.conn_ids[-1] or 0, []) if isinstance(d, Disconnect)]
    assert [d.code for d in closes] == [CLOSE_NORMAL]
    assert ana.member_id not in {m.id for m in net.room.roster()}


# ------------------------------------------------------------------------ flooders


def _padded_ack(i: int) -> _frames.Frame:
    class Padded(_frames.Frame):
        def to_value(self) -> dict[str, _codec.Value]:
            return {"t": "ack", "seq": 0, "x-pad": "p" * 60000}

    return Padded()


FLOODS = {
    "oversized says": lambda i: _frames.Say(ref=10 + i, text="x" * 65000),
    "duplicate-ref says": lambda i: _frames.Say(ref=1, text="d" * 32000),
    "empty says": lambda i: _frames.Say(ref=10 + i, text=" "),
    "acks that acknowledge nothing": lambda i: _frames.Ack(seq=0),
    "pongs nobody asked for": lambda i: _frames.Pong(),
    "padded acks": _padded_ack,
}


@pytest.mark.parametrize("kind", sorted(FLOODS))
def test_a_flooder_is_cut_off_and_the_room_goes_on(kind: str) -> None:
    make = FLOODS[kind]
    config = RoomConfig()
    # The budget lets through at most its frame burst, or its byte burst in these frames.
    size = len(make(0).encode()) + 16
    most = min(config.inbound_frame_burst, config.inbound_byte_burst // size) + 1
    net = Net(config=config)
    ana, mallory = net.join("ana"), net.join("mallory")
    net.say(mallory, "hello")  # ref 1, which the duplicate flood repeats
    sent = flood(net, mallory, make, limit=most + 50)
    assert most - 2 <= sent <= most
    (cut,) = mallory.disconnects
    assert cut == Disconnect(mallory.conn_ids[-1] or 0, CLOSE_FLOODING, "flooding")
    ended = mallory.last_end()
    assert isinstance(ended, ConnectionEnded) and not ended.resumable
    assert ended.reason == "flooding"
    assert "removed from the room" in ended.message  # the error frame said why
    # The seat is gone, as if the member had left (no 'disconnected' first); the room goes on.
    assert [(e.kind, e.name) for e in ana.entries[-1:]] == [("left", "mallory")]
    assert "mallory" not in [m.name for m in net.room.roster()]
    net.say(ana, "still here")
    net.host_say("me too")
    assert ana.texts[-2:] == ["still here", "me too"]
    assert_never_cut(net, ana)
    net.check([ana])


def test_a_flood_of_refused_says_costs_at_most_the_burst_then_the_refill() -> None:
    # 200 empty says a second: the room takes the burst (1024) plus the refill (100 a second)
    # and cuts the member after about 1024 / (200 - 100) = 10 s.
    net = Net()
    mallory = net.join("mallory")
    start = net.now
    ref = 0
    while not mallory.disconnects:
        ref += 1
        data = seal_as_member(mallory, _frames.Say(ref=ref, text=" ").encode())
        net.room.receive(mallory.conn_id or 0, data, net.now)
        net.pump()
        net.tick(1 / 200)
        assert net.now - start < 60, "never cut"
    assert 9.0 <= net.now - start <= 11.5
    assert flooding_cuts(mallory)


def test_a_flooder_cannot_come_back_by_resuming() -> None:
    net = Net()
    mallory = net.join("mallory")
    state = mallory.mc.resume_state()
    flood(net, mallory, lambda i: _frames.Ack(seq=0), limit=1100)
    net.resume(mallory, state=state)  # its ticket died with the seat
    assert not mallory.is_open
    assert [e.code for e in mallory.current_events() if isinstance(e, Refused)] == [
        "unknown-invite"
    ]


def test_reconnecting_does_not_refill_the_budget() -> None:
    # The budget is the seat's: dropping the connection and resuming at once (which any member
    # may do) buys no fresh frames; only time does (100 a second).
    net = Net()
    mallory = net.join("mallory")
    for _ in range(1000):
        data = seal_as_member(mallory, _frames.Ack(seq=0).encode())
        net.room.receive(mallory.conn_id or 0, data, net.now)
    net.pump()
    assert mallory.is_open
    net.drop(mallory)
    net.resume(mallory)
    assert mallory.is_open
    assert flood(net, mallory, lambda i: _frames.Ack(seq=0), limit=100) == 25
    assert flooding_cuts(mallory)


# ------------------------------------------------------------------------ files (section 26.10)

#: A budget so small that every sharer and receiver of a few MiB would meet it if its chunks
#: and credits were charged: 8 frames and 256 KiB at once, next to nothing a second after.
TIGHT = RoomConfig(
    inbound_frame_burst=8,
    inbound_frames_per_sec=0.01,
    inbound_byte_burst=256 * 1024,
    inbound_bytes_per_sec=64.0,
)
TRANSFERS = {
    # The default budget: a file larger than the byte burst (16 MiB), at a frozen clock.
    "default budget": (RoomConfig(), 20 * 1024 * 1024),
    # 4 MiB is 65 chunks and as many credits: eight times the frame burst.
    "tight budget": (TIGHT, 4 * 1024 * 1024),
}


@pytest.mark.parametrize("drain", ["per batch", "per message"])
@pytest.mark.parametrize("budget", sorted(TRANSFERS))
def test_sharing_and_receiving_a_large_file_at_full_speed_are_never_cut(
    budget: str, drain: str
) -> None:
    # The clock never moves: nothing refills, so only what the room paced itself (the chunks of
    # its pulls, the credits answering the chunks it sent) can carry a file past the bursts.
    # The relay seals several chunks per pull; a receiver's driver may drain its output once
    # they have all been read (one credit for them) or after each (a credit per chunk).
    config, size = TRANSFERS[budget]
    assert size > config.inbound_byte_burst
    if config is TIGHT:
        assert size > 8 * config.inbound_frame_burst * MAX_CHUNK  # chunks, and credits
    net = Net(config=config)
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    ana.drain_each = bob.drain_each = drain == "per message"
    contents = [random.Random(7).randbytes(size)]
    oid = net.offer_of(ana, net.share(ana, contents))
    start = net.now
    x = net.fetch(bob, oid, 0, contents)
    assert net.now == start
    assert x in bob.disk.complete and bytes(bob.disk.received[x]) == contents[0]
    assert_never_cut(net, ana, bob)
    # Both are still in good standing: each can chat on.
    net.say(ana, "done")
    net.say(bob, "thanks")
    assert bob.texts[-2:] == ["done", "thanks"]
    assert_never_cut(net, ana, bob)


def _finished_transfer(net: Net) -> tuple[Peer, Peer, int, int]:
    """Ana shared a small file and bob fetched all of it: the host's pull id and bob's x."""
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [random.Random(8).randbytes(3000)]
    oid = net.offer_of(ana, net.share(ana, contents))
    x = net.fetch(bob, oid, 0, contents)
    (pulled,) = [ev for ev in ana.events if isinstance(ev, ReadRequest)]
    assert x in bob.disk.complete and not net.room.files.transfers()
    return ana, bob, pulled.transfer, x


UNASKED = {
    # A chunk for a transfer that ended is dropped quietly (it may have crossed a cancel on the
    # wire), so it is not an error: only the budget stops a stream of them.
    "a sharer's chunks nobody asked for": "chunk",
    "a receiver's credits for a fetch that ended": "credit",
}


@pytest.mark.parametrize("what", sorted(UNASKED))
def test_file_frames_the_room_did_not_ask_for_are_charged(what: str) -> None:
    net = Net()
    ana, bob, pulled, x = _finished_transfer(net)
    if UNASKED[what] == "chunk":
        mallory, make = ana, lambda i: _frames.Chunk(x=pulled, at=0, data=bytes(1000))
    else:
        mallory, make = bob, lambda i: _frames.Credit(x=x, n=1000)
    # Nothing but its frame burst (1024) goes through: these frames are not paced.
    sent = flood(net, mallory, make, limit=1100)
    assert RoomConfig().inbound_frame_burst - 2 <= sent <= RoomConfig().inbound_frame_burst + 1
    assert flooding_cuts(mallory)
    other = bob if mallory is ana else ana
    assert_never_cut(net, other)


def test_a_paced_chunk_padded_with_unknown_keys_pays_for_the_padding() -> None:
    # Only a paced chunk's data is given back: 1-byte chunks inside the credit, each carrying
    # 60 KB of unknown keys (which the decoder ignores), cost their padding like any frame.
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [random.Random(9).randbytes(1024 * 1024)]
    oid = net.offer_of(ana, net.share(ana, contents))
    ana.disk.auto_read = False  # ana's driver never reads: the pull stays open, at byte 0
    bob.disk.auto_grant = False  # (ana's core, which sends none of these chunks, gets no credit)
    net.fetch(bob, oid, 0, contents)
    ((_, request),) = ana.disk.reads
    pull = request.transfer

    def padded_chunk(i: int) -> _frames.Frame:
        class Padded(_frames.Frame):
            def to_value(self) -> dict[str, _codec.Value]:
                return {"t": "chunk", "x": pull, "at": i, "data": contents[0][i : i + 1],
                        "x-pad": "p" * 60000}

        return Padded()

    assert net.room.files.paced(ana.conn_id or 0, _frames.Chunk(x=pull, at=0, data=b"x"))
    sent = flood(net, ana, padded_chunk, limit=400)
    most = RoomConfig().inbound_byte_burst // 60000
    assert most - 5 <= sent <= most + 1
    assert flooding_cuts(ana)
    assert bytes(bob.disk.received[1]) == contents[0][: sent - 1]  # the paid-for bytes came
    assert_never_cut(net, bob)
