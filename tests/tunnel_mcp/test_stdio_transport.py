"""The trio-native stdio transport, in real processes: pipes (trio's own streams) and files
(worker threads), and the rule that only MCP messages ever reach the real stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

#: A process serving the transport: it answers each request with an empty result, while
#: printing to stdout (and writing to fd 1) as careless code would.
ECHO = r"""
import os, sys, trio
import mcp_types as types
from mcp.shared.message import SessionMessage
from tunnel_mcp import stdio_transport
from tunnel_mcp.stdio_transport import stdio_streams

stdio_transport.MAX_LINE = int(os.environ.get("MAX_LINE", stdio_transport.MAX_LINE))

def unreadable(line):
    if not line.startswith("not"):
        return None  # the dispatcher gets the error
    error = types.ErrorData(code=types.PARSE_ERROR, message="unreadable")
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=None, error=error))

async def main():
    async with stdio_streams(unreadable) as (read, write):
        async for item in read:
            print("stray print", flush=True)
            os.write(1, b"stray write\n")
            if isinstance(item, Exception):
                print("exception", type(item).__name__, file=sys.stderr, flush=True)
                continue
            reply = types.JSONRPCResponse(jsonrpc="2.0", id=item.message.id, result={"n": item.message.id})
            await write.send(SessionMessage(reply))
    print("after serving", flush=True)

trio.run(main)
"""


def _request(n: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": n, "method": "ping"}).encode() + b"\n"


def _answers(stdout: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


async def test_over_pipes_only_mcp_messages_reach_stdout() -> None:
    # Requests split across writes, two in one write, a CRLF line, a blank line, garbage.
    chunks = [
        _request(1)[:10],
        _request(1)[10:] + _request(2),
        _request(3).replace(b"\n", b"\r\n") + b"\n",
        b"not json\n",
        _request(4)[:-1],  # the last line has no newline before EOF
    ]
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()

    async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        async for chunk in stream:
            into += chunk

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, proc.stdout, out)
            nursery.start_soon(drain, proc.stderr, err)
            for chunk in chunks:
                await proc.stdin.send_all(chunk)
                await trio.sleep(0.05)
            await proc.stdin.aclose()
            await proc.wait()
    # The client's stdout is back on fd 1 once serving is over.
    assert out.endswith(b"after serving\n"), (out, err)
    answers = _answers(bytes(out).removesuffix(b"after serving\n"))
    assert [a.get("id") for a in answers] == [1, 2, 3, None, 4], (out, err)
    assert answers[3]["error"]["message"] == "unreadable"  # type: ignore[index]
    assert b"stray" not in out
    assert err.count(b"stray print") == 4 and err.count(b"stray write") == 4


async def test_a_line_over_the_limit_is_skipped_and_answered_and_the_next_one_served() -> None:
    # A client that never ends its line must not grow the server without bound.
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "MAX_LINE": "4096"},
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                assert proc.stdout is not None
                async for chunk in proc.stdout:
                    out.extend(chunk)

            nursery.start_soon(drain)
            await proc.stdin.send_all(_request(1))
            huge = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {"x": "y" * 100_000}})
            for start in range(0, len(huge), 8192):  # it streams in over many reads
                await proc.stdin.send_all(huge[start : start + 8192].encode())
            await proc.stdin.send_all(b"\n" + _request(3))
            await proc.stdin.aclose()
            await proc.wait()
        err = await proc.stderr.receive_some(1 << 20)
    answers = _answers(bytes(out).removesuffix(b"after serving\n"))
    assert [a.get("id") for a in answers] == [1, None, 3], (out, err)
    assert "longer than 4,096 bytes" in answers[1]["error"]["message"]  # type: ignore[index]


async def test_over_files_lines_are_read_and_answered_in_worker_threads(tmp_path: Path) -> None:
    # A file is not a pipe: the transport falls back to blocking reads and writes in threads.
    requests = tmp_path / "in.jsonl"
    requests.write_bytes(_request(1) + _request(2) + b"[1, 2]\n")
    answers = tmp_path / "out.jsonl"
    with requests.open("rb") as stdin, answers.open("wb") as stdout:
        done = await trio.run_process(
            [sys.executable, "-c", ECHO], stdin=stdin, stdout=stdout, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr
    got = answers.read_bytes()
    assert [a.get("id") for a in _answers(got.removesuffix(b"after serving\n"))] == [1, 2]
    assert b"stray" not in got
    assert done.stderr.count(b"stray print") == 3
    assert b"exception ValidationError" in done.stderr  # `[1, 2]` goes to the dispatcher as the error
    assert got.endswith(b"after serving\n")


async def test_a_served_process_builds_its_escape_tables_before_the_first_tool_call(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    # Scanning every code point for format characters takes tens of milliseconds: the first
    # join or listen would pay for it if the server did not do it once it is up.
    from tunnel_mcp import manager, render, stdio

    monkeypatch.setattr(manager, "SESSION_LAYER", ())
    for table in (render._format_characters, render._display_escapes, render._visible_escapes):
        table.cache_clear()
    answered = trio.Event()
    answered.set()
    await stdio._preload(answered)
    assert render._display_escapes.cache_info().currsize == 1
    assert render._visible_escapes.cache_info().currsize == 1


def test_starting_the_server_does_not_load_the_tools() -> None:
    # They are a good part of the start-up: loaded once the handshake is answered (below).
    code = "import sys, tunnel_mcp.cli, tunnel_mcp.stdio; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = done.stdout
    for deferred in ("tunnel_mcp.tools", "tunnel_mcp.models", "tunnel_mcp.toolkit", "tunnel_mcp.room_tools"):
        assert f"'{deferred}'" not in loaded, deferred


def test_starting_the_server_does_not_load_the_protocol_core_or_the_session_types() -> None:
    # tunnelproto is ~70 ms of imports and the session types ~11 ms: the manager's error
    # classes (tunnel_trio.errors) are reachable without either, so the handshake waits for
    # neither (the session types load with the tools, the session layer in the background).
    code = "import sys, tunnel_mcp.cli, tunnel_mcp.stdio; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'tunnelproto" not in done.stdout
    assert "'tunnel_trio.session'" not in done.stdout
    assert "'tunnel_trio.session_types'" not in done.stdout


def test_the_session_types_load_without_the_protocol_core() -> None:
    # What the tools load before the client's first tools/list is answered.
    code = "import sys, tunnel_mcp.tools; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'tunnel_trio.session_types'" in done.stdout
    assert "'tunnelproto" not in done.stdout


def test_the_package_version_is_not_looked_up_in_its_metadata() -> None:
    # The initialize answer names the version; an importlib.metadata lookup (its imports and a
    # scan of sys.path) would come before that answer. (The SDK imports importlib.metadata
    # itself, so the check is on `import tunnel_mcp` alone.)
    code = "import sys, tunnel_mcp; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'importlib.metadata'" not in done.stdout


async def test_the_tools_load_once_the_handshake_is_answered(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    from tunnel_mcp import manager, stdio

    monkeypatch.setattr(manager, "SESSION_LAYER", ())
    loads: list[float] = []
    monkeypatch.setattr(stdio, "load_tools", lambda: loads.append(trio.current_time()))
    answered = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stdio._preload, answered)
        await trio.sleep(0.1)
        assert loads == []  # the handshake is not answered yet: nothing competes with it
        answered.set()
        await trio.sleep(0.01)
        assert len(loads) == 1
    # A server no client has spoken to yet loads them anyway, after a while.
    loads.clear()
    started = trio.current_time()
    await stdio._preload(trio.Event())
    assert len(loads) == 1 and loads[0] - started >= manager.PRELOAD_AFTER
