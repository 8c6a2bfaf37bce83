"""A member the host turns away before its welcome learns why, and tries again when it may.

The relay's refusals are close codes (spec section 20): 4009 when too many connections are in
the handshake, 4002 when one took too long, 4000 when the room closed; and HTTP 503 when the
relay itself holds too many connections. A join turned away as busy (4009, 4002, 503) tries
again for a while; otherwise, or once that runs out, its error says what the host said, never
just "the connection dropped".
"""

from __future__ import annotations

import logging

import pytest
import trio

from tunnel_trio import _guest
from tunnel_trio._ws import WebSocket, connect_websocket, listener_port, serve_websocket
from tunnel_trio.session import RoomConfig, join, open_host
from tunnel_trio.session_types import TunnelError
from tunnelproto import MAX_FRAME, JoinLink, MemberConnection

GUARD = 30.0


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_guest, "BACKOFF_MIN", 0.05)
    monkeypatch.setattr(_guest, "BACKOFF_MAX", 0.2)
    monkeypatch.delenv("TUNNEL_CONNECT_TO", raising=False)
    monkeypatch.setenv("TUNNEL_DOH", "off")


async def hold_the_only_slot(invite_link: str) -> WebSocket:
    """Message 1 with a real invite, and never the confirming ack: a connection in
    CONFIRMING, which is never pushed out to make room."""
    link = JoinLink.parse(invite_link)
    ws = await connect_websocket(link.websocket_url, max_message_size=MAX_FRAME)
    member = MemberConnection(link, "holder", trio.current_time())
    await ws.send_many(member.data_to_send())
    await ws.receive()  # the welcome: the room is waiting for our ack now
    return ws


async def test_a_join_turned_away_as_busy_tries_again_and_gets_in(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunnel_trio.guest")
    host = await open_host(
        nursery,
        "goal",
        name="ana",
        invites=2,
        config=RoomConfig(max_pending=1, handshake_timeout=2.0),
    )
    holder = await hold_the_only_slot(host.initial_invites[1].join_link)
    with trio.fail_after(GUARD):
        ben = await join(nursery, host.initial_invites[0].join_link, name="ben")
    seq = await ben.say("in after all")
    assert seq > 0
    turned_away = [r.getMessage() for r in caplog.records if "join turned away" in r.getMessage()]
    assert turned_away, "the first attempts should have met a busy host"
    assert "the host is busy" in turned_away[0] and "close code 4009" in turned_away[0]
    await holder.aclose()


async def test_a_join_that_stays_busy_says_so(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_guest, "JOIN_RETRY_BUDGET", 1.0)
    host = await open_host(
        nursery, "goal", name="ana", invites=2, config=RoomConfig(max_pending=1)
    )
    holder = await hold_the_only_slot(host.initial_invites[1].join_link)
    with trio.fail_after(GUARD), pytest.raises(TunnelError) as failed:
        await join(nursery, host.initial_invites[0].join_link, name="ben")
    message = str(failed.value)
    assert "the host is busy: too many connections are being set up at once" in message
    assert "(close code 4009)" in message
    assert "the connection dropped" not in message
    await holder.aclose()


async def start_relay(nursery: trio.Nursery, handler) -> str:
    """A relay for one tunnel id that runs `handler` on every upgraded connection."""
    link = JoinLink("http://127.0.0.1:1", "A" * 16, b"\x01" * 32)
    listeners = await nursery.start(
        lambda task_status: serve_websocket(
            handler,
            "127.0.0.1",
            0,
            accept_path=lambda path: path == f"/t/{link.tunnel_id}",
            max_message_size=MAX_FRAME,
            task_status=task_status,
        )
    )
    port = listener_port(listeners)
    return str(JoinLink(f"http://127.0.0.1:{port}", link.tunnel_id, link.secret))


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (4000, "the room has closed (close code 4000)"),
        (4001, "the host found our handshake malformed (close code 4001)"),
        (4002, "the host gave up waiting for our handshake (close code 4002)"),
        (4009, "the host is busy: too many connections are being set up at once"),
    ],
)
async def test_a_close_before_the_welcome_is_explained(
    code: int, says: str, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_guest, "JOIN_RETRY_BUDGET", 0.5)
    attempts = 0

    async def close_with_code(ws: WebSocket) -> None:
        nonlocal attempts
        attempts += 1
        await ws.receive()  # message 1
        await ws.close(code, "as the spec says")

    link = await start_relay(nursery, close_with_code)
    with trio.fail_after(GUARD), pytest.raises(TunnelError) as failed:
        await join(nursery, link, name="ben")
    assert says in str(failed.value)
    # Busy (4009) and slow (4002) are worth another try; the others are not.
    if code in (4002, 4009):
        assert attempts > 1
    else:
        assert attempts == 1


async def test_a_relay_answering_503_is_busy_not_broken(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_guest, "JOIN_RETRY_BUDGET", 0.5)
    attempts = 0

    async def busy(stream: trio.SocketStream) -> None:
        nonlocal attempts
        attempts += 1
        await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, busy, listeners)
    link = JoinLink(f"http://127.0.0.1:{listener_port(listeners)}", "A" * 16, b"\x01" * 32)
    with trio.fail_after(GUARD), pytest.raises(TunnelError) as failed:
        await join(nursery, str(link), name="ben")
    assert "the host is busy: too many connections at once (HTTP 503)" in str(failed.value)
    assert attempts > 1
