"""A hand-driven member for tests: the protocol core over a WebSocket, reading only when told.

    ws, conn = await raw_member(link, "ben", caps=("batch/1",))

It joins (handshake, welcome, the confirming ack) and hands back the socket and the core, so a
test can send what a session never would, or hold back reading.
"""

from __future__ import annotations

import trio

from tunnel_trio._ws import WebSocket, connect_websocket
from tunnelproto import MAX_FRAME, JoinLink, MemberConnection, Welcomed


async def raw_member(link: str, name: str, caps: tuple[str, ...] = ()) -> tuple[WebSocket, MemberConnection]:
    """Join `link` as `name`, announcing only `caps`; return the open socket and the core."""
    parsed = JoinLink.parse(link)
    ws = await connect_websocket(parsed.websocket_url, max_message_size=MAX_FRAME)
    conn = MemberConnection(parsed, name, trio.current_time(), caps=caps)
    for data in conn.data_to_send():
        await ws.send(data)
    conn.receive_data(await ws.receive(), trio.current_time())
    assert isinstance(conn.next_event(), Welcomed)
    for data in conn.data_to_send():  # the confirming ack
        await ws.send(data)
    return ws, conn
