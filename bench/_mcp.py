"""MCP-level figures: real `tunnel-mcp` server processes behind the SDK's real stdio client.

A host process and a guest process (`python -m tunnel_mcp`, local transport), each driven by
this process's `mcp.Client` over stdio, as an agent's client drives its server. Every figure
is steady state (a warm-up call is not counted) and is interleaved with its baseline, an MCP
`ping` round trip on the same connection: the least any request costs through the SDK's
client, the pipe and the SDK's server, so `ratio` reads "how many pings one call costs".

- tunnel_join: the guest joins with a fresh link, is timed to the answer, then leaves
  (untimed) before the next join.
- say -> listen: the guest's tunnel_listen is pending; the host's tunnel_say is called and
  the time runs until the guest's listen has returned the message.
- tunnel_status: the guest's status, call to answer.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import trio
from _startup import server_process
from _stats import Figure
from mcp import Client

#: How long the guest's listen is given to reach its server before the host says something.
LISTEN_SETTLE = 0.02

# The baseline uses `ping` on a handshake-era connection (what most agents' clients speak).
warnings.filterwarnings("ignore", message="ping is removed")


async def _ok(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    if result.is_error or result.structured_content is None:
        raise RuntimeError(f"{tool} failed: {result.content}")
    return result.structured_content


async def _ping_ms(client: Client) -> float:
    t0 = time.perf_counter()
    await client.send_ping()
    return (time.perf_counter() - t0) * 1000


async def mcp_figures(joins: int, samples: int) -> list[Figure]:
    """tunnel_join, say -> pending listen, tunnel_status (see the module docstring)."""
    join_ms: list[float] = []
    join_ping: list[float] = []
    relay_ms: list[float] = []
    relay_ping: list[float] = []
    status_ms: list[float] = []
    status_ping: list[float] = []
    async with server_process() as host, server_process() as guest:
        opened = await _ok(host, "tunnel_open", {"goal": "bench", "name": "host"})
        links = [invite["joinLink"] for invite in opened["invites"]]

        async def link() -> str:
            """A fresh join link (untimed): the room allows a few pending invites at a time."""
            if not links:
                invited = await _ok(host, "tunnel_invite", {"count": 1})
                links.extend(invite["joinLink"] for invite in invited["invites"])
            return links.pop()

        # Warm-up: the first join, listings the client caches, and the session layer.
        for client in (host, guest):
            await client.list_tools()
        await _ok(guest, "tunnel_join", {"joinLink": await link(), "name": "warm"})
        await _ok(guest, "tunnel_close", {})
        for _ in range(joins):
            join_ping.append(await _ping_ms(guest))
            t0 = time.perf_counter()
            await _ok(guest, "tunnel_join", {"joinLink": await link(), "name": "guest"})
            join_ms.append((time.perf_counter() - t0) * 1000)
            await _ok(guest, "tunnel_close", {})
        joined = await _ok(guest, "tunnel_join", {"joinLink": await link(), "name": "guest"})
        since = int(joined.get("lastSeq") or 0)
        while True:  # read what is already there (events of the earlier joins, a page at a time)
            listened = await _ok(guest, "tunnel_listen", {"sinceSeq": since, "timeoutMs": 0})
            since = listened["lastSeq"]
            if not listened["more"]:
                break
        for i in range(samples + 1):
            got: dict[str, Any] = {}
            said_at = 0.0
            async with trio.open_nursery() as nursery:

                async def listen(since: int = since, got: dict[str, Any] = got, i: int = i) -> None:
                    # Until the host's message: the joined guest's history may still be arriving
                    # in the first (warm-up) round.
                    while True:
                        got.update(await _ok(guest, "tunnel_listen", {"sinceSeq": since, "timeoutMs": 20_000}))
                        got["at"] = time.perf_counter()
                        since = got["lastSeq"]
                        if f"ping {i}" in [m.get("text") for m in got["messages"]] or got["timedOut"]:
                            return

                nursery.start_soon(listen)
                await trio.sleep(LISTEN_SETTLE)
                said_at = time.perf_counter()
                said = await _ok(host, "tunnel_say", {"text": f"ping {i}"})
                if said.get("seq") is None:
                    raise RuntimeError(f"the host's say was not sent: {said}")
            if got["timedOut"]:
                raise RuntimeError("the guest's listen timed out without the host's message")
            since = got["lastSeq"]
            ping = await _ping_ms(host)
            t0 = time.perf_counter()
            await _ok(guest, "tunnel_status", {})
            status = (time.perf_counter() - t0) * 1000
            guest_ping = await _ping_ms(guest)
            if i == 0:
                continue  # warm-up
            relay_ms.append((got["at"] - said_at) * 1000)
            relay_ping.append(ping)
            status_ms.append(status)
            status_ping.append(guest_ping)
        await _ok(guest, "tunnel_close", {})
        await _ok(host, "tunnel_close", {})

    def fig(key: str, label: str, values: list[float], pings: list[float]) -> Figure:
        f = Figure(key, label, "ms", values)
        f.baseline = Figure(f"{key}.ping", "MCP ping round trip, same connection", "ms", pings)
        return f

    return [
        fig("mcp.join", "MCP tunnel_join (steady state)", join_ms, join_ping),
        fig("mcp.say_listen", "MCP host say called -> guest's pending listen returns", relay_ms, relay_ping),
        fig("mcp.status", "MCP tunnel_status", status_ms, status_ping),
    ]
