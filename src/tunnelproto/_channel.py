"""The handshake byte layout and the encrypted channel that follows it.

Handshake message 1 (member -> host):
    version (1 byte) || key id (16 bytes) || Noise message 1 (e || encrypted hello)
Handshake message 2 (host -> member), first byte says which:
    0x00 || Noise message 2 (e || encrypted welcome or refuse)
    0x01 || CBOR refuse, in the clear: only when the host holds no key for that key id
After that every transport message is one Noise transport message carrying one frame, or,
where the capability batch/1 is in force (spec section 8.3), one frame or more back to back.
"""

from __future__ import annotations

from collections.abc import Callable

from . import _frames
from ._errors import LocalProtocolError, RemoteProtocolError
from ._link import ID_LEN
from ._noise import MAX_MESSAGE, CipherState, HandshakeState, NoiseError

PROLOGUE_LABEL = b"tunnel-mcp/1"
MSG2_NOISE = 0x00
MSG2_PLAIN_REFUSE = 0x01
#: The largest transport message (the max WebSocket message a relay accepts).
MAX_FRAME = MAX_MESSAGE
#: The largest frame plaintext: Noise's limit less the AEAD tag.
MAX_PLAINTEXT = MAX_MESSAGE - 16
#: Handshake message 1 is small; anything bigger is an attack or a bug.
MAX_MSG1 = 1 + ID_LEN + 32 + 2048 + 16
#: What sealing adds to a plaintext: the AEAD tag.
SEAL_OVERHEAD = 16


#: What a driver may hand in as one transport message.
Message = bytes | bytearray | memoryview


def message_bytes(data: Message) -> bytes:
    """One transport message as `bytes`, from any bytes-like object a driver hands in.

    Sockets and WebSocket libraries return bytearray or memoryview as often as bytes; what a
    peer sent must never fail on its container type. Anything that is not bytes-like is the
    caller's bug, not the peer's.
    """
    if type(data) is bytes:
        return data
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise LocalProtocolError(
            f"a transport message must be bytes-like, not {type(data).__name__}", "bad-input"
        ) from None


def prologue(tunnel_id: str) -> bytes:
    """Binds the protocol name, version and tunnel id into the handshake hash (spec 4.2)."""
    return PROLOGUE_LABEL + b"\x00" + bytes([_frames.PROTOCOL_VERSION]) + tunnel_id.encode("ascii")


def new_handshake(
    *, initiator: bool, tunnel_id: str, psk: bytes, rng: Callable[[int], bytes]
) -> HandshakeState:
    return HandshakeState(initiator=initiator, prologue=prologue(tunnel_id), psk=psk, rng=rng)


def split_msg1(data: bytes) -> tuple[int, bytes, bytes]:
    """(version, key id, noise bytes) of handshake message 1."""
    if len(data) > MAX_MSG1:
        raise RemoteProtocolError("handshake message 1 is too large", "malformed")
    if len(data) < 1 + ID_LEN + 32 + 16:
        raise RemoteProtocolError("handshake message 1 is truncated", "malformed")
    return data[0], data[1 : 1 + ID_LEN], data[1 + ID_LEN :]


class Channel:
    """Per-direction Noise CipherStates after the handshake.

    Without batch/1 every transport message carries one frame: `seal` it, `open` it. With it
    (`batch`), a sender `queue`s encoded frames and `seal_queued` packs them, in order, into as
    few transport messages as fit (each at most MAX_PLAINTEXT of plaintext): one seal, one
    nonce and one WebSocket message for a burst instead of one per frame. Nonce order is seal
    order, and seal order is queue order, so a driver that sends what comes out, in order,
    keeps the nonces in step. `open_all` reads either kind.
    """

    __slots__ = ("_send", "_recv", "batch", "queued")

    def __init__(self, send: CipherState, recv: CipherState, *, batch: bool = False) -> None:
        self._send = send
        self._recv = recv
        self.batch = batch
        #: Encoded frames waiting for `seal_queued` (batch only).
        self.queued: list[bytes] = []

    def seal(self, plaintext: bytes) -> bytes:
        return self._send.seal(plaintext)

    def queue(self, plaintext: bytes) -> None:
        self.queued.append(plaintext)

    def seal_queued(self) -> list[bytes]:
        """The queued frames as sealed transport messages, each holding as many whole frames,
        in order, as fit in MAX_PLAINTEXT."""
        frames, self.queued = self.queued, []
        if not frames:
            return []
        if len(frames) == 1:
            return [self._send.seal(frames[0])]
        if sum(map(len, frames)) <= MAX_PLAINTEXT:
            return [self._send.seal(b"".join(frames))]  # the usual burst: one message, no loop
        messages: list[bytes] = []
        batch: list[bytes] = []
        size = 0
        for frame in frames:
            if batch and size + len(frame) > MAX_PLAINTEXT:
                messages.append(self.seal(batch[0] if len(batch) == 1 else b"".join(batch)))
                batch, size = [], 0
            batch.append(frame)
            size += len(frame)
        if batch:
            messages.append(self.seal(batch[0] if len(batch) == 1 else b"".join(batch)))
        return messages

    def _decrypt(self, data: bytes) -> bytes:
        if len(data) > MAX_FRAME:
            raise RemoteProtocolError("transport message exceeds the max frame", "too-large")
        try:
            return self._recv.open(data)
        except NoiseError:
            # Replayed, reordered, dropped-then-continued, truncated or forged: all look the same
            # from here, and all are fatal for this connection (spec 5.1).
            raise RemoteProtocolError("transport message failed to decrypt", "decrypt") from None

    def open(self, data: bytes) -> _frames.Frame:
        """One transport message that carries exactly one frame."""
        return _frames.decode_frame(self._decrypt(data))

    def open_all(self, data: bytes) -> list[_frames.Frame]:
        """One transport message: its frames (one, or with batch/1 one or more)."""
        if len(data) > MAX_FRAME:
            raise RemoteProtocolError("transport message exceeds the max frame", "too-large")
        try:
            # (`_decrypt`, written out: a Python call less per message)
            plaintext = self._recv.open(data)
        except NoiseError:
            raise RemoteProtocolError("transport message failed to decrypt", "decrypt") from None
        if self.batch:
            return _frames.decode_frames(plaintext)
        return [_frames.decode_frame(plaintext)]
