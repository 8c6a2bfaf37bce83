"""Every frame of the protocol, as frozen dataclasses, and their CBOR map encoding.

A frame on the wire is one CBOR map (see `_codec`) whose key "t" names the frame type; the other
keys are the fields below, under the same names. Optional fields that are None are omitted.
Unknown keys are ignored (room for additive extensions); a missing or mistyped known field is a
`RemoteProtocolError`. `spec/protocol.md` lists the same table for reimplementers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from . import _codec
from ._codec import _head
from ._errors import RemoteProtocolError
from ._make import maker

# Protocol version carried in the first byte of handshake message 1 and in hello.v.
PROTOCOL_VERSION = 1


@dataclass(frozen=True, slots=True)
class MemberEntry:
    """One row of a roster."""

    id: int
    name: str
    host: bool
    on: bool  # connected now

    def to_value(self) -> dict[str, _codec.Value]:
        return {"id": self.id, "name": self.name, "host": self.host, "on": self.on}

    @classmethod
    def from_value(cls, value: _codec.Value) -> MemberEntry:
        if not isinstance(value, dict):
            raise RemoteProtocolError("roster entry is not a map", "malformed")
        return cls(
            id=_get(value, "id", int, "roster"),
            name=_get(value, "name", str, "roster"),
            host=_get(value, "host", bool, "roster"),
            on=_get(value, "on", bool, "roster"),
        )


def _get(value: dict[str, _codec.Value], key: str, typ: type, where: str) -> Any:
    if key not in value:
        raise RemoteProtocolError(f"{where} frame lacks field {key!r}", "malformed")
    item = value[key]
    # bool is a subclass of int in Python; CBOR keeps them apart, and so do we.
    if typ is int and (isinstance(item, bool) or not isinstance(item, int)):
        raise RemoteProtocolError(f"{where}.{key} must be an integer", "malformed")
    if not isinstance(item, typ):
        raise RemoteProtocolError(f"{where}.{key} has the wrong type", "malformed")
    if isinstance(item, int) and item < 0:
        raise RemoteProtocolError(f"{where}.{key} must not be negative", "malformed")
    return item


class Frame:
    """Base class of all frames. `TYPE` is the value of the "t" key."""

    TYPE: ClassVar[str] = ""
    __slots__ = ()

    def to_value(self) -> dict[str, _codec.Value]:
        out: dict[str, _codec.Value] = {"t": self.TYPE}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            item = getattr(self, f.name)
            if item is None:
                continue
            if f.name == "members" or f.name == "roster" or f.name == "files":
                item = [m.to_value() for m in item]
            elif f.name == "caps":
                item = list(item)
            out["from" if f.name == "from_" else f.name] = item
        return out

    def encode(self) -> bytes:
        return _codec.encode(self.to_value())


@dataclass(frozen=True, slots=True)
class Hello(Frame):
    TYPE: ClassVar[str] = "hello"
    v: int
    name: str
    sw: str
    caps: tuple[str, ...] = ()
    last: int | None = None  # resume only: the highest seq the member holds

    def encode(self) -> bytes:
        encoded = _encode_hello(self)
        return encoded if encoded is not None else _codec.encode(self.to_value())


@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    TYPE: ClassVar[str] = "welcome"
    goal: str
    you: int
    name: str
    roster: tuple[MemberEntry, ...]
    last: int
    first: int
    ticket: bytes = dataclasses.field(repr=False)  # a secret: never in a repr or a log
    resumed: bool
    limits: dict[str, int]
    #: The capabilities in force on this connection: those of hello.caps the host also has.
    #: Absent (None) when there are none, which is what a host without capabilities sends.
    caps: tuple[str, ...] | None = None

    def encode(self) -> bytes:
        encoded = _encode_welcome(self)
        # Anything the direct writer does not take, the general encoder writes (or refuses).
        return encoded if encoded is not None else _codec.encode(self.to_value())


@dataclass(frozen=True, slots=True)
class Refuse(Frame):
    TYPE: ClassVar[str] = "refuse"
    code: str
    msg: str


@dataclass(frozen=True, slots=True)
class Say(Frame):
    TYPE: ClassVar[str] = "say"
    ref: int
    text: str

    def encode(self) -> bytes:
        return encode_say(self.ref, self.text)


@dataclass(frozen=True, slots=True)
class Message(Frame):
    TYPE: ClassVar[str] = "message"
    seq: int
    ts: int  # milliseconds since the Unix epoch, by the host's clock
    text: str
    ref: int
    from_: int  # encoded as "from" (a Python keyword)

    def to_value(self) -> dict[str, _codec.Value]:
        return {
            "t": self.TYPE,
            "seq": self.seq,
            "ts": self.ts,
            "text": self.text,
            "ref": self.ref,
            "from": self.from_,
        }

    def encode(self) -> bytes:
        return encode_message(self.seq, self.ts, self.text, self.ref, self.from_)


@dataclass(frozen=True, slots=True)
class Event(Frame):
    TYPE: ClassVar[str] = "event"
    kind: str
    seq: int  # 0 for a notice outside the shared transcript (history-truncated)
    ts: int
    member: int | None = None
    name: str | None = None
    summary: str | None = None
    first: int | None = None


@dataclass(frozen=True, slots=True)
class Ack(Frame):
    TYPE: ClassVar[str] = "ack"
    seq: int

    def encode(self) -> bytes:
        return encode_ack(self.seq)


@dataclass(frozen=True, slots=True)
class Roster(Frame):
    TYPE: ClassVar[str] = "roster"
    members: tuple[MemberEntry, ...]


@dataclass(frozen=True, slots=True)
class Ping(Frame):
    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class Pong(Frame):
    TYPE: ClassVar[str] = "pong"


@dataclass(frozen=True, slots=True)
class Close(Frame):
    TYPE: ClassVar[str] = "close"
    reason: str
    summary: str | None = None


@dataclass(frozen=True, slots=True)
class Error(Frame):
    TYPE: ClassVar[str] = "error"
    code: str
    msg: str
    ref: int | None = None
    retry: int | None = None  # rate-limited: milliseconds until a say would be accepted


# ---- files (capability "files/1", spec "Files") ----------------------------------------------


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of an offer's manifest: a relative path ('/'-separated), its size in bytes and
    its SHA-256. On the wire: a map {"p": path, "s": size, "h": sha256}."""

    path: str
    size: int
    sha256: bytes

    def to_value(self) -> dict[str, _codec.Value]:
        return {"p": self.path, "s": self.size, "h": self.sha256}

    @classmethod
    def from_value(cls, value: _codec.Value) -> FileEntry:
        if not isinstance(value, dict):
            raise RemoteProtocolError("file entry is not a map", "malformed")
        sha256 = _get(value, "h", bytes, "file")
        if len(sha256) != 32:
            raise RemoteProtocolError("file.h must be a 32-byte SHA-256", "malformed")
        return cls(path=_get(value, "p", str, "file"), size=_get(value, "s", int, "file"),
                   sha256=sha256)


@dataclass(frozen=True, slots=True)
class Share(Frame):
    """Member -> host: publish an offer. `files` is the first page of its manifest; the rest
    follow in `manifest` frames with the same ref until `count` files have come."""

    TYPE: ClassVar[str] = "share"
    ref: int
    name: str
    count: int
    total: int
    files: tuple[FileEntry, ...]
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Manifest(Frame):
    """Member -> host: the next page of the manifest of the share `ref`, from file `at`."""

    TYPE: ClassVar[str] = "manifest"
    ref: int
    at: int
    files: tuple[FileEntry, ...]


@dataclass(frozen=True, slots=True)
class Unshare(Frame):
    """Member -> host: withdraw one of my offers."""

    TYPE: ClassVar[str] = "unshare"
    offer: int


@dataclass(frozen=True, slots=True)
class Offer(Frame):
    """Host -> member: a transcript entry, an offer in the total order (first manifest page)."""

    TYPE: ClassVar[str] = "offer"
    seq: int
    ts: int
    from_: int
    ref: int
    id: int
    name: str
    count: int
    total: int
    files: tuple[FileEntry, ...]
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Unoffer(Frame):
    """Host -> member: a transcript entry, the offer `id` ended (`reason`)."""

    TYPE: ClassVar[str] = "unoffer"
    seq: int
    ts: int
    id: int
    from_: int
    reason: str


@dataclass(frozen=True, slots=True)
class ListFiles(Frame):
    """Member -> host: send me the manifest of offer `offer` from file `at`."""

    TYPE: ClassVar[str] = "list"
    offer: int
    at: int


@dataclass(frozen=True, slots=True)
class Listing(Frame):
    """Host -> member: a page of an offer's manifest, the answer to one `list`. Empty: the
    offer is gone (or `at` was past its end)."""

    TYPE: ClassVar[str] = "listing"
    offer: int
    at: int
    files: tuple[FileEntry, ...]


@dataclass(frozen=True, slots=True)
class Fetch(Frame):
    """Receiver -> host: send me file `file` of offer `offer` from byte `at`; I accept `credit`
    bytes (more follow in `credit` frames). `x` is the receiver's transfer id."""

    TYPE: ClassVar[str] = "fetch"
    x: int
    offer: int
    file: int
    at: int
    credit: int


@dataclass(frozen=True, slots=True)
class Pull(Frame):
    """Host -> sharer: send file `file` of your offer `offer` from byte `at`, at most `credit`
    bytes for now. `x` is the host's transfer id."""

    TYPE: ClassVar[str] = "pull"
    x: int
    offer: int
    file: int
    at: int
    credit: int


@dataclass(frozen=True, slots=True)
class Credit(Frame):
    """Receiver -> host, host -> sharer: `n` more bytes may come on transfer `x`."""

    TYPE: ClassVar[str] = "credit"
    x: int
    n: int


@dataclass(frozen=True, slots=True)
class Chunk(Frame):
    """Sharer -> host, host -> receiver: bytes `at` .. `at + len(data)` of transfer `x`."""

    TYPE: ClassVar[str] = "chunk"
    x: int
    at: int
    data: bytes

    def encode(self) -> bytes:
        return encode_chunk(self.x, self.at, self.data)


@dataclass(frozen=True, slots=True)
class Cancel(Frame):
    """Receiver -> host, host -> sharer: stop transfer `x`."""

    TYPE: ClassVar[str] = "cancel"
    x: int


@dataclass(frozen=True, slots=True)
class Abort(Frame):
    """Sharer -> host, host -> receiver: transfer `x` cannot go on (`code`, `msg`)."""

    TYPE: ClassVar[str] = "abort"
    x: int
    code: str
    msg: str


#: The largest `chunk.data`: a chunk frame with the largest `x` and `at` then encodes to at
#: most 40 + MAX_CHUNK bytes, inside MAX_PLAINTEXT (65519).
MAX_CHUNK = 65408

_U64 = 1 << 64

# A chunk frame has exactly one encoding (section 8): map(4), keys "t" "x" "at" "data".
_CHUNK_PREFIX = b"\xa4\x61t\x65chunk\x61x"
_CHUNK_PREFIX_LEN = len(_CHUNK_PREFIX)
_CHUNK_AT = b"\x62at"
_CHUNK_DATA = b"\x64data"
# The other frames of the hot paths, in their one encoding (keys sorted: section 8.1 rule 3).
_MESSAGE_PREFIX = b"\xa6\x61t\x67message\x62ts"  # then ts, ref, seq, from, text
_SAY_PREFIX = b"\xa3\x61t\x63say\x63ref"  # then ref, text
_ACK_PREFIX = b"\xa2\x61t\x63ack\x63seq"  # then seq
#: A roster (every member gets the whole list at every join and leave: with n members, each
#: join costs the room n rosters of n rows), then an array of rows in their one encoding.
_ROSTER_PREFIX = b"\xa2\x61t\x66roster\x67members"
_REF_KEY = b"\x63ref"
_SEQ_KEY = b"\x63seq"
_FROM_KEY = b"\x64from"
_TEXT_KEY = b"\x64text"
#: `_head(0, n)` and `_head(3, n)` for n < 256, looked up by the chat encoders below instead of
#: a call each (a member id, a short text's length, the first refs and seqs).
_UINT_HEADS = tuple(_head(0, n) for n in range(256))
_TEXT_HEADS = tuple(_head(3, n) for n in range(256))


def encode_say(ref: int, text: str) -> bytes:
    """`Say(ref, text).encode()` without the frame object (a member's every say). Byte for byte
    the general encoder's, which it is left to for anything out of range."""
    if type(ref) is not int or not 0 <= ref < _U64 or type(text) is not str:
        return _codec.encode({"t": Say.TYPE, "ref": ref, "text": text})  # says what is wrong
    data = text.encode("utf-8")
    n = len(data)
    return b"".join(
        (
            _SAY_PREFIX,
            _UINT_HEADS[ref] if ref < 256 else _head(0, ref),
            _TEXT_KEY,
            _TEXT_HEADS[n] if n < 256 else _head(3, n),
            data,
        )
    )


def encode_ack(seq: int) -> bytes:
    """`Ack(seq).encode()` without the frame object (a member acks most of what it reads)."""
    if type(seq) is not int or not 0 <= seq < _U64:
        return _codec.encode({"t": Ack.TYPE, "seq": seq})
    return _ACK_PREFIX + (_UINT_HEADS[seq] if seq < 256 else _head(0, seq))


def encode_message(seq: int, ts: int, text: str, ref: int, from_: int) -> bytes:
    """`Message(seq, ts, text, ref, from_).encode()`, without making the frame object (the
    room encodes every chat message once, for everyone). Byte for byte what the general encoder
    writes (a test and the vectors check it), which it is left to for anything out of range."""
    if (
        type(text) is not str
        or type(seq) is not int
        or type(ts) is not int
        or type(ref) is not int
        or type(from_) is not int
        or not (0 <= seq < _U64 and 0 <= ts < _U64 and 0 <= ref < _U64 and 0 <= from_ < _U64)
    ):
        return _codec.encode(
            {"t": Message.TYPE, "seq": seq, "ts": ts, "text": text, "ref": ref, "from": from_}
        )
    data = text.encode("utf-8")
    n = len(data)
    return b"".join(
        (
            _MESSAGE_PREFIX,
            # A timestamp in ms since 1970 takes the 8-byte head (no call for its _head).
            b"\x1b" + ts.to_bytes(8, "big") if ts >= 0x100000000 else _head(0, ts),
            _REF_KEY,
            _UINT_HEADS[ref] if ref < 256 else _head(0, ref),
            _SEQ_KEY,
            _UINT_HEADS[seq] if seq < 256 else _head(0, seq),
            _FROM_KEY,
            _UINT_HEADS[from_] if from_ < 256 else _head(0, from_),
            _TEXT_KEY,
            _TEXT_HEADS[n] if n < 256 else _head(3, n),
            data,
        )
    )


def encode_chunk(x: int, at: int, data: bytes | memoryview) -> bytes:
    """The `chunk` frame, written directly: the hot path of every transfer, one copy of `data`.
    Byte for byte what the general encoder writes (a test and the vectors check it)."""
    return b"".join(
        (_CHUNK_PREFIX, _head(0, x), _CHUNK_AT, _head(0, at), _CHUNK_DATA, _head(2, len(data)), data)
    )


_ARG_SIZES = {24: 1, 25: 2, 26: 4, 27: 8}


def _read_uint(data: bytes, pos: int) -> tuple[int, int] | None:
    """A shortest-form CBOR unsigned integer at `pos`: (value, next pos), or None."""
    return _read_arg(data, pos, 0)


def _read_arg(data: bytes, pos: int, major: int) -> tuple[int, int] | None:
    """The argument of a shortest-form CBOR head of type `major` at `pos`: (value, next pos)."""
    if pos >= len(data):
        return None
    first = data[pos]
    if first >> 5 != major:
        return None
    info = first & 0x1F
    if info < 24:
        return info, pos + 1
    size = _ARG_SIZES.get(info)
    if size is None or pos + 1 + size > len(data):
        return None
    value = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
    if (size == 1 and value < 24) or (size > 1 and value < 1 << (4 * size)):
        return None
    return value, pos + 1 + size


def _decode_chunk(data: bytes, pos: int) -> tuple[Chunk, int] | None:
    """The canonical chunk frame at `pos`, parsed without building a map; None for anything
    else (the general decoder then decides, and raises the right error)."""
    parsed = _read_uint(data, pos + _CHUNK_PREFIX_LEN)
    if parsed is None:
        return None
    x, p = parsed
    if data[p : p + 3] != _CHUNK_AT:
        return None
    parsed = _read_uint(data, p + 3)
    if parsed is None:
        return None
    at, p = parsed
    if data[p : p + 5] != _CHUNK_DATA:
        return None
    parsed = _read_arg(data, p + 5, 2)
    if parsed is None:
        return None
    n, p = parsed
    end = p + n
    if end > len(data):
        return None
    return Chunk(x=x, at=at, data=data[p:end]), end


# The same frames as regular expressions: one C-level match per frame instead of a Python call
# per field. Each integer group only matches shortest-form heads (section 8.1 rule 1): 0x18 then
# a byte >= 24; 0x19, 0x1a, 0x1b whose leading bytes are not all zero. Anything else does not
# match, and the general decoder decides (and raises the right error).
_UINT_RE = (
    rb"([\x00-\x17]|\x18[\x18-\xff]|\x19(?!\x00)..|\x1a(?!\x00\x00)....|\x1b(?!\x00{4}).{8})"
)
_TEXT_HEAD_RE = rb"([\x60-\x77]|\x78[\x18-\xff]|\x79(?!\x00)..|\x7a(?!\x00\x00)....)"
_MESSAGE_RE = re.compile(
    re.escape(_MESSAGE_PREFIX)
    + _UINT_RE
    + re.escape(_REF_KEY)
    + _UINT_RE
    + re.escape(_SEQ_KEY)
    + _UINT_RE
    + re.escape(_FROM_KEY)
    + _UINT_RE
    + re.escape(_TEXT_KEY)
    + _TEXT_HEAD_RE,
    re.DOTALL,
)
_SAY_RE = re.compile(
    re.escape(_SAY_PREFIX) + _UINT_RE + re.escape(_TEXT_KEY) + _TEXT_HEAD_RE, re.DOTALL
)
_ACK_RE = re.compile(re.escape(_ACK_PREFIX) + _UINT_RE, re.DOTALL)
#: One roster row: map(4), keys "id" "on" "host" "name" (sorted), booleans as 0xf4 / 0xf5.
_MEMBER_ENTRY_RE = re.compile(
    rb"\xa4\x62id"
    + _UINT_RE
    + rb"\x62on([\xf4\xf5])\x64host([\xf4\xf5])\x64name"
    + _TEXT_HEAD_RE,
    re.DOTALL,
)
_from_bytes = int.from_bytes


def _head_value(head: bytes) -> int:
    """The argument of a matched head (its low five bits, or the bytes after it)."""
    return head[0] & 0x1F if len(head) == 1 else _from_bytes(head[1:], "big")


def _matched_text(data: bytes, pos: int, head: bytes) -> tuple[str, int] | None:
    end = pos + _head_value(head)
    if end > len(data):
        return None
    try:
        return data[pos:end].decode("utf-8"), end
    except UnicodeDecodeError:
        return None


def _decode_message(data: bytes, pos: int) -> tuple[Message, int] | None:
    """The canonical `message` frame at `pos` (exactly the keys the encoder writes)."""
    m = _MESSAGE_RE.match(data, pos)
    if m is None:
        return None
    ts, ref, seq, from_, head = m.groups()
    # The text as `_matched_text` reads it, inline (two calls less per chat message).
    start = m.end()
    end = start + (head[0] & 0x1F if len(head) == 1 else _from_bytes(head[1:], "big"))
    if end > len(data):
        return None
    try:
        text = data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    # Message(seq=..., ts=..., text=..., ref=..., from_=...), without its __init__ (`_make`);
    # each integer as `_head_value` reads it, inline (four calls less per chat message).
    message: Message = _MAKE_MESSAGE(
        seq[0] & 0x1F if len(seq) == 1 else _from_bytes(seq[1:], "big"),
        ts[0] & 0x1F if len(ts) == 1 else _from_bytes(ts[1:], "big"),
        text,
        ref[0] & 0x1F if len(ref) == 1 else _from_bytes(ref[1:], "big"),
        from_[0] & 0x1F if len(from_) == 1 else _from_bytes(from_[1:], "big"),
    )
    return message, end


_MAKE_MESSAGE = maker(Message)


def _decode_say(data: bytes, pos: int) -> tuple[Say, int] | None:
    m = _SAY_RE.match(data, pos)
    if m is None:
        return None
    ref_head, head = m.groups()
    # `_head_value` and `_matched_text`, in line (three calls less per say the room reads)
    ref = ref_head[0] & 0x1F if len(ref_head) == 1 else _from_bytes(ref_head[1:], "big")
    if ref == 0:  # the general decoder refuses it
        return None
    start = m.end()
    end = start + (head[0] & 0x1F if len(head) == 1 else _from_bytes(head[1:], "big"))
    if end > len(data):
        return None
    try:
        text = data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return _MAKE_SAY(ref, text), end


def _decode_ack(data: bytes, pos: int) -> tuple[Ack, int] | None:
    m = _ACK_RE.match(data, pos)
    if m is None:
        return None
    head = m.group(1)
    return _MAKE_ACK(head[0] & 0x1F if len(head) == 1 else _from_bytes(head[1:], "big")), m.end()


_MAKE_SAY = maker(Say)
_MAKE_ACK = maker(Ack)


def _decode_roster(data: bytes, pos: int) -> tuple[Roster, int] | None:
    """The canonical `roster` frame at `pos`, row by row without building maps."""
    rows = _read_roster_rows(data, pos + len(_ROSTER_PREFIX))
    if rows is None:
        return None
    return Roster(members=rows[0]), rows[1]


def _read_roster_rows(data: bytes, p: int) -> tuple[tuple[MemberEntry, ...], int] | None:
    """A roster's array of member entries at `p` (a `roster` frame's or a welcome's), in the
    canonical form only, and where it ends; None for anything else."""
    parsed = _read_arg(data, p, 4)
    if parsed is None or parsed[0] > _codec.MAX_ITEMS:
        return None
    count, p = parsed
    match = _MEMBER_ENTRY_RE.match
    members = []
    for _ in range(count):
        m = match(data, p)
        if m is None:
            return None
        id_head, on, host, head = m.groups()
        name = _matched_text(data, m.end(), head)
        if name is None:
            return None
        entry = MemberEntry(
            id=_head_value(id_head), name=name[0], host=host == b"\xf5", on=on == b"\xf5"
        )
        members.append(entry)
        p = name[1]
    return tuple(members), p


# The `welcome` frame, written and read directly: every join encodes one (the host) and decodes
# one (the member), a few dozen items in nested maps and lists, which cost the general codec a
# Python call or more per item (about 14 and 26 us of a join). Keys in their canonical order
# (section 8.1: sorted by their encoded bytes): t, you, caps (when present), goal, last, name,
# first, limits, roster, ticket, resumed. Byte for byte what the general encoder writes, and
# read only in that one shape (tests hold both to the general codec; the vectors pin them).
_WELCOME_PREFIX = b"\xaa\x61t\x67welcome\x63you"
_WELCOME_CAPS_PREFIX = b"\xab\x61t\x67welcome\x63you"
_CAPS_KEY = b"\x64caps"
_GOAL_KEY = b"\x64goal"
_LAST_KEY = b"\x64last"
_NAME_KEY = b"\x64name"
_FIRST_KEY = b"\x65first"
_LIMITS_KEY = b"\x66limits"
_ROSTER_KEY = b"\x66roster"
_TICKET_KEY = b"\x66ticket"
_RESUMED_KEY = b"\x67resumed"
_BOOL = {False: b"\xf4", True: b"\xf5"}


def _text_item(text: object, parts: list[bytes]) -> bool:
    if type(text) is not str:
        return False
    data = text.encode("utf-8")
    parts.append(_head(3, len(data)))
    parts.append(data)
    return True


def _encode_welcome(w: Welcome) -> bytes | None:
    """The welcome's encoding, or None when a field is not of the type the frame has (the
    general encoder then decides)."""
    you, last, first, ticket, resumed, caps, limits = (
        w.you,
        w.last,
        w.first,
        w.ticket,
        w.resumed,
        w.caps,
        w.limits,
    )
    if not (
        type(you) is int
        and type(last) is int
        and type(first) is int
        and 0 <= you < _U64
        and 0 <= last < _U64
        and 0 <= first < _U64
        and type(ticket) is bytes
        and type(resumed) is bool
        and type(limits) is dict
        and type(w.roster) is tuple
    ):
        return None
    try:
        parts = [_WELCOME_PREFIX if caps is None else _WELCOME_CAPS_PREFIX, _head(0, you)]
        if caps is not None:
            if type(caps) is not tuple:
                return None
            parts += (_CAPS_KEY, _head(4, len(caps)))
            for cap in caps:
                if not _text_item(cap, parts):
                    return None
        parts.append(_GOAL_KEY)
        if not _text_item(w.goal, parts):
            return None
        parts += (_LAST_KEY, _head(0, last), _NAME_KEY)
        if not _text_item(w.name, parts):
            return None
        keys = tuple(limits)
        order = _codec._KEY_ORDERS.get(keys) or _codec._key_order(keys)
        parts += (_FIRST_KEY, _head(0, first), _LIMITS_KEY, _head(5, len(order)))
        for key, key_bytes in order:
            value = limits[key]
            if type(value) is not int or not 0 <= value < _U64:
                return None
            parts += (key_bytes, _head(0, value))
        parts += (_ROSTER_KEY, _head(4, len(w.roster)))
        for entry in w.roster:
            id_, on, host = entry.id, entry.on, entry.host
            if not (
                type(entry) is MemberEntry
                and type(id_) is int
                and 0 <= id_ < _U64
                and type(on) is bool
                and type(host) is bool
            ):
                return None
            parts += (b"\xa4\x62id", _head(0, id_), b"\x62on", _BOOL[on], b"\x64host", _BOOL[host])
            parts.append(b"\x64name")
            if not _text_item(entry.name, parts):
                return None
        parts += (_TICKET_KEY, _head(2, len(ticket)), ticket, _RESUMED_KEY, _BOOL[resumed])
    except (TypeError, UnicodeError):
        return None  # a key that is not text, a name that is not encodable: the general way
    return b"".join(parts)


# The `hello` frame likewise (every join and resume sends one): keys t, v, sw, caps, last (a
# resume only), name.
_HELLO_PREFIX = b"\xa5\x61t\x65hello\x61v"
_HELLO_LAST_PREFIX = b"\xa6\x61t\x65hello\x61v"
_SW_KEY = b"\x62sw"


def _encode_hello(hello: Hello) -> bytes | None:
    """The hello's encoding, or None when a field is not of the type the frame has."""
    v, caps, last = hello.v, hello.caps, hello.last
    if not (type(v) is int and 0 <= v < _U64 and type(caps) is tuple):
        return None
    if last is not None and not (type(last) is int and 0 <= last < _U64):
        return None
    try:
        parts = [_HELLO_PREFIX if last is None else _HELLO_LAST_PREFIX, _head(0, v), _SW_KEY]
        if not _text_item(hello.sw, parts):
            return None
        parts += (_CAPS_KEY, _head(4, len(caps)))
        for cap in caps:
            if not _text_item(cap, parts):
                return None
        if last is not None:
            parts += (_LAST_KEY, _head(0, last))
        parts.append(_NAME_KEY)
        if not _text_item(hello.name, parts):
            return None
    except UnicodeError:
        return None
    return b"".join(parts)


def _decode_hello(data: bytes, pos: int) -> tuple[Hello, int] | None:
    """The canonical `hello` frame at `pos` (exactly the keys the encoder writes); None for
    anything else."""
    with_last = data.startswith(_HELLO_LAST_PREFIX, pos)
    parsed = _read_arg(data, pos + len(_HELLO_PREFIX), 0)
    if parsed is None or not data.startswith(_SW_KEY, parsed[1]):
        return None
    v = parsed[0]
    sw = _read_text(data, parsed[1] + len(_SW_KEY))
    if sw is None or not data.startswith(_CAPS_KEY, sw[1]):
        return None
    texts = _read_texts(data, sw[1] + len(_CAPS_KEY))
    if texts is None:
        return None
    caps, p = texts
    last = None
    if with_last:
        if not data.startswith(_LAST_KEY, p):
            return None
        parsed = _read_arg(data, p + len(_LAST_KEY), 0)
        if parsed is None:
            return None
        last, p = parsed
    if not data.startswith(_NAME_KEY, p):
        return None
    name = _read_text(data, p + len(_NAME_KEY))
    if name is None:
        return None
    return Hello(v=v, name=name[0], sw=sw[0], caps=caps, last=last), name[1]


def _read_text(data: bytes, pos: int) -> tuple[str, int] | None:
    """A text string at `pos`, as the general decoder reads it: (text, next pos), or None."""
    parsed = _read_arg(data, pos, 3)
    if parsed is None:
        return None
    n, p = parsed
    end = p + n
    if end > len(data):
        return None
    try:
        return data[p:end].decode("utf-8"), end
    except UnicodeDecodeError:
        return None


def _read_texts(data: bytes, pos: int) -> tuple[tuple[str, ...], int] | None:
    """An array of text strings at `pos` (a hello's or a welcome's caps): (texts, next pos),
    or None."""
    parsed = _read_arg(data, pos, 4)
    if parsed is None or parsed[0] > _codec.MAX_ITEMS:
        return None
    count, p = parsed
    texts = []
    for _ in range(count):
        text = _read_text(data, p)
        if text is None:
            return None
        texts.append(text[0])
        p = text[1]
    return tuple(texts), p


def _decode_welcome(data: bytes, pos: int) -> tuple[Welcome, int] | None:
    """The canonical `welcome` frame at `pos` (exactly the keys the encoder writes), read
    field by field; None for anything else."""
    with_caps = data.startswith(_WELCOME_CAPS_PREFIX, pos)
    parsed = _read_arg(data, pos + len(_WELCOME_PREFIX), 0)
    if parsed is None:
        return None
    you, p = parsed
    caps = None
    if with_caps:
        if not data.startswith(_CAPS_KEY, p):
            return None
        texts = _read_texts(data, p + len(_CAPS_KEY))
        if texts is None:
            return None
        caps, p = texts
    if not data.startswith(_GOAL_KEY, p):
        return None
    goal = _read_text(data, p + len(_GOAL_KEY))
    if goal is None or not data.startswith(_LAST_KEY, goal[1]):
        return None
    parsed = _read_arg(data, goal[1] + len(_LAST_KEY), 0)
    if parsed is None or not data.startswith(_NAME_KEY, parsed[1]):
        return None
    last = parsed[0]
    name = _read_text(data, parsed[1] + len(_NAME_KEY))
    if name is None or not data.startswith(_FIRST_KEY, name[1]):
        return None
    parsed = _read_arg(data, name[1] + len(_FIRST_KEY), 0)
    if parsed is None or not data.startswith(_LIMITS_KEY, parsed[1]):
        return None
    first = parsed[0]
    parsed = _read_arg(data, parsed[1] + len(_LIMITS_KEY), 5)
    if parsed is None or parsed[0] > _codec.MAX_ITEMS:
        return None
    count, p = parsed
    limits: dict[str, int] = {}
    previous = b""
    size = len(data)
    key_text = _codec._KEY_TEXT
    for _ in range(count):
        # A short text key (under 24 bytes: every limit's name), in line.
        head = data[p] if p < size else 0
        end = p + 1 + (head & 0x1F)
        if not 0x60 <= head <= 0x77 or end > size:
            return None
        key_bytes = data[p:end]
        if key_bytes <= previous:
            return None  # (unsorted or repeated keys: the general decoder says so)
        previous = key_bytes
        key = key_text.get(key_bytes)
        if key is None:
            try:
                key = key_bytes[1:].decode("utf-8")
            except UnicodeDecodeError:
                return None
        parsed = _read_arg(data, end, 0)
        if parsed is None:
            return None
        limits[key] = parsed[0]
        p = parsed[1]
    if not data.startswith(_ROSTER_KEY, p):
        return None
    rows = _read_roster_rows(data, p + len(_ROSTER_KEY))
    if rows is None:
        return None
    roster, p = rows
    if not data.startswith(_TICKET_KEY, p):
        return None
    parsed = _read_arg(data, p + len(_TICKET_KEY), 2)
    if parsed is None:
        return None
    n, p = parsed
    end = p + n
    if end > len(data) or not data.startswith(_RESUMED_KEY, end):
        return None
    ticket = data[p:end]
    p = end + len(_RESUMED_KEY)
    resumed = data[p : p + 1]
    if resumed != b"\xf4" and resumed != b"\xf5":
        return None
    welcome = Welcome(
        goal=goal[0],
        you=you,
        name=name[0],
        roster=roster,
        last=last,
        first=first,
        ticket=ticket,
        resumed=resumed == b"\xf5",
        limits=limits,
        caps=caps,
    )
    return welcome, p + 1


def _decode_known(data: bytes, pos: int) -> tuple[Frame, int] | None:
    """The frames of the hot paths, in their one valid encoding, read directly; None for
    anything else (or anything wrong), which the general decoder then handles."""
    if data.startswith(_MESSAGE_PREFIX, pos):
        return _decode_message(data, pos)
    if data.startswith(_SAY_PREFIX, pos):
        return _decode_say(data, pos)
    if data.startswith(_ACK_PREFIX, pos):
        return _decode_ack(data, pos)
    if data.startswith(_CHUNK_PREFIX, pos):
        return _decode_chunk(data, pos)
    if data.startswith(_ROSTER_PREFIX, pos):
        return _decode_roster(data, pos)
    if data.startswith(_WELCOME_PREFIX, pos) or data.startswith(_WELCOME_CAPS_PREFIX, pos):
        return _decode_welcome(data, pos)
    if data.startswith(_HELLO_PREFIX, pos) or data.startswith(_HELLO_LAST_PREFIX, pos):
        return _decode_hello(data, pos)
    return None


def _files(value: dict[str, _codec.Value], key: str, where: str) -> tuple[FileEntry, ...]:
    items = _get(value, key, list, where)
    return tuple(FileEntry.from_value(item) for item in items)


def _parse_share(value: dict[str, _codec.Value], t: str) -> Frame:
    return Share(
        ref=_get(value, "ref", int, t),
        name=_get(value, "name", str, t),
        count=_get(value, "count", int, t),
        total=_get(value, "total", int, t),
        files=_files(value, "files", t),
        note=_opt(value, "note", str, t),
    )


def _parse_manifest(value: dict[str, _codec.Value], t: str) -> Frame:
    return Manifest(
        ref=_get(value, "ref", int, t), at=_get(value, "at", int, t), files=_files(value, "files", t)
    )


def _parse_offer(value: dict[str, _codec.Value], t: str) -> Frame:
    return Offer(
        seq=_get(value, "seq", int, t),
        ts=_get(value, "ts", int, t),
        from_=_get(value, "from", int, t),
        ref=_get(value, "ref", int, t),
        id=_get(value, "id", int, t),
        name=_get(value, "name", str, t),
        count=_get(value, "count", int, t),
        total=_get(value, "total", int, t),
        files=_files(value, "files", t),
        note=_opt(value, "note", str, t),
    )


def _parse_unoffer(value: dict[str, _codec.Value], t: str) -> Frame:
    return Unoffer(
        seq=_get(value, "seq", int, t),
        ts=_get(value, "ts", int, t),
        id=_get(value, "id", int, t),
        from_=_get(value, "from", int, t),
        reason=_get(value, "reason", str, t),
    )


def _parse_listing(value: dict[str, _codec.Value], t: str) -> Frame:
    return Listing(
        offer=_get(value, "offer", int, t),
        at=_get(value, "at", int, t),
        files=_files(value, "files", t),
    )


_Parser = Callable[[dict[str, _codec.Value], str], Frame]


def _parse_transfer(cls: type[Fetch] | type[Pull]) -> _Parser:
    def parse(value: dict[str, _codec.Value], t: str) -> Frame:
        return cls(
            x=_get(value, "x", int, t),
            offer=_get(value, "offer", int, t),
            file=_get(value, "file", int, t),
            at=_get(value, "at", int, t),
            credit=_get(value, "credit", int, t),
        )

    return parse


_FILE_PARSERS: dict[str, _Parser] = {
    "share": _parse_share,
    "manifest": _parse_manifest,
    "unshare": lambda v, t: Unshare(offer=_get(v, "offer", int, t)),
    "offer": _parse_offer,
    "unoffer": _parse_unoffer,
    "list": lambda v, t: ListFiles(offer=_get(v, "offer", int, t), at=_get(v, "at", int, t)),
    "listing": _parse_listing,
    "fetch": _parse_transfer(Fetch),
    "pull": _parse_transfer(Pull),
    "credit": lambda v, t: Credit(x=_get(v, "x", int, t), n=_get(v, "n", int, t)),
    "chunk": lambda v, t: Chunk(
        x=_get(v, "x", int, t), at=_get(v, "at", int, t), data=_get(v, "data", bytes, t)
    ),
    "cancel": lambda v, t: Cancel(x=_get(v, "x", int, t)),
    "abort": lambda v, t: Abort(
        x=_get(v, "x", int, t), code=_get(v, "code", str, t), msg=_get(v, "msg", str, t)
    ),
}


#: The event kinds this implementation sends and knows. A member accepts any other well-formed
#: kind too, as a generic transcript entry (spec "Frames", `event`): kinds can be added without
#: breaking older members, the way `removed` was.
EVENT_KINDS = frozenset(
    {
        "joined",
        "left",
        "disconnected",
        "reconnected",
        "removed",
        "closed",
        "idle-closed",
        "history-truncated",
        "file-offer",
        "file-offer-ended",
    }
)
#: A well-formed event kind: 1 to MAX_KIND_CHARS of these characters, so that an unknown kind
#: from a hostile host is still safe to show.
KIND_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
MAX_KIND_CHARS = 32

#: The optional fields of `event` that each kind requires and those it may carry (spec section
#: 9, `event`). The decoder enforces this, being stateless: a `joined` without `member` is
#: malformed whoever receives it. Fields a kind does not carry are ignored like unknown keys.
#: Whether a seq fits the member's transcript is the member's business (section 11).
EVENT_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "joined": (frozenset({"member", "name"}), frozenset()),
    "left": (frozenset({"member", "name"}), frozenset()),
    "disconnected": (frozenset({"member", "name"}), frozenset()),
    "reconnected": (frozenset({"member", "name"}), frozenset()),
    "removed": (frozenset({"member", "name"}), frozenset({"summary"})),
    "closed": (frozenset(), frozenset({"summary"})),
    "idle-closed": (frozenset(), frozenset()),
    "history-truncated": (frozenset({"first"}), frozenset()),
    # Files (section 26.2), for members without files/1: the sharer, and the offer's summary
    # or the reason it ended.
    "file-offer": (frozenset({"member", "name", "summary"}), frozenset()),
    "file-offer-ended": (frozenset({"member", "name", "summary"}), frozenset()),
}
_ALL_EVENT_FIELDS = frozenset({"member", "name", "summary", "first"})


def _members(value: dict[str, _codec.Value], key: str, where: str) -> tuple[MemberEntry, ...]:
    items = _get(value, key, list, where)
    return tuple(MemberEntry.from_value(item) for item in items)


def _opt(value: dict[str, _codec.Value], key: str, typ: type, where: str) -> Any:
    if key not in value or value[key] is None:
        return None
    return _get(value, key, typ, where)


def _parse(value: dict[str, _codec.Value]) -> Frame:
    t = value.get("t")
    if t == "hello":
        caps = _get(value, "caps", list, t) if "caps" in value else []
        if not all(isinstance(c, str) for c in caps):
            raise RemoteProtocolError("hello.caps must be a list of text", "malformed")
        return Hello(
            v=_get(value, "v", int, t),
            name=_get(value, "name", str, t),
            sw=_get(value, "sw", str, t),
            caps=tuple(caps),
            last=_opt(value, "last", int, t),
        )
    if isinstance(t, str):
        parse_file_frame = _FILE_PARSERS.get(t)
        if parse_file_frame is not None:
            return parse_file_frame(value, t)
    if t == "welcome":
        limits = _get(value, "limits", dict, t)
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in limits.values()
        ):
            raise RemoteProtocolError("welcome.limits must map names to integers", "malformed")
        return Welcome(
            goal=_get(value, "goal", str, t),
            you=_get(value, "you", int, t),
            name=_get(value, "name", str, t),
            roster=_members(value, "roster", t),
            last=_get(value, "last", int, t),
            first=_get(value, "first", int, t),
            ticket=_get(value, "ticket", bytes, t),
            resumed=_get(value, "resumed", bool, t),
            limits=dict(limits),
            caps=_caps(value, t),
        )
    if t == "refuse":
        return Refuse(code=_get(value, "code", str, t), msg=_get(value, "msg", str, t))
    if t == "say":
        ref = _get(value, "ref", int, t)
        if ref == 0:
            # Refs start at 1 (0 is the host member's "no ref" in message.ref): a field rule,
            # so the decoder checks it, like a negative integer.
            raise RemoteProtocolError("say.ref must be at least 1", "malformed")
        return Say(ref=ref, text=_get(value, "text", str, t))
    if t == "message":
        return Message(
            seq=_get(value, "seq", int, t),
            ts=_get(value, "ts", int, t),
            text=_get(value, "text", str, t),
            ref=_get(value, "ref", int, t),
            from_=_get(value, "from", int, t),
        )
    if t == "event":
        kind = _get(value, "kind", str, t)
        if not 0 < len(kind) <= MAX_KIND_CHARS or not KIND_CHARS.issuperset(kind):
            raise RemoteProtocolError("event.kind is not a well-formed kind", "malformed")
        seq = _get(value, "seq", int, t)
        if (seq == 0) != (kind == "history-truncated"):
            raise RemoteProtocolError(
                "event.seq is 0 for history-truncated and only for it", "malformed"
            )
        # A kind this version does not know may carry any of the fields, all optional.
        required, optional = EVENT_FIELDS.get(kind, (frozenset(), _ALL_EVENT_FIELDS))
        fields: dict[str, Any] = {}
        for key, typ in (("member", int), ("name", str), ("summary", str), ("first", int)):
            if key in required:
                fields[key] = _get(value, key, typ, f"{t} {kind}")
            elif key in optional:
                fields[key] = _opt(value, key, typ, t)
        return Event(kind=kind, seq=seq, ts=_get(value, "ts", int, t), **fields)
    if t == "ack":
        return Ack(seq=_get(value, "seq", int, t))
    if t == "roster":
        return Roster(members=_members(value, "members", t))
    if t == "ping":
        return Ping()
    if t == "pong":
        return Pong()
    if t == "close":
        return Close(reason=_get(value, "reason", str, t), summary=_opt(value, "summary", str, t))
    if t == "error":
        return Error(
            code=_get(value, "code", str, t),
            msg=_get(value, "msg", str, t),
            ref=_opt(value, "ref", int, t),
            retry=_opt(value, "retry", int, t),
        )
    raise RemoteProtocolError("unknown frame type", "malformed")


def _caps(value: dict[str, _codec.Value], where: str) -> tuple[str, ...] | None:
    caps = _opt(value, "caps", list, where)
    if caps is None:
        return None
    if not all(isinstance(c, str) for c in caps):
        raise RemoteProtocolError(f"{where}.caps must be a list of text", "malformed")
    return tuple(caps)


def decode_frame(data: bytes) -> Frame:
    """Decode one frame that spans all of `data`. Raises only RemoteProtocolError."""
    known = _decode_known(data, 0)
    if known is not None and known[1] == len(data):
        return known[0]
    value = _codec.decode(data)
    if not isinstance(value, dict):
        raise RemoteProtocolError("a frame must be a CBOR map", "malformed")
    return _parse(value)


def decode_frames(data: bytes) -> list[Frame]:
    """Decode a batch (capability batch/1, spec section 8.3): one frame or more, back to back,
    spanning all of `data`. Raises only RemoteProtocolError."""
    if not data:
        raise RemoteProtocolError("a batch must hold at least one frame", "malformed")
    frames: list[Frame] = []
    pos, end = 0, len(data)
    while pos < end:
        known = _decode_known(data, pos)
        if known is not None:
            frame, pos = known
        else:
            value, pos = _codec.decode_next(data, pos)
            if not isinstance(value, dict):
                raise RemoteProtocolError("a frame must be a CBOR map", "malformed")
            frame = _parse(value)
        frames.append(frame)
    return frames


def encode_batch(frames: list[bytes]) -> bytes:
    """Encoded frames as one batch plaintext: their concatenation (a CBOR sequence)."""
    return b"".join(frames)
