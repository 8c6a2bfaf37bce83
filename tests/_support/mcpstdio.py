"""Real `tunnel-mcp` server processes driven over stdio by the SDK's own client, for the file
tests: a server per member (its own HOME, so its default save folder is the test's), tool calls
that must succeed or fail, and a human that answers approval prompts."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

SERVER = [sys.executable, "-m", "tunnel_mcp", "--log-level", "debug"]


def server_env(tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "TUNNEL_TRANSPORT": "local",
        "TUNNEL_SKIP_SKILL_INSTALL": "1",
        "TUNNEL_SKILLS_DIR": str(tmp_path / "skills"),
        "HOME": str(tmp_path / f"home-{name}"),  # the default save folder lives under it
        **extra,
    }
    for key in ("TUNNEL_APPROVE", "TUNNEL_TURN_BUDGET"):
        env.pop(key, None)
    return env


class Human:
    """An elicitation callback: answers with `decide(prompt)`, keeps every prompt it saw."""

    def __init__(self, decide: Callable[[str], str] = lambda _: "accept") -> None:
        self.prompts: list[str] = []
        self.decide = decide

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        self.prompts.append(params.message)
        action = self.decide(params.message)
        return types.ElicitResult(action=action, content={} if action == "accept" else None)  # type: ignore[arg-type]


@asynccontextmanager
async def server(
    tmp_path: Path, name: str, human: Human | None = None, mode: str = "legacy", **env: str
) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=SERVER[0], args=SERVER[1:], env=server_env(tmp_path, name, **env)
    )
    extra: dict[str, Any] = {"elicitation_callback": human, "mode": mode} if human else {}
    with (tmp_path / f"{name}.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=90, **extra) as client:
            yield client


async def call(client: Client, tool: str, args: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """A tool call that must succeed: its structured content and its text."""
    result = await client.call_tool(tool, args or {})
    text = result.content[0].text if isinstance(result.content[0], types.TextContent) else ""
    assert not result.is_error, f"{tool} failed: {text}"
    assert result.structured_content is not None
    return result.structured_content, text


async def error(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, f"{tool} unexpectedly succeeded: {result.structured_content}"
    assert isinstance(result.content[0], types.TextContent)
    assert "Traceback" not in result.content[0].text
    return result.content[0].text


async def pair(host: Client, guest: Client) -> None:
    opened, _ = await call(host, "tunnel_open", {"goal": "hand over the fixtures", "name": "ana"})
    await call(guest, "tunnel_join", {"joinLink": opened["joinLink"], "name": "ben"})


async def file_message(client: Client, offer_id: int, event: str = "file-offer") -> tuple[dict[str, Any], str]:
    """The `file` message about `offer_id` (and the listen text it came in), once it arrives."""
    since = 0
    with trio.fail_after(60):
        while True:
            result = await client.call_tool(
                "tunnel_listen", {"sinceSeq": since, "timeoutMs": 5000, "includeOwn": True}
            )
            assert not result.is_error and result.structured_content is not None
            got = result.structured_content
            for m in got["messages"]:
                if m["kind"] == "file" and m["event"] == event and m["file"]["offerId"] == offer_id:
                    assert isinstance(result.content[0], types.TextContent)
                    return m, result.content[0].text
            since = got["lastSeq"]




def pid_of(tmp_path: Path, name: str) -> int:
    """The pid of the server process `server(tmp_path, name)` started (Linux: /proc): the one
    whose environment names that HOME."""
    wanted = f"HOME={tmp_path / f'home-{name}'}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0") and b"tunnel_mcp" in cmdline:
            found.append(int(entry.name))
    assert len(found) == 1, found
    return found[0]


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid` (Linux: /proc/<pid>/status, VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")
