"""An in-process tunnel-mcp server whose connections' managers the test can reach.

`mcp.Client(room.server)` connects to it in process; each connection gets its own
TunnelManager, kept in `room.managers` in the order the connections were made, so a test can
look at a session behind the tools (a holding approval, a member's state).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio
from mcp import Client

from tunnel_mcp.manager import TunnelManager
from tunnel_mcp.server import build_server
from tunnelproto import RoomConfig


class InProcessRoom:
    """One MCP server, in process; its connections' managers stay reachable."""

    def __init__(self, room_config: RoomConfig | None = None) -> None:
        self.managers: list[TunnelManager] = []

        def factory(nursery: trio.Nursery) -> TunnelManager:
            manager = TunnelManager(nursery, display_name=lambda: "default-name", room_config=room_config)
            self.managers.append(manager)
            return manager

        self.server = build_server(factory)

    @asynccontextmanager
    async def clients(self, *settings: dict[str, Any]) -> AsyncIterator[list[Client]]:
        """One connected client per settings dict (keyword arguments of `mcp.Client`)."""
        async with AsyncExitStack() as stack:
            yield [await stack.enter_async_context(Client(self.server, **s)) for s in settings]
