"""The host relay: binds one `tunnelproto.Room` to a WebSocket server on trio.

Structure (trio-websocket style): `serve_websocket` runs one task per TCP connection; each
connection's task is the *reader* and starts one *writer* task draining that connection's
`Outbox`. One timer task sleeps until `room.next_deadline()` and calls `handle_timer` (no
polling; the sleep is re-armed whenever a room call may have moved the deadline). Every room
call is followed by `_dispatch()`, which moves the room's output into the outboxes without a
checkpoint in between, so per-connection order (and so the Noise nonces) is preserved.

Files (spec "Files"): file chunks are sealed only when a connection's outbox runs low (under a
write batch), by `room.pull_bulk`, behind everything sealed before; so chat, events and acks
never wait behind more than one batch of chunks. The pull happens synchronously in `_dispatch`
(after each room call) and in the connection's writer (right after it takes a batch), never
with a checkpoint between sealing and queueing. The room's file events (reads of the host's own
offers, chunks of the host's own fetches) go to `on_files`, which must not call the room
synchronously: it only queues work (disk I/O runs in worker threads, see `files.py`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio

from tunnelproto import (
    CLOSE_ROOM_CLOSED,
    CLOSE_TOO_MANY_PENDING,
    MAX_FRAME,
    Disconnect,
    Room,
    RoomConfig,
    Send,
    TunnelEvent,
)

from ._outbox import WRITE_BATCH, CloseMarker, Outbox, OutboxFull
from ._ws import WebSocket, WebSocketClosed, serve_websocket

log = logging.getLogger("tunnel_trio.host")

#: Headroom over the room's ack window for control frames (roster, pong, errors) in a queue.
OUTBOX_SLACK = 256 * 1024
#: How long a graceful WebSocket close may take before the socket is just dropped.
CLOSE_TIMEOUT = 2.0
#: How long a new TCP connection may take to deliver its request head (and finish TLS, if
#: any). An honest client sends it at once; a slowloris connection is dropped this soon, and
#: before that it is the first to give way when the relay is full (see `ConnectionSlots`).
REQUEST_HEAD_TIMEOUT = 3.0


class Relay:
    """Owns the Room, the listening socket and every member connection of one tunnel."""

    def __init__(
        self,
        room: Room,
        *,
        on_change: Callable[[], None] = lambda: None,
        on_files: Callable[[list[TunnelEvent]], None] = lambda events: None,
    ) -> None:
        self.room = room
        self._on_change = on_change
        self._on_files = on_files
        self._outboxes: dict[int, Outbox] = {}
        #: The timer task's sleep (None while it is not sleeping): its deadline is the room's
        #: next one, moved earlier from here when a call brings one forward.
        self._timer_scope: trio.CancelScope | None = None
        self.port: int | None = None
        #: The most bytes ever queued for one connection (each is bounded by outbox_limit).
        self.peak_queued_bytes = 0
        self._cancel = trio.CancelScope()
        self._conn_gone = trio.Event()
        self._scopes: dict[int, trio.CancelScope] = {}

    @property
    def outbox_limit(self) -> int:
        return self.room.config.window + OUTBOX_SLACK

    def queued_bytes(self) -> int:
        return sum(o.queued_bytes for o in self._outboxes.values())

    async def run(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until the room closes or `stop()` is called; reports the bound port."""
        with self._cancel:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    lambda task_status: serve_websocket(
                        self._handle,
                        host,
                        port,
                        accept_path=lambda path: path == f"/t/{self.room.tunnel_id}",
                        max_message_size=MAX_FRAME,
                        handshake_timeout=min(
                            REQUEST_HEAD_TIMEOUT, self.room.config.handshake_timeout
                        ),
                        task_status=task_status,
                    )
                )
                self.port = listeners[0].socket.getsockname()[1]
                nursery.start_soon(self._timer)
                task_status.started(self.port)

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout`) until every connection has said goodbye and gone."""
        with trio.move_on_after(timeout):
            while self._outboxes:
                await self._conn_gone.wait()

    # ---- called by the session for the host's own actions; always followed by dispatch ----

    def call(self, fn: Callable[[float], object]) -> object:
        result = fn(trio.current_time())
        self._dispatch()
        return result

    # ---- internals ----

    def _dispatch(self) -> None:
        self._move_output()
        self._rearm_timer()
        self._on_change()

    def _rearm_timer(self) -> None:
        # Only a deadline earlier than the one the timer sleeps until needs moving; a later
        # one costs at most one early wake-up (handle_timer does nothing, then re-arms). The
        # sleep's deadline is moved in place: the timer task is not woken to re-arm (each new
        # connection's handshake deadline did that, a task switch per join).
        scope = self._timer_scope
        if scope is None:
            return  # not sleeping: it reads the next deadline before it sleeps again
        deadline = self.room.next_deadline()
        if deadline is not None and deadline < scope.deadline:
            scope.deadline = deadline

    def _move_output(self) -> None:
        """The room's output into the outboxes; chunks for every connection whose outbox is
        low; the room's file events to `on_files`. Loops: cutting a connection off makes the
        room emit more (an event, a roster), and so may a pull."""
        room = self.room
        while True:
            while outputs := room.data_to_send():
                # Per connection, what it gets goes to its outbox in one call (one write when
                # it goes directly); a disconnect goes behind what came before it.
                sends: dict[int, list[bytes]] = {}
                for out in outputs:
                    if type(out) is Send:
                        if out.conn in sends:
                            sends[out.conn].append(out.data)
                        else:
                            sends[out.conn] = [out.data]
                    else:
                        assert isinstance(out, Disconnect)
                        outbox = self._outboxes.get(out.conn)
                        if outbox is None:
                            continue
                        self._put(out.conn, outbox, sends.pop(out.conn, []))
                        self._end_connection(out.conn, outbox, out.code, out.reason)
                for conn, items in sends.items():
                    outbox = self._outboxes.get(conn)
                    if outbox is not None:
                        self._put(conn, outbox, items)
            pulled = 0
            for conn in room.bulk_connections():
                outbox = self._outboxes.get(conn)
                if outbox is not None and not outbox.closing and outbox.queued_bytes < WRITE_BATCH:
                    pulled += room.pull_bulk(conn, WRITE_BATCH)
            events = room.files.take_events()
            if events:
                self._on_files(events)
            if not pulled and not events:
                return

    def _put(self, conn: int, outbox: Outbox, items: list[bytes]) -> None:
        if not items:
            return
        try:
            outbox.put_all(items)
        except OutboxFull:
            # The core's window should make this unreachable for a well-behaved member; a
            # flood of control traffic is what is left. Cut it off.
            log.info("connection %d: outbound queue full, disconnecting", conn)
            self._end_connection(conn, outbox, 4004, "outbound queue full")
            self.room.connection_lost(conn, trio.current_time())
        self.peak_queued_bytes = max(self.peak_queued_bytes, outbox.queued_bytes)

    def _end_connection(self, conn: int, outbox: Outbox, code: int, reason: str) -> None:
        """Queue the close behind what is already queued, and bound how long that may take:
        a peer that stopped reading would otherwise hold the socket (and its queue) forever."""
        outbox.close(code, reason)
        scope = self._scopes.get(conn)
        if scope is not None:
            scope.deadline = min(scope.deadline, trio.current_time() + CLOSE_TIMEOUT)

    async def _timer(self) -> None:
        while True:
            deadline = self.room.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._timer_scope = scope
                try:
                    await trio.sleep_forever()
                finally:
                    self._timer_scope = None
            self.room.handle_timer(trio.current_time())
            self._dispatch()

    async def _handle(self, ws: WebSocket) -> None:
        conn = self.room.open_connection(trio.current_time())
        self._dispatch()  # the new connection's handshake deadline may be the next one
        if conn is None:
            if self.room.closed:
                await ws.close(CLOSE_ROOM_CLOSED, "the room has closed")
            else:
                await ws.close(CLOSE_TOO_MANY_PENDING, "too many pending connections")
            return
        outbox = Outbox(self.outbox_limit, ws)
        self._outboxes[conn] = outbox
        try:
            async with trio.open_nursery() as nursery:
                self._scopes[conn] = nursery.cancel_scope
                nursery.start_soon(self._writer, ws, conn, outbox, nursery.cancel_scope)
                try:
                    while True:
                        data = await ws.receive()
                        self.room.receive(conn, data, trio.current_time())
                        if not ws.message_ready():
                            # What a burst of messages makes goes out together (with batch/1
                            # in one transport message per connection). The burst is bounded
                            # by one socket read.
                            self._dispatch()
                except WebSocketClosed:
                    self.room.connection_lost(conn, trio.current_time())
                    self._dispatch()
                    nursery.cancel_scope.cancel()
        finally:
            self._outboxes.pop(conn, None)
            self._scopes.pop(conn, None)
            self._conn_gone.set()
            self._conn_gone = trio.Event()
            self.room.connection_lost(conn, trio.current_time())
            self._dispatch()
            with trio.CancelScope(shield=True):
                await ws.aclose()

    async def _writer(
        self, ws: WebSocket, conn: int, outbox: Outbox, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                item = await outbox.get_batch(WRITE_BATCH)
                if isinstance(item, CloseMarker):
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await ws.close(item.code, item.reason)
                    break
                if (
                    outbox.queued_bytes < WRITE_BATCH
                    and not outbox.closing
                    and self.room.files.has_bulk(conn)
                ):
                    # Seal the next batch of chunks while this one is written, so the socket
                    # never waits for us (chat sealed meanwhile still goes before the batch
                    # after it).
                    self._move_output()
                await ws.send_many(item)
        except WebSocketClosed:
            pass
        scope.cancel()


def wall_clock_offset() -> float:
    """Added to trio's clock to stamp messages with wall-clock time."""
    return time.time() - trio.current_time()


__all__ = ["Relay", "RoomConfig", "wall_clock_offset"]
