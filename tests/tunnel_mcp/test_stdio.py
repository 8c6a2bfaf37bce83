"""Real `tunnel-mcp` server processes, driven over stdio the way agents' MCP clients drive them."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import anyio
import mcp_types as types
import pytest
import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.message import SessionMessage
from pydantic import TypeAdapter

from tunnel_mcp.demo import websocket_payloads
from tunnel_mcp.skill_install import skill_text

#: What a transport yields: the client's read and write streams (the SDK's own alias is private).
TransportStreams = tuple[Any, Any]

SERVER = [sys.executable, "-m", "tunnel_mcp", "--log-level", "debug"]


def server_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TUNNEL_TRANSPORT": "local",
        "TUNNEL_SKIP_SKILL_INSTALL": "1",
        "TUNNEL_SKILLS_DIR": str(tmp_path / "skills"),
    }


@asynccontextmanager
async def sdk_client(tmp_path: Path, name: str) -> AsyncIterator[Client]:
    """A server process behind the SDK's own stdio client (what most agents' clients do)."""
    params = StdioServerParameters(command=SERVER[0], args=SERVER[1:], env=server_env(tmp_path))
    with (tmp_path / f"{name}.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=60) as client:
            yield client


class OwnedServer:
    """A server process this test owns (so it can signal it), spoken to over its stdio."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self._env = server_env(tmp_path)
        self._log = tmp_path / f"{name}.log"
        self.process: trio.Process | None = None
        self._nursery_cm: Any = None

    async def __aenter__(self) -> TransportStreams:
        with self._log.open("w") as errlog:
            self.process = await trio.lowlevel.open_process(
                SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, env=self._env
            )
        to_client, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](16)
        to_server, from_client = anyio.create_memory_object_stream[SessionMessage](16)
        proc = self.process

        async def read() -> None:
            assert proc.stdout is not None
            buffer = b""
            async with to_client:
                async for chunk in proc.stdout:
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                            await to_client.send(SessionMessage(message))

        async def write() -> None:
            assert proc.stdin is not None
            async with from_client:
                async for item in from_client:
                    data = item.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    try:
                        await proc.stdin.send_all(data.encode())
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return

        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(read)
        nursery.start_soon(write)
        self._nursery = nursery
        return from_server, to_server

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self.process is not None
        with trio.move_on_after(15):
            if self.process.stdin is not None:
                await self.process.stdin.aclose()
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._nursery.cancel_scope.cancel()
        return await self._nursery_cm.__aexit__(exc_type, exc, tb)  # type: ignore[no-any-return]

    def log(self) -> str:
        return self._log.read_text()


async def ok(client: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    result = await client.call_tool(tool, args or {})
    assert not result.is_error, f"{tool}: {result.content}"
    assert result.structured_content is not None
    return result.structured_content


async def error_text(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, f"{tool} unexpectedly succeeded"
    assert isinstance(result.content[0], types.TextContent)
    return result.content[0].text


async def wait_for_event(client: Client, since: int, event: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    with trio.fail_after(30):
        while event not in [m.get("event") for m in seen]:
            got = await ok(client, "tunnel_listen", {"sinceSeq": since, "timeoutMs": 5000})
            seen += got["messages"]
            since = got["lastSeq"]
    return seen


async def test_two_servers_talk_and_a_third_is_refused(tmp_path: Path) -> None:
    async with sdk_client(tmp_path, "host") as host, sdk_client(tmp_path, "guest") as guest:
        opened = await ok(host, "tunnel_open", {"goal": "pair on the parser", "name": "ana"})
        assert opened["joinLink"].startswith("http://127.0.0.1:")  # TUNNEL_TRANSPORT=local
        joined = await ok(guest, "tunnel_join", {"joinLink": opened["joinLink"], "name": "ben"})
        assert joined["goal"] == "pair on the parser"

        said = await ok(guest, "tunnel_say", {"text": "hello from ben"})
        heard = await ok(host, "tunnel_listen", {"sinceSeq": 0, "timeoutMs": 10_000})
        assert "hello from ben" in [m["text"] for m in heard["messages"]]
        await ok(host, "tunnel_say", {"text": "hello from ana"})
        heard = await ok(guest, "tunnel_listen", {"sinceSeq": said["seq"], "timeoutMs": 10_000})
        assert [m["text"] for m in heard["messages"]] == ["hello from ana"]

        async with sdk_client(tmp_path, "intruder") as intruder:
            refusal = await error_text(intruder, "tunnel_join", {"joinLink": opened["joinLink"]})
        assert "already used" in refusal

        assert (await ok(host, "tunnel_close", {"summary": "done"}))["closed"] is True
        closing = await wait_for_event(guest, heard["lastSeq"], "closed")
        assert closing[-1]["text"] == "done"
        assert (await ok(guest, "tunnel_close"))["closed"] is True
    for name in ("host", "guest", "intruder"):
        log = (tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in log, log
        if name != "intruder":  # (it lives for well under the preload's delay)
            assert "session layer loaded" in log  # in the background, after start-up
        assert "#" not in "".join(line.split("/t/")[-1] for line in log.splitlines() if "/t/" in line)
        assert opened["joinLink"].split("#")[1] not in log  # the secret never reaches a log


class ListSkills(types.Request[types.PaginatedRequestParams | None, Literal["skills/list"]]):
    method: Literal["skills/list"] = "skills/list"
    params: types.PaginatedRequestParams | None = None


async def test_a_server_process_serves_the_etiquette_skill_over_mcp(tmp_path: Path) -> None:
    async with sdk_client(tmp_path, "skills") as client:
        capabilities = client.server_capabilities
        assert capabilities.extensions is not None
        assert "io.modelcontextprotocol/skills" in capabilities.extensions
        assert capabilities.prompts is None
        listing = await client.session.send_request(ListSkills(), TypeAdapter(dict[str, Any]))
        (entry,) = listing["skills"]
        (resource,) = entry["resources"]
        (content,) = (await client.read_resource(entry["uri"])).contents
        assert isinstance(content, types.TextResourceContents)
        data = content.text.encode()
        assert data == skill_text()
        assert resource["size"] == len(data)
        assert resource["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    # TUNNEL_SKIP_SKILL_INSTALL=1: serving the skill over MCP wrote nothing into the home.
    assert not (tmp_path / "skills").exists()


async def test_host_stdin_closing_ends_the_room_for_everyone(tmp_path: Path) -> None:
    async with sdk_client(tmp_path, "guest") as guest:
        async with sdk_client(tmp_path, "host") as host:
            opened = await ok(host, "tunnel_open", {"goal": "short one", "name": "ana"})
            await ok(guest, "tunnel_join", {"joinLink": opened["joinLink"], "name": "ben"})
        # The host's agent went away (its client closed stdin) without calling tunnel_close.
        await wait_for_event(guest, 0, "closed")
        assert opened["joinLink"].split("#")[1] not in (tmp_path / "host.log").read_text()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_to_the_host_ends_the_room_gracefully(tmp_path: Path, signum: int) -> None:
    owned = OwnedServer(tmp_path, "host")
    async with sdk_client(tmp_path, "guest") as guest:
        async with Client(owned, read_timeout_seconds=60) as host:
            opened = await ok(host, "tunnel_open", {"goal": "signals", "name": "ana"})
            joined = await ok(guest, "tunnel_join", {"joinLink": opened["joinLink"], "name": "ben"})
            assert owned.process is not None
            owned.process.send_signal(signum)
            # The guest hears a proper `closed` (not a dropped connection it would try to resume).
            await wait_for_event(guest, 0, "closed")
            with trio.fail_after(30):
                await owned.process.wait()
            assert owned.process.returncode == 0, owned.log()
            relay = int(opened["joinLink"].split(":")[2].split("/")[0])
        status = await ok(guest, "tunnel_status")
        assert status["connection"] == "closed"
        assert joined["tunnelId"] == status["tunnelId"]
    assert "Traceback" not in owned.log()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", relay)


async def test_unreadable_requests_get_a_parse_error_not_silence(tmp_path: Path) -> None:
    # A lone surrogate ("\\ud800") is valid JSON but not Unicode text: the SDK drops such a
    # line unanswered, and the client would wait forever. Garbage gets the same treatment.
    log_path = tmp_path / "server.log"
    with log_path.open("w") as errlog:
        proc = await trio.lowlevel.open_process(
            SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog,
            env=server_env(tmp_path),
        )
    assert proc.stdin is not None and proc.stdout is not None
    buffer = b""

    async def send(line: str) -> None:
        assert proc.stdin is not None
        await proc.stdin.send_all(line.encode() + b"\n")

    async def answer() -> dict[str, Any]:
        nonlocal buffer
        assert proc.stdout is not None
        with trio.fail_after(30):
            while b"\n" not in buffer:
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, "the server closed its stdout"
                buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    try:
        await send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"}}}))
        assert (await answer())["id"] == 1
        await send('{"jsonrpc": "2.0", "method": "notifications/initialized"}')
        secret_marker = "do-not-log-this"
        await send('{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": '
                   '"tunnel_say", "arguments": {"text": "' + secret_marker + ' \\ud800"}}}')
        reply = await answer()
        assert reply["id"] == 7 and reply["error"]["code"] == types.PARSE_ERROR
        assert "Unicode" in reply["error"]["message"]
        await send('{"jsonrpc": "2.0", "id": 8, "method": ')  # cut short: not JSON at all
        reply = await answer()
        assert reply["id"] is None and reply["error"]["code"] == types.PARSE_ERROR
        # A surrogate *pair* is fine (an emoji), and the server still answers normally.
        await send('{"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": '
                   '"tunnel_say", "arguments": {"text": "hi \\ud83d\\ude00"}}}')
        reply = await answer()
        assert reply["id"] == 9 and "error" not in reply
        assert "no open tunnel" in reply["result"]["content"][0]["text"]
    finally:
        await proc.stdin.aclose()
        with trio.fail_after(30):
            await proc.wait()
    log = log_path.read_text()
    assert log.count("answered with a JSON-RPC parse error") == 2, log
    assert secret_marker not in log
    assert "Traceback" not in log


def test_websocket_payloads_unmasks_client_frames() -> None:
    # The demo's ciphertext check relies on this: a masked frame must come back as plaintext.
    mask = bytes([1, 2, 3, 4])
    payload = b"hello, world"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    stream = b"GET /t/x HTTP/1.1\r\nHost: a\r\n\r\n" + bytes([0x82, 0x80 | len(payload)]) + mask + masked
    head, payloads = websocket_payloads(stream)
    assert head.startswith(b"GET /t/x")
    assert payloads == [payload]


async def test_two_processes_drop_and_resume_without_losing_a_message(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    from dropproxy import DropProxy

    async with sdk_client(tmp_path, "host") as host, sdk_client(tmp_path, "guest") as guest:
        opened = await ok(host, "tunnel_open", {"goal": "survive drops", "name": "ana"})
        before, secret = opened["joinLink"].split("#")
        base, path = before.rsplit("/t/", 1)
        proxy = DropProxy(int(base.rsplit(":", 1)[1]))
        await nursery.start(proxy.run)
        link = f"http://127.0.0.1:{proxy.port}/t/{path}#{secret}"
        await ok(guest, "tunnel_join", {"joinLink": link, "name": "ben"})

        expected = []
        for round_ in range(3):
            for i in range(5):
                await ok(host, "tunnel_say", {"text": f"ana {round_}.{i}"})
                expected.append(f"ana {round_}.{i}")
            proxy.drop_all()  # the guest's TCP connection dies under it
            # The guest's say waits through the reconnect and lands exactly once.
            await ok(guest, "tunnel_say", {"text": f"ben {round_}"})
            expected.append(f"ben {round_}")
        assert proxy.drops >= 3

        last = (await ok(host, "tunnel_status"))["lastSeq"]
        seen: list[dict[str, Any]] = []
        since = 0
        with trio.fail_after(30):
            while since < last:
                got = await ok(
                    guest,
                    "tunnel_listen",
                    {"sinceSeq": since, "timeoutMs": 5000, "includeOwn": True},
                )
                seen += got["messages"]
                since = got["lastSeq"]
        assert [m["seq"] for m in seen] == list(range(1, last + 1))  # no gap, no duplicate
        assert [m["text"] for m in seen if m["kind"] == "chat"] == expected
        events = [m["event"] for m in seen if m["kind"] == "event"]
        assert "disconnected" in events and "reconnected" in events
        members = (await ok(host, "tunnel_status"))["members"]
        assert [(m["name"], m["connected"]) for m in members] == [("ana", True), ("ben", True)]
        await ok(host, "tunnel_close", {})
