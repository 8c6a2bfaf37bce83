"""tunnelproto: the sans-IO tunnel protocol core.

No sockets, no event loop, no clock: bytes and events in, bytes and events out, time passed in
as `now`. See spec/protocol.md for the protocol itself.
"""

from ._channel import MAX_FRAME, MAX_PLAINTEXT
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import (
    ChatMessage,
    ConnectionEnded,
    Disconnect,
    Refused,
    RoomEvent,
    RosterChanged,
    SayAccepted,
    SayRejected,
    Send,
    TunnelEvent,
    Welcomed,
)
from ._frames import PROTOCOL_VERSION, MemberEntry
from ._link import JoinLink, LinkError
from ._member import MAX_UNACKED_SAYS, MemberConnection, ResumeState
from ._names import MAX_NAME_CHARS, sanitize_name
from ._phrase import derive_phrase
from ._removal import MAX_REASON_CHARS
from ._room import (
    CLOSE_FLOODING,
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_KEEPALIVE_TIMEOUT,
    CLOSE_LEFT,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REFUSED,
    CLOSE_REMOVED,
    CLOSE_REPLACED,
    CLOSE_ROOM_CLOSED,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_MANY_PENDING,
    MAX_TEXT_BYTES,
    Invite,
    Room,
    RoomConfig,
    TranscriptEntry,
)
from ._state import ConnState, MemberState

__all__ = [
    "CLOSE_FLOODING",
    "CLOSE_HANDSHAKE_TIMEOUT",
    "CLOSE_KEEPALIVE_TIMEOUT",
    "CLOSE_LEFT",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_REFUSED",
    "CLOSE_REMOVED",
    "CLOSE_REPLACED",
    "CLOSE_ROOM_CLOSED",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_MANY_PENDING",
    "MAX_FRAME",
    "MAX_NAME_CHARS",
    "MAX_PLAINTEXT",
    "MAX_REASON_CHARS",
    "MAX_TEXT_BYTES",
    "MAX_UNACKED_SAYS",
    "PROTOCOL_VERSION",
    "ChatMessage",
    "ConnState",
    "ConnectionEnded",
    "Disconnect",
    "Invite",
    "JoinLink",
    "LinkError",
    "LocalProtocolError",
    "MemberConnection",
    "MemberEntry",
    "MemberState",
    "ProtocolError",
    "Refused",
    "RemoteProtocolError",
    "ResumeState",
    "Room",
    "RoomConfig",
    "RoomEvent",
    "RosterChanged",
    "SayAccepted",
    "SayRejected",
    "Send",
    "TranscriptEntry",
    "TunnelEvent",
    "Welcomed",
    "derive_phrase",
    "sanitize_name",
]
