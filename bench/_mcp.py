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
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import _idle as idle
import trio
from _startup import _ok, server_process
from _stats import Figure
from mcp import Client

#: How long the guest's listen is given to reach its server before the host says something.
LISTEN_SETTLE = 0.02

# The baseline uses `ping` on a handshake-era connection (what most agents' clients speak).
warnings.filterwarnings("ignore", message="ping is removed")


async def _ping_ms(client: Client) -> float:
    t0 = time.perf_counter()
    await client.send_ping()
    return (time.perf_counter() - t0) * 1000


async def _relay(host: Client, guest: Client, since: int, tag: str) -> tuple[float, int]:
    """The guest listens; the host says `tag`: ms from the say's call to the listen's return,
    and the guest's new lastSeq."""
    got: dict[str, Any] = {}
    said_at = 0.0

    async def listen(since: int = since) -> None:
        # Until the host's message: a joined guest's history may still be arriving (warm-up).
        while True:
            got.update(await _ok(guest, "tunnel_listen", {"sinceSeq": since, "timeoutMs": 20_000}))
            got["at"] = time.perf_counter()
            since = got["lastSeq"]
            if tag in [m.get("text") for m in got["messages"]] or got["timedOut"]:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen)
        await trio.sleep(LISTEN_SETTLE)
        said_at = time.perf_counter()
        said = await _ok(host, "tunnel_say", {"text": tag})
        if said.get("seq") is None:
            raise RuntimeError(f"the host's say was not sent: {said}")
    if got["timedOut"]:
        raise RuntimeError("the guest's listen timed out without the host's message")
    return (got["at"] - said_at) * 1000, int(got["lastSeq"])


class _CpuMeter:
    """CPU time (us per operation) of the host and guest server processes and of this client
    process over a run of operations, and the servers' wakeups (context switches) per operation
    (Linux /proc; None elsewhere). A wakeup after a few ms idle finds the CPU caches cold: the
    same work then costs several times its back-to-back CPU, so wakeups are part of the cost."""

    def __init__(self, host_pid: int | None, guest_pid: int | None) -> None:
        self.pids = {"host": host_pid, "guest": guest_pid}

    def _read(self) -> dict[str, Any]:
        out: dict[str, Any] = {"client": time.process_time()}
        for name, pid in self.pids.items():
            out[name] = idle.threads(pid) if pid is not None else None
        return out

    async def per_op(self, n: int, op: Callable[[int], Awaitable[object]]) -> dict[str, float]:
        before = self._read()
        for i in range(n):
            await op(i)
        after = self._read()
        used = {"client_cpu_us": (after["client"] - before["client"]) * 1e6 / n}
        for name in self.pids:
            if before[name] is not None:
                cpu, wakeups = idle.used_between(before[name], after[name])
                used[f"{name}_server_cpu_us"] = cpu * 1e6 / n
                used[f"{name}_server_wakeups"] = wakeups / n
        return used


async def mcp_figures(joins: int, samples: int, cpu_ops: int = 100) -> list[Figure]:
    """tunnel_join, say -> pending listen, tunnel_status (see the module docstring); each with
    the CPU one operation costs the server processes and this client (`extra`)."""
    join_ms: list[float] = []
    join_ping: list[float] = []
    relay_ms: list[float] = []
    relay_ping: list[float] = []
    status_ms: list[float] = []
    status_ping: list[float] = []
    async with AsyncExitStack() as stack:
        if idle.available():
            (host, host_pid), (guest, guest_pid) = [await idle.start_server(stack) for _ in range(2)]
        else:
            host = await stack.enter_async_context(server_process())
            guest = await stack.enter_async_context(server_process())
            host_pid = guest_pid = None
        meter = _CpuMeter(host_pid, guest_pid)
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
        await _ok(guest, "tunnel_join", {"joinLink": await link(), "name": "guest"})
        since = 0
        while True:  # read what is already there (events of the earlier joins, a page at a time)
            listened = await _ok(guest, "tunnel_listen", {"sinceSeq": since, "timeoutMs": 0})
            since = listened["lastSeq"]
            if not listened["more"]:
                break
        for i in range(samples + 1):
            relay, since = await _relay(host, guest, since, f"ping {i}")
            ping = await _ping_ms(host)
            t0 = time.perf_counter()
            await _ok(guest, "tunnel_status", {})
            status = (time.perf_counter() - t0) * 1000
            guest_ping = await _ping_ms(guest)
            if i == 0:
                continue  # warm-up
            relay_ms.append(relay)
            relay_ping.append(ping)
            status_ms.append(status)
            status_ping.append(guest_ping)

        # Where the time goes: CPU per operation, each kind alone.
        cpu: dict[str, dict[str, float]] = {}
        cpu["status"] = await meter.per_op(cpu_ops, lambda i: _ok(guest, "tunnel_status", {}))
        cpu["ping"] = await meter.per_op(cpu_ops, lambda i: guest.send_ping())
        last = [since]

        async def relay_op(i: int) -> None:
            _, last[0] = await _relay(host, guest, last[0], f"cpu {i}")

        cpu["say_listen"] = await meter.per_op(cpu_ops, relay_op)
        await _ok(guest, "tunnel_close", {})
        await _ok(host, "tunnel_close", {})

    def fig(key: str, label: str, values: list[float], pings: list[float], cpu_of: str) -> Figure:
        f = Figure(key, label, "ms", values)
        f.baseline = Figure(f"{key}.ping", "MCP ping round trip, same connection", "ms", pings)
        f.extra = {**cpu.get(cpu_of, {}), **{f"ping_{k}": v for k, v in cpu.get("ping", {}).items()}}
        return f

    return [
        fig("mcp.join", "MCP tunnel_join (steady state)", join_ms, join_ping, "join"),
        fig("mcp.say_listen", "MCP host say called -> guest's pending listen returns", relay_ms, relay_ping, "say_listen"),
        fig("mcp.status", "MCP tunnel_status", status_ms, status_ping, "status"),
    ]


def cpu_note(figures: list[Figure]) -> str:
    """Where an MCP operation's time goes, from the `extra` CPU figures (empty without them)."""
    parts = []
    for fig in figures:
        x = fig.extra
        if fig.key in ("mcp.say_listen", "mcp.status") and "client_cpu_us" in x:
            servers = ", ".join(
                f"{who} server {x[f'{who}_server_cpu_us']:.0f} us in {x.get(f'{who}_server_wakeups', 0):.1f} wakeups"
                for who in ("host", "guest")
                if x.get(f"{who}_server_cpu_us", 0) >= 1
            )
            parts.append(f"{fig.label}: {servers}, client {x['client_cpu_us']:.0f} us")
    if not parts:
        return ""
    x = next(f.extra for f in figures if f.key == "mcp.status")
    return (
        "CPU per MCP operation (each kind run alone, 100 times): "
        + "; ".join(parts)
        + f"; an MCP ping: guest server {x.get('ping_guest_server_cpu_us', 0):.0f} us, client "
        f"{x.get('ping_client_cpu_us', 0):.0f} us (the client is the SDK's, in this process: it "
        "parses each result and checks it against the tool's output schema)."
    )
