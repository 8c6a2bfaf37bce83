"""Every tunnel tool, in the order `tools/list` gives them.

Kept apart from server.py so that starting the server does not import them: the tools, their
models and their schemas are loaded once the MCP handshake is answered (`server.load_tools`).
"""

from __future__ import annotations

from tunnel_mcp.chat_tools import tunnel_listen, tunnel_say
from tunnel_mcp.file_tools import tunnel_cancel, tunnel_receive, tunnel_share
from tunnel_mcp.room_tools import (
    tunnel_close,
    tunnel_invite,
    tunnel_join,
    tunnel_open,
    tunnel_remove,
    tunnel_status,
)
from tunnel_mcp.toolkit import Tool

TOOLS: list[Tool] = [
    tunnel_open,
    tunnel_invite,
    tunnel_join,
    tunnel_say,
    tunnel_listen,
    tunnel_share,
    tunnel_receive,
    tunnel_cancel,
    tunnel_status,
    tunnel_remove,
    tunnel_close,
]
