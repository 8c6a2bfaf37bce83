"""Connection slots: how many TCP connections a server holds, and which one gives way.

A server that refuses newcomers once it is full can be locked by anyone who opens enough
connections and lets them idle (slowloris): 300 sockets that never finish their request head
would shut out every real client. Here a newcomer at the limit takes the slot of the oldest
connection that has not made progress, and only when none may be evicted is it refused.

A connection may be evicted while it has not finished its request head (an honest client sends
its head as soon as it connects, so it is never the oldest idle connection for long, and an
attacker who opens connections faster only pushes out its own), and while its close handshake
is under way with our Close frame already on the wire (it has nothing left to deliver). A
connection that finished its head and is not closing is never evicted: the handler's own
limits (the room's `max_pending`) bound how many of those an attacker can hold.
"""

from __future__ import annotations

from typing import Protocol

import trio


class _Closing(Protocol):
    @property
    def close_sent(self) -> bool: ...


class Slot:
    """One admitted connection. Its task runs inside `scope`, which eviction cancels."""

    __slots__ = ("_connection", "evicted", "head_done", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.evicted = False
        self.head_done = False
        self._connection: _Closing | None = None

    def request_received(self) -> None:
        """The request head is complete: from now on the connection has made progress."""
        self.head_done = True

    def upgraded(self, connection: _Closing) -> None:
        """The connection is past its opening handshake; evictable again once closing."""
        self._connection = connection

    @property
    def evictable(self) -> bool:
        if not self.head_done:
            return True
        return self._connection is not None and self._connection.close_sent


class ConnectionSlots:
    """At most `limit` connections; a newcomer evicts the oldest evictable one at the limit."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the connection limit must be at least 1")
        self.limit = limit
        self._held: dict[Slot, None] = {}  # arrival order: the first evictable is the oldest

    def __len__(self) -> int:
        return len(self._held)

    def admit(self) -> tuple[Slot | None, Slot | None]:
        """(the newcomer's slot or None if refused, the slot evicted to make room or None)."""
        evicted = None
        if len(self._held) >= self.limit:
            # A closing connection goes first: it has nothing more to say. Then the oldest
            # one still sending its request head.
            closing = next((s for s in self._held if s.head_done and s.evictable), None)
            evicted = closing or next((s for s in self._held if not s.head_done), None)
            if evicted is None:
                return None, None
            del self._held[evicted]
            evicted.evicted = True
            evicted.scope.cancel()
        slot = Slot()
        self._held[slot] = None
        return slot, evicted

    def release(self, slot: Slot) -> None:
        self._held.pop(slot, None)
