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

#: The capability that enables file sharing (spec "Files"). A frame in the two tables below is
#: legal only on a connection where it is in force (in `hello.caps` and in `welcome.caps`);
#: elsewhere it is `unexpected`, like any frame not in the tables above.
FILES_CAP = "files/1"

#: The capability that lets one transport message carry several frames (spec section 8.3).
#: It changes no state table: a batch is read frame by frame, each judged as if it came alone.
BATCH_CAP = "batch/1"

#: Frames the room accepts in OPEN, beyond `ROOM_ACCEPTS[OPEN]`, from a connection with files/1.
ROOM_ACCEPTS_FILES: frozenset[type[f.Frame]] = frozenset(
    {f.Share, f.Manifest, f.Unshare, f.ListFiles, f.Fetch, f.Credit, f.Cancel, f.Chunk, f.Abort}
)

#: Frames a member accepts in OPEN, beyond `MEMBER_ACCEPTS`, once files/1 is in force.
MEMBER_ACCEPTS_FILES: frozenset[type[f.Frame]] = frozenset(
    {f.Offer, f.Unoffer, f.Listing, f.Pull, f.Credit, f.Cancel, f.Chunk, f.Abort}
)

#: Handshake payloads the member accepts inside message 2.
MEMBER_HANDSHAKE_ACCEPTS: frozenset[type[f.Frame]] = frozenset({f.Welcome, f.Refuse})
