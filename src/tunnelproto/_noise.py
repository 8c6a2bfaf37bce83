"""Noise Protocol Framework (revision 34), just enough for ``Noise_NNpsk0_25519_ChaChaPoly_*``.

What belongs here: the three objects of Noise section 5 (CipherState, SymmetricState,
HandshakeState) for the single pattern this protocol uses, and the crypto functions of
sections 4 and 12 they need. Nothing here knows about rooms, framing or sockets: the caller
hands in whole Noise messages and gets whole Noise messages back (sans-IO).

Pattern (section 9.4, NN with the psk0 modifier)::

    NNpsk0:
      -> psk, e
      <- e, ee

Two error types, the h11 way:

* :class:`NoiseError` -- the bytes we were given are bad (forged, truncated, too long, wrong
  psk) or a counter ran out. Anything read off the network can only ever raise this, so
  the caller can turn it into a protocol error and fuzzing has a single exception to expect.
* :class:`NoiseStateError` -- the *caller* misused the API (wrote out of turn, split twice,
  kept going after a failure). That is a bug in our code, not something a peer can cause.

Only ``DH = 25519`` and ``cipher = ChaChaPoly`` are implemented. The hash is selectable among
the four Noise hashes because that costs one table and lets us check every published
NNpsk0/25519/ChaChaPoly test vector, not only the BLAKE2b one we ship.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import nacl._sodium as _sodium  # type: ignore[import-not-found]
from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt

__all__ = [
    "DHLEN",
    "MAX_MESSAGE",
    "PROTOCOL_NAME",
    "TAGLEN",
    "CipherState",
    "HandshakeState",
    "NoiseError",
    "NoiseStateError",
    "SymmetricState",
]

PROTOCOL_NAME: Final[bytes] = b"Noise_NNpsk0_25519_ChaChaPoly_BLAKE2b"

#: Section 12.1: X25519 public keys and DH outputs are 32 bytes.
DHLEN: Final = 32
#: Section 4.2: every AEAD ciphertext carries a 16-byte authentication tag.
TAGLEN: Final = 16
#: Section 3: "All Noise messages are less than or equal to 65535 bytes in length."
MAX_MESSAGE: Final = 65535

#: Section 4.2: cipher keys are 32 bytes; section 9.1 (psk) also fixes psk length at 32.
_KEYLEN: Final = 32
_PSKLEN: Final = 32
#: Section 5.1: nonce 2**64-1 is reserved (Rekey uses it), so it is never used for a message.
_MAX_NONCE: Final = 2**64 - 1

_PROTOCOL_PREFIX: Final = b"Noise_NNpsk0_25519_ChaChaPoly_"


class NoiseError(Exception):
    """A Noise message could not be processed: forged, truncated, oversized, or the nonce ran
    out. Never caused by misuse of this API; always safe to map to a protocol error."""


class NoiseStateError(RuntimeError):
    """The API was used out of order (wrong turn, after completion or failure, split twice)."""


# ---------------------------------------------------------------------------------------------
# Hash functions (sections 4.3, 12.5-12.8)
# ---------------------------------------------------------------------------------------------


#: RFC 2104: the key XOR ipad / opad, one byte at a time, as `bytes.translate` tables.
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))
#: HKDF's output counters, byte(i).
_BYTES: Final = tuple(bytes((i,)) for i in range(256))


@dataclass(frozen=True, slots=True)
class _HashFunction:
    # `new` is hashlib's constructor. HMAC's BLOCKLEN (section 4.3) is hashlib's block_size,
    # which matches the spec for all four: 64 for SHA256/BLAKE2s, 128 for SHA512/BLAKE2b.
    # BLAKE2 is used unkeyed with its full-length digest, as sections 12.7/12.8 require.
    new: Callable[..., Any]
    hashlen: int
    blocklen: int

    def hash(self, data: bytes) -> bytes:
        return self.new(data).digest()  # type: ignore[no-any-return]

    def _padded(self, key: bytes) -> bytes:
        # RFC 2104: a key longer than a block is hashed first; then it is zero-padded to one.
        if len(key) > self.blocklen:
            key = self.new(key).digest()
        return key.ljust(self.blocklen, b"\x00")

    def hmac(self, key: bytes, data: bytes) -> bytes:
        # RFC 2104 written out with one-shot hashes: H(K^opad || H(K^ipad || data)).
        # hmac.digest looks the hash up by name on every call, which cost more than the
        # hashing (a join runs 32 of these).
        new = self.new
        key = self._padded(key)
        inner = new(key.translate(_IPAD) + data).digest()
        return new(key.translate(_OPAD) + inner).digest()  # type: ignore[no-any-return]

    def hkdf(self, chaining_key: bytes, input_key_material: bytes, num_outputs: int) -> list[bytes]:
        # Section 4.3 HKDF: RFC 5869 with the chaining key as salt, empty info, and outputs
        # chained as output_i = HMAC(temp_key, output_{i-1} || byte(i)). The HMACs are written
        # out in this one function (a join runs ten HKDFs, each of three or four HMACs, and
        # the calls between them cost more than the hashing); `hmac` is the same computation.
        new = self.new
        blocklen = self.blocklen
        key = chaining_key if len(chaining_key) <= blocklen else new(chaining_key).digest()
        key = key.ljust(blocklen, b"\x00")
        temp_key = new(
            key.translate(_OPAD) + new(key.translate(_IPAD) + input_key_material).digest()
        ).digest()
        # HASHLEN <= BLOCKLEN for every Noise hash, so the temp key only needs padding.
        temp_key = temp_key.ljust(blocklen, b"\x00")
        ipad = temp_key.translate(_IPAD)
        opad = temp_key.translate(_OPAD)
        outputs: list[bytes] = []
        previous = b""
        for i in range(1, num_outputs + 1):
            previous = new(opad + new(ipad + previous + _BYTES[i]).digest()).digest()
            outputs.append(previous)
        return outputs


_HASHES: Final[dict[str, _HashFunction]] = {
    "SHA256": _HashFunction(hashlib.sha256, 32, 64),
    "SHA512": _HashFunction(hashlib.sha512, 64, 128),
    "BLAKE2s": _HashFunction(hashlib.blake2s, 32, 64),
    "BLAKE2b": _HashFunction(hashlib.blake2b, 64, 128),
}


def _hash_function(name: str) -> _HashFunction:
    try:
        return _HASHES[name]
    except KeyError:
        raise ValueError(
            f"unsupported Noise hash {name!r}; expected one of {sorted(_HASHES)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# DH functions (sections 4.1, 12.1)
# ---------------------------------------------------------------------------------------------


def _dh(private_key: bytes, public_key: bytes) -> bytes:
    # libsodium reads exactly 32 bytes from each pointer, so a short key would make it read
    # past the buffer. Our callers always slice exactly DHLEN bytes; this is the last line of
    # defence. The C function is called directly (as `_seal` does): PyNaCl's binding checks
    # the same lengths again and the types, and costs about a tenth of the multiplication.
    if len(public_key) != DHLEN:
        raise NoiseError(f"public key must be {DHLEN} bytes, got {len(public_key)}")
    if len(private_key) != DHLEN:
        raise NoiseStateError("private key must be 32 bytes")
    if type(public_key) is not bytes:
        public_key = bytes(public_key)  # cffi passes only bytes as a pointer
    if type(private_key) is not bytes:
        private_key = bytes(private_key)
    out = _ffi_new("unsigned char[]", DHLEN)
    if _lib.crypto_scalarmult(out, private_key, public_key):
        # libsodium refuses points of small order (it returns -1 instead of the result). For
        # exactly those inputs RFC 7748 X25519 outputs 32 zero bytes, and section 12.1 says an
        # invalid public key "will produce an output of all zeros"; rejecting is allowed but
        # "discouraged ... does not improve security". We follow the default so we interoperate
        # with every other Noise implementation. In NNpsk0 a peer that forces ee = 0 still has
        # to know the psk (mixed in before any payload is encrypted) to produce a valid message.
        return bytes(DHLEN)
    return _ffi_buffer(out, DHLEN)[:]  # type: ignore[no-any-return]


def _public_key(private_key: bytes) -> bytes:
    if len(private_key) != DHLEN:
        raise ValueError(f"ephemeral private key must be {DHLEN} bytes")
    if type(private_key) is not bytes:
        private_key = bytes(private_key)
    out = _ffi_new("unsigned char[]", DHLEN)
    if _lib.crypto_scalarmult_base(out, private_key):  # pragma: no cover - libsodium: never
        raise NoiseStateError("X25519 public key generation failed")
    return _ffi_buffer(out, DHLEN)[:]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# CipherState (section 5.1) with the ChaChaPoly cipher functions (section 12.3)
# ---------------------------------------------------------------------------------------------


_ffi = _sodium.ffi
_lib = _sodium.lib
_NULL = _ffi.NULL
#: Output buffers are not zeroed first: libsodium writes every byte of the ciphertext, and of
#: the plaintext when the tag verifies (a failed open returns None, its buffer unseen). Zeroing
#: them cost a pass over each 64 KiB file chunk on every hop.
_ffi_new = _ffi.new_allocator(should_clear_after_alloc=False)
_ffi_buffer = _ffi.buffer
_encrypt = _lib.crypto_aead_chacha20poly1305_ietf_encrypt
_decrypt = _lib.crypto_aead_chacha20poly1305_ietf_decrypt


def _seal(key: bytes, nonce: bytes, ad: bytes, plaintext: bytes) -> bytes:
    """ChaCha20-Poly1305 (IETF) encryption, straight into libsodium.

    PyNaCl's binding checks every argument with a formatted message each call, about half the
    cost of sealing a chat message; our arguments are ours (bytes, a 32-byte key, a 12-byte
    nonce, lengths checked by the caller), so the transport path calls the C function itself.
    The Noise vectors pin the output to PyNaCl's and the published test vectors.
    """
    if type(plaintext) is not bytes:
        plaintext = bytes(plaintext)  # cffi passes only bytes as a pointer
    clen = len(plaintext) + TAGLEN
    out = _ffi_new("unsigned char[]", clen)
    _lib.crypto_aead_chacha20poly1305_ietf_encrypt(
        out, _NULL, plaintext, len(plaintext), ad, len(ad), _NULL, nonce, key
    )
    return _ffi_buffer(out, clen)[:]  # type: ignore[no-any-return]


def _open(key: bytes, nonce: bytes, ad: bytes, ciphertext: bytes) -> bytes | None:
    """The inverse of `_seal`; None when the tag does not verify. `ciphertext` holds at least
    the tag (checked by the caller)."""
    if type(ciphertext) is not bytes:
        ciphertext = bytes(ciphertext)
    mlen = len(ciphertext) - TAGLEN
    out = _ffi_new("unsigned char[]", max(mlen, 1))
    if _lib.crypto_aead_chacha20poly1305_ietf_decrypt(
        out, _NULL, _NULL, ciphertext, len(ciphertext), ad, len(ad), nonce, key
    ):
        return None
    return _ffi_buffer(out, mlen)[:]  # type: ignore[no-any-return]


def _chachapoly_nonce(n: int) -> bytes:
    # Section 12.3: 32 bits of zeros followed by the little-endian 64-bit counter.
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


class CipherState:
    """A key ``k`` (possibly empty) and a 64-bit nonce ``n`` (section 5.1).

    After the handshake, one CipherState encrypts one direction of the transport. With no key
    it passes data through unchanged, as the spec requires during the early handshake.
    """

    __slots__ = ("_k", "_n")

    def __init__(self, key: bytes | None = None) -> None:
        self._k: bytes | None = None
        self._n = 0
        if key is not None:
            self.initialize_key(key)

    def initialize_key(self, key: bytes | None) -> None:
        """InitializeKey(key): set k and reset n to zero."""
        if key is not None and len(key) != _KEYLEN:
            raise ValueError(f"cipher key must be {_KEYLEN} bytes, got {len(key)}")
        self._k = key
        self._n = 0

    def has_key(self) -> bool:
        return self._k is not None

    @property
    def nonce(self) -> int:
        """The nonce the next encrypt/decrypt will use (also: messages processed so far)."""
        return self._n

    def set_nonce(self, nonce: int) -> None:
        """SetNonce(nonce): for out-of-order transports and for tests of nonce exhaustion.

        Setting a nonce that was already used with this key would reuse a (key, nonce) pair:
        only do so on the receiving side.
        """
        if not 0 <= nonce <= _MAX_NONCE:
            raise ValueError("nonce must fit in 64 bits")
        self._n = nonce

    def _check_nonce(self) -> None:
        # Section 5.1: once n reaches 2**64-1, further EncryptWithAd/DecryptWithAd must signal
        # an error. Wrapping around would reuse a nonce, which for ChaCha20-Poly1305 leaks the
        # XOR of plaintexts and the authentication key.
        if self._n >= _MAX_NONCE:
            raise NoiseError("nonce exhausted; a new handshake is required")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """EncryptWithAd: ENCRYPT(k, n++, ad, plaintext), or plaintext if there is no key."""
        overhead = TAGLEN if self._k is not None else 0
        if len(plaintext) + overhead > MAX_MESSAGE:
            raise NoiseError(f"message would exceed {MAX_MESSAGE} bytes (Noise section 3)")
        if self._k is None:
            return plaintext
        self._check_nonce()
        ciphertext = _seal(self._k, _chachapoly_nonce(self._n), ad, plaintext)
        self._n += 1
        return ciphertext

    def seal(self, plaintext: bytes) -> bytes:
        """`encrypt_with_ad(b"", plaintext)` of a transport message (the key is set), written
        out in one function: the nonce check, the nonce and the libsodium call were three more
        Python calls on each message of chat, sealed on both hops."""
        k = self._k
        n = self._n
        if k is None or len(plaintext) + TAGLEN > MAX_MESSAGE or n >= _MAX_NONCE:
            return self.encrypt_with_ad(b"", plaintext)  # raises (or passes through: no key)
        if type(plaintext) is not bytes:
            plaintext = bytes(plaintext)  # cffi passes only bytes as a pointer
        clen = len(plaintext) + TAGLEN
        out = _ffi_new("unsigned char[]", clen)
        _encrypt(
            out, _NULL, plaintext, clen - TAGLEN, b"", 0, _NULL,
            b"\x00\x00\x00\x00" + n.to_bytes(8, "little"), k,
        )  # fmt: skip
        self._n = n + 1
        return _ffi_buffer(out, clen)[:]  # type: ignore[no-any-return]

    def open(self, ciphertext: bytes) -> bytes:
        """`decrypt_with_ad(b"", ciphertext)` of a transport message, written out as `seal` is;
        raises NoiseError as that does, with n unchanged."""
        k = self._k
        n = self._n
        clen = len(ciphertext)
        if k is None or clen > MAX_MESSAGE or clen < TAGLEN or n >= _MAX_NONCE:
            return self.decrypt_with_ad(b"", ciphertext)  # raises (or passes through: no key)
        if type(ciphertext) is not bytes:
            ciphertext = bytes(ciphertext)
        mlen = clen - TAGLEN
        out = _ffi_new("unsigned char[]", mlen or 1)
        if _decrypt(
            out, _NULL, _NULL, ciphertext, clen, b"", 0,
            b"\x00\x00\x00\x00" + n.to_bytes(8, "little"), k,
        ):  # fmt: skip
            raise NoiseError("decryption failed (bad tag)")
        self._n = n + 1
        return _ffi_buffer(out, mlen)[:]  # type: ignore[no-any-return]

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DecryptWithAd: DECRYPT(k, n++, ad, ciphertext), or ciphertext if there is no key.

        Raises NoiseError on any failure and then leaves n unchanged (section 5.1), so a forged
        message cannot push this side out of step with the honest sender.
        """
        if len(ciphertext) > MAX_MESSAGE:
            raise NoiseError(f"message exceeds {MAX_MESSAGE} bytes (Noise section 3)")
        if self._k is None:
            return ciphertext
        self._check_nonce()
        # Checked here because PyNaCl would otherwise try to allocate a negative-size buffer
        # and raise a cffi error rather than an authentication failure.
        if len(ciphertext) < TAGLEN:
            raise NoiseError("ciphertext shorter than the authentication tag")
        plaintext = _open(self._k, _chachapoly_nonce(self._n), ad, ciphertext)
        if plaintext is None:
            raise NoiseError("decryption failed (bad tag)")
        self._n += 1
        return plaintext

    def rekey(self) -> None:
        """Rekey (sections 4.2, 11.3): k = first 32 bytes of ENCRYPT(k, 2**64-1, "", zeros).

        n is deliberately left alone, as the spec says.
        """
        if self._k is None:
            raise NoiseStateError("cannot rekey a CipherState that has no key")
        self._k = crypto_aead_chacha20poly1305_ietf_encrypt(
            bytes(_KEYLEN), b"", _chachapoly_nonce(_MAX_NONCE), self._k
        )[:_KEYLEN]


# ---------------------------------------------------------------------------------------------
# SymmetricState (section 5.2)
# ---------------------------------------------------------------------------------------------


class SymmetricState:
    """The chaining key ``ck``, the handshake hash ``h`` and a CipherState (section 5.2).

    The constructor is InitializeSymmetric(protocol_name). The hash function is the last
    ``_``-separated field of the protocol name (section 8).
    """

    __slots__ = ("_ck", "_cipher", "_h", "_hash")

    def __init__(self, protocol_name: bytes) -> None:
        self._hash = _hash_function(protocol_name.rsplit(b"_", 1)[-1].decode("ascii"))
        hashlen = self._hash.hashlen
        # Section 5.2: short names are zero-padded rather than hashed, so the name itself is
        # visible in h; longer names are hashed down to HASHLEN.
        if len(protocol_name) <= hashlen:
            self._h = protocol_name.ljust(hashlen, b"\x00")
        else:
            self._h = self._hash.hash(protocol_name)
        self._ck = self._h
        self._cipher = CipherState()

    def _truncate_key(self, key: bytes) -> bytes:
        # Section 5.2: with a 64-byte hash, HKDF outputs are cut to the 32-byte cipher key.
        return key[:_KEYLEN]

    def mix_key(self, input_key_material: bytes) -> None:
        self._ck, temp_k = self._hash.hkdf(self._ck, input_key_material, 2)
        # InitializeKey(truncated temp_k), in line: the key is _KEYLEN bytes by construction.
        cipher = self._cipher
        cipher._k = temp_k[:_KEYLEN]
        cipher._n = 0

    def mix_chaining_key(self, input_key_material: bytes) -> None:
        """MixKey when its cipher key would be replaced unused (the next token mixes a key
        in before anything is encrypted): ck as MixKey sets it, the CipherState untouched."""
        self._ck = self._hash.hkdf(self._ck, input_key_material, 1)[0]

    def mix_hash(self, data: bytes) -> None:
        self._h = self._hash.new(self._h + data).digest()

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        # Used for the psk token (section 9.2): the psk feeds both the key and the transcript.
        self._ck, temp_h, temp_k = self._hash.hkdf(self._ck, input_key_material, 3)
        self.mix_hash(temp_h)
        cipher = self._cipher
        cipher._k = temp_k[:_KEYLEN]  # InitializeKey(truncated temp_k), as in mix_key
        cipher._n = 0

    def get_handshake_hash(self) -> bytes:
        return self._h

    def has_key(self) -> bool:
        return self._cipher.has_key()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        # h is the AD, then the *ciphertext* is hashed: the transcript binds what was sent.
        ciphertext = self._cipher.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        # On failure h is left untouched (decrypt_with_ad raises before mix_hash runs).
        plaintext = self._cipher.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(): (c1, c2); c1 is initiator-to-responder, c2 the reverse (section 5.2)."""
        temp_k1, temp_k2 = self._hash.hkdf(self._ck, b"", 2)
        return (
            CipherState(self._truncate_key(temp_k1)),
            CipherState(self._truncate_key(temp_k2)),
        )


# ---------------------------------------------------------------------------------------------
# HandshakeState (section 5.3) for NNpsk0 only
# ---------------------------------------------------------------------------------------------

_Token = Literal["e", "ee", "psk"]

# Message patterns in order: index 0 is initiator -> responder, index 1 the reply.
_NNPSK0: Final[tuple[tuple[_Token, ...], ...]] = (("psk", "e"), ("e", "ee"))
#: Per message: whether the cipher key that MixKey(e) makes is ever used. In the reply the
#: "ee" token's MixKey replaces it before anything is encrypted, so there only the chaining
#: key is derived (one HMAC fewer on each side; every output is the same).
_E_KEY_USED: Final[tuple[bool, ...]] = (True, False)
_MESSAGES: Final = len(_NNPSK0)


def _message_overhead(tokens: tuple[_Token, ...]) -> int:
    # Bytes a message carries besides the payload: one public key per "e", plus the payload's
    # tag. Every NNpsk0 payload is encrypted, because the psk token at the start of message 1
    # gives the CipherState a key before any payload is written (section 9.2).
    return DHLEN * tokens.count("e") + TAGLEN


_OVERHEAD: Final = tuple(_message_overhead(tokens) for tokens in _NNPSK0)


class HandshakeState:
    """One side of a ``Noise_NNpsk0_25519_ChaChaPoly_<hash>`` handshake (section 5.3).

    The initiator calls ``write_message`` then ``read_message``; the responder the reverse.
    Then both call ``split`` once to get their (send, receive) CipherStates.

    After ``read_message`` raises NoiseError the handshake is dead: its transcript already
    absorbed the bad bytes, and a peer must not get a second guess at the psk on the same
    state. Every later call raises NoiseStateError; start a new HandshakeState.
    """

    __slots__ = (
        "_e_private",
        "_e_public",
        "_failed",
        "_handshake_hash",
        "_initiator",
        "_next_message",
        "_psk",
        "_re",
        "_split_done",
        "_symmetric",
    )

    def __init__(
        self,
        *,
        initiator: bool,
        prologue: bytes,
        psk: bytes,
        ephemeral_private: bytes | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        hash_name: str = "BLAKE2b",
    ) -> None:
        """``ephemeral_private`` fixes the ephemeral key: only for test vectors, never reuse it.
        ``rng`` is otherwise called once, here, for the 32-byte ephemeral private key."""
        if len(psk) != _PSKLEN:
            raise ValueError(f"psk must be {_PSKLEN} bytes, got {len(psk)}")
        _hash_function(hash_name)  # fail early with ValueError on an unknown name
        if ephemeral_private is None:
            ephemeral_private = rng(DHLEN)
        if len(ephemeral_private) != DHLEN:
            raise ValueError(f"ephemeral private key must be {DHLEN} bytes")

        self._initiator = initiator
        self._psk = psk
        # Generated up front (GENERATE_KEYPAIR is only *used* at the "e" token) so that nothing
        # can fail half-way through writing a message.
        self._e_private: bytes | None = ephemeral_private
        self._e_public = _public_key(ephemeral_private)
        self._re: bytes | None = None
        self._next_message = 0
        self._failed = False
        self._split_done = False
        self._handshake_hash: bytes | None = None

        self._symmetric: SymmetricState | None = SymmetricState(
            _PROTOCOL_PREFIX + hash_name.encode("ascii")
        )
        # Section 5.3 Initialize(): MixHash(prologue), so both sides must agree on it or the
        # first payload fails to decrypt. NN has no pre-message keys to mix in.
        self._symmetric.mix_hash(prologue)

    # -- state --------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._next_message == _MESSAGES

    @property
    def handshake_hash(self) -> bytes:
        """GetHandshakeHash() after completion: a unique id for this session (section 11.2),
        usable for channel binding. Before completion it is not final, so asking is an error."""
        if self._handshake_hash is None:
            raise NoiseStateError("handshake hash is only defined once the handshake is complete")
        return self._handshake_hash

    def _require_turn(self, *, writing: bool) -> SymmetricState:
        if self._failed:
            raise NoiseStateError("handshake failed earlier; start a new HandshakeState")
        if self._next_message == _MESSAGES or self._symmetric is None:
            raise NoiseStateError("handshake is already complete")
        initiators_turn = self._next_message % 2 == 0
        if (initiators_turn == self._initiator) != writing:
            verb = "write" if writing else "read"
            raise NoiseStateError(f"it is not this side's turn to {verb} a handshake message")
        return self._symmetric

    def _advance(self, symmetric: SymmetricState) -> None:
        self._next_message += 1
        if self._next_message == _MESSAGES:
            self._handshake_hash = symmetric.get_handshake_hash()
            # The ephemeral private key's only job is done; dropping it is what forward secrecy
            # is made of (as far as Python lets us forget anything).
            self._e_private = None

    def _ephemeral_private(self) -> bytes:
        if self._e_private is None:  # unreachable by the pattern; guards refactors
            raise NoiseStateError("ephemeral private key already discarded")
        return self._e_private

    def _remote_ephemeral(self) -> bytes:
        if self._re is None:  # unreachable: "ee" always follows the peer's "e"
            raise NoiseStateError("remote ephemeral key not yet received")
        return self._re

    # -- messages -----------------------------------------------------------------------------

    def write_message(self, payload: bytes) -> bytes:
        """WriteMessage(payload): the next handshake message to send.

        Raises NoiseError, leaving the state unchanged, if the message would exceed 65535 bytes.
        """
        symmetric = self._require_turn(writing=True)
        tokens = _NNPSK0[self._next_message]
        if len(payload) + _OVERHEAD[self._next_message] > MAX_MESSAGE:
            raise NoiseError(f"handshake message would exceed {MAX_MESSAGE} bytes (section 3)")
        try:
            parts: list[bytes] = []
            for token in tokens:
                if token == "e":
                    parts.append(self._e_public)
                    symmetric.mix_hash(self._e_public)
                    # Section 9.2: in a psk handshake every "e" is also MixKey'd, so that
                    # psk-keyed encryption is randomized by the ephemeral (used as a nonce);
                    # otherwise message 1's key would depend on the psk and prologue alone.
                    if _E_KEY_USED[self._next_message]:
                        symmetric.mix_key(self._e_public)
                    else:
                        symmetric.mix_chaining_key(self._e_public)
                elif token == "ee":
                    symmetric.mix_key(_dh(self._ephemeral_private(), self._remote_ephemeral()))
                else:  # "psk"
                    symmetric.mix_key_and_hash(self._psk)
            parts.append(symmetric.encrypt_and_hash(payload))
        except BaseException:
            self._failed = True
            raise
        self._advance(symmetric)
        return b"".join(parts)

    def read_message(self, message: bytes) -> bytes:
        """ReadMessage(message): process a received handshake message, return its payload.

        Raises NoiseError for anything wrong with ``message`` (including a wrong psk or
        prologue on either side, which shows up as a failed decryption).
        """
        symmetric = self._require_turn(writing=False)
        tokens = _NNPSK0[self._next_message]
        try:
            payload = self._read_tokens(symmetric, tokens, message)
        except BaseException:
            self._failed = True
            raise
        self._advance(symmetric)
        return payload

    def _read_tokens(
        self, symmetric: SymmetricState, tokens: tuple[_Token, ...], message: bytes
    ) -> bytes:
        if len(message) > MAX_MESSAGE:
            raise NoiseError(f"handshake message exceeds {MAX_MESSAGE} bytes (section 3)")
        if len(message) < _OVERHEAD[self._next_message]:
            raise NoiseError("handshake message is truncated")
        offset = 0
        for token in tokens:
            if token == "e":
                re = message[offset : offset + DHLEN]
                offset += DHLEN
                self._re = re
                symmetric.mix_hash(re)
                # psk rule, section 9.2 (see write_message)
                if _E_KEY_USED[self._next_message]:
                    symmetric.mix_key(re)
                else:
                    symmetric.mix_chaining_key(re)
            elif token == "ee":
                symmetric.mix_key(_dh(self._ephemeral_private(), self._remote_ephemeral()))
            else:  # "psk"
                symmetric.mix_key_and_hash(self._psk)
        return symmetric.decrypt_and_hash(message[offset:])

    # -- transport ----------------------------------------------------------------------------

    def split(self) -> tuple[CipherState, CipherState]:
        """Split() oriented for this side: returns ``(send, receive)``.

        The initiator sends with c1 and receives with c2; the responder the reverse. May be
        called once: a second pair would restart both nonces at zero under the same keys.
        """
        if self._failed:
            raise NoiseStateError("handshake failed; there is nothing to split")
        if self._next_message != _MESSAGES or self._symmetric is None:
            if self._split_done:
                raise NoiseStateError("split() may only be called once")
            raise NoiseStateError("split() called before the handshake completed")
        c1, c2 = self._symmetric.split()
        # Noise discards the handshake state once Split() has produced the transport keys. We
        # keep only the handshake hash; the chaining key and psk go.
        self._symmetric = None
        self._psk = b""
        self._split_done = True
        return (c1, c2) if self._initiator else (c2, c1)
