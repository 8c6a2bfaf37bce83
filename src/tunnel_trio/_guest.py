"""The member client: binds a `tunnelproto.MemberConnection` to a WebSocket, and reconnects.

One supervisor task owns the seat. It dials, runs one connection (reader in this task, a writer
task draining the connection's `Outbox`, a timer task for the core's deadlines) and, when the
connection drops while the room still holds our seat, dials again with the resume ticket after
an exponential backoff (0.5 s doubling to 10 s) for at most the room's grace period.
Events are handed to `on_event` in order, from the reader task only.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping

import trio

from tunnelproto import (
    MAX_FRAME,
    MAX_TEXT_BYTES,
    MAX_UNACKED_SAYS,
    ConnectionEnded,
    JoinLink,
    MemberConnection,
    Refused,
    RemoteProtocolError,
    ResumeState,
    TunnelEvent,
    Welcomed,
)

from ._outbox import WRITE_BATCH, CloseMarker, Outbox, OutboxFull
from ._ws import WebSocket, WebSocketClosed, WebSocketError, connect_websocket

log = logging.getLogger("tunnel_trio.guest")

CONNECT_TIMEOUT = 15.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
#: How long a connection must stay up after its welcome for the backoff to start over.
STABLE_AFTER = 10.0
#: How long we keep trying to resume; the room holds a seat 120 s by default (spec "Timers").
RESUME_BUDGET = 120.0
#: After a refusal or a close frame (the host's or ours), how long we wait for the host to close
#: the WebSocket before closing it ourselves (spec section 20: the host closes first).
HOST_CLOSE_WAIT = 2.0
#: Room for every say a member may have outstanding (all re-sent at once after a resume)
#: plus control frames, so a well-behaved member never overflows its own queue.
OUTBOX_LIMIT = MAX_UNACKED_SAYS * (MAX_TEXT_BYTES + 1024) + 1024 * 1024


class DialError(Exception):
    """Could not reach the host at all (message is safe to show)."""


ResolveFallback = Callable[[str], Awaitable[list[str]]]


class Guest:
    def __init__(
        self,
        link: JoinLink,
        name: str,
        on_event: Callable[[TunnelEvent], None],
        on_state: Callable[[str], None],
        *,
        ssl_context: ssl.SSLContext | None = None,
        resolve_fallback: ResolveFallback | None = None,
        resolve_override: Mapping[tuple[str, int], tuple[str, int]] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        resume_budget: float = RESUME_BUDGET,
    ) -> None:
        self.link = link
        self.name = name
        self._on_event = on_event
        self._on_state = on_state
        self._ssl_context = ssl_context
        self._resolve_fallback = resolve_fallback
        self._resolve_override = dict(resolve_override) if resolve_override else None
        self._connect_timeout = connect_timeout
        self._resume_budget = resume_budget
        self.conn: MemberConnection | None = None
        self._outbox: Outbox | None = None
        self._leaving = False
        self._stop = trio.CancelScope()
        self._deadline_moved = trio.Event()
        self._ended: ConnectionEnded | None = None
        self._welcomed = False
        self._ever_welcomed = False
        self._welcomed_at = 0.0
        self._serve_scope: trio.CancelScope | None = None
        self._reconnecting = False
        self._refusal: Refused | None = None

    # ---- API used by the session ----

    def flush(self) -> None:
        """Move whatever the core wants to send into the outbox (synchronously: order!)."""
        if self.conn is None or self._outbox is None:
            return
        try:
            for data in self.conn.data_to_send():
                self._outbox.put(data)
        except OutboxFull:
            # Frames already sealed (their nonces spent) cannot be dropped and the rest sent:
            # this connection is done. Resuming re-sends every unconfirmed say.
            log.warning("outbound queue full; reconnecting")
            self.conn.connection_lost(trio.current_time())
            self._drain(self.conn)  # records the (resumable) end, so run() resumes
            if self._serve_scope is not None:
                self._serve_scope.cancel()
        self._deadline_moved.set()

    async def leave(self) -> None:
        """Leave for good: tell the room, then (in `_serve`) wait for it to close, and stop."""
        self._leaving = True
        if self.conn is not None and self._outbox is not None and self.conn.state.value == "open":
            self.conn.leave()
            self.flush()
        else:
            # Not connected (dialing, or waiting to reconnect): there is nobody to tell; the
            # room frees the seat when its grace period ends.
            self._stop.cancel()

    def stop(self) -> None:
        self._leaving = True
        self._stop.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dial and serve until we leave, the room ends, or resuming gives up.

        Raises DialError before `task_status.started()` when the first dial fails, so the join
        call can report it; once started, trouble is reported through events and on_state.
        """
        with self._stop:
            started = False
            resume: ResumeState | None = None
            drop_at = trio.current_time()
            backoff = BACKOFF_MIN
            while True:
                try:
                    ws = await self._dial()
                except DialError as exc:
                    if not started:
                        raise
                    if trio.current_time() - drop_at > self._resume_budget:
                        self._give_up(f"could not reconnect to the host: {exc}")
                        return
                    await trio.sleep(backoff)
                    backoff = min(BACKOFF_MAX, backoff * 2)
                    continue
                conn = MemberConnection(self.link, self.name, trio.current_time(), resume=resume)
                self.conn = conn
                self._welcomed = False
                self._refusal = None
                self._reconnecting = started
                ended = await self._serve(ws, conn, started, task_status)
                started = True
                if self._leaving or ended is None:
                    return
                if self._refusal is not None:
                    code = self._refusal.code
                    if code == "unknown-invite" and resume is not None:
                        # The host does not know our ticket: our first confirmation never
                        # reached it, so it never seated us and our invite is free again.
                        log.info("resume refused as unknown; joining afresh with the link")
                        resume = None
                    elif code != "in-use":
                        self._give_up(f"the host refused to take us back: {self._refusal.message}")
                        return
                    # in-use: our own half-open attempt still holds the invite; retry shortly.
                    if trio.current_time() - drop_at > self._resume_budget:
                        self._give_up("could not rejoin within the room's grace period")
                        return
                    self._on_state("reconnecting")
                    await trio.sleep(backoff)
                    backoff = min(BACKOFF_MAX, backoff * 2)
                    continue
                if not ended.resumable:
                    return
                resume = conn.resume_state()
                if resume is None and not self._ever_welcomed:
                    self._give_up(f"the host did not welcome us ({ended.message})")
                    return
                # resume None after we were in once: a fresh rejoin (see above) that dropped
                # before its welcome; try it again like any reconnect, within the budget.
                if self._welcomed:
                    # A connection that got all the way in resets the give-up clock; the
                    # backoff only once it also stayed up a while, so a host that welcomes us
                    # and hangs up at once is not redialled twice a second forever.
                    drop_at = trio.current_time()
                    if drop_at - self._welcomed_at >= STABLE_AFTER:
                        backoff = BACKOFF_MIN
                if trio.current_time() - drop_at > self._resume_budget:
                    self._give_up("could not resume within the room's grace period")
                    return
                log.info("connection lost (%s); reconnecting in %.1f s", ended.reason, backoff)
                self._on_state("reconnecting")
                await trio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)

    def _give_up(self, message: str) -> None:
        self._on_event(ConnectionEnded("gone", message, False))
        self._on_state("closed")

    async def _dial(self) -> WebSocket:
        try:
            return await connect_websocket(
                self.link.websocket_url,
                max_message_size=MAX_FRAME,
                connect_timeout=self._connect_timeout,
                ssl_context=self._ssl_context,
                resolve_fallback=self._resolve_fallback,
                resolve_override=self._resolve_override,
            )
        except WebSocketError as exc:
            status = getattr(exc, "status_code", None)
            if status == 404:
                raise DialError(
                    "the host answered 404: the tunnel in this link is gone or the link is wrong"
                ) from None
            raise DialError(str(exc)) from None

    async def _serve(
        self,
        ws: WebSocket,
        conn: MemberConnection,
        started: bool,
        task_status: trio.TaskStatus[None],
    ) -> ConnectionEnded | None:
        outbox = Outbox(OUTBOX_LIMIT)
        self._outbox = outbox
        self._ended = None
        self._writer_done = trio.Event()
        socket_closed = False
        try:
            async with trio.open_nursery() as nursery:
                self._serve_scope = nursery.cancel_scope
                nursery.start_soon(self._writer, ws, outbox)
                nursery.start_soon(self._timer, conn, ws)
                self.flush()
                if not started:
                    task_status.started()
                try:
                    while self._ended is None:
                        try:
                            data = await ws.receive()
                        except WebSocketClosed:
                            socket_closed = True
                            conn.connection_lost(trio.current_time())
                            self._drain(conn)
                            break
                        try:
                            conn.receive_data(data, trio.current_time())
                        except RemoteProtocolError as exc:
                            log.warning("protocol error from the host: %s", exc)
                        self._drain(conn)
                        if not ws.message_ready():
                            # One ack for a burst: the core coalesces acks per flush.
                            self.flush()
                finally:
                    ended = self._ended
                    if ended is not None and not ended.resumable and not socket_closed:
                        # Refused, closed by the host, or we left: the host closes the socket
                        # next (spec section 20). Wait for that, so the close code is the
                        # host's; close first only if it does not come.
                        socket_closed = await self._host_closes(ws)
                    if (
                        ended is not None
                        and not ended.resumable
                        and not socket_closed
                        and not outbox.closing
                    ):
                        outbox.close(1000, ended.reason)
                    if outbox.closing:
                        # Let the writer put the goodbye on the wire, briefly.
                        with trio.move_on_after(2.0):
                            await self._writer_done.wait()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await ws.aclose()
        return self._ended

    @staticmethod
    async def _host_closes(ws: WebSocket) -> bool:
        """Read (and ignore) until the host closes the WebSocket; False if it has not within
        HOST_CLOSE_WAIT."""
        with trio.move_on_after(HOST_CLOSE_WAIT):
            try:
                while True:
                    await ws.receive()
            except WebSocketClosed:
                return True
        return False

    def _drain(self, conn: MemberConnection) -> None:
        while (event := conn.next_event()) is not None:
            if self._reconnecting and isinstance(event, Refused):
                # A refusal while reconnecting is ours to handle (see run), not the session's.
                self._refusal = event
                continue
            if self._refusal is not None and isinstance(event, ConnectionEnded):
                self._ended = event
                continue
            if isinstance(event, Welcomed):
                self._welcomed = True
                self._welcomed_at = trio.current_time()
                self._ever_welcomed = True
                self._on_state("connected")
            if isinstance(event, ConnectionEnded):
                self._ended = event
                if not event.resumable:
                    self._on_state("closed")
            self._on_event(event)

    async def _writer(self, ws: WebSocket, outbox: Outbox) -> None:
        try:
            while True:
                item = await outbox.get_batch(WRITE_BATCH)
                if isinstance(item, CloseMarker):
                    await ws.close(item.code, item.reason)
                    return
                await ws.send_many(item)
        except WebSocketClosed:
            return
        finally:
            self._writer_done.set()

    async def _timer(self, conn: MemberConnection, ws: WebSocket) -> None:
        while True:
            self._deadline_moved = trio.Event()
            deadline = conn.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._deadline_moved.wait()
                continue
            conn.handle_timer(trio.current_time())
            self._drain(conn)
            self.flush()
            if self._ended is not None:
                # Keepalive or handshake timeout: the link is dead, so abort the socket; the
                # reader then sees it closed and the supervisor decides whether to resume.
                await ws.aclose()
                return
