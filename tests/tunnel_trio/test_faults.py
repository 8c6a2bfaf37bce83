"""Fault injection over real sockets: dropped TCP connections, stalled readers, bad peers."""

from __future__ import annotations

import os

import pytest
import trio
from dropproxy import DropProxy
from rawmember import raw_member
from transcripts import collect

import tunnel_trio.session as session_module
from tunnel_trio._ws import WebSocketClosed, connect_websocket
from tunnel_trio.session import RoomConfig, join, open_host
from tunnel_trio.session_types import SayQueuedError
from tunnelproto import (
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_PROTOCOL_ERROR,
    MAX_FRAME,
    JoinLink,
    MemberConnection,
)


def _via(link: str, port: int) -> str:
    parsed = JoinLink.parse(link)
    return str(JoinLink(f"http://127.0.0.1:{port}", parsed.tunnel_id, parsed.secret))


async def test_drops_mid_stream_lose_nothing(nursery):
    host = await open_host(nursery, "survive drops", name="ana", invites=2)
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)
    flaky = await join(nursery, _via(host.initial_invites[0].join_link, proxy.port), name="flo")
    steady = await join(nursery, host.initial_invites[1].join_link, name="stu")
    flaky_id = flaky.self_member.id

    sent_by_flaky = []

    async def flaky_talks():
        for i in range(30):
            text = f"flo {i}"
            await flaky.say(text)  # waits through reconnects: never lost, never doubled
            sent_by_flaky.append(text)

    async with trio.open_nursery() as inner:
        inner.start_soon(flaky_talks)
        for i in range(120):
            await host.say(f"host {i}")
            if i % 30 == 15:
                with trio.fail_after(30):  # cut only a live connection, mid-stream
                    while flaky.status().connection != "connected" or not proxy._scopes:
                        await trio.sleep(0.01)
                proxy.drop_all()
            await trio.sleep(0.005)
    last = host.room.last_seq
    assert proxy.drops >= 4

    reference = await collect(host, last)
    assert [m.seq for m in reference] == list(range(1, last + 1))
    for member in (flaky, steady):
        seen = await collect(member, last)
        assert [m.seq for m in seen] == list(range(1, last + 1)), "gap or duplicate"
        assert [(m.kind, m.text, m.event) for m in seen] == [
            (m.kind, m.text, m.event) for m in reference
        ]
    chats = [m.text for m in reference if m.kind == "chat"]
    assert [t for t in chats if t.startswith("host ")] == [f"host {i}" for i in range(120)]
    assert [t for t in chats if t.startswith("flo ")] == [f"flo {i}" for i in range(30)]
    events = [(m.event, m.subject.id) for m in reference if m.kind == "event" and m.subject]
    assert ("disconnected", flaky_id) in events and ("reconnected", flaky_id) in events
    # The seat and the name survived.
    assert flaky.self_member.id == flaky_id and flaky.self_member.name == "flo"
    assert flaky.status().connection == "connected"
    await host.close()


async def test_a_vanished_host_shows_as_down_with_the_time_left_then_closes_with_a_reason(nursery):
    host = await open_host(nursery, "goal", name="ana")
    ben = await join(nursery, host.initial_invites[0].join_link, name="ben")
    ben.guest._resume_budget = 3.0
    assert all(m.connected for m in ben.status().members)
    host._scope.cancel()  # the host process vanished without closing the room
    with trio.fail_after(15):
        while ben.status().connection != "reconnecting":
            await trio.sleep(0.05)
    status = ben.status()
    # How long it keeps trying, and nobody shown as connected while the link is down.
    assert status.gives_up_in_sec is not None and 0 <= status.gives_up_in_sec <= 3
    assert [m.connected for m in status.members] == [False, False]
    assert any("reconnecting" in w and "tunnel closes" in w for w in status.warnings)
    with trio.fail_after(15):
        while not ben.closed:
            await ben.listen(ben.status().last_seq, 1.0)
    status = ben.status()
    assert status.connection == "closed" and status.gives_up_in_sec is None
    # Its port refuses connections now: the host's server stopped (not "unreachable").
    assert ben.closed_reason == "host-stopped"
    final = (await ben.listen(status.last_seq, 0.0)).messages
    assert [(m.seq, m.event) for m in final] == [(0, "closed")]
    assert "server has stopped" in (final[0].reason or "")
    assert "3 s" in (final[0].reason or "")
    assert (await ben.listen(status.last_seq, 0.0)).messages == final  # every time, not once


async def test_a_host_behind_a_black_hole_is_reported_unreachable(nursery):
    host = await open_host(nursery, "goal", name="ana")
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)
    ben = await join(nursery, _via(host.initial_invites[0].join_link, proxy.port), name="ben")
    ben.guest._resume_budget = 3.0
    ben.guest._connect_timeout = 1.0
    proxy.blackhole = True  # new connections are accepted and never answered
    proxy.drop_all()
    with trio.fail_after(15):
        while not ben.closed:
            await ben.listen(ben.status().last_seq, 1.0)
    assert ben.closed_reason == "host-unreachable"
    final = (await ben.listen(ben.status().last_seq, 0.0)).messages[-1]
    assert final.event == "closed" and "could not be reached" in (final.reason or "")
    await host.close()


async def test_an_ordinary_drop_is_redialled_at_once(nursery, monkeypatch):
    import tunnel_trio._guest as guest_module

    # A backoff this long would make any wait before the first redial obvious; a connection
    # that stayed up past STABLE_AFTER dropped the ordinary way and is redialled at once.
    monkeypatch.setattr(guest_module, "BACKOFF_MIN", 60.0)
    monkeypatch.setattr(guest_module, "STABLE_AFTER", 0.2)
    host = await open_host(nursery, "goal", name="ana")
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)
    ben = await join(nursery, _via(host.initial_invites[0].join_link, proxy.port), name="ben")
    for _ in range(3):
        await trio.sleep(0.5)  # up for longer than STABLE_AFTER
        before = ben.guest.conn
        proxy.drop_all()
        with trio.fail_after(20):
            while ben.guest.conn is before or ben.status().connection != "connected":
                await trio.sleep(0.01)
    assert proxy.drops == 3
    seq = await ben.say("back")
    assert (await collect(host, seq))[-1].text == "back"
    await host.close()


async def _seated(nursery, host, proxy, name):
    """A member joined through `proxy`, once the host has seated it (its confirmation arrived:
    a partition before that would make its resume a fresh join)."""
    member = await join(nursery, _via(host.initial_invites[0].join_link, proxy.port), name=name)
    with trio.fail_after(10):
        while not any(m.name == name and m.connected for m in host.status().members):
            await trio.sleep(0.01)
    return member


async def test_a_say_during_a_partition_is_queued_then_delivered_exactly_once(
    nursery, monkeypatch
):
    monkeypatch.setattr(session_module, "SAY_TIMEOUT", 1.0)
    host = await open_host(nursery, "goal", name="ana")
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)
    ben = await _seated(nursery, host, proxy, "ben")
    proxy.blackhole = True  # a partition: everything is lost, nothing is closed
    receipt = await ben.send("said during the partition", wait=1.0)
    # Not "failed, try again": it is queued, and will go out once the connection is back.
    assert receipt.queued and receipt.seq is None
    status = ben.status()
    assert status.queued_says == 1 and any("queued" in w for w in status.warnings)
    with pytest.raises(SayQueuedError, match="do not send it again"):
        await ben.say("a second one")  # say() too reports it queued, not failed
    proxy.blackhole = False
    proxy.drop_all()  # the partition ends; the stale connection is cut
    with trio.fail_after(20):
        while ben.status().queued_says:
            await ben.listen(ben.status().last_seq, 1.0)
    seen = await collect(host, host.room.last_seq)
    said = [m.text for m in seen if m.kind == "chat"]
    assert said == ["said during the partition", "a second one"]
    assert not [m for m in (await ben.listen(0, 0.0)).messages if m.event == "undelivered"]
    await host.close()


async def test_a_queued_say_that_cannot_be_delivered_is_reported(nursery):
    host = await open_host(nursery, "goal", name="ana")
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)
    ben = await _seated(nursery, host, proxy, "ben")
    ben.guest._resume_budget = 2.0
    ben.guest._connect_timeout = 1.0
    proxy.blackhole = True
    assert (await ben.send("lost in the void", wait=1.0)).queued
    proxy.drop_all()  # the member reconnects into the black hole and gives up
    with trio.fail_after(20):
        while not ben.closed:
            await trio.sleep(0.05)  # (a listen here would take the notice)
    got = (await ben.listen(ben.status().last_seq, 0.0)).messages
    assert [(m.event, m.text) for m in got] == [
        ("undelivered", "lost in the void"),
        ("closed", None),
    ]
    assert "may or may not" in (got[0].reason or "")
    assert ben.status().queued_says == 0
    await host.close()


async def test_stalled_reader_is_cut_off_and_memory_stays_bounded(nursery):
    config = RoomConfig(window=64 * 1024, stall_timeout=1.0)
    host = await open_host(nursery, "goal", name="ana", invites=2, config=config)
    ws, _conn = await raw_member(host.initial_invites[0].join_link, "sloth")
    ok = await join(nursery, host.initial_invites[1].join_link, name="ok")
    big = "x" * 16_000
    for _ in range(400):  # ~6 MiB, far more than the window or any queue
        await host.say(big)
        await trio.sleep(0)
    assert host.relay.peak_queued_bytes <= host.relay.outbox_limit
    with trio.fail_after(10):
        while True:
            roster = {m.name: m.connected for m in host.status().members}
            if roster["sloth"] is False:
                break
            await trio.sleep(0.05)
    # The reader that kept up got everything.
    seen = await collect(ok, host.room.last_seq)
    assert sum(1 for m in seen if m.kind == "chat") == 400
    await ws.aclose()
    await host.close()


async def test_a_cut_off_reader_loses_its_socket_and_queue(nursery):
    # Default window (1 MiB) and a member whose receive buffer is tiny: the relay's writer
    # blocks in send, so only a bounded close can free the socket and its queued bytes.
    import socket

    host = await open_host(nursery, "goal", name="ana", config=RoomConfig(stall_timeout=1.0))
    ws, _conn = await raw_member(host.initial_invites[0].join_link, "sloth")
    ws._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for _ in range(200):
        await host.say("y" * 16_000)
    with trio.fail_after(15):
        while any(m.name == "sloth" and m.connected for m in host.status().members):
            await trio.sleep(0.05)
        while host.relay._outboxes:  # the connection task ended: socket closed, queue freed
            await trio.sleep(0.05)
    await ws.aclose()
    await host.close()


async def test_preauth_timeout(nursery):
    # The same deadline also bounds the HTTP upgrade: long enough for that on a busy machine.
    host = await open_host(nursery, "goal", name="ana", config=RoomConfig(handshake_timeout=2.0))
    link = JoinLink.parse(host.initial_invites[0].join_link)
    ws = await connect_websocket(link.websocket_url, max_message_size=MAX_FRAME)
    with trio.fail_after(10):
        try:
            await ws.receive()
        except WebSocketClosed as exc:
            assert exc.code == CLOSE_HANDSHAKE_TIMEOUT
        else:
            raise AssertionError("expected the relay to close the idle connection")
    await host.close()


async def test_http_404_for_other_paths(nursery):
    host = await open_host(nursery, "goal", name="ana")
    stream = await trio.open_tcp_stream("127.0.0.1", host.relay.port)
    await stream.send_all(b"GET /t/not-this-one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    with trio.fail_after(5):
        async for chunk in stream:
            data += chunk
    assert data.startswith(b"HTTP/1.1 404")
    await stream.aclose()
    await host.close()


async def test_oversized_message_is_rejected(nursery):
    host = await open_host(nursery, "goal", name="ana")
    link = JoinLink.parse(host.initial_invites[0].join_link)
    ws = await connect_websocket(link.websocket_url, max_message_size=10 * MAX_FRAME)
    await ws.send(b"\0" * (MAX_FRAME + 1))
    with trio.fail_after(5):
        try:
            await ws.receive()
        except WebSocketClosed as exc:
            assert exc.code == 1009
        else:
            raise AssertionError("expected close 1009")
    await host.close()


async def test_garbage_after_handshake_kills_only_that_connection(nursery):
    host = await open_host(nursery, "goal", name="ana", invites=2)
    ws, _conn = await raw_member(host.initial_invites[0].join_link, "mallory")
    ben = await join(nursery, host.initial_invites[1].join_link, name="ben")
    await ws.send(os.urandom(200))
    codes = []
    with trio.fail_after(5):
        try:
            while True:
                await ws.receive()
        except WebSocketClosed as exc:
            codes.append(exc.code)
    assert codes == [CLOSE_PROTOCOL_ERROR]
    seq = await ben.say("still here")
    seen = await collect(host, seq)
    assert seen[-1].text == "still here"
    await host.close()


async def test_idle_connections_at_the_pending_cap_give_way_to_a_member(nursery):
    from tunnelproto import CLOSE_TOO_MANY_PENDING

    host = await open_host(nursery, "goal", name="ana", config=RoomConfig(max_pending=3))
    link = JoinLink.parse(host.initial_invites[0].join_link)
    idle = [
        await connect_websocket(link.websocket_url, max_message_size=MAX_FRAME) for _ in range(3)
    ]
    # A fourth arrival pushes out the oldest idle one, which hears why.
    extra = await connect_websocket(link.websocket_url, max_message_size=MAX_FRAME)
    with trio.fail_after(5):
        try:
            await idle[0].receive()
        except WebSocketClosed as exc:
            assert exc.code == CLOSE_TOO_MANY_PENDING
        else:
            raise AssertionError("expected the oldest pending connection to be closed")
    # The real member gets in while the other idle ones still hold their slots.
    with trio.fail_after(5):
        ben = await join(nursery, str(link), name="ben")
    seq = await ben.say("made it")
    assert (await collect(host, seq))[-1].text == "made it"
    for ws in idle[1:] + [extra]:
        await ws.aclose()
    await host.close()


async def test_join_retries_while_a_dead_attempt_still_holds_the_invite(nursery):
    host = await open_host(nursery, "goal", name="ana")
    link = JoinLink.parse(host.initial_invites[0].join_link)
    # A first attempt got as far as the welcome, then its network died before it confirmed.
    ws = await connect_websocket(link.websocket_url, max_message_size=MAX_FRAME)
    ghost = MemberConnection(link, "ghost", trio.current_time())
    for data in ghost.data_to_send():
        await ws.send(data)
    await ws.receive()

    async def connection_dies_later():
        await trio.sleep(1.0)
        await ws.aclose()

    nursery.start_soon(connection_dies_later)
    ben = await join(nursery, str(link), name="ben")  # refused "in-use" at first, then admitted
    assert ben.self_member.name == "ben"
    joined = await host.listen(0, 5.0)  # the host seats ben when his confirmation arrives
    assert [(m.event, m.subject.name) for m in joined.messages] == [("joined", "ben")]
    assert [m.name for m in host.status().members] == ["ana", "ben"]
    await host.close()


async def test_a_lost_first_confirmation_ends_in_a_fresh_join_even_through_more_drops(nursery):
    # The member got its welcome, but its confirming ack never reached the room (so the room
    # never seated it and its ticket is unknown). Resuming is refused as unknown; the member
    # joins afresh with its link, and when that attempt too drops before its welcome, it tries
    # again rather than giving up.
    host = await open_host(nursery, "goal", name="ana")
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)
    real_receive = host.room.receive
    seen: dict[int, int] = {}
    plan = {"swallow_first_confirm": True, "drop_fresh_join": True}

    def receive(conn, data, now):
        seen[conn] = seen.get(conn, 0) + 1
        if conn == 1 and seen[conn] == 2 and plan.pop("swallow_first_confirm", False):
            proxy.drop_all()  # the ack is lost with the connection
            return
        if conn >= 3 and seen[conn] == 1 and data[0] == 1 and len(plan) == 1:
            # The first handshake after the refused resume: the fresh join. Cut it before the
            # welcome can reach the member.
            plan.pop("drop_fresh_join")
            proxy.drop_all()
            return
        real_receive(conn, data, now)

    host.room.receive = receive
    ben = await join(nursery, _via(host.initial_invites[0].join_link, proxy.port), name="ben")
    with trio.fail_after(20):
        while ben.status().connection != "connected" or plan:
            await trio.sleep(0.05)
        joined = [m for m in (await host.listen(0, 5.0)).messages if m.event == "joined"]
    assert [m.subject.name for m in joined] == ["ben"]
    seq = await ben.say("made it")
    assert (await collect(host, seq))[-1].text == "made it"
    assert not ben.closed
    await host.close()


async def test_a_partitioned_member_notices_no_later_than_the_host(nursery, autojump_clock):
    # Virtual time: a partition (everything lost, nothing closed) while the host keeps talking.
    # The host notices by its stall timer (30 s); the member must not go on saying "connected"
    # after that (it used to, until its own 60 s keepalive ran out).
    host = await open_host(nursery, "goal", name="ana")
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)
    ben = await _seated(nursery, host, proxy, "ben")
    start = trio.current_time()
    proxy.blackhole = True

    async def host_talks():
        while True:
            await host.say("anyone?")
            await trio.sleep(5)

    nursery.start_soon(host_talks)
    noticed: dict[str, float] = {}
    with trio.fail_after(600):
        while len(noticed) < 2:
            now = trio.current_time() - start
            if ben.status().connection != "connected":
                noticed.setdefault("member", now)
            if not any(m.name == "ben" and m.connected for m in host.status().members):
                noticed.setdefault("host", now)
            await trio.sleep(0.5)
    assert noticed["member"] <= noticed["host"], noticed
    assert 20 <= noticed["member"] <= 31, noticed
    await host.close()
