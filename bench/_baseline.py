"""The baseline: bare wsproto-on-trio (tunnel_trio._ws), no crypto, no room, no sessions.

Every tunnel figure is divided by its counterpart measured here, in the same process and run,
so a slow machine moves both and the ratio says what the tunnel layers themselves cost.

One server serves three paths:

* ``/echo``  sends every message back as it is;
* ``/stamp`` answers every message with one of the same size that starts with the server's
  `perf_counter_ns()` taken just before the send (one-way latency, server to client);
* ``/hold``  hands the server side of the WebSocket to the benchmark, which sends on it itself
  (server-to-client streams, fan-out, a client that stops reading).
"""

from __future__ import annotations

import gc
import struct
import time
import tracemalloc
from collections.abc import Awaitable, Callable

import trio
from _stats import Figure

from tunnel_trio._ws import WebSocket, WebSocketClosed, connect_websocket, serve_websocket
from tunnelproto import MAX_FRAME

STAMP = struct.Struct("!Q")


class BareServer:
    """A bare WebSocket server on 127.0.0.1, port 0, with the three paths above."""

    def __init__(self) -> None:
        self.port = 0
        self._held_send, self.held = trio.open_memory_channel[WebSocket](64)
        self._release = trio.Event()

    @property
    def base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                lambda task_status: serve_websocket(
                    self._handle,
                    "127.0.0.1",
                    0,
                    accept_path=lambda path: path in ("/echo", "/stamp", "/hold"),
                    max_message_size=MAX_FRAME,
                    task_status=task_status,
                )
            )
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()

    def release_held(self) -> None:
        """Let every held connection's handler return (which closes it)."""
        self._release.set()
        self._release = trio.Event()

    async def _handle(self, ws: WebSocket) -> None:
        try:
            if ws.path == "/echo":
                while True:
                    await ws.send(await ws.receive())
            elif ws.path == "/stamp":
                while True:
                    message = await ws.receive()
                    await ws.send(STAMP.pack(time.perf_counter_ns()) + message[STAMP.size :])
            else:
                release = self._release
                await self._held_send.send(ws)
                await release.wait()
        except WebSocketClosed:
            pass

    async def connect(self, path: str) -> WebSocket:
        return await connect_websocket(self.base_url + path, max_message_size=MAX_FRAME)


def _payload(size: int) -> bytes:
    return b"x" * size


async def connect_time(server: BareServer, n: int) -> Figure:
    """TCP connect plus the HTTP upgrade, the part of a tunnel join that is not the tunnel."""
    samples = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        ws = await server.connect("/echo")
        elapsed = time.perf_counter() - t0
        await ws.aclose()
        if i >= 3:  # the first connects warm up the accept path
            samples.append(elapsed * 1000)
    return Figure("base.connect", "ws connect + upgrade", "ms", samples)


async def echo_rtt(server: BareServer, size: int, n: int) -> Figure:
    ws = await server.connect("/echo")
    data = _payload(size)
    samples = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        await ws.send(data)
        await ws.receive()
        if i >= 20:
            samples.append((time.perf_counter() - t0) * 1e6)
    await ws.aclose()
    return Figure(f"base.rtt.{size}", f"ws echo round trip {size} B", "us", samples)


async def send_call(server: BareServer, size: int, n: int) -> Figure:
    """How long `await ws.send()` takes to hand one message over (a reader drains the peer)."""
    reader = await server.connect("/hold")
    sender = await server.held.receive()
    data = _payload(size)
    samples = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain, reader, n + 20)
        for i in range(n + 20):
            t0 = time.perf_counter()
            await sender.send(data)
            elapsed = time.perf_counter() - t0
            if i >= 20:
                samples.append(elapsed * 1e6)
            await trio.sleep(0)  # let the reader keep up, as the host.say loop does
    await reader.aclose()
    server.release_held()
    return Figure(f"base.send.{size}", f"ws.send() call {size} B", "us", samples)


async def one_way(server: BareServer, size: int, n: int) -> Figure:
    """Server stamps, client receives: server-to-client latency in one process (one clock)."""
    ws = await server.connect("/stamp")
    data = _payload(max(size, STAMP.size))
    samples = []
    for i in range(n + 20):
        await ws.send(data)
        reply = await ws.receive()
        now = time.perf_counter_ns()
        if i >= 20:
            samples.append((now - STAMP.unpack_from(reply)[0]) / 1000)
    await ws.aclose()
    return Figure(f"base.oneway.{size}", f"ws one-way server->client {size} B", "us", samples)


async def _drain(ws: WebSocket, count: int) -> None:
    for _ in range(count):
        await ws.receive()


async def _timed_rate(count: int, run: Callable[[], Awaitable[None]]) -> float:
    t0 = time.perf_counter()
    await run()
    return count / (time.perf_counter() - t0)


async def echo_pipelined(server: BareServer, size: int, count: int, reps: int) -> Figure:
    """Client streams `count` messages at an echo server while a second task reads them back."""
    data = _payload(size)
    rates = []
    for _ in range(reps):
        ws = await server.connect("/echo")

        async def run(ws: WebSocket = ws) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, ws, count)
                for _ in range(count):
                    await ws.send(data)

        rates.append(await _timed_rate(count, run))
        await ws.aclose()
    return Figure(
        f"base.pipe.{size}",
        f"ws echo pipelined {size} B",
        "msg/s",
        rates,
        higher_is_better=True,
        show_p95=False,
    )


async def push(server: BareServer, size: int, count: int, reps: int) -> Figure:
    """Server streams `count` messages to one client (the host->member shape, one hop)."""
    data = _payload(size)
    rates = []
    for _ in range(reps):
        client = await server.connect("/hold")
        held = await server.held.receive()

        async def run(client: WebSocket = client, held: WebSocket = held) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, client, count)
                for _ in range(count):
                    await held.send(data)

        rates.append(await _timed_rate(count, run))
        await client.aclose()
        server.release_held()
    return Figure(
        f"base.push.{size}",
        f"ws server->client stream {size} B",
        "msg/s",
        rates,
        higher_is_better=True,
        show_p95=False,
    )


async def fan_out(server: BareServer, size: int, count: int, members: int, reps: int) -> Figure:
    """Server sends `count` messages to each of `members` clients; deliveries per second."""
    data = _payload(size)
    rates = []
    for _ in range(reps):
        clients = [await server.connect("/hold") for _ in range(members)]
        held = [await server.held.receive() for _ in range(members)]

        async def run(clients: list[WebSocket] = clients, held: list[WebSocket] = held) -> None:
            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(_drain, client, count)
                for _ in range(count):
                    # One message to everyone, then the next: the order a room broadcasts in.
                    for ws in held:
                        await ws.send(data)

        rates.append(await _timed_rate(count * members, run))
        for client in clients:
            await client.aclose()
        server.release_held()
    return Figure(
        f"base.fanout.{size}",
        f"ws fan-out 1->{members} {size} B",
        "deliv/s",
        rates,
        higher_is_better=True,
        show_p95=False,
    )


async def stalled_reader_memory(server: BareServer, size: int, count: int, budget: float) -> Figure:
    """tracemalloc peak while the server pushes at a client that never reads.

    A bare WebSocket holds nothing back: `send` blocks once the kernel's socket buffers are
    full, so the sender gives up after `budget` seconds without progress.
    """
    client = await server.connect("/hold")
    held = await server.held.receive()
    data = _payload(size)
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sent = 0
        while sent < count:
            with trio.move_on_after(budget):
                await held.send(data)
                sent += 1
                continue
            break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await client.aclose()
    server.release_held()
    fig = Figure(
        "base.stall.mem",
        "ws server, stalled client: heap peak",
        "KiB",
        [(peak - start) / 1024],
        show_p95=False,
    )
    fig.extra["sent_before_blocking_kib"] = sent * size / 1024
    return fig
