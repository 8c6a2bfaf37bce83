"""The data frames of an established WebSocket (RFC 6455 section 5), encoded and parsed by hand.

What belongs here: binary data frames (opcodes 0x2 and 0x0) both ways, masking, the size limit
on frame headers, and telling every other frame apart so that `_ws.py` can hand it on. What
does not: the opening handshake, control frames and the closing handshake, which stay wsproto's
(`_ws.py` feeds a control frame, whole, to its wsproto `Connection`); and sockets.

Why by hand: the tunnel sends one kind of frame, an unfragmented binary message of at most
64 KiB, and on its hot path wsproto's general machinery (a generator per read, an event object
per frame, a buffer copied per frame, a per-byte-lane masker object per frame) cost more than
the rest of the WebSocket layer together. Parsing here is one pass over the bytes read: a
complete message becomes one `bytes` object, copied once (unmasked on the way where the peer is
a client); a partial frame waits in the buffer. Nothing is read past what the caller asked
for, so TCP flow control still pushes back on a peer whose messages are not consumed.

Every rule wsproto enforced on data frames is enforced here too, with the close code it used:
reserved bits (1002), masking in the wrong direction (1002), a continuation with no message
started or a new message before the last one finished (1002), an unknown opcode (1002), a
control frame that is fragmented or longer than 125 bytes (1002), a 64-bit length with its top
bit set (1002), a message over the limit (1009, decided on the frame header, before any of its
payload is read). Text frames are not this transport's: they are reported (`TEXT`), whole, so
the caller closes with 1003.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable
from typing import Final

__all__ = [
    "TEXT",
    "ControlFrame",
    "FrameParser",
    "FramingError",
    "frame_messages",
    "mask",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_MESSAGE_TOO_BIG: Final = 1009

#: Up to this many bytes a payload is (un)masked as one integer XOR; above it, byte lane by
#: byte lane with `bytes.translate` (the integer conversions grow faster than the translations).
_INT_MASK_MAX: Final = 2048
#: One translation table per key byte: _XOR[k][b] == b ^ k (built as 256 integer XORs: a
#: generator per table cost every process ~2.5 ms at import).
_IDENTITY: Final = int.from_bytes(bytes(range(256)), "big")
_ONES: Final = int.from_bytes(b"\x01" * 256, "big")
_XOR: Final = [(_IDENTITY ^ k * _ONES).to_bytes(256, "big") for k in range(256)]
#: Masking keys are drawn from os.urandom this many bytes at a time (RFC 6455 section 5.3: a
#: fresh, unpredictable key per frame; one system call per 1024 frames).
_MASK_POOL: Final = 4096


def mask(data: bytes | bytearray | memoryview, key: bytes | bytearray) -> bytes:
    """`data` XOR the 4-byte `key` repeated (masking and unmasking are the same operation)."""
    n = len(data)
    if n <= _INT_MASK_MAX:
        if not n:
            return b""
        keys = (key * ((n >> 2) + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(
            n, "little"
        )
    lanes = bytearray(data)
    for i in range(4):
        lanes[i::4] = lanes[i::4].translate(_XOR[key[i]])
    return bytes(lanes)


class _Masks:
    """Fresh masking keys from a pool refilled from os.urandom."""

    __slots__ = ("_pool", "_at")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        at = self._at
        if at + 4 > len(self._pool):
            self._pool = os.urandom(_MASK_POOL)
            at = 0
        self._at = at + 4
        return self._pool[at : at + 4]


_client_masks = _Masks()


def frame_messages(messages: Iterable[bytes], *, client: bool) -> bytes:
    """Each message as one unfragmented binary frame, masked when we are the client."""
    parts: list[bytes] = []
    append = parts.append
    for data in messages:
        n = len(data)
        if n < 126:
            head = bytes((0x82, 0x80 | n if client else n))
        elif n < 0x10000:
            head = bytes((0x82, 0xFE if client else 0x7E)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x82, 0xFF if client else 0x7F)) + n.to_bytes(8, "big")
        append(head)
        if client:
            # `_client_masks.next()`, written out (a call less per frame we send)
            masks = _client_masks
            at = masks._at
            if at + 4 > len(masks._pool):
                masks._pool = os.urandom(_MASK_POOL)
                at = 0
            masks._at = at + 4
            key = masks._pool[at : at + 4]
            append(key)
            append(mask(data, key))
        else:
            append(data)
    return b"".join(parts)


class ControlFrame:
    """A complete close, ping or pong frame, as it arrived: for wsproto to parse."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


class FramingError:
    """The peer broke RFC 6455: close with `code`; nothing after it is parsed."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"FramingError({self.code}, {self.reason!r})"


class _Text:
    __slots__ = ()

    def __repr__(self) -> str:
        return "TEXT"


#: A text message arrived (whole): this transport carries binary messages only.
TEXT: Final = _Text()

Item = bytes | ControlFrame | FramingError | _Text


class FrameParser:
    """Bytes in, items out (in order): a complete binary message (`bytes`), a `ControlFrame`,
    `TEXT`, or a `FramingError`, after which nothing more is parsed.

    `client`: we are the client, so the peer's frames must not be masked (else they must be).
    `messages` counts the complete binary messages waiting in `items`.
    """

    __slots__ = ("items", "messages", "done", "_client", "_max", "_buf", "_partial", "_text")

    def __init__(self, *, client: bool, max_message_size: int) -> None:
        self.items: deque[Item] = deque()
        self.messages = 0
        self.done = False
        self._client = client
        self._max = max_message_size
        self._buf = bytearray()  # unparsed bytes: the start of a frame
        self._partial: bytearray | None = None  # a fragmented binary message so far
        self._text = False  # inside a fragmented text message

    def buffered(self) -> int:
        """Bytes held that are not yet a complete message."""
        return len(self._buf) + (len(self._partial) if self._partial is not None else 0)

    def feed(self, data: bytes) -> None:
        """Parse `data` (what the socket gave) together with any partial frame before it."""
        if self.done:
            return
        # Fresh bytes are parsed where they are; a frame split across reads waits in a
        # bytearray that only ever grows at its end, so a peer dribbling a large frame in
        # one byte at a time costs linear work, not quadratic.
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        end = len(buf)
        pos = 0
        items = self.items
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                if length >> 63:
                    self._fail(CLOSE_PROTOCOL_ERROR, "frame length has its top bit set")
                    return
                head = 10
            opcode = b0 & 0x0F
            if not (
                b0 == 0x82  # the usual frame: a whole binary message, no reserved bits
                and (b1 >= 0x80) is not self._client  # masked exactly when it must be
                and self._partial is None
                and not self._text
                and length <= self._max
            ):
                problem = self._check(b0, b1, opcode, length)
                if problem is not None:
                    self._fail(*problem)
                    return
            masked = b1 & 0x80
            if masked:
                head += 4
            start = pos + head
            stop = start + length
            if stop > end:
                break
            if opcode == OP_BINARY and b0 & 0x80:
                # The hot path: a whole message in one frame.
                if masked:
                    items.append(mask(buf[start:stop], buf[start - 4 : start]))
                elif type(buf) is bytes:
                    items.append(buf[start:stop])
                else:
                    items.append(bytes(buf[start:stop]))
                self.messages += 1
            elif opcode >= OP_CLOSE:
                items.append(ControlFrame(bytes(buf[pos:stop])))
                if opcode == OP_CLOSE:
                    # wsproto takes over: after a Close nothing more is parsed.
                    self.done = True
                    self._buf = bytearray()
                    return
            else:
                payload = buf[start:stop]
                if masked:
                    payload = mask(payload, buf[start - 4 : start])
                self._data_fragment(opcode, bool(b0 & 0x80), payload)
            pos = stop
        if pos >= end:
            self._buf = bytearray()
        elif buf is self._buf:
            del buf[:pos]
        else:
            self._buf = bytearray(buf[pos:])

    def _check(self, b0: int, b1: int, opcode: int, length: int) -> tuple[int, str] | None:
        """What is wrong with a frame header, if anything (decided before its payload)."""
        if b0 & 0x70:
            return CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)"
        if bool(b1 & 0x80) == self._client:
            if self._client:
                return CLOSE_PROTOCOL_ERROR, "masked frame from the server"
            return CLOSE_PROTOCOL_ERROR, "unmasked frame from the client"
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                return CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}"
            if not b0 & 0x80:
                return CLOSE_PROTOCOL_ERROR, "fragmented control frame"
            if length > 125:
                return CLOSE_PROTOCOL_ERROR, "control frame longer than 125 bytes"
            return None
        if opcode > OP_BINARY:
            return CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}"
        in_message = self._partial is not None or self._text
        if opcode == OP_CONTINUATION:
            if not in_message:
                return CLOSE_PROTOCOL_ERROR, "continuation frame without a message"
        elif in_message:
            return CLOSE_PROTOCOL_ERROR, "new message before the last one finished"
        so_far = len(self._partial) if self._partial is not None else 0
        if so_far + length > self._max:
            return CLOSE_MESSAGE_TOO_BIG, "message too big"
        return None

    def _data_fragment(self, opcode: int, fin: bool, payload: bytes | bytearray) -> None:
        if opcode == OP_TEXT or (opcode == OP_CONTINUATION and self._text):
            self._text = not fin
            if fin:
                self.items.append(TEXT)
            return
        if opcode == OP_BINARY:
            self._partial = bytearray(payload)
        else:
            assert self._partial is not None
            self._partial += payload
        if fin:
            self.items.append(bytes(self._partial))
            self._partial = None
            self.messages += 1

    def _fail(self, code: int, reason: str) -> None:
        self.items.append(FramingError(code, reason))
        self.done = True
        self._buf = bytearray()
        self._partial = None
