"""Tool results that stay bounded and tell the truth, through the real MCP client.

A listen after a long conversation returns a page, not the whole transcript; a long text is not
carried twice in one result; a say the host has not confirmed is reported as queued (and never
as failed when it may still arrive); a guest whose host vanished says how long it keeps trying
and, at the end, why the tunnel closed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jsonschema
import mcp_types as types
import pytest
import trio
from dropproxy import DropProxy
from inprocess import InProcessRoom
from mcp import Client

import tunnel_trio.session as session_module
from tunnel_mcp.chat_tools import PREVIEW_CHARS, TEXT_FULL_CHARS
from tunnel_mcp.server import TRANSCRIPT_URI
from tunnel_trio.session import LISTEN_MAX_BYTES, LISTEN_MAX_MESSAGES, MemberSession
from tunnel_trio.session_types import (
    FileOfferInfo,
    MemberInfo,
    MemberStatus,
    OfferFile,
    PendingInvite,
    ReceiveProgress,
    SessionStatus,
)
from tunnelproto import JoinLink


@pytest.fixture(autouse=True)
def no_turn_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """These conversations run to hundreds of says: no check-ins with a human in between."""
    monkeypatch.setenv("TUNNEL_TURN_BUDGET", "0")


@asynccontextmanager
async def agents(n: int) -> AsyncIterator[tuple[InProcessRoom, list[Client]]]:
    made = InProcessRoom()
    async with made.clients(*({} for _ in range(n))) as clients:
        yield made, clients


async def call(client: Client, tool: str, args: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """A successful tool call's structured content and its readable text."""
    result = await client.call_tool(tool, args or {})
    assert isinstance(result.content[0], types.TextContent)
    text = result.content[0].text
    assert not result.is_error, f"{tool} failed: {text}"
    assert result.structured_content is not None
    return result.structured_content, text


def via(link: str, port: int) -> str:
    parsed = JoinLink.parse(link)
    return str(JoinLink(f"http://127.0.0.1:{port}", parsed.tunnel_id, parsed.secret))


def relay_port(link: str) -> int:
    return int(JoinLink.parse(link).websocket_url.rsplit(":", 1)[1].split("/", 1)[0])


async def caught_up(client: Client, seq: int) -> None:
    with trio.fail_after(10):
        while (await call(client, "tunnel_status"))[0]["lastSeq"] < seq:
            await trio.sleep(0.02)


async def open_and_join(
    host: Client, guest: Client, nursery: trio.Nursery | None = None
) -> tuple[dict[str, Any], DropProxy | None]:
    """The host opens (local transport); the guest joins, through a DropProxy if a nursery is
    given, and is seated on the host's side before this returns."""
    opened, _ = await call(host, "tunnel_open", {"goal": "g", "transport": "local", "name": "ana"})
    link = opened["joinLink"]
    proxy = None
    if nursery is not None:
        proxy = DropProxy(relay_port(link))
        await nursery.start(proxy.run)
        link = via(link, proxy.port)
    await call(guest, "tunnel_join", {"joinLink": link, "name": "ben"})
    with trio.fail_after(10):
        while True:
            status, _ = await call(host, "tunnel_status")
            if any(m["name"] == "ben" and m["connected"] for m in status["members"]):
                return opened, proxy
            await trio.sleep(0.02)


# -- bounded listens -------------------------------------------------------------------------------


async def test_a_listen_after_a_long_conversation_returns_pages_and_says_more() -> None:
    big = 20_000
    async with agents(2) as (_, (host, guest)):
        await open_and_join(host, guest)
        said = []
        for i in range(300):
            text = f"m{i}" + (" " + "x" * big if i % 30 == 7 else "")
            said.append(text)
            last = (await call(host, "tunnel_say", {"text": text}))[0]["seq"]
        await caught_up(guest, last)

        got: list[str] = []
        since, pages = 0, 0
        while True:
            page, text = await call(guest, "tunnel_listen", {"sinceSeq": since, "timeoutMs": 0})
            pages += 1
            chats = [m for m in page["messages"] if m["kind"] == "chat"]
            got += [m["text"] for m in chats]
            # Bounded by count and bytes (one message may go over alone), whatever the backlog.
            assert len(page["messages"]) <= LISTEN_MAX_MESSAGES
            size = len(json.dumps(page["messages"], ensure_ascii=False).encode())
            assert size <= LISTEN_MAX_BYTES or len(page["messages"]) == 1, size
            # The readable text does not repeat every long text: it stays near its budget.
            assert len(text) <= TEXT_FULL_CHARS + big + 2 + len(page["messages"]) * (PREVIEW_CHARS + 120)
            since = page["lastSeq"]
            if not page["more"]:
                break
            assert "More are waiting" in text and f"sinceSeq {since}" in text
        assert got == said  # every message once, in order, across the pages
        assert pages > 2


async def test_the_readable_text_shortens_long_texts_and_says_how_to_read_them() -> None:
    async with agents(2) as (_, (host, guest)):
        await open_and_join(host, guest)
        texts = [f"{n}:" + chr(ord("a") + n) * 9000 for n in range(5)]  # 45,000 characters
        seqs = [(await call(host, "tunnel_say", {"text": t}))[0]["seq"] for t in texts]
        await caught_up(guest, seqs[-1])
        page, text = await call(guest, "tunnel_listen", {"sinceSeq": seqs[0] - 1, "timeoutMs": 0})
        # The structured content carries every text whole ...
        assert [m["text"] for m in page["messages"]] == texts
        # ... the readable text only the first ones, then a pointer for clients that show only it.
        assert texts[0] in text
        assert texts[4] not in text and texts[4][:PREVIEW_CHARS] in text
        assert len(text) < TEXT_FULL_CHARS + 9000 + 5 * (PREVIEW_CHARS + 200)
        assert "(shortened: " in text
        first_cut = next(s for s, t in zip(seqs, texts, strict=True) if t not in text)
        assert f"sinceSeq {first_cut - 1}" in text
        again, text = await call(guest, "tunnel_listen", {"sinceSeq": first_cut - 1, "timeoutMs": 0})
        assert again["messages"][0]["seq"] == first_cut
        assert texts[seqs.index(first_cut)] in text  # the first message of a page is shown whole


async def test_the_transcript_resource_shows_the_newest_window() -> None:
    async with agents(2) as (_, (host, guest)):
        await open_and_join(host, guest)
        for i in range(20):
            await call(host, "tunnel_say", {"text": f"{i} " + "y" * 8000})
        result = await host.read_resource(TRANSCRIPT_URI)
        content = result.contents[0]
        assert isinstance(content, types.TextResourceContents)
        assert len(content.text.encode()) <= LISTEN_MAX_BYTES + 4096
        body = json.loads(content.text)
        assert body["earlier"] is True and "tunnel_listen" in body["note"]
        texts = [m["text"] for m in body["messages"] if m["kind"] == "chat"]
        assert texts[-1].startswith("19 ")  # the newest, not the oldest
        assert body["firstSeq"] == body["messages"][0]["seq"] > 1
        assert body["lastSeq"] == body["messages"][-1]["seq"]


# -- a status without its defaults ----------------------------------------------------------------


async def test_a_status_leaves_out_the_optional_fields_that_hold_their_default() -> None:
    """Every SDK client checks each result against the output schema, one subschema per field
    present: the optional fields (null, 0, false, [] by default) are sent only when they say
    something. What stays is what the schema requires, and the client's check passes."""
    from tunnel_mcp.models import StatusResult

    optional = {"givesUpInSec", "queuedSays", "closedMessage", "phrase", "approveSays",
                "turnsLeft", "turnBudget", "offers", "receives"}  # fmt: skip
    schema = StatusResult.model_json_schema(by_alias=True)
    assert optional == set(schema["properties"]) - set(schema["required"])
    async with agents(2) as (_, (host, guest)):
        await open_and_join(host, guest)
        hosts, _ = await call(host, "tunnel_status")
        guests, _ = await call(guest, "tunnel_status")
    assert set(hosts) == set(schema["required"])  # a host has no phrase of its own
    assert set(guests) == set(schema["required"]) | {"phrase"}  # a member's own phrase
    assert guests["phrase"] == next(m["phrase"] for m in guests["members"] if m["id"] == guests["self"]["id"])
    # In the member rows, a phrase only where one is shown: the host sees its guest's, the guest
    # its own; the host's row has none.
    row = {"id", "name", "isHost", "connected"}
    assert [set(m) for m in hosts["members"]] == [row, row | {"phrase"}]
    assert [set(m) for m in guests["members"]] == [row, row | {"phrase"}]


def _statuses() -> list[tuple[SessionStatus, dict[str, Any]]]:
    """Statuses and the extras the tool adds, covering every optional field both ways."""
    ana, ben = MemberInfo(1, "ana", True), MemberInfo(2, "ben", False)
    offer = FileOfferInfo(
        offer_id=3, sharer=ben, name="logs", count=2, total=2060, hash="ef" * 32, is_folder=True,
        files=(OfferFile("a.txt", 12, "ab" * 32), OfferFile("b.txt", 2048, "cd" * 32)), note="n",
    )
    progress = ReceiveProgress(offer_id=3, name="logs", destination="/tmp/in", files_done=1,
                               count=2, received_bytes=1030, total_bytes=2060, state="running")
    host = SessionStatus(
        role="host", goal="fix the build", tunnel_id="t1", self_member=ana,
        members=[MemberStatus(1, "ana", True, True), MemberStatus(2, "ben", False, False, "a b c d")],
        pending_invites=[PendingInvite(600), PendingInvite(59)], last_seq=12, transport="cloudflared",
        public_url="https://x.trycloudflare.com", connection="connected", cloudflared_alive=False,
        warnings=["w1", "w2"], offers=[offer],
    )
    member = SessionStatus(
        role="member", goal="g", tunnel_id="t2", self_member=ben,
        members=[MemberStatus(1, "ana", True, False), MemberStatus(2, "ben", False, False, "a b c d")],
        pending_invites=[], last_seq=0, transport=None, public_url=None, connection="reconnecting",
        cloudflared_alive=None, gives_up_in_sec=0, queued_says=2, receives=[progress],
    )
    closed = SessionStatus(
        role="member", goal="", tunnel_id="t3", self_member=ben, members=[], pending_invites=[],
        last_seq=7, transport=None, public_url=None, connection="closed", cloudflared_alive=None,
        closed_reason="removed", closed_message="the host removed you",
    )
    return [
        (host, {}),
        (host, {"turns_left": 0, "turn_budget": 40, "approve_says": True}),
        (member, {"phrase": "a b c d", "turns_left": 3, "turn_budget": 5}),
        (closed, {"phrase": "a b c d"}),
    ]


@pytest.mark.parametrize(("status", "extras"), _statuses())
def test_a_status_written_directly_is_the_models_dump_without_its_defaults(
    status: SessionStatus, extras: dict[str, Any]
) -> None:
    """tunnel_status writes its structured result directly (no models built and dumped): it
    must say exactly what the result model says, less the fields holding their default."""
    from tunnel_mcp.models import StatusResult
    from tunnel_mcp.server import load_tools

    dumped = StatusResult.of(status, **extras).model_dump(mode="json", by_alias=True)
    defaults = {
        (info.alias or name): info.get_default(call_default_factory=True)
        for name, info in StatusResult.model_fields.items()
        if not info.is_required()
    }
    expected = {k: v for k, v in dumped.items() if k not in defaults or v != defaults[k]}
    for member in expected["members"]:  # a member's phrase too, while null
        if member["phrase"] is None:
            del member["phrase"]
    wire = StatusResult.wire_of(status, **extras)
    assert json.dumps(wire) == json.dumps(expected)  # the same keys, order, values and types
    schema = load_tools().tools["tunnel_status"].output_schema
    jsonschema.validate(wire, schema)


# -- says that tell the truth ----------------------------------------------------------------------


async def test_a_say_during_a_partition_is_reported_queued_and_arrives_once(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "SAY_TIMEOUT", 1.0)
    async with agents(2) as (_, (host, guest)):
        _, proxy = await open_and_join(host, guest, nursery)
        assert proxy is not None
        proxy.blackhole = True  # a partition: everything is lost, nothing is closed
        said, text = await call(guest, "tunnel_say", {"text": "are you there?"})
        assert (said["seq"], said["queued"], said["sent"]) == (None, True, True)
        assert "do not send it again" in text
        status, _ = await call(guest, "tunnel_status")
        assert status["queuedSays"] == 1
        proxy.blackhole = False
        proxy.drop_all()  # the partition ends; the member resumes and re-sends it
        with trio.fail_after(20):
            while (await call(guest, "tunnel_status"))[0].get("queuedSays"):
                await trio.sleep(0.05)
        heard, _ = await call(host, "tunnel_listen", {"sinceSeq": 0, "timeoutMs": 0})
        chats = [m["text"] for m in heard["messages"] if m["kind"] == "chat"]
        assert chats == ["are you there?"]


async def test_a_guest_whose_host_vanished_says_how_long_it_tries_then_why_it_closed(
    nursery: trio.Nursery,
) -> None:
    async with agents(2) as (made, (host, guest)):
        _, proxy = await open_and_join(host, guest, nursery)
        assert proxy is not None
        session = made.managers[1].session
        assert isinstance(session, MemberSession)
        session.guest._resume_budget = 6.0
        session.guest._connect_timeout = 1.0
        proxy.blackhole = True  # the host's machine is gone: connections go nowhere
        proxy.drop_all()
        with trio.fail_after(10):
            while (status := (await call(guest, "tunnel_status"))[0])["connection"] != "reconnecting":
                await trio.sleep(0.02)
        assert 0 <= status["givesUpInSec"] <= 6
        assert [m["connected"] for m in status["members"]] == [False, False]
        heard, text = await call(guest, "tunnel_listen", {"sinceSeq": status["lastSeq"], "timeoutMs": 0})
        assert heard["status"] == "reconnecting" and 0 <= heard["givesUpInSec"] <= 6
        assert "reconnecting for" in text and "more at most" in text
        with trio.fail_after(20):
            while (await call(guest, "tunnel_status"))[0]["connection"] != "closed":
                await trio.sleep(0.05)
        heard, text = await call(guest, "tunnel_listen", {"sinceSeq": status["lastSeq"], "timeoutMs": 0})
        final = heard["messages"][-1]
        assert final["event"] == "closed" and final["seq"] == 0
        assert "could not be reached" in final["reason"]
        assert heard["closedReason"] == "host-unreachable"
        assert "reason: " in text and "could not be reached" in text
        # A say now is a clear error, not a silent queue.
        result = await guest.call_tool("tunnel_say", {"text": "hello?"})
        assert result.is_error
