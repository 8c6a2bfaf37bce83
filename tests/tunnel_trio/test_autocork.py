"""The relay's autocork (tunnel_trio._host): the host's says made while the process stays busy
go out together (with batch/1 in one transport message per member), a say made after the
process went idle goes out from the say itself, and a host that says one message at a time
is not corked for long."""

from __future__ import annotations

import trio
import trio.testing
from rawmember import raw_member

from tunnel_trio import _host
from tunnel_trio._host import CORK_BACKOFF_MIN, CORK_MAX_DELAY, CORK_MAX_SAYS
from tunnel_trio.session import open_host
from tunnelproto import BATCH_CAP, ChatMessage


async def _read_chats(ws, conn, want: int) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """Read until `want` chat messages came; the chat texts of each transport message."""
    messages: list[list[str]] = []
    got = 0
    with trio.fail_after(10):
        while got < want:
            conn.receive_data(await ws.receive(), trio.current_time())
            texts = []
            while (event := conn.next_event()) is not None:
                if isinstance(event, ChatMessage):
                    texts.append(event.text)
            if texts:
                messages.append(texts)
                got += len(texts)
            for data in conn.data_to_send():
                await ws.send(data)
    return messages


def test_the_idle_wait_is_trios_own() -> None:
    # Taken from trio's core to spare importing trio.testing (which imports pytest).
    assert _host.wait_all_tasks_blocked is trio.testing.wait_all_tasks_blocked


async def test_says_made_while_busy_share_a_transport_message(nursery, autojump_clock):
    host = await open_host(nursery, "cork", name="ana", invites=2)
    ws, conn = await raw_member(host.initial_invites[0].join_link, "ben", (BATCH_CAP,))
    old_ws, old = await raw_member(host.initial_invites[1].join_link, "old")  # no batch/1
    await trio.testing.wait_all_tasks_blocked()
    texts = [f"busy {i}" for i in range(40)]
    for text in texts:
        await host.say(text)
        await trio.sleep(0)  # busy: the host's loop never lets the process go idle
    assert host.relay.held_says == len(texts) - 1  # the first went out at once
    batched = await _read_chats(ws, conn, len(texts))
    assert [t for message in batched for t in message] == texts
    # The first at once, the rest when the process went idle: not one message each.
    assert [len(m) for m in batched] == [1, len(texts) - 1]
    # A member without batch/1 gets them all, one frame per transport message, in order.
    single = await _read_chats(old_ws, old, len(texts))
    assert single == [[t] for t in texts]
    assert host.relay.held_says == 0
    await ws.aclose()
    await old_ws.aclose()
    await host.close()


async def test_a_busy_stream_goes_out_in_bounded_batches(nursery, autojump_clock):
    host = await open_host(nursery, "cork", name="ana", invites=1)
    ws, conn = await raw_member(host.initial_invites[0].join_link, "ben", (BATCH_CAP,))
    await trio.testing.wait_all_tasks_blocked()
    texts = [f"stream {i}" for i in range(3 * CORK_MAX_SAYS)]
    for text in texts:
        await host.say(text)
        assert host.relay.held_says < CORK_MAX_SAYS
        await trio.sleep(0)
    batched = await _read_chats(ws, conn, len(texts))
    assert [t for message in batched for t in message] == texts
    assert [len(m) for m in batched] == [1] + [CORK_MAX_SAYS] * 2 + [CORK_MAX_SAYS - 1]
    await ws.aclose()
    await host.close()


async def test_a_say_after_the_process_went_idle_goes_out_at_once(nursery, autojump_clock):
    host = await open_host(nursery, "cork", name="ana", invites=1)
    ws, conn = await raw_member(host.initial_invites[0].join_link, "ben", (BATCH_CAP,))
    for i in range(5):
        await trio.testing.wait_all_tasks_blocked()
        await host.say(f"lone {i}")
        assert host.relay.held_says == 0  # written by the say itself, nothing left behind
        assert await _read_chats(ws, conn, 1) == [[f"lone {i}"]]
    await ws.aclose()
    await host.close()


async def test_one_message_at_a_time_stops_the_corking(nursery, autojump_clock):
    # A host that says, waits for the member to have it, and says again, all without the
    # process going idle (both ends in one process, as in the bench): the second say is held
    # until the process goes idle, which helped nothing, so the next says go out at once.
    host = await open_host(nursery, "cork", name="ana", invites=1)
    ws, conn = await raw_member(host.initial_invites[0].join_link, "ben", (BATCH_CAP,))
    await trio.testing.wait_all_tasks_blocked()
    await host.say("first")
    assert host.relay.held_says == 0
    assert await _read_chats(ws, conn, 1) == [["first"]]
    await host.say("second")
    assert host.relay.held_says == 1  # no idle since the first went out
    assert await _read_chats(ws, conn, 1) == [["second"]]  # out once the process went idle
    for i in range(CORK_BACKOFF_MIN):
        await host.say(f"next {i}")
        assert host.relay.held_says == 0
        assert await _read_chats(ws, conn, 1) == [[f"next {i}"]]
    await ws.aclose()
    await host.close()


async def test_while_the_process_stays_busy_held_says_wait_at_most_the_cork_delay(
    nursery, autojump_clock
):
    host = await open_host(nursery, "cork", name="ana", invites=1)
    ws, conn = await raw_member(host.initial_invites[0].join_link, "ben", (BATCH_CAP,))
    await trio.testing.wait_all_tasks_blocked()
    await host.say("first")
    await host.say("second")
    assert host.relay.held_says == 1
    for _ in range(20):  # busy, but no time passes: it stays held
        await trio.sleep(0)
    assert host.relay.held_says == 1
    autojump_clock.jump(CORK_MAX_DELAY)
    for _ in range(3):  # still busy: the cork's deadline passed, so it goes out anyway
        await trio.sleep(0)
    assert host.relay.held_says == 0
    await host.say("third")  # the process never went idle: the stretch goes on
    assert host.relay.held_says == 1
    batched = await _read_chats(ws, conn, 3)
    assert batched == [["first"], ["second"], ["third"]]
    await ws.aclose()
    await host.close()


async def test_a_members_ack_leaves_the_held_says_held(nursery, autojump_clock):
    # An ack makes no output of its own (Room.other_output stays clear): the says held when it
    # arrives stay held for the rest of the stretch, rather than going out early, one or two.
    host = await open_host(nursery, "cork", name="ana", invites=1)
    ws, conn = await raw_member(host.initial_invites[0].join_link, "ben")  # acks at once
    await trio.testing.wait_all_tasks_blocked()
    await host.say("zero")
    assert await _read_chats_keeping_acks(ws, conn) == ["zero"]
    ack = conn.data_to_send()
    assert ack  # the ack of "zero", not sent yet
    await trio.sleep(1)  # idle: the stretch after "zero" ended
    await host.say("one")  # out at once; a stretch begins
    await host.say("two")
    assert host.relay.held_says == 1
    (member,) = [c for c in host.room._conns.values()]
    inflight = len(member.inflight)
    await ws.send_many(ack)
    for _ in range(50):  # busy (no time passes) until the relay has read the ack
        if len(member.inflight) < inflight:
            break
        await trio.sleep(0)
    assert len(member.inflight) < inflight
    assert host.relay.held_says == 1  # still held: the ack sent nothing of its own
    # A message that does make output (the member's say: its entry, its ack) takes it along.
    conn.say("three")
    await ws.send_many(conn.data_to_send())
    for _ in range(50):
        if host.relay.held_says == 0:
            break
        await trio.sleep(0)
    assert host.relay.held_says == 0
    assert [t for m in await _read_chats(ws, conn, 3) for t in m] == ["one", "two", "three"]
    await ws.aclose()
    await host.close()


async def _read_chats_keeping_acks(ws, conn) -> list[str]:  # type: ignore[no-untyped-def]
    """Read until chat comes; its texts. What the member would answer stays queued."""
    texts: list[str] = []
    with trio.fail_after(10):
        while not texts:
            conn.receive_data(await ws.receive(), trio.current_time())
            while (event := conn.next_event()) is not None:
                if isinstance(event, ChatMessage):
                    texts.append(event.text)
    return texts
