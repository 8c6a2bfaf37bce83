"""The WebSocket opening handshake (RFC 6455 section 4), written by hand where it is hot.

Sans-IO: bytes in, bytes or an error out; `_ws.py` does the reading and writing.

* Client: the upgrade request is one fixed template, and the response head is parsed here,
  strictly: an HTTP/1.x status line, header lines of the shape h11 accepts (no obs-fold), and
  for a 101 exactly one Upgrade (websocket), one Connection (with the upgrade token) and one
  Sec-WebSocket-Accept, which must be the one our key calls for; any extension or subprotocol
  is refused, since we offer none (wsproto refuses them too). The bytes of the request are
  wsproto's, byte for byte (tests/tunnel_trio/test_wshandshake.py holds the two together).
  Why by hand: the client's side of a join went through wsproto's handshake and its h11
  connection, about a fifth of the Python calls of a whole join, for two small fixed messages.
* Server: `accept_response` checks the usual request, and writes the 101 wsproto would write;
  anything unusual (a duplicated header, an extension or subprotocol offered, a header wsproto
  would decode and might fail on) returns None, and the caller lets wsproto judge the request
  as before, so every answer but the fast one is wsproto's own. The request head comes from
  anyone, so h11 parses it, except one shape read here (`usual_request`): a complete head of
  at most h11's 16 KiB, `GET <visible ASCII> HTTP/1.1`, header lines of the shape h11 accepts,
  no body (no Content-Length or Transfer-Encoding), which `accept_response` takes. Anything
  else, including every malformed head, goes to h11 and its answers, as before
  (tests/tunnel_trio/test_wshandshake.py holds the two parsers together). h11's connection
  was about 25 us of a join's host side, for one small request.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterable

import h11

#: RFC 6455 section 1.3.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: RFC 7230 request-target as h11 checks it (visible ASCII), which a link's path must be.
_TARGET = re.compile(r"[\x21-\x7e]+")
#: RFC 7230 status-line (h11's `status_line`), HTTP/1.x only.
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: (?:[ \t]|[^\x00\s])*)?")
#: RFC 7230 header-field, as h11 reads it (a field-value with obs-text; no obs-fold).
_HEADER = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*"
)

#: RFC 7230 request-line, the only one `usual_request` reads.
_REQUEST_LINE = re.compile(rb"GET ([\x21-\x7e]+) HTTP/1\.1")
#: h11's bound on a request head (its default max_incomplete_event_size).
MAX_USUAL_HEAD = 16 * 1024

_RESPONSE_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: %s\r\n"
    b"\r\n"
)


class HandshakeError(Exception):
    """The server's answer to the upgrade is not a valid acceptance. `status_code`: the HTTP
    status when it answered something other than 101 (the message then says only that)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def accept_token(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())


def client_request(host: str, target: str) -> tuple[bytes, bytes]:
    """(the upgrade request, the Sec-WebSocket-Accept it calls for). `host` is the Host header
    (host[:port]); `target` the path and query. Raises ValueError for a target h11 would not
    send (anything but visible ASCII)."""
    if not _TARGET.fullmatch(target):
        raise ValueError("the request target must be visible ASCII")
    key = base64.b64encode(os.urandom(16))
    request = b"".join(
        (
            b"GET ",
            target.encode("ascii"),
            b" HTTP/1.1\r\nHost: ",
            host.encode("idna"),
            b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
            key,
            b"\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
    )
    return request, accept_token(key)


def check_response(head: bytes, expected_accept: bytes) -> None:
    """Judge the response head (everything up to and including its blank line). Returns when
    it accepts the upgrade; raises HandshakeError otherwise."""
    if not head.endswith(b"\r\n\r\n"):
        raise HandshakeError("an incomplete response head")
    lines = head[:-4].split(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise HandshakeError("a malformed status line")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        field = _HEADER.fullmatch(line)
        if field is None:
            raise HandshakeError("a malformed header line")
        headers.setdefault(field[1].lower(), []).append(field[2])
    status = int(status_line[1])
    if status != 101:
        raise HandshakeError(f"the server answered HTTP {status}", status_code=status)
    for name in (b"sec-websocket-extensions", b"sec-websocket-protocol"):
        if name in headers:
            raise HandshakeError(f"an unrequested {name.decode()} header")
    connection = _single(headers, b"connection")
    upgrade = _single(headers, b"upgrade")
    accept = _single(headers, b"sec-websocket-accept")
    if not (connection.isascii() and upgrade.isascii() and accept.isascii()):
        raise HandshakeError("an undecodable header")
    if b"upgrade" not in (token.strip().lower() for token in connection.split(b",")):
        raise HandshakeError("missing header, 'Connection: Upgrade'")
    if upgrade.lower() != b"websocket":
        raise HandshakeError("missing header, 'Upgrade: websocket'")
    if accept != expected_accept:
        raise HandshakeError("bad accept token")


def _single(headers: dict[bytes, list[bytes]], name: bytes) -> bytes:
    values = headers.get(name)
    if not values:
        raise HandshakeError(f"missing header, {name.decode()!r}")
    if len(values) > 1:
        raise HandshakeError(f"a repeated {name.decode()!r} header")
    return values[0]


def usual_request(data: bytes) -> tuple[bytes, bytes, int] | None:
    """(the request target, the 101, where the head ends) when `data` begins with a complete
    head of the usual upgrade request (see the module docstring); None for anything else,
    which h11 then parses (and `accept_response` judges)."""
    end = data.find(b"\r\n\r\n")
    if not 0 <= end <= MAX_USUAL_HEAD - 4:
        return None
    lines = data[:end].split(b"\r\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        return None
    headers = []
    for line in lines[1:]:
        field = _HEADER.fullmatch(line)
        if field is None:
            return None
        name = field[1].lower()
        if name == b"content-length" or name == b"transfer-encoding":
            return None  # a body: h11 judges its framing
        headers.append((name, field[2]))
    response = _accept(headers)
    if response is None:
        return None
    return request_line[1], response, end + 4


def accept_response(request: h11.Request) -> bytes | None:
    """The 101 for an ordinary upgrade request (h11 parsed it; the caller checked the path),
    byte for byte what wsproto answers with no extension and no subprotocol. None when the
    request is anything else: the caller hands it to wsproto, which accepts or refuses it."""
    if request.method != b"GET":
        return None
    return _accept(request.headers)


def _accept(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """`accept_response` for a GET with these headers (names lowercased, values stripped)."""
    connection = upgrade = key = version = host = None
    for name, value in headers:
        if name == b"connection":
            if connection is not None:
                return None
            connection = value
        elif name == b"upgrade":
            if upgrade is not None:
                return None
            upgrade = value
        elif name == b"sec-websocket-key":
            if key is not None:
                return None
            key = value
        elif name == b"sec-websocket-version":
            if version is not None:
                return None
            version = value
        elif name == b"host":
            if host is not None:
                return None
            host = value
        elif name in (b"sec-websocket-extensions", b"sec-websocket-protocol"):
            return None
    if connection is None or upgrade is None or key is None or host is None:
        return None
    if version != b"13" or upgrade.lower() != b"websocket":
        return None
    if not (connection.isascii() and host.isascii()):
        return None
    if b"upgrade" not in (token.strip().lower() for token in connection.split(b",")):
        return None
    try:
        host.decode("idna")  # wsproto does, and refuses the request if it cannot
    except UnicodeError:
        return None
    return _RESPONSE_101 % accept_token(key)
