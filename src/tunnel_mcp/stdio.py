"""Serving MCP on stdin/stdout under trio, with a graceful shutdown.

Three things end the server, and each closes the tunnel first (host: the room ends for
everyone and cloudflared stops; member: it leaves):

* stdin closing: the serve loop ends and the server's lifespan closes the tunnel.
* SIGTERM or SIGINT: the tunnel is closed while the relay still runs (cancelling first would
  kill the relay before its goodbyes go out, and members would see a dropped connection and try
  to resume), then everything is cancelled. A second signal skips the wait.

The SDK's `run_stdio_async` reads stdin in a worker thread that cannot be abandoned, so a
cancelled server would wait for the client's next line (or forever). Here stdin and stdout are
trio streams (`stdio_transport`): a read is cancelled like any other wait.

A line the SDK cannot read (not JSON, or a request holding a lone surrogate such as "\ud800",
which is valid JSON but not Unicode text) would be dropped by the SDK without an answer, and
the client would wait for one forever. Such lines are answered here with a JSON-RPC parse
error (with the request's id when it can be read) and logged, without their content.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import sys

import anyio
import mcp_types as types
import trio
from mcp.shared.message import SessionMessage

from tunnel_mcp import render
from tunnel_mcp.manager import PRELOAD_AFTER, TunnelManager, preload_session_layer
from tunnel_mcp.server import SHUTDOWN_GRACE, build_server, load_tools
from tunnel_mcp.stdio_transport import stdio_streams

log = logging.getLogger(__name__)


def _has_lone_surrogate(value: object) -> bool:
    """Whether a parsed JSON value holds a string that is not Unicode text."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parse_error(line: str) -> SessionMessage | None:
    """The JSON-RPC error answering `line`, if the SDK would drop it unanswered; else None."""
    if not line.strip():
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        log.warning("stdin: a line is not valid JSON; answered with a JSON-RPC parse error")
        request_id: int | str | None = None
        problem = "the line is not valid JSON"
    else:
        problem = (
            "a string in it is not valid Unicode text (a lone surrogate such as \\ud800)"
        )
        if not _has_lone_surrogate(value):
            return None  # the SDK's to read (and to judge)
        request_id = value.get("id") if isinstance(value, dict) else None
        if isinstance(request_id, bool) or not isinstance(request_id, int | str):
            request_id = None
        if isinstance(value, dict) and "method" not in value:
            log.warning("stdin: a response holds a lone surrogate (not Unicode text); dropped")
            return None
        if isinstance(value, dict) and "id" not in value:
            log.warning("stdin: a notification holds a lone surrogate (not Unicode text); dropped")
            return None
        log.warning(
            "stdin: a request holds a lone surrogate (not Unicode text); answered with a "
            "JSON-RPC parse error"
        )
    error = types.ErrorData(
        code=types.PARSE_ERROR,
        message=f"Parse error: {problem}; nothing was done. Send it again as valid JSON text.",
    )
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error))


async def _preload(answered: trio.Event) -> None:
    """What the first calls would otherwise wait for, loaded once the server is up; then
    everything loaded so far is taken out of the garbage collector's reach.

    First the tools (their modules, models and schemas: about a fifth of the start-up), once
    the answer to the client's `initialize` is out, so the handshake does not wait for them;
    the client's `tools/list`, which follows at once, does (it needs them). Then, in a worker
    thread, the session layer a first open or join needs."""
    with trio.move_on_after(PRELOAD_AFTER):  # no client yet: load them anyway
        await answered.wait()
    load_tools()
    await preload_session_layer()
    await trio.to_thread.run_sync(render.warm_up, abandon_on_cancel=True)
    # The SDK, pydantic's schemas and our modules are ~100k objects that live as long as the
    # process. Left in the collector's oldest generation, each full collection walks them all:
    # 60-130 ms with the event loop stopped, every few hundred tool calls. Frozen, a full
    # collection walks only what the tunnel made since.
    gc.freeze()


async def _serve(banner: str | None) -> None:
    managers: list[TunnelManager] = []

    def manager_factory(nursery: trio.Nursery) -> TunnelManager:
        manager = TunnelManager(nursery)
        managers.append(manager)
        return manager

    server = build_server(manager_factory)
    signals = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    with trio.open_signal_receiver(*signals) as received:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                signums = received.__aiter__()
                signum = await signums.__anext__()
                log.info("%s: closing the tunnel and exiting", signal.Signals(signum).name)
                async with trio.open_nursery() as closing:

                    async def on_second_signal() -> None:
                        await signums.__anext__()
                        log.warning("second signal: exiting without waiting for the close")
                        closing.cancel_scope.cancel()

                    closing.start_soon(on_second_signal)
                    with trio.move_on_after(SHUTDOWN_GRACE):
                        for manager in managers:
                            await manager.aclose()
                    closing.cancel_scope.cancel()
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            if banner:
                # Only now: a signal from here on is handled, so whoever waits for this line
                # (a human, a test) can rely on a graceful shutdown.
                print(banner, file=sys.stderr, flush=True)
            async with stdio_streams(_parse_error) as (read_stream, write_stream):
                nursery.start_soon(_preload, write_stream.answered)
                await server.run(read_stream, write_stream, server.create_initialization_options())
            log.info("stdin closed: exiting")
            nursery.cancel_scope.cancel()


def serve_stdio(*, banner: str | None = None) -> int:
    try:
        anyio.run(_serve, banner, backend="trio")
    except KeyboardInterrupt:  # a second Ctrl-C during the graceful close
        return 130
    return 0
