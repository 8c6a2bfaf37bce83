"""The connection state machines, as tables.

What belongs here: which states a connection can be in, and which frame types are legal in
each. What does not: what a frame *does* (that is `_room.py` and `_member.py`). Rule 1 (after
h11): a frame that is not in the table for the current state is a protocol error, full stop,
no matter how harmless it looks. Rule 2: the tables are the only place that decides legality,
so the spec's state table and the code cannot drift apart without a test noticing.
"""

from __future__ import annotations

import enum

from . import _frames as f


class ConnState(enum.Enum):
    """One connection as the room sees it."""

    HANDSHAKE = "handshake"  # waiting for handshake message 1
    CONFIRMING = "confirming"  # message 2 sent; the member's first transport frame confirms
    OPEN = "open"  # seated; chat flows
    CLOSED = "closed"


class MemberState(enum.Enum):
    """The member's own connection."""

    HANDSHAKE = "handshake"  # message 1 sent, waiting for message 2
    OPEN = "open"
    CLOSED = "closed"  # ended cleanly (left, room closed, refused)
    ERROR = "error"  # the peer broke the protocol or the connection died


#: Frames the room accepts from a member, per connection state (handshake messages are not
#: frames: they are handled before the channel exists).
ROOM_ACCEPTS: dict[ConnState, frozenset[type[f.Frame]]] = {
    ConnState.HANDSHAKE: frozenset(),
    # The first transport frame must be an ack: it proves the member derived the session keys
    # (so handshake message 1 was not a replay) and that it holds the welcome and its ticket.
    ConnState.CONFIRMING: frozenset({f.Ack}),
    ConnState.OPEN: frozenset({f.Say, f.Ack, f.Ping, f.Pong, f.Close}),
    ConnState.CLOSED: frozenset(),
}

#: Frames a member accepts from the room once its connection is open.
MEMBER_ACCEPTS: frozenset[type[f.Frame]] = frozenset(
    {f.Message, f.Event, f.Roster, f.Ping, f.Pong, f.Close, f.Error}
)

#: Handshake payloads the member accepts inside message 2.
MEMBER_HANDSHAKE_ACCEPTS: frozenset[type[f.Frame]] = frozenset({f.Welcome, f.Refuse})
