"""Local servers for tests: HTTP(S) over h11, a DoH resolver, trustme helpers.

Everything listens on 127.0.0.1 port 0 inside the caller's nursery, so it dies with the test.
The DNS answers are built here, independently of tunnel_trio._doh, so the product decoder is
checked against a second implementation rather than against itself.

tests/conftest.py puts tests/_support on sys.path: ``from _servers import run_doh_server``.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h11
import trio
import trustme

Reply = tuple[int, list[tuple[str, str]], bytes]
Handler = Callable[[h11.Request, bytes], Awaitable[Reply]]


# --- TLS -------------------------------------------------------------------------------------


FAKE = Path(__file__).resolve().parents[1] / "fake_cloudflared" / "cloudflared"
HOSTNAME = "quartz-ripple-lagoon-ember"
TUNNEL_HOST = f"{HOSTNAME}.trycloudflare.com"


def server_ssl_context(ca: trustme.CA, *hostnames: str) -> ssl.SSLContext:
    """A server context with a leaf for `hostnames` (default 127.0.0.1) signed by `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(hostnames or ("127.0.0.1",))).configure_cert(context)
    return context


def client_ssl_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def write_leaf_files(ca: trustme.CA, directory: Path, *hostnames: str) -> tuple[Path, Path]:
    """(cert chain PEM, key PEM) for `hostnames`, e.g. for the fake cloudflared's edge."""
    leaf = ca.issue_cert(*hostnames)
    cert, key = directory / "edge-cert.pem", directory / "edge-key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return cert, key


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- HTTP ------------------------------------------------------------------------------------


async def _serve_connection(
    stream: trio.abc.Stream, handler: Handler, ssl_context: ssl.SSLContext | None
) -> None:
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_side=True)
    conn = h11.Connection(h11.SERVER)
    request: h11.Request | None = None
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Request):
                request, body = event, bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                status, headers, payload = await handler(request, bytes(body))
                headers = [*headers, ("Content-Length", str(len(payload))), ("Connection", "close")]
                data = conn.send(h11.Response(status_code=status, headers=headers))
                data += conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage())
                await stream.send_all(data)
                return
            else:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
        return  # clients with the wrong CA, dropped connections: not this test's concern
    finally:
        await trio.aclose_forcefully(stream)


async def serve_http(
    nursery: trio.Nursery, handler: Handler, *, ssl_context: ssl.SSLContext | None = None
) -> int:
    """Serve `handler` on 127.0.0.1 (HTTPS with `ssl_context`); return the port."""

    async def on_connection(stream: trio.SocketStream) -> None:
        await _serve_connection(stream, handler, ssl_context)

    listeners = await nursery.start(partial(trio.serve_tcp, on_connection, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def run_http_server(
    nursery: trio.Nursery,
    routes: Mapping[str, Reply],
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> str:
    """Fixed replies by request target; 404 otherwise. Returns the base URL."""

    async def handler(request: h11.Request, body: bytes) -> Reply:
        return routes.get(request.target.decode(), (404, [], b"not found"))

    port = await serve_http(nursery, handler, ssl_context=ssl_context)
    scheme = "https" if ssl_context is not None else "http"
    return f"{scheme}://127.0.0.1:{port}"


# --- DNS over HTTPS --------------------------------------------------------------------------


def _parse_question(query: bytes) -> tuple[int, str, int, bytes]:
    """(id, lowercased name, qtype, question bytes) of a query without compression."""
    (msg_id,) = struct.unpack("!H", query[:2])
    pos, labels = 12, []
    while query[pos]:
        labels.append(query[pos + 1 : pos + 1 + query[pos]].decode("ascii").lower())
        pos += 1 + query[pos]
    qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
    return msg_id, ".".join(labels), qtype, query[12 : pos + 5]


def dns_answer(query: bytes, addresses: list[str] | None) -> bytes:
    """A response to `query`: NXDOMAIN if `addresses` is None, else the matching records."""
    msg_id, _, qtype, question = _parse_question(query)
    if addresses is None:
        return struct.pack("!HHHHHH", msg_id, 0x8183, 1, 0, 0, 0) + question
    family = 4 if qtype == 1 else 6
    records = b""
    count = 0
    for text in addresses:
        address = ipaddress.ip_address(text)
        if address.version != family:
            continue
        rdata = address.packed
        # 0xC00C: a compression pointer to the question's name.
        records += struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata
        count += 1
    return struct.pack("!HHHHHH", msg_id, 0x8180, 1, count, 0, 0) + question + records


@dataclass
class DohServer:
    """A DoH resolver on 127.0.0.1. Change its attributes mid-test to change its behaviour.

    mode: "ok" answers; "hang" never answers; "garbage" answers 200 with bytes that are not
    DNS; "http-error" answers 500. `answer_after`: the first N queries get NXDOMAIN, as a
    fresh quick-tunnel name does.
    """

    answers: dict[str, list[str]]
    answer_after: int = 0
    mode: str = "ok"
    queries: int = 0
    url: str = ""
    names: list[str] = field(default_factory=list)

    async def handle(self, request: h11.Request, body: bytes) -> Reply:
        self.queries += 1
        if self.mode == "hang":
            await trio.sleep_forever()
        if self.mode == "http-error":
            return 500, [], b"oops"
        if self.mode == "garbage":
            return 200, [("Content-Type", "application/dns-message")], b"\x00\x01garbage"
        if request.method != b"POST" or request.target != b"/dns-query":
            return 404, [], b""
        _, name, _, _ = _parse_question(body)
        self.names.append(name)
        addresses = self.answers.get(name) if self.queries > self.answer_after else None
        return 200, [("Content-Type", "application/dns-message")], dns_answer(body, addresses)


async def run_doh_server(
    nursery: trio.Nursery,
    ca: trustme.CA,
    answers: dict[str, list[str]],
    *,
    answer_after: int = 0,
    mode: str = "ok",
) -> DohServer:
    """Start a DoH resolver with a `ca`-signed certificate for 127.0.0.1; `.url` is its URL."""
    server = DohServer({k.lower(): v for k, v in answers.items()}, answer_after, mode)
    port = await serve_http(nursery, server.handle, ssl_context=server_ssl_context(ca))
    server.url = f"https://127.0.0.1:{port}/dns-query"
    return server
