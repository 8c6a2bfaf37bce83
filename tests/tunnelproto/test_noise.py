"""Tests for tunnelproto._noise: published vectors, then the ways a peer can send us junk."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnelproto._noise import (
    DHLEN,
    MAX_MESSAGE,
    PROTOCOL_NAME,
    TAGLEN,
    CipherState,
    HandshakeState,
    NoiseError,
    NoiseStateError,
    SymmetricState,
)

_REPO_ROOT = Path(__file__).parents[2]
# The repo carries its own copy so the tests run from a bare clone; the shared file beside the
# repo is the one other implementations check against, and the two must not drift.
_SPEC_VECTORS = _REPO_ROOT / "spec" / "vectors" / "noise-nnpsk0.json"
_SHARED_VECTORS = _REPO_ROOT.parent / "shared" / "vectors" / "noise-nnpsk0.json"


def _load_vectors() -> list[dict[str, Any]]:
    path = _SPEC_VECTORS if _SPEC_VECTORS.exists() else _SHARED_VECTORS
    vectors: list[dict[str, Any]] = json.loads(path.read_text())["vectors"]
    return vectors


VECTORS = _load_vectors()

PSK = bytes(range(32))
PROLOGUE = b"tunnel-mcp test prologue"


def _hash_name(vector: dict[str, Any]) -> str:
    name: str = vector["protocol_name"]
    return name.rsplit("_", 1)[1]


def _vector_pair(vector: dict[str, Any]) -> tuple[HandshakeState, HandshakeState]:
    hash_name = _hash_name(vector)
    initiator = HandshakeState(
        initiator=True,
        prologue=bytes.fromhex(vector["init_prologue"]),
        psk=bytes.fromhex(vector["init_psks"][0]),
        ephemeral_private=bytes.fromhex(vector["init_ephemeral"]),
        hash_name=hash_name,
    )
    responder = HandshakeState(
        initiator=False,
        prologue=bytes.fromhex(vector["resp_prologue"]),
        psk=bytes.fromhex(vector["resp_psks"][0]),
        ephemeral_private=bytes.fromhex(vector["resp_ephemeral"]),
        hash_name=hash_name,
    )
    return initiator, responder


def _pair(
    *, responder_psk: bytes = PSK, responder_prologue: bytes = PROLOGUE
) -> tuple[HandshakeState, HandshakeState]:
    """Fresh states with random ephemerals; the responder's psk/prologue can be made wrong."""
    return (
        HandshakeState(initiator=True, prologue=PROLOGUE, psk=PSK),
        HandshakeState(initiator=False, prologue=responder_prologue, psk=responder_psk),
    )


# Fixed ephemerals make handshakes reproducible, so a stored message fits a fresh peer.
_I_EPHEMERAL = bytes([7]) * 32
_R_EPHEMERAL = bytes([9]) * 32


def _fixed_pair() -> tuple[HandshakeState, HandshakeState]:
    return (
        HandshakeState(initiator=True, prologue=PROLOGUE, psk=PSK, ephemeral_private=_I_EPHEMERAL),
        HandshakeState(initiator=False, prologue=PROLOGUE, psk=PSK, ephemeral_private=_R_EPHEMERAL),
    )


def _handshake() -> tuple[tuple[CipherState, CipherState], tuple[CipherState, CipherState]]:
    """A completed handshake: ((initiator send, receive), (responder send, receive))."""
    initiator, responder = _pair()
    responder.read_message(initiator.write_message(b""))
    initiator.read_message(responder.write_message(b""))
    return initiator.split(), responder.split()


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    mutated = bytearray(data)
    mutated[index] ^= 1 << bit
    return bytes(mutated)


# -- vectors ------------------------------------------------------------------------------------


def test_vectors_cover_all_four_hashes() -> None:
    # Guards against the vector file silently shrinking to fewer suites.
    assert sorted(_hash_name(v) for v in VECTORS) == ["BLAKE2b", "BLAKE2s", "SHA256", "SHA512"]
    assert VECTORS[0]["protocol_name"].encode() == PROTOCOL_NAME


@pytest.mark.skipif(not _SHARED_VECTORS.exists(), reason="no ../shared checkout beside the repo")
def test_repo_vector_copy_matches_shared() -> None:
    assert _SPEC_VECTORS.read_bytes() == _SHARED_VECTORS.read_bytes()


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["protocol_name"])
def test_vector(vector: dict[str, Any]) -> None:
    initiator, responder = _vector_pair(vector)
    messages = [
        (bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])) for m in vector["messages"]
    ]

    # Handshake: message 0 initiator -> responder, message 1 responder -> initiator.
    (payload0, expected0), (payload1, expected1) = messages[:2]
    message0 = initiator.write_message(payload0)
    assert message0 == expected0
    assert responder.read_message(message0) == payload0
    assert not initiator.complete and not responder.complete
    message1 = responder.write_message(payload1)
    assert message1 == expected1
    assert initiator.read_message(message1) == payload1
    assert initiator.complete and responder.complete

    expected_hash = bytes.fromhex(vector["handshake_hash"])
    assert initiator.handshake_hash == expected_hash
    assert responder.handshake_hash == expected_hash

    # Transport: the vectors keep alternating, so even indices are sent by the initiator.
    initiator_send, initiator_receive = initiator.split()
    responder_send, responder_receive = responder.split()
    for index, (payload, expected) in enumerate(messages[2:], start=2):
        if index % 2 == 0:
            sender, receiver = initiator_send, responder_receive
        else:
            sender, receiver = responder_send, initiator_receive
        ciphertext = sender.encrypt_with_ad(b"", payload)
        assert ciphertext == expected
        assert receiver.decrypt_with_ad(b"", ciphertext) == payload


# -- handshake: bad bytes -> NoiseError ------------------------------------------------------------


def test_every_bit_flip_in_message_1_is_rejected() -> None:
    message = _fixed_pair()[0].write_message(b"hello")
    for index in range(len(message)):
        # Bit 7 of the last key byte is ignored by X25519 but still hashed, so it must fail too.
        for bit in (0, 7):
            with pytest.raises(NoiseError):
                _fixed_pair()[1].read_message(_flip(message, index, bit))


def test_every_bit_flip_in_message_2_is_rejected() -> None:
    initiator, responder = _fixed_pair()
    responder.read_message(initiator.write_message(b""))
    message = responder.write_message(b"reply")
    for index in range(len(message)):
        for bit in (0, 7):
            # Fixed ephemerals: a fresh initiator is in exactly the state that expects `message`.
            fresh_initiator = _fixed_pair()[0]
            fresh_initiator.write_message(b"")
            with pytest.raises(NoiseError):
                fresh_initiator.read_message(_flip(message, index, bit))
    fresh_initiator = _fixed_pair()[0]
    fresh_initiator.write_message(b"")
    assert fresh_initiator.read_message(message) == b"reply"


@pytest.mark.parametrize("length", [0, 1, DHLEN - 1, DHLEN, DHLEN + TAGLEN - 1])
def test_truncated_message_1_is_rejected(length: int) -> None:
    initiator, responder = _pair()
    message = initiator.write_message(b"")
    assert len(message) == DHLEN + TAGLEN
    with pytest.raises(NoiseError):
        responder.read_message(message[:length])


@pytest.mark.parametrize("cut", [1, TAGLEN, TAGLEN + 1, TAGLEN + DHLEN])
def test_truncated_message_2_is_rejected(cut: int) -> None:
    initiator, responder = _pair()
    responder.read_message(initiator.write_message(b""))
    message = responder.write_message(b"x")
    with pytest.raises(NoiseError):
        initiator.read_message(message[:-cut])


def test_wrong_psk_fails_on_reading_message_1() -> None:
    initiator, responder = _pair(responder_psk=bytes(32))
    with pytest.raises(NoiseError):
        responder.read_message(initiator.write_message(b""))


def test_wrong_prologue_fails_on_reading_message_1() -> None:
    initiator, responder = _pair(responder_prologue=b"another room")
    with pytest.raises(NoiseError):
        responder.read_message(initiator.write_message(b""))


def test_oversized_handshake_message_is_rejected_on_read() -> None:
    _, responder = _pair()
    with pytest.raises(NoiseError):
        responder.read_message(bytes(MAX_MESSAGE + 1))


def test_handshake_payload_limit_is_exactly_the_noise_maximum() -> None:
    initiator, responder = _pair()
    largest = bytes(MAX_MESSAGE - DHLEN - TAGLEN)
    with pytest.raises(NoiseError):
        initiator.write_message(largest + b"\x00")
    # The refused write left the state usable: the largest legal message still goes through.
    message = initiator.write_message(largest)
    assert len(message) == MAX_MESSAGE
    assert responder.read_message(message) == largest


def test_low_order_ephemeral_gives_zero_dh_not_a_library_error() -> None:
    # Section 12.1: X25519 of a low-order point is all zeros and should not be rejected. Build,
    # by hand, the message 2 a responder with ephemeral public key 0 would send; the initiator
    # must accept it (it still authenticates, through the psk).
    initiator = HandshakeState(initiator=True, prologue=PROLOGUE, psk=PSK)
    message0 = initiator.write_message(b"")
    peer = SymmetricState(PROTOCOL_NAME)
    peer.mix_hash(PROLOGUE)
    peer.mix_key_and_hash(PSK)
    peer.mix_hash(message0[:DHLEN])
    peer.mix_key(message0[:DHLEN])
    peer.decrypt_and_hash(message0[DHLEN:])
    zero_ephemeral = bytes(DHLEN)
    peer.mix_hash(zero_ephemeral)
    peer.mix_key(zero_ephemeral)
    peer.mix_key(bytes(DHLEN))  # ee = DH(anything, 0) = 0
    message1 = zero_ephemeral + peer.encrypt_and_hash(b"hi")
    assert initiator.read_message(message1) == b"hi"
    assert initiator.handshake_hash == peer.get_handshake_hash()


def test_garbage_low_order_ephemeral_raises_noise_error() -> None:
    # libsodium raises its own exception for this point; it must come out as NoiseError.
    initiator, _ = _pair()
    initiator.write_message(b"")
    with pytest.raises(NoiseError):
        initiator.read_message(bytes(DHLEN + TAGLEN))


# -- transport ------------------------------------------------------------------------------------


def test_transport_both_directions() -> None:
    (i_send, i_receive), (r_send, r_receive) = _handshake()
    assert r_receive.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"ping")) == b"ping"
    assert i_receive.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"pong")) == b"pong"
    # Each direction has its own key: a message cannot be reflected back to its sender.
    with pytest.raises(NoiseError):
        i_receive.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"echo"))


def test_replayed_transport_message_is_rejected() -> None:
    (send, _), (_, receive) = _handshake()
    message = send.encrypt_with_ad(b"", b"once")
    assert receive.decrypt_with_ad(b"", message) == b"once"
    with pytest.raises(NoiseError):
        receive.decrypt_with_ad(b"", message)


def test_reordered_transport_messages_are_rejected() -> None:
    (send, _), (_, receive) = _handshake()
    first = send.encrypt_with_ad(b"", b"first")
    second = send.encrypt_with_ad(b"", b"second")
    with pytest.raises(NoiseError):
        receive.decrypt_with_ad(b"", second)
    # The failure did not advance the receiver, so the real next message still decrypts.
    assert receive.nonce == 0
    assert receive.decrypt_with_ad(b"", first) == b"first"
    assert receive.decrypt_with_ad(b"", second) == b"second"


def test_forged_transport_message_does_not_move_the_nonce() -> None:
    (send, _), (_, receive) = _handshake()
    genuine = send.encrypt_with_ad(b"", b"data")
    for forged in (_flip(genuine, 0), _flip(genuine, len(genuine) - 1), b"", genuine[: TAGLEN - 1]):
        with pytest.raises(NoiseError):
            receive.decrypt_with_ad(b"", forged)
        assert receive.nonce == 0
    assert receive.decrypt_with_ad(b"", genuine) == b"data"


def test_associated_data_is_authenticated() -> None:
    (send, _), (_, receive) = _handshake()
    message = send.encrypt_with_ad(b"frame header", b"data")
    with pytest.raises(NoiseError):
        receive.decrypt_with_ad(b"other header", message)


def test_transport_size_limits() -> None:
    (send, _), (_, receive) = _handshake()
    with pytest.raises(NoiseError):
        send.encrypt_with_ad(b"", bytes(MAX_MESSAGE - TAGLEN + 1))
    assert send.nonce == 0
    largest = send.encrypt_with_ad(b"", bytes(MAX_MESSAGE - TAGLEN))
    assert len(largest) == MAX_MESSAGE
    with pytest.raises(NoiseError):
        receive.decrypt_with_ad(b"", largest + b"\x00")
    assert receive.decrypt_with_ad(b"", largest) == bytes(MAX_MESSAGE - TAGLEN)


def test_nonce_exhaustion_raises_instead_of_wrapping() -> None:
    key = bytes(range(32))
    send, receive = CipherState(key), CipherState(key)
    send.set_nonce(2**64 - 2)
    receive.set_nonce(2**64 - 2)
    last = send.encrypt_with_ad(b"", b"last")
    assert receive.decrypt_with_ad(b"", last) == b"last"
    # 2**64-1 is reserved (section 5.1): both directions refuse rather than reuse a nonce.
    with pytest.raises(NoiseError):
        send.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(NoiseError):
        receive.decrypt_with_ad(b"", last)


def test_transport_seal_and_open_are_encrypt_and_decrypt_with_empty_ad() -> None:
    # `seal`/`open` are the transport's written-out EncryptWithAd/DecryptWithAd (ad = b""):
    # the same bytes, the same nonce steps, the same refusals with the nonce left alone.
    key = bytes(range(32))
    a, b, c, d = CipherState(key), CipherState(key), CipherState(key), CipherState(key)
    for payload in (b"", b"x", bytearray(b"chat"), memoryview(bytes(1000))):
        sealed = a.seal(payload)
        assert sealed == b.encrypt_with_ad(b"", bytes(payload))
        assert c.open(sealed) == d.decrypt_with_ad(b"", sealed) == bytes(payload)
    assert a.nonce == b.nonce == c.nonce == d.nonce == 4
    (send, _), (_, receive) = _handshake()
    genuine = send.seal(b"data")
    for forged in (_flip(genuine, 0), _flip(genuine, len(genuine) - 1), b"", genuine[: TAGLEN - 1]):
        with pytest.raises(NoiseError):
            receive.open(forged)
        assert receive.nonce == 0
    assert receive.open(bytearray(genuine)) == b"data"
    with pytest.raises(NoiseError):
        receive.open(genuine)  # a replay
    with pytest.raises(NoiseError):
        send.seal(bytes(MAX_MESSAGE - TAGLEN + 1))
    assert send.nonce == 1
    assert len(send.seal(bytes(MAX_MESSAGE - TAGLEN))) == MAX_MESSAGE
    with pytest.raises(NoiseError):
        receive.open(bytes(MAX_MESSAGE + 1))
    send, receive = CipherState(key), CipherState(key)
    send.set_nonce(2**64 - 2)
    receive.set_nonce(2**64 - 2)
    last = send.seal(b"last")
    assert receive.open(last) == b"last"
    with pytest.raises(NoiseError):
        send.seal(b"one too many")
    with pytest.raises(NoiseError):
        receive.open(last)
    assert CipherState().seal(b"clear") == b"clear"  # no key: passed through, as before


def test_rekey_changes_the_key_but_not_the_nonce() -> None:
    (send, _), (_, receive) = _handshake()
    receive.decrypt_with_ad(b"", send.encrypt_with_ad(b"", b"before"))
    send.rekey()
    assert send.nonce == 1
    after = send.encrypt_with_ad(b"", b"after")
    with pytest.raises(NoiseError):
        receive.decrypt_with_ad(b"", after)
    receive.rekey()
    assert receive.decrypt_with_ad(b"", after) == b"after"


def test_cipher_state_without_key_passes_data_through() -> None:
    # Section 5.1; the handshake relies on this before the psk token keys the cipher.
    cipher = CipherState()
    assert not cipher.has_key()
    assert cipher.encrypt_with_ad(b"ad", b"clear") == b"clear"
    assert cipher.nonce == 0


# -- API misuse -> NoiseStateError / ValueError -------------------------------------------------


def test_initiator_cannot_read_first_and_responder_cannot_write_first() -> None:
    initiator, responder = _pair()
    with pytest.raises(NoiseStateError):
        initiator.read_message(bytes(DHLEN + TAGLEN))
    with pytest.raises(NoiseStateError):
        responder.write_message(b"")
    # The misuse did not disturb either side.
    responder.read_message(initiator.write_message(b""))


def test_no_messages_after_completion() -> None:
    initiator, responder = _pair()
    message0 = initiator.write_message(b"")
    with pytest.raises(NoiseStateError):
        initiator.write_message(b"")
    responder.read_message(message0)
    message1 = responder.write_message(b"")
    initiator.read_message(message1)
    for state in (initiator, responder):
        with pytest.raises(NoiseStateError):
            state.write_message(b"")
        with pytest.raises(NoiseStateError):
            state.read_message(message1)


def test_split_only_once_and_only_when_complete() -> None:
    initiator, responder = _pair()
    with pytest.raises(NoiseStateError):
        initiator.split()
    with pytest.raises(NoiseStateError):
        initiator.handshake_hash  # noqa: B018 -- the property access is the test
    responder.read_message(initiator.write_message(b""))
    initiator.read_message(responder.write_message(b""))
    initiator.split()
    with pytest.raises(NoiseStateError):
        initiator.split()
    assert initiator.handshake_hash == responder.handshake_hash


def test_failed_handshake_cannot_be_retried() -> None:
    initiator, responder = _pair()
    message = initiator.write_message(b"")
    with pytest.raises(NoiseError):
        responder.read_message(_flip(message, DHLEN))
    # Not even with the genuine message: one guess per HandshakeState.
    with pytest.raises(NoiseStateError):
        responder.read_message(message)
    with pytest.raises(NoiseStateError):
        responder.split()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"psk": bytes(31)},
        {"psk": bytes(33)},
        {"ephemeral_private": bytes(31)},
        {"rng": lambda n: bytes(n - 1)},
        {"hash_name": "MD5"},
    ],
)
def test_bad_constructor_arguments_raise_value_error(kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"initiator": True, "prologue": b"", "psk": PSK, **kwargs}
    with pytest.raises(ValueError):
        HandshakeState(**arguments)


# -- properties -----------------------------------------------------------------------------------


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, plus near-misses of a valid message (which get past the length checks
    and exercise the cryptographic checks)."""
    flipped = st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 7)).map(
        lambda ib: _flip(valid, *ib)
    )
    cut = st.integers(0, len(valid) - 1).map(lambda n: valid[:n])
    extended = st.binary(min_size=1, max_size=16).map(lambda extra: valid + extra)
    return st.one_of(st.binary(max_size=200), flipped, cut, extended)


def _valid_messages() -> tuple[bytes, bytes, bytes, bytes]:
    initiator, responder = _fixed_pair()
    message0 = initiator.write_message(b"m0")
    responder.read_message(message0)
    message1 = responder.write_message(b"m1")
    initiator.read_message(message1)
    (i_send, _), (r_send, _) = initiator.split(), responder.split()
    return (
        message0,
        message1,
        i_send.encrypt_with_ad(b"", b"t0"),
        r_send.encrypt_with_ad(b"", b"t1"),
    )


_MESSAGE0, _MESSAGE1, _TRANSPORT_I, _TRANSPORT_R = _valid_messages()


def _only_noise_error(action: Callable[[bytes], object], data: bytes) -> None:
    try:
        action(data)
    except NoiseError:
        pass


@given(_mutations(_MESSAGE0))
def test_responder_reading_message_1_raises_only_noise_error(data: bytes) -> None:
    _only_noise_error(_fixed_pair()[1].read_message, data)


@given(_mutations(_MESSAGE1))
def test_initiator_reading_message_2_raises_only_noise_error(data: bytes) -> None:
    initiator, _ = _fixed_pair()
    initiator.write_message(b"m0")
    _only_noise_error(initiator.read_message, data)


@given(st.booleans(), st.data())
def test_transport_decrypt_raises_only_noise_error(
    initiator_side: bool, data: st.DataObject
) -> None:
    initiator, responder = _fixed_pair()
    responder.read_message(initiator.write_message(b"m0"))
    initiator.read_message(responder.write_message(b"m1"))
    (_, i_receive), (_, r_receive) = initiator.split(), responder.split()
    # The initiator receives what the responder sent, and vice versa.
    receive, valid = (i_receive, _TRANSPORT_R) if initiator_side else (r_receive, _TRANSPORT_I)
    message = data.draw(_mutations(valid))
    _only_noise_error(lambda m: receive.decrypt_with_ad(b"", m), message)


@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(max_size=64))
def test_any_payloads_round_trip(payload0: bytes, payload1: bytes, prologue: bytes) -> None:
    initiator = HandshakeState(initiator=True, prologue=prologue, psk=PSK)
    responder = HandshakeState(initiator=False, prologue=prologue, psk=PSK)
    assert responder.read_message(initiator.write_message(payload0)) == payload0
    assert initiator.read_message(responder.write_message(payload1)) == payload1
    assert initiator.handshake_hash == responder.handshake_hash
    (i_send, i_receive), (r_send, r_receive) = initiator.split(), responder.split()
    assert r_receive.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", payload0)) == payload0
    assert i_receive.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", payload1)) == payload1


@pytest.mark.parametrize("name", ["SHA256", "SHA512", "BLAKE2s", "BLAKE2b"])
@given(key=st.binary(max_size=300), data=st.binary(max_size=300), outputs=st.integers(2, 3))
def test_hmac_and_hkdf_written_out_are_the_standard_ones(name, key, data, outputs):
    # The HMAC is RFC 2104 written out (padded-key states reused across an HKDF's outputs):
    # it must equal the standard library's for every key length, the ones over a block too,
    # and the HKDF built on it must equal Noise section 4.3's, spelled with hmac.digest.
    import hashlib
    import hmac

    from tunnelproto._noise import _HASHES

    fn = _HASHES[name]
    digest = getattr(hashlib, name.lower())
    assert fn.hmac(key, data) == hmac.digest(key, data, digest)
    temp = hmac.digest(key, data, digest)
    expected, previous = [], b""
    for i in range(1, outputs + 1):
        previous = hmac.digest(temp, previous + bytes([i]), digest)
        expected.append(previous)
    assert fn.hkdf(key, data, outputs) == expected
