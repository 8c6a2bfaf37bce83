"""Tool results leave the server as mappings written directly (no model built, no deep copy by
the SDK): the same wire form the SDK gives the equal `CallToolResult`."""

from __future__ import annotations

import pytest
from mcp.types import CallToolResult, TextContent

from tunnel_mcp.models import ListenResult, Member, Message
from tunnel_mcp.toolkit import ToolResult, _error, _ok


def _page() -> ListenResult:
    sender = Member(id=2, name="bob", is_host=False)
    messages = [Message(seq=n, kind="chat", text=f"hi {n}", sender=sender, ts=1.0) for n in range(3)]
    return ListenResult(messages=messages, last_seq=3, timed_out=False, status="connected")


def _sdk_dump(result: ToolResult) -> dict[str, object]:
    """How the SDK dumps the equal result model, had a handler returned one (mcp.server.runner)."""
    model = CallToolResult(
        content=[TextContent(type="text", text=result.text)],
        structured_content=result.structured_content,
        is_error=result.is_error,
    )
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


@pytest.mark.parametrize(
    "result",
    [
        _ok(_page(), "3 new"),
        _error("tunnel_say: no open tunnel"),
        ToolResult("failed", {"a": None}, is_error=True),
        ToolResult("x", {}),
    ],
)
def test_a_tool_result_has_the_wire_form_the_sdk_would_give_it(result: ToolResult) -> None:
    assert result.wire() == _sdk_dump(result)
