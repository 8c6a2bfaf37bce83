"""One ordered outbound queue per WebSocket, drained by exactly one writer task.

Order matters more than usual here: every transport message carries the next Noise nonce, so
two messages sent out of order fail to decrypt and kill the connection. Callers therefore
enqueue synchronously (no checkpoint between taking bytes from the core and queueing them) and
a single task writes. The queue is bounded in bytes; when it overflows the connection is cut
(the member can resume), so a peer that stops reading costs the host at most `limit` bytes.

A direct path saves the writer's task switch on a quiet connection: `put_all` hands a small
burst straight to the socket (`DirectWriter.send_now`) when the writer is idle, waiting on an
empty queue. Nothing is queued or being written then, so the order still holds; what the
socket did not take at once waits in the WebSocket (at most that one burst), and the writer is
woken to write it before anything queued later. The writer task itself may be started only
when it is first needed (`start_writer`): until then the outbox is as idle as a waiting writer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

#: How many queued bytes a writer puts into one write to the socket.
WRITE_BATCH = 64 * 1024
#: The most bytes `put_all` writes directly: a burst bigger than this goes through the queue,
#: so what the socket leaves unsent outside the queue's bound stays small.
DIRECT_MAX = WRITE_BATCH


class DirectWriter(Protocol):
    """What the direct path needs from a WebSocket (`tunnel_trio._ws.WebSocket`)."""

    def send_now(self, messages: Sequence[bytes]) -> bool: ...

    @property
    def unsent_bytes(self) -> int: ...


@dataclass(frozen=True, slots=True)
class CloseMarker:
    code: int
    reason: str


class OutboxFull(Exception):
    pass


class Outbox:
    def __init__(
        self,
        limit: int,
        direct: DirectWriter | None = None,
        start_writer: Callable[[], None] | None = None,
    ) -> None:
        self.limit = limit
        self._direct = direct
        #: Starts the writer task, the first time the outbox needs one (see `_wake_writer`);
        #: None once started, or when the caller started it itself.
        self._start_writer = start_writer
        # True while the writer waits in `get` on an empty queue, or has not asked for anything
        # yet: nothing is queued or being written, so the direct path is open.
        self._idle = True
        # The writer must write what the direct path left unsent, even with nothing queued.
        self._kicked = False
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
        self._wake_writer()

    def put_all(self, items: Sequence[bytes]) -> None:
        """Queue `items` in order (as `put` does each), or write them at once when the writer
        is idle and they are small (see the module docstring)."""
        if not items:
            return
        direct = self._direct
        if (
            direct is not None
            and self._idle
            and not self._items
            and not self.closing
            and sum(map(len, items)) <= DIRECT_MAX
            and direct.send_now(items)
        ):
            if direct.unsent_bytes:
                self.kick()
            return
        for data in items:
            self.put(data)

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self._items.append(CloseMarker(code, reason))
        self._wake_writer()

    async def get(self) -> bytes | CloseMarker | None:
        """The next item; None when there is none but the direct path left bytes unsent (the
        writer writes them: `send_many([])`)."""
        self._idle = False
        while not self._items:
            if self._kicked:
                self._kicked = False
                return None
            self._idle = True
            try:
                await self._wake.wait()
            finally:
                self._idle = False
            self._wake = trio.Event()
        self._kicked = False  # whatever is written next writes the leftover first
        item = self._items.popleft()
        if isinstance(item, bytes):
            self.queued_bytes -= len(item)
        return item

    def kick(self) -> None:
        """Wake the writer even with nothing queued (`get_batch` returns an empty batch)."""
        self._kicked = True
        self._wake_writer()

    def _wake_writer(self) -> None:
        start = self._start_writer
        if start is not None:
            # A connection whose every write went the direct way never needs its writer: a
            # quiet one (a join, up to its welcome) then costs no task.
            self._start_writer = None
            start()
        self._wake.set()

    def take_ready(self, max_bytes: int) -> list[bytes]:
        """What is queued now, in order, up to `max_bytes` (possibly nothing), without waiting;
        never the close marker."""
        batch: list[bytes] = []
        size = 0
        while self._items:
            item = self._items[0]
            if isinstance(item, CloseMarker) or size + len(item) > max_bytes:
                break
            self._items.popleft()
            self.queued_bytes -= len(item)
            batch.append(item)
            size += len(item)
        return batch

    async def get_batch(self, max_bytes: int) -> list[bytes] | CloseMarker:
        """Every message queued now, in order, up to `max_bytes` (always at least one); or the
        close marker when it is next. One write for a burst instead of one per message. An empty
        batch: only what the direct path left unsent is to be written."""
        first = await self.get()
        if first is None:
            return []
        if isinstance(first, CloseMarker):
            return first
        if len(first) >= max_bytes or not self._items:
            return [first]
        return [first, *self.take_ready(max_bytes - len(first))]
