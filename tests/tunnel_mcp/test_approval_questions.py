"""The approvals module itself, through a real MCP client: the file questions issue 10 will ask,
and the rules of the 2026 round trip (an answer counts once, for its own question only).

A small server declares two tools with the toolkit, the way the tunnel's tools are declared,
each asking one question through `Approvals`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import mcp_types as types
import pytest
import trio
from mcp import Client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from pydantic import BaseModel, Field

from tunnel_mcp.manager import TunnelManager
from tunnel_mcp.toolkit import ToolContext, ToolResult, _ok, tool

MODES = ["legacy", "auto"]


class Verdict(BaseModel):
    answer: str = Field(title="Answer")


@tool(name="share", title="Share files", read_only=False)
async def share(
    path: str, files: int, size: int, ctx: ToolContext
) -> Annotated[ToolResult, Verdict]:
    answer = await ctx.approvals.approve_reading(ctx, tunnel_id="T1", path=path, files=files, total_bytes=size)
    return _ok(Verdict(answer=answer), answer)


@tool(name="save", title="Save files", read_only=False)
async def save(destination: str, ctx: ToolContext) -> Annotated[ToolResult, Verdict]:
    answer = await ctx.approvals.approve_writing(ctx, tunnel_id="T1", destination=destination, files=2, total_bytes=10)
    return _ok(Verdict(answer=answer), answer)


TOOLS = {t.name: t for t in (share, save)}


def make_server() -> Server[TunnelManager]:
    @asynccontextmanager
    async def lifespan(_: Server[TunnelManager]) -> AsyncIterator[TunnelManager]:
        async with trio.open_nursery() as nursery:
            yield TunnelManager(nursery)
            nursery.cancel_scope.cancel()

    async def list_tools(ctx: ServerRequestContext[TunnelManager], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[t.listing() for t in TOOLS.values()])

    async def call_tool(
        ctx: ServerRequestContext[TunnelManager], params: types.CallToolRequestParams
    ) -> dict[str, Any] | types.InputRequiredResult:
        return await TOOLS[params.name].call(ctx, params)

    return Server("questions", lifespan=lifespan, on_list_tools=list_tools, on_call_tool=call_tool)


class Human:
    def __init__(self, action: str = "accept") -> None:
        self.action = action
        self.prompts: list[str] = []

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData:
        assert isinstance(params, types.ElicitRequestFormParams)
        assert params.requested_schema == {"type": "object", "properties": {}}
        self.prompts.append(params.message)
        if self.action == "error":
            return types.ErrorData(code=-1, message="the dialog crashed")
        return types.ElicitResult(action=self.action, content={} if self.action == "accept" else None)  # type: ignore[arg-type]


async def answer_of(client: Client, tool_name: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool_name, args)
    assert not result.is_error and result.structured_content is not None
    return str(result.structured_content["answer"])


SHARE = {"path": "/home/ana/project/src", "files": 3, "size": 1_572_864}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("action", "answer"), [("accept", "accepted"), ("decline", "declined"), ("cancel", "cancelled")])
async def test_reading_files_shows_the_path_the_count_and_the_size(mode: str, action: str, answer: str) -> None:
    human = Human(action)
    async with Client(make_server(), mode=mode, elicitation_callback=human) as client:
        assert await answer_of(client, "share", SHARE) == answer
    (prompt,) = human.prompts
    assert "share 3 files (1.5 MiB) from\n/home/ana/project/src\nwith everyone in tunnel T1" in prompt
    assert "Nothing is sent before you accept" in prompt


@pytest.mark.parametrize("mode", MODES)
async def test_writing_files_shows_the_full_destination(mode: str) -> None:
    human = Human("accept")
    async with Client(make_server(), mode=mode, elicitation_callback=human) as client:
        assert await answer_of(client, "save", {"destination": "/home/ben/Downloads/tunnel/report\u202e.txt"}) == "accepted"
    (prompt,) = human.prompts
    assert "save 2 files received (10 bytes) in tunnel T1 to\n/home/ben/Downloads/tunnel/report\\u202e.txt\n" in prompt
    assert "Nothing is written before you accept" in prompt


async def test_a_client_that_cannot_ask_gets_not_asked() -> None:
    async with Client(make_server()) as client:
        assert await answer_of(client, "share", SHARE) == "not-asked"


async def test_a_client_whose_prompt_fails_gives_no_yes() -> None:
    human = Human("error")
    async with Client(make_server(), mode="legacy", elicitation_callback=human) as client:
        assert await answer_of(client, "share", SHARE) == "unanswered"
    assert len(human.prompts) == 1


async def first_round(client: Client, args: dict[str, Any]) -> types.InputRequiredResult:
    asked = await client.session.call_tool("share", args, allow_input_required=True)
    assert isinstance(asked, types.InputRequiredResult)
    assert asked.input_requests is not None and asked.request_state
    return asked


ACCEPT = {"approval": types.ElicitResult(action="accept", content={})}


async def test_an_answer_counts_once() -> None:
    async with Client(make_server(), elicitation_callback=Human()) as client:
        asked = await first_round(client, SHARE)
        done = await client.session.call_tool(
            "share", SHARE, allow_input_required=True, input_responses=ACCEPT, request_state=asked.request_state
        )
        assert isinstance(done, types.CallToolResult) and done.structured_content == {"answer": "accepted"}
        # The same answer sent again is not a yes: the human is asked again.
        again = await client.session.call_tool(
            "share", SHARE, allow_input_required=True, input_responses=ACCEPT, request_state=asked.request_state
        )
        assert isinstance(again, types.InputRequiredResult)


async def test_an_answer_counts_only_for_the_question_it_was_given_to() -> None:
    async with Client(make_server(), elicitation_callback=Human()) as client:
        asked = await first_round(client, SHARE)
        other = {**SHARE, "path": "/home/ana/.ssh"}
        swapped = await client.session.call_tool(
            "share", other, allow_input_required=True, input_responses=ACCEPT, request_state=asked.request_state
        )
        assert isinstance(swapped, types.InputRequiredResult)
        assert swapped.input_requests is not None
        request = swapped.input_requests["approval"]
        assert isinstance(request, types.ElicitRequest) and "/home/ana/.ssh" in request.params.message


async def test_a_made_up_round_is_not_an_answer() -> None:
    async with Client(make_server(), elicitation_callback=Human()) as client:
        forged = await client.session.call_tool(
            "share", SHARE, allow_input_required=True, input_responses=ACCEPT, request_state="made-up"
        )
        assert isinstance(forged, types.InputRequiredResult)
        unasked = await client.session.call_tool("share", SHARE, allow_input_required=True, input_responses=ACCEPT)
        assert isinstance(unasked, types.InputRequiredResult)
