"""One ordered outbound queue per WebSocket, drained by exactly one writer task.

Order matters more than usual here: every transport message carries the next Noise nonce, so
two messages sent out of order fail to decrypt and kill the connection. Callers therefore
enqueue synchronously (no checkpoint between taking bytes from the core and queueing them) and
a single task writes. The queue is bounded in bytes; when it overflows the connection is cut
(the member can resume), so a peer that stops reading costs the host at most `limit` bytes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import trio

#: How many queued bytes a writer puts into one write to the socket.
WRITE_BATCH = 64 * 1024


@dataclass(frozen=True, slots=True)
class CloseMarker:
    code: int
    reason: str


class OutboxFull(Exception):
    pass


class Outbox:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[bytes | CloseMarker] = deque()
        self.queued_bytes = 0
        self.peak_bytes = 0
        self._wake = trio.Event()
        self.closing = False

    def put(self, data: bytes) -> None:
        if self.closing:
            return
        if self.queued_bytes + len(data) > self.limit:
            raise OutboxFull(f"outbound queue over {self.limit} bytes")
        self._items.append(data)
        self.queued_bytes += len(data)
        self.peak_bytes = max(self.peak_bytes, self.queued_bytes)
        self._wake.set()

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self._items.append(CloseMarker(code, reason))
        self._wake.set()

    async def get(self) -> bytes | CloseMarker:
        while not self._items:
            await self._wake.wait()
            self._wake = trio.Event()
        item = self._items.popleft()
        if isinstance(item, bytes):
            self.queued_bytes -= len(item)
        return item

    async def get_batch(self, max_bytes: int) -> list[bytes] | CloseMarker:
        """Every message queued now, in order, up to `max_bytes` (always at least one); or the
        close marker when it is next. One write for a burst instead of one per message."""
        first = await self.get()
        if isinstance(first, CloseMarker):
            return first
        batch, size = [first], len(first)
        while self._items:
            item = self._items[0]
            if isinstance(item, CloseMarker) or size + len(item) > max_bytes:
                break
            self._items.popleft()
            self.queued_bytes -= len(item)
            batch.append(item)
            size += len(item)
        return batch
