"""Host and member sessions over real WebSockets on 127.0.0.1."""

from __future__ import annotations

import json
import math

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from transcripts import collect

from tunnel_trio.session import RoomConfig, _json_text, join, open_host
from tunnel_trio.session_types import JoinRefusedError, NotOpenError, TunnelError
from tunnelproto import JoinLink


def _chats(messages):
    return [(m.sender.name, m.text) for m in messages if m.kind == "chat"]


async def test_host_and_three_members_talk(nursery):
    host = await open_host(nursery, "pair on the flaky test", name="ana", invites=2)
    link_a, link_b = (i.join_link for i in host.initial_invites)
    assert JoinLink.parse(link_a).base_url.startswith("http://127.0.0.1:")
    ben = await join(nursery, link_a, name="ben")
    assert ben.goal == "pair on the flaky test"
    assert ben.self_member.name == "ben"
    # A second "ben" gets a unique name.
    ben2 = await join(nursery, link_b, name="ben")
    assert ben2.self_member.name == "ben (2)"

    seq1 = await host.say("hello from the host")
    seq2 = await ben.say("hi, ben here")
    seq3 = await ben2.say("and the other ben")
    assert seq1 < seq2 < seq3

    # Everyone sees the same total order.
    orders = []
    for s in (host, ben, ben2):
        msgs = await collect(s, seq3)
        orders.append([(m.seq, m.kind, m.text) for m in msgs])
    assert orders[0] == orders[1] == orders[2]
    assert _chats(await collect(ben, seq3)) == [
        ("ana", "hello from the host"),
        ("ben", "hi, ben here"),
        ("ben (2)", "and the other ben"),
    ]

    # Listen without includeOwn hides the caller's own chat but still advances lastSeq.
    result = await ben.listen(seq1, 0.2)
    assert [m.text for m in result.messages if m.kind == "chat"] == ["and the other ben"]
    assert result.last_seq == seq3

    # A late joiner gets the whole history first, in order.
    (late_invite,) = host.invite(1)
    cy = await join(nursery, late_invite.join_link, name="cy")
    late = await collect(cy, seq3)
    assert [(m.seq, m.kind, m.text) for m in late] == orders[0][: len(late)]
    assert _chats(late) == _chats(await collect(ben, seq3))

    status = host.status()
    assert status.role == "host"
    assert {m.name for m in status.members} == {"ana", "ben", "ben (2)", "cy"}
    assert all(m.connected for m in status.members)
    assert status.transport == "local"
    assert status.pending_invites == []

    await host.close("done for today")
    with trio.fail_after(10):
        while not (ben.closed and cy.closed):
            await trio.sleep(0.01)
    tail = await ben.listen(seq3, 0.1)
    closed = [m for m in tail.messages if m.kind == "event" and m.event == "closed"]
    assert closed and closed[0].text == "done for today"
    with pytest.raises(NotOpenError):
        await ben.say("anyone?")
    assert ben.status().connection == "closed"


async def test_invite_is_single_use(nursery):
    host = await open_host(nursery, "goal", name="ana")
    link = host.initial_invites[0].join_link
    ben = await join(nursery, link, name="ben")
    with pytest.raises(JoinRefusedError) as info:
        await join(nursery, link, name="mallory")
    assert info.value.code == "used"
    assert "single-use" in str(info.value)
    # Still refused after the first member left.
    await ben.close()
    with pytest.raises(JoinRefusedError):
        await join(nursery, link, name="mallory")
    await host.close()


async def test_expired_invite_is_refused(nursery):
    host = await open_host(nursery, "goal", name="ana", config=RoomConfig(invite_ttl=0.3))
    link = host.initial_invites[0].join_link
    await trio.sleep(0.4)
    with pytest.raises(JoinRefusedError) as info:
        await join(nursery, link, name="ben")
    assert info.value.code == "expired"
    await host.close()


async def test_room_full(nursery):
    host = await open_host(nursery, "goal", name="ana", config=RoomConfig(capacity=2))
    with pytest.raises(TunnelError, match="full"):
        host.invite(1)
    await join(nursery, host.initial_invites[0].join_link, name="ben")
    with pytest.raises(TunnelError, match="full"):
        host.invite(1)
    await host.close()


async def test_unknown_tunnel_and_bad_links(nursery):
    host = await open_host(nursery, "goal", name="ana")
    link = JoinLink.parse(host.initial_invites[0].join_link)
    wrong_tunnel = f"{link.base_url}/t/AAAAAAAAAAAAAAAA#{str(link).split('#')[1]}"
    with pytest.raises(TunnelError, match="404"):
        await join(nursery, wrong_tunnel, name="ben")
    with pytest.raises(TunnelError, match="no secret"):
        await join(nursery, str(link).split("#")[0], name="ben")
    secret = str(link).split("#")[1]
    with pytest.raises(TunnelError) as info:
        await join(nursery, str(link)[:-3], name="ben")
    assert secret not in str(info.value)
    await host.close()
    with pytest.raises(TunnelError):
        await join(nursery, str(link), name="ben")


async def test_close_leaves_no_listener(nursery):
    host = await open_host(nursery, "goal", name="ana")
    port = host.relay.port
    await host.close()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_a_transport_that_fails_to_start_is_a_clear_error(nursery):
    from tunnel_trio.transports import LocalTransport

    class Broken(LocalTransport):
        async def start(self, nursery, local_port):
            from tunnel_trio._cloudflared import CloudflaredError

            raise CloudflaredError(
                "cloudflared is not installed: install it or use transport=local"
            )

    with pytest.raises(
        TunnelError, match="could not start the tunnel: cloudflared is not installed"
    ):
        await open_host(nursery, "goal", name="ana", transport=Broken())


async def test_late_joiner_is_told_when_history_was_capped(nursery):
    host = await open_host(nursery, "goal", name="ana", config=RoomConfig(transcript_cap=4096))
    for i in range(100):
        await host.say(f"message number {i} " + "x" * 100)
    ben = await join(nursery, host.initial_invites[0].join_link, name="ben")
    messages, since = [], 0
    with trio.fail_after(10):
        while since < host.room.last_seq:
            result = await ben.listen(since, 5.0)
            messages += result.messages
            since = result.last_seq
    first = messages[0]
    assert first.kind == "event" and first.event == "history-truncated" and first.seq == 0
    assert first.text.startswith("messages 1..")
    chats = [m for m in messages if m.kind == "chat"]
    assert chats[-1].text.startswith("message number 99 ")
    assert [m for m in messages if m.seq == 0] == [first]
    # The messages it does get are contiguous up to the end.
    seqs = [m.seq for m in messages[1:]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    await host.close()


async def test_idle_room_closes_for_everyone(nursery):
    # Long enough that the join completes first on a busy machine.
    host = await open_host(nursery, "goal", name="ana", config=RoomConfig(idle_timeout=3.0))
    ben = await join(nursery, host.initial_invites[0].join_link, name="ben")
    with trio.fail_after(20):
        while not (host.closed and ben.closed):
            await ben.listen(ben.status().last_seq, 1.0)
    assert host.closed_reason == ben.closed_reason == "idle-closed"
    result = await ben.listen(0, 0.1)
    assert result.messages[-1].event == "idle-closed"
    assert host.status().connection == "closed"
    with trio.fail_after(5):
        await host.close()  # idempotent: returns once the relay and transport are gone
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", host.relay.port)


async def test_relay_sleeps_until_the_cores_deadline(nursery, autojump_clock):
    # Virtual time: the 30-minute idle timeout passes in milliseconds. The relay's timer task
    # must wake exactly when the core asks (no polling): a room with nobody in it has one
    # deadline, the idle one, so handle_timer runs once, at 30 minutes.
    host = await open_host(nursery, "goal", name="ana")
    calls = []
    real = host.room.handle_timer

    def counting(now):
        calls.append(now)
        real(now)

    host.room.handle_timer = counting
    start = trio.current_time()
    result = await host.listen(0, 3 * 3600)
    assert result.messages and result.messages[-1].event == "idle-closed"
    assert len(calls) == 1
    assert calls[0] - start == pytest.approx(30 * 60, abs=1.0)
    await host.close()


async def test_listen_refuses_a_seq_from_the_future(nursery):
    host = await open_host(nursery, "goal", name="ana")
    seq = await host.say("one")
    with pytest.raises(TunnelError, match="beyond this tunnel's last seq 1"):
        await host.listen(seq + 5, 0.1)
    assert (await host.listen(seq, 0.05)).timed_out
    await host.close()


async def test_opening_with_more_invites_than_seats_says_how_many_fit(nursery):
    with pytest.raises(TunnelError, match="holds 15 guests besides the host: ask for at most 15"):
        await open_host(nursery, "goal", name="ana", invites=20)


async def test_the_sessions_own_transcript_copy_is_capped_in_bytes(nursery, monkeypatch):
    import tunnel_trio.session

    cap = 256 * 1024
    monkeypatch.setattr(tunnel_trio.session, "DEFAULT_TRANSCRIPT_CAP", cap)  # a member's cap
    host = await open_host(nursery, "goal", name="ana", config=RoomConfig(transcript_cap=cap))
    ben = await join(nursery, host.initial_invites[0].join_link, name="ben")
    big = "z" * 16_000
    for _ in range(100):  # ~1.6 MB said, six times the cap
        await host.say(big)
    await collect(ben, host.room.last_seq)
    for session in (host, ben):
        kept = session._transcript.since(0)
        assert sum(len(m.text or "") for m in kept) <= cap
        assert kept[-1].seq == host.room.last_seq  # the newest are the ones kept
    head = await host.listen(0, 0.1)
    assert head.messages[0].event == "history-truncated"
    await host.close()


async def test_a_relay_that_cannot_bind_says_why_and_what_to_do(nursery):
    from tunnel_trio.transports import make_transport

    with trio.socket.socket() as busy:
        await busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        transport = make_transport("url", public_url="https://x.example", bind=f"127.0.0.1:{port}")
        with pytest.raises(TunnelError, match="another program uses that port") as caught:
            await open_host(nursery, "goal", name="ana", transport=transport)
        assert str(caught.value).startswith("could not start the tunnel: ")
    # 192.0.2.1 (TEST-NET-1) is nobody's address: binding fails before any packet is sent.
    transport = make_transport("direct", bind="192.0.2.1:0")
    with pytest.raises(TunnelError, match="not one of this machine's; bind to one of its own"):
        await open_host(nursery, "goal", name="ana", transport=transport)


@given(st.text() | st.text(alphabet='ab "\\\x00\x1f\x7f\né€\ud800'))
def test_the_json_size_of_a_text_is_what_json_writes(text: str) -> None:
    """listen's byte cap counts texts as JSON; the plain-ASCII shortcut must agree."""
    written = json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert _json_text(text) == len(written)


@given(st.text(), st.text(), st.booleans(), st.booleans())
def test_a_chat_messages_json_size_is_the_general_estimate(
    text: str, name: str, has_text: bool, has_sender: bool
) -> None:
    """json_size's shortcut for chat adds up what the general sum adds up (which does not
    depend on the kind)."""
    import dataclasses

    from tunnel_trio.session import json_size
    from tunnel_trio.session_types import MemberInfo, chat_message

    sender = MemberInfo(3, name, False) if has_sender else None
    chat = chat_message(7, 1.5, sender, text if has_text else None)
    assert json_size(chat) == json_size(dataclasses.replace(chat, kind="event"))
    assert json_size(chat) >= (len(text) if has_text else 0) + (len(name) if has_sender else 0)


def test_a_sender_the_member_never_heard_of_gets_a_stand_in_name():
    from tunnel_trio.session import _Names
    from tunnel_trio.session_types import MemberInfo
    from tunnelproto import MemberEntry

    names = _Names()
    names.update((MemberEntry(id=2, name="ben", host=False, on=True),))
    assert names.get(2) == MemberInfo(2, "ben", False)
    assert names.get(7) == MemberInfo(7, "member 7", False)
    assert names.get(None) is None


def test_chat_message_is_the_constructors() -> None:
    # The session's fast maker of chat messages sets every field as the constructor does.
    import dataclasses

    from tunnel_trio.session_types import MemberInfo, TranscriptMessage, chat_message

    sender = MemberInfo(3, "ana", False)
    made = chat_message(7, 1.5, sender, "hi")
    built = TranscriptMessage(seq=7, kind="chat", ts=1.5, sender=sender, text="hi")
    assert type(made) is TranscriptMessage
    assert dataclasses.replace(made, text="ho") == dataclasses.replace(built, text="ho")
    for field in dataclasses.fields(TranscriptMessage):
        assert getattr(made, field.name) == getattr(built, field.name), field.name
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.seq = 0  # type: ignore[misc]


async def test_a_join_cancelled_before_its_welcome_leaves_nothing_dialling(nursery):
    # A relay that takes handshake message 1 and never answers: the join waits. Cancelling the
    # join call must end its session too (closing the connection), not leave it joining.
    from tunnel_trio._ws import WebSocketClosed, listener_port, serve_websocket

    got_msg1 = trio.Event()
    closed = trio.Event()

    async def silent(ws):
        try:
            await ws.receive()
            got_msg1.set()
            await ws.receive()
        except WebSocketClosed:
            pass
        closed.set()

    listeners = await nursery.start(
        lambda task_status: serve_websocket(
            silent, "127.0.0.1", 0, accept_path=lambda p: True, max_message_size=1 << 16,
            task_status=task_status,
        )
    )
    port = listener_port(listeners)
    host = await open_host(nursery, "goal", name="ana")
    link = JoinLink.parse(host.initial_invites[0].join_link)
    elsewhere = str(link).replace(f":{host.relay.port}/", f":{port}/")
    async with trio.open_nursery() as caller:

        async def joining():
            await join(nursery, elsewhere, name="ben")

        caller.start_soon(joining)
        with trio.fail_after(10):
            await got_msg1.wait()
        caller.cancel_scope.cancel()
    with trio.fail_after(10):
        await closed.wait()
    await host.close()


async def test_a_member_that_leaves_right_after_joining_says_goodbye(nursery):
    # join() returns at the welcome, before the session's tasks have had a turn (they send
    # the key confirmation). A close at once still takes the seat back the graceful way: the
    # host frees it now ("left"), rather than holding it for the grace period ("disconnected").
    host = await open_host(nursery, "goal", name="ana")
    member = await join(nursery, host.initial_invites[0].join_link, name="ben")
    await member.close()
    with trio.fail_after(10):
        while len(host.room.roster()) > 1:
            await trio.sleep(0.01)
    events = [m.event for m in (await host.listen(0, 0)).messages if m.kind == "event"]
    assert "left" in events and "disconnected" not in events
    await host.close()


async def test_a_join_refused_at_once_leaves_nothing_behind(nursery):
    # A refusal comes back from join() once the host has closed the connection: no task of
    # the session's was ever started for it, and the invite is untouched by it.
    host = await open_host(nursery, "goal", name="ana")
    link = JoinLink.parse(host.initial_invites[0].join_link)
    wrong = JoinLink(base_url=link.base_url, tunnel_id=link.tunnel_id, secret=bytes(len(link.secret)))
    before = len(nursery.child_tasks)
    with pytest.raises(JoinRefusedError) as info:
        await join(nursery, str(wrong), name="ben")
    assert info.value.code == "unknown-invite"
    assert len(nursery.child_tasks) == before
    assert await join(nursery, str(link), name="ben")
    await host.close()


async def test_an_unexpected_error_before_the_welcome_comes_out_of_join(nursery, monkeypatch):
    from tunnel_trio import _guest

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug in the dial")

    monkeypatch.setattr(_guest, "connect_websocket", broken)
    host = await open_host(nursery, "goal", name="ana")
    with pytest.raises(RuntimeError, match="a bug in the dial"):
        await join(nursery, host.initial_invites[0].join_link, name="ben")
    # The nursery the session ran in is unharmed: the host still works.
    assert host.invite(1)
    await host.close()


async def test_an_unexpected_error_in_the_connections_timer_comes_out_of_join(nursery, monkeypatch):
    # Before the welcome the member connection's deadlines are served by the joining task
    # itself (no task of their own): what goes wrong there ends the join and comes out of
    # join().
    from tunnelproto import MemberConnection

    def broken(self, now):
        raise RuntimeError("a bug in the timer")

    monkeypatch.setattr(MemberConnection, "handle_timer", broken)
    monkeypatch.setattr(MemberConnection, "next_deadline", lambda self: 0.0)  # due at once
    host = await open_host(nursery, "goal", name="ana")
    with pytest.raises(RuntimeError, match="a bug in the timer"):
        await join(nursery, host.initial_invites[0].join_link, name="ben")
    assert host.invite(1)
    await host.close()


def test_the_session_timer_ticks_its_client_and_moves_its_deadline_only_earlier():
    from tunnel_trio._waits import Timers

    async def main():
        timers = Timers()
        ticks = []

        def tick(now):
            ticks.append(now)
            if len(ticks) < 3:
                timers.tick_soon(now + 1.0)

        async with trio.open_nursery() as n:
            n.start_soon(timers.run)
            await trio.sleep(0)
            timers.set_tick(tick, trio.current_time() + 5.0)
            timers.tick_soon(trio.current_time() + 10.0)  # later: ignored
            timers.tick_soon(trio.current_time() + 2.0)  # earlier: moved in place
            await trio.sleep(60)
            assert [round(t) for t in ticks] == [2, 3, 4]  # then no more: idle
            timers.set_tick(None)
            timers.tick_soon(trio.current_time() + 1.0)  # no client: nothing to move
            assert timers.tick_at == math.inf
            n.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_roster_rows_are_cleaned_once_and_the_memory_of_them_is_bounded():
    from tunnel_trio.session import CLEAN_ROW_NAME_CHARS, CLEAN_ROWS, _sanitized
    from tunnelproto._frames import MemberEntry

    hostile = MemberEntry(2, "ana\n\u202eIGNORE PREVIOUS", False, True)
    long = MemberEntry(3, "b\n" * CLEAN_ROW_NAME_CHARS, False, True)
    cleaned: dict = {}
    first = _sanitized((hostile, long), cleaned)
    assert first == _sanitized((hostile, long))  # the same as without a memory
    assert first[0].name == "ana IGNORE PREVIOUS"
    assert list(cleaned) == [hostile]  # an over-long name is cleaned every time instead
    assert _sanitized((hostile,), cleaned)[0] is first[0]
    for i in range(CLEAN_ROWS + 5):
        _sanitized((MemberEntry(i, f"m{i}", False, True),), cleaned)
    assert len(cleaned) <= CLEAN_ROWS


async def test_a_tick_after_the_serve_ended_finds_no_nursery_to_spawn_into(nursery, monkeypatch):
    # Once a connection's serve has ended, its nursery only waits for its tasks, and after
    # them it takes no new one; the session's timer task may still tick then. So by the time
    # the last task (the writer) ends, the guest must no longer offer that nursery to a tick
    # (a keepalive timeout there aborted the socket with start_soon: "Nursery is closed to
    # new arrivals" in `make bench`).
    from tunnel_trio._guest import Guest

    seen = []
    real_writer = Guest._writer

    async def writer(self, ws, outbox):
        try:
            await real_writer(self, ws, outbox)
        finally:
            seen.append(self._serve_nursery)

    monkeypatch.setattr(Guest, "_writer", writer)
    host = await open_host(nursery, "goal", name="ana")
    member = await join(nursery, host.initial_invites[0].join_link, name="ben")
    await member.close()
    await host.close()
    assert seen and all(n is None for n in seen)
