"""Every frame of the protocol, as frozen dataclasses, and their CBOR map encoding.

A frame on the wire is one CBOR map (see `_codec`) whose key "t" names the frame type; the other
keys are the fields below, under the same names. Optional fields that are None are omitted.
Unknown keys are ignored (room for additive extensions); a missing or mistyped known field is a
`RemoteProtocolError`. `spec/protocol.md` lists the same table for reimplementers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from . import _codec
from ._errors import RemoteProtocolError

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
            if f.name == "members" or f.name == "roster":
                item = [m.to_value() for m in item]
            elif f.name == "caps":
                item = list(item)
            out[f.name] = item
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


def decode_frame(data: bytes) -> Frame:
    """Decode one frame. Raises only RemoteProtocolError."""
    value = _codec.decode(data)
    if not isinstance(value, dict):
        raise RemoteProtocolError("a frame must be a CBOR map", "malformed")
    return _parse(value)
