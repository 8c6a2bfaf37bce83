"""batch/1 through the drivers (spec section 8.3): members joined by the session layer batch,
an older member beside them does not, and a stalled member that batches stays bounded."""

from __future__ import annotations

import trio
from rawmember import raw_member
from transcripts import collect

from tunnel_trio.session import RoomConfig, join, open_host
from tunnelproto import (
    BATCH_CAP,
    ChatMessage,
)


async def test_session_members_batch_and_an_older_member_chats_beside_them(nursery):
    host = await open_host(nursery, "batching", name="ana", invites=3)
    links = [i.join_link for i in host.initial_invites]
    ben = await join(nursery, links[0], name="ben")
    cy = await join(nursery, links[1], name="cy")
    ws, old = await raw_member(links[2], "old")  # announces nothing, like an older client
    conns = host.room._conns
    assert ben.guest.conn is not None and ben.guest.conn._channel is not None
    assert ben.guest.conn._channel.batch
    # Every connection past its handshake (the older member's may still be confirming).
    assert sorted(c.batch for c in conns.values()) == [False, True, True]

    async def talk(who, tag: str) -> None:  # type: ignore[no-untyped-def]
        for i in range(15):
            await who.say(f"{tag}{i}")

    async with trio.open_nursery() as inner:
        inner.start_soon(talk, ben, "b")
        inner.start_soon(talk, cy, "c")
        inner.start_soon(talk, host, "h")
    last = host.room.last_seq
    orders = [[(m.seq, m.text) for m in await collect(s, last)] for s in (host, ben, cy)]
    assert orders[0] == orders[1] == orders[2]
    assert len([t for _, t in orders[0] if t and t[0] in "bch"]) == 45

    # The older member reads one frame per transport message (its channel would reject a
    # batch as malformed) and sees the same total order.
    seen: list[tuple[int, str]] = []
    with trio.fail_after(10):
        while not seen or seen[-1][0] < last:
            old.receive_data(await ws.receive(), trio.current_time())
            while (event := old.next_event()) is not None:
                if isinstance(event, ChatMessage):
                    seen.append((event.seq, event.text))
            for data in old.data_to_send():
                await ws.send(data)
    assert old.state.value == "open"
    assert seen == [(s, t) for s, t in orders[0] if t and t[0] in "bch"]
    await ws.aclose()
    await host.close()


async def test_a_stalled_member_with_batch_is_cut_off_and_memory_stays_bounded(nursery):
    config = RoomConfig(window=64 * 1024, stall_timeout=1.0)
    host = await open_host(nursery, "goal", name="ana", invites=2, config=config)
    ws, _conn = await raw_member(host.initial_invites[0].join_link, "sloth", (BATCH_CAP,))
    assert _conn._channel is not None and _conn._channel.batch
    big = "x" * 16_000
    for _ in range(400):  # ~6 MiB, far more than the window or any queue
        await host.say(big)
        await trio.sleep(0)
    assert host.relay.peak_queued_bytes <= host.relay.outbox_limit
    with trio.fail_after(10):
        while {m.name: m.connected for m in host.status().members}["sloth"] is not False:
            await trio.sleep(0.05)
    assert host.relay.queued_bytes() == 0
    await ws.aclose()
    await host.close()


async def test_says_made_in_one_turn_share_a_transport_message(nursery):
    host = await open_host(nursery, "batching", name="ana", invites=1)
    ben = await join(nursery, host.initial_invites[0].join_link, name="ben")
    await ben.say("warm-up")  # seated, and the confirmation traffic is over
    conn_id = next(c.id for c in host.room._conns.values() if c.batch)
    received: list[int] = []
    receive = host.room.receive

    def counting_receive(conn: int, data, now: float) -> None:  # type: ignore[no-untyped-def]
        if conn == conn_id:
            received.append(len(data))
        receive(conn, data, now)

    host.room.receive = counting_receive  # type: ignore[method-assign]
    seqs: list[int] = []

    async def say(i: int) -> None:
        seqs.append(await ben.say(f"pipelined {i}"))

    async with trio.open_nursery() as inner:
        for i in range(20):
            inner.start_soon(say, i)
    assert len(set(seqs)) == 20
    # The first goes at once; the rest, made while it was on its way, go together (one
    # message, or a few when acks or pongs cut in), not one message each.
    assert 2 <= len(received) <= 4, received
    texts = [m.text for m in await collect(host, max(seqs)) if m.kind == "chat"]
    assert sorted(texts[-20:]) == sorted(f"pipelined {i}" for i in range(20))
