"""The hand-written opening handshake (tunnel_trio._wshandshake) held against wsproto's.

Both directions byte for byte (our request is wsproto's request; our 101 is wsproto's 101 for
the same request), every refusal the client must make (wrong accept key, a status other than
101, missing or repeated headers, extensions or subprotocols we never offered, malformed
lines), and over real sockets: a response head split into single bytes, an oversized head, a
refusal's status code, and the requests the server's fast path leaves to wsproto.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from functools import partial

import h11
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from tunnel_trio._ws import (
    WebSocket,
    WebSocketError,
    connect_websocket,
    listener_port,
    serve_websocket,
)
from tunnel_trio._wshandshake import (
    HandshakeError,
    accept_response,
    accept_token,
    check_response,
    client_request,
    usual_request,
)

MAX = 64 * 1024
GUARD = 10


def fixed_urandom(monkeypatch: pytest.MonkeyPatch) -> None:
    # wsproto's nonce and ours both come from os.urandom(16): the same bytes make the same key.
    monkeypatch.setattr(os, "urandom", lambda n: bytes(range(n)))


def wsproto_accept(request: bytes) -> bytes:
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(request)
    assert [type(e) for e in server.events()] == [Request]
    return server.send(AcceptConnection())


def h11_request(request: bytes) -> h11.Request:
    http = h11.Connection(h11.SERVER)
    http.receive_data(request)
    event = http.next_event()
    assert isinstance(event, h11.Request)
    return event


@pytest.mark.parametrize(
    ("host", "target"),
    [
        ("127.0.0.1:8080", "/t/abc"),
        ("abc-def.trycloudflare.com", "/t/abc?q=1&r=%20"),
        ("[::1]:9", "/"),
    ],
)
def test_the_request_is_wsprotos_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch, host: str, target: str
) -> None:
    fixed_urandom(monkeypatch)
    ours, expected_accept = client_request(host, target)
    theirs = WSConnection(ConnectionType.CLIENT).send(Request(host=host, target=target))
    assert ours == theirs
    # wsproto's server accepts it, and its answer is what we expect.
    check_response(wsproto_accept(ours), expected_accept)


def test_a_target_h11_would_not_send_is_refused() -> None:
    with pytest.raises(ValueError):
        client_request("h", "/a b")


@pytest.mark.parametrize(
    "request_bytes",
    [
        WSConnection(ConnectionType.CLIENT).send(Request(host="127.0.0.1:1", target="/t/x")),
        b"GET /t/x?y=1 HTTP/1.1\r\nhost: h\r\nUPGRADE: WebSocket\r\nconnection: keep-alive, "
        b"upgrade\r\nsec-websocket-key: c2FtZSBrZXkgMTIzNA==\r\nsec-websocket-version: 13\r\n"
        b"user-agent: x\r\n\r\n",
    ],
)
def test_the_servers_101_is_wsprotos_byte_for_byte(request_bytes: bytes) -> None:
    assert accept_response(h11_request(request_bytes)) == wsproto_accept(request_bytes)


BASE = (
    b"GET /t/x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: c2FtZSBrZXkgMTIzNA==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize(
    "request_bytes",
    [
        BASE.replace(b"GET", b"POST") + b"content-length: 0\r\n\r\n",
        BASE.replace(b"Version: 13", b"Version: 8") + b"\r\n",
        BASE.replace(b"Connection: Upgrade", b"Connection: close") + b"\r\n",
        BASE.replace(b"Upgrade: websocket", b"Upgrade: h2c") + b"\r\n",
        BASE.replace(b"Sec-WebSocket-Key: c2FtZSBrZXkgMTIzNA==\r\n", b"") + b"\r\n",
        BASE + b"Sec-WebSocket-Key: b3RoZXIga2V5IDEyMzQ=\r\n\r\n",
        BASE + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        BASE + b"Sec-WebSocket-Protocol: chat\r\n\r\n",
        BASE + b"Connection: Upgrade\r\n\r\n",
        BASE.replace(b"Host: h", b"Host: \xff") + b"\r\n",
        BASE.replace(b"Host: h", b"Host: xn--a") + b"\r\n",
    ],
)
def test_anything_but_the_usual_request_is_left_to_wsproto(request_bytes: bytes) -> None:
    assert accept_response(h11_request(request_bytes)) is None


@pytest.mark.parametrize(
    "request_bytes",
    [
        BASE + b"\r\n",
        BASE.replace(b"Host: h", b"Host: a..b") + b"\r\n",
        BASE.replace(b"Host: h", b"Host: " + b"a" * 64) + b"\r\n",
        BASE.replace(b"Connection: Upgrade", b"Connection: ,, Upgrade ,x") + b"\r\n",
        BASE.replace(b"Key: c2FtZSBrZXkgMTIzNA==", b"Key: not base64 at all") + b"\r\n",
        BASE + b"x-other: caf\xe9\r\n\r\n",
    ],
)
def test_whatever_the_fast_path_accepts_wsproto_accepts_the_same_way(
    request_bytes: bytes,
) -> None:
    ours = accept_response(h11_request(request_bytes))
    assert ours is not None
    assert ours == wsproto_accept(request_bytes)


def h11_reading(data: bytes) -> tuple[h11.Request, bytes] | None:
    """What the server's h11 reading makes of `data` (the request, the bytes after its head),
    or None if it is not one complete, valid request."""
    http = h11.Connection(h11.SERVER)
    http.receive_data(data)
    try:
        event = http.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    return event, http.trailing_data[0]


def assert_read_as_h11_reads_it(data: bytes) -> None:
    """Whatever `usual_request` takes, h11 reads as the same request, and `accept_response`
    answers it the same way."""
    ours = usual_request(data)
    if ours is None:
        return
    target, answer, end = ours
    theirs = h11_reading(data)
    assert theirs is not None
    request, trailing = theirs
    assert request.method == b"GET" and request.http_version == b"1.1"
    assert request.target == target
    assert accept_response(request) == answer
    assert data[end:] == trailing


@pytest.mark.parametrize(
    "request_bytes",
    [
        WSConnection(ConnectionType.CLIENT).send(Request(host="127.0.0.1:1", target="/t/x")),
        client_request("127.0.0.1:8080", "/t/abc?x=1")[0],
        BASE + b"\r\n",
        BASE + b"x-other: caf\xe9\r\nx-empty:\r\nx-spaces:  a  b \t\r\n\r\n",
        BASE.replace(b"Connection: Upgrade", b"Connection: ,, Upgrade ,x") + b"\r\n",
        BASE + b"\r\n" + b"\x82\x85 trailing frame bytes",
    ],
)
def test_the_server_reads_the_usual_request_itself_as_h11_would(request_bytes: bytes) -> None:
    assert usual_request(request_bytes) is not None
    assert_read_as_h11_reads_it(request_bytes)
    target, answer, _ = usual_request(request_bytes) or (b"", b"", 0)
    assert answer == wsproto_accept(request_bytes.split(b"\r\n\r\n")[0] + b"\r\n\r\n")


@pytest.mark.parametrize(
    "request_bytes",
    [
        BASE,  # incomplete
        BASE.replace(b"GET", b"get") + b"\r\n",
        BASE.replace(b"HTTP/1.1", b"HTTP/1.0") + b"\r\n",
        b"\r\n" + BASE + b"\r\n",  # h11 skips a leading blank line
        BASE.replace(b"\r\n", b"\n") + b"\n",  # bare line feeds
        BASE.replace(b"Host: h\r\n", b"Host: h\n") + b"\r\n",
        BASE + b" folded: obs-fold\r\n\r\n",
        BASE + b"Content-Length: 0\r\n\r\n",
        BASE + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        BASE + b"x-big: " + b"a" * (16 * 1024) + b"\r\n\r\n",
        BASE + b"bad header\r\n\r\n",
        BASE.replace(b"/t/x", b"/t/\xff") + b"\r\n",
        BASE + b"Host: h\r\n\r\n",
        BASE + b"Sec-WebSocket-Protocol: chat\r\n\r\n",
        BASE.replace(b"Version: 13", b"Version: 8") + b"\r\n",
    ],
)
def test_anything_else_is_left_to_h11(request_bytes: bytes) -> None:
    assert usual_request(request_bytes) is None


_LINES = st.sampled_from(
    [
        b"Host: h",
        b"Host: 127.0.0.1:1",
        b"host:h",
        b"Upgrade: websocket",
        b"upgrade: WebSocket ",
        b"Connection: Upgrade",
        b"connection: keep-alive, upgrade",
        b"Sec-WebSocket-Key: c2FtZSBrZXkgMTIzNA==",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Version: 13 ",
        b"Content-Length: 0",
        b"Sec-WebSocket-Extensions: x",
        b"x: \xff",
        b"x:",
        b"x :y",
        b" y",
        b"x: a\x00b",
        b"x: a\x0bb",
        b"x: a\nb",
        b"x\t: y",
        b"",
    ]
)


_USUAL_LINES = BASE.split(b"\r\n")[1:-1]


@given(
    st.just(b"GET /t/x HTTP/1.1")
    | st.sampled_from(
        [
            b"GET /t/x?q HTTP/1.1",
            b"GET  /t/x HTTP/1.1",
            b"GET /t x HTTP/1.1",
            b"GET /t/x HTTP/1.1 ",
            b"POST /t/x HTTP/1.1",
        ]
    ),
    st.lists(_LINES, max_size=4).flatmap(lambda extra: st.permutations(_USUAL_LINES + extra)),
    st.integers(min_value=0, max_value=2 * len(_USUAL_LINES)),
    st.just(b"\r\n\r\n") | st.sampled_from([b"\r\n\n", b"\n\r\n", b"\r\n"]),
    st.binary(max_size=8),
)
def test_whatever_the_server_reads_itself_h11_reads_the_same(
    line: bytes, headers: list[bytes], drop: int, end: bytes, trailing: bytes
) -> None:
    # The usual request's lines in any order, among others, one of them perhaps left out.
    if drop < len(headers):
        del headers[drop]
    assert_read_as_h11_reads_it(b"\r\n".join([line, *headers]) + end + trailing)


def response(accept: bytes, extra: bytes = b"", status: bytes = b"101 Switching Protocols") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n"
    )


KEY = b"c2FtZSBrZXkgMTIzNA=="
ACCEPT = accept_token(KEY)


def test_a_valid_101_is_accepted_with_any_casing_and_extra_headers() -> None:
    check_response(response(ACCEPT), ACCEPT)
    check_response(
        b"HTTP/1.1 101 OK\r\nupgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\n"
        b"sec-websocket-accept:   " + ACCEPT + b"  \r\nServer: caf\xe9\r\n\r\n",
        ACCEPT,
    )


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (response(accept_token(b"b3RoZXIga2V5IDEyMzQ=")), "bad accept token"),
        (response(ACCEPT).replace(b"Upgrade: websocket\r\n", b""), "'upgrade'"),
        (response(ACCEPT).replace(b"Upgrade: websocket", b"Upgrade: h2c"), "Upgrade: websocket"),
        (response(ACCEPT).replace(b"Connection: Upgrade", b"Connection: close"), "Connection"),
        (response(ACCEPT).replace(b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n", b""), "accept"),
        (response(ACCEPT, b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n"), "repeated"),
        (response(ACCEPT, b"Sec-WebSocket-Extensions: permessage-deflate\r\n"), "extensions"),
        (response(ACCEPT, b"Sec-WebSocket-Protocol: chat\r\n"), "protocol"),
        (response(ACCEPT).replace(b"Connection: Upgrade", b"Connection: Upgrade, \xff"), "undecod"),
        (response(ACCEPT).replace(b"HTTP/1.1", b"HTTP/2.0"), "status line"),
        (response(ACCEPT).replace(b"HTTP/1.1 101", b"HTTP/1.1 1O1"), "status line"),
        (response(ACCEPT, b" folded: continuation\r\n"), "header line"),
        (response(ACCEPT, b"no colon here\r\n"), "header line"),
        (response(ACCEPT, b"bad name: x\r\n"), "header line"),
        (response(ACCEPT)[:-2], "incomplete"),
    ],
)
def test_a_bad_101_is_refused(head: bytes, message: str) -> None:
    with pytest.raises(HandshakeError, match=message) as caught:
        check_response(head, ACCEPT)
    assert caught.value.status_code is None


@pytest.mark.parametrize("status", [200, 404, 503, 100])
def test_any_other_status_is_a_refusal_with_its_code(status: int) -> None:
    head = f"HTTP/1.1 {status} Whatever\r\ncontent-length: 0\r\n\r\n".encode()
    with pytest.raises(HandshakeError) as caught:
        check_response(head, ACCEPT)
    assert caught.value.status_code == status


# -- over real sockets ----------------------------------------------------------------------


async def raw_server(
    nursery: trio.Nursery, answer: Callable[[trio.SocketStream, bytes], Awaitable[None]]
) -> int:
    """A TCP server that reads one request head and lets `answer` reply to it."""

    async def serve(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            head += chunk
        await answer(stream, head)
        await trio.sleep(GUARD)

    listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    return listener_port(listeners)


def key_of(head: bytes) -> bytes:
    return next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )


async def test_a_101_arriving_byte_by_byte_with_a_message_behind_it(nursery: trio.Nursery) -> None:
    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        # wsproto's own 101 for our request, then a binary frame "hi", one byte per write.
        data = wsproto_accept(head) + b"\x82\x02hi"
        for i in range(len(data)):
            await stream.send_all(data[i : i + 1])
            await trio.sleep(0.001)

    port = await raw_server(nursery, answer)
    with trio.fail_after(GUARD):
        ws = await connect_websocket(f"ws://127.0.0.1:{port}/t/x", max_message_size=MAX)
        assert await ws.receive() == b"hi"
    await ws.aclose()


@pytest.mark.parametrize(
    ("make", "message", "status"),
    [
        (lambda key: response(accept_token(key + b"x")), "bad accept token", None),
        (lambda key: b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n", "HTTP 503", 503),
        (lambda key: b"HTTP/1.1 101 OK\r\n" + b"x-pad: " + b"a" * 20000, "oversized", None),
        (lambda key: b"HTTP/1.1 101 OK\r\n", "closed the connection", None),
    ],
)
async def test_refusals_over_a_socket(
    nursery: trio.Nursery,
    make: Callable[[bytes], bytes],
    message: str,
    status: int | None,
) -> None:
    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(make(key_of(head)))
        if message == "closed the connection":
            await stream.aclose()

    port = await raw_server(nursery, answer)
    with trio.fail_after(GUARD), pytest.raises(WebSocketError, match=message) as caught:
        await connect_websocket(f"ws://127.0.0.1:{port}/t/x", max_message_size=MAX)
    assert caught.value.status_code == status


async def serve_echo_once(nursery: trio.Nursery) -> int:
    async def handler(ws: WebSocket) -> None:
        await ws.send(await ws.receive())

    listeners = await nursery.start(
        partial(
            serve_websocket,
            handler,
            "127.0.0.1",
            0,
            accept_path=lambda path: path == "/t/x",
            max_message_size=MAX,
        )
    )
    return listener_port(listeners)


async def exchange(port: int, request: bytes) -> bytes:
    """Send `request` in three pieces; the server's answer head."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        for piece in (request[:5], request[5:40], request[40:]):
            await stream.send_all(piece)
            await trio.sleep(0.001)
        head = b""
        with trio.fail_after(GUARD):
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                head += chunk
        return head
    finally:
        await trio.aclose_forcefully(stream)


async def test_the_server_answers_wsprotos_101_to_a_request_in_pieces(
    nursery: trio.Nursery,
) -> None:
    port = await serve_echo_once(nursery)
    request = WSConnection(ConnectionType.CLIENT).send(Request(host="h", target="/t/x"))
    assert await exchange(port, request) == wsproto_accept(request)


async def test_requests_left_to_wsproto_get_its_answers(nursery: trio.Nursery) -> None:
    port = await serve_echo_once(nursery)
    # An extension offer: accepted, without the extension (wsproto's answer).
    offer = BASE + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    assert await exchange(port, offer) == wsproto_accept(offer)
    # An old version: 426 with the version we speak.
    old = BASE.replace(b"Version: 13", b"Version: 8") + b"\r\n"
    head = await exchange(port, old)
    assert head.startswith(b"HTTP/1.1 426 ")
    assert b"sec-websocket-version: 13\r\n" in head.lower()
    # No key at all: 400.
    keyless = BASE.replace(b"Sec-WebSocket-Key: c2FtZSBrZXkgMTIzNA==\r\n", b"") + b"\r\n"
    assert (await exchange(port, keyless)).startswith(b"HTTP/1.1 400 ")


async def test_our_client_against_wsprotos_server(nursery: trio.Nursery) -> None:
    # The whole exchange with wsproto on the other side: its server accepts our request, we
    # accept its 101, and a message goes both ways.
    async def serve(stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            ws.receive_data(await stream.receive_some(4096))
            events = list(ws.events())
            if events:
                break
        assert isinstance(events[0], Request)
        await stream.send_all(ws.send(AcceptConnection()))
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    await stream.send_all(ws.send(BytesMessage(data=event.data[::-1])))

    listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    port = listener_port(listeners)
    with trio.fail_after(GUARD):
        ws = await connect_websocket(f"ws://127.0.0.1:{port}/t/x", max_message_size=MAX)
        await ws.send(b"abc")
        assert await ws.receive() == b"cba"
    await ws.aclose()

