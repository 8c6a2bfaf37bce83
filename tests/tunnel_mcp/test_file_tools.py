"""The file tools in process (the stdio tests cover the rest): a receive reports progress while
it waits, and a receive under way cannot be pointed at another folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import trio
from filesharing import write_random
from mcp import Client

from tunnel_mcp import file_tools
from tunnel_mcp.manager import TunnelManager
from tunnel_mcp.server import build_server

SIZE = 32 * 1024 * 1024


async def call(client: Client, tool: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args, **kw)
    text = result.content[0].text if isinstance(result.content[0], types.TextContent) else ""
    assert not result.is_error, f"{tool} failed: {text}"
    assert result.structured_content is not None
    return result.structured_content


async def offered(host: Client, guest: Client, path: Path) -> int:
    opened = await call(host, "tunnel_open", {"goal": "files", "transport": "local", "name": "ana"})
    await call(guest, "tunnel_join", {"joinLink": opened["joinLink"], "name": "ben"})
    shared = await call(host, "tunnel_share", {"path": str(path)})
    with trio.fail_after(30):
        while not (await call(guest, "tunnel_status", {})).get("offers"):
            await trio.sleep(0.05)
    return int(shared["offerId"])


def server() -> Any:
    return build_server(lambda nursery: TunnelManager(nursery, display_name=lambda: "x"))


async def test_a_receive_reports_progress_while_it_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_tools, "PROGRESS_EVERY", 0.002)  # really 5 s
    write_random(tmp_path / "big.bin", SIZE)
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    shared = server()
    async with Client(shared) as host, Client(shared) as guest:
        offer_id = await offered(host, guest, tmp_path / "big.bin")
        got = await call(
            guest, "tunnel_receive", {"offerId": offer_id, "saveTo": str(tmp_path / "in")},
            progress_callback=on_progress,
        )
    assert got["complete"] is True
    assert progress, "no progress was reported"
    assert all(total == SIZE for _, total, _ in progress)
    values = [value for value, _, _ in progress]
    assert values == sorted(values) and values[-1] <= SIZE
    assert all(message and message.startswith("received ") for _, _, message in progress)


async def test_a_receive_under_way_stays_in_its_folder(tmp_path: Path) -> None:
    write_random(tmp_path / "big.bin", SIZE)
    shared = server()
    async with Client(shared) as host, Client(shared) as guest:
        offer_id = await offered(host, guest, tmp_path / "big.bin")
        args = {"offerId": offer_id, "saveTo": str(tmp_path / "in"), "waitMs": 0}
        assert (await call(guest, "tunnel_receive", args))["running"] is True
        moved = await guest.call_tool("tunnel_receive", {**args, "saveTo": str(tmp_path / "elsewhere")})
        assert moved.is_error and isinstance(moved.content[0], types.TextContent)
        assert "already being received into" in moved.content[0].text
        assert "tunnel_cancel" in moved.content[0].text
        assert (await call(guest, "tunnel_cancel", {"offerId": offer_id}))["action"] == "cancelled"
    assert not (tmp_path / "elsewhere").exists()
