"""`tunnel-mcp demo`: the whole story, as two agents would live it, narrated step by step.

Two real `tunnel-mcp` servers run as child processes (one per developer), each driven over
stdio by the MCP client SDK exactly as an agent's MCP client would. On the `local` transport the
guest reaches the host's relay through a small TCP forwarder in this process, which keeps a copy
of every byte so the demo can show they are ciphertext. The demo is not an MCP server, so its
narration goes to stdout.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import mcp_types as types
import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from tunnel_trio.session import relay_answers

GOAL = "Agree on the retry policy for the payments client"
HOST_NAME = "ana"
GUEST_NAME = "ben"
INTRUDER_NAME = "eve"
GUEST_SAYS = "Hi ana, ben's agent here. Proposal: 3 retries, exponential backoff from 200 ms."
HOST_SAYS = "Sounds good to ana. Let's cap the backoff at 5 s and retry only idempotent calls."
SUMMARY = "Agreed: 3 retries, exponential backoff 200 ms to 5 s, idempotent calls only."
#: Bytes of each direction the wire tap keeps (plenty for a few chat messages).
TAP_LIMIT = 256 * 1024


class DemoFailed(Exception):
    """A step did not do what the demo promised; the message says which and why."""


# -- narration -------------------------------------------------------------------------------------


class Narrator:
    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._step = 0

    def step(self, text: str) -> None:
        self._step += 1
        self._print(f"\n{self._step}. {text}")

    def say(self, text: str, indent: str = "   ") -> None:
        for line in text.splitlines() or [""]:
            self._print(f"{indent}{line}")

    def ok(self, text: str) -> None:
        self.say(f"ok: {text}")

    @property
    def current_step(self) -> int:
        return self._step

    def _print(self, text: str) -> None:
        print(text, file=self._out, flush=True)


def hide_secret(link: str) -> str:
    """The link as it may be shown: the fragment (the invite secret) cut to a hint."""
    base, _, secret = link.partition("#")
    return f"{base}#<secret hidden>" if secret else base


# -- the wire tap ----------------------------------------------------------------------------------


@dataclass
class WireTap:
    """A TCP forwarder on 127.0.0.1 that keeps a copy of what it forwards, both ways."""

    target_port: int
    to_host: bytearray = field(default_factory=bytearray)
    to_guest: bytearray = field(default_factory=bytearray)
    port: int = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._forward, listeners)
            task_status.started(self.port)

    async def _forward(self, guest_side: trio.SocketStream) -> None:
        async with guest_side:
            try:
                host_side = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with host_side, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, guest_side, host_side, self.to_host, nursery.cancel_scope)
                nursery.start_soon(self._pump, host_side, guest_side, self.to_guest, nursery.cancel_scope)

    @staticmethod
    async def _pump(
        src: trio.SocketStream, dst: trio.SocketStream, copy: bytearray, done: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(65536):
                if len(copy) < TAP_LIMIT:
                    copy += data[: TAP_LIMIT - len(copy)]
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        done.cancel()


def websocket_payloads(stream: bytes) -> tuple[bytes, list[bytes]]:
    """Split one direction of a captured connection into its HTTP head and WebSocket payloads.

    Client-to-server frames are masked (RFC 6455 section 5.3); masking is not encryption, so
    payloads are unmasked here before anything is concluded from them.
    """
    head, sep, rest = stream.partition(b"\r\n\r\n")
    if not sep:
        return stream, []
    payloads: list[bytes] = []
    i = 0
    while i + 2 <= len(rest):
        b1 = rest[i + 1]
        length = b1 & 0x7F
        i += 2
        if length == 126:
            length = int.from_bytes(rest[i : i + 2], "big")
            i += 2
        elif length == 127:
            length = int.from_bytes(rest[i : i + 8], "big")
            i += 8
        mask = b""
        if b1 & 0x80:
            mask = rest[i : i + 4]
            i += 4
        payload = rest[i : i + length]
        i += length
        if mask and len(mask) == 4:
            payload = bytes(byte ^ mask[n % 4] for n, byte in enumerate(payload))
        payloads.append(payload)
    return head, payloads


def hexdump(data: bytes, width: int = 16) -> str:
    lines = []
    for offset in range(0, len(data), width):
        chunk = data[offset : offset + width]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:04x}  {chunk.hex(' '):<{width * 3}} {text}")
    return "\n".join(lines)


# -- driving the servers ---------------------------------------------------------------------------


@dataclass
class Agent:
    """One developer's MCP client talking to their own `tunnel-mcp` server process."""

    name: str
    client: Client
    log_path: Path

    async def call(self, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        result = await self.client.call_tool(tool, args or {})
        text = _text(result)
        if result.is_error:
            raise DemoFailed(f"{self.name}'s {tool} failed: {text}")
        if result.structured_content is None:
            raise DemoFailed(f"{self.name}'s {tool} returned no structured content")
        return dict(result.structured_content)

    async def call_expecting_error(self, tool: str, args: dict[str, Any]) -> str:
        result = await self.client.call_tool(tool, args)
        if not result.is_error:
            raise DemoFailed(f"{self.name}'s {tool} succeeded but should have been refused")
        return _text(result)

    async def listen_until(
        self, since: int, wanted: Callable[[dict[str, Any]], bool], *, budget: float
    ) -> tuple[list[dict[str, Any]], int]:
        """Listen (as an agent would, in turns) until a message matching `wanted` arrives."""
        seen: list[dict[str, Any]] = []
        with trio.move_on_after(budget):
            while True:
                got = await self.call("tunnel_listen", {"sinceSeq": since, "timeoutMs": 5000})
                seen += got["messages"]
                since = got["lastSeq"]
                if any(wanted(m) for m in got["messages"]):
                    return seen, since
        raise DemoFailed(f"{self.name} waited {budget:.0f} s and the expected message never came")


def _text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _server_env(transport: str, skills_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TUNNEL_TRANSPORT=transport,
        TUNNEL_SKIP_SKILL_INSTALL="1",  # the demo must not touch the user's skills
        TUNNEL_SKILLS_DIR=str(skills_dir),
        PYTHONUNBUFFERED="1",
    )
    return env


class Prompts:
    """A human at an MCP client that can show approval prompts (elicitation): the demo's human
    reads each prompt aloud (in the narration) and accepts."""

    def __init__(self, say: Narrator, name: str) -> None:
        self._say = say
        self._name = name
        self.shown: list[str] = []

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.shown.append(params.message)
        self._say.say(f"{self._name}'s MCP client shows {self._name} this prompt:")
        self._say.say(textwrap.indent(params.message, "   | ", predicate=lambda _: True))
        if "erification phrase" in params.message:
            self._say.say(f"{self._name} compares the phrase with {HOST_NAME} on a call, and accepts.")
        else:
            self._say.say(f"{self._name} reads it and accepts.")
        return types.ElicitResult(action="accept", content={})


@asynccontextmanager
async def start_agent(
    name: str, workdir: Path, transport: str, prompts: Prompts | None = None
) -> AsyncIterator[Agent]:
    """Start `python -m tunnel_mcp` (works from any virtualenv) and connect an MCP client to it
    (one that shows approval prompts to its human when `prompts` is given)."""
    log_path = workdir / f"{name}.log"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "tunnel_mcp", "--log-level", "info"],
        env=_server_env(transport, workdir / "skills"),
    )
    with log_path.open("w", encoding="utf-8") as errlog:
        async with Client(
            stdio_client(params, errlog=errlog), read_timeout_seconds=120, elicitation_callback=prompts
        ) as client:
            yield Agent(name, client, log_path)


def _relay_port(link: str) -> int:
    port = urlsplit(link).port
    if port is None:
        raise DemoFailed(f"the local join link has no port: {hide_secret(link)}")
    return port


def _via_port(link: str, port: int) -> str:
    parts = urlsplit(link)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


def _port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def _no_child_processes() -> bool | None:
    """True when this process has no child left (None where that cannot be checked)."""
    if not hasattr(os, "WNOHANG"):
        return None
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)  # reaps an exited child, if any
        except ChildProcessError:
            return True
        if pid == 0:
            return False  # a child is still running


# -- the story -------------------------------------------------------------------------------------


async def _story(say: Narrator, transport: str, workdir: Path) -> None:
    local = transport == "local"
    budget = 30.0 if local else 180.0
    say.say(
        f"tunnel-mcp demo: two developers' agents pair through an end-to-end-encrypted tunnel "
        f"(transport: {transport}).",
        indent="",
    )

    async with AsyncExitStack() as stack:
        say.step(
            f"Start two MCP servers, one per developer: `{sys.executable} -m tunnel_mcp` for "
            f"{HOST_NAME} (host) and for {GUEST_NAME} (guest), each driven over stdio by the MCP "
            "client SDK, as their agents' MCP clients would."
        )
        # (Not under a timeout scope: the clients' task groups outlive this block.)
        host_prompts = Prompts(say, HOST_NAME)
        host = await stack.enter_async_context(start_agent(HOST_NAME, workdir, transport, host_prompts))
        prompts = Prompts(say, GUEST_NAME)
        guest = await stack.enter_async_context(start_agent(GUEST_NAME, workdir, transport, prompts))
        with trio.fail_after(60):
            tools = {t.name for t in (await host.client.list_tools()).tools}
            await guest.client.list_tools()
        say.ok(f"both servers answered; tools: {', '.join(sorted(tools))}")

        say.step(f'{HOST_NAME}\'s agent calls tunnel_open with the goal "{GOAL}".')
        if not local:
            say.say("(starting a Cloudflare Quick Tunnel can take up to a minute)")
        with trio.fail_after(budget):
            opened = await host.call(
                "tunnel_open", {"goal": GOAL, "name": HOST_NAME, "transport": transport}
            )
        link = opened["joinLink"]
        say.ok(f"tunnel {opened['tunnelId']} is open")
        say.say(f"join link: {hide_secret(link)}")
        say.say(
            f"It is single-use and expires in {opened['expiresInSec'] // 60} minutes. The part "
            "after '#' is the invite secret: browsers and HTTP clients never send a URL fragment, "
            "so no server on the way (not even Cloudflare) ever sees it."
        )
        say.say(f"{HOST_NAME}'s agent shows its human this invite to forward privately:")
        invite = opened["invite"].replace(link, hide_secret(link))
        say.say(textwrap.indent(invite, "   | ", predicate=lambda _: True))

        tap: WireTap | None = None
        guest_link = link
        if local:
            say.step(
                "Put a wire tap between the two: a TCP forwarder on 127.0.0.1 in front of "
                f"{HOST_NAME}'s relay that keeps a copy of every byte. {GUEST_NAME} gets the "
                "same link pointed at the tap."
            )
            tap = WireTap(_relay_port(link))
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            tap_port = await nursery.start(tap.run)
            guest_link = _via_port(link, tap_port)
            say.ok(f"relay on port {tap.target_port}, tap on port {tap_port}")

        say.step(
            f"{HOST_NAME}'s human sends the link to {GUEST_NAME}; {GUEST_NAME}'s agent calls "
            f"tunnel_join. After the handshake, {GUEST_NAME}'s MCP client asks {GUEST_NAME} to "
            "approve (an elicitation prompt) before the agent can say or read anything."
        )
        with trio.fail_after(budget + 30):
            joined = await guest.call("tunnel_join", {"joinLink": guest_link, "name": GUEST_NAME})
        if joined["goal"] != GOAL:
            raise DemoFailed(f"the guest received the goal {joined['goal']!r}, not {GOAL!r}")
        if joined["approval"] != "accepted" or len(prompts.shown) != 1:
            raise DemoFailed(f"the join was not approved through the prompt: {joined['approval']}")
        names = ", ".join(m["name"] for m in joined["members"])
        say.ok(
            f"{GUEST_NAME} joined as member {joined['self']['id']}; the goal arrived inside the "
            f"encrypted tunnel; members: {names}"
        )
        status = await host.call("tunnel_status")
        seen_by_host = [m.get("phrase") for m in status["members"] if m["id"] == joined["self"]["id"]]
        say.say(f"{GUEST_NAME}'s verification phrase, on {GUEST_NAME}'s side:  {joined['phrase']}")
        say.say(f"{GUEST_NAME}'s verification phrase, on {HOST_NAME}'s side:  {seen_by_host[0] if seen_by_host else None}")
        if seen_by_host != [joined["phrase"]]:
            raise DemoFailed("the two ends show different verification phrases")
        say.ok(
            "the same four words on both ends: nobody relays between them (someone holding the "
            "link in between would make the two ends see different words)"
        )

        say.step(f"{GUEST_NAME}'s agent says something; {HOST_NAME}'s agent listens.")
        with trio.fail_after(budget + 15):
            said = await guest.call("tunnel_say", {"text": GUEST_SAYS})
            heard, _ = await host.listen_until(
                0, lambda m: m.get("text") == GUEST_SAYS, budget=budget
            )
        for m in heard:
            say.say(_describe(m))
        say.ok(f"{HOST_NAME} heard #{said['seq']} from {GUEST_NAME}")

        say.step(f"{HOST_NAME}'s agent answers; {GUEST_NAME}'s agent listens.")
        with trio.fail_after(budget + 15):
            await host.call("tunnel_say", {"text": HOST_SAYS})
            heard, since_guest = await guest.listen_until(
                said["seq"], lambda m: m.get("text") == HOST_SAYS, budget=budget
            )
        for m in heard:
            say.say(_describe(m))
        say.ok("messages flow both ways, in one order for everyone")

        since_guest = await _share_a_folder(say, host, guest, workdir, since_guest, budget)

        say.step(
            f"A third developer, {INTRUDER_NAME}, got hold of the same link and starts a third "
            "server to join with it."
        )
        with trio.fail_after(60):
            async with start_agent(INTRUDER_NAME, workdir, transport) as intruder:
                refusal = await intruder.call_expecting_error(
                    "tunnel_join", {"joinLink": guest_link, "name": INTRUDER_NAME}
                )
        if "used" not in refusal:
            raise DemoFailed(f"the used link was refused, but not for being used: {refusal}")
        say.ok(f"refused: {refusal}")
        status = await host.call("tunnel_status")
        members = [m["name"] for m in status["members"]]
        if INTRUDER_NAME in members:
            raise DemoFailed("the intruder shows up in the room")
        say.ok(f"the room still holds only {', '.join(members)}")

        say.step(f"{HOST_NAME}'s agent closes the tunnel with a summary; {GUEST_NAME}'s agent hears it.")
        with trio.fail_after(budget + 15):
            await host.call("tunnel_close", {"summary": SUMMARY})
            heard, _ = await guest.listen_until(
                since_guest, lambda m: m.get("event") == "closed", budget=budget
            )
        closing = next(m for m in heard if m.get("event") == "closed")
        if closing.get("text") != SUMMARY:
            raise DemoFailed(f"the closing summary arrived as {closing.get('text')!r}")
        say.ok(f"{GUEST_NAME} got the closed event with the summary: {SUMMARY!r}")
        late = await guest.call_expecting_error("tunnel_say", {"text": "anyone there?"})
        say.ok(f"saying anything now is refused: {late}")

        if tap is not None:
            say.step("Look at what crossed the wire (what a relay, a proxy or Cloudflare would see).")
            _inspect_wire(say, tap, link, [GOAL, GUEST_SAYS, HOST_SAYS, SUMMARY, *FOLDER.values(), *LEFT_BEHIND.values()])
        else:
            say.step("What crossed the wire")
            say.say(
                "Through cloudflared the bytes are inside TLS to Cloudflare, and inside that, "
                "Noise ciphertext that Cloudflare cannot read. Run `tunnel-mcp demo` (local) to "
                "see a capture."
            )
            if status.get("cloudflaredAlive") is False:
                raise DemoFailed("cloudflared is not running although the tunnel is open")


        say.step("Stop both servers (their MCP clients close stdin, as an agent does on exit).")
        relay_port = _relay_port(link) if local else None
    # Leaving the stack closed both MCP clients (their servers exit) and the wire tap.

    leftovers = []
    if relay_port is not None and not _port_refuses(relay_port):
        leftovers.append(f"the relay port {relay_port} still accepts connections")
    # Through cloudflared the relay's port is the host server's secret; what anyone can check
    # is the public URL. The relay and cloudflared both lived in (or under) the host server,
    # so a WebSocket there only opens if something of ours is still running.
    link_dead = local or not await relay_answers(link)
    if not link_dead:
        leftovers.append(f"{hide_secret(link)} still reaches a relay")
    if _no_child_processes() is False:
        leftovers.append("a child process is still running")
    if leftovers:
        raise DemoFailed("; ".join(leftovers))
    if relay_port is not None:
        say.ok(f"the relay's port {relay_port} refuses connections now")
    if not local:
        say.ok("the public URL no longer reaches a relay: cloudflared and the relay are gone")
    say.ok("no child process is left running")
    say.say(
        "\nDemo complete: open, join with the human's approval and matching phrases, talk both ways, "
        "share a folder (secrets and git-ignored files left out), single-use link, ciphertext on "
        "the wire, close.",
        indent="",
    )


#: The folder ana shares: what ben must receive, file by file.
FOLDER = {
    "retry_cases.json": '{"cases": [{"status": 503, "retry": true}, {"status": 400, "retry": false}]}\n',
    "README.md": "Fixtures for the payments client's retry policy.\n",
    ".gitignore": "*.log\n",
}
#: What ana's folder also holds and must never leave her machine.
LEFT_BEHIND = {
    ".env": "PAYMENTS_API_KEY=sk_demo_do_not_share_0123456789\n",
    "debug.log": "2026-01-01 retry 3 of 3 failed (local debugging noise)\n",
}


def _make_folder(root: Path) -> bool:
    """ana's fixtures folder, a git work tree when git is installed (True then)."""
    root.mkdir(parents=True)
    for name, text in {**FOLDER, **LEFT_BEHIND}.items():
        (root / name).write_text(text, encoding="utf-8")
    if shutil.which("git") is None:
        return False
    done = subprocess.run(["git", "init", "-q", str(root)], capture_output=True, check=False)
    return done.returncode == 0


async def _share_a_folder(
    say: Narrator, host: Agent, guest: Agent, workdir: Path, since: int, budget: float
) -> int:
    folder = workdir / HOST_NAME / "payments-fixtures"
    in_git = _make_folder(folder)
    say.step(
        f"{HOST_NAME}'s agent shares a folder of fixtures with tunnel_share. It also holds a "
        "secret-looking .env and a debug.log that git ignores: neither may leave her machine. "
        f"{HOST_NAME}'s MCP client asks her first, showing what is read and what is left out."
    )
    with trio.fail_after(budget + 15):
        shared = await host.call("tunnel_share", {"path": str(folder), "note": "retry fixtures"})
    skipped = {s["path"]: s["reason"] for s in shared["skipped"]}
    for path, reason in skipped.items():
        say.say(f"skipped: {path} ({reason})")
    if ".env" not in skipped or (in_git and "debug.log" not in skipped):
        raise DemoFailed(f"the share did not leave out the secret and the ignored file: {skipped}")
    if not shared["shared"] or sorted(f["path"] for f in shared["files"]) != sorted(FOLDER):
        raise DemoFailed(f"the share offered {[f['path'] for f in shared['files']]}")
    say.ok(
        f"offer {shared['offerId']}: {shared['count']} files, {shared['total']} bytes, hash "
        f"{shared['hash'][:16]}..."
    )

    say.step(
        f"{GUEST_NAME}'s agent sees the offer in tunnel_listen and receives it with "
        f"tunnel_receive; {GUEST_NAME}'s MCP client asks him to approve the full destination."
    )
    into = workdir / GUEST_NAME / "received" / "payments-fixtures"
    with trio.fail_after(budget + 15):
        heard, since = await guest.listen_until(
            since, lambda m: m.get("kind") == "file" and m["file"]["offerId"] == shared["offerId"],
            budget=budget,
        )
        for m in heard:
            say.say(_describe(m))
        got = await guest.call(
            "tunnel_receive", {"offerId": shared["offerId"], "saveTo": str(into)}
        )
    if not got["complete"]:
        raise DemoFailed(f"the receive did not complete: {got.get('error')}")
    for f in got["written"]:
        say.say(f"written: {f['target']} ({f['size']} bytes, sha256 {f['sha256'][:16]}...)")
    arrived = {
        p.relative_to(into).as_posix(): p.read_text(encoding="utf-8")
        for p in into.rglob("*") if p.is_file()
    }
    if arrived != FOLDER:
        raise DemoFailed(f"{GUEST_NAME} received {sorted(arrived)}, not {sorted(FOLDER)}")
    say.ok(
        f"{GUEST_NAME} has exactly the shared files, each checked against its SHA-256; no .env, "
        "no debug.log"
    )
    return int(since)


def _describe(message: dict[str, Any]) -> str:
    if message["kind"] == "chat":
        who = message["from"]["name"] if message.get("from") else "?"
        return f"#{message['seq']} {who}: {message['text']}"
    if message["kind"] == "file" and message.get("file"):
        offer = message["file"]
        return (
            f"#{message['seq']} [file] offer {offer['offerId']} from {offer['sharer']['name']}: "
            f"{offer['name']} ({offer['count']} files, {offer['total']} bytes)"
        )
    subject = f" {message['subject']['name']}" if message.get("subject") else ""
    phrase = f" (verification phrase: {message['phrase']})" if message.get("phrase") else ""
    return f"#{message['seq']} [event] {message['event']}{subject}{phrase}"


def _inspect_wire(say: Narrator, tap: WireTap, link: str, plaintexts: list[str]) -> None:
    up_head, up = websocket_payloads(bytes(tap.to_host))
    down_head, down = websocket_payloads(bytes(tap.to_guest))
    total = len(tap.to_host) + len(tap.to_guest)
    if not up or not down:
        raise DemoFailed("the tap saw no WebSocket traffic, so it proves nothing")
    request_line = up_head.split(b"\r\n", 1)[0].decode("ascii", "replace")
    say.say(f"{total} bytes in {len(up) + len(down)} WebSocket messages. The only cleartext is the HTTP upgrade:")
    say.say(f"    {request_line}")
    say.say("(the tunnel id names the room; the invite secret is not in the request)")
    first = max(down, key=len)[:64]
    say.say(f"The start of the biggest message from {HOST_NAME}'s relay to {GUEST_NAME}:")
    say.say(textwrap.indent(hexdump(first), "    "))

    secret = link.partition("#")[2]
    wire = bytes(tap.to_host) + bytes(tap.to_guest) + b"".join(up) + b"".join(down)
    needles = {text: text.encode() for text in plaintexts}
    needles["the invite secret"] = secret.encode()
    # Long enough that a chance match in random bytes is impossible, short enough to catch
    # a partial leak.
    found = [name for name, needle in needles.items() if _leaks(needle, wire)]
    if found:
        raise DemoFailed(f"plaintext found on the wire: {found}")
    say.ok(
        "none of the goal, the chat texts, the shared files, the closing summary or the invite "
        "secret appear in "
        "the captured bytes, not even after removing the WebSocket masking: it is ciphertext"
    )


def _leaks(needle: bytes, haystack: bytes) -> bool:
    if len(needle) <= 24:
        return needle in haystack
    return any(needle[i : i + 24] in haystack for i in range(0, len(needle) - 23, 8))


def run_demo(*, transport: str = "local", out: TextIO | None = None) -> int:
    """Run the demo; 0 when every step did what it said, 1 otherwise (with the reason)."""
    say = Narrator(out or sys.stdout)
    with tempfile.TemporaryDirectory(prefix="tunnel-mcp-demo-") as tmp:
        workdir = Path(tmp)
        try:
            trio.run(_story, say, transport, workdir)
        except KeyboardInterrupt:
            say.say("\ndemo interrupted", indent="")
            return 130
        except Exception as exc:  # the user gets a reason, not a traceback
            _report_failure(say, _reason(exc), workdir)
            return 1
    return 0


def _reason(exc: BaseException) -> str:
    """The one-line reason for a failure, dug out of the exception groups nurseries add."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = next((e for e in exc.exceptions if _is_ours(e)), exc.exceptions[0])
    if isinstance(exc, DemoFailed):
        return str(exc)
    if isinstance(exc, trio.TooSlowError):
        return "a step took too long"
    return f"{type(exc).__name__}: {exc}"


def _is_ours(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_ours(e) for e in exc.exceptions)
    return isinstance(exc, DemoFailed | trio.TooSlowError)


def _report_failure(say: Narrator, reason: str, workdir: Path) -> None:
    say.say(f"\nDEMO FAILED at step {say.current_step}: {_redact(reason)}", indent="")
    for log in sorted(workdir.glob("*.log")):
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        if tail:
            say.say(f"--- last lines of the {log.stem} server's log ---", indent="")
            say.say("\n".join(_redact(line) for line in tail), indent="  ")


def _redact(text: str) -> str:
    return re.sub(r"(/t/[A-Za-z0-9_-]+)#[A-Za-z0-9_-]+", r"\1#<secret>", text)
