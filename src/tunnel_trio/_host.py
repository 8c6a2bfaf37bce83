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

Autocork (the host's own says, as Linux TCP corks small writes while earlier ones are still in
the stack): a say made while the process has been busy ever since the relay's last say went out
is held in the room (stamped, charged to each member's window, not yet sealed) and goes out
with whatever follows: the next dispatch with output of its own (a message that makes none,
such as a member's ack, which the room tells by `Room.other_output`, leaves them held), or at
the latest when the scheduler has nothing left to run (`_uncork`), when CORK_MAX_SAYS or
CORK_MAX_BYTES are held, or after CORK_MAX_DELAY. With batch/1 the says held for a member
then share one transport message: one seal, one write and one read instead of one each. A say
made after the process went idle (an agent's say, one at a time) goes out at once, from the
say itself.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio

# trio.testing.wait_all_tasks_blocked, taken from where trio defines it: importing trio.testing
# itself imports pytest when it is installed (a quarter of a second). The autocork's test
# checks that the two are the same function; a trio that moved it gets trio.testing's.
try:
    from trio._core._generated_run import wait_all_tasks_blocked
except ImportError:  # pragma: no cover - another trio layout
    from trio.testing import wait_all_tasks_blocked

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
#: Autocork bounds (see the module docstring): how many host says go out together at most,
#: about how many bytes of their text, and how long the first of them may wait (only while
#: the process stays busy: a say after it went idle goes out at once). 2 ms flushed a fan-out
#: of 1 KiB says to 15 members every few says on a loaded machine, each flush a seal, a write
#: and a read per member.
CORK_MAX_SAYS = 64
CORK_MAX_BYTES = 64 * 1024
CORK_MAX_DELAY = 0.005
#: After a corked stretch that held a lone say (it waited for nothing: the host says one
#: message at a time, each after the last was handled), this many says go out at once without
#: corking, doubling with each such stretch up to CORK_BACKOFF_MAX.
CORK_BACKOFF_MIN = 16
CORK_BACKOFF_MAX = 1024


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
        #: Its deadline, kept here (the scope's property is a Python call per message).
        self._timer_at = math.inf
        self.port: int | None = None
        #: The most bytes ever queued for one connection (each is bounded by outbox_limit).
        self.peak_queued_bytes = 0
        self._cancel = trio.CancelScope()
        self._conn_gone = trio.Event()
        self._scopes: dict[int, trio.CancelScope] = {}
        # Autocork: `_corked` from a say that went out until the process next went idle;
        # `_held` / `_held_bytes`: says (and their text bytes) held in the room meanwhile.
        self._corked = False
        self._held = 0
        self._held_bytes = 0
        self._held_since = 0.0  # when the first of them was said
        self._cork_set = trio.Event()
        # Says that go out without starting a corked stretch, and the next such backoff.
        self._cork_skip = 0
        self._cork_backoff = CORK_BACKOFF_MIN

    @property
    def outbox_limit(self) -> int:
        return self.room.config.window + OUTBOX_SLACK

    @property
    def held_says(self) -> int:
        """The host's says held by the autocork now (see the module docstring)."""
        return self._held

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
                nursery.start_soon(self._uncork)
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

    def say(self, fn: Callable[[float], object], size: int) -> object:
        """`call` for the host's own say of `size` bytes of text: held while corked (see the
        module docstring), else out at once."""
        result = fn(trio.current_time())
        if (
            self._corked
            and self._held < CORK_MAX_SAYS - 1
            and self._held_bytes + size <= CORK_MAX_BYTES
        ):
            if not self._held:
                self._held_since = trio.current_time()
            self._held += 1
            self._held_bytes += size
            # The timer is re-armed when what is held goes out: a say only moves deadlines
            # later, except a member's stall deadline, which is stall_timeout away.
            self._on_change()
            return result
        self._dispatch()
        if not self._corked:
            if self._cork_skip:
                self._cork_skip -= 1
            else:
                self._corked = True
                self._cork_set.set()
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
        if deadline is not None and deadline < self._timer_at:
            scope.deadline = self._timer_at = deadline

    def _move_output(self) -> None:
        """The room's output into the outboxes; chunks for every connection whose outbox is
        low; the room's file events to `on_files`. Loops: cutting a connection off makes the
        room emit more (an event, a roster), and so may a pull."""
        room = self.room
        files = room.files
        self._held = self._held_bytes = 0
        while True:
            outputs = room.data_to_send()
            send = outputs[0] if len(outputs) == 1 else None
            if type(send) is Send:
                # The usual drain (a member's say: one message for its sender, batch/1 sealing
                # all of a connection's frames together): no grouping, and no second drain
                # unless the put cut the connection off (which makes the room emit more).
                outbox = self._outboxes.get(send.conn)
                if outbox is not None and not self._put(send.conn, outbox, [send.data]):
                    continue
                outputs = []
            while outputs:
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
                outputs = room.data_to_send()
            pulled = 0
            for conn in files.bulk_connections():
                outbox = self._outboxes.get(conn)
                if outbox is not None and not outbox.closing and outbox.queued_bytes < WRITE_BATCH:
                    pulled += room.pull_bulk(conn, WRITE_BATCH)
            events = files.take_events()
            if events:
                self._on_files(events)
            if not pulled and not events:
                return

    def _put(self, conn: int, outbox: Outbox, items: list[bytes]) -> bool:
        """Queue `items` for `conn`; True if all went, False if that cut the connection off
        (its outbox overflowed: the room then has more to send)."""
        if not items:
            return True
        try:
            outbox.put_all(items)
        except OutboxFull:
            # The core's window should make this unreachable for a well-behaved member; a
            # flood of control traffic is what is left. Cut it off.
            log.info("connection %d: outbound queue full, disconnecting", conn)
            self._end_connection(conn, outbox, 4004, "outbound queue full")
            self.room.connection_lost(conn, trio.current_time())
            return False
        if outbox.queued_bytes > self.peak_queued_bytes:
            self.peak_queued_bytes = outbox.queued_bytes
        return True

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
            self._timer_at = math.inf if deadline is None else deadline
            with trio.CancelScope(deadline=self._timer_at) as scope:
                self._timer_scope = scope
                try:
                    await trio.sleep_forever()
                finally:
                    self._timer_scope = None
            self.room.handle_timer(trio.current_time())
            self._dispatch()

    async def _uncork(self) -> None:
        """Ends each corked stretch once nothing else is left to run: what is held goes out,
        and the next say goes out at once. While the process stays busy, what is held goes
        out every CORK_MAX_DELAY."""
        while True:
            await self._cork_set.wait()
            self._cork_set = trio.Event()
            while True:
                if self._held:
                    deadline = self._held_since + CORK_MAX_DELAY
                else:
                    deadline = trio.current_time() + CORK_MAX_DELAY
                with trio.move_on_at(deadline) as waited:
                    await wait_all_tasks_blocked()
                if not waited.cancelled_caught:
                    break
                # Still busy: what has waited CORK_MAX_DELAY goes out; the stretch goes on.
                if self._held and trio.current_time() >= self._held_since + CORK_MAX_DELAY:
                    self._cork_backoff = CORK_BACKOFF_MIN
                    self._dispatch()
            self._corked = False
            if self._held == 1:
                # The stretch held one say until the process went idle: it waited for
                # nothing (the host says one message at a time). Back off.
                self._cork_skip = self._cork_backoff
                self._cork_backoff = min(CORK_BACKOFF_MAX, self._cork_backoff * 2)
            elif self._held:
                self._cork_backoff = CORK_BACKOFF_MIN
            if self._held:
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
        try:
            async with trio.open_nursery() as nursery:
                serving = True

                def start_writer() -> None:
                    # Once the reader is done nothing more goes out, and a nursery left
                    # without tasks is closed to new ones.
                    if serving:
                        nursery.start_soon(self._writer, ws, conn, outbox, nursery.cancel_scope)

                # The writer starts when the outbox first needs it: a join's message 2 (and,
                # on a quiet connection, most of what follows) goes the direct way.
                outbox = Outbox(self.outbox_limit, ws, start_writer=start_writer)
                self._outboxes[conn] = outbox
                self._scopes[conn] = nursery.cancel_scope
                # trio.current_time() is three Python calls; the clock's own method is one.
                clock_now = trio.lowlevel.current_clock().current_time
                try:
                    while True:
                        data = await ws.receive()
                        self.room.receive(conn, data, clock_now())
                        if not ws.message_ready():
                            # What a burst of messages makes goes out together (with batch/1
                            # in one transport message per connection). The burst is bounded
                            # by one socket read.
                            if self._held and not self.room.other_output:
                                # Nothing new but the held says (a member's ack): they stay
                                # held for the rest of the cork.
                                self._rearm_timer()
                                self._on_change()
                            else:
                                self._dispatch()
                except WebSocketClosed:
                    self.room.connection_lost(conn, trio.current_time())
                    self._dispatch()
                    nursery.cancel_scope.cancel()
                finally:
                    serving = False
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
