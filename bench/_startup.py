"""Start-up figures: real `tunnel-mcp` server processes behind the SDK's real stdio client.

- start -> initialize: from spawning `python -m tunnel_mcp` to the client holding the answer to
  `initialize` (the handshake an agent's client does when it starts the server). Its baseline
  is the import floor: a process that only runs `import mcp.server.lowlevel`, which every MCP
  server built on the SDK pays (importing any part of `mcp` imports the whole package).
- the first tunnel_join over MCP in a fresh guest process (it pays for importing the session
  layer unless that already happened), beside a later join in the same process.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from _stats import Figure
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

SERVER = [sys.executable, "-m", "tunnel_mcp"]
#: Set to a directory to run every server under cProfile, each writing server-<n>.prof there
#: when it exits (start-up figures then include the profiler's own cost).
PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")
_started = itertools.count(1)
#: An agent's first join comes seconds after its client started the server (a human pastes
#: a link); the server uses that time to load the session layer.
SETTLE = 2.0


#: Where the servers keep their bytecode (see `_env`).
_PYCACHE = tempfile.mkdtemp(prefix="tunnel-bench-pycache-")
atexit.register(shutil.rmtree, _PYCACHE, ignore_errors=True)


def _env() -> dict[str, str]:
    # No turn budget: a bench's agents say hundreds of messages with no human to check in with.
    env = {
        **os.environ,
        "TUNNEL_TRANSPORT": "local",
        "TUNNEL_SKIP_SKILL_INSTALL": "1",
        "TUNNEL_TURN_BUDGET": "0",
    }
    # A server as an install runs it: its modules compiled once (an installer compiles them;
    # the SDK's, in site-packages, are). With PYTHONDONTWRITEBYTECODE set, as some shells and
    # sandboxes do, a checkout's modules would be compiled from source at every start (~30 ms
    # of the start-up). The bytecode goes to a directory of this run, not the source tree.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = _PYCACHE
    return env


def _compile_once() -> None:
    """What an install does: compile the server's modules (and the SDK's, into the cache)."""
    code = "import tunnel_mcp.cli, tunnel_mcp.stdio, tunnel_mcp.tools, tunnel_trio.session"
    subprocess.run([SERVER[0], "-c", code], env=_env(), check=True)


@asynccontextmanager
async def server_process(mode: str = "legacy") -> AsyncIterator[Client]:
    command = SERVER
    if PROFILE_DIR:
        out = os.path.join(PROFILE_DIR, f"server-{next(_started)}.prof")
        command = [sys.executable, "-m", "cProfile", "-o", out, *SERVER[1:]]
    params = StdioServerParameters(command=command[0], args=command[1:], env=_env())
    with open(os.devnull, "w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode, read_timeout_seconds=60) as client:
            yield client


async def _ok(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    if result.is_error or result.structured_content is None:
        raise RuntimeError(f"{tool} failed: {result.content}")
    return result.structured_content


async def start_to_initialize(reps: int) -> Figure:
    """Server and floor samples alternate, so a machine that gets busier hits both alike."""
    _compile_once()
    samples, floor = [], []
    for _ in range(reps):
        floor.append(await _import_floor_once())
        t0 = time.perf_counter()
        async with server_process() as client:
            samples.append((time.perf_counter() - t0) * 1000)
            assert client.server_info is not None
    fig = Figure("startup.initialize", "process start -> initialize answered", "ms", samples)
    fig.baseline = Figure("startup.floor", "python -c 'import mcp.server.lowlevel'", "ms", floor)
    return fig


async def _import_floor_once() -> float:
    """Spawn to "imported" (a byte on stdout), not to exit: interpreter teardown is not start-up."""
    code = "import mcp.server.lowlevel, sys; sys.stdout.write('.'); sys.stdout.flush(); sys.stdin.read()"
    t0 = time.perf_counter()
    proc = await trio.lowlevel.open_process([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    await proc.stdout.receive_some(1)
    elapsed = (time.perf_counter() - t0) * 1000
    await proc.stdin.aclose()
    await proc.wait()
    return elapsed


async def first_join(reps: int) -> list[Figure]:
    """Each rep: a fresh guest process joins (timed), leaves, and joins again (timed)."""
    first, later = [], []
    async with server_process() as host:
        opened = await _ok(host, "tunnel_open", {"goal": "bench", "invites": 2 * reps, "name": "host"})
        links = [invite["joinLink"] for invite in opened["invites"]]
        for rep in range(reps):
            async with server_process() as guest:
                # An agent's client lists the tools when it starts, long before the first call.
                await guest.list_tools()
                await trio.sleep(SETTLE)
                for samples, link in ((first, links[2 * rep]), (later, links[2 * rep + 1])):
                    t0 = time.perf_counter()
                    await _ok(guest, "tunnel_join", {"joinLink": link, "name": f"g{rep}"})
                    samples.append((time.perf_counter() - t0) * 1000)
                    await _ok(guest, "tunnel_close", {})
        await _ok(host, "tunnel_close", {})
    fig = Figure("startup.first_join", "first tunnel_join over MCP, fresh process", "ms", first)
    fig.baseline = Figure("startup.later_join", "a later tunnel_join, same process", "ms", later)
    return [fig]


def server_imports() -> dict[str, float]:
    """What `import tunnel_mcp.stdio` pulls in beyond the floor (ms, cumulative, -X importtime)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import tunnel_mcp.stdio"],
        capture_output=True,
        text=True,
        check=True,
    )
    totals = {}
    for line in done.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[1].isdigit():
            totals[parts[2]] = int(parts[1]) / 1000
    return {name: totals.get(name, 0.0) for name in ("mcp", "trio", "tunnel_mcp.stdio")}
