"""Tool results leave the server as mappings (no deep copy by the SDK): the same wire form."""

from __future__ import annotations

import pytest
from mcp.types import CallToolResult, TextContent

from tunnel_mcp.models import ListenResult, Member, Message
from tunnel_mcp.toolkit import _error, _ok, wire


def _page() -> ListenResult:
    sender = Member(id=2, name="bob", is_host=False)
    messages = [Message(seq=n, kind="chat", text=f"hi {n}", sender=sender, ts=1.0) for n in range(3)]
    return ListenResult(messages=messages, last_seq=3, timed_out=False, status="connected")


def _sdk_dump(result: CallToolResult) -> dict[str, object]:
    """How the SDK dumps a result model a handler returns (mcp.server.runner)."""
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


@pytest.mark.parametrize(
    "result",
    [
        _ok(_page(), "3 new"),
        _error("tunnel_say: no open tunnel"),
        CallToolResult(content=[TextContent(type="text", text="x")], structured_content={"a": None}),
    ],
)
def test_a_tool_result_has_the_wire_form_the_sdk_would_give_it(result: CallToolResult) -> None:
    assert wire(result) == _sdk_dump(result)
    # And it is what a validated result would be: the unvalidated construction changes nothing.
    validated = CallToolResult.model_validate(result.model_dump(by_alias=True))
    assert wire(result) == _sdk_dump(validated)
