"""tunnelproto against spec/vectors/ and spec/protocol.md, in both directions.

(a) Regenerating the vectors with the same fixed randomness gives byte-identical files, so any
    change to the wire format (or to what the vectors record) fails here until the vectors are
    regenerated on purpose: `.venv/bin/python spec/make_vectors.py`.
(b) The recorded bytes decode to the recorded values through the public API and the Noise layer,
    and a Room and MemberConnection fed the recorded randomness accept the recorded peer
    messages and answer with the recorded bytes. This part never runs make_vectors.py.
(c) spec/protocol.md names every frame, field, close code, refusal code, event kind and limit
    the code has, and its legality table equals the tables in _state.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError

import tunnelproto
from tunnelproto import (
    FILES_CAP,
    Disconnect,
    JoinLink,
    LinkError,
    MemberConnection,
    MemberEntry,
    RemoteProtocolError,
    Room,
    RoomConfig,
    Send,
    _codec,
    _files,
    _member,
    _phrase,
    _removal,
    _room,
)
from tunnelproto import _frames as f
from tunnelproto._channel import (
    MAX_MSG1,
    MSG2_NOISE,
    MSG2_PLAIN_REFUSE,
    PROLOGUE_LABEL,
    prologue,
)
from tunnelproto._link import (
    ID_LEN,
    INVITE_ID_LABEL,
    INVITE_PSK_LABEL,
    PSK_LEN,
    SECRET_LEN,
    TICKET_ID_LABEL,
    TICKET_PSK_LABEL,
    TUNNEL_ID_BYTES,
    invite_id,
    invite_psk,
    ticket_id,
    ticket_psk,
)
from tunnelproto._noise import PROTOCOL_NAME, CipherState, HandshakeState, SymmetricState
from tunnelproto._state import (
    MEMBER_ACCEPTS,
    MEMBER_ACCEPTS_FILES,
    MEMBER_HANDSHAKE_ACCEPTS,
    ROOM_ACCEPTS,
    ROOM_ACCEPTS_FILES,
    ConnState,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC_DIR = ROOT / "spec"
VECTOR_DIR = SPEC_DIR / "vectors"
SPEC_FILE = SPEC_DIR / "protocol.md"
GENERATED = (
    "link.json",
    "frames.json",
    "handshake-join.json",
    "handshake-resume.json",
    "phrase.json",
    "handshake-low-order.json",
    "files.json",
)
MAX_SAFE_INTEGER = 2**53 - 1
FRAME_TYPES = {cls.TYPE: cls for cls in f.Frame.__subclasses__()}


@cache
def load(name: str) -> Any:
    return json.loads((VECTOR_DIR / name).read_text("utf-8"))


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


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$hex"}:
            return bytes.fromhex(value["$hex"])
        if set(value) == {"$int"}:
            number = int(value["$int"])
            assert abs(number) > MAX_SAFE_INTEGER, "small integers are plain JSON numbers"
            return number
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def event_json(event: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"event": type(event).__name__}
    for fld in dataclasses.fields(event):
        item = getattr(event, fld.name)
        if isinstance(item, tuple) and item and isinstance(item[0], MemberEntry):
            item = [m.to_value() for m in item]
        out[fld.name] = to_json(item)
    return out


def _first_difference(a: Any, b: Any, path: str = "$") -> str | None:
    if type(a) is not type(b):
        return f"{path}: {a!r:.80} != {b!r:.80}"
    if isinstance(a, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{path}.{key}: only in one of them"
            diff = _first_difference(a[key], b[key], f"{path}.{key}")
            if diff:
                return diff
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            diff = _first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None if len(a) == len(b) else f"{path}: lengths {len(a)} != {len(b)}"
    return None if a == b else f"{path}: {a!r:.80} != {b!r:.80}"


# =============================================================================================
# (a) regeneration
# =============================================================================================


@pytest.fixture(scope="module")
def regenerated() -> dict[str, str]:
    name = "_tunnel_spec_make_vectors"
    module_spec = importlib.util.spec_from_file_location(name, SPEC_DIR / "make_vectors.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        module_spec.loader.exec_module(module)
        files: dict[str, str] = module.build()
    finally:
        del sys.modules[name]
    return files


def test_generator_writes_exactly_the_committed_files(regenerated: dict[str, str]) -> None:
    assert sorted(regenerated) == sorted(GENERATED)


@pytest.mark.parametrize("name", GENERATED)
def test_regenerated_vectors_are_byte_identical(regenerated: dict[str, str], name: str) -> None:
    committed = (VECTOR_DIR / name).read_text("utf-8")
    if regenerated[name] != committed:
        where = _first_difference(json.loads(committed), json.loads(regenerated[name]))
        pytest.fail(
            f"spec/vectors/{name} no longer matches the implementation (first difference: "
            f"{where}). If the wire format changed on purpose, run "
            "`.venv/bin/python spec/make_vectors.py`, update spec/protocol.md, and commit both."
        )


# =============================================================================================
# (b) decoding the recorded bytes
# =============================================================================================

# ---- links ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", load("link.json")["valid"], ids=lambda c: c["what"][:40])
def test_valid_link(case: dict[str, Any]) -> None:
    link = JoinLink.parse(case["input"])
    assert link.base_url == case["base_url"]
    assert link.tunnel_id == case["tunnel_id"]
    assert link.secret.hex() == case["secret_hex"]
    assert link.invite_id.hex() == case["invite_id_hex"]
    assert link.websocket_url == case["websocket_url"]
    assert str(link) == case["canonical"]
    assert JoinLink.parse(case["canonical"]) == link
    # The documented construction, computed without tunnelproto.
    documented = hashlib.blake2b(
        b"tunnel-mcp/1 invite-id" + case["tunnel_id"].encode("ascii"),
        key=bytes.fromhex(case["secret_hex"]),
        digest_size=16,
    ).digest()
    assert documented.hex() == case["invite_id_hex"]
    psk = hashlib.blake2b(
        b"tunnel-mcp/1 invite-psk" + case["tunnel_id"].encode("ascii"),
        key=bytes.fromhex(case["secret_hex"]),
        digest_size=32,
    ).digest()
    assert psk.hex() == case["invite_psk_hex"] == link.psk.hex() != case["secret_hex"]
    assert case["secret_hex"] not in repr(link)


@pytest.mark.parametrize("case", load("link.json")["invalid"], ids=lambda c: c["what"][:40])
def test_invalid_link(case: dict[str, Any]) -> None:
    assert case["error"] == "LinkError"
    with pytest.raises(LinkError) as info:
        JoinLink.parse(case["input"])
    assert info.value.code == case["code"]
    secret_text = case["input"].partition("#")[2].strip()
    if len(secret_text) >= 8:
        assert secret_text not in str(info.value)  # errors never echo the secret


def test_key_ids() -> None:
    doc = load("link.json")["key_ids"]
    assert bytes.fromhex(doc["invite_label_hex"]) == INVITE_ID_LABEL == doc["invite_label_ascii"].encode()
    assert bytes.fromhex(doc["ticket_label_hex"]) == TICKET_ID_LABEL == doc["ticket_label_ascii"].encode()
    assert bytes.fromhex(doc["invite_psk_label_hex"]) == INVITE_PSK_LABEL
    assert bytes.fromhex(doc["ticket_psk_label_hex"]) == TICKET_PSK_LABEL
    assert INVITE_PSK_LABEL == doc["invite_psk_label_ascii"].encode()
    assert TICKET_PSK_LABEL == doc["ticket_psk_label_ascii"].encode()
    assert (doc["id_len"], doc["psk_len"]) == (ID_LEN, PSK_LEN) == (16, 32)
    for ex in doc["examples"]:
        secret, tid = bytes.fromhex(ex["secret_hex"]), ex["tunnel_id"]
        for label, name, size, derive in (
            (INVITE_ID_LABEL, "invite_id", ID_LEN, invite_id),
            (TICKET_ID_LABEL, "ticket_id", ID_LEN, ticket_id),
            (INVITE_PSK_LABEL, "invite_psk", PSK_LEN, invite_psk),
            (TICKET_PSK_LABEL, "ticket_psk", PSK_LEN, ticket_psk),
        ):
            data = bytes.fromhex(ex[f"{name}_input_hex"])
            assert data == label + tid.encode("ascii")
            expected = ex[f"{name}_hex"]
            assert hashlib.blake2b(data, key=secret, digest_size=size).hexdigest() == expected
            assert derive(secret, tid).hex() == expected
        values = [ex[f"{n}_hex"] for n in ("invite_id", "ticket_id", "invite_psk", "ticket_psk")]
        assert len(set(values + [ex["secret_hex"]])) == 5


def test_prologue() -> None:
    for ex in load("link.json")["prologue"]["examples"]:
        documented = b"tunnel-mcp/1" + b"\x00" + b"\x01" + ex["tunnel_id"].encode("ascii")
        assert documented.hex() == ex["prologue_hex"] == prologue(ex["tunnel_id"]).hex()


# ---- frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", load("frames.json")["frames"], ids=lambda c: c["what"][:40])
def test_frame_vector(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["cbor_hex"])
    frame = f.decode_frame(data)
    assert frame.TYPE == case["type"]
    assert type(frame) is FRAME_TYPES[case["type"]]
    assert to_json(frame.to_value()) == case["value"]
    assert frame.encode() == data
    # The encoder, fed only the JSON description, writes the same bytes.
    assert _codec.encode(from_json(case["value"])) == data


def test_frame_vectors_cover_every_frame_type() -> None:
    assert {c["type"] for c in load("frames.json")["frames"]} == set(FRAME_TYPES)
    kinds = {c["value"]["kind"] for c in load("frames.json")["frames"] if c["type"] == "event"}
    assert kinds == set(f.EVENT_KINDS)


@pytest.mark.parametrize("case", load("frames.json")["accepted"], ids=lambda c: c["what"][:40])
def test_frame_accepted_variant(case: dict[str, Any]) -> None:
    frame = f.decode_frame(bytes.fromhex(case["cbor_hex"]))
    assert to_json(frame.to_value()) == case["decodes_to"]
    assert frame.encode().hex() == case["canonical_hex"] != case["cbor_hex"]


@pytest.mark.parametrize("case", load("frames.json")["invalid"], ids=lambda c: c["what"][:40])
def test_frame_invalid(case: dict[str, Any]) -> None:
    assert case["error"] == "RemoteProtocolError"
    with pytest.raises(RemoteProtocolError) as info:
        f.decode_frame(bytes.fromhex(case["cbor_hex"]))
    assert info.value.code == case["code"]


@pytest.mark.parametrize("case", load("frames.json")["batches"], ids=lambda c: c["what"][:40])
def test_batch_vector(case: dict[str, Any]) -> None:
    """batch/1 (section 8.3): the plaintext is the frames' encodings back to back, read in
    order; a batch of one is exactly the plain layout."""
    data = bytes.fromhex(case["plaintext_hex"])
    frames = f.decode_frames(data)
    assert [(fr.TYPE, to_json(fr.to_value())) for fr in frames] == [
        (c["type"], c["value"]) for c in case["frames"]
    ]
    # An encoder fed only the JSON writes the same bytes, frame after frame.
    assert b"".join(_codec.encode(from_json(c["value"])) for c in case["frames"]) == data
    if len(frames) == 1:
        assert f.decode_frame(data) == frames[0]
    else:
        with pytest.raises(RemoteProtocolError):
            f.decode_frame(data)  # without batch/1 in force the same bytes are malformed


@pytest.mark.parametrize(
    "case", load("frames.json")["invalid_batches"], ids=lambda c: c["what"][:40]
)
def test_batch_invalid(case: dict[str, Any]) -> None:
    assert case["error"] == "RemoteProtocolError"
    with pytest.raises(RemoteProtocolError) as info:
        f.decode_frames(bytes.fromhex(case["plaintext_hex"]))
    assert info.value.code == case["code"]


@pytest.mark.parametrize(
    "case", load("frames.json")["unknown_event_kinds"], ids=lambda c: c["what"][:40]
)
def test_unknown_event_kinds_decode_as_generic_events(case: dict[str, Any]) -> None:
    frame = f.decode_frame(bytes.fromhex(case["cbor_hex"]))
    assert isinstance(frame, f.Event) and frame.kind not in f.EVENT_KINDS
    assert to_json(frame.to_value()) == case["value"]
    assert frame.encode().hex() == case["cbor_hex"]


def test_a_member_keeps_an_unknown_event_kind_in_the_total_order() -> None:
    """What section 9 asks of a member, with the vectors' frames: delivered, in order."""
    from harness import FakeHost

    link = JoinLink("https://h.example", "abcdefghijklmnop", bytes(range(32)))
    member = MemberConnection(link, "ana", 0.0)
    host = FakeHost(link)
    member.receive_data(host.welcome(member.data_to_send()[0]), 0.0)
    frames = [f.decode_frame(bytes.fromhex(c["cbor_hex"])) for c in load("frames.json")["unknown_event_kinds"]]
    seq = 0
    for frame in frames:
        assert isinstance(frame, f.Event)
        seq += 1
        member.receive_data(host.frame(dataclasses.replace(frame, seq=seq)), 0.0)
    events = []
    while (event := member.next_event()) is not None:
        events.append(event)
    kinds = [(e.seq, e.kind, e.member_id, e.name, e.summary) for e in events if isinstance(e, tunnelproto.RoomEvent)]
    assert kinds == [(i + 1, fr.kind, fr.member, fr.name, fr.summary) for i, fr in enumerate(frames)]  # type: ignore[attr-defined]
    assert member.state.value == "open"


# ---- the verification phrase ------------------------------------------------------------------


def test_wordlist_is_the_same_file_in_spec_and_in_the_package() -> None:
    from importlib import resources

    shipped = resources.files("tunnelproto").joinpath("wordlist.txt").read_bytes()
    spec = (SPEC_DIR / "wordlist.txt").read_bytes()
    assert shipped == spec
    assert hashlib.sha256(spec).hexdigest() == _phrase.WORDLIST_SHA256 == load("phrase.json")["wordlist"]["sha256"]
    words = spec.decode("ascii").split("\n")
    assert words[-1] == "" and len(words[:-1]) == 2048 == len(set(words[:-1]))
    assert all(re.fullmatch(r"[a-z]{3,8}", w) for w in words[:-1])
    # The license travels with the list, in both places.
    for text in (
        resources.files("tunnelproto").joinpath("wordlist-LICENSE.txt").read_text("utf-8"),
        (SPEC_DIR / "wordlist-LICENSE.txt").read_text("utf-8"),
    ):
        assert "MIT License" in text and "Pavol Rusnak" in text


@pytest.mark.parametrize("case", load("phrase.json")["examples"], ids=lambda c: c["what"][:40])
def test_phrase_vector(case: dict[str, Any]) -> None:
    PHRASE_LABEL, phrase_indices = _phrase.PHRASE_LABEL, _phrase.phrase_indices
    doc = load("phrase.json")
    assert PHRASE_LABEL == doc["label"].encode("ascii") == bytes.fromhex(doc["label_hex"])
    h = bytes.fromhex(case["handshake_hash_hex"])
    data = bytes.fromhex(case["blake2b_input_hex"])
    assert data == PHRASE_LABEL + h
    # Recomputed from the recorded bytes with nothing of ours but the word list.
    digest = hashlib.blake2b(data).digest()
    assert digest.hex() == case["blake2b_512_hex"]
    top = int.from_bytes(digest, "big") >> (512 - 44)
    assert f"{top:011x}" == case["first_44_bits_hex"]
    indices = [(top >> (11 * (3 - k))) & 0x7FF for k in range(4)]
    assert indices == case["indices"] == list(phrase_indices(h))
    words = (SPEC_DIR / "wordlist.txt").read_text("ascii").split("\n")
    assert [words[i] for i in indices] == case["words"]
    assert tunnelproto.derive_phrase(h) == case["phrase"] == " ".join(case["words"])


def test_phrase_vectors_cover_both_ends_of_the_list() -> None:
    used = {i for case in load("phrase.json")["examples"] for i in case["indices"]}
    assert {0, 2047} <= used


def test_phrase_of_the_scenario_join_is_derived_from_its_recorded_hash() -> None:
    scenario = load("phrase.json")["scenario"]
    wire = _wire()
    join, resume = scenario["join"], scenario["resume"]
    assert wire[join["wire"]]["handshake_hash"] == join["handshake_hash_hex"]
    assert wire[resume["wire"]]["handshake_hash"] == resume["handshake_hash_hex"]
    assert tunnelproto.derive_phrase(bytes.fromhex(join["handshake_hash_hex"])) == join["phrase"]
    assert resume["phrase_kept"] == join["phrase"] != resume["phrase_of_this_hash_not_used"]


@pytest.mark.parametrize("case", load("frames.json")["cbor"], ids=lambda c: c["what"][:40])
def test_cbor_primitive(case: dict[str, Any]) -> None:
    value = from_json(case["value"])
    data = bytes.fromhex(case["cbor_hex"])
    assert _codec.encode(value) == data
    assert _codec.decode(data) == value


# ---- handshakes and transport, through the Noise layer alone -------------------------------


def _scenario() -> tuple[dict[str, Any], dict[str, Any]]:
    return load("handshake-join.json"), load("handshake-resume.json")


def _rng_calls() -> dict[tuple[str, int], dict[str, Any]]:
    return {(c["stream"], c["index"]): c for doc in _scenario() for c in doc["rng"]["calls"]}


def _wire() -> dict[int, dict[str, Any]]:
    return {w["i"]: w for doc in _scenario() for w in doc["wire"]}


def _handshake_cases() -> list[dict[str, Any]]:
    """One case per Noise-answered handshake: psk, both ephemerals, both messages."""
    join, resume = _scenario()
    calls, wire = _rng_calls(), _wire()
    steps = join["steps"] + resume["steps"]
    tunnel_id = join["tunnel_id"]
    psk = {
        "invite": invite_psk(bytes.fromhex(join["invite_secret_hex"]), tunnel_id),
        "ticket": ticket_psk(bytes.fromhex(resume["ticket_secret_hex"]), tunnel_id),
    }
    assert psk["invite"].hex() == join["invite_psk_hex"]
    assert psk["ticket"].hex() == resume["ticket_psk_hex"]
    cases = []
    for step in steps:
        if step["do"] != "member.connect":
            continue
        actor = step["args"]["actor"]
        (msg1_i,) = step["emits"]
        e_member = calls[(step["rng"][0]["stream"], step["rng"][0]["index"])]
        deliver = next(s for s in steps if s["do"] == "deliver" and s["args"]["wire"] == [msg1_i])
        msg2 = wire[deliver["emits"][0]]
        if msg2["kind"] != "handshake-2":
            continue  # a plaintext refusal: no Noise reply to check
        e_host = calls[(deliver["rng"][0]["stream"], deliver["rng"][0]["index"])]
        assert (e_member["purpose"], e_member["role"], e_member["actor"]) == (
            "noise-ephemeral",
            "member",
            actor,
        )
        assert (e_host["purpose"], e_host["role"], e_host["actor"]) == (
            "noise-ephemeral",
            "host",
            actor,
        )
        cases.append(
            {
                "actor": actor,
                "psk": psk["ticket" if step["args"].get("resume_from") else "invite"],
                "e_member": bytes.fromhex(e_member["hex"]),
                "e_host": bytes.fromhex(e_host["hex"]),
                "msg1": wire[msg1_i],
                "msg2": msg2,
            }
        )
    assert [c["actor"] for c in cases] == ["ana/1", "eve", "ana/2"]
    return cases


@pytest.mark.parametrize("case", _handshake_cases(), ids=lambda c: c["actor"])
def test_handshake_bytes(case: dict[str, Any]) -> None:
    join, _ = _scenario()
    tunnel_id = join["tunnel_id"]
    pro = bytes.fromhex(join["prologue_hex"])
    assert pro == PROLOGUE_LABEL + b"\x00\x01" + tunnel_id.encode("ascii")
    assert join["protocol_name"] == PROTOCOL_NAME.decode()
    psk, m1, m2 = case["psk"], case["msg1"], case["msg2"]

    msg1 = bytes.fromhex(m1["hex"])
    resume = m1["layout"]["key_id_is"] == "ticket id"
    join, resume_doc = _scenario()
    secret = bytes.fromhex(resume_doc["ticket_secret_hex"] if resume else join["invite_secret_hex"])
    key_id = (ticket_id if resume else invite_id)(secret, tunnel_id)
    assert msg1[0] == 1 and msg1[1:17] == key_id
    assert msg1[17:49] == crypto_scalarmult_base(case["e_member"])
    assert 65 <= len(msg1) <= MAX_MSG1
    layout = m1["layout"]
    assert bytes.fromhex(layout["version"] + layout["key_id"] + layout["e"] + layout["encrypted_payload"]) == msg1

    hello = bytes.fromhex(m1["payload_hex"])
    assert to_json(f.decode_frame(hello).to_value()) == m1["payload"]
    assert ("last" in m1["payload"]) == resume
    ini = HandshakeState(initiator=True, prologue=pro, psk=psk, ephemeral_private=case["e_member"])
    res = HandshakeState(initiator=False, prologue=pro, psk=psk, ephemeral_private=case["e_host"])
    assert ini.write_message(hello) == msg1[17:]
    assert res.read_message(msg1[17:]) == hello

    msg2 = bytes.fromhex(m2["hex"])
    assert msg2[0] == MSG2_NOISE and msg2[1:33] == crypto_scalarmult_base(case["e_host"])
    payload = bytes.fromhex(m2["payload_hex"])
    assert to_json(f.decode_frame(payload).to_value()) == m2["payload"]
    assert res.write_message(payload) == msg2[1:]
    assert ini.read_message(msg2[1:]) == payload
    assert ini.handshake_hash.hex() == res.handshake_hash.hex() == m2["handshake_hash"]
    send, recv = ini.split()
    assert send.encrypt_with_ad(b"", b"") == CipherState(
        bytes.fromhex(m2["transport_keys"]["member->host"])
    ).encrypt_with_ad(b"", b"")
    assert recv.encrypt_with_ad(b"", b"") == CipherState(
        bytes.fromhex(m2["transport_keys"]["host->member"])
    ).encrypt_with_ad(b"", b"")


def test_transport_messages_decrypt_to_the_recorded_frames() -> None:
    keys = {
        c["actor"]: {d: bytes.fromhex(k) for d, k in c["msg2"]["transport_keys"].items()}
        for c in _handshake_cases()
    }
    next_nonce: dict[tuple[str, str], int] = {}
    transport = [w for w in _wire().values() if w["kind"] == "transport"]
    assert len(transport) >= 15
    for w in transport:
        slot = (w["actor"], w["dir"])
        assert w["nonce"] == next_nonce.get(slot, 0), "nonces count up from 0 per direction"
        next_nonce[slot] = w["nonce"] + 1
        cipher = CipherState(keys[w["actor"]][w["dir"]])
        cipher.set_nonce(w["nonce"])
        plaintext = cipher.decrypt_with_ad(b"", bytes.fromhex(w["hex"]))
        assert plaintext.hex() == w["plaintext_hex"]
        frame = f.decode_frame(plaintext)
        assert to_json(frame.to_value()) == w["frame"]
        assert frame.encode() == plaintext


def test_first_transport_frame_is_the_confirmation_ack() -> None:
    firsts: dict[str, dict[str, Any]] = {}
    for w in sorted(_wire().values(), key=lambda w: w["i"]):
        if w["kind"] == "transport" and w["dir"] == "member->host":
            firsts.setdefault(w["actor"], w)
    assert firsts["ana/1"]["frame"] == {"t": "ack", "seq": 0}
    assert firsts["ana/2"]["frame"] == {"t": "ack", "seq": 3}


def test_plaintext_refusal_layout() -> None:
    plain = [w for w in _wire().values() if w["kind"] == "handshake-2-plain-refuse"]
    assert plain
    for w in plain:
        data = bytes.fromhex(w["hex"])
        assert data[0] == MSG2_PLAIN_REFUSE
        frame = f.decode_frame(data[1:])
        assert isinstance(frame, f.Refuse) and to_json(frame.to_value()) == w["payload"]


# ---- the scenario, replayed against Room and MemberConnection ------------------------------


class ReplayRng:
    """Returns the recorded random bytes of one stream, in order, checking each size."""

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self._calls = calls
        assert [c["index"] for c in calls] == list(range(len(calls)))

    def __call__(self, n: int) -> bytes:
        assert self._calls, "the implementation drew more randomness than recorded"
        call = self._calls.pop(0)
        assert call["n"] == n, f"rng({n}) where {call['n']} bytes were recorded ({call['used_for']})"
        return bytes.fromhex(call["hex"])

    def exhausted(self) -> bool:
        return not self._calls


def test_scenario_replays_byte_for_byte() -> None:
    join, resume = _scenario()
    wire = _wire()
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(_rng_calls()):
        call = _rng_calls()[key]
        by_stream.setdefault(call["stream"], []).append(call)
    rngs = {name: ReplayRng(calls) for name, calls in by_stream.items()}

    room: Room | None = None
    members: dict[str, MemberConnection] = {}
    conn_of: dict[str, int] = {}
    actor_of: dict[int, str] = {}
    phrases: dict[int, str] = {}
    for step in join["steps"] + resume["steps"]:
        t, do, args, result = step["t"], step["do"], step["args"], step.get("result")
        if do == "room.create":
            room = Room(args["goal"], args["host_name"], t, rng=rngs["room"],
                        epoch_offset=args["epoch_offset"])
            assert room.tunnel_id == result["tunnel_id"] == join["tunnel_id"]
        assert room is not None
        if do == "host.say":
            assert room.say(args["text"], t).seq == result["seq"]
        elif do == "host.mint_invites":
            invites = room.mint_invites(args["count"], t)
            links = [str(inv.link(args["base_url"], room.tunnel_id)) for inv in invites]
            assert links == result["links"]
        elif do == "member.connect":
            state = members[args["resume_from"]].resume_state() if args.get("resume_from") else None
            member = MemberConnection(JoinLink.parse(args["link"]), args["name"], t,
                                      resume=state, rng=rngs[args["rng"]])
            conn = room.open_connection(t)
            assert conn == result["conn"]
            members[args["actor"]] = member
            conn_of[args["actor"]], actor_of[conn] = conn, args["actor"]
        elif do == "member.say":
            assert members[args["actor"]].say(args["text"]) == result["ref"]
        elif do == "member.leave":
            members[args["actor"]].leave()
        elif do == "deliver":
            for i in args["wire"]:
                msg = wire[i]
                data = bytes.fromhex(msg["hex"])  # the recorded bytes, not ours
                if msg["dir"] == "member->host":
                    room.receive(msg["conn"], data, t)
                else:
                    members[msg["actor"]].receive_data(data, t)
        elif do == "drop":
            room.connection_lost(conn_of[args["actor"]], t)
            members[args["actor"]].connection_lost(t)
        elif do != "room.create":
            raise AssertionError(f"unknown step {do!r}")

        got: list[tuple[Any, ...]] = []
        for out in room.data_to_send():
            if isinstance(out, Send):
                got.append(("host->member", actor_of[out.conn], out.data.hex()))
            else:
                assert isinstance(out, Disconnect)
                got.append(("disconnect", actor_of[out.conn], out.code, out.reason))
        for actor, member in members.items():
            got += [("member->host", actor, data.hex()) for data in member.data_to_send()]
        expected: list[tuple[Any, ...]] = []
        for i in step["emits"]:
            w = wire[i]
            if w["kind"] == "disconnect":
                expected.append(("disconnect", w["actor"], w["code"], w["reason"]))
            else:
                expected.append((w["dir"], w["actor"], w["hex"]))
        assert got == expected, f"step {step['i']} ({do}) emitted other messages"

        events = {}
        for actor, member in members.items():
            seen = []
            while (event := member.next_event()) is not None:
                if isinstance(event, tunnelproto.Welcomed):
                    # The phrase both ends hold is the one phrase.json derives from the join.
                    assert event.phrase == load("phrase.json")["scenario"]["join"]["phrase"]
                    phrases[event.member_id] = event.phrase
                seen.append(event_json(event))
            if seen:
                events[actor] = seen
        assert events == step.get("events", {}), f"step {step['i']} ({do}) reported other events"
    assert all(rng.exhausted() for rng in rngs.values())
    assert room is not None and phrases
    # The room's side of the same join (its seat is gone by the end: the member left).
    joined = {e.member: e.phrase for e in room.entries_since(0) if e.event == "joined"}
    assert all(joined[member_id] == phrase for member_id, phrase in phrases.items())


def test_a_small_order_ephemeral_gives_an_all_zero_dh_that_is_used() -> None:
    doc = load("handshake-low-order.json")
    pro = bytes.fromhex(doc["prologue_hex"])
    assert pro == prologue(doc["tunnel_id"])
    assert len(doc["cases"]) >= 2
    for case in doc["cases"]:
        secret = bytes.fromhex(case["invite_secret_hex"])
        psk = invite_psk(secret, doc["tunnel_id"])
        assert psk.hex() == case["invite_psk_hex"]
        e, e_host = bytes.fromhex(case["e_hex"]), bytes.fromhex(case["host_e_private_hex"])
        hello = bytes.fromhex(case["hello_hex"])
        # libsodium, like many X25519 libraries, refuses these keys: the rule (spec section 5)
        # is to use 32 zero bytes, which X25519 itself (RFC 7748) would output.
        with pytest.raises(CryptoError):
            crypto_scalarmult(e_host, e)
        assert case["ee_output_hex"] == "00" * 32
        # Message 1, written without any private key (NNpsk0's first message is psk, e).
        ini = SymmetricState(PROTOCOL_NAME)
        ini.mix_hash(pro)
        ini.mix_key_and_hash(psk)
        ini.mix_hash(e)
        ini.mix_key(e)
        msg1 = bytes([1]) + invite_id(secret, doc["tunnel_id"]) + e + ini.encrypt_and_hash(hello)
        assert msg1.hex() == case["msg1_hex"]
        # The host's side, through the Noise layer: it answers instead of failing.
        res = HandshakeState(initiator=False, prologue=pro, psk=psk, ephemeral_private=e_host)
        assert res.read_message(msg1[17:]) == hello
        welcome = bytes.fromhex(case["welcome_hex"])
        msg2 = bytes.fromhex(case["msg2_hex"])
        assert msg2[0] == MSG2_NOISE and res.write_message(welcome) == msg2[1:]
        assert to_json(f.decode_frame(welcome).to_value()) == case["welcome"]
        # The sender of the small-order key finishes the handshake with ee = zeros.
        ini.mix_hash(msg2[1:33])
        ini.mix_key(msg2[1:33])
        ini.mix_key(bytes(32))
        assert ini.decrypt_and_hash(msg2[33:]) == welcome
        assert ini.get_handshake_hash().hex() == case["handshake_hash"] == res.handshake_hash.hex()
        send, recv = ini.split()
        keys = case["transport_keys"]
        for cipher, direction in ((send, "member->host"), (recv, "host->member")):
            assert cipher.encrypt_with_ad(b"", b"") == CipherState(
                bytes.fromhex(keys[direction])
            ).encrypt_with_ad(b"", b"")
        assert send.encrypt_with_ad(b"", b"") != b""  # (keys checked; nonce 0 used above)


def test_the_room_seats_a_member_whose_ephemeral_has_small_order() -> None:
    doc = load("handshake-low-order.json")
    rng = ReplayRng(list(doc["rng"]["calls"]))
    room = Room(doc["goal"], doc["host_name"], doc["t"], rng=rng, epoch_offset=doc["epoch_offset"])
    assert room.tunnel_id == doc["tunnel_id"]
    room.mint_invites(len(doc["cases"]), doc["t"])
    for case in doc["cases"]:
        conn = room.open_connection(doc["t"])
        assert conn == case["conn"]
        room.receive(conn, bytes.fromhex(case["msg1_hex"]), doc["t"])
        (reply,) = room.data_to_send()
        assert isinstance(reply, Send) and reply.data.hex() == case["msg2_hex"]
        room.receive(conn, bytes.fromhex(case["ack_hex"]), doc["t"])
        recv = CipherState(bytes.fromhex(case["transport_keys"]["host->member"]))
        got = [
            to_json(f.decode_frame(recv.decrypt_with_ad(b"", out.data)).to_value())
            for out in room.data_to_send()
            if isinstance(out, Send) and out.conn == conn
        ]
        assert got == case["room_answers_the_ack_with"]
        assert any(frame.get("kind") == "joined" for frame in got)
    assert rng.exhausted()


def _walk(value: Any) -> Any:
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)
    else:
        yield value


@pytest.mark.parametrize("name", GENERATED)
def test_no_integer_in_the_vectors_is_beyond_2_53(name: str) -> None:
    # JavaScript's JSON.parse silently rounds 2^64 - 1; such integers are {"$int": "..."}.
    assert all(
        abs(v) <= MAX_SAFE_INTEGER for v in _walk(load(name)) if isinstance(v, int)
    )


def test_big_integers_are_written_as_decimal_strings() -> None:
    values = {c["what"]: c["value"] for c in load("frames.json")["cbor"]}
    assert values["2^64 - 1 (largest)"] == {"$int": str(2**64 - 1)}
    assert values["-2^64 (smallest)"] == {"$int": str(-(2**64))}
    assert values["2^32"] == 2**32  # within 2^53: a plain number


SPEC_PURPOSES = ("tunnel-id", "invite-secret", "ticket-secret", "noise-ephemeral")


@pytest.mark.parametrize("name", [n for n in GENERATED if n not in ("frames.json", "phrase.json")])
def test_every_random_draw_is_tagged_with_role_actor_and_purpose(name: str) -> None:
    doc = load(name)
    calls = (doc["rng"] if "rng" in doc else doc["scenario"]["rng"])["calls"]
    assert calls
    for call in calls:
        assert call["role"] in ("host", "member", "generator"), call
        assert call["actor"] is None or isinstance(call["actor"], str), call
        if call["role"] == "generator":
            assert call["purpose"] in ("link-secret", "tunnel-id-example"), call
        else:
            assert call["purpose"] in SPEC_PURPOSES, call
        if call["purpose"] == "noise-ephemeral":
            assert call["actor"] is not None and call["n"] == 32
        assert call["n"] == (12 if call["purpose"].startswith("tunnel-id") else 32)
    section = _chapter("22.")
    for purpose in SPEC_PURPOSES:
        assert f"`{purpose}`" in section, f"spec section 22 does not define purpose {purpose!r}"


def test_step_and_event_vocabulary_is_defined_and_used_exactly() -> None:
    member_events = {
        cls.__name__: [fld.name for fld in dataclasses.fields(cls)]
        for cls in tunnelproto.TunnelEvent.__subclasses__()
    }
    section = _chapter("22.")
    docs = (*_scenario(), load("files.json")["scenario"])
    for doc in docs:
        vocabulary = doc["vocabulary"]
        assert vocabulary == docs[0]["vocabulary"]  # one vocabulary for every scenario
        assert vocabulary["events"] == member_events
        for step in doc["steps"]:
            assert step["do"] in vocabulary["steps"], step["do"]
            for got in (*step.get("events", {}).values(), step.get("host_events", [])):
                for event in got:
                    fields = [k for k in event if k != "event"]
                    assert fields == member_events[event["event"]], event
        assert set(doc["conventions"]) >= {"steps", "acks", "deliver", "messages"}
    for step_kind in _scenario()[0]["vocabulary"]["steps"]:
        assert f"`{step_kind}`" in section, f"spec section 22: no step {step_kind!r}"
    for name, fields in member_events.items():
        row = _row_with(f"| `{name}` |")
        assert row is not None, f"spec section 22: no row for event {name}"
        for fld in fields:
            assert f"`{fld}`" in row, f"spec: event {name} lacks field {fld!r}"


def test_resume_vectors_tell_a_consistent_story() -> None:
    join, resume = _scenario()
    wire = _wire()
    tunnel_id = join["tunnel_id"]
    first_welcome = next(w for w in wire.values() if w["kind"] == "handshake-2" and w["actor"] == "ana/1")
    assert first_welcome["payload"]["ticket"]["$hex"] == resume["ticket_secret_hex"]
    ticket = bytes.fromhex(resume["ticket_secret_hex"])
    assert ticket_id(ticket, tunnel_id).hex() == resume["ticket_id_hex"]
    msg1 = next(w for w in wire.values() if w["kind"] == "handshake-1" and w["actor"] == "ana/2")
    assert msg1["layout"]["key_id"] == resume["ticket_id_hex"]
    assert msg1["payload"]["last"] == 3
    replay = [w["frame"]["seq"] for w in resume["wire"]
              if w["kind"] == "transport" and w["frame"]["t"] in ("message", "event")]
    assert replay == [4, 5, 6, 7]
    # The lost say is re-sent with the same ref and stamped once.
    lost = [w for w in wire.values() if w.get("lost")]
    assert len(lost) == 1 and lost[0]["frame"]["t"] == "say"
    stamped = [w for w in wire.values() if w["kind"] == "transport" and w["frame"]["t"] == "message"
               and w["frame"]["ref"] == lost[0]["frame"]["ref"] and w["frame"]["from"] == 2]
    assert len(stamped) == 1
    # The retired ticket is refused in plaintext.
    old = next(w for w in wire.values() if w["actor"] == "ana/old-ticket" and w["kind"] == "handshake-1")
    assert old["layout"]["key_id"] == resume["ticket_id_hex"]
    refusal = next(w for w in wire.values() if w["actor"] == "ana/old-ticket" and w["dir"] == "host->member"
                   and w["kind"] == "handshake-2-plain-refuse")
    assert refusal["payload"]["code"] == "unknown-invite"


# =============================================================================================
# (c) the spec names everything the code has
# =============================================================================================


@cache
def spec_text() -> str:
    return SPEC_FILE.read_text("utf-8")


def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def _row_with(*needles: str) -> str | None:
    return next((r for r in _rows(spec_text()) if all(n in r for n in needles)), None)


def _section(heading_needle: str, prefix: str = "#") -> str:
    """The text from the first heading (starting with `prefix`) that contains the needle."""
    lines = spec_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(prefix) and heading_needle in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[start:end])


def _chapter(number: str) -> str:
    """A numbered `## ` section with all its subsections."""
    lines = spec_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {number} "))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end])


def _num(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def test_spec_exists() -> None:
    assert SPEC_FILE.is_file()
    assert len(spec_text()) > 20_000


@pytest.mark.parametrize("frame_type", sorted(FRAME_TYPES))
def test_spec_documents_every_frame_and_field(frame_type: str) -> None:
    section = _section(f"`{frame_type}`", prefix="#### ")
    cls = FRAME_TYPES[frame_type]
    wire_names = ["from" if fld.name == "from_" else fld.name for fld in dataclasses.fields(cls)]
    for name in wire_names:
        assert f"| `{name}` |" in section, f"spec: field {frame_type}.{name} has no table row"
    assert _row_with(f"| `{frame_type}` |"), f"spec: {frame_type} missing from the frame tables"


def test_spec_documents_member_entries() -> None:
    section = _section("`welcome`", prefix="#### ")
    for fld in dataclasses.fields(MemberEntry):
        assert f"| `{fld.name}` |" in section


def test_spec_documents_every_close_code() -> None:
    names = [n for n in tunnelproto.__all__ if n.startswith("CLOSE_")]
    assert len(names) >= 10
    values = [getattr(tunnelproto, n) for n in names]
    assert len(set(values)) == len(values), "two close constants share a code"
    for name, value in zip(names, values, strict=True):
        assert _row_with(f"| {value} |", f"`{name}`"), f"spec: no close-code row for {name}={value}"
    for code in (1003, 1009):  # the relay's own (issue 3)
        assert _row_with(f"| {code} |")


def test_spec_documents_every_event_kind_refusal_and_timer() -> None:
    section = _section("`event`", prefix="#### ")
    # Every kind we send has its fields rule, so the decoder checks what the spec requires.
    assert set(f.EVENT_FIELDS) == set(f.EVENT_KINDS)
    for kind in f.EVENT_KINDS:
        assert f"| `{kind}` |" in section, kind
        required, optional = f.EVENT_FIELDS[kind]
        row = next(line for line in section.splitlines() if line.startswith(f"| `{kind}` |"))
        assert all(f"`{name}`" in row for name in required | optional), kind
    refusals = _section("### 19.1")
    for code in _room.REFUSAL_MESSAGES:
        assert f"| `{code}` |" in refusals, code
    errors = _section("### 19.2")
    for code in ("empty", "too-long", "rate-limited", "slow-consumer", "malformed", "unexpected",
                 "bad-ack", "decrypt", "too-large", "flooding", _files.ERR_TOO_LARGE,
                 _files.ERR_BAD_PATH, _files.ERR_BAD_OFFER, _files.ERR_OFFER_LIMIT,
                 _files.ERR_BAD_CHUNK, _files.ERR_OVER_CREDIT, _files.ERR_BAD_TRANSFER):
        assert f"| `{code}` |" in errors, code
    aborts = _section("#### `abort`")
    for code in _files.ABORT_CODES:
        assert f"| `{code}` |" in aborts, code
    ends = _section("### 26.4")
    for reason in _files.END_REASONS:
        assert f"| `{reason}` |" in ends, reason
    # The member's timers are the room's defaults, except its dead timer: 10 s after an
    # unanswered ping, so that it learns of a dead link no later than the room (whose stall
    # timer fires at 30 s with entries in flight, its dead timer at 60 s without).
    config = RoomConfig()
    assert _member.HANDSHAKE_TIMEOUT == config.handshake_timeout
    assert _member.PING_AFTER == config.ping_after
    assert _member.DEAD_AFTER == _member.PING_AFTER + _member.PONG_TIMEOUT
    assert _member.DEAD_AFTER <= min(config.stall_timeout, config.dead_after)
    timers = _section("## 17.")
    dead_row = next(line for line in timers.splitlines() if line.startswith("| Dead |"))
    assert f"{_member.DEAD_AFTER:g} s" in dead_row and f"{config.dead_after:g} s" in dead_row


def test_spec_documents_every_limit() -> None:
    constants = {
        "MAX_FRAME": tunnelproto.MAX_FRAME,
        "MAX_PLAINTEXT": tunnelproto.MAX_PLAINTEXT,
        "MAX_MSG1": MAX_MSG1,
        "MAX_TEXT_BYTES": tunnelproto.MAX_TEXT_BYTES,
        "MAX_NAME_CHARS": tunnelproto.MAX_NAME_CHARS,
        "MAX_GOAL_CHARS": _room.MAX_GOAL_CHARS,
        "MAX_SUMMARY_CHARS": _room.MAX_SUMMARY_CHARS,
        "DEFAULT_CAPACITY": _room.DEFAULT_CAPACITY,
        "MAX_CAPACITY": _room.MAX_CAPACITY,
        "DEFAULT_MAX_PENDING": _room.DEFAULT_MAX_PENDING,
        "MAX_UNACKED_SAYS": _member.MAX_UNACKED_SAYS,
        "MAX_REMEMBERED_REFUSALS": _room.MAX_REMEMBERED_REFUSALS,
        "MAX_TICKETS_PER_SEAT": _room.MAX_TICKETS_PER_SEAT,
        "MAX_REASON_CHARS": tunnelproto.MAX_REASON_CHARS,
        "MAX_REMOVED_TICKETS": _removal.MAX_REMOVED_TICKETS,
        "MAX_KIND_CHARS": f.MAX_KIND_CHARS,
        "MAX_DEPTH": _codec.MAX_DEPTH,
        "MAX_ITEMS": _codec.MAX_ITEMS,
        "SECRET_LEN": SECRET_LEN,
        "ID_LEN": ID_LEN,
        "PSK_LEN": PSK_LEN,
        "TUNNEL_ID_BYTES": TUNNEL_ID_BYTES,
        "MAX_OFFER_BYTES": _files.MAX_OFFER_BYTES,
        "MAX_OFFER_FILES": _files.MAX_OFFER_FILES,
        "MAX_PATH_DEPTH": _files.MAX_PATH_DEPTH,
        "MAX_PATH_BYTES": _files.MAX_PATH_BYTES,
        "MAX_NAME_BYTES": _files.MAX_NAME_BYTES,
        "MAX_OFFER_NAME_BYTES": _files.MAX_OFFER_NAME_BYTES,
        "MAX_NOTE_CHARS": _files.MAX_NOTE_CHARS,
        "MAX_MANIFEST_BYTES": _files.MAX_MANIFEST_BYTES,
        "MAX_MEMBER_OFFERS": _files.MAX_MEMBER_OFFERS,
        "MAX_ROOM_OFFERS": _files.MAX_ROOM_OFFERS,
        "MAX_MEMBER_TRANSFERS": _files.MAX_MEMBER_TRANSFERS,
        "MAX_ROOM_TRANSFERS": _files.MAX_ROOM_TRANSFERS,
        "MAX_CHUNK": _files.MAX_CHUNK,
        "MAX_FILE_WINDOW": _files.MAX_FILE_WINDOW,
        "READ_SIZE": _files.READ_SIZE,
    }
    for name, value in constants.items():
        assert _row_with(f"| `{name}` |", f"| {value} |"), f"spec: no limit row {name} = {value}"
    config = RoomConfig()
    for fld in dataclasses.fields(RoomConfig):
        value = _num(getattr(config, fld.name))
        assert _row_with(f"| `{fld.name}` |", f"| {value} |"), f"spec: RoomConfig.{fld.name} = {value}"


def test_spec_legality_table_matches_state_tables() -> None:
    text = spec_text()
    table = text[text.index("<!-- frame-legality:begin -->") : text.index("<!-- frame-legality:end -->")]
    rows = {}
    for line in _rows(table):
        cells = [c.strip() for c in line.strip("|").split("|")]
        match = re.fullmatch(r"`([a-z]+)`", cells[0])
        if match:
            rows[match.group(1)] = cells[1:]
    assert set(rows) == set(FRAME_TYPES)

    def cell(always: bool, with_files: bool) -> str:
        assert not (always and with_files), "a frame is in a table and in its files/1 extension"
        return "yes" if always else "files/1" if with_files else "no"

    for name, cls in FRAME_TYPES.items():
        actual = [
            cell(cls in ROOM_ACCEPTS[ConnState.CONFIRMING], False),
            cell(cls in ROOM_ACCEPTS[ConnState.OPEN], cls in ROOM_ACCEPTS_FILES),
            cell(cls in MEMBER_HANDSHAKE_ACCEPTS, False),
            cell(cls in MEMBER_ACCEPTS, cls in MEMBER_ACCEPTS_FILES),
        ]
        assert rows[name] == actual, f"spec legality row for {name!r} differs from _state.py"
    assert not ROOM_ACCEPTS[ConnState.HANDSHAKE] and not ROOM_ACCEPTS[ConnState.CLOSED]


def test_spec_constants_and_examples_match_the_vectors() -> None:
    text = spec_text()
    assert PROTOCOL_NAME.decode() in text
    for label in (
        INVITE_ID_LABEL,
        TICKET_ID_LABEL,
        INVITE_PSK_LABEL,
        TICKET_PSK_LABEL,
        _phrase.PHRASE_LABEL,
    ):
        assert f"`{label.decode()}`" in text and f"`{label.hex()}`" in text
    example = load("link.json")["prologue"]["examples"][0]
    assert example["tunnel_id"] in text and example["prologue_hex"] in text
    say = next(c for c in load("frames.json")["frames"] if c["what"] == "say")
    assert say["value"] == {"t": "say", "ref": 1, "text": "hi"}
    assert f"`{say['cbor_hex']}`" in text
    assert f"`0x{MSG2_NOISE:02x}` | `MSG2_NOISE`" in text
    assert f"`0x{MSG2_PLAIN_REFUSE:02x}` | `MSG2_PLAIN_REFUSE`" in text
    assert f"`0x{f.PROTOCOL_VERSION:02x}` (`PROTOCOL_VERSION`)" in text
    assert f"`{_phrase.WORDLIST_SHA256}`" in text
    for name in GENERATED:
        assert f"`{name}`" in text


# =============================================================================================
# files.json (spec section 26)
# =============================================================================================


def test_files_capability_vector() -> None:
    cap = load("files.json")["capability"]
    assert cap["cap"] == FILES_CAP == "files/1"
    hello = f.decode_frame(bytes.fromhex(cap["hello_cbor_hex"]))
    assert isinstance(hello, f.Hello) and hello.caps == (FILES_CAP,)
    assert to_json(hello.to_value()) == cap["hello"]
    welcome = next(
        c for c in load("frames.json")["frames"] if c["type"] == "welcome" and c["value"].get("caps")
    )
    assert welcome["value"]["caps"] == cap["welcome_caps"]
    assert cap["welcome_limits_key"] in welcome["value"]["limits"]


@pytest.mark.parametrize(
    "case",
    [from_json(c) for c in load("files.json")["chunk_layout"]["cases"]],
    ids=lambda c: f"x{c['x']}-n{c['data_len']}",
)
def test_chunk_layout(case: dict[str, Any]) -> None:
    data = bytes(i % 256 for i in range(case["data_len"]))
    frame = bytes.fromhex(case["prefix_hex"]) + data
    assert len(frame) == case["frame_len"] <= tunnelproto.MAX_PLAINTEXT
    # map(4), "t": "chunk", "x": as spec section 26.6 spells it out.
    assert frame.startswith(bytes.fromhex("a4" "6174" "656368756e6b" "6178"))
    chunk = f.Chunk(x=case["x"], at=case["at"], data=data)
    assert f.encode_chunk(case["x"], case["at"], data) == frame == chunk.encode()
    assert _codec.encode({"t": "chunk", "x": case["x"], "at": case["at"], "data": data}) == frame
    assert f.decode_frame(frame) == chunk  # the direct reader
    assert _codec.decode(frame) == {"t": "chunk", "x": case["x"], "at": case["at"], "data": data}


def test_chunk_layout_covers_every_size_class() -> None:
    cases = from_json(load("files.json")["chunk_layout"]["cases"])
    ints = {c["x"] for c in cases} | {c["at"] for c in cases}
    assert ints >= {0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1}
    assert {c["data_len"] for c in cases} >= {1, 23, 24, 255, 256, _files.MAX_CHUNK}


@pytest.mark.parametrize("case", load("files.json")["fallbacks"], ids=lambda c: c["what"])
def test_files_fallback_events(case: dict[str, Any]) -> None:
    entry = from_json(case["files_1"])
    event = f.decode_frame(bytes.fromhex(case["without_files_1_cbor_hex"]))
    assert isinstance(event, f.Event) and to_json(event.to_value()) == case["without_files_1"]
    assert (event.seq, event.ts, event.member) == (entry["seq"], entry["ts"], entry["from"])
    if entry["t"] == "offer":
        assert event.kind == "file-offer"
        assert event.summary == f"{entry['name']} ({entry['count']} files, {entry['total']} bytes)"
    else:
        assert event.kind == "file-offer-ended" and event.summary == entry["reason"]


@pytest.mark.parametrize("case", load("files.json")["invalid"], ids=lambda c: c["what"][:40])
def test_files_invalid_inputs(case: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        f.decode_frame(bytes.fromhex(case["cbor_hex"]))
    assert info.value.code == case["code"]


@pytest.mark.parametrize("case", load("files.json")["accepted"], ids=lambda c: c["what"][:40])
def test_files_accepted_inputs(case: dict[str, Any]) -> None:
    frame = f.decode_frame(bytes.fromhex(case["cbor_hex"]))
    assert to_json(frame.to_value()) == case["decodes_to"]


def test_files_paging_vector() -> None:
    paging = load("files.json")["paging"]
    entries = tuple(
        f.FileEntry(f"fixtures/dir-{i // 100:02d}/case-{i:04d}-input.json", i,
                    hashlib.sha256(b"%d" % i).digest())
        for i in range(1000)
    )
    assert _codec.encode(entries[0].to_value()).hex() == paging["entry_0"]["cbor_hex"]
    assert _files.entry_size(entries[0]) == paging["entry_0"]["encoded_bytes"]
    frames = _files.share_frames(paging["share_ref"], paging["share_name"], None, entries)
    got = [
        {"t": fr.TYPE, "at": fr.at if isinstance(fr, f.Manifest) else 0, "entries": len(fr.files),
         "frame_bytes": len(fr.encode())}
        for fr in frames
    ]
    assert got == paging["pages"] and len(got) > 1
    assert all(p["frame_bytes"] <= tunnelproto.MAX_PLAINTEXT for p in got)
    assert sum(p["entries"] for p in got) == len(entries)


def test_files_scenario_replays_byte_for_byte() -> None:
    scenario = load("files.json")["scenario"]
    wire = {w["i"]: w for w in scenario["wire"]}
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for call in scenario["rng"]["calls"]:
        by_stream.setdefault(call["stream"], []).append(call)
    rngs = {name: ReplayRng(calls) for name, calls in by_stream.items()}
    room: Room | None = None
    members: dict[str, MemberConnection] = {}
    conn_of: dict[str, int] = {}
    actor_of: dict[int, str] = {}
    for step in scenario["steps"]:
        t, do, args, result = step["t"], step["do"], step["args"], step.get("result")
        if do == "room.create":
            room = Room(args["goal"], args["host_name"], t, rng=rngs["room"],
                        epoch_offset=args["epoch_offset"])
            assert room.tunnel_id == result["tunnel_id"] == scenario["tunnel_id"]
            continue
        assert room is not None
        got_result: dict[str, Any] | None = None
        if do == "host.mint_invites":
            invites = room.mint_invites(args["count"], t)
            assert [str(inv.link(args["base_url"], room.tunnel_id)) for inv in invites] == result["links"]
        elif do == "host.say":
            got_result = {"seq": room.say(args["text"], t).seq}
        elif do == "member.connect":
            member = MemberConnection(JoinLink.parse(args["link"]), args["name"], t,
                                      rng=rngs[args["rng"]], caps=tuple(args.get("caps", ())))
            conn = room.open_connection(t)
            assert conn == result["conn"]
            members[args["actor"]] = member
            conn_of[args["actor"]], actor_of[conn] = conn, args["actor"]
        elif do == "deliver":
            for i in args["wire"]:
                msg = wire[i]
                data = bytes.fromhex(msg["hex"])
                if msg["dir"] == "member->host":
                    room.receive(msg["conn"], data, t)
                else:
                    members[msg["actor"]].receive_data(data, t)
        elif do == "member.share":
            entries = [f.FileEntry.from_value(_codec.decode(bytes.fromhex(e))) for e in args["files_cbor"]]
            got_result = {"ref": members[args["actor"]].files.share(args["name"], entries,
                                                                    note=args.get("note"))}
        elif do == "member.fetch":
            got_result = {"transfer": members[args["actor"]].files.fetch(
                args["offer"], args["file"], at=args["at"], credit=args["credit"])}
        elif do == "member.provide_chunk":
            got_result = {"accepted": members[args["actor"]].files.provide_chunk(
                args["transfer"], args["offset"], bytes.fromhex(args["data_hex"]))}
        elif do == "member.grant":
            members[args["actor"]].files.grant(args["transfer"], args["n"])
        elif do == "member.unshare":
            members[args["actor"]].files.unshare(args["offer"])
        elif do == "member.pull_bulk":
            got_result = {"sealed": members[args["actor"]].pull_bulk(args["max_bytes"])}
        elif do == "host.pull_bulk":
            got_result = {"sealed": room.pull_bulk(conn_of[args["actor"]], args["max_bytes"])}
        else:
            raise AssertionError(f"unknown step {do!r}")
        if got_result is not None:
            assert got_result == result, f"step {step['i']} ({do})"

        got: list[tuple[Any, ...]] = []
        for out in room.data_to_send():
            assert isinstance(out, Send)
            got.append(("host->member", actor_of[out.conn], out.data.hex()))
        for actor, member in members.items():
            got += [("member->host", actor, data.hex()) for data in member.data_to_send()]
        expected = [(wire[i]["dir"], wire[i]["actor"], wire[i]["hex"]) for i in step["emits"]]
        assert got == expected, f"step {step['i']} ({do}) emitted other messages"
        host_events = [event_json(ev) for ev in room.files.take_events()]
        assert host_events == step.get("host_events", []), f"step {step['i']}"
        events = {}
        for actor, member in members.items():
            seen = [event_json(ev) for ev in iter(member.next_event, None)]
            if seen:
                events[actor] = seen
        assert events == step.get("events", {}), f"step {step['i']} ({do}) reported other events"
    assert all(rng.exhausted() for rng in rngs.values())
    # What the story shows: the file arrived whole, chat went first, the old member chatted on.
    frames = [(w["actor"], w["dir"], w["frame"]["t"]) for w in scenario["wire"] if "frame" in w]
    assert ("old", "host->member", "offer") not in frames and ("old", "host->member", "event") in frames
    say = next(i for i, fr in enumerate(frames) if fr == ("bob", "host->member", "message"))
    first_chunk = next(i for i, fr in enumerate(frames) if fr == ("bob", "host->member", "chunk"))
    assert say < first_chunk
