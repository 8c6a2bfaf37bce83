"""The frame encoding: a small, strict subset of deterministic CBOR (RFC 8949).

Why CBOR: it is binary-safe (chat text and, later, file chunks travel as they are), every language
has a decoder, and the subset below is small enough to write by hand in an afternoon. Why strict:
a frame has exactly one valid encoding (shortest-form integers and lengths, map keys sorted by
their encoded bytes, no duplicates, definite lengths only), so test vectors pin the wire format
byte for byte and a fuzzer cannot find two spellings of one frame.

Allowed: unsigned and negative integers (major types 0 and 1) up to 64 bits, byte strings (2),
UTF-8 text strings (3), arrays (4), maps with text keys (5), and false/true/null (7, simple values
20/21/22). Not allowed: tags, floats, undefined, indefinite lengths, non-text map keys.
"""

from __future__ import annotations

from typing import Union

from ._errors import RemoteProtocolError

Value = Union[int, bytes, str, bool, None, list["Value"], dict[str, "Value"]]  # noqa: UP007

#: Deepest nesting a decoder accepts (a frame is at most a map of lists of maps).
MAX_DEPTH = 4
#: Most items in one array or map; bounds the work one frame can cause.
MAX_ITEMS = 4096


#: Encoded map keys, by key: frames use a few dozen field names over and over.
_KEY_CACHE: dict[str, bytes] = {}
_KEY_CACHE_MAX = 512


#: Sorted (key, encoded key) pairs by a map's keys in insertion order (bounded, like the keys).
_KEY_ORDERS: dict[tuple[str, ...], tuple[tuple[str, bytes], ...]] = {}


def _key_order(keys: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
    items = []
    for key in keys:
        key_bytes = _KEY_CACHE.get(key) if isinstance(key, str) else None
        if key_bytes is None:
            if not isinstance(key, str):
                raise TypeError("map keys must be text")
            key_bytes = encode(key)
            if len(_KEY_CACHE) < _KEY_CACHE_MAX and len(key) <= 32:
                _KEY_CACHE[key] = key_bytes
        items.append((key, key_bytes))
    # RFC 8949 section 4.2.1: keys sorted by the bytewise order of their encodings.
    items.sort(key=lambda pair: pair[1])
    order = tuple(items)
    if len(_KEY_ORDERS) < _KEY_CACHE_MAX and all(key in _KEY_CACHE for key in keys):
        _KEY_ORDERS[keys] = order
    return order


def _head(major: int, arg: int) -> bytes:
    if arg < 24:
        return bytes((major << 5 | arg,))
    if arg < 0x100:
        return bytes([major << 5 | 24, arg])
    if arg < 0x10000:
        return bytes([major << 5 | 25]) + arg.to_bytes(2, "big")
    if arg < 0x100000000:
        return bytes([major << 5 | 26]) + arg.to_bytes(4, "big")
    return bytes([major << 5 | 27]) + arg.to_bytes(8, "big")


def encode(value: Value) -> bytes:
    """Encode `value` deterministically. Raises TypeError/ValueError for values outside the subset."""
    out = bytearray()
    _encode_into(value, out)
    return bytes(out)


def _encode_into(value: Value, out: bytearray) -> None:
    if value is False:
        out.append(0xF4)
    elif value is True:
        out.append(0xF5)
    elif value is None:
        out.append(0xF6)
    elif isinstance(value, int):
        if 0 <= value < 24:
            out.append(value)
        elif value >= 0:
            if value >= 1 << 64:
                raise ValueError("integer out of range")
            out += _head(0, value)
        else:
            if -1 - value >= 1 << 64:
                raise ValueError("integer out of range")
            out += _head(1, -1 - value)
    elif isinstance(value, bytes):
        out += _head(2, len(value))
        out += value
    elif isinstance(value, str):
        data = value.encode("utf-8")
        out += _head(3, len(data))
        out += data
    elif isinstance(value, list):
        out += _head(4, len(value))
        for item in value:
            _encode_into(item, out)
    elif isinstance(value, dict):
        # A frame type's map has the same keys every time: their sorted order is kept.
        keys = tuple(value)
        order = _KEY_ORDERS.get(keys)
        if order is None:
            order = _key_order(keys)
        out += _head(5, len(order))
        for key, key_bytes in order:
            out += key_bytes
            item = value[key]
            # The usual items in line; anything else by the general path.
            if type(item) is int and 0 <= item < 24:
                out.append(item)
            elif item is True:
                out.append(0xF5)
            elif item is False:
                out.append(0xF4)
            elif item is None:
                out.append(0xF6)
            else:
                _encode_into(item, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise RemoteProtocolError("frame is truncated", "malformed")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def head(self) -> tuple[int, int]:
        pos = self.pos
        if pos >= len(self.data):
            raise RemoteProtocolError("frame is truncated", "malformed")
        first = self.data[pos]
        self.pos = pos + 1
        major, info = first >> 5, first & 0x1F
        if major == 7:
            return major, info
        if info < 24:
            return major, info
        if info > 27:
            raise RemoteProtocolError("indefinite or reserved CBOR length", "malformed")
        size = 1 << (info - 24)
        arg = int.from_bytes(self.take(size), "big")
        # Shortest form only: one frame, one encoding.
        if (size == 1 and arg < 24) or (size > 1 and arg < 1 << (4 * size)):
            raise RemoteProtocolError("non-shortest CBOR integer", "malformed")
        return major, arg


def decode(data: bytes) -> Value:
    """Decode one value that must span all of `data`. Raises only RemoteProtocolError."""
    reader = _Reader(data)
    value = _decode(reader, 0)
    if reader.pos != len(data):
        raise RemoteProtocolError("trailing bytes after frame", "malformed")
    return value


def decode_next(data: bytes, pos: int) -> tuple[Value, int]:
    """Decode the value that starts at `pos` (one item of a CBOR sequence, RFC 8742): the
    value and where the next one starts. Raises only RemoteProtocolError."""
    reader = _Reader(data)
    reader.pos = pos
    value = _decode(reader, 0)
    return value, reader.pos


def _text(reader: _Reader, length: int) -> str:
    raw = reader.take(length)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("text is not valid UTF-8", "malformed") from None


def _decode_key(reader: _Reader, depth: int) -> str:
    """A map key: `_decode` with a short path for the usual case, a text string."""
    if depth > MAX_DEPTH:
        raise RemoteProtocolError("frame nests too deeply", "malformed")
    start = reader.pos
    major, arg = reader.head()
    if major == 3:
        return _text(reader, arg)
    # Anything else fails exactly as the general decoder would have failed on it.
    reader.pos = start
    _decode(reader, depth)
    raise RemoteProtocolError("map key is not text", "malformed")


def _decode(reader: _Reader, depth: int) -> Value:
    if depth > MAX_DEPTH:
        raise RemoteProtocolError("frame nests too deeply", "malformed")
    major, arg = reader.head()
    if major == 0:
        return arg
    if major == 1:
        return -1 - arg
    if major == 2:
        return reader.take(arg)
    if major == 3:
        return _text(reader, arg)
    if major == 4:
        if arg > MAX_ITEMS:
            raise RemoteProtocolError("array too long", "malformed")
        return [_decode(reader, depth + 1) for _ in range(arg)]
    if major == 5:
        if arg > MAX_ITEMS:
            raise RemoteProtocolError("map too long", "malformed")
        if depth + 1 > MAX_DEPTH:
            # Its keys are too deep: the general path below raises as it always has.
            return _decode_map(reader, arg, depth)
        return _decode_shallow_map(reader, arg, depth)
    if major == 7:
        if arg == 20:
            return False
        if arg == 21:
            return True
        if arg == 22:
            return None
        raise RemoteProtocolError("unsupported CBOR simple value or float", "malformed")
    raise RemoteProtocolError("CBOR tags are not allowed", "malformed")


def _decode_map(reader: _Reader, count: int, depth: int) -> dict[str, Value]:
    result: dict[str, Value] = {}
    previous: bytes | None = None
    for _ in range(count):
        start = reader.pos
        key = _decode_key(reader, depth + 1)
        key_bytes = reader.data[start : reader.pos]
        if previous is not None and key_bytes <= previous:
            raise RemoteProtocolError("map keys unsorted or duplicated", "malformed")
        previous = key_bytes
        result[key] = _decode(reader, depth + 1)
    return result


#: Decoded map keys by their encoding (frames use a few dozen field names over and over).
_KEY_TEXT: dict[bytes, str] = {}


def _decode_shallow_map(reader: _Reader, count: int, depth: int) -> dict[str, Value]:
    """`_decode_map` with the usual items read in line: a key that is a short text string, a
    value that is a small integer, a short text, or false/true/null. Anything else, and any
    error, goes through the general functions, so the result and every error are theirs.
    (A welcome or a hello is a few dozen such items; a call per item was most of its cost.)"""
    data = reader.data
    size = len(data)
    result: dict[str, Value] = {}
    previous: bytes | None = None
    for _ in range(count):
        start = reader.pos
        first = data[start] if start < size else -1
        end = start + 1 + (first & 0x1F)
        if 0x60 <= first <= 0x77 and end <= size:
            key_bytes = data[start:end]
            key = _KEY_TEXT.get(key_bytes)
            if key is None:
                key = _decode_key(reader, depth + 1)
                if len(_KEY_TEXT) < _KEY_CACHE_MAX:
                    _KEY_TEXT[key_bytes] = key
            reader.pos = end
        else:
            key = _decode_key(reader, depth + 1)
            key_bytes = data[start : reader.pos]
        if previous is not None and key_bytes <= previous:
            raise RemoteProtocolError("map keys unsorted or duplicated", "malformed")
        previous = key_bytes
        pos = reader.pos
        first = data[pos] if pos < size else -1
        if 0 <= first < 24:
            result[key] = first
            reader.pos = pos + 1
        elif first == 0xF4:
            result[key] = False
            reader.pos = pos + 1
        elif first == 0xF5:
            result[key] = True
            reader.pos = pos + 1
        elif first == 0xF6:
            result[key] = None
            reader.pos = pos + 1
        elif 0x60 <= first <= 0x77 and pos + 1 + (first & 0x1F) <= size:
            reader.pos = pos + 1
            result[key] = _text(reader, first & 0x1F)
        else:
            result[key] = _decode(reader, depth + 1)
    return result
