"""Who closes first (spec section 20): the host. The member waits for the host's close.

After a refusal, a `close` frame from the host, or its own `close` frame, a member sends nothing
more and waits for the host to close the WebSocket, so that the close code it learns is the
host's. A hand-written host checks that the member does not close first.
"""

from __future__ import annotations

import os
from functools import partial

import pytest
import trio

from tunnel_trio._ws import WebSocket, WebSocketClosed, listener_port, serve_websocket
from tunnel_trio.session import join
from tunnel_trio.session_types import TunnelError
from tunnelproto import MAX_FRAME, JoinLink
from tunnelproto import _frames as f
from tunnelproto._channel import MSG2_NOISE, Channel, new_handshake, split_msg1
from tunnelproto._link import b64url

GUARD = 20.0
#: How long the host watches for a close the member must not send. Not a speed bound: a member
#: that closes first does so right behind its last frame; this only has to be shorter than the
#: member's own wait for the host (2 s).
WATCH = 1.0


class Host:
    """Answers one handshake, then plays `how` ("leave": the member leaves; "refuse": the
    host refuses), recording whether the member closed the WebSocket before the host did."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.tunnel_id = b64url(os.urandom(12))
        self.secret = os.urandom(32)
        self.port = 0
        self.member_closed_first: bool | None = None
        self.done = trio.Event()

    @property
    def link(self) -> str:
        return str(JoinLink(f"http://127.0.0.1:{self.port}", self.tunnel_id, self.secret))

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(
            partial(
                serve_websocket,
                self._handle,
                "127.0.0.1",
                0,
                accept_path=lambda path: path == f"/t/{self.tunnel_id}",
                max_message_size=MAX_FRAME,
            )
        )
        self.port = listener_port(listeners)

    async def _watch_for_member_close(self, ws: WebSocket, channel: Channel | None) -> None:
        with trio.move_on_after(WATCH):
            try:
                while True:
                    data = await ws.receive()
                    assert channel is None or channel.open(data) is not None
            except WebSocketClosed:
                self.member_closed_first = True
                return
        self.member_closed_first = False

    async def _handle(self, ws: WebSocket) -> None:
        link = JoinLink.parse(self.link)
        _, _, noise = split_msg1(await ws.receive())
        hs = new_handshake(initiator=False, tunnel_id=self.tunnel_id, psk=link.psk, rng=os.urandom)
        hello = f.decode_frame(hs.read_message(noise))
        assert isinstance(hello, f.Hello)
        if self.how == "refuse":
            refusal = f.Refuse(code="room-full", msg="the room is full: ask the host to make room")
            await ws.send(bytes([MSG2_NOISE]) + hs.write_message(refusal.encode()))
            await self._watch_for_member_close(ws, None)
            await ws.close(4008, "room-full")
            self.done.set()
            return
        welcome = f.Welcome(
            goal="closing order", you=2, name=hello.name,
            roster=(f.MemberEntry(1, "ana", True, True), f.MemberEntry(2, hello.name, False, True)),
            last=0, first=1, ticket=os.urandom(32), resumed=False, limits={},
        )
        await ws.send(bytes([MSG2_NOISE]) + hs.write_message(welcome.encode()))
        channel = Channel(*hs.split())
        while not isinstance(channel.open(await ws.receive()), f.Close):
            pass  # the confirming ack, then whatever comes before the member's close
        await self._watch_for_member_close(ws, channel)
        if not self.member_closed_first:
            await ws.send(channel.seal(f.Close(reason="left").encode()))
            await ws.close(1000, "left")
        self.done.set()


async def test_a_leaving_member_waits_for_the_host_to_close(nursery: trio.Nursery) -> None:
    host = Host("leave")
    await host.start(nursery)
    with trio.fail_after(GUARD):
        session = await join(nursery, host.link, name="ben")
        await session.close()
        await host.done.wait()
    assert host.member_closed_first is False
    assert session.status().connection == "closed"


async def test_a_refused_member_waits_for_the_host_to_close(nursery: trio.Nursery) -> None:
    host = Host("refuse")
    await host.start(nursery)
    with trio.fail_after(GUARD):
        with pytest.raises(TunnelError, match="full"):
            await join(nursery, host.link, name="ben")
        await host.done.wait()
    assert host.member_closed_first is False
