"""The trio-native stdio transport, in real processes: pipes (trio's own streams) and files
(worker threads), and the rule that only MCP messages ever reach the real stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mcp_types
import pytest
import trio
import trio.testing

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


# -- reads and writes that need not wait do not pass through the scheduler ----------------------


async def test_a_pipe_read_or_write_that_can_complete_at_once_takes_no_scheduler_pass() -> None:
    # trio's streams take one before every call; on the request path that was three extra
    # rounds of the run loop per MCP message (the read, the write and the write's lock).
    from mcp.shared.message import SessionMessage

    from tunnel_mcp.stdio_transport import StdinMessages, StdoutMessages, _Pipe

    (r_in, w_in), (r_out, w_out) = os.pipe(), os.pipe()
    stdout = StdoutMessages(_Pipe(w_out))
    stdin = StdinMessages(_Pipe(r_in), lambda line: None, stdout)
    os.write(w_in, _request(1) + _request(2))
    with trio.testing.assert_no_checkpoints():
        first, second = await stdin.receive(), await stdin.receive()
        await stdout.send(first)  # type: ignore[arg-type]
    assert isinstance(first, SessionMessage) and isinstance(second, SessionMessage)
    assert json.loads(os.read(r_out, 1 << 16)) == {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    # With nothing to read, the read waits in trio (and is cancelled like any other wait).
    with trio.move_on_after(0.05) as waited:
        await stdin.receive()
    assert waited.cancelled_caught
    for closing in (stdin, stdout):
        await closing.aclose()
    for fd in (w_in, r_out):
        os.close(fd)


async def test_a_write_bigger_than_the_pipe_waits_for_the_reader_and_stays_whole() -> None:
    from mcp.shared.message import SessionMessage

    from tunnel_mcp.stdio_transport import StdoutMessages, _Pipe

    r_out, w_out = os.pipe()
    stdout = StdoutMessages(_Pipe(w_out))
    big = [
        SessionMessage(mcp_types.JSONRPCResponse(jsonrpc="2.0", id=n, result={"x": str(n) * 300_000}))
        for n in (1, 2)
    ]
    got = bytearray()

    async def read_slowly() -> None:
        while got.count(b"\n") < 2:
            await trio.lowlevel.wait_readable(r_out)
            got.extend(os.read(r_out, 4096))
            await trio.sleep(0)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_slowly)
            for message in big:  # two writers at once: the lock keeps each line whole
                nursery.start_soon(stdout.send, message)
    lines = [json.loads(line) for line in bytes(got).splitlines()]
    assert sorted(line["id"] for line in lines) == [1, 2]
    assert all(line["result"]["x"] == str(line["id"]) * 300_000 for line in lines)
    await stdout.aclose()
    os.close(r_out)


class _FullPipe:
    """A wire whose reads always find bytes waiting (and so never wait in the scheduler)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)

    async def receive_some(self, max_bytes: int) -> bytes:
        return next(self._chunks, b"")

    async def send_all(self, data: bytes) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(
    "flood",
    [
        [b"\n" * 1000] * 50,  # blank lines
        [b"x" * 4096] * 50 + [b"\n"],  # a line over the limit, streaming in
        [b'{"jsonrpc": "2.0", "id": 1, "method": "ping"'] + [b" " * 4096] * 10 + [b"}\n"],  # a long line
    ],
)
async def test_a_flood_on_stdin_lets_the_other_tasks_run(
    flood: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reads that find bytes waiting take no scheduler pass: lines that give the dispatcher
    # nothing, and lines that take many reads, must still let the tunnel's tasks run.
    from tunnel_mcp import stdio_transport
    from tunnel_mcp.stdio_transport import StdinMessages, StdoutMessages

    monkeypatch.setattr(stdio_transport, "MAX_LINE", 64 << 10)
    ticks = 0

    async def other_task() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    stdin = StdinMessages(_FullPipe([*flood, _request(7)]), lambda line: None, StdoutMessages(_FullPipe([])))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        got = await stdin.receive()
        nursery.cancel_scope.cancel()
    assert not isinstance(got, Exception)
    assert ticks >= 10


def test_the_sdks_opentelemetry_span_is_left_out_only_while_nothing_would_record_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A no-op span per message costs ~11% of a ping's server CPU; with a tracer provider
    # installed (an OpenTelemetry SDK set up), every message gets its span as the SDK intends.
    from opentelemetry import trace

    from tunnel_mcp.server import build_server

    def spans(names: list[str]) -> bool:
        return "OpenTelemetryMiddleware" in names

    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert not spans([type(m).__name__ for m in build_server().middleware])
    monkeypatch.setattr(trace, "get_tracer_provider", trace.NoOpTracerProvider)
    assert spans([type(m).__name__ for m in build_server().middleware])
