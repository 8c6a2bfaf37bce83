"""Idle cost: CPU time and wakeups of real server processes while nobody says anything.

A host `python -m tunnel_mcp` with two guest processes joined (local transport), and a fourth
server process that only answered `initialize` (no tunnel), all left alone for the same
window. Each process's CPU time (/proc/<pid>/task/*/schedstat, nanoseconds) and wakeups
(context switches, /proc/<pid>/task/*/status), summed over its threads, are read at the start
and the end of the window. The baseline is a process that imported the SDK and blocks on stdin: what any idle
MCP server built on it costs at the least. Linux only (reads /proc); elsewhere the figures
are left out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import trio
from _startup import server_process
from _stats import Figure
from mcp import Client


def available() -> bool:
    return Path(f"/proc/{os.getpid()}/task").is_dir()


def _children() -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            found.update(int(pid) for pid in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def threads(pid: int) -> dict[int, tuple[int, int]]:
    """For each thread of `pid`: nanoseconds on a CPU (schedstat) and context switches."""
    found: dict[int, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text()
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
        switches = sum(
            int(line.split()[1])
            for line in status.splitlines()
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
        )
        found[int(task.name)] = (ns, switches)
    return found


def used_between(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> tuple[float, int]:
    """CPU seconds and wakeups between two `threads` readings (a thread that ended in between
    is not counted: worker threads of trio's cache end after 10 s idle)."""
    cpu_ns = switches = 0
    for tid, (ns, sw) in after.items():
        ns0, sw0 = before.get(tid, (0, 0))
        cpu_ns += ns - ns0
        switches += sw - sw0
    return cpu_ns / 1e9, switches


async def _ok(client: Client, tool: str, args: dict[str, object]) -> dict[str, object]:
    result = await client.call_tool(tool, args)
    if result.is_error or result.structured_content is None:
        raise RuntimeError(f"{tool} failed: {result.content}")
    return result.structured_content


async def start_server(stack: AsyncExitStack) -> tuple[Client, int]:
    """A server process that lives as long as `stack`, and its pid."""
    before = _children()
    client = await stack.enter_async_context(server_process())
    new = _children() - before
    if len(new) != 1:
        raise RuntimeError(f"could not tell the server's process apart: {sorted(new)}")
    return client, new.pop()


async def _floor_process() -> trio.Process:
    code = "import mcp.server.lowlevel, sys; sys.stdout.write('.'); sys.stdout.flush(); sys.stdin.read()"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    await proc.stdout.receive_some(1)
    return proc


async def idle_figures(window: float, settle: float = 3.0) -> list[Figure]:
    """CPU ms and wakeups per second of each process over `window` seconds of silence."""
    async with AsyncExitStack() as stack:
        host, host_pid = await start_server(stack)
        opened = await _ok(host, "tunnel_open", {"goal": "bench", "invites": 2, "name": "host"})
        links = [str(invite["joinLink"]) for invite in opened["invites"]]  # type: ignore[attr-defined]
        guests: list[tuple[Client, int]] = []
        for n, link in enumerate(links):
            guest, pid = await start_server(stack)
            await _ok(guest, "tunnel_join", {"joinLink": link, "name": f"g{n}"})
            guests.append((guest, pid))
        _, lone_pid = await start_server(stack)
        floor = await _floor_process()
        try:
            # Let start-up work (the background imports, the joins' aftermath) finish first.
            await trio.sleep(settle)
            pids = {"host": host_pid, "guest": guests[0][1], "guest2": guests[1][1], "lone": lone_pid, "floor": floor.pid}
            start = {name: threads(pid) for name, pid in pids.items()}
            await trio.sleep(window)
            used = {name: used_between(start[name], threads(pid)) for name, pid in pids.items()}
        finally:
            assert floor.stdin is not None
            await floor.stdin.aclose()
            await floor.wait()
        for guest, _ in guests:
            await _ok(guest, "tunnel_close", {})
        await _ok(host, "tunnel_close", {})

    def cpu_ms(name: str) -> float:
        return used[name][0] * 1000 / window

    def wakeups(name: str) -> float:
        return used[name][1] / window

    figures = []
    for key, label in (
        ("host", "idle host with 2 members"),
        ("guest", "idle member (one of the 2)"),
        ("lone", "idle stdio server, no tunnel"),
    ):
        for unit, value in (("CPU ms/s", cpu_ms), ("wakeups/s", wakeups)):
            fig = Figure(f"idle.{key}.{'cpu' if unit.startswith('CPU') else 'wakeups'}",
                         f"{label}: {unit.split('/')[0]}", unit, [value(key)], show_p95=False)
            fig.baseline = Figure("idle.floor", "idle process that imported the SDK", unit,
                                  [value("floor")], show_p95=False)
            fig.extra = {"window_s": window, "other_member": value("guest2")} if key == "guest" else {"window_s": window}
            figures.append(fig)
    return figures
