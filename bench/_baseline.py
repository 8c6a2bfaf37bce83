"""The baseline: bare wsproto on trio, written here and frozen. No crypto, no room, no sessions.

Every tunnel figure is divided by its counterpart measured here, in the same process and run,
so a slow machine moves both and the ratio says what the tunnel layers themselves cost.

Why it lives in bench/ and imports nothing of ours: the tunnel's own WebSocket layer
(`tunnel_trio._ws`) is one of the things being measured. A baseline built on it would get
faster with every speed-up there and hide the gain, and a fast path added there would make it
no longer "bare wsproto". So this is wsproto (1.x, its public `WSConnection` for the handshake
and the framing both) on trio's `SocketStream`, as plainly as a competent user writes it:

* one `WSConnection` per socket; `send` is `await stream.send_all(ws.send(BytesMessage(...)))`;
* `receive` reads 64 KiB at a time, feeds wsproto, queues every complete message, answers
  pings; no reader task, no extra buffering, no locks (each socket here has one writer);
* the server is `trio.serve_tcp` plus wsproto's server handshake.

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
from collections import deque
from collections.abc import Awaitable, Callable

import trio
from _stats import Figure
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
)

STAMP = struct.Struct("!Q")
RECEIVE_SIZE = 65536


class Closed(Exception):
    """The peer closed the WebSocket (or the socket went away)."""


class BareWebSocket:
    """One established connection: whole binary messages over a trio stream."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection, path: str) -> None:
        self.stream = stream
        self.ws = ws
        self.path = path
        self._messages: deque[bytes] = deque()
        self._partial = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(self.ws.send(BytesMessage(data=data)))

    async def receive(self) -> bytes:
        while not self._messages:
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise Closed
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, BytesMessage):
                    if event.message_finished and not self._partial:
                        self._messages.append(event.data)
                    else:
                        self._partial += event.data
                        if event.message_finished:
                            self._messages.append(self._partial)
                            self._partial = b""
                elif isinstance(event, Ping):
                    await self.stream.send_all(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    raise Closed
        return self._messages.popleft()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def _read_event(stream: trio.SocketStream, ws: WSConnection) -> object:
    while True:
        for event in ws.events():
            return event
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise Closed
        ws.receive_data(data)


async def bare_connect(port: int, path: str) -> BareWebSocket:
    """TCP connect to 127.0.0.1:`port` and the client side of the upgrade."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target=path)))
    event = await _read_event(stream, ws)
    if not isinstance(event, AcceptConnection):
        await trio.aclose_forcefully(stream)
        raise Closed(f"upgrade refused: {event!r}")
    return BareWebSocket(stream, ws, path)


class BareServer:
    """A bare WebSocket server on 127.0.0.1, port 0, with the three paths above."""

    def __init__(self) -> None:
        self.port = 0
        self._held_send, self.held = trio.open_memory_channel[BareWebSocket](64)
        self._release = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._serve, listeners, task_status=task_status)

    def release_held(self) -> None:
        """Let every held connection's handler return (which closes it)."""
        self._release.set()
        self._release = trio.Event()

    async def _serve(self, stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        try:
            request = await _read_event(stream, ws)
            if not isinstance(request, Request) or request.target not in (
                "/echo",
                "/stamp",
                "/hold",
            ):
                await stream.send_all(ws.send(RejectConnection(status_code=404)))
                return
            await stream.send_all(ws.send(AcceptConnection()))
            await self._handle(BareWebSocket(stream, ws, request.target))
        except (Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _handle(self, ws: BareWebSocket) -> None:
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

    async def connect(self, path: str) -> BareWebSocket:
        return await bare_connect(self.port, path)


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


async def _drain(ws: BareWebSocket, count: int) -> None:
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

        async def run(ws: BareWebSocket = ws) -> None:
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

        async def run(client: BareWebSocket = client, held: BareWebSocket = held) -> None:
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

        async def run(
            clients: list[BareWebSocket] = clients, held: list[BareWebSocket] = held
        ) -> None:
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
