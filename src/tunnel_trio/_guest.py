"""The member client: binds a `tunnelproto.MemberConnection` to a WebSocket, and reconnects.

The join (`handshake`) runs in the caller's task: it dials and takes the handshake as far as
the host's welcome, and nothing else runs for it meanwhile. A join the host turns away as busy
(HTTP 503, or close 4009 / 4002 before the welcome) is retried with the backoff below for a
short while; any other end of a join before its welcome is reported, with what the host's
close code says. From the welcome on, one supervisor task (`run`) owns the seat. It runs one
connection (reader in this task, a writer task draining the connection's `Outbox`, the
session's timer task for the core's deadlines) and, when the connection drops while the room
still holds our seat, dials again with the resume ticket: at once after an ordinary drop,
then with an exponential backoff (0.5 s doubling to 10 s), for at most the room's grace
period (`gives_up_at` says until when). Events are handed to `on_event` in order: from the
joining or the reader task, and from `pump` (the session's file work, after a call that
queues events in the connection).

Every connection announces files/1 and batch/1 (`CAPS`). Chunks of our offers are sealed only
when the outbox runs low (`flush`, and the writer right after it takes a batch), so chat said
meanwhile is never behind more than one batch of them. The resume state is taken from the last
connection object just before each redial, so credit granted on it after it dropped (our writes
finishing) is carried over rather than lost.
"""

from __future__ import annotations

import functools
import logging
import math
import ssl
from collections.abc import Awaitable, Callable, Mapping

import trio

from tunnelproto import (
    BATCH_CAP,
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REFUSED,
    CLOSE_ROOM_CLOSED,
    CLOSE_TOO_MANY_PENDING,
    FILES_CAP,
    MAX_FRAME,
    MAX_TEXT_BYTES,
    MAX_UNACKED_SAYS,
    ChatMessage,
    ConnectionEnded,
    JoinLink,
    MemberConnection,
    Refused,
    RemoteProtocolError,
    ResumeState,
    SayAccepted,
    TunnelEvent,
    Welcomed,
)

from ._outbox import WRITE_BATCH, CloseMarker, Outbox, OutboxFull
from ._waits import Timers
from ._ws import CLOSE_ABNORMAL, WebSocket, WebSocketClosed, WebSocketError, connect_websocket

log = logging.getLogger("tunnel_trio.guest")

CONNECT_TIMEOUT = 15.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
#: What every connection announces: files (spec section 26) and batches of frames with
#: delayed acks (section 8.3).
CAPS = (FILES_CAP, BATCH_CAP)
#: How long a connection must stay up after its welcome for its drop to count as ordinary:
#: redialled at once, with the backoff started over. One that drops sooner (a host that welcomes
#: us and hangs up, again and again) continues the backoff, so such a host is redialled ever more
#: slowly, and at worst once per STABLE_AFTER if it waits that long before each hang-up.
STABLE_AFTER = 2.0
#: How long we keep trying to resume; the room holds a seat 120 s by default (spec "Timers").
RESUME_BUDGET = 120.0
#: How long a join that the host turned away as busy (close 4009 or 4002 before the welcome,
#: HTTP 503 at the door) keeps retrying: under the session's 30 s wait for a welcome.
JOIN_RETRY_BUDGET = 20.0
#: Close codes that end a join attempt without saying the join is hopeless (spec section 20).
RETRY_JOIN_CODES = frozenset({CLOSE_TOO_MANY_PENDING, CLOSE_HANDSHAKE_TIMEOUT})
#: What a close from the host before its welcome means, for the member's error message.
CLOSE_EXPLANATIONS = {
    CLOSE_ROOM_CLOSED: "the room has closed",
    CLOSE_PROTOCOL_ERROR: "the host found our handshake malformed",
    CLOSE_HANDSHAKE_TIMEOUT: "the host gave up waiting for our handshake",
    CLOSE_REFUSED: "the host refused us",
    CLOSE_TOO_MANY_PENDING: (
        "the host is busy: too many connections are being set up at once; try again shortly"
    ),
}
#: After a refusal or a close frame (the host's or ours), how long we wait for the host to close
#: the WebSocket before closing it ourselves (spec section 20: the host closes first).
HOST_CLOSE_WAIT = 2.0
#: Room for every say a member may have outstanding (all re-sent at once after a resume)
#: plus control frames, so a well-behaved member never overflows its own queue.
OUTBOX_LIMIT = MAX_UNACKED_SAYS * (MAX_TEXT_BYTES + 1024) + 1024 * 1024


class DialError(Exception):
    """Could not reach the host at all (message is safe to show).

    `stopped`: something answered at the host's address but not the room's relay (the port
    refused the connection, or a proxy or Cloudflare's edge said the tunnel is gone or its
    origin is down): the host's server has stopped. `busy`: the relay itself answered that it
    is overloaded (HTTP 503 from our own relay), so the same dial may well work a moment later.
    Otherwise the host could not be reached (timeouts, name resolution, no route): it, or our
    own network, may be down.
    """

    def __init__(self, message: str, *, stopped: bool = False, busy: bool = False) -> None:
        super().__init__(message)
        self.stopped = stopped
        self.busy = busy


#: HTTP answers to the upgrade that mean the relay behind the address is gone: 404 (the tunnel
#: id is unknown: the relay restarted or closed it), 502/504 (a proxy found no origin), 530
#: (Cloudflare: the tunnel has no connector, its cloudflared stopped). 503 is our own relay
#: saying it is busy (see `busy`).
_STOPPED_STATUSES = frozenset({404, 502, 504, 530})

#: Reasons (ConnectionEnded.reason) the member gives when it stops trying to reconnect.
GAVE_UP_STOPPED = "host-stopped"
GAVE_UP_UNREACHABLE = "host-unreachable"
GAVE_UP_REFUSED = "refused"


def _refused_connection(exc: BaseException | None) -> bool:
    """Whether `exc`, its causes, or the errors grouped in them include ECONNREFUSED."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, ConnectionRefusedError):
            return True
        if isinstance(exc, BaseExceptionGroup):
            return any(_refused_connection(e) for e in exc.exceptions)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def explain_close(code: int | None) -> str | None:
    """Why the host closed a connection with `code`, in words (None: nothing specific)."""
    if code is None:
        return None
    text = CLOSE_EXPLANATIONS.get(code)
    return f"{text} (close code {code})" if text else None


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
        timers: Timers,
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
        #: The session's timer task, which also serves the connection's deadlines (`_tick`):
        #: `flush` brings its tick forward, in place, when a call brings a deadline forward.
        self._timers = timers
        #: What `_tick` raised (unexpected): `_serve` raises it, as the connection's task would.
        self._tick_error: Exception | None = None
        self._serve_nursery: trio.Nursery | None = None
        #: `flush_soon` was called: the writer flushes before its next write.
        self._flush_pending = False
        self._ended: ConnectionEnded | None = None
        self._welcomed = False
        self._draining = False
        self._ever_welcomed = False
        self._welcomed_at = 0.0
        self._serve_scope: trio.CancelScope | None = None
        self._reconnecting = False
        self._refusal: Refused | None = None
        #: While reconnecting: the trio time at which we stop trying; None while connected.
        self.gives_up_at: float | None = None
        self._last_problem: DialError | None = None
        #: The close code the host ended the current connection with (None: no close frame).
        self._close_code: int | None = None

    # ---- API used by the session ----

    def flush(self) -> None:
        """Move whatever the core wants to send into the outbox (synchronously: order!)."""
        if self.conn is None or self._outbox is None:
            return
        conn, outbox = self.conn, self._outbox
        try:
            out = conn.data_to_send()
            if out:
                outbox.put_all(out)
            if outbox.queued_bytes < WRITE_BATCH and conn.files.has_bulk():
                conn.pull_bulk(WRITE_BATCH)
                outbox.put_all(conn.data_to_send())
        except OutboxFull:
            # Frames already sealed (their nonces spent) cannot be dropped and the rest sent:
            # this connection is done. Resuming re-sends every unconfirmed say.
            log.warning("outbound queue full; reconnecting")
            self.conn.connection_lost(trio.current_time())
            self._drain(self.conn)  # records the (resumable) end, so run() resumes
            if self._serve_scope is not None:
                self._serve_scope.cancel()
        # Only an earlier deadline needs the tick moved (a later one costs one early tick at
        # most), and it is moved in place, without waking the timer task.
        deadline = conn.next_deadline()
        if deadline is not None and deadline < self._timers.tick_at:
            self._timers.tick_soon(deadline)

    def flush_soon(self) -> None:
        """Like `flush`, but left to the writer task, which runs once the tasks ready now have
        had their turn: what they queue meanwhile (pipelined says) is sealed together, in one
        transport message with batch/1. Order is kept: whoever flushes first seals everything
        queued so far."""
        if self._outbox is None:
            return
        self._flush_pending = True
        self._outbox.kick()

    def pump(self) -> None:
        """After a call into the connection that may make events (a file chunk provided, the
        next read it asks for): hand them to `on_event` now rather than at the next message
        from the host, then flush."""
        if self.conn is not None and not self._draining:
            self._drain(self.conn)
        self.flush()

    async def leave(self) -> None:
        """Leave for good: tell the room, then (in `_serve`) wait for it to close, and stop."""
        self._leaving = True
        if self.conn is not None and self.conn.state.value == "open":
            # (Welcomed but not served yet, right after the join: `_serve` sends it first thing.)
            self.conn.leave()
            self.flush()
        else:
            # Not connected (dialing, or waiting to reconnect): there is nobody to tell; the
            # room frees the seat when its grace period ends.
            self._stop.cancel()

    def stop(self) -> None:
        self._leaving = True
        self._stop.cancel()

    async def handshake(self) -> tuple[WebSocket, MemberConnection] | None:
        """The join: dial, and take the handshake as far as the host's welcome, in the
        caller's task. Returns the welcomed connection, for `run`, which sends its key
        confirmation (so the join returns before the host seats us, as a remote host would
        seat us meanwhile anyway); None when the join ended without a welcome (the events and
        `on_state` said why). Raises DialError when the host could not be reached. A join the
        host turns away as busy (HTTP 503, or close 4009 / 4002 before the welcome) is retried
        for JOIN_RETRY_BUDGET, with the backoff.

        Why not in a task of the session's: started first, it cost every join two trips
        through the scheduler (one to start it, one to wake the joining task at the welcome),
        and tasks and scopes that a join needs only once it has a connection to serve.
        """
        join_at = trio.current_time()
        wait, backoff = BACKOFF_MIN, BACKOFF_MIN * 2
        while True:
            try:
                ws = await self._dial()
            except DialError as exc:
                if not exc.busy or trio.current_time() - join_at > JOIN_RETRY_BUDGET:
                    raise
                log.info("join turned away (%s); retrying in %.1f s", exc, wait)
            else:
                conn = MemberConnection(self.link, self.name, trio.current_time(), caps=CAPS)
                self.conn = conn
                ended = await self._handshake_on(ws, conn)
                if ended is None:
                    return ws, conn
                if not ended.resumable:
                    return None  # refused, or closed by the host: the session heard why
                why = explain_close(self._close_code)
                if (
                    self._close_code not in RETRY_JOIN_CODES
                    or trio.current_time() - join_at >= JOIN_RETRY_BUDGET
                ):
                    self._give_up(
                        GAVE_UP_UNREACHABLE,
                        f"the host did not welcome us: {why}"
                        if why
                        else f"the host did not welcome us ({ended.message})",
                    )
                    return None
                log.info("join turned away (%s); retrying in %.1f s", why, wait)
            await trio.sleep(wait)
            wait, backoff = backoff, min(BACKOFF_MAX, backoff * 2)

    async def _handshake_on(self, ws: WebSocket, conn: MemberConnection) -> ConnectionEnded | None:
        """Message 1 out, then read (as `_serve` does) until the welcome (None: `ws` is left
        open for `run`) or the end of the join (returned; `ws` is closed, the host's way
        after a refusal or its close: spec section 20)."""
        self._welcomed = False
        self._ended = None
        self._close_code = None
        socket_closed = False
        try:
            items = conn.data_to_send()
            # Written at once (a fresh socket takes it): the next step is the wait for message 2.
            if not ws.send_now(items):
                await ws.send_many(items)
            elif ws.unsent_bytes:
                await ws.send_many(())
            while self._ended is None:
                deadline = conn.next_deadline()
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    try:
                        data = await ws.receive()
                    except WebSocketClosed as exc:
                        # 1006 when no close frame came.
                        if exc.code != CLOSE_ABNORMAL:
                            self._close_code = exc.code
                        socket_closed = True
                        conn.connection_lost(trio.current_time())
                        self._drain(conn)
                        break
                    try:
                        conn.receive_data(data, trio.current_time())
                    except RemoteProtocolError as exc:
                        log.warning("protocol error from the host: %s", exc)
                    self._drain(conn)
                    if self._welcomed:
                        return None
                    continue
                conn.handle_timer(trio.current_time())  # the handshake's deadline came
                self._drain(conn)
        except BaseException:
            with trio.CancelScope(shield=True):
                await ws.aclose()
            raise
        ended = self._ended
        try:
            if ended is not None and not ended.resumable and not socket_closed:
                # Refused, or closed by the host: it closes the socket next. Wait for that,
                # so the close code is the host's; close first only if it does not come.
                if not await self._host_closes(ws):
                    with trio.move_on_after(HOST_CLOSE_WAIT):
                        await ws.close(1000, ended.reason)
        finally:
            with trio.CancelScope(shield=True):
                await ws.aclose()
        return ended

    async def run(self, first: tuple[WebSocket, MemberConnection]) -> None:
        """Serve the connection `handshake` got welcomed on, and when a connection drops while
        the room still holds our seat, dial again with the resume ticket; until we leave, the
        room ends, or resuming gives up. Trouble is reported through events and on_state."""
        with self._stop:
            ws: WebSocket | None
            ws, conn = first
            resume: ResumeState | None = None
            # `wait` is the pause before the next dial, `backoff` the one after it.
            wait, backoff = BACKOFF_MIN, BACKOFF_MIN * 2
            while True:
                if ws is None:
                    if not await self._pause(wait):
                        return
                    wait, backoff = backoff, min(BACKOFF_MAX, backoff * 2)
                    try:
                        ws = await self._dial_within(self.gives_up_at)
                    except DialError as exc:
                        log.info("could not reconnect (%s); next try in %.1f s", exc, wait)
                        self._last_problem = exc
                        continue
                    if ws is None:
                        continue  # the give-up time came while dialling: _pause says why
                    if resume is not None:
                        # Credit granted since the drop went to the old object: take it along.
                        resume = conn.resume_state() or resume
                    conn = MemberConnection(
                        self.link, self.name, trio.current_time(), resume=resume, caps=CAPS
                    )
                    self.conn = conn
                    self._welcomed = False
                    self._refusal = None
                    self._reconnecting = True
                ended = await self._serve(ws, conn)
                ws = None
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
                        if ended is not None and ended.reason == "removed":
                            # The host removed our seat while we were away: say just that.
                            self.gives_up_at = None
                            self._on_event(ended)
                            self._on_state("closed")
                        else:
                            self._give_up(
                                GAVE_UP_REFUSED,
                                f"the host refused to take us back: {self._refusal.message}",
                            )
                        return
                    # in-use: our own half-open attempt still holds the invite; retry shortly.
                    self._last_problem = None
                    self._reconnecting_until(self.gives_up_at)
                    continue
                if not ended.resumable:
                    return
                resume = conn.resume_state()
                why = explain_close(self._close_code)
                # resume None after we were in once: a fresh rejoin (see above) that dropped
                # before its welcome; try it again like any reconnect, within the budget.
                self._last_problem = None
                now = trio.current_time()
                if self._welcomed:
                    # A connection that got all the way in restarts the give-up clock (the seat
                    # is alive). One that also stayed up a while dropped the ordinary way:
                    # redial at once. One dropped right after its welcome continues the
                    # backoff, so a host that welcomes us and hangs up is not redialled in a
                    # loop.
                    if now - self._welcomed_at >= STABLE_AFTER:
                        wait, backoff = 0.0, BACKOFF_MIN
                    log.info(
                        "connection lost (%s); reconnecting in %.1f s", why or ended.reason, wait
                    )
                    self._reconnecting_until(now + self._resume_budget)
                else:
                    self._reconnecting_until(self.gives_up_at)

    def _reconnecting_until(self, deadline: float | None) -> None:
        if deadline is None:
            deadline = trio.current_time() + self._resume_budget
        self.gives_up_at = deadline
        self._on_state("reconnecting")

    async def _pause(self, wait: float) -> bool:
        """Sleep `wait` before the next dial, never past the give-up time. False when that
        time has come: we gave up (and said why)."""
        assert self.gives_up_at is not None
        await trio.sleep_until(min(trio.current_time() + wait, self.gives_up_at))
        if trio.current_time() < self.gives_up_at:
            return True
        problem = self._last_problem
        if problem is None:
            self._give_up(
                GAVE_UP_UNREACHABLE,
                "could not resume within the room's grace period: the host did not answer "
                f"for {self._resume_budget:g} s",
            )
        elif problem.stopped:
            self._give_up(
                GAVE_UP_STOPPED,
                f"the host's tunnel server has stopped ({problem}); it did not come back "
                f"within {self._resume_budget:g} s",
            )
        else:
            self._give_up(
                GAVE_UP_UNREACHABLE,
                f"the host could not be reached for {self._resume_budget:g} s ({problem}); "
                "its machine or network, or ours, may be down",
            )
        return False

    def _give_up(self, reason: str, message: str) -> None:
        self.gives_up_at = None
        self._on_event(ConnectionEnded(reason, message, False))
        self._on_state("closed")

    async def _dial_within(self, deadline: float | None) -> WebSocket | None:
        """Dial; None if `deadline` came first."""
        if deadline is None:
            return await self._dial()
        with trio.move_on_at(deadline):
            return await self._dial()
        return None

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
                    "the host answered 404: the tunnel in this link is gone or the link is wrong",
                    stopped=True,
                ) from None
            if status == 503:
                raise DialError(
                    "the host is busy: too many connections at once (HTTP 503); try again shortly",
                    busy=True,
                ) from None
            stopped = status in _STOPPED_STATUSES or _refused_connection(exc)
            raise DialError(str(exc), stopped=stopped) from None

    async def _serve(self, ws: WebSocket, conn: MemberConnection) -> ConnectionEnded | None:
        outbox = Outbox(OUTBOX_LIMIT, ws)
        self._outbox = outbox
        self._ended = None
        self._close_code = None
        self._writer_done = trio.Event()
        socket_closed = False
        try:
            async with trio.open_nursery() as nursery:
                self._serve_scope = nursery.cancel_scope
                self._serve_nursery = nursery
                nursery.start_soon(self._writer, ws, outbox)
                self._timers.set_tick(functools.partial(self._tick, conn, ws))
                # Arms the tick at the connection's first deadline; after the join's welcome,
                # sends the key confirmation.
                self.flush()
                # trio.current_time() is three Python calls; the clock's own method is one.
                clock_now = trio.lowlevel.current_clock().current_time
                try:
                    while self._ended is None:
                        try:
                            data = await ws.receive()
                        except WebSocketClosed as exc:
                            # Ours when we closed first; 1006 when no close frame came.
                            if exc.code != CLOSE_ABNORMAL:
                                self._close_code = exc.code
                            socket_closed = True
                            conn.connection_lost(trio.current_time())
                            self._drain(conn)
                            break
                        welcomed = self._welcomed
                        try:
                            conn.receive_data(data, clock_now())
                        except RemoteProtocolError as exc:
                            log.warning("protocol error from the host: %s", exc)
                        # `_drain`, in line (every message from the host; no drain is under way
                        # between two reads of this task).
                        self._draining = True
                        try:
                            self._drain_events(conn)
                        finally:
                            self._draining = False
                        if self._welcomed and not welcomed:
                            # The key confirmation goes from the writer, right after the task
                            # the welcome woke (the join) has had its turn: written from here,
                            # the host's answer to it (seating us, the roster, the history)
                            # could run first in a process that holds both ends.
                            self.flush_soon()
                        elif not ws.message_ready():
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
                    # From here the nursery only waits for its tasks, and once they are done
                    # it takes no new one, while the timer task may still tick: a tick must
                    # not spawn the socket's abort into it (the `finally` below closes it).
                    self._serve_nursery = None
        finally:
            self._timers.set_tick(None)
            self._serve_nursery = None
            with trio.CancelScope(shield=True):
                await ws.aclose()
        error, self._tick_error = self._tick_error, None
        if error is not None:
            raise error
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
        was, self._draining = self._draining, True
        try:
            self._drain_events(conn)
        finally:
            self._draining = was

    def _drain_events(self, conn: MemberConnection) -> None:
        on_event = self._on_event
        while (event := conn.next_event()) is not None:
            if type(event) is ChatMessage or type(event) is SayAccepted:
                on_event(event)  # chat: none of the cases below
                continue
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
                self.gives_up_at = None
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
                if self._flush_pending and outbox is self._outbox:
                    self._flush_pending = False
                    self.flush()  # the writer is busy, so this queues, behind `item`
                    item += outbox.take_ready(WRITE_BATCH)
                conn = self.conn
                if (
                    outbox is self._outbox
                    and conn is not None
                    and outbox.queued_bytes < WRITE_BATCH
                    and conn.has_bulk()
                ):
                    # Seal the next batch of chunks while this one is written.
                    self.flush()
                await ws.send_many(item)
        except WebSocketClosed:
            return
        finally:
            self._writer_done.set()

    def _tick(self, conn: MemberConnection, ws: WebSocket, now: float) -> None:
        """A deadline of the connection came (called from the session's timer task)."""
        try:
            conn.handle_timer(now)
            self._drain(conn)
            self.flush()  # sets the next tick
            if self._ended is not None:
                # Keepalive or handshake timeout: the link is dead, so abort the socket; the
                # reader then sees it closed and the supervisor decides whether to resume.
                self._timers.set_tick(None)
                if self._serve_nursery is not None:
                    self._serve_nursery.start_soon(ws.aclose)
        except Exception as exc:  # raised from `_serve`, as from a task of its nursery
            self._timers.set_tick(None)
            self._tick_error = exc
            if self._serve_scope is not None:
                self._serve_scope.cancel()
