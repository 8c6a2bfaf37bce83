"""Tests for tunnel_trio._ws: real sockets on 127.0.0.1, driven through the public API.

Where a test needs to misbehave as a peer (text frames, oversized frames, pings), it drives a
raw wsproto connection over a trio socket.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import socket
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

import tunnel_trio._ws as ws_module
from tunnel_trio._ws import (
    WebSocket,
    WebSocketClosed,
    WebSocketError,
    _ip_family,
    connect_websocket,
    listener_port,
    serve_websocket,
)

MAX = 64 * 1024
# Guard against hangs only; no test asserts on time.
GUARD = 10

Handler = Callable[[WebSocket], Awaitable[None]]


async def start_server(
    nursery: trio.Nursery,
    handler: Handler,
    *,
    accept_path: Callable[[str], bool] = lambda path: path == "/ws",
    max_message_size: int = MAX,
    **kwargs: Any,
) -> int:
    listeners = await nursery.start(
        partial(
            serve_websocket,
            handler,
            "127.0.0.1",
            0,
            accept_path=accept_path,
            max_message_size=max_message_size,
            **kwargs,
        )
    )
    return listener_port(listeners)


async def start_raw_server(
    nursery: trio.Nursery, serve_one: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, serve_one, listeners)
    return listener_port(listeners)


async def echo(ws: WebSocket) -> None:
    while True:
        try:
            message = await ws.receive()
        except WebSocketClosed:
            return
        await ws.send(message)


class Outcomes:
    """Collects what a server handler observed, for the test to await."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[Any](10)

    async def get(self) -> Any:
        with trio.fail_after(GUARD):
            return await self.receive.receive()


def record_receive_outcome(outcomes: Outcomes) -> Handler:
    async def handler(ws: WebSocket) -> None:
        try:
            while True:
                await ws.receive()
        except WebSocketClosed as exc:
            await outcomes.send.send(exc)

    return handler


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    data = bytearray()
    with trio.fail_after(GUARD):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return bytes(data)


async def read_request_head(stream: trio.abc.Stream) -> bytes:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


TcpConnector = Callable[[int], Awaitable[trio.SocketStream]]


@pytest.fixture
async def connect_tcp() -> AsyncIterator[TcpConnector]:
    """Opens raw TCP connections to 127.0.0.1 and closes them after the test."""
    opened: list[trio.SocketStream] = []

    async def connect(port: int) -> trio.SocketStream:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        opened.append(stream)
        return stream

    yield connect
    for stream in opened:
        await trio.aclose_forcefully(stream)


class RawClient:
    """A bare wsproto client, for sending what our WebSocket never would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: deque[Event] = deque()

    @classmethod
    async def connect(cls, stream: trio.SocketStream, path: str = "/ws") -> RawClient:
        client = cls(stream)
        await client.send(Request(host="127.0.0.1", target=path))
        assert isinstance(await client.next_event(), AcceptConnection)
        return client

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> Event | None:
        with trio.fail_after(GUARD):
            while not self.events:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.ws.receive_data(data)
                self.events.extend(self.ws.events())
            return self.events.popleft()


# -- messages -------------------------------------------------------------------------------


async def test_echo_round_trip_of_binary_messages(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, echo)
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    assert ws.remote == f"127.0.0.1:{port}"
    for size in (0, 1, 125, 126, 65535, MAX):
        message = os.urandom(size)
        await ws.send(message)
        assert await ws.receive() == message
    await ws.close()
    assert ws.closed
    assert ws.close_code == 1000


async def test_fragmented_message_is_reassembled(
    connect_tcp: TcpConnector, nursery: trio.Nursery
) -> None:
    port = await start_server(nursery, echo)
    client = await RawClient.connect(await connect_tcp(port))
    await client.send(BytesMessage(data=b"hello ", message_finished=False))
    await client.send(Ping(payload=b"in between"))
    await client.send(BytesMessage(data=b"world", message_finished=True))
    assert await client.next_event() == Pong(payload=b"in between")
    event = await client.next_event()
    assert isinstance(event, BytesMessage)
    assert event.data == b"hello world"


async def test_ping_is_answered_with_pong(connect_tcp: TcpConnector, nursery: trio.Nursery) -> None:
    port = await start_server(nursery, echo)
    client = await RawClient.connect(await connect_tcp(port))
    await client.send(Ping(payload=b"are you there"))
    assert await client.next_event() == Pong(payload=b"are you there")


async def test_message_sent_right_after_the_101_is_not_lost(nursery: trio.Nursery) -> None:
    # The 101 response and the first frame arrive in one segment: the frame must survive.
    async def greet(stream: trio.SocketStream) -> None:
        server = WSConnection(ConnectionType.SERVER)
        while not any(isinstance(event, Request) for event in server.events()):
            server.receive_data(await stream.receive_some(65536))
        await stream.send_all(
            server.send(AcceptConnection()) + server.send(BytesMessage(data=b"welcome"))
        )
        await read_until_eof(stream)

    port = await start_raw_server(nursery, greet)
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    assert await ws.receive() == b"welcome"
    await ws.aclose()


# -- close ------------------------------------------------------------------------------------


async def test_client_close_code_and_reason_reach_the_server(nursery: trio.Nursery) -> None:
    outcomes = Outcomes()
    port = await start_server(nursery, record_receive_outcome(outcomes))
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    await ws.close(4001, "client says bye")
    closed = await outcomes.get()
    assert (closed.code, closed.reason) == (4001, "client says bye")
    assert (ws.close_code, ws.close_reason) == (4001, "client says bye")
    with pytest.raises(WebSocketClosed):
        await ws.send(b"too late")
    with pytest.raises(WebSocketClosed):
        await ws.receive()
    await ws.close()  # idempotent


async def test_server_close_code_and_reason_reach_the_client(nursery: trio.Nursery) -> None:
    async def close_at_once(ws: WebSocket) -> None:
        await ws.close(4002, "server says bye")

    port = await start_server(nursery, close_at_once)
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    with trio.fail_after(GUARD), pytest.raises(WebSocketClosed) as caught:
        await ws.receive()
    assert (caught.value.code, caught.value.reason) == (4002, "server says bye")
    assert ws.closed
    assert (ws.close_code, ws.close_reason) == (4002, "server says bye")


async def test_close_while_another_task_is_receiving(nursery: trio.Nursery) -> None:
    outcomes = Outcomes()
    port = await start_server(nursery, record_receive_outcome(outcomes))
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    receiver_saw: list[int] = []

    async def receiver() -> None:
        with pytest.raises(WebSocketClosed) as caught:
            await ws.receive()
        receiver_saw.append(caught.value.code)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as inner:
            inner.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await ws.close(4003, "done")
    assert receiver_saw == [4003]
    assert (await outcomes.get()).code == 4003


async def test_abort_is_seen_as_abnormal_closure(nursery: trio.Nursery) -> None:
    outcomes = Outcomes()
    port = await start_server(nursery, record_receive_outcome(outcomes))
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    await ws.aclose()
    assert ws.closed
    assert (await outcomes.get()).code == 1006


async def test_cancelled_send_aborts_the_connection(nursery: trio.Nursery) -> None:
    # The server never reads, so the client's sends eventually block mid-frame. Cancelling
    # one must not leave a half-written frame for the next send to follow.
    async def never_read(ws: WebSocket) -> None:
        await trio.sleep_forever()

    port = await start_server(nursery, never_read)
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    sender_scope = trio.CancelScope()

    async def send_until_blocked() -> None:
        with sender_scope:
            while True:
                await ws.send(b"x" * MAX)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as inner:
            inner.start_soon(send_until_blocked)
            await trio.testing.wait_all_tasks_blocked()
            sender_scope.cancel()
    assert ws.closed
    assert ws.close_code == 1006
    with pytest.raises(WebSocketClosed):
        await ws.send(b"after")


# -- protocol violations ----------------------------------------------------------------------


async def test_text_message_closes_with_1003(
    connect_tcp: TcpConnector, nursery: trio.Nursery
) -> None:
    outcomes = Outcomes()
    port = await start_server(nursery, record_receive_outcome(outcomes))
    client = await RawClient.connect(await connect_tcp(port))
    await client.send(TextMessage(data="not binary"))
    event = await client.next_event()
    assert isinstance(event, CloseConnection)
    assert event.code == 1003
    await client.send(event.response())
    assert (await outcomes.get()).code == 1003


async def test_oversized_frame_header_closes_with_1009_without_reading_the_payload(
    connect_tcp: TcpConnector,
    nursery: trio.Nursery,
) -> None:
    outcomes = Outcomes()
    port = await start_server(nursery, record_receive_outcome(outcomes), max_message_size=1024)
    client = await RawClient.connect(await connect_tcp(port))
    # A masked binary frame announcing 100 MB, followed by only a few bytes of it. A server
    # that waited for (or buffered) the payload would never answer.
    header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 100_000_000) + b"mask"
    await client.stream.send_all(header + b"a few bytes")
    event = await client.next_event()
    assert isinstance(event, CloseConnection)
    assert event.code == 1009
    assert await client.next_event() is None  # and the server hung up
    assert (await outcomes.get()).code == 1009


async def test_oversized_fragmented_message_closes_with_1009(
    connect_tcp: TcpConnector, nursery: trio.Nursery
) -> None:
    outcomes = Outcomes()
    port = await start_server(nursery, record_receive_outcome(outcomes), max_message_size=1024)
    client = await RawClient.connect(await connect_tcp(port))
    await client.send(BytesMessage(data=b"x" * 1000, message_finished=False))
    await client.send(BytesMessage(data=b"x" * 25, message_finished=True))
    event = await client.next_event()
    assert isinstance(event, CloseConnection)
    assert event.code == 1009
    assert (await outcomes.get()).code == 1009


async def test_fragmented_message_of_exactly_max_size_is_accepted(
    connect_tcp: TcpConnector, nursery: trio.Nursery
) -> None:
    port = await start_server(nursery, echo, max_message_size=1024)
    client = await RawClient.connect(await connect_tcp(port))
    for _ in range(2):  # the running total restarts with each message
        await client.send(BytesMessage(data=b"x" * 1000, message_finished=False))
        await client.send(BytesMessage(data=b"y" * 24, message_finished=True))
        event = await client.next_event()
        assert isinstance(event, BytesMessage)
        assert event.data == b"x" * 1000 + b"y" * 24


def masked_frame(opcode: int, payload: bytes, *, fin: bool) -> tuple[bytes, bytes]:
    """A client frame as (header including masking key, masked payload)."""
    mask = b"\x01\x02\x03\x04"
    first = (0x80 if fin else 0) | opcode
    assert len(payload) < 65536
    if len(payload) < 126:
        header = bytes([first, 0x80 | len(payload)])
    else:
        header = bytes([first, 0x80 | 126]) + struct.pack("!H", len(payload))
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return header + mask, masked


async def test_size_limit_survives_frame_headers_arriving_byte_by_byte(
    connect_tcp: TcpConnector,
    nursery: trio.Nursery,
) -> None:
    # wsproto re-parses a frame header until its masking key is complete; counting a
    # continuation frame once per parse would wrongly push this exact-limit message over.
    port = await start_server(nursery, echo, max_message_size=1024)
    client = await RawClient.connect(await connect_tcp(port))
    frames = [
        masked_frame(0x2, b"a" * 1000, fin=False),
        masked_frame(0x0, b"b" * 12, fin=False),
        masked_frame(0x0, b"c" * 12, fin=True),
    ]
    for header, payload in frames:
        for i in range(len(header)):
            await client.stream.send_all(header[i : i + 1])
            await trio.testing.wait_all_tasks_blocked()
        await client.stream.send_all(payload)
    event = await client.next_event()
    assert isinstance(event, BytesMessage)
    assert event.data == b"a" * 1000 + b"b" * 12 + b"c" * 12


async def test_client_enforces_its_own_message_limit(nursery: trio.Nursery) -> None:
    outcomes = Outcomes()

    async def send_big(ws: WebSocket) -> None:
        await ws.send(b"z" * 2000)
        await record_receive_outcome(outcomes)(ws)

    port = await start_server(nursery, send_big)
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=1000)
    with pytest.raises(WebSocketClosed) as caught:
        await ws.receive()
    assert caught.value.code == 1009
    assert (await outcomes.get()).code == 1009


# -- server: HTTP side, limits, robustness ----------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/ws"])
async def test_plain_http_get_gets_404(
    connect_tcp: TcpConnector, nursery: trio.Nursery, path: str
) -> None:
    port = await start_server(nursery, echo)
    stream = await connect_tcp(port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    response = await read_until_eof(stream)
    assert response.startswith(b"HTTP/1.1 404 ")


async def test_garbage_request_gets_400(connect_tcp: TcpConnector, nursery: trio.Nursery) -> None:
    port = await start_server(nursery, echo)
    stream = await connect_tcp(port)
    await stream.send_all(b"this is not http\r\n\r\n")
    response = await read_until_eof(stream)
    assert response.startswith(b"HTTP/1.1 400 ")


async def test_upgrade_to_unknown_path_gets_404(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, echo)
    with pytest.raises(WebSocketError) as caught:
        await connect_websocket(f"ws://127.0.0.1:{port}/elsewhere", max_message_size=MAX)
    assert caught.value.status_code == 404
    assert "404" in str(caught.value)


async def test_accept_path_sees_the_path_without_query(nursery: trio.Nursery) -> None:
    seen: list[str] = []
    server_paths: list[str] = []

    def accept_path(path: str) -> bool:
        seen.append(path)
        return path == "/t/abc"

    async def handler(ws: WebSocket) -> None:
        server_paths.append(ws.path)
        await echo(ws)

    port = await start_server(nursery, handler, accept_path=accept_path)
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/t/abc?v=1&x=2", max_message_size=MAX)
    await ws.send(b"ping")
    assert await ws.receive() == b"ping"
    await ws.close()
    assert seen == ["/t/abc"]
    assert server_paths == ["/t/abc"]


async def test_silent_client_is_dropped_after_handshake_timeout(
    connect_tcp: TcpConnector, nursery: trio.Nursery
) -> None:
    port = await start_server(nursery, echo, handshake_timeout=0.5)
    silent = await connect_tcp(port)
    half_request = await connect_tcp(port)
    await half_request.send_all(b"GET /ws HTTP/1.1\r\n")
    assert await read_until_eof(silent) == b""
    assert await read_until_eof(half_request) == b""


async def test_handler_crash_does_not_stop_the_server(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def crash_first_time(ws: WebSocket) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await echo(ws)

    port = await start_server(nursery, crash_first_time)
    with caplog.at_level(logging.ERROR, logger="tunnel_trio.ws"):
        first = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
        with trio.fail_after(GUARD), pytest.raises(WebSocketClosed) as caught:
            await first.receive()
    assert caught.value.code == 1011
    assert any(
        record.name == "tunnel_trio.ws" and record.exc_info is not None for record in caplog.records
    )

    second = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    await second.send(b"still alive")
    assert await second.receive() == b"still alive"
    await second.close()


async def test_a_failing_accept_path_gets_500_and_one_log_line(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # The usual upgrade request is read without h11; its path check failing still gets h11's
    # 500, logged once, and the server goes on.
    broken = True

    def broken_then_fine(path: str) -> bool:
        if broken:
            raise RuntimeError("accept_path bug")
        return path == "/ws"

    port = await start_server(nursery, echo, accept_path=broken_then_fine)
    with caplog.at_level(logging.ERROR, logger="tunnel_trio.ws"):
        with trio.fail_after(GUARD), pytest.raises(WebSocketError) as caught:
            await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    assert caught.value.status_code == 500
    failures = [r for r in caplog.records if "accept_path failed" in r.getMessage()]
    assert len(failures) == 1
    broken = False
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    await ws.send(b"served")
    assert await ws.receive() == b"served"
    await ws.close()


async def test_an_overloaded_accept_is_retried_and_logged(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Out of descriptors (EMFILE) is the system's trouble, not the listener's: the server says
    # so and accepts again a little later, as trio.serve_listeners does.
    accept = trio.SocketListener.accept
    failures = [OSError(errno.EMFILE, os.strerror(errno.EMFILE))]

    async def overloaded_once(self: trio.SocketListener) -> trio.SocketStream:
        if failures:
            await trio.lowlevel.checkpoint()
            raise failures.pop()
        return await accept(self)

    monkeypatch.setattr(trio.SocketListener, "accept", overloaded_once)
    with caplog.at_level(logging.ERROR, logger="tunnel_trio.ws"):
        port = await start_server(nursery, echo)
        ws = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    await ws.send(b"served after the retry")
    assert await ws.receive() == b"served after the retry"
    await ws.close()
    assert not failures
    assert any("EMFILE" in record.getMessage() for record in caplog.records)


async def test_another_accept_error_stops_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(self: trio.SocketListener) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(trio.SocketListener, "accept", broken)
    with (
        trio.fail_after(GUARD),
        pytest.RaisesGroup(
            pytest.RaisesExc(OSError, check=lambda exc: exc.errno == errno.EBADF),
            flatten_subgroups=True,
        ),
    ):
        async with trio.open_nursery() as nursery:
            await start_server(nursery, echo)


async def test_each_connection_gives_its_socket_back(nursery: trio.Nursery) -> None:
    # The server closes every connection's socket itself once the handler is done (no
    # descriptor left behind), whoever ended the WebSocket.
    served: list[WebSocket] = []

    async def handler(ws: WebSocket) -> None:
        served.append(ws)
        if len(served) == 1:
            await ws.close()  # the server ends the first
        else:
            await echo(ws)  # the client ends the second

    port = await start_server(nursery, handler)
    first = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    with trio.fail_after(GUARD), pytest.raises(WebSocketClosed):
        await first.receive()
    second = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    await second.close()
    with trio.fail_after(GUARD):
        while any(ws._stream.socket.fileno() != -1 for ws in served):  # type: ignore[attr-defined]
            await trio.sleep(0.01)
    assert len(served) == 2


async def test_connections_beyond_the_cap_are_closed(
    connect_tcp: TcpConnector, nursery: trio.Nursery
) -> None:
    port = await start_server(nursery, echo, max_connections=1)
    first = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    await first.send(b"one")
    assert await first.receive() == b"one"  # the first connection is surely counted now
    excess = await connect_tcp(port)
    # The one connection held is a working WebSocket: it is never pushed out; the newcomer is
    # turned away, and told why.
    assert (await read_until_eof(excess)).startswith(b"HTTP/1.1 503 ")
    await first.send(b"two")
    assert await first.receive() == b"two"
    await first.close()


async def test_at_the_cap_the_oldest_unfinished_request_gives_way(
    connect_tcp: TcpConnector, nursery: trio.Nursery
) -> None:
    # Slowloris: connections that never finish their request head fill every slot. Refusing
    # newcomers would lock every client out; the oldest unfinished one goes instead, told why.
    port = await start_server(nursery, echo, max_connections=3)
    slow = []
    for _ in range(3):
        stream = await connect_tcp(port)
        await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        slow.append(stream)
    await trio.testing.wait_all_tasks_blocked()  # the server holds all three
    clients = []
    for i in range(3):
        client = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
        await client.send(b"in")
        assert await client.receive() == b"in"
        # The oldest slow one was pushed out, in arrival order.
        assert (await read_until_eof(slow[i])).startswith(b"HTTP/1.1 503 ")
        clients.append(client)
    # Working WebSockets are never pushed out: now a newcomer is the one turned away.
    assert (await read_until_eof(await connect_tcp(port))).startswith(b"HTTP/1.1 503 ")
    for client in clients:
        await client.send(b"still here")
        assert await client.receive() == b"still here"
        await client.close()


async def test_at_the_cap_a_connection_only_waiting_for_a_close_gives_way(
    connect_tcp: TcpConnector, nursery: trio.Nursery
) -> None:
    async def close_at_once(ws: WebSocket) -> None:
        await ws.close(4000, "go away")

    port = await start_server(nursery, close_at_once, max_connections=1)
    # A peer that reads our Close and never answers it: the server waits (close_timeout) for
    # an answer that never comes, holding the only slot.
    mute = await RawClient.connect(await connect_tcp(port))
    event = await mute.next_event()
    assert isinstance(event, CloseConnection) and event.code == 4000
    await trio.testing.wait_all_tasks_blocked()
    # It has nothing left to deliver, so a newcomer takes its slot instead of being refused.
    with trio.fail_after(GUARD), pytest.raises(WebSocketClosed) as closed:
        client = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
        await client.receive()
    assert closed.value.code == 4000


async def test_a_connection_flood_logs_one_warning_not_one_per_connection(
    connect_tcp: TcpConnector, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    port = await start_server(nursery, echo, max_connections=1)
    first = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    await first.send(b"one")
    assert await first.receive() == b"one"
    with caplog.at_level(logging.WARNING, logger="tunnel_trio"):
        for _ in range(20):
            assert (await read_until_eof(await connect_tcp(port))).startswith(b"HTTP/1.1 503 ")
    refusals = [r for r in caplog.records if "refusing connections" in r.getMessage()]
    assert len(refusals) == 1
    assert "1 already open (1 refused and 0 evicted" in refusals[0].getMessage()
    await first.close()


# -- client: URLs, resolution, timeouts, errors ----------------------------------------------


async def test_an_undecodable_header_in_the_servers_answer_is_a_websocket_error(
    nursery: trio.Nursery,
) -> None:
    # A hostile relay: a 101 whose Connection header holds a byte wsproto cannot decode.
    async def hostile(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade, \xff\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await trio.sleep(5)

    listeners = await nursery.start(partial(trio.serve_tcp, hostile, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(WebSocketError, match="invalid WebSocket handshake: an undecodable header"):
        await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)


async def test_request_carries_host_header_and_never_the_fragment(nursery: trio.Nursery) -> None:
    heads: list[bytes] = []

    async def not_found(stream: trio.SocketStream) -> None:
        heads.append(await read_request_head(stream))
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        await stream.aclose()

    port = await start_raw_server(nursery, not_found)
    url = f"ws://tunnel-test.invalid:{port}/t/abc?q=1#secret-key-material"
    with pytest.raises(WebSocketError) as caught:
        await connect_websocket(
            url,
            max_message_size=MAX,
            resolve_override={("tunnel-test.invalid", port): ("127.0.0.1", port)},
        )
    assert caught.value.status_code == 404
    assert "secret-key-material" not in str(caught.value)
    [head] = heads
    assert head.startswith(b"GET /t/abc?q=1 HTTP/1.1\r\n")
    assert f"host: tunnel-test.invalid:{port}\r\n".encode() in head.lower()
    assert b"secret-key-material" not in head
    assert b"#" not in head


async def test_http_scheme_means_ws_and_default_port_is_80(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, echo)
    ws = await connect_websocket(
        "http://tunnel-test.invalid/ws",
        max_message_size=MAX,
        resolve_override={("tunnel-test.invalid", 80): ("127.0.0.1", port)},
    )
    await ws.send(b"x")
    assert await ws.receive() == b"x"
    await ws.close()


async def test_resolve_override(nursery: trio.Nursery) -> None:
    port = await start_server(nursery, echo)
    ws = await connect_websocket(
        "ws://tunnel-test.invalid:1234/ws",
        max_message_size=MAX,
        resolve_override={("tunnel-test.invalid", 1234): ("127.0.0.1", port)},
    )
    await ws.send(b"via override")
    assert await ws.receive() == b"via override"
    await ws.close()


async def test_resolve_fallback_is_used_when_system_resolution_fails(
    nursery: trio.Nursery,
) -> None:
    port = await start_server(nursery, echo)
    asked: list[str] = []

    async def fallback(host: str) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    ws = await connect_websocket(
        f"ws://tunnel-test.invalid:{port}/ws", max_message_size=MAX, resolve_fallback=fallback
    )
    assert asked == ["tunnel-test.invalid"]
    await ws.send(b"via fallback")
    assert await ws.receive() == b"via fallback"
    await ws.close()


async def test_unresolvable_host_without_fallback_fails_cleanly() -> None:
    with pytest.raises(WebSocketError) as caught:
        await connect_websocket(
            "ws://tunnel-test.invalid:9/ws#secret-key-material", max_message_size=MAX
        )
    message = str(caught.value)
    assert "could not resolve tunnel-test.invalid" in message
    assert "secret-key-material" not in message
    assert caught.value.status_code is None


async def test_fallback_with_no_addresses_fails_cleanly() -> None:
    async def nothing(host: str) -> list[str]:
        return []

    with pytest.raises(WebSocketError, match="could not resolve tunnel-test.invalid"):
        await connect_websocket(
            "ws://tunnel-test.invalid:9/ws", max_message_size=MAX, resolve_fallback=nothing
        )


async def test_connection_refused_fails_cleanly() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener_port(listeners)
    for listener in listeners:
        await listener.aclose()
    with pytest.raises(WebSocketError, match=f"could not connect to 127.0.0.1:{port}") as caught:
        await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    # The cause says what happened, as trio's connect would (the guest tells a stopped host
    # from an unreachable one by it).
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert "Connection refused" in str(caught.value)


@pytest.mark.parametrize(
    ("host", "family"),
    [
        ("127.0.0.1", socket.AF_INET),
        ("::1", socket.AF_INET6),
        ("2001:db8::7", socket.AF_INET6),
        ("localhost", None),
        ("example.com", None),
        ("1.2.3", None),
        ("fe80::1%lo", None),  # a zone: left to the resolver
    ],
)
def test_ip_literals_are_dialled_directly_and_names_resolved(host: str, family: int | None) -> None:
    assert _ip_family(host) == family


async def test_an_ipv6_literal_is_dialled(nursery: trio.Nursery) -> None:
    try:
        listeners = await trio.open_tcp_listeners(0, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = listener_port(listeners)
    served = trio.Event()

    async def serve(stream: trio.SocketStream) -> None:
        served.set()
        await trio.aclose_forcefully(stream)

    await nursery.start(trio.serve_listeners, serve, listeners)
    with trio.fail_after(GUARD), pytest.raises(WebSocketError):
        await connect_websocket(f"ws://[::1]:{port}/ws", max_message_size=MAX)
    assert served.is_set()


async def test_a_connect_made_at_once_is_not_waited_for(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over loopback the connection is made by the time connect() returns: no wait for
    # writability (it would cost a trip through the scheduler); the dial goes on at once.
    waited: list[object] = []
    real_wait = trio.lowlevel.wait_writable

    async def recording_wait(sock: Any) -> None:
        waited.append(sock)
        await real_wait(sock)

    port = await start_server(nursery, echo)
    monkeypatch.setattr(trio.lowlevel, "wait_writable", recording_wait)
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=MAX)
    await ws.send(b"made")
    assert await ws.receive() == b"made"
    await ws.close()
    assert waited == []


async def test_a_cancelled_dial_leaves_no_socket_open(monkeypatch: pytest.MonkeyPatch) -> None:
    # A connect cannot be taken back: cancelled while it is under way, the socket is closed.
    opened: list[socket.socket] = []
    real_socket = socket.socket

    def recording_socket(*args: Any) -> socket.socket:
        sock = real_socket(*args)
        opened.append(sock)
        return sock

    async def never_writable(sock: object) -> None:
        await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    monkeypatch.setattr(
        ws_module, "socket", SimpleNamespace(**{**vars(socket), "socket": recording_socket})
    )
    monkeypatch.setattr(trio.lowlevel, "wait_writable", never_writable)
    # As for a remote host: the connect is still under way when connect() returns.
    monkeypatch.setattr(ws_module, "_connected", lambda sock: False)
    with trio.move_on_after(0.05):
        await connect_websocket(
            f"ws://127.0.0.1:{listener_port(listeners)}/ws", max_message_size=MAX
        )
    for listener in listeners:
        await listener.aclose()
    assert opened and all(sock.fileno() == -1 for sock in opened)


async def test_connect_times_out_against_a_server_that_never_answers(
    nursery: trio.Nursery,
) -> None:
    async def say_nothing(stream: trio.SocketStream) -> None:
        await read_until_eof(stream)

    port = await start_raw_server(nursery, say_nothing)
    with pytest.raises(WebSocketError) as caught:
        await connect_websocket(
            f"ws://127.0.0.1:{port}/ws", max_message_size=MAX, connect_timeout=0.5
        )
    assert str(caught.value) == f"timed out connecting to 127.0.0.1:{port} after 0.5 s"


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
async def test_a_connect_timeout_that_is_negative_or_nan_is_refused(timeout: float) -> None:
    # As trio.fail_after refused it, before anything is dialled.
    with pytest.raises(ValueError, match="connect_timeout must be non-negative"):
        await connect_websocket(
            "ws://127.0.0.1:9/ws", max_message_size=MAX, connect_timeout=timeout
        )


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/ws", "ws:///no-host", "ws://127.0.0.1:99999/"])
async def test_bad_urls_are_rejected(url: str) -> None:
    with pytest.raises(WebSocketError):
        await connect_websocket(url, max_message_size=MAX)


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls_context(ca: trustme.CA, sni_seen: list[str | None]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("tunnel-test.invalid").configure_cert(context)

    def record_sni(_sock: Any, server_name: str | None, _context: Any) -> None:
        sni_seen.append(server_name)

    context.sni_callback = record_sni
    return context


def client_tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_wss_with_sni_and_certificate_verification(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    sni_seen: list[str | None] = []
    port = await start_server(nursery, echo, ssl_context=server_tls_context(ca, sni_seen))
    ws = await connect_websocket(
        f"wss://tunnel-test.invalid:{port}/ws",
        max_message_size=MAX,
        ssl_context=client_tls_context(ca),
        resolve_override={("tunnel-test.invalid", port): ("127.0.0.1", port)},
    )
    assert sni_seen == ["tunnel-test.invalid"]
    for size in (0, 10, MAX):
        message = os.urandom(size)
        await ws.send(message)
        assert await ws.receive() == message
    await ws.close(4000, "tls bye")
    assert ws.close_code == 4000


async def test_https_scheme_means_wss_and_default_port_is_443(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    port = await start_server(nursery, echo, ssl_context=server_tls_context(ca, []))
    ws = await connect_websocket(
        "https://tunnel-test.invalid/ws",
        max_message_size=MAX,
        ssl_context=client_tls_context(ca),
        resolve_override={("tunnel-test.invalid", 443): ("127.0.0.1", port)},
    )
    await ws.send(b"secure")
    assert await ws.receive() == b"secure"
    await ws.close()


async def test_wss_with_untrusted_ca_fails(nursery: trio.Nursery, ca: trustme.CA) -> None:
    port = await start_server(nursery, echo, ssl_context=server_tls_context(ca, []))
    with pytest.raises(WebSocketError, match="certificate verification failed"):
        await connect_websocket(
            f"wss://tunnel-test.invalid:{port}/ws",
            max_message_size=MAX,
            ssl_context=client_tls_context(trustme.CA()),
            resolve_override={("tunnel-test.invalid", port): ("127.0.0.1", port)},
        )


async def test_wss_with_wrong_hostname_fails(nursery: trio.Nursery, ca: trustme.CA) -> None:
    port = await start_server(nursery, echo, ssl_context=server_tls_context(ca, []))
    with pytest.raises(WebSocketError, match="certificate verification failed"):
        await connect_websocket(
            f"wss://other-name.invalid:{port}/ws",
            max_message_size=MAX,
            ssl_context=client_tls_context(ca),
            resolve_override={("other-name.invalid", port): ("127.0.0.1", port)},
        )


async def test_message_ready_says_whether_receive_would_wait() -> None:
    from trio.testing import memory_stream_pair
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage

    from tunnel_trio._ws import WebSocket, _new_connection

    ours, theirs = memory_stream_pair()
    ws = WebSocket(
        ours,
        _new_connection(ConnectionType.CLIENT),
        path="/",
        remote="x",
        client=True,
        max_message_size=1024,
    )
    peer = Connection(ConnectionType.SERVER)
    burst = b"".join(peer.send(BytesMessage(data=bytes([i]))) for i in range(3))
    await theirs.send_all(burst)  # three messages arrive in one read
    assert not ws.message_ready()  # nothing parsed yet
    assert await ws.receive() == b"\x00"
    assert ws.message_ready()
    assert await ws.receive() == b"\x01"
    assert ws.message_ready()
    assert await ws.receive() == b"\x02"
    assert not ws.message_ready()  # the next receive would wait for the network


async def test_send_many_writes_one_burst_that_arrives_as_separate_messages() -> None:
    from trio.testing import memory_stream_pair
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage

    from tunnel_trio._ws import WebSocket, _new_connection

    ours, theirs = memory_stream_pair()
    writes: list[int] = []
    real_send_all = ours.send_stream.send_all

    async def counting_send_all(data: bytes | bytearray | memoryview) -> None:
        writes.append(len(data))
        await real_send_all(data)

    ours.send_stream.send_all = counting_send_all  # type: ignore[method-assign]
    ws = WebSocket(
        ours,
        _new_connection(ConnectionType.CLIENT),
        path="/",
        remote="x",
        client=True,
        max_message_size=1 << 20,
    )
    messages = [b"", b"a", os.urandom(200), os.urandom(70_000)]
    await ws.send_many(messages)
    assert len(writes) == 1  # one write for the whole burst
    peer = Connection(ConnectionType.SERVER)
    received: list[bytes] = []
    partial_message = b""
    while len(received) < len(messages):
        peer.receive_data(await theirs.receive_some())
        for event in peer.events():
            assert isinstance(event, BytesMessage)
            partial_message += event.data
            if event.message_finished:
                received.append(partial_message)
                partial_message = b""
    assert received == messages


async def _socket_pair(nursery: trio.Nursery) -> tuple[WebSocket, WebSocket]:
    """A connected (client, server) pair over a real socket on 127.0.0.1."""
    servers, accepted = trio.open_memory_channel[WebSocket](1)
    done = trio.Event()

    async def handler(ws: WebSocket) -> None:
        await servers.send(ws)
        await done.wait()

    port = await start_server(nursery, handler, max_message_size=1 << 20)
    client = await connect_websocket(f"ws://127.0.0.1:{port}/ws", max_message_size=1 << 20)
    server = await accepted.receive()
    return client, server


async def test_send_now_writes_from_synchronous_code(nursery: trio.Nursery) -> None:
    client, server = await _socket_pair(nursery)
    assert client.send_now([b"one", b"two"])  # no await: the socket takes it at once
    assert client.unsent_bytes == 0
    with trio.fail_after(GUARD):
        assert await server.receive() == b"one"
        assert await server.receive() == b"two"
    assert server.send_now([b"back"])
    with trio.fail_after(GUARD):
        assert await client.receive() == b"back"


async def test_what_send_now_could_not_write_goes_before_the_next_send(
    nursery: trio.Nursery,
) -> None:
    client, server = await _socket_pair(nursery)
    big = [os.urandom(60_000) for _ in range(100)]  # far more than the socket buffers hold
    assert client.send_now(big)
    assert client.unsent_bytes > 0  # the server is not reading: the rest waits with us
    assert not client.send_now([b"later"])  # refuses: it would overtake the rest
    received: list[bytes] = []

    async def read_all() -> None:
        while len(received) < len(big) + 1:
            received.append(await server.receive())

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as readers:
            readers.start_soon(read_all)
            await client.send_many([b"later"])
    assert client.unsent_bytes == 0
    assert received == [*big, b"later"]


async def test_send_now_refuses_on_a_tls_stream(nursery: trio.Nursery, ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    port = await start_server(nursery, echo, ssl_context=server_context)
    ws = await connect_websocket(
        f"wss://localhost:{port}/ws",
        max_message_size=MAX,
        ssl_context=client_tls_context(ca),
        resolve_override={("localhost", port): ("127.0.0.1", port)},
    )
    assert not ws.send_now([b"x"])  # TLS bytes are not the socket's: trio's API writes them
    await ws.send(b"x")
    with trio.fail_after(GUARD):
        assert await ws.receive() == b"x"


async def test_receive_lets_other_tasks_run_while_messages_keep_coming(
    nursery: trio.Nursery,
) -> None:
    from tunnel_trio._ws import YIELD_EVERY

    client, server = await _socket_pair(nursery)
    count = 10 * YIELD_EVERY
    await client.send_many([b"m"] * count)
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.sleep(0)

    async with trio.open_nursery() as inner:
        inner.start_soon(other)
        await trio.sleep(0)
        before = turns
        for _ in range(count):
            await server.receive()
        inner.cancel_scope.cancel()
    # Whether or not the socket had them all at once, the other task got a turn regularly.
    assert turns - before >= count // (YIELD_EVERY + 1) - 1


async def test_receive_honours_cancellation_with_a_message_waiting(nursery: trio.Nursery) -> None:
    client, server = await _socket_pair(nursery)
    await client.send_many([b"first", b"kept"])  # one write: they arrive in one read
    with trio.fail_after(GUARD):
        assert await server.receive() == b"first"
    assert server.message_ready()
    with trio.CancelScope() as scope:
        scope.cancel()
        await server.receive()
    assert scope.cancelled_caught
    assert await server.receive() == b"kept"  # nothing was lost to the cancellation


async def test_large_sends_the_socket_cannot_take_at_once_arrive_whole_and_in_order(
    nursery: trio.Nursery,
) -> None:
    # Large sends are written straight to the socket; what it has no room for waits for room.
    client, server = await _socket_pair(nursery)
    messages = [os.urandom(60_000) for _ in range(100)]  # far more than the socket buffers hold
    sent = trio.Event()

    async def send_all_of_them() -> None:
        for message in messages:
            await client.send(message)
        sent.set()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as inner:
            inner.start_soon(send_all_of_them)
            await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set()  # the server is not reading yet: the sender waits
            received = [await server.receive() for _ in messages]
    assert received == messages


async def test_large_sends_let_other_tasks_run() -> None:
    # Sends the socket takes at once (its buffer holds them all) never wait for it: the writer
    # itself must still give other tasks their turn.
    import socket

    from wsproto.connection import Connection

    from tunnel_trio._ws import WRITE_YIELD_BYTES

    size, count = 64 * 1024, 32
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * count * size)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    ws = WebSocket(
        stream,
        Connection(ConnectionType.CLIENT),
        path="/",
        remote="pair",
        client=True,
        max_message_size=1 << 20,
    )
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.sleep(0)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as inner:
            inner.start_soon(other)
            await trio.sleep(0)
            before = turns
            for _ in range(count):
                await ws.send(b"x" * size)
            after = turns
            inner.cancel_scope.cancel()
    await ws.aclose()
    theirs.close()
    assert after - before >= count * size // (WRITE_YIELD_BYTES + size) - 1


async def test_the_websockets_lock_excludes_hands_over_in_order_and_survives_a_cancelled_waiter(
    nursery: trio.Nursery,
) -> None:
    # The WebSocket's send and receive locks (_ws._Mutex): one holder at a time; a release
    # hands the lock to the longest waiter; a waiter cancelled while parked is not handed it.
    from tunnel_trio._ws import _Mutex

    lock = _Mutex()
    order: list[str] = []
    holds = {name: trio.Event() for name in "abd"}

    async def take(name: str) -> None:
        async with lock:
            order.append(name)
            await holds[name].wait()

    async def give_up(scope: trio.CancelScope) -> None:
        with scope:
            await lock.acquire()
            order.append("c")  # never: cancelled while waiting

    nursery.start_soon(take, "a")
    await trio.testing.wait_all_tasks_blocked()
    assert lock.locked() and order == ["a"]
    with pytest.raises(trio.WouldBlock):
        lock.acquire_nowait()
    c_scope = trio.CancelScope()
    nursery.start_soon(give_up, c_scope)
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(take, "b")
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(take, "d")
    await trio.testing.wait_all_tasks_blocked()
    c_scope.cancel()  # the longest waiter gives up
    await trio.testing.wait_all_tasks_blocked()
    holds["a"].set()
    await trio.testing.wait_all_tasks_blocked()
    assert order == ["a", "b"]  # handed to the longest waiter still waiting
    holds["b"].set()
    await trio.testing.wait_all_tasks_blocked()
    assert order == ["a", "b", "d"]
    holds["d"].set()
    await trio.testing.wait_all_tasks_blocked()
    assert not lock.locked()
    lock.acquire_nowait()
    assert lock.locked()
    lock.release()
    assert not lock.locked()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await lock.acquire()  # a checkpoint, even when free
    assert not lock.locked()
