"""The host relay: binds one `tunnelproto.Room` to a WebSocket server on trio.

Structure (trio-websocket style): `serve_websocket` runs one task per TCP connection; each
connection's task is the *reader* and starts one *writer* task draining that connection's
`Outbox`. One timer task sleeps until `room.next_deadline()` and calls `handle_timer` (no
polling; the sleep is re-armed whenever a room call may have moved the deadline). Every room
call is followed by `_dispatch()`, which moves the room's output into the outboxes without a
checkpoint in between, so per-connection order (and so the Noise nonces) is preserved.
"""

from __future__ import annotations

import logging
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
    ) -> None:
        self.room = room
        self._on_change = on_change
        self._outboxes: dict[int, Outbox] = {}
        self._deadline_moved = trio.Event()
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
        # Loop: cutting a connection off below makes the room emit more (an event, a roster).
        while outputs := self.room.data_to_send():
            for out in outputs:
                outbox = self._outboxes.get(out.conn)
                if outbox is None:
                    continue
                if isinstance(out, Send):
                    try:
                        outbox.put(out.data)
                    except OutboxFull:
                        # The core's window should make this unreachable for a well-behaved
                        # member; a flood of control traffic is what is left. Cut it off.
                        log.info("connection %d: outbound queue full, disconnecting", out.conn)
                        self._end_connection(out.conn, outbox, 4004, "outbound queue full")
                        self.room.connection_lost(out.conn, trio.current_time())
                    self.peak_queued_bytes = max(self.peak_queued_bytes, outbox.queued_bytes)
                elif isinstance(out, Disconnect):
                    self._end_connection(out.conn, outbox, out.code, out.reason)
        self._deadline_moved.set()
        self._on_change()

    def _end_connection(self, conn: int, outbox: Outbox, code: int, reason: str) -> None:
        """Queue the close behind what is already queued, and bound how long that may take:
        a peer that stopped reading would otherwise hold the socket (and its queue) forever."""
        outbox.close(code, reason)
        scope = self._scopes.get(conn)
        if scope is not None:
            scope.deadline = min(scope.deadline, trio.current_time() + CLOSE_TIMEOUT)

    async def _timer(self) -> None:
        while True:
            self._deadline_moved = trio.Event()
            deadline = self.room.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._deadline_moved.wait()
                continue
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
        outbox = Outbox(self.outbox_limit)
        self._outboxes[conn] = outbox
        try:
            async with trio.open_nursery() as nursery:
                self._scopes[conn] = nursery.cancel_scope
                nursery.start_soon(self._writer, ws, outbox, nursery.cancel_scope)
                try:
                    while True:
                        data = await ws.receive()
                        self.room.receive(conn, data, trio.current_time())
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

    async def _writer(self, ws: WebSocket, outbox: Outbox, scope: trio.CancelScope) -> None:
        try:
            while True:
                item = await outbox.get_batch(WRITE_BATCH)
                if isinstance(item, CloseMarker):
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await ws.close(item.code, item.reason)
                    break
                await ws.send_many(item)
        except WebSocketClosed:
            pass
        scope.cancel()


def wall_clock_offset() -> float:
    """Added to trio's clock to stamp messages with wall-clock time."""
    return time.time() - trio.current_time()


__all__ = ["Relay", "RoomConfig", "wall_clock_offset"]
