#!/usr/bin/env python3
"""Write the protocol test vectors in spec/vectors/ from fixed randomness.

    .venv/bin/python spec/make_vectors.py          # (re)write the files
    .venv/bin/python spec/make_vectors.py --check  # exit 1 if a file would change

Every random byte the core asks for comes from a named, seeded stream (see `StreamRng`), and
every call is recorded in the vectors with what it was used for, so another implementation can
replay the exact same bytes. Running this twice gives identical files; a change to the wire
format changes the files, and tests/tunnelproto/test_vectors.py then fails until the change is
deliberate (rerun this script and commit the new vectors together with the spec).

The handshake vectors are one scripted scenario (a room, one member who joins, talks, drops and
resumes, and two refused strangers). Its `steps` are written so that a reader can replay them
against their own implementation: each step is one call of the core's API at time `t`, and
lists the wire messages it emitted and the events the member reported.

Notation in the JSON files: a CBOR byte string is written {"$hex": "..."}; every other CBOR value
maps to the obvious JSON value (text, integer, true/false/null, array, object).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunnelproto import (
    Disconnect,
    JoinLink,
    LinkError,
    MemberConnection,
    MemberEntry,
    RemoteProtocolError,
    Room,
    Send,
    TunnelEvent,
    _codec,
)
from tunnelproto import _frames as f
from tunnelproto._channel import MSG2_NOISE, MSG2_PLAIN_REFUSE, PROLOGUE_LABEL, prologue
from tunnelproto._link import (
    ID_LEN,
    INVITE_ID_LABEL,
    INVITE_PSK_LABEL,
    PSK_LEN,
    TICKET_ID_LABEL,
    TICKET_PSK_LABEL,
    b64url,
    invite_id,
    invite_psk,
    ticket_id,
    ticket_psk,
)
from tunnelproto._noise import PROTOCOL_NAME, CipherState, HandshakeState, SymmetricState
from tunnelproto._phrase import (
    PHRASE_LABEL,
    PHRASE_WORDS,
    WORD_BITS,
    WORDLIST_SHA256,
    derive_phrase,
    phrase_indices,
    wordlist,
)

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"
FORMAT = 1

NOTATION = (
    'A CBOR byte string is written {"$hex": "<lowercase hex>"}; an integer beyond 2^53 - 1 in '
    'absolute value is written {"$int": "<decimal>"} (many JSON parsers, JavaScript\'s among '
    "them, silently round larger numbers); any other CBOR value is the obvious JSON value. "
    "Every *_hex / hex field is lowercase hex of the exact bytes."
)

# ---------------------------------------------------------------------------------------------
# Deterministic randomness
# ---------------------------------------------------------------------------------------------

SEEDS = {
    "room": b"tunnel-mcp/1 test vectors: room",
    "member": b"tunnel-mcp/1 test vectors: member",
    "probe": b"tunnel-mcp/1 test vectors: probe",
    "links": b"tunnel-mcp/1 test vectors: links",
}

RNG_DOC = (
    "Each named stream is the concatenation of blocks B_j = BLAKE2b(key=seed, "
    "data=uint64_be(j), digest_size=64) for j = 0, 1, 2, ...; a call rng(n) returns the next n "
    "unused bytes of its stream. The seeds are the ASCII strings listed under 'seeds'. Every "
    "call is also listed with its bytes, so a replay needs no BLAKE2b at all. Each call is "
    "tagged: 'role' (who drew it: host, member, generator), 'actor' (which member connection, "
    "or null), 'purpose' (one of PURPOSES); 'used_for' is the same in prose."
)

#: What a recorded random draw is for (the `purpose` field of an rng call).
PURPOSES = {
    "tunnel-id": "the 12 bytes whose base64url is the tunnel id (host)",
    "invite-secret": "the 32-byte secret of an invite: the link's #fragment (host)",
    "ticket-secret": "the 32-byte resume ticket secret sent in a welcome (host)",
    "noise-ephemeral": (
        "a 32-byte Noise ephemeral private key: the member's is the initiator's e, the host's "
        "the responder's"
    ),
    "link-secret": "a secret for an example link (generator only, not drawn by the core)",
    "tunnel-id-example": "a tunnel id for an example (generator only, not drawn by the core)",
}


@dataclasses.dataclass(frozen=True)
class Draw:
    """One expected rng call: its size and what it is for."""

    n: int
    purpose: str
    role: str  # host | member | generator
    used_for: str
    actor: str | None = None

    def __post_init__(self) -> None:
        assert self.purpose in PURPOSES, self.purpose
        assert self.role in ("host", "member", "generator"), self.role


class StreamRng:
    """rng(n) -> the next n bytes of a counter-mode BLAKE2b stream, with every call recorded.

    `expecting()` declares the calls a block of code must make (sizes and purposes), so the
    generator fails loudly if the core starts drawing randomness differently.
    """

    def __init__(self, name: str, seed: bytes) -> None:
        self.name = name
        self.seed = seed
        self._buffer = b""
        self._block = 0
        self.offset = 0
        self.calls: list[dict[str, Any]] = []
        self._expected: list[Draw] = []

    def _more(self) -> None:
        self._buffer += hashlib.blake2b(
            self._block.to_bytes(8, "big"), key=self.seed, digest_size=64
        ).digest()
        self._block += 1

    def __call__(self, n: int) -> bytes:
        if not self._expected:
            raise AssertionError(f"unexpected rng({n}) call on stream {self.name!r}")
        draw = self._expected.pop(0)
        if draw.n != n:
            raise AssertionError(
                f"stream {self.name!r}: expected rng({draw.n}) for {draw.used_for}, got rng({n})"
            )
        while len(self._buffer) < n:
            self._more()
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        self.calls.append(
            {
                "stream": self.name,
                "index": len(self.calls),
                "offset": self.offset,
                "n": n,
                "hex": out.hex(),
                "role": draw.role,
                "actor": draw.actor,
                "purpose": draw.purpose,
                "used_for": draw.used_for,
            }
        )
        self.offset += n
        return out

    @contextmanager
    def expecting(self, *calls: Draw) -> Iterator[None]:
        self._expected = list(calls)
        yield
        if self._expected:
            raise AssertionError(f"stream {self.name!r}: calls not made: {self._expected}")

    def take(self, n: int, purpose: str, used_for: str) -> bytes:
        """Draw bytes for the generator itself (e.g. secrets for link vectors)."""
        with self.expecting(Draw(n, purpose, "generator", used_for)):
            return self(n)


# ---------------------------------------------------------------------------------------------
# JSON helpers
# ---------------------------------------------------------------------------------------------


#: The largest integer every JSON parser reads exactly (JavaScript's Number.MAX_SAFE_INTEGER).
MAX_SAFE_INTEGER = 2**53 - 1


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$hex": value.hex()}
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
        return {"$int": str(value)}
    if isinstance(value, f.FileEntry):
        return to_json(value.to_value())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {fld.name: to_json(getattr(value, fld.name)) for fld in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def frame_json(frame: f.Frame) -> Any:
    return to_json(frame.to_value())


def event_json(event: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"event": type(event).__name__}
    for fld in dataclasses.fields(event):
        item = getattr(event, fld.name)
        if isinstance(item, tuple) and item and isinstance(item[0], MemberEntry):
            item = [m.to_value() for m in item]
        out[fld.name] = to_json(item)
    return out


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# link.json
# ---------------------------------------------------------------------------------------------


def build_links() -> dict[str, Any]:
    rng = StreamRng("links", SEEDS["links"])
    tid = b64url(rng.take(12, "tunnel-id-example", "tunnel id of the valid links (base64url)"))
    tid2 = b64url(rng.take(12, "tunnel-id-example", "tunnel id of the key-id example"))
    secrets = [rng.take(32, "link-secret", f"secret of valid link {i}") for i in range(7)]
    s = b64url(secrets[0])

    raw_valid = [
        ("the usual internet link (cloudflared quick tunnel)",
         f"https://plain-grove-tide-lamp.trycloudflare.com/t/{tid}#{b64url(secrets[0])}"),
        ("LAN link with an explicit port (http maps to ws)",
         f"http://192.168.1.20:8765/t/{tid}#{b64url(secrets[1])}"),
        ("local link with a ws:// scheme (kept as is)",
         f"ws://127.0.0.1:50123/t/{tid}#{b64url(secrets[2])}"),
        ("IPv6 literal host, explicit default port kept",
         f"https://[2001:db8::1]:443/t/{tid}#{b64url(secrets[3])}"),
        ("reverse proxy with a path prefix: the prefix stays in the base URL",
         f"https://relay.example.com/team/tunnel/t/{tid}#{b64url(secrets[4])}"),
        ("pasted with white space and angle brackets; host name is lower-cased",
         f"  <https://Relay.Example.COM:8443/t/{tid}#{b64url(secrets[5])}>\n"),
        ("wss:// link", f"wss://relay.example.com/t/{tid}#{b64url(secrets[6])}"),
    ]
    valid = []
    for (what, text), secret in zip(raw_valid, secrets, strict=True):
        link = JoinLink.parse(text)
        assert link.secret == secret
        valid.append(
            {
                "what": what,
                "input": text,
                "base_url": link.base_url,
                "tunnel_id": link.tunnel_id,
                "secret_hex": link.secret.hex(),
                "invite_id_hex": link.invite_id.hex(),
                "invite_psk_hex": link.psk.hex(),
                "websocket_url": link.websocket_url,
                "canonical": str(link),
            }
        )

    long_host = "a" * 2048
    raw_invalid = [
        ("no '#' and secret", f"https://relay.example.com/t/{tid}"),
        ("empty secret after '#'", f"https://relay.example.com/t/{tid}#"),
        ("unsupported scheme", f"ftp://relay.example.com/t/{tid}#{s}"),
        ("no scheme at all", f"relay.example.com/t/{tid}#{s}"),
        ("no host name", f"https:///t/{tid}#{s}"),
        ("user info in the URL", f"https://user:pw@relay.example.com/t/{tid}#{s}"),
        ("a '?' query", f"https://relay.example.com/t/{tid}?x=1#{s}"),
        ("no /t/ path segment", f"https://relay.example.com/{tid}#{s}"),
        ("tunnel id shorter than 11 characters", f"https://relay.example.com/t/abc#{s}"),
        ("tunnel id with a character outside base64url", f"https://relay.example.com/t/{tid[:-1]}.#{s}"),
        ("trailing slash after the tunnel id", f"https://relay.example.com/t/{tid}/#{s}"),
        ("secret with '=' padding", f"https://relay.example.com/t/{tid}#{s}="),
        ("secret in standard base64 alphabet ('+', '/')", f"https://relay.example.com/t/{tid}#{s[:-2]}+/"),
        ("secret with non-zero unused trailing bits (not canonical)",
         f"https://relay.example.com/t/{tid}#{s[:-1]}{'B' if s[-1] != 'B' else 'C'}"),
        ("secret cut short (31 bytes)", f"https://relay.example.com/t/{tid}#{b64url(secrets[0][:31])}"),
        ("secret too long (33 bytes)", f"https://relay.example.com/t/{tid}#{b64url(secrets[0] + b'x')}"),
        ("port out of range", f"https://relay.example.com:99999/t/{tid}#{s}"),
        ("longer than 2048 characters", f"https://{long_host}.example.com/t/{tid}#{s}"),
    ]
    invalid = []
    for what, text in raw_invalid:
        try:
            JoinLink.parse(text)
        except LinkError as exc:
            invalid.append(
                {
                    "what": what,
                    "input": text,
                    "error": "LinkError",
                    "code": exc.code,
                    "python_message": str(exc),
                }
            )
        else:
            raise AssertionError(f"link accepted but should not be: {what}")

    key_secret = secrets[0]
    key_ids = {
        "construction": (
            "id = BLAKE2b(data = id label || ASCII(tunnel_id), key = secret (32 bytes), "
            "digest_size = 16); psk = BLAKE2b(data = psk label || ASCII(tunnel_id), key = "
            "secret, digest_size = 32). digest_size is the BLAKE2b output-length parameter, not "
            "a truncation of a 64-byte digest. The secret itself is never a key."
        ),
        "invite_label_ascii": INVITE_ID_LABEL.decode(),
        "invite_label_hex": INVITE_ID_LABEL.hex(),
        "ticket_label_ascii": TICKET_ID_LABEL.decode(),
        "ticket_label_hex": TICKET_ID_LABEL.hex(),
        "invite_psk_label_ascii": INVITE_PSK_LABEL.decode(),
        "invite_psk_label_hex": INVITE_PSK_LABEL.hex(),
        "ticket_psk_label_ascii": TICKET_PSK_LABEL.decode(),
        "ticket_psk_label_hex": TICKET_PSK_LABEL.hex(),
        "id_len": ID_LEN,
        "psk_len": PSK_LEN,
        "examples": [
            {
                "tunnel_id": t,
                "secret_hex": key_secret.hex(),
                "invite_id_input_hex": (INVITE_ID_LABEL + t.encode()).hex(),
                "invite_id_hex": invite_id(key_secret, t).hex(),
                "invite_psk_input_hex": (INVITE_PSK_LABEL + t.encode()).hex(),
                "invite_psk_hex": invite_psk(key_secret, t).hex(),
                "ticket_id_input_hex": (TICKET_ID_LABEL + t.encode()).hex(),
                "ticket_id_hex": ticket_id(key_secret, t).hex(),
                "ticket_psk_input_hex": (TICKET_PSK_LABEL + t.encode()).hex(),
                "ticket_psk_hex": ticket_psk(key_secret, t).hex(),
            }
            for t in (tid, tid2)
        ],
    }
    prologues = [
        {"tunnel_id": t, "prologue_hex": prologue(t).hex()} for t in (tid, tid2)
    ]
    return {
        "description": "Join link parsing, invite/ticket id derivation and the Noise prologue.",
        "format": FORMAT,
        "notation": NOTATION,
        "rng": {"doc": RNG_DOC, "seeds": {"links": SEEDS["links"].decode()}, "calls": rng.calls},
        "valid": valid,
        "invalid": invalid,
        "key_ids": key_ids,
        "prologue": {
            "construction": "ASCII('tunnel-mcp/1') || 0x00 || version byte (0x01) || ASCII(tunnel_id)",
            "examples": prologues,
        },
    }


# ---------------------------------------------------------------------------------------------
# frames.json
# ---------------------------------------------------------------------------------------------

_ROSTER = (
    MemberEntry(id=1, name="bo", host=True, on=True),
    MemberEntry(id=2, name="ana", host=False, on=True),
    MemberEntry(id=3, name="ana (2)", host=False, on=False),
)
_TS = 1763942400000
_LIMITS = {"text": 32768, "frame": 65535, "members": 16, "burst": 20, "per_min": 300}


def _frame_examples() -> list[tuple[str, str, f.Frame]]:
    h2m = "host->member (transport)"
    m2h = "member->host (transport)"
    return [
        ("hello (join)", "member->host (payload of handshake message 1)",
         f.Hello(v=1, name="ana", sw="tunnel-mcp-python/1")),
        ("hello (resume, with a capability)", "member->host (payload of handshake message 1)",
         f.Hello(v=1, name="ana", sw="other-client/0.3", caps=("x-example",), last=41)),
        ("welcome", "host->member (payload of handshake message 2)",
         f.Welcome(goal="Agree on the /orders JSON schema", you=2, name="ana", roster=_ROSTER[:2],
                   last=7, first=1, ticket=bytes(range(32)), resumed=False, limits=_LIMITS)),
        ("refuse (encrypted, in handshake message 2)", "host->member (payload of handshake message 2)",
         f.Refuse(code="used", msg="this invite was already used (links are single-use): ask the host for a new one")),
        ("refuse (plaintext, after the 0x01 byte)", "host->member (handshake message 2, type 0x01)",
         f.Refuse(code="unknown-invite", msg="this tunnel has no such invite: ask the host for a fresh link")),
        ("say", m2h, f.Say(ref=1, text="hi")),
        ("say (non-ASCII text)", m2h, f.Say(ref=300, text="¿Qué tal? 🙂")),
        ("message from a member", h2m, f.Message(seq=8, ts=_TS, text="hi", ref=1, from_=2)),
        ("message from the host (ref 0)", h2m, f.Message(seq=9, ts=_TS + 1500, text="welcome!", ref=0, from_=1)),
        ("event joined", h2m, f.Event(kind="joined", seq=2, ts=_TS, member=2, name="ana")),
        ("event left", h2m, f.Event(kind="left", seq=10, ts=_TS, member=3, name="ana (2)")),
        ("event disconnected", h2m, f.Event(kind="disconnected", seq=11, ts=_TS, member=2, name="ana")),
        ("event reconnected", h2m, f.Event(kind="reconnected", seq=12, ts=_TS, member=2, name="ana")),
        ("event removed (with the host's reason)", h2m,
         f.Event(kind="removed", seq=12, ts=_TS, member=3, name="ana (2)",
                 summary="the phrase did not match")),
        ("event removed (no reason)", h2m, f.Event(kind="removed", seq=12, ts=_TS, member=3, name="ana (2)")),
        ("event closed (with the host's summary)", h2m,
         f.Event(kind="closed", seq=13, ts=_TS, summary="Schema agreed: see orders.json")),
        ("event closed (no summary)", h2m, f.Event(kind="closed", seq=13, ts=_TS)),
        ("event idle-closed", h2m, f.Event(kind="idle-closed", seq=14, ts=_TS)),
        ("event history-truncated (seq 0: a notice, not a transcript entry)", h2m,
         f.Event(kind="history-truncated", seq=0, ts=_TS, first=5000)),
        ("ack", m2h, f.Ack(seq=3)),
        ("ack (0: the key-confirmation ack of a fresh join)", m2h, f.Ack(seq=0)),
        ("roster", h2m, f.Roster(members=_ROSTER)),
        ("ping", "either direction (transport)", f.Ping()),
        ("pong", "either direction (transport)", f.Pong()),
        ("close (member leaves)", "member->host (transport)", f.Close(reason="left")),
        ("close (room closed, with summary)", h2m, f.Close(reason="closed", summary="Done, thanks.")),
        ("close (idle)", h2m, f.Close(reason="idle-closed")),
        ("close (the host removed this member, with its reason)", h2m,
         f.Close(reason="removed", summary="the phrase did not match")),
        ("error (rate limited say)", h2m,
         f.Error(code="rate-limited", msg="you are sending too fast; wait and send again", ref=4, retry=200)),
        ("error (say too long)", h2m,
         f.Error(code="too-long", msg="the message is too long (40000 bytes, max 32768): split it", ref=5)),
        ("error (fatal, no ref)", h2m, f.Error(code="bad-ack", msg="ack for a seq the room never sent")),
        *_file_frame_examples(),
    ]


_ENTRIES = (
    f.FileEntry("fixtures/orders.json", 2500, hashlib.sha256(b"orders").digest()),
    f.FileEntry("README.txt", 21, hashlib.sha256(b"readme").digest()),
)


def _file_frame_examples() -> list[tuple[str, str, f.Frame]]:
    h2m = "host->member (transport, files/1)"
    m2h = "member->host (transport, files/1)"
    both = "either direction (transport, files/1)"
    return [
        ("welcome (with files/1 in force)", "host->member (payload of handshake message 2)",
         f.Welcome(goal="Share the fixtures", you=2, name="ana", roster=_ROSTER[:2], last=0,
                   first=1, ticket=bytes(range(32)), resumed=False,
                   limits={**_LIMITS, "file_window": 1048576}, caps=("files/1",))),
        ("event file-offer (for a member without files/1)", h2m.replace(", files/1", ""),
         f.Event(kind="file-offer", seq=20, ts=_TS, member=2, name="ana",
                 summary="fixtures (2 files, 2521 bytes)")),
        ("event file-offer-ended (for a member without files/1)", h2m.replace(", files/1", ""),
         f.Event(kind="file-offer-ended", seq=21, ts=_TS, member=2, name="ana",
                 summary="withdrawn")),
        ("share (the whole manifest in one page)", m2h,
         f.Share(ref=3, name="fixtures", count=2, total=2521, files=_ENTRIES,
                 note="the inputs of the failing test")),
        ("share (first page of a longer manifest)", m2h,
         f.Share(ref=4, name="big", count=3, total=2521 + 7, files=_ENTRIES)),
        ("manifest (the next page)", m2h,
         f.Manifest(ref=4, at=2, files=(f.FileEntry("z", 7, bytes(32)),))),
        ("unshare", m2h, f.Unshare(offer=5)),
        ("offer", h2m,
         f.Offer(seq=20, ts=_TS, from_=2, ref=3, id=5, name="fixtures", count=2, total=2521,
                 files=_ENTRIES, note="the inputs of the failing test")),
        ("unoffer", h2m, f.Unoffer(seq=21, ts=_TS, id=5, from_=2, reason="withdrawn")),
        ("list", m2h, f.ListFiles(offer=6, at=2)),
        ("listing", h2m, f.Listing(offer=6, at=2, files=(f.FileEntry("z", 7, bytes(32)),))),
        ("listing (empty: the offer is gone)", h2m, f.Listing(offer=6, at=2, files=())),
        ("fetch", m2h, f.Fetch(x=1, offer=5, file=0, at=0, credit=1048576)),
        ("fetch (resumed from byte 1000)", m2h, f.Fetch(x=1, offer=5, file=0, at=1000, credit=4096)),
        ("pull", h2m, f.Pull(x=7, offer=5, file=0, at=0, credit=1048576)),
        ("credit", both, f.Credit(x=1, n=65408)),
        ("chunk", both, f.Chunk(x=1, at=1000, data=b"0123456789")),
        ("cancel", both, f.Cancel(x=1)),
        ("abort (offer gone)", both, f.Abort(x=1, code="gone", msg="the offer ended (withdrawn)")),
        ("abort (file changed on the sharer's disk)", both,
         f.Abort(x=7, code="changed", msg="fixtures/orders.json changed since it was shared")),
    ]


#: Distinct short unknown keys (one or two characters, none a frame field), for the MAX_ITEMS
#: examples.
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
_SHORT_KEYS = [a + b for a in _ALPHABET for b in _ALPHABET if a + b not in ("ts",)]


def _accepted_examples() -> list[tuple[str, bytes, f.Frame]]:
    """Encodings that are not what an encoder writes but that a decoder must accept."""
    enc = _codec.encode
    return [
        ("unknown keys are ignored", enc({"t": "ack", "seq": 3, "x-future": [1, 2]}), f.Ack(seq=3)),
        ("an optional field given as null is the same as absent",
         enc({"t": "close", "reason": "left", "summary": None}), f.Close(reason="left")),
        ("hello without caps means no capabilities",
         enc({"t": "hello", "v": 1, "name": "ana", "sw": "x"}), f.Hello(v=1, name="ana", sw="x")),
        ("an event field its kind does not carry is ignored (here `first` on joined)",
         enc({"t": "event", "kind": "joined", "seq": 2, "ts": _TS, "member": 2, "name": "ana",
              "first": 1}),
         f.Event(kind="joined", seq=2, ts=_TS, member=2, name="ana")),
        ("a map of exactly MAX_ITEMS (4096) pairs: MAX_ITEMS counts key/value pairs",
         enc({"t": "ack", "seq": 3, **dict.fromkeys(_SHORT_KEYS[: _codec.MAX_ITEMS - 2], 0)}),
         f.Ack(seq=3)),
        ("an array of exactly MAX_ITEMS (4096) items",
         enc({"t": "ack", "seq": 3, "x": [0] * _codec.MAX_ITEMS}), f.Ack(seq=3)),
    ]


def _invalid_examples() -> list[tuple[str, bytes]]:
    enc = _codec.encode
    ack = enc({"t": "ack", "seq": 3})
    return [
        ("empty input", b""),
        ("not a map (an array)", enc(["ack", 3])),
        ("unknown frame type", enc({"t": "nope"})),
        ("no type key", enc({"seq": 3})),
        ("missing required field", enc({"t": "ack"})),
        ("integer field as text", enc({"t": "ack", "seq": "3"})),
        ("integer field as a boolean", enc({"t": "ack", "seq": True})),
        ("negative integer field", enc({"t": "ack", "seq": -1})),
        ("event kind with a character outside a-z 0-9 -",
         enc({"t": "event", "kind": "Exploded!", "seq": 1, "ts": 0})),
        ("empty event kind", enc({"t": "event", "kind": "", "seq": 1, "ts": 0})),
        ("event kind longer than 32 characters", enc({"t": "event", "kind": "x" * 33, "seq": 1, "ts": 0})),
        ("hello.caps with a non-text item", enc({"t": "hello", "v": 1, "name": "a", "sw": "x", "caps": [1]})),
        ("trailing byte after the map", ack + b"\x00"),
        ("truncated map", ack[:-1]),
        ("non-shortest integer (3 as 0x18 0x03)",
         bytes.fromhex("a2") + enc("t") + enc("ack") + enc("seq") + bytes.fromhex("1803")),
        ("map keys out of order", bytes.fromhex("a2") + enc("seq") + b"\x03" + enc("t") + enc("ack")),
        ("duplicate map key", bytes.fromhex("a3") + enc("t") + enc("ack") + enc("seq") + b"\x03"
         + enc("seq") + b"\x04"),
        ("non-text map key", bytes.fromhex("a2") + b"\x01\x02" + enc("t") + enc("ack")),
        ("indefinite-length map", bytes.fromhex("bf") + enc("t") + enc("ack") + enc("seq") + b"\x03\xff"),
        ("CBOR tag", bytes.fromhex("c0") + ack),
        ("float value", bytes.fromhex("a2") + enc("t") + enc("ack") + enc("seq") + bytes.fromhex("f93c00")),
        ("undefined simple value", bytes.fromhex("a2") + enc("t") + enc("ack") + enc("seq") + b"\xf7"),
        ("invalid UTF-8 in text", bytes.fromhex("a1") + enc("t") + bytes.fromhex("62c328")),
        ("nesting deeper than 4 levels", enc({"t": "ack", "seq": 1, "x": [[[[1]]]]})),
        ("say.ref 0 (refs start at 1)", enc({"t": "say", "ref": 0, "text": "hi"})),
        ("event joined without member",
         enc({"t": "event", "kind": "joined", "seq": 2, "ts": _TS, "name": "ana"})),
        ("event left without name",
         enc({"t": "event", "kind": "left", "seq": 2, "ts": _TS, "member": 2})),
        ("event history-truncated without first",
         enc({"t": "event", "kind": "history-truncated", "seq": 0, "ts": _TS})),
        ("event history-truncated with a seq other than 0",
         enc({"t": "event", "kind": "history-truncated", "seq": 7, "ts": _TS, "first": 9})),
        ("event joined with seq 0 (only history-truncated has seq 0)",
         enc({"t": "event", "kind": "joined", "seq": 0, "ts": _TS, "member": 2, "name": "a"})),
        ("a map of MAX_ITEMS + 1 (4097) pairs",
         enc({"t": "ack", "seq": 3, **dict.fromkeys(_SHORT_KEYS[: _codec.MAX_ITEMS - 1], 0)})),
        ("an array of MAX_ITEMS + 1 (4097) items",
         enc({"t": "ack", "seq": 3, "x": [0] * (_codec.MAX_ITEMS + 1)})),
    ]


def _unknown_kind_examples() -> list[tuple[str, f.Event]]:
    return [
        ("an event kind from a later version, about a member", f.Event(
            kind="x-later-kind", seq=15, ts=_TS, member=2, name="ana", summary="some text")),
        ("an event kind from a later version, with no fields", f.Event(kind="exploded", seq=16, ts=_TS)),
        ("the longest event kind (32 characters)", f.Event(kind="a" * 31 + "9", seq=17, ts=_TS)),
    ]


def _codec_examples() -> list[tuple[str, Any]]:
    return [
        ("0", 0), ("23 (largest one-byte integer)", 23), ("24", 24), ("255", 255), ("256", 256),
        ("65535", 65535), ("65536", 65536), ("2^32 - 1", 2**32 - 1), ("2^32", 2**32),
        ("2^64 - 1 (largest)", 2**64 - 1), ("-1", -1), ("-24", -24), ("-25", -25),
        ("-2^64 (smallest)", -(2**64)),
        ("false", False), ("true", True), ("null", None),
        ("empty byte string", b""), ("byte string", bytes(range(5))),
        ("empty text", ""), ("text with non-ASCII", "día 🙂"),
        ("array", [1, "a", [True]]),
        ("map: keys sorted by their encoding (shorter first, then bytewise)",
         {"text": 1, "t": 2, "ref": 3, "b": 4, "aa": 5, "seq": 6}),
    ]


def _batch_examples() -> list[tuple[str, str, list[f.Frame]]]:
    """Batches (capability batch/1, section 8.3): what one transport message may carry."""
    h2m = "host->member (transport, batch/1)"
    m2h = "member->host (transport, batch/1)"
    return [
        ("one frame: a batch of one is the plain layout", h2m,
         [f.Message(seq=7, ts=1763942400000, text="hello", ref=0, from_=1)]),
        ("a burst of entries for one member", h2m,
         [f.Message(seq=8, ts=1763942400010, text="first", ref=0, from_=1),
          f.Message(seq=9, ts=1763942400020, text="second", ref=3, from_=2),
          f.Event(seq=10, ts=1763942400030, kind="left", member=3, name="bob")]),
        ("a stamped copy, a roster and a ping", h2m,
         [f.Message(seq=11, ts=1763942400040, text="mine", ref=4, from_=2),
          f.Roster(members=(f.MemberEntry(id=1, name="host", host=True, on=True),
                            f.MemberEntry(id=2, name="ana", host=False, on=True))),
          f.Ping()]),
        ("pipelined says with the delayed ack riding behind them", m2h,
         [f.Say(ref=5, text="one"), f.Say(ref=6, text="two"), f.Ack(seq=11)]),
        ("a pong and an ack", m2h, [f.Pong(), f.Ack(seq=12)]),
    ]


def _invalid_batch_examples() -> list[tuple[str, bytes]]:
    say = f.Say(ref=1, text="hi").encode()
    ack = f.Ack(seq=3).encode()
    return [
        ("empty plaintext: a batch holds at least one frame", b""),
        ("a whole frame, then the first bytes of another", say + ack[:-1]),
        ("a whole frame, then a byte that is no frame", say + b"\x00"),
        ("a frame, then a CBOR value that is not a map", say + b"\x83\x01\x02\x03"),
        ("a frame, then a map without `t`", say + bytes.fromhex("a1637365710a")),
        ("a frame, then an unknown frame type", ack + bytes.fromhex("a16174646e6f7065")),
        ("a good frame after a non-deterministic one (long-form integer)",
         bytes.fromhex("a26174636163686373657118") + b"\x03" + say),
    ]


def build_frames() -> dict[str, Any]:
    frames = []
    for what, direction, frame in _frame_examples():
        data = frame.encode()
        assert f.decode_frame(data) == frame, what
        frames.append(
            {"what": what, "type": frame.TYPE, "direction": direction,
             "value": frame_json(frame), "cbor_hex": data.hex()}
        )
    types = {fr["type"] for fr in frames}
    assert types == {cls.TYPE for cls in f.Frame.__subclasses__()}, types

    accepted = []
    for what, data, frame in _accepted_examples():
        assert f.decode_frame(data) == frame, what
        accepted.append({"what": what, "cbor_hex": data.hex(), "decodes_to": frame_json(frame),
                         "canonical_hex": frame.encode().hex()})

    invalid = []
    for what, data in _invalid_examples():
        try:
            f.decode_frame(data)
        except RemoteProtocolError as exc:
            invalid.append({"what": what, "cbor_hex": data.hex(), "error": "RemoteProtocolError",
                            "code": exc.code, "python_message": str(exc)})
        else:
            raise AssertionError(f"decoded but should not: {what}")

    # Kinds a member does not know are generic events (section 9): they decode, keep their
    # fields and take their place in the total order like any other entry.
    unknown_kinds = []
    for what, frame in _unknown_kind_examples():
        data = frame.encode()
        assert f.decode_frame(data) == frame and frame.kind not in f.EVENT_KINDS, what
        unknown_kinds.append({"what": what, "value": frame_json(frame), "cbor_hex": data.hex()})

    codec = []
    for what, value in _codec_examples():
        data = _codec.encode(value)
        assert _codec.decode(data) == value, what
        codec.append({"what": what, "value": to_json(value), "cbor_hex": data.hex()})

    batches = []
    for what, direction, batch in _batch_examples():
        data = b"".join(frame.encode() for frame in batch)
        assert f.decode_frames(data) == batch, what
        batches.append({"what": what, "direction": direction,
                        "frames": [{"type": fr.TYPE, "value": frame_json(fr)} for fr in batch],
                        "plaintext_hex": data.hex()})
    invalid_batches = []
    for what, data in _invalid_batch_examples():
        try:
            f.decode_frames(data)
        except RemoteProtocolError as exc:
            invalid_batches.append({"what": what, "plaintext_hex": data.hex(),
                                    "error": "RemoteProtocolError", "code": exc.code,
                                    "python_message": str(exc)})
        else:
            raise AssertionError(f"decoded but should not: {what}")

    return {
        "description": (
            "Frame encoding: every frame type as JSON and its exact deterministic CBOR; inputs a "
            "decoder must accept; inputs a decoder must reject; primitive CBOR values; batches "
            "(batch/1, section 8.3): plaintexts of several frames, and ones a receiver rejects."
        ),
        "format": FORMAT,
        "notation": NOTATION,
        "frames": frames,
        "accepted": accepted,
        "invalid": invalid,
        "unknown_event_kinds": unknown_kinds,
        "cbor": codec,
        "batches": batches,
        "invalid_batches": invalid_batches,
    }


# ---------------------------------------------------------------------------------------------
# The handshake scenario: handshake-join.json and handshake-resume.json
# ---------------------------------------------------------------------------------------------

T0 = 1000.0
#: Wall clock at T0 is 2025-11-24T00:00:00Z, so message timestamps are readable.
EPOCH_OFFSET = 1_763_942_400.0 - T0
BASE_URL = "https://plain-grove-tide-lamp.trycloudflare.com"
GOAL = "Agree on the JSON schema of the /orders endpoint"


@dataclasses.dataclass
class _ConnInfo:
    """What an observer holding the secrets knows about one connection."""

    actor: str
    conn: int
    psk: bytes
    key_id_is: str
    e_member: bytes
    e_host: bytes | None = None
    msg1_noise: bytes | None = None
    recv: dict[str, CipherState] = dataclasses.field(default_factory=dict)  # by direction


class Scenario:
    """Runs the scripted scenario and records steps, wire messages and rng calls."""

    def __init__(self, seeds: dict[str, bytes] | None = None) -> None:
        seeds = seeds or {name: SEEDS[name] for name in ("room", "member", "probe")}
        self.rngs = {name: StreamRng(name, seed) for name, seed in seeds.items()}
        self.room: Room | None = None
        self.members: dict[str, MemberConnection] = {}
        self.conns: dict[str, _ConnInfo] = {}  # by actor
        self.actor_of_conn: dict[int, str] = {}
        self.steps: list[dict[str, Any]] = []
        self.wire: list[dict[str, Any]] = []

    # -- running steps ---------------------------------------------------------------------

    def step(self, t: float, do: str, args: dict[str, Any],
             rng: dict[str, list[Draw]] | None = None,
             note: str = "") -> dict[str, Any]:
        rng = rng or {}
        before = {name: len(s.calls) for name, s in self.rngs.items()}
        record: dict[str, Any] = {"i": len(self.steps), "t": t, "do": do, "args": args}
        if note:
            record["note"] = note
        with self._expect(rng):
            result = self._run(t, do, args)
        if result:
            record["result"] = result
        used = [
            {"stream": name, "index": i}
            for name, s in self.rngs.items()
            for i in range(before[name], len(s.calls))
        ]
        if used:
            record["rng"] = used
        record["emits"] = self._drain(len(self.steps))
        host_events = [event_json(ev) for ev in self.room.files.take_events()] if self.room else []
        if host_events:
            record["host_events"] = host_events
        events = {}
        for actor, member in self.members.items():
            got = []
            while (ev := member.next_event()) is not None:
                got.append(event_json(ev))
            if got:
                events[actor] = got
        if events:
            record["events"] = events
        self.steps.append(record)
        return record

    @contextmanager
    def _expect(self, rng: dict[str, list[Draw]]) -> Iterator[None]:
        managers = [self.rngs[name].expecting(*calls) for name, calls in rng.items()]
        for m in managers:
            m.__enter__()
        yield
        for m in managers:
            m.__exit__(None, None, None)
        for name, stream in self.rngs.items():
            if name not in rng:
                assert not stream._expected

    def _run(self, t: float, do: str, args: dict[str, Any]) -> dict[str, Any] | None:
        if do == "room.create":
            self.room = Room(args["goal"], args["host_name"], t, rng=self.rngs["room"],
                             epoch_offset=args["epoch_offset"])
            return {"tunnel_id": self.room.tunnel_id}
        room = self.room
        assert room is not None
        if do == "host.say":
            entry = room.say(args["text"], t)
            return {"seq": entry.seq}
        if do == "host.mint_invites":
            invites = room.mint_invites(args["count"], t)
            links = []
            for inv in invites:
                link = inv.link(args["base_url"], room.tunnel_id)
                links.append(str(link))
            return {"links": links}
        if do == "member.connect":
            actor = args["actor"]
            link = JoinLink.parse(args["link"])
            resume = None
            if args.get("resume_from"):
                resume = self.members[args["resume_from"]].resume_state()
                assert resume is not None
            member = MemberConnection(link, args["name"], t, resume=resume,
                                      rng=self.rngs[args["rng"]], caps=tuple(args.get("caps", ())))
            e_member = bytes.fromhex(self.rngs[args["rng"]].calls[-1]["hex"])
            conn = room.open_connection(t)
            assert conn is not None
            self.members[actor] = member
            self.actor_of_conn[conn] = actor
            # The PSK is derived from the secret (spec section 4), never the secret itself.
            psk = ticket_psk(resume.ticket, link.tunnel_id) if resume else link.psk
            self.conns[actor] = _ConnInfo(actor, conn, psk, "ticket id" if resume else "invite id",
                                          e_member)
            return {"conn": conn}
        if do == "member.say":
            return {"ref": self.members[args["actor"]].say(args["text"])}
        if do == "member.leave":
            self.members[args["actor"]].leave()
            return None
        if do == "deliver":
            for i in args["wire"]:
                msg = self.wire[i]
                data = bytes.fromhex(msg["hex"])
                if msg["dir"] == "member->host":
                    drawn = len(self.rngs["room"].calls)
                    room.receive(msg["conn"], data, t)
                    if msg["kind"] == "handshake-1" and len(self.rngs["room"].calls) > drawn:
                        # The room's first draw for a message 1 is its Noise ephemeral.
                        call = self.rngs["room"].calls[drawn]
                        self.conns[msg["actor"]].e_host = bytes.fromhex(call["hex"])
                else:
                    self.members[msg["actor"]].receive_data(data, t)
            return None
        if do == "drop":
            actor = args["actor"]
            room.connection_lost(self.conns[actor].conn, t)
            self.members[actor].connection_lost(t)
            return None
        return run_files_step(room, self.members, self.conns, t, do, args)

    # -- recording wire messages -----------------------------------------------------------

    def _drain(self, step: int) -> list[int]:
        emitted = []
        assert self.room is not None
        for out in self.room.data_to_send():
            actor = self.actor_of_conn[out.conn]
            if isinstance(out, Send):
                entry = self._describe(actor, "host->member", out.data)
            else:
                assert isinstance(out, Disconnect)
                entry = {"kind": "disconnect", "dir": "host->member", "actor": actor,
                         "conn": out.conn, "code": out.code, "reason": out.reason}
            emitted.append(self._add(step, entry))
        for actor, member in self.members.items():
            for data in member.data_to_send():
                emitted.append(self._add(step, self._describe(actor, "member->host", data)))
        return emitted

    def _add(self, step: int, entry: dict[str, Any]) -> int:
        entry = {"i": len(self.wire), "step": step, **entry}
        self.wire.append(entry)
        return entry["i"]

    def _describe(self, actor: str, direction: str, data: bytes) -> dict[str, Any]:
        """Decode a wire message the way an observer holding the secrets would: with the Noise
        objects directly, never through the Room/MemberConnection that produced it."""
        info = self.conns[actor]
        base = {"dir": direction, "actor": actor, "conn": info.conn}
        if direction == "member->host" and info.msg1_noise is None:
            version, key_id, noise = data[0], data[1 : 1 + ID_LEN], data[1 + ID_LEN :]
            info.msg1_noise = noise
            # Message 1's payload key depends only on the prologue, the psk and the member's
            # ephemeral public key: any responder ephemeral reads it.
            reader = HandshakeState(initiator=False, prologue=prologue(self._tunnel_id()),
                                    psk=info.psk, ephemeral_private=bytes(32))
            hello = reader.read_message(noise)
            return {**base, "kind": "handshake-1", "hex": data.hex(),
                    "layout": {"version": f"{version:02x}", "key_id": key_id.hex(),
                               "key_id_is": info.key_id_is, "e": noise[:32].hex(),
                               "encrypted_payload": noise[32:].hex()},
                    "payload_hex": hello.hex(),
                    "payload": frame_json(f.decode_frame(hello))}
        if direction == "host->member" and "host->member" not in info.recv:
            kind = data[0]
            if kind == MSG2_PLAIN_REFUSE:
                info.recv["host->member"] = CipherState()  # nothing more will come
                return {**base, "kind": "handshake-2-plain-refuse", "hex": data.hex(),
                        "layout": {"type": "01", "refuse_cbor": data[1:].hex()},
                        "payload": frame_json(f.decode_frame(data[1:]))}
            assert kind == MSG2_NOISE
            return self._describe_msg2(info, base, data)
        recv = info.recv[direction]
        nonce = recv.nonce
        plaintext = recv.decrypt_with_ad(b"", data)
        return {**base, "kind": "transport", "nonce": nonce, "hex": data.hex(),
                "plaintext_hex": plaintext.hex(), "frame": frame_json(f.decode_frame(plaintext))}

    def _describe_msg2(self, info: _ConnInfo, base: dict[str, Any], data: bytes) -> dict[str, Any]:
        assert info.e_host is not None and info.msg1_noise is not None
        pro = prologue(self._tunnel_id())
        ini = HandshakeState(initiator=True, prologue=pro, psk=info.psk,
                             ephemeral_private=info.e_member)
        res = HandshakeState(initiator=False, prologue=pro, psk=info.psk,
                             ephemeral_private=info.e_host)
        hello = res.read_message(info.msg1_noise)
        assert ini.write_message(hello) == info.msg1_noise
        payload = ini.read_message(data[1:])
        assert res.write_message(payload) == data[1:]
        i_send, i_recv = ini.split()
        r_send, r_recv = res.split()
        assert ini.handshake_hash == res.handshake_hash
        k_m2h, k_h2m = i_send._k, i_recv._k
        assert (k_m2h, k_h2m) == (r_recv._k, r_send._k)
        assert k_m2h is not None and k_h2m is not None
        info.recv = {"member->host": CipherState(k_m2h), "host->member": CipherState(k_h2m)}
        return {**base, "kind": "handshake-2", "hex": data.hex(),
                "layout": {"type": "00", "e": data[1:33].hex(), "encrypted_payload": data[33:].hex()},
                "payload_hex": payload.hex(),
                "payload": frame_json(f.decode_frame(payload)),
                "handshake_hash": ini.handshake_hash.hex(),
                "transport_keys": {"member->host": k_m2h.hex(), "host->member": k_h2m.hex()}}

    def _tunnel_id(self) -> str:
        assert self.room is not None
        return self.room.tunnel_id

    def deliver_msg1(self, t: float, actor: str, wire: int, *, ticket: bool, note: str) -> dict[str, Any]:
        """Deliver handshake message 1: the room draws its ephemeral, and a ticket if it admits."""
        calls = [Draw(32, "noise-ephemeral", "host", "host's Noise ephemeral private key "
                      "(responder e)", actor)]
        if ticket:
            calls.append(Draw(32, "ticket-secret", "host", "resume ticket secret sent in the "
                              "welcome", actor))
        return self.step(t, "deliver", {"wire": [wire]}, rng={"room": calls}, note=note)


def _member_e(actor: str) -> Draw:
    return Draw(32, "noise-ephemeral", "member", "member's Noise ephemeral private key "
                "(initiator e)", actor)


#: How to replay `steps` (spec section 22 says the same).
CONVENTIONS = {
    "steps": (
        "Run the steps in order. Each is one call at time t (seconds on the host's monotonic "
        "clock; wall-clock ms = (t + epoch_offset) * 1000, floored). After the call, drain the "
        "host's output once (every Send and disconnect, in order), then each member's output "
        "once, members in the order they were created: that is `emits`, host first. Then "
        "collect each member's events: that is `events`."
    ),
    "acks": (
        "A member acks when its output is drained, never while it receives: if the highest "
        "seq it holds is above the last seq it acked, it appends one ack{seq: that seq} after "
        "whatever else it queued since the last drain. A step that delivers several entries "
        "therefore yields one ack, for the last of them. The key-confirmation ack is queued "
        "when the welcome is read, before any re-sent say."
    ),
    "deliver": (
        "`deliver` hands earlier wire messages, in the listed order, to their receivers: "
        "member->host via the host's receive(conn, bytes, t); host->member via the member's "
        "receive(bytes, t). `disconnect` entries are never delivered (they are the host "
        "closing the WebSocket)."
    ),
    "messages": (
        "Event fields named `message` are the reference implementation's wording, shown to "
        "users: informative, not part of the protocol. Every other field is normative."
    ),
}

STEP_VOCABULARY = {
    "room.create": "args goal, host_name, epoch_offset; result tunnel_id. Draws the tunnel id.",
    "host.say": "args text; result seq. The host member's own chat message (ref 0).",
    "host.mint_invites": "args count, base_url; result links. Draws one invite secret each.",
    "member.connect": (
        "args actor (a name for this member connection), name, link, rng (the stream its "
        "ephemeral comes from), resume_from (optional: the actor whose resume state this "
        "connection uses), caps (optional: the capabilities its hello announces, e.g. "
        "[\"files/1\"]; none if absent); result conn (the host's id for the new WebSocket). "
        "Creates the member connection (which queues message 1) and opens the host's connection."
    ),
    "member.say": "args actor, text; result ref.",
    "member.leave": "args actor. The member leaves for good (queues close{reason: left}).",
    "deliver": "args wire: indices into `wire`, delivered in order (see conventions).",
    "drop": (
        "args actor. The WebSocket dies under both sides: the host's connection_lost(conn, t) "
        "and the member's connection_lost(t)."
    ),
    # Files (files.json): the calls of the drivers' files API (spec section 26).
    "member.share": (
        "args actor, name, note (optional), files_cbor (each file entry's CBOR, hex); result "
        "ref. Queues the share frame (and any manifest pages)."
    ),
    "member.unshare": "args actor, offer. Queues unshare{offer}.",
    "member.fetch": (
        "args actor, offer, file, at, credit; result transfer (the member's id x for it). "
        "Queues fetch."
    ),
    "member.grant": (
        "args actor, transfer, n: the driver wrote n more bytes. The credit is queued at the "
        "next drain (credits granted between two drains add up)."
    ),
    "member.provide_chunk": (
        "args actor, transfer, offset, data_hex: the driver's answer to a ReadRequest; result "
        "accepted. Nothing is sealed until member.pull_bulk."
    ),
    "member.pull_bulk": (
        "args actor, max_bytes: the member's outbound queue is low; result sealed (bytes of "
        "chunk messages sealed now, at least one frame when any waits)."
    ),
    "host.pull_bulk": (
        "args actor (whose connection), max_bytes: that connection's outbound queue is low; "
        "result sealed. The chunks the host holds for it are sealed now."
    ),
}

#: Every event class (in definition order): the same names serve every scenario.
EVENT_CLASSES = tuple(TunnelEvent.__subclasses__())


def vocabulary() -> dict[str, Any]:
    """The names used in `steps`: step kinds and events (the members', and the host's own in
    files.json's `host_events`) with their fields."""
    return {
        "steps": STEP_VOCABULARY,
        "events": {
            cls.__name__: [fld.name for fld in dataclasses.fields(cls)] for cls in EVENT_CLASSES
        },
    }


def run_files_step(room: Room, members: dict[str, MemberConnection], conns: dict[str, Any],
                   t: float, do: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """The files steps (files.json): the API calls of the host's and the members' drivers."""
    if do == "member.share":
        files = [f.FileEntry.from_value(_codec.decode(bytes.fromhex(e))) for e in args["files_cbor"]]
        return {"ref": members[args["actor"]].files.share(args["name"], files, note=args.get("note"))}
    if do == "member.fetch":
        x = members[args["actor"]].files.fetch(args["offer"], args["file"], at=args["at"],
                                               credit=args["credit"])
        return {"transfer": x}
    if do == "member.provide_chunk":
        ok = members[args["actor"]].files.provide_chunk(args["transfer"], args["offset"],
                                                        bytes.fromhex(args["data_hex"]))
        return {"accepted": ok}
    if do == "member.grant":
        members[args["actor"]].files.grant(args["transfer"], args["n"])
        return None
    if do == "member.unshare":
        members[args["actor"]].files.unshare(args["offer"])
        return None
    if do == "member.pull_bulk":
        return {"sealed": members[args["actor"]].pull_bulk(args["max_bytes"])}
    if do == "host.pull_bulk":
        return {"sealed": room.pull_bulk(conns[args["actor"]].conn, args["max_bytes"])}
    raise AssertionError(do)


def run_scenario() -> tuple[Scenario, int]:
    """The scripted scenario. Returns it and the index of its first resume step (the split into
    handshake-join.json and handshake-resume.json)."""
    sc = Scenario()
    t = T0
    sc.step(t, "room.create", {"goal": GOAL, "host_name": "bo", "epoch_offset": EPOCH_OFFSET},
            rng={"room": [Draw(12, "tunnel-id", "host", "tunnel id (12 bytes; base64url of them "
                               "is the tunnel id)")]},
            note="The host opens a room. Its own member ('bo') is member id 1.")
    sc.step(t + 1, "host.say", {"text": "Hi! The draft is in the goal; say what you would change."},
            note="Seq 1, before anyone joined: the member will get it as history.")
    rec = sc.step(t + 2, "host.mint_invites", {"count": 1, "base_url": BASE_URL},
                  rng={"room": [Draw(32, "invite-secret", "host",
                                     "invite secret (the link's #fragment)")]})
    link = rec["result"]["links"][0]

    # --- join ---
    rec = sc.step(t + 10, "member.connect",
                  {"actor": "ana/1", "name": "ana", "link": link, "rng": "member"},
                  rng={"member": [_member_e("ana/1")]},
                  note="The member dials the WebSocket URL; the host's driver calls open_connection.")
    (msg1,) = rec["emits"]
    rec = sc.deliver_msg1(t + 10, "ana/1", msg1, ticket=True,
                          note="The room reserves the invite and answers with the welcome.")
    msg2 = rec["emits"][0]
    rec = sc.step(t + 10.25, "deliver", {"wire": [msg2]},
                  note="The member is in: it sends the key-confirmation ack (seq 0).")
    (ack0,) = rec["emits"]
    rec = sc.step(t + 10.5, "deliver", {"wire": [ack0]},
                  note="Confirmed: the room seats the member, sends the history (seq 1), the "
                       "'joined' event (seq 2) and the new roster.")
    batch = rec["emits"]
    rec = sc.step(t + 10.75, "deliver", {"wire": batch},
                  note="The member acks the highest seq it holds.")
    sc.step(t + 11, "deliver", {"wire": rec["emits"]})
    rec = sc.step(t + 12, "member.say",
                  {"actor": "ana/1", "text": "Hello from ana. Should ids be strings or integers?"})
    rec = sc.step(t + 12.25, "deliver", {"wire": rec["emits"]},
                  note="The room stamps the say as seq 3 and sends it to everyone, the sender "
                       "included: the sender's copy is its acknowledgement.")
    rec = sc.step(t + 12.5, "deliver", {"wire": rec["emits"]})
    sc.step(t + 12.75, "deliver", {"wire": rec["emits"]})

    # --- refused stranger: the invite is single-use ---
    rec = sc.step(t + 13, "member.connect",
                  {"actor": "eve", "name": "eve", "link": link, "rng": "probe"},
                  rng={"probe": [_member_e("eve")]},
                  note="Someone else uses the same (already used) link.")
    sc.deliver_msg1(t + 13, "eve", rec["emits"][0], ticket=False,
                    note="The room still holds the used invite's key, so it refuses inside Noise "
                         "message 2 (authenticated) and closes with 4008.")
    rec = sc.steps[-1]
    sc.step(t + 13.25, "deliver", {"wire": [rec["emits"][0]]})
    resume_start = len(sc.steps)

    # --- drop and resume ---
    rec = sc.step(t + 20, "member.say", {"actor": "ana/1", "text": "This one is lost in the drop."},
                  note="The say is written but the connection dies before it arrives: it "
                       "stays unacknowledged in the member's resume state.")
    lost = rec["emits"][0]
    sc.wire[lost]["lost"] = True
    sc.step(t + 20.5, "drop", {"actor": "ana/1"},
            note="Both sides see the connection die. The room records 'disconnected' (seq 4) "
                 "and holds the seat for the grace period.")
    sc.step(t + 21, "host.say", {"text": "Ana? You dropped; the floor is yours when you are back."},
            note="Seq 5, sent while the member is away.")
    rec = sc.step(t + 30, "member.connect",
                  {"actor": "ana/2", "name": "ana", "link": link, "rng": "member",
                   "resume_from": "ana/1"},
                  rng={"member": [_member_e("ana/2")]},
                  note="A new connection with the resume state of ana/1: key id = ticket id, "
                       "psk = ticket secret, hello.last = 3.")
    rec = sc.deliver_msg1(t + 30, "ana/2", rec["emits"][0], ticket=True,
                          note="The room answers with a resumed welcome and a fresh ticket.")
    rec = sc.step(t + 30.25, "deliver", {"wire": [rec["emits"][0]]},
                  note="The member confirms (ack 3) and re-sends its unacknowledged say (ref 2).")
    rec = sc.step(t + 30.5, "deliver", {"wire": rec["emits"]},
                  note="Confirmed: the old ticket dies, 'reconnected' is seq 6, the room replays "
                       "seq 4..6, sends the roster, then stamps the re-sent say as seq 7.")
    rec = sc.step(t + 30.75, "deliver", {"wire": rec["emits"]})
    sc.step(t + 31, "deliver", {"wire": rec["emits"]})

    # --- the old ticket is dead ---
    rec = sc.step(t + 32, "member.connect",
                  {"actor": "ana/old-ticket", "name": "ana", "link": link, "rng": "probe",
                   "resume_from": "ana/1"},
                  rng={"probe": [_member_e("ana/old-ticket")]},
                  note="Replaying the resume with ana/1's ticket, which died at the resume.")
    rec = sc.step(t + 32, "deliver", {"wire": rec["emits"]},
                  note="The room holds no key for that id: the refusal can only be plaintext "
                       "(type byte 0x01).")
    sc.step(t + 32.25, "deliver", {"wire": [rec["emits"][0]]},
            note="A plaintext refusal of a resume: that ticket is dead, so the attempt ends "
                 "for good (Refused, then ConnectionEnded not resumable); section 14.")

    # --- leaving ---
    rec = sc.step(t + 40, "member.leave", {"actor": "ana/2"},
                  note="The member leaves: it queues close{reason: left} and is CLOSED at once "
                       "(ConnectionEnded 'left', not resumable). It sends nothing more.")
    rec = sc.step(t + 40.25, "deliver", {"wire": rec["emits"]},
                  note="The room answers close{reason: left}, then closes the WebSocket with "
                       "1000 (the disconnect entry), and appends 'left' (seq 8) for the others.")
    answer = [w for w in rec["emits"] if sc.wire[w]["kind"] != "disconnect"]
    sc.step(t + 40.5, "deliver", {"wire": answer},
            note="The answer reaches a member that is already CLOSED: it is not even decrypted; "
                 "no event, nothing sent. The member learns the end from the host's WebSocket "
                 "close (1000), which it waits for (section 20).")
    return sc, resume_start


def _check_scenario(sc: Scenario) -> None:
    """Sanity checks, so that a core change that breaks the story fails here, not silently."""
    ev = {a: [e for s in sc.steps for e in s.get("events", {}).get(a, [])] for a in sc.members}
    names = [e["event"] for e in ev["ana/1"]]
    assert names[0] == "Welcomed" and "SayAccepted" in names and names[-1] == "ConnectionEnded"
    assert [e["event"] for e in ev["eve"]] == ["Refused", "ConnectionEnded"]
    assert ev["eve"][0]["code"] == "used"
    assert ev["ana/old-ticket"][0]["code"] == "unknown-invite"
    seqs = [e["seq"] for e in ev["ana/2"] if e["event"] in ("ChatMessage", "RoomEvent")]
    assert seqs == [4, 5, 6, 7], seqs
    assert any(e["event"] == "SayAccepted" and e["ref"] == 2 for e in ev["ana/2"])


def build_handshakes() -> tuple[dict[str, Any], dict[str, Any]]:
    sc, split = run_scenario()
    _check_scenario(sc)
    tunnel_id = sc._tunnel_id()

    def part(steps: list[dict[str, Any]], description: str, extra: dict[str, Any]) -> dict[str, Any]:
        wire_ids = [i for s in steps for i in s["emits"]]
        used = [(r["stream"], r["index"]) for s in steps for r in s.get("rng", [])]
        calls = [sc.rngs[name].calls[i] for name, i in used]
        return {
            "description": description,
            "format": FORMAT,
            "notation": NOTATION,
            "protocol_name": PROTOCOL_NAME.decode(),
            "tunnel_id": tunnel_id,
            "prologue_hex": prologue(tunnel_id).hex(),
            "prologue_construction": (
                f"ASCII('{PROLOGUE_LABEL.decode()}') || 0x00 || 0x{f.PROTOCOL_VERSION:02x} || "
                "ASCII(tunnel_id)"
            ),
            **extra,
            "conventions": CONVENTIONS,
            "vocabulary": vocabulary(),
            "rng": {
                "doc": RNG_DOC,
                "seeds": {k: v.decode() for k, v in SEEDS.items() if k != "links"},
                "calls": calls,
            },
            "steps": steps,
            "wire": [sc.wire[i] for i in wire_ids],
        }

    link = sc.steps[2]["result"]["links"][0]
    parsed = JoinLink.parse(link)
    join = part(
        sc.steps[:split],
        "One room, one join: handshake messages 1 and 2, key confirmation, history, a say and "
        "its stamped copy; then a second use of the same link refused inside Noise.",
        {
            "epoch_offset": EPOCH_OFFSET,
            "link": link,
            "invite_secret_hex": parsed.secret.hex(),
            "invite_id_hex": parsed.invite_id.hex(),
            "invite_psk_hex": parsed.psk.hex(),
        },
    )
    welcome = next(w for w in sc.wire if w["kind"] == "handshake-2" and w["actor"] == "ana/1")
    ticket = bytes.fromhex(welcome["payload"]["ticket"]["$hex"])
    welcome2 = next(w for w in sc.wire if w["kind"] == "handshake-2" and w["actor"] == "ana/2")
    ticket2 = bytes.fromhex(welcome2["payload"]["ticket"]["$hex"])
    resume = part(
        sc.steps[split:],
        "Continues handshake-join.json (same room, same rng streams): a say lost in a drop, the "
        "resume handshake with the ticket from the welcome, the replay of seq 4..6, the re-sent "
        "say stamped as seq 7, then the dead old ticket refused in plaintext.",
        {
            "continues": "handshake-join.json",
            "ticket_secret_hex": ticket.hex(),
            "ticket_id_hex": ticket_id(ticket, tunnel_id).hex(),
            "ticket_psk_hex": ticket_psk(ticket, tunnel_id).hex(),
            "new_ticket_secret_hex": ticket2.hex(),
            "new_ticket_id_hex": ticket_id(ticket2, tunnel_id).hex(),
            "new_ticket_psk_hex": ticket_psk(ticket2, tunnel_id).hex(),
        },
    )
    return join, resume


# ---------------------------------------------------------------------------------------------
# The verification phrase: phrase.json
# ---------------------------------------------------------------------------------------------

SPEC_WORDLIST = Path(__file__).resolve().parent / "wordlist.txt"


def _phrase_case(what: str, handshake_hash: bytes) -> dict[str, Any]:
    data = PHRASE_LABEL + handshake_hash
    digest = hashlib.blake2b(data).digest()
    indices = phrase_indices(handshake_hash)
    bits = PHRASE_WORDS * WORD_BITS
    top = int.from_bytes(digest[:6], "big") >> (48 - bits)
    assert top == sum(i << (WORD_BITS * (PHRASE_WORDS - 1 - k)) for k, i in enumerate(indices))
    words = [wordlist()[i] for i in indices]
    phrase = derive_phrase(handshake_hash)
    assert phrase == " ".join(words)
    return {
        "what": what,
        "handshake_hash_hex": handshake_hash.hex(),
        "blake2b_input_hex": data.hex(),
        "blake2b_512_hex": digest.hex(),
        "first_44_bits_hex": f"{top:011x}",
        "indices": list(indices),
        "words": words,
        "phrase": phrase,
    }


def build_phrase() -> dict[str, Any]:
    words = SPEC_WORDLIST.read_bytes()
    assert hashlib.sha256(words).hexdigest() == WORDLIST_SHA256, "spec/wordlist.txt changed"
    assert tuple(words.decode("ascii").split("\n")[:-1]) == wordlist()
    seed = b"tunnel-mcp/1 test vectors: phrase"

    def synthetic(j: int) -> bytes:
        # Stand-ins for handshake hashes: any 64 bytes will do, the vectors list them.
        return hashlib.blake2b(j.to_bytes(8, "big"), key=seed).digest()

    cases = [
        _phrase_case("all-zero handshake hash", bytes(64)),
        _phrase_case("all-0xff handshake hash", b"\xff" * 64),
    ]
    cases += [_phrase_case(f"random handshake hash {j}", synthetic(j)) for j in range(1, 5)]
    # Hashes whose phrase uses the first and the last word of the list: off-by-one errors in
    # the bit slicing show up here.
    for index, what in ((0, "the first word (index 0)"), (2047, "the last word (index 2047)")):
        j = next(j for j in range(5, 1_000_000) if index in phrase_indices(synthetic(j)))
        cases.append(_phrase_case(f"a phrase with {what}", synthetic(j)))

    # The scenario of handshake-join.json and handshake-resume.json, run again: both ends of the
    # join derive the same phrase from its handshake hash, and the resume keeps it.
    sc, _ = run_scenario()
    wire = sc.wire
    join_hash = next(w for w in wire if w["kind"] == "handshake-2" and w["actor"] == "ana/1")
    resume_hash = next(w for w in wire if w["kind"] == "handshake-2" and w["actor"] == "ana/2")
    assert sc.room is not None
    join_phrase = derive_phrase(bytes.fromhex(join_hash["handshake_hash"]))
    member_id = sc.members["ana/1"].member_id
    assert member_id is not None
    # The room's own copy: its `joined` entry for the seat (the scenario ends with a leave).
    joined = next(
        e for e in sc.room.entries_since(0) if e.event == "joined" and e.member == member_id
    )
    assert sc.members["ana/1"].phrase == join_phrase == joined.phrase
    assert sc.members["ana/2"].phrase == join_phrase
    return {
        "description": (
            "The verification phrase (section 24): four words of spec/wordlist.txt derived from "
            "the Noise handshake hash of a join. Synthetic hashes with every intermediate value, "
            "then the join and the resume of the handshake-*.json scenario."
        ),
        "format": FORMAT,
        "label": PHRASE_LABEL.decode(),
        "label_hex": PHRASE_LABEL.hex(),
        "derivation": (
            "d = BLAKE2b-512(ASCII(label) || handshake_hash) (no key, 64-byte output); the first "
            "44 bits of d, most significant first, are four 11-bit big-endian word indices; the "
            "phrase is the four words joined by single spaces (U+0020)."
        ),
        "wordlist": {
            "file": "spec/wordlist.txt",
            "sha256": WORDLIST_SHA256,
            "words": len(wordlist()),
            "first": wordlist()[0],
            "last": wordlist()[-1],
        },
        "examples": cases,
        "scenario": {
            "join": {
                "from": "handshake-join.json",
                "wire": join_hash["i"],
                "handshake_hash_hex": join_hash["handshake_hash"],
                "phrase": join_phrase,
                "note": "the member and the host derive this phrase; the host keeps it for the seat",
            },
            "resume": {
                "from": "handshake-resume.json",
                "wire": resume_hash["i"],
                "handshake_hash_hex": resume_hash["handshake_hash"],
                "phrase_kept": join_phrase,
                "phrase_of_this_hash_not_used": derive_phrase(
                    bytes.fromhex(resume_hash["handshake_hash"])
                ),
                "note": "a resume has its own handshake hash, but both ends keep the join's phrase",
            },
        },
    }


# ---------------------------------------------------------------------------------------------
# handshake-low-order.json
# ---------------------------------------------------------------------------------------------

#: X25519 public keys of small order (RFC 7748 section 6.1 / Noise section 12.1): with any
#: private key, X25519 outputs 32 zero bytes. Many libraries refuse them (libsodium returns an
#: error); section 5 of the spec says to use the all-zero output instead.
LOW_ORDER_POINTS = [
    ("u = 0", bytes(32)),
    ("u = 1", bytes([1]) + bytes(31)),
    ("u of order 8", bytes.fromhex(
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")),
]


def build_low_order() -> dict[str, Any]:
    """A member that holds the invite secret sends a small-order `e`: the room must answer
    with a welcome computed with ee = 32 zero bytes, and seat the member at its ack."""
    rng = StreamRng("room", b"tunnel-mcp/1 test vectors: low-order room")
    with rng.expecting(Draw(12, "tunnel-id", "host", "tunnel id")):
        room = Room(GOAL, "bo", T0, rng=rng, epoch_offset=EPOCH_OFFSET)  # see "goal" below
    invites_draws = [Draw(32, "invite-secret", "host", f"invite secret {i}")
                     for i in range(len(LOW_ORDER_POINTS))]
    with rng.expecting(*invites_draws):
        invites = room.mint_invites(len(LOW_ORDER_POINTS), T0)
    pro = prologue(room.tunnel_id)
    cases = []
    for (what, point), invite in zip(LOW_ORDER_POINTS, invites, strict=True):
        link = invite.link(BASE_URL, room.tunnel_id)
        hello = f.Hello(v=1, name="lo", sw="vector-generator/1").encode()
        # Message 1 needs no private key: NNpsk0's first message is psk, e and the payload.
        ini = SymmetricState(PROTOCOL_NAME)
        ini.mix_hash(pro)
        ini.mix_key_and_hash(link.psk)
        ini.mix_hash(point)
        ini.mix_key(point)
        msg1 = bytes([f.PROTOCOL_VERSION]) + link.invite_id + point + ini.encrypt_and_hash(hello)
        conn = room.open_connection(T0)
        assert conn is not None
        actor = f"low-order/{len(cases) + 1}"
        with rng.expecting(
            Draw(32, "noise-ephemeral", "host", "host's Noise ephemeral private key", actor),
            Draw(32, "ticket-secret", "host", "resume ticket secret sent in the welcome", actor),
        ):
            room.receive(conn, msg1, T0)
        (reply,) = room.data_to_send()
        assert isinstance(reply, Send) and reply.data[0] == MSG2_NOISE
        msg2 = reply.data
        # The member's side: X25519(its private, host e) for a small-order point is zero
        # whatever the private key, so the sender of such a point can finish the handshake.
        ini.mix_hash(msg2[1:33])
        ini.mix_key(msg2[1:33])
        ini.mix_key(bytes(32))  # ee
        welcome = ini.decrypt_and_hash(msg2[33:])
        send, recv = ini.split()
        handshake_hash = ini.get_handshake_hash()
        ack = send.encrypt_with_ad(b"", f.Ack(seq=0).encode())
        room.receive(conn, ack, T0)
        # (Earlier cases' connections get the new roster and events too: not recorded.)
        after = [recv.decrypt_with_ad(b"", out.data) for out in room.data_to_send()
                 if isinstance(out, Send) and out.conn == conn]
        frames = [frame_json(f.decode_frame(p)) for p in after]
        assert any(fr.get("kind") == "joined" for fr in frames), frames
        cases.append({
            "what": what,
            "actor": actor,
            "conn": conn,
            "invite_secret_hex": link.secret.hex(),
            "invite_psk_hex": link.psk.hex(),
            "e_hex": point.hex(),
            "msg1_hex": msg1.hex(),
            "hello_hex": hello.hex(),
            "host_e_private_hex": rng.calls[-2]["hex"],
            "msg2_hex": msg2.hex(),
            "ee_output_hex": bytes(32).hex(),
            "welcome_hex": welcome.hex(),
            "welcome": frame_json(f.decode_frame(welcome)),
            "handshake_hash": handshake_hash.hex(),
            "transport_keys": {"member->host": send._k.hex() if send._k else None,
                               "host->member": recv._k.hex() if recv._k else None},
            "ack_hex": ack.hex(),
            "room_answers_the_ack_with": frames,
        })
    return {
        "description": (
            "A member that holds an invite secret sends a small-order X25519 public key as its "
            "ephemeral e. The DH output is then 32 zero bytes: the host uses it (it does not "
            "reject the handshake), answers with a welcome and seats the member at its "
            "confirming ack. An implementation whose X25519 function refuses small-order keys "
            "must catch that and use 32 zero bytes to reproduce msg2, the handshake hash and "
            "the transport keys."
        ),
        "format": FORMAT,
        "notation": NOTATION,
        "protocol_name": PROTOCOL_NAME.decode(),
        "goal": GOAL,
        "host_name": "bo",
        "tunnel_id": room.tunnel_id,
        "prologue_hex": pro.hex(),
        "epoch_offset": EPOCH_OFFSET,
        "t": T0,
        "rng": {"doc": RNG_DOC, "seeds": {"room": "tunnel-mcp/1 test vectors: low-order room"},
                "calls": rng.calls},
        "cases": cases,
    }


# ---------------------------------------------------------------------------------------------
# Files: files.json
# ---------------------------------------------------------------------------------------------

FILES_SEEDS = {
    "room": b"tunnel-mcp/1 test vectors: files room",
    "member": b"tunnel-mcp/1 test vectors: files members",
}
#: The bytes of the scenario's shared file: byte i is i * 7 mod 256 (2500 bytes).
ORDERS = bytes(i * 7 % 256 for i in range(2500))
README = b"run: make test-orders"


def _pattern(n: int) -> bytes:
    return bytes(i % 256 for i in range(n))


def _chunk_layout() -> list[dict[str, Any]]:
    cases = []
    for x, at, n in [(0, 0, 1), (1, 1000, 10), (23, 23, 23), (24, 24, 24), (255, 255, 255),
                     (256, 65535, 256), (65535, 65536, 1000), (65536, 2**32 - 1, 65408),
                     (2**32, 2**32, 2), (2**64 - 1, 2**64 - 1, 65408)]:
        data = _pattern(n)
        frame = f.Chunk(x=x, at=at, data=data).encode()
        assert frame == _codec.encode({"t": "chunk", "x": x, "at": at, "data": data})
        assert f.decode_frame(frame) == f.Chunk(x=x, at=at, data=data)
        prefix = frame[: len(frame) - n]
        cases.append(to_json({"x": x, "at": at, "data_len": n, "frame_len": len(frame),
                              "prefix_hex": prefix.hex()}))
    return cases


def _files_invalid() -> list[tuple[str, bytes, str]]:
    enc = _codec.encode
    good = f.Chunk(x=1, at=0, data=b"abc").encode()
    return [
        ("file entry hash of 31 bytes",
         enc({"t": "listing", "offer": 1, "at": 0, "files": [{"p": "a", "s": 1, "h": bytes(31)}]}),
         "malformed"),
        ("file entry without a path",
         enc({"t": "listing", "offer": 1, "at": 0, "files": [{"s": 1, "h": bytes(32)}]}),
         "malformed"),
        ("chunk data as text", enc({"t": "chunk", "x": 1, "at": 0, "data": "abc"}), "malformed"),
        ("chunk with a non-shortest x (1 as 0x18 0x01)",
         good[:11] + b"\x18\x01" + good[12:], "malformed"),
        ("chunk with a trailing byte", good + b"\x00", "malformed"),
        ("chunk with a negative at", enc({"t": "chunk", "x": 1, "at": -1, "data": b"a"}),
         "malformed"),
        ("credit without n", enc({"t": "credit", "x": 1}), "malformed"),
        ("event file-offer without summary (all three fields are required)",
         enc({"t": "event", "kind": "file-offer", "seq": 20, "ts": _TS, "member": 2,
              "name": "ana"}), "malformed"),
        ("event file-offer-ended without member",
         enc({"t": "event", "kind": "file-offer-ended", "seq": 21, "ts": _TS, "name": "ana",
              "summary": "withdrawn"}), "malformed"),
        ("share whose files is not an array",
         enc({"t": "share", "ref": 1, "name": "n", "count": 1, "total": 1, "files": {}}),
         "malformed"),
    ]


def _paging() -> dict[str, Any]:
    from tunnelproto._files import entry_size, share_frames

    entries = tuple(
        f.FileEntry(f"fixtures/dir-{i // 100:02d}/case-{i:04d}-input.json", i,
                    hashlib.sha256(b"%d" % i).digest())
        for i in range(1000)
    )
    frames = share_frames(9, "a folder", None, entries)
    pages = []
    for frame in frames:
        data = frame.encode()
        assert len(data) <= 65519
        first = frame.at if isinstance(frame, f.Manifest) else 0
        pages.append({"t": frame.TYPE, "at": first, "entries": len(frame.files),
                      "frame_bytes": len(data)})
    return {
        "manifest": "1000 entries: path fixtures/dir-<i // 100, 2 digits>/case-<i, 4 digits>"
                    "-input.json, size i, hash SHA-256(ASCII(decimal i))",
        "entry_0": {"value": to_json(entries[0].to_value()),
                    "cbor_hex": _codec.encode(entries[0].to_value()).hex(),
                    "encoded_bytes": entry_size(entries[0])},
        "share_ref": 9,
        "share_name": "a folder",
        "pages": pages,
    }


#: How to replay the files scenario: as the handshake one, plus the host's own events.
FILES_CONVENTIONS = {
    **CONVENTIONS,
    "host_events": (
        "After `emits`, and before the members' events, the host's own file events are "
        "collected once (room.files.take_events(): ReadRequest for the host's offers, "
        "ChunkReceived, FetchComplete, FetchAborted for its fetches): that is `host_events`, "
        "absent from a step that had none."
    ),
    "bulk": (
        "Chunks are sealed only by the pull_bulk steps (each side's driver calls pull_bulk "
        "when that connection's outbound queue is low): a chunk the host holds for a receiver "
        "waits, unsealed, behind any chat sealed before it."
    ),
}


def run_files_scenario() -> Scenario:
    sc = Scenario(FILES_SEEDS)
    t = T0
    sc.step(t, "room.create", {"goal": "Share the failing test's fixtures", "host_name": "bo",
                               "epoch_offset": EPOCH_OFFSET},
            rng={"room": [Draw(12, "tunnel-id", "host", "tunnel id (12 bytes; base64url of them "
                               "is the tunnel id)")]})
    rec = sc.step(t + 1, "host.mint_invites", {"count": 3, "base_url": BASE_URL},
                  rng={"room": [Draw(32, "invite-secret", "host", f"invite secret {i} (the "
                                     "link's #fragment)") for i in range(3)]})
    links = rec["result"]["links"]

    def settle(t: float, emits: list[int]) -> None:
        while emits:
            emits = sc.step(t, "deliver", {"wire": emits})["emits"]

    def join(t: float, actor: str, link: str, caps: list[str]) -> None:
        args: dict[str, Any] = {"actor": actor, "name": actor, "link": link, "rng": "member"}
        if caps:
            args["caps"] = caps
        rec = sc.step(t, "member.connect", args,
                      rng={"member": [_member_e(actor)]})
        rec = sc.deliver_msg1(t, actor, rec["emits"][0], ticket=True,
                              note="" if caps else "No caps in hello: no caps in the welcome.")
        settle(t, rec["emits"])

    join(t + 2, "ana", links[0], ["files/1"])
    join(t + 3, "bob", links[1], ["files/1"])
    join(t + 4, "old", links[2], [])
    files = [f.FileEntry("fixtures/orders.json", len(ORDERS), hashlib.sha256(ORDERS).digest()),
             f.FileEntry("README.txt", len(README), hashlib.sha256(README).digest())]
    rec = sc.step(t + 10, "member.share",
                  {"actor": "ana", "name": "fixtures", "note": "the inputs of the failing test",
                   "files_cbor": [_codec.encode(e.to_value()).hex() for e in files]},
                  note="Ana shares two files: one share frame (the manifest fits one page).")
    rec = sc.step(t + 10.25, "deliver", {"wire": rec["emits"]},
                  note="The room stamps offer 1: an offer frame for ana and bob, the generic "
                       "event file-offer for old (no files/1), all at seq 5.")
    settle(t + 10.5, rec["emits"])
    rec = sc.step(t + 20, "member.fetch",
                  {"actor": "bob", "offer": 1, "file": 0, "at": 0, "credit": 1000},
                  note="Bob fetches orders.json with 1000 bytes of credit.")
    rec = sc.step(t + 20.25, "deliver", {"wire": rec["emits"]},
                  note="The host pulls from ana with the same credit (pull id 1).")
    rec = sc.step(t + 20.5, "deliver", {"wire": rec["emits"]},
                  note="Ana's core asks its driver for bytes 0..999 (a ReadRequest).")
    offset = 0
    for n, grant_after in ((1000, 1000), (1000, 1500), (500, 0)):
        sc.step(t + 21, "member.provide_chunk",
                {"actor": "ana", "transfer": 1, "offset": offset,
                 "data_hex": ORDERS[offset: offset + n].hex()},
                note="The driver hands the bytes over; nothing is sealed yet.")
        rec = sc.step(t + 21, "member.pull_bulk", {"actor": "ana", "max_bytes": 65536},
                      note="Ana's outbound queue is low: the chunk is sealed now.")
        rec = sc.step(t + 21.25, "deliver", {"wire": rec["emits"]},
                      note="The host keeps the bytes for bob, unsealed, until bob's queue is low.")
        if offset == 0:
            rec = sc.step(t + 21.3, "host.say", {"text": "Thanks ana, bob is fetching it."},
                          note="Chat sealed now goes out before the chunk that waits.")
            settle(t + 21.3, rec["emits"])
        rec = sc.step(t + 21.5, "host.pull_bulk", {"actor": "bob", "max_bytes": 65536},
                      note="Bob's queue is low: the chunk is re-sealed for him, with his id.")
        rec = sc.step(t + 21.75, "deliver", {"wire": rec["emits"]})
        offset += n
        if grant_after:
            rec = sc.step(t + 22, "member.grant", {"actor": "bob", "transfer": 1, "n": grant_after},
                          note="Bob's driver wrote the bytes and grants credit back.")
            rec = sc.step(t + 22.25, "deliver", {"wire": rec["emits"]},
                          note="The host passes the credit on to ana.")
            sc.step(t + 22.5, "deliver", {"wire": rec["emits"]})
    rec = sc.step(t + 30, "member.unshare", {"actor": "ana", "offer": 1},
                  note="Ana withdraws the offer.")
    rec = sc.step(t + 30.25, "deliver", {"wire": rec["emits"]},
                  note="unoffer for ana and bob, file-offer-ended for old (seq 7).")
    settle(t + 30.5, rec["emits"])
    return sc


def _check_files_scenario(sc: Scenario) -> None:
    ev = {a: [e for s in sc.steps for e in s.get("events", {}).get(a, [])] for a in sc.members}
    got = b"".join(bytes.fromhex(e["data"]["$hex"]) for e in ev["bob"] if e["event"] == "ChunkReceived")
    assert got == ORDERS
    assert [e["event"] for e in ev["bob"] if e["event"].startswith("Fetch")] == ["FetchComplete"]
    assert [e["kind"] for e in ev["old"] if e["event"] == "RoomEvent"][-2:] == [
        "file-offer", "file-offer-ended"]
    assert any(e["event"] == "ShareAccepted" for e in ev["ana"])
    assert [e["event"] for e in ev["ana"]].count("ReadRequest") == 3


def build_files() -> dict[str, Any]:
    sc = run_files_scenario()
    _check_files_scenario(sc)
    hello = f.Hello(v=1, name="ana", sw="tunnel-mcp-python/1", caps=("files/1",))
    fallbacks = []
    for what, entry, event in [
        ("an offer", next(e for e in _file_frame_examples() if e[2].TYPE == "offer")[2],
         next(e for e in _file_frame_examples() if e[0].startswith("event file-offer "))[2]),
        ("its end", next(e for e in _file_frame_examples() if e[2].TYPE == "unoffer")[2],
         next(e for e in _file_frame_examples() if e[0].startswith("event file-offer-ended"))[2]),
    ]:
        fallbacks.append({"what": what, "files_1": frame_json(entry),
                          "without_files_1": frame_json(event),
                          "without_files_1_cbor_hex": event.encode().hex()})
    invalid = []
    for what, data, code in _files_invalid():
        try:
            f.decode_frame(data)
        except RemoteProtocolError as exc:
            assert exc.code == code, what
            invalid.append({"what": what, "cbor_hex": data.hex(), "error": "RemoteProtocolError",
                            "code": exc.code})
        else:
            raise AssertionError(f"decoded but should not: {what}")
    extra = _codec.encode({"t": "chunk", "x": 1, "at": 0, "data": b"abc", "zz": 1})
    accepted = [{"what": "a chunk with an unknown key (not the canonical four-key form: the "
                         "general decoder takes it)", "cbor_hex": extra.hex(),
                 "decodes_to": frame_json(f.decode_frame(extra))}]
    return {
        "description": (
            "Files (spec section 26): the capability, the chunk layout, the generic events for "
            "members without files/1, inputs a decoder must reject or accept, the paging of a "
            "long manifest, and a scripted transfer through the host."
        ),
        "format": FORMAT,
        "notation": NOTATION,
        "capability": {"cap": "files/1", "hello": frame_json(hello),
                       "hello_cbor_hex": hello.encode().hex(),
                       "welcome_caps": ["files/1"], "welcome_limits_key": "file_window"},
        "chunk_layout": {
            "doc": "Each case: the chunk frame of x, at and data_len bytes where data byte i is "
                   "i mod 256; the frame is prefix_hex followed by the data.",
            "cases": _chunk_layout(),
        },
        "fallbacks": fallbacks,
        "invalid": invalid,
        "accepted": accepted,
        "paging": _paging(),
        "scenario": {
            "doc": "The format of handshake-join.json. Steps member.share, member.fetch, "
                   "member.provide_chunk, member.grant, member.unshare, member.pull_bulk and "
                   "host.pull_bulk are the drivers' calls of the files API; host_events are "
                   "what the room told its own driver. Ana's file: byte i of orders.json is "
                   "i * 7 mod 256 (2500 bytes).",
            "tunnel_id": sc._tunnel_id(),
            "epoch_offset": EPOCH_OFFSET,
            "conventions": FILES_CONVENTIONS,
            "vocabulary": vocabulary(),
            "rng": {"doc": RNG_DOC, "seeds": {k: v.decode() for k, v in FILES_SEEDS.items()},
                    "calls": [c for s in sc.rngs.values() for c in s.calls]},
            "steps": sc.steps,
            "wire": sc.wire,
        },
    }


def build() -> dict[str, str]:
    """File name -> exact file text."""
    join, resume = build_handshakes()
    return {
        "link.json": dump(build_links()),
        "frames.json": dump(build_frames()),
        "handshake-join.json": dump(join),
        "handshake-resume.json": dump(resume),
        "phrase.json": dump(build_phrase()),
        "handshake-low-order.json": dump(build_low_order()),
        "files.json": dump(build_files()),
    }


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        stale = [n for n, text in files.items()
                 if not (VECTOR_DIR / n).exists() or (VECTOR_DIR / n).read_text("utf-8") != text]
        for name in stale:
            print(f"spec/vectors/{name} is out of date: run spec/make_vectors.py", file=sys.stderr)
        return 1 if stale else 0
    VECTOR_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (VECTOR_DIR / name).write_text(text, "utf-8")
        print(f"wrote spec/vectors/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
