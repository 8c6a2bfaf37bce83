"""A seated member that floods the room over real sockets is cut off; the honest member is not.

The room charges every frame a member sends against its seat's inbound budget (spec section 18):
refused and ignored frames too. This is that rule end to end, on 127.0.0.1, with the real relay
and a real member session beside the flooder: the flooder reads everything the host sends (so
the relay's outbound queue is not what stops it) and is still cut off, loses its seat, and
cannot take it back with its resume ticket.
"""

from __future__ import annotations

from typing import Any

import trio

from tunnel_trio._ws import WebSocket, WebSocketClosed, connect_websocket
from tunnel_trio.session import join, open_host
from tunnelproto import (
    CLOSE_FLOODING,
    MAX_FRAME,
    ConnectionEnded,
    JoinLink,
    MemberConnection,
    Refused,
    Welcomed,
)
from tunnelproto import _frames as f

GUARD = 30.0


async def _seat(link: JoinLink) -> tuple[WebSocket, MemberConnection]:
    """A hand-driven member connection: welcomed and confirmed."""
    ws = await connect_websocket(link.websocket_url, max_message_size=MAX_FRAME)
    conn = MemberConnection(link, "mallory", trio.current_time())
    await ws.send_many(conn.data_to_send())
    conn.receive_data(await ws.receive(), trio.current_time())
    assert any(isinstance(e, Welcomed) for e in iter(conn.next_event, None))
    await ws.send_many(conn.data_to_send())  # the confirming ack
    return ws, conn


async def _resume_refusal(link: JoinLink, state: Any) -> str:
    ws = await connect_websocket(link.websocket_url, max_message_size=MAX_FRAME)
    try:
        conn = MemberConnection(link, "mallory", trio.current_time(), resume=state)
        await ws.send_many(conn.data_to_send())
        conn.receive_data(await ws.receive(), trio.current_time())
        (refused,) = [e for e in iter(conn.next_event, None) if isinstance(e, Refused)]
        return refused.code
    finally:
        await ws.aclose()


async def _flood_until_closed(ws: WebSocket, conn: MemberConnection, first_ref: int) -> int:
    """Oversized says (refused as too long), as fast as the socket takes them, while reading
    (and acking) everything, until the host ends the connection. Checks that the host said why
    (`error{flooding}`, then `close{reason: flooding}`) and returns the close code."""
    channel = conn._channel
    assert channel is not None
    code: list[int] = []
    ends: list[ConnectionEnded] = []

    async def read() -> None:
        try:
            while True:
                conn.receive_data(await ws.receive(), trio.current_time())
                ends.extend(e for e in iter(conn.next_event, None) if isinstance(e, ConnectionEnded))
        except WebSocketClosed as exc:
            code.append(exc.code)
            nursery.cancel_scope.cancel()

    async def flood() -> None:
        ref = first_ref
        try:
            while True:
                batch = conn.data_to_send()
                for _ in range(8):  # sealed by hand: the member core refuses texts this long
                    batch.append(channel.seal(f.Say(ref=ref, text="x" * 60000).encode()))
                    ref += 1
                await ws.send_many(batch)
        except WebSocketClosed:
            await trio.sleep_forever()  # the reader reports the code

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(flood)
    # 4010 is the code the room asks for. The relay can lose its close frame, and even the
    # frames before it, when it closes a socket the peer is still filling (the unread flood
    # makes the kernel reset the connection: issue 8, section 5, first bullet, fixed separately
    # in _ws/_host); the peer then sees 1006. Whatever arrived must say why.
    assert code[0] in (CLOSE_FLOODING, 1006), code
    if code[0] == CLOSE_FLOODING:
        assert conn._host_error is not None and conn._host_error.startswith("flooding:")
        assert [(e.reason, e.resumable) for e in ends] == [("flooding", False)]
    else:
        assert [(e.reason, e.resumable) for e in ends] in (
            [("flooding", False)],
            [("connection-lost", True)],
        )
    return code[0]


async def test_a_flooder_is_cut_off_with_4010_and_the_room_goes_on(nursery: trio.Nursery) -> None:
    host = await open_host(nursery, "flood", name="ana", invites=2)
    ben = await join(nursery, host.initial_invites[0].join_link, name="ben")
    link = JoinLink.parse(host.initial_invites[1].join_link)
    ws, conn = await _seat(link)
    said = []

    async def talk() -> None:  # the honest member, at the rate limit's pace, all along
        for i in range(10**6):
            said.append(await ben.say(f"ben {i}"))
            await trio.sleep(0.25)

    async with trio.open_nursery() as honest:
        honest.start_soon(talk)
        state = conn.resume_state()
        assert state is not None
        await _flood_until_closed(ws, conn, 1)
        await ws.aclose()
        # The seat is gone with its tickets: no way back but a new invite.
        assert await _resume_refusal(link, state) == "unknown-invite"
        count = len(said)
        with trio.fail_after(GUARD):
            while len(said) < count + 2:  # ben still talks after both cuts
                await trio.sleep(0.05)
        honest.cancel_scope.cancel()
    assert "mallory" not in [m.name for m in host.status().members]
    ben_seat = host.room._seats[ben.self_member.id]
    assert ben_seat.refused == {}  # none of ben's says was refused
    await ben.close()
    await host.close()
