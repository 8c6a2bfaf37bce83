"""The verification phrase: four words both ends of a join derive from its Noise handshake hash.

The handshake hash `h` is the same on both ends of one handshake and differs between any two
handshakes (it covers both ephemeral keys and every encrypted payload). Someone who holds the
link and relays between a member and the host runs two handshakes, one with each, so the member
and the host end up with two different phrases; the humans compare them over a channel they
trust (spec "Verification phrase").

The phrase is derived once, at a join, and belongs to the seat from then on: a resume is another
handshake with another hash, so the room keeps the seat's phrase and the member keeps its own.
It is not a secret (it proves nothing to someone who cannot compare it with the other end), but
it is shown only to the two humans, never sent to other members and never logged.

The word list is the BIP-39 English list (2048 words, MIT licensed, see wordlist-LICENSE.txt),
shipped as package data and byte-identical to spec/wordlist.txt.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from ._errors import LocalProtocolError

#: Domain separation: the phrase hash is never the same as any other hash of `h`.
PHRASE_LABEL = b"tunnel-mcp/1 phrase"
PHRASE_WORDS = 4
WORD_BITS = 11  # 2048 words
WORDLIST_SIZE = 1 << WORD_BITS
#: SHA-256 of wordlist.txt (2048 lines, each a word and "\n"): the published BIP-39 list.
WORDLIST_SHA256 = "2f5eed53a4727b4bf8880d8f3f199efc90e58503646d9ff8eff3a2ed3b24dbda"
#: Length of a Noise handshake hash with BLAKE2b (HASHLEN).
HANDSHAKE_HASH_LEN = 64


@cache
def wordlist() -> tuple[str, ...]:
    """The 2048 words, in list order (index 0 is "abandon")."""
    data = resources.files("tunnelproto").joinpath("wordlist.txt").read_bytes()
    if hashlib.sha256(data).hexdigest() != WORDLIST_SHA256:
        # A damaged install would make phrases that never match the other end's.
        raise RuntimeError("tunnelproto/wordlist.txt is damaged: reinstall tunnel-mcp")
    words = tuple(data.decode("ascii").split("\n")[:-1])
    assert len(words) == WORDLIST_SIZE
    return words


#: Where each word's bits sit in the top PHRASE_WORDS * WORD_BITS bits, first word first.
_SHIFTS = tuple(WORD_BITS * (PHRASE_WORDS - 1 - i) for i in range(PHRASE_WORDS))


def phrase_indices(handshake_hash: bytes) -> tuple[int, ...]:
    """The four word indices: the first 44 bits of BLAKE2b-512(label || h), as four 11-bit
    big-endian numbers."""
    if len(handshake_hash) != HANDSHAKE_HASH_LEN:
        raise LocalProtocolError(
            f"a handshake hash is {HANDSHAKE_HASH_LEN} bytes, not {len(handshake_hash)}",
            "bad-hash",
        )
    digest = hashlib.blake2b(PHRASE_LABEL + handshake_hash).digest()
    bits = PHRASE_WORDS * WORD_BITS
    nbytes = (bits + 7) // 8
    top = int.from_bytes(digest[:nbytes], "big") >> (nbytes * 8 - bits)
    return tuple([(top >> shift) & (WORDLIST_SIZE - 1) for shift in _SHIFTS])


def derive_phrase(handshake_hash: bytes) -> str:
    """The phrase for one join handshake: four lower-case words joined by single spaces."""
    words = wordlist()
    return " ".join([words[i] for i in phrase_indices(handshake_hash)])
