"""WebSocket transport for tunnel_trio: opaque binary messages over trio streams.

This layer knows nothing of the tunnel protocol above it. It turns a TCP (or TLS) stream into
a `WebSocket` that carries whole binary messages, on either side:

* `serve_websocket` listens, performs the HTTP upgrade and runs a handler per connection;
* `connect_websocket` dials a ``ws://`` / ``wss://`` URL.

Design notes (the *why*):

* No hidden reader task. Bytes are read from the stream only inside `WebSocket.receive`, under a
  receive lock, so a user that stops calling ``receive()`` stops reading and TCP flow control
  pushes back on the peer. Nothing buffers without bound.
* Writes are serialized by a send lock; pings are answered from inside ``receive()``.
* The opening handshake: the client writes its request and judges the answer by hand
  (`_wshandshake`, strictly, held byte for byte against wsproto's); the server parses the
  request head with h11, answers the usual request with a hand-written 101 and leaves any
  other to wsproto's handshake. On the established connection, binary data frames are encoded and parsed by `_wsframes` (the hot path: wsproto's
  general machinery cost more than the rest of this layer), and control frames (close, ping,
  pong) are handed whole to a `wsproto.connection.Connection`, which keeps the closing
  handshake. Bytes that arrived right after the handshake are not lost.
* The message size limit is enforced on each frame *header*: a frame that announces more bytes
  than the limit allows closes the connection with 1009 before any of its payload is read
  (RFC 6455 section 10.4), on both sides.
* On a plain TCP stream (POSIX), the socket is read and written directly (`os.read` /
  `os.write` on its descriptor, `trio.lowlevel.wait_readable` to wait): a message that is
  already there costs no trip through the scheduler, and `send_now` lets synchronous code put
  a reply in the socket without waking a writer task; a large send (a file chunk) goes
  straight into the socket too, yielding to other tasks once every `WRITE_YIELD_BYTES`
  rather than twice per write. TLS streams use trio's stream API.
* A server holds at most ``max_connections``. At the cap a newcomer evicts the oldest
  connection that has made no progress (`ConnectionSlots`), so connections that never finish
  their request head cannot lock real clients out.
* A close started by one task is never cut short by another: ``receive()`` raises only once
  the Close frame is out and the close handshake is over, so the peer always learns the code.
* Error messages name host and port only: never the path (it carries the tunnel id) and never
  the URL fragment (it carries the key and is never sent anywhere).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
)
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from ._slots import ConnectionSlots, Slot
from ._tls import client_ssl_context
from ._wsframes import TEXT, ControlFrame, FrameParser, FramingError, _Text, frame_messages
from ._wshandshake import (
    HandshakeError,
    accept_response,
    check_response,
    client_request,
    usual_request,
)

__all__ = [
    "WebSocket",
    "WebSocketClosed",
    "WebSocketError",
    "connect_websocket",
    "listener_port",
    "serve_websocket",
]

logger = logging.getLogger("tunnel_trio.ws")

#: How much we ask the stream for at a time. Also bounds what is buffered beyond the current
#: message, since we only read when the messages already read are used up.
RECEIVE_CHUNK = 65536
#: `receive` returns messages that were already read (or could be read at once) without a
#: trip through the scheduler; after this many in a row it yields once, so that a peer that
#: keeps the socket full cannot starve every other task.
YIELD_EVERY = 16
#: A `send_many` of at least this many bytes (file chunks) on a plain TCP socket is written
#: directly and yields only every WRITE_YIELD_BYTES written in a row: trio's `send_all` and an
#: `async with` lock each yield on every call, two trips through the scheduler per 64 KiB
#: chunk. Smaller sends (chat) keep those yields.
BULK_WRITE = 16 * 1024
WRITE_YIELD_BYTES = 256 * 1024
#: How long a graceful close waits for the peer's Close frame before dropping the stream.
CLOSE_TIMEOUT = 3.0
#: Upper bound on the HTTP response head a client accepts during the upgrade (h11's default
#: bound for the server side is the same 16 KiB).
MAX_RESPONSE_HEAD = 16 * 1024

#: accept(2) errors that mean the system is overloaded rather than the listener broken
#: (trio.serve_listeners' list), and how long to wait before accepting again after one.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SLEEP = 0.1
#: Seconds between two warnings about connections refused or evicted over the server's cap.
REFUSAL_LOG_EVERY = 10.0
#: What a connection turned away before finishing its request head is told (when it is plain
#: HTTP): a real client whose head was still on its way learns why, and that it may retry.
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 46\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"busy: too many connections at once, try again\n"
)
#: How long writing BUSY_RESPONSE may take (it fits any socket buffer; this bounds a stuck peer).
BUSY_RESPONSE_TIMEOUT = 0.5

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_ABNORMAL = 1006
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011


class WebSocketClosed(Exception):
    """Raised by `WebSocket.receive` / `WebSocket.send` once the connection is closed.

    ``code`` is the close code of whoever ended the connection (our own code if we closed
    first, the peer's if it did, 1006 if the transport went away without a close handshake).
    """

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"WebSocket closed with code {code}" + (f": {reason}" if reason else ""))


class WebSocketError(Exception):
    """Connecting or the opening handshake failed. The message is meant for humans.

    ``status_code`` is the HTTP status when the server answered the upgrade with something
    other than 101, else None.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def _new_connection(connection_type: ConnectionType) -> Connection:
    """wsproto's side of an established connection: it parses the control frames we hand it
    (close, ping, pong) and writes ours, and keeps the closing handshake's state. Data frames
    never pass through it (`_wsframes`)."""
    return Connection(connection_type)


def _close_forcefully(stream: trio.abc.AsyncResource) -> bool:
    """Close a plain TCP stream at once, from synchronous code: what `trio.aclose_forcefully`
    does to it, without the cancelled checkpoint (two trips through the scheduler, and a
    connection's end took several). False for any other stream: use `aclose_forcefully`."""
    if type(stream) is not trio.SocketStream:
        return False
    stream.socket.close()
    return True


def _raw_socket_fd(stream: trio.abc.Stream) -> int | None:
    """The descriptor of a plain TCP stream we may read and write directly (POSIX), else None.

    TLS streams go through trio's stream API: their bytes are not the socket's."""
    if os.name != "posix" or type(stream) is not trio.SocketStream:
        return None
    fd = stream.socket.fileno()
    return fd if fd >= 0 else None


class _Mutex:
    """`trio.Lock` for a WebSocket's two locks, without its owner bookkeeping.

    trio.Lock records its owner (to refuse a re-entry and to break the lock for waiters when the
    owner dies holding it); our locks are taken only in this module, each released in a
    `finally`, so that costs about ten Python calls per message for nothing. Kept: a checkpoint
    in `acquire`, and the lock handed to the longest waiter on release (trio.Lock is fair too).
    """

    __slots__ = ("_held", "_lot", "_waiting")

    def __init__(self) -> None:
        self._held = False
        self._lot = trio.lowlevel.ParkingLot()
        self._waiting = 0  # tasks in `_lot` (counted here: its __bool__ is a Python call)

    def locked(self) -> bool:
        return self._held

    def acquire_nowait(self) -> None:
        if self._held:
            raise trio.WouldBlock
        self._held = True

    async def acquire(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._held:
            self._waiting += 1
            try:
                await self._lot.park()  # `release` handed the lock to us
            finally:
                self._waiting -= 1
            return
        self._held = True
        await trio.lowlevel.cancel_shielded_checkpoint()

    def release(self) -> None:
        if not self._waiting or not self._lot.unpark():
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class WebSocket:
    """One established WebSocket connection (either side).

    Carries binary messages only. One task should call `receive` (a receive lock serializes
    misuse); any number of tasks may `send` (writes are serialized by a send lock), and
    `send_now` writes without waiting when nothing else is being written.
    Receiving happens only inside `receive`, so not calling it applies TCP backpressure.

    On a plain TCP stream (POSIX) the socket is read and written directly: `receive` returns a
    message already read, or read at once, without a trip through the scheduler (it still
    honours cancellation, and yields to other tasks at least every `YIELD_EVERY` messages), and
    `send_now` puts bytes in the socket from synchronous code, so a relay can answer from the
    task that read the question instead of waking a writer task. TLS streams use trio's API.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: Connection,
        *,
        path: str,
        remote: str,
        client: bool,
        max_message_size: int,
        trailing_data: bytes = b"",
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self.path = path
        self.remote = remote
        self.close_timeout = close_timeout
        self._stream = stream
        self._connection = connection
        self._client = client
        self._parser = FrameParser(client=client, max_message_size=max_message_size)
        self._fd = _raw_socket_fd(stream)
        self._receive_lock = _Mutex()
        self._send_lock = _Mutex()
        # wsproto's events for control frames, handed out before the next parsed item.
        self._events: deque[Event] = deque()
        # Bytes `send_now` framed that the socket did not take at once: they go first.
        self._unsent = b""
        #: Bytes `send_now` accepted that are not yet in the socket (the next send writes
        #: them): `len(self._unsent)`, kept as a plain attribute (read on every direct send).
        self.unsent_bytes = 0
        self._unyielded = 0
        self._written_unyielded = 0
        # The last read took less than it asked for (see `_read`).
        self._drained = False
        # Set once no more input will be read: the peer's Close, EOF, or a framing error.
        self._input_done = False
        self._peer_close: CloseConnection | None = None
        self._close_code: int | None = None
        self._close_reason: str | None = None
        self._close_sent = False
        self._finished = trio.Event()
        if trailing_data:
            self._parser.feed(trailing_data)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<WebSocket {self.remote} {state}>"

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed: no more messages either way."""
        return self._close_code is not None

    @property
    def close_code(self) -> int | None:
        return self._close_code

    @property
    def close_sent(self) -> bool:
        """True once our Close frame is on the wire: the peer will learn the code."""
        return self._close_sent

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    # -- public API -------------------------------------------------------------------------

    async def receive(self) -> bytes:
        """Return the next complete binary message.

        Raises `WebSocketClosed` once the connection is closed. A text message is a protocol
        error for this transport (close 1003); a message over the size limit closes with 1009.
        When another task is closing the connection, this raises only once that close is
        complete (bounded by ``close_timeout``): a caller that tears the connection down as
        soon as ``receive()`` raises can never cut off a close frame still being written.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        lock = self._receive_lock
        if lock._held:
            await lock.acquire()
        else:
            lock._held = True  # `acquire_nowait`, in line (this module owns the mutex)
        parser = self._parser
        items = parser.items
        fd = self._fd
        try:
            while self._close_code is None:
                if (
                    self._drained
                    and fd is not None
                    and not items
                    and not self._events
                    and not self._input_done
                    and not parser.done
                ):
                    # The usual wait (nothing buffered, the socket drained), `_next_item` and
                    # `_read` written out: two coroutine levels fewer to suspend and resume.
                    try:
                        await trio.lowlevel.wait_readable(fd)
                    except trio.ClosedResourceError:
                        self._input_done = True  # closed under us: `_next_item` says so
                    else:
                        self._unyielded = 0
                        data = self._read_now(fd)
                        if data:
                            parser.feed(data)
                        elif data is not None:
                            self._input_done = True  # EOF (None: nothing after all; wait again)
                item: bytes | _Text | FramingError | Event | None
                if items and type(items[0]) is bytes and not self._events:
                    # `_next_item`'s usual case, without a coroutine (a bytes item, as checked)
                    item = items.popleft()  # type: ignore[assignment]
                    parser.messages -= 1
                else:
                    item = await self._next_item()
                if self._close_code is not None:
                    # Another task started closing while we waited; it owns the shutdown
                    # (and will want the receive lock to read the peer's Close).
                    break
                if type(item) is bytes:
                    if self._unyielded >= YIELD_EVERY:
                        # Messages that were all there without waiting: let others run too.
                        self._unyielded = 0
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    else:
                        self._unyielded += 1
                    return item
                if item is None:
                    self._begin_close(CLOSE_ABNORMAL, "connection lost")
                    await self._finish()
                elif item is TEXT:
                    await self._close_gracefully(
                        CLOSE_UNSUPPORTED_DATA,
                        "text messages are not supported",
                        holding_receive_lock=True,
                    )
                elif isinstance(item, FramingError):
                    await self._on_framing_error(item.code, item.reason)
                elif isinstance(item, CloseConnection):
                    await self._on_close_event(item)
                elif isinstance(item, Ping):
                    await self._send_event(item.response())
                # Pong: nothing to do, we never wait for one.
        finally:
            if lock._waiting:
                lock.release()  # hands it over
            else:
                lock._held = False
        # Outside the receive lock: a closer in another task may need it to drain.
        if not self._finished.is_set():
            await self._finished.wait()
        raise self._closed_error()

    def message_ready(self) -> bool:
        """True if a complete message is already parsed, so `receive()` will not wait.

        Lets a caller batch its replies (one ack for a burst instead of one per message).
        """
        return self._parser.messages > 0

    async def send(self, data: bytes) -> None:
        """Send one binary message.

        If the send is cancelled, the connection is aborted: part of the frame may already be
        on the wire, and anything sent after it would be garbage to the peer.
        """
        await self.send_many((data,))

    async def send_many(self, messages: Sequence[bytes]) -> None:
        """Send several binary messages, in order, with one write to the stream (after any
        bytes `send_now` left unsent). Cancellation aborts the connection, as for `send`."""
        if self._close_code is not None:
            raise self._closed_error()
        if self._fd is not None and sum(map(len, messages)) >= BULK_WRITE:
            await self._send_bulk(messages)
            return
        async with self._send_lock:
            self._check_sendable()
            payload = frame_messages(messages, client=self._client) if messages else b""
            if not await self._write(payload):
                self._begin_close(CLOSE_ABNORMAL, "connection lost")
                await self._finish()
                raise self._closed_error()

    async def _send_bulk(self, messages: Sequence[bytes]) -> None:
        """`send_many` for large sends on a plain TCP socket (see BULK_WRITE): the same order
        and the same cancellation (checked before anything is written; a write cut short by it
        aborts the connection), but no trip through the scheduler when the lock is free and
        the socket takes everything, except once every WRITE_YIELD_BYTES."""
        await trio.lowlevel.checkpoint_if_cancelled()
        lock = self._send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            self._check_sendable()
            payload = frame_messages(messages, client=self._client)
            if self._unsent:
                payload, self._unsent = self._unsent + payload, b""
                self.unsent_bytes = 0
            fd = self._fd
            written = 0
            if fd is not None and self._stream.socket.fileno() == fd:  # type: ignore[attr-defined]
                try:
                    written = os.write(fd, payload)
                except BlockingIOError:
                    pass
                except OSError:
                    written = -1  # reset: `_write` finds out and reports it
            if written == len(payload):
                self._written_unyielded += written
                if self._written_unyielded >= WRITE_YIELD_BYTES:
                    self._written_unyielded = 0
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return
            self._written_unyielded = 0
            # The rest waits for room in the socket, as every other send does.
            if not await self._write(payload[max(written, 0) :]):
                self._begin_close(CLOSE_ABNORMAL, "connection lost")
                await self._finish()
                raise self._closed_error()
        finally:
            lock.release()

    def _check_sendable(self) -> None:
        """Raise WebSocketClosed if nothing more may be sent (caller holds the send lock)."""
        if self._close_code is not None:
            raise self._closed_error()
        if self._connection.state is not ConnectionState.OPEN:
            # The peer's Close is parsed but receive() has not handled it yet.
            peer = self._peer_close
            raise WebSocketClosed(
                peer.code if peer else CLOSE_ABNORMAL, (peer.reason or "") if peer else ""
            )

    def send_now(self, messages: Sequence[bytes]) -> bool:
        """Frame `messages` and put them in the socket now, from synchronous code.

        False when that cannot be done (a TLS stream, the connection closing, or a write in
        progress or left unfinished): nothing was taken; send them with `send_many`, which
        keeps their order behind what is being written. True when all were taken; whatever the
        socket had no room for waits in `unsent_bytes`, and the caller must soon call
        `send_many` (with or without more messages) to write it: it goes before anything else.
        """
        fd = self._fd
        if (
            fd is None
            or self._unsent
            or self._close_code is not None
            or self._send_lock._held
            or self._connection.state is not ConnectionState.OPEN
            or self._stream.socket.fileno() != fd  # type: ignore[attr-defined]
        ):
            return False
        payload = frame_messages(messages, client=self._client)
        try:
            written = os.write(fd, payload)
        except OSError:
            # EAGAIN: nothing fits now. Anything else (a reset): `send_many` finds out and
            # closes the connection the usual way.
            written = 0
        if written < len(payload):
            self._unsent = payload[written:]
            self.unsent_bytes = len(payload) - written
        return True

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close gracefully: send a Close frame, wait (briefly) for the peer's, drop the stream.

        Idempotent; a second caller waits for the first close to finish.
        """
        if not 1000 <= code <= 4999:
            raise ValueError(f"invalid WebSocket close code {code}")
        await self._close_gracefully(code, reason, holding_receive_lock=False)

    async def aclose(self) -> None:
        """Abort: close the underlying stream at once, without a close handshake."""
        self._begin_close(CLOSE_ABNORMAL, "connection aborted")
        await self._finish()

    # -- internals --------------------------------------------------------------------------

    def _closed_error(self) -> WebSocketClosed:
        return WebSocketClosed(
            self._close_code if self._close_code is not None else CLOSE_ABNORMAL,
            self._close_reason or "",
        )

    def _begin_close(self, code: int, reason: str) -> bool:
        """Record why the connection ends. False if it was already ending."""
        if self._close_code is not None:
            return False
        self._close_code = code
        self._close_reason = reason
        return True

    async def _finish(self) -> None:
        # aclose_forcefully: a TLS close_notify could block on a dead peer, and the WebSocket
        # close handshake already tells the peer everything it needs.
        if not _close_forcefully(self._stream):
            await trio.aclose_forcefully(self._stream)
        self._input_done = True
        self._finished.set()

    async def _next_item(self) -> bytes | _Text | FramingError | Event | None:
        """The next message or event, reading from the stream as needed; None once input is
        over. Control frames are handed to wsproto here, in their turn."""
        parser = self._parser
        items = parser.items
        while True:
            if self._events:
                return self._events.popleft()
            if items:
                item = items.popleft()
                if type(item) is bytes:
                    parser.messages -= 1
                    return item
                if isinstance(item, ControlFrame):
                    self._control_frame(item.raw)
                    continue
                return item
            if self._input_done or parser.done:
                return None
            data = await self._read()
            if not data:
                self._input_done = True
                return None
            parser.feed(data)

    def _control_frame(self, raw: bytes) -> None:
        self._connection.receive_data(raw)
        for event in self._connection.events():
            self._events.append(event)
            if isinstance(event, CloseConnection):
                # Either the peer's Close or wsproto failing to parse a control frame.
                self._input_done = True
                if self._connection.state in (
                    ConnectionState.REMOTE_CLOSING,
                    ConnectionState.CLOSED,
                ):
                    self._peer_close = event

    async def _read(self) -> bytes:
        """Some bytes from the stream; b"" once it is over (EOF, reset, closed under us)."""
        fd = self._fd
        if fd is None:
            try:
                return bytes(await self._stream.receive_some(RECEIVE_CHUNK))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
        # A short read emptied the socket: the next read would almost surely fail with EAGAIN
        # (a system call and an exception per message), so wait for readability first.
        wait_first = self._drained
        while True:
            if wait_first:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except trio.ClosedResourceError:
                    return b""
                self._unyielded = 0
            data = self._read_now(fd)
            if data is not None:
                return data
            wait_first = True

    def _read_now(self, fd: int) -> bytes | None:
        """What the socket `fd` holds now: None if nothing (EAGAIN); b"" once it is over."""
        if self._stream.socket.fileno() != fd:  # type: ignore[attr-defined]
            return b""  # closed by another task: the number may already be someone else's
        try:
            data = os.read(fd, RECEIVE_CHUNK)
        except BlockingIOError:
            return None
        except OSError:
            return b""
        self._drained = len(data) < RECEIVE_CHUNK
        return data

    async def _send_event(self, event: Event) -> bool:
        """Send a control event; False if the connection can no longer carry it."""
        async with self._send_lock:
            try:
                payload = self._connection.send(event)
            except Exception:  # wsproto LocalProtocolError: wrong state for this event
                return False
            return await self._write(payload)

    async def _write(self, payload: bytes) -> bool:
        """Put bytes on the wire after any left unsent (caller holds the send lock); False if
        the stream is gone."""
        if self._unsent:
            payload, self._unsent = self._unsent + payload, b""
            self.unsent_bytes = 0
        if not payload:
            return True
        try:
            await self._stream.send_all(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        except trio.Cancelled:
            # A frame may be half written; the stream can never carry another one.
            self._begin_close(CLOSE_ABNORMAL, "send interrupted")
            await self._finish()
            raise
        return True

    async def _on_close_event(self, event: CloseConnection) -> None:
        """Handle a CloseConnection event seen by receive() while the connection was open."""
        if self._connection.state is ConnectionState.REMOTE_CLOSING:
            # The peer started the close handshake: echo its code (RFC 6455 section 5.5.1).
            self._begin_close(event.code, event.reason or "")
            try:
                with trio.move_on_after(self.close_timeout):
                    self._close_sent = await self._send_event(event.response())
            finally:
                await self._finish()
            return
        # The state did not move, so this is wsproto failing to parse a control frame. The
        # parser is dead after it, so there is no point waiting for the peer's Close.
        await self._on_framing_error(event.code, event.reason or "protocol error")

    async def _on_framing_error(self, code: int, reason: str) -> None:
        """The peer broke the framing: send our Close and drop the connection (RFC 6455
        section 7.1.7); nothing it sends after the error can be parsed."""
        self._begin_close(code, reason)
        try:
            with trio.move_on_after(self.close_timeout):
                frame = CloseConnection(code=code, reason=reason)
                self._close_sent = await self._send_event(frame)
        finally:
            await self._finish()

    async def _close_gracefully(
        self, code: int, reason: str, *, holding_receive_lock: bool
    ) -> None:
        if not self._begin_close(code, reason):
            if not self._finished.is_set():
                await self._finished.wait()
            return
        try:
            with trio.move_on_after(self.close_timeout):
                if await self._send_event(CloseConnection(code=code, reason=reason)):
                    self._close_sent = True
                    if holding_receive_lock:
                        await self._drain_until_peer_close()
                    else:
                        # If a receive() is in progress it will see the peer's Close (or
                        # discard data) and give the lock up.
                        async with self._receive_lock:
                            await self._drain_until_peer_close()
        finally:
            await self._finish()

    async def _drain_until_peer_close(self) -> None:
        # After our Close the peer may still send data frames (RFC 6455 section 5.5.1); they
        # are read and dropped, never buffered, until its Close or EOF.
        while True:
            item = await self._next_item()
            if item is None or isinstance(item, CloseConnection):
                return


# -- addresses ------------------------------------------------------------------------------


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "unknown"
    if isinstance(address, tuple) and len(address) >= 2:
        return _format_address(str(address[0]), int(address[1]))
    return str(address)


def listener_port(listeners: Sequence[trio.SocketListener]) -> int:
    """The TCP port the first listener is bound to (useful after binding port 0)."""
    port = listeners[0].socket.getsockname()[1]
    assert isinstance(port, int)
    return port


# -- server ---------------------------------------------------------------------------------


async def serve_websocket(
    handler: Callable[[WebSocket], Awaitable[None]],
    host: str,
    port: int,
    *,
    accept_path: Callable[[str], bool],
    max_message_size: int,
    handshake_timeout: float = 10.0,
    max_connections: int = 256,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve WebSocket connections until cancelled.

    Reports the bound listeners through ``task_status.started(listeners)``. Each TCP
    connection runs in its own task: the upgrade must finish within ``handshake_timeout``,
    ``accept_path`` (given the path without query string) decides between accepting and a
    plain HTTP 404, and ``handler`` then runs with the `WebSocket`, which is closed when it
    returns. A failing handler is logged and never stops the server.

    At most ``max_connections`` are held. A connection beyond that evicts the oldest one that
    has not finished its request head (or is only waiting for the answer to our Close; see
    `ConnectionSlots`), which is told 503 if it is plain HTTP; it is refused (closed as soon as
    accepted) only when every connection held has made progress.
    """
    if max_message_size < 0:
        raise ValueError("max_message_size must not be negative")
    listeners = await trio.open_tcp_listeners(port, host=host)
    slots = ConnectionSlots(max_connections)
    # A connection flood must not become a log flood: one warning per REFUSAL_LOG_EVERY.
    unlogged = {"refused": 0, "evicted": 0}
    next_log = -math.inf

    def note_turned_away(tcp_stream: trio.SocketStream, what: str) -> None:
        nonlocal next_log
        unlogged[what] += 1
        now = trio.current_time()
        if now >= next_log:
            logger.warning(
                "%s connections: %d already open (%d refused and %d evicted before finishing "
                "their request since the last warning, the latest from %s)",
                "refusing" if what == "refused" else "evicting",
                len(slots),
                unlogged["refused"],
                unlogged["evicted"],
                _peer_name(tcp_stream),
            )
            unlogged.update(refused=0, evicted=0)
            next_log = now + REFUSAL_LOG_EVERY

    async def serve_one(tcp_stream: trio.SocketStream) -> None:
        try:
            slot, evicted = slots.admit()
            if slot is None:
                note_turned_away(tcp_stream, "refused")
                await _turn_away(tcp_stream, plain=ssl_context is None)
                return
            if evicted is not None:
                note_turned_away(tcp_stream, "evicted")
            try:
                await _serve_connection(
                    tcp_stream,
                    handler,
                    slot=slot,
                    accept_path=accept_path,
                    max_message_size=max_message_size,
                    handshake_timeout=handshake_timeout,
                    ssl_context=ssl_context,
                )
            finally:
                slots.release(slot)
        finally:
            # Closed already on every path above; this is for the unexpected one.
            tcp_stream.socket.close()

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, nursery, serve_one)
        task_status.started(listeners)


async def _accept_loop(
    listener: trio.SocketListener,
    nursery: trio.Nursery,
    serve_one: Callable[[trio.SocketStream], Awaitable[None]],
) -> None:
    """`trio.serve_listeners`' loop for one listener, but the connection's task is `serve_one`
    itself: trio wraps each in a task that closes the stream with `aclose_forcefully`, two more
    trips through the scheduler at every connection's end, and `serve_one` closes it anyway."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                # Out of descriptors or kernel memory: as trio does, complain and wait a
                # little for the system to recover.
                logger.error(
                    "accept returned %s (%s); retrying in %g s",
                    errno.errorcode[exc.errno],
                    os.strerror(exc.errno),
                    ACCEPT_RETRY_SLEEP,
                    exc_info=True,
                )
                await trio.sleep(ACCEPT_RETRY_SLEEP)
            else:
                nursery.start_soon(serve_one, stream)


async def _turn_away(tcp_stream: trio.SocketStream, *, plain: bool) -> None:
    """Close a connection we cannot serve, telling a plain HTTP client why (best effort)."""
    if plain:
        with trio.move_on_after(BUSY_RESPONSE_TIMEOUT):
            try:
                await tcp_stream.send_all(BUSY_RESPONSE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
    await trio.aclose_forcefully(tcp_stream)


async def _serve_connection(
    tcp_stream: trio.SocketStream,
    handler: Callable[[WebSocket], Awaitable[None]],
    *,
    slot: Slot,
    accept_path: Callable[[str], bool],
    max_message_size: int,
    handshake_timeout: float,
    ssl_context: ssl.SSLContext | None,
) -> None:
    remote = _peer_name(tcp_stream)
    stream: trio.abc.Stream = tcp_stream
    websocket: WebSocket | None = None
    try:
        # One scope for eviction and the handshake's deadline (lifted once upgraded).
        with slot.scope:
            slot.scope.deadline = trio.current_time() + handshake_timeout
            if ssl_context is not None:
                tls_stream = trio.SSLStream(
                    tcp_stream, ssl_context, server_side=True, https_compatible=True
                )
                stream = tls_stream
                await tls_stream.do_handshake()
            websocket = await _server_handshake(
                stream,
                remote=remote,
                accept_path=accept_path,
                max_message_size=max_message_size,
                on_request=slot.request_received,
            )
            slot.scope.deadline = math.inf
            if websocket is None:
                return
            slot.upgraded(websocket)
            await _run_handler(handler, websocket)
        if slot.scope.cancelled_caught and websocket is None and not slot.evicted:
            # Not worth a line each: under a slowloris flood there are hundreds.
            logger.debug(
                "dropping %s: no WebSocket handshake within %g s", remote, handshake_timeout
            )
        if slot.evicted and not slot.head_done:
            await _turn_away(tcp_stream, plain=ssl_context is None)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        logger.debug("connection from %s lost: %s", remote, exc)
    except Exception:
        logger.exception("unexpected error serving %s", remote)
    finally:
        if not _close_forcefully(stream):
            await trio.aclose_forcefully(stream)


async def _run_handler(
    handler: Callable[[WebSocket], Awaitable[None]], websocket: WebSocket
) -> None:
    try:
        await handler(websocket)
    except WebSocketClosed as exc:
        logger.debug("WebSocket from %s closed: %s", websocket.remote, exc)
    except Exception:
        logger.exception("WebSocket handler for %s failed", websocket.remote)
        await websocket.close(CLOSE_INTERNAL_ERROR, "internal error")
    await websocket.close()


def _is_websocket_upgrade(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"upgrade" and any(
            token.strip().lower() == b"websocket" for token in value.split(b",")
        ):
            return True
    return False


async def _send_http_response(
    stream: trio.abc.Stream, http: h11.Connection, status: int, reason: bytes, body: bytes
) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
    ]
    data = http.send(h11.Response(status_code=status, reason=reason, headers=headers)) or b""
    data += http.send(h11.Data(data=body)) or b""
    data += http.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def _server_handshake(
    stream: trio.abc.Stream,
    *,
    remote: str,
    accept_path: Callable[[str], bool],
    max_message_size: int,
    on_request: Callable[[], None] = lambda: None,
) -> WebSocket | None:
    """Read the upgrade request and accept it, or answer it with an HTTP error (None).

    ``on_request`` is called once the request head is complete, before anything is answered.
    """
    # An honest client writes its request as soon as it is connected, so by the time this
    # task runs it is usually there: read before waiting.
    fd = _raw_socket_fd(stream)
    data = await _read_some(stream, fd, wait_first=False)
    usual = usual_request(data)
    if usual is not None:
        # The usual upgrade request, whole in the first read (see `usual_request`).
        target, response, end = usual
        on_request()
        path = target.split(b"?", 1)[0].decode("ascii")
        try:
            accepted = accept_path(path)
        except Exception:
            accepted = False  # h11's way below asks again, and logs it
        if accepted:
            await _write_response(stream, fd, response)
            return _server_websocket(stream, path, remote, max_message_size, data[end:])
    # h11 bounds the request head (16 KiB) and answers garbage with a status hint.
    http = h11.Connection(h11.SERVER)
    http.receive_data(data)
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as exc:
            await _send_http_response(
                stream, http, exc.error_status_hint, b"Bad Request", b"bad request\n"
            )
            return None
        if event is h11.NEED_DATA:
            http.receive_data(await _read_some(stream, fd, wait_first=False))
            continue
        if isinstance(event, h11.Request):
            if usual is None:
                on_request()
            break
        return None  # the client went away before sending a request

    # The path is matched without its query string: a link may carry parameters.
    path = event.target.split(b"?", 1)[0].decode("ascii", "replace")
    try:
        accepted = _is_websocket_upgrade(event) and accept_path(path)
    except Exception:
        logger.exception("accept_path failed for a request from %s", remote)
        await _send_http_response(stream, http, 500, b"Internal Server Error", b"internal error\n")
        return None
    if not accepted:
        # Plain HTTP requests and unknown paths look the same from outside: nothing here.
        await _send_http_response(stream, http, 404, b"Not Found", b"not found\n")
        return None

    answer = accept_response(event)
    if answer is not None:
        # The usual request: its 101 without wsproto's second parse of the head.
        await _write_response(stream, fd, answer)
    elif not await _wsproto_server_handshake(stream, event):
        # Anything else, wsproto judges (version, key, Connection: Upgrade, ...).
        return None
    trailing_data, _ = http.trailing_data
    return _server_websocket(stream, path, remote, max_message_size, trailing_data)


def _server_websocket(
    stream: trio.abc.Stream, path: str, remote: str, max_message_size: int, trailing_data: bytes
) -> WebSocket:
    """The server's side of an upgrade just accepted (its 101 written)."""
    return WebSocket(
        stream,
        _new_connection(ConnectionType.SERVER),
        path=path,
        remote=remote,
        client=False,
        max_message_size=max_message_size,
        trailing_data=trailing_data,
    )


async def _write_response(stream: trio.abc.Stream, fd: int | None, response: bytes) -> None:
    """Write the 101: at once on a plain socket (a fresh one takes it whole), so no scheduler
    pass for it."""
    written = _write_now(fd, response) if fd is not None else 0
    if written < len(response):
        await stream.send_all(response[written:])


async def _wsproto_server_handshake(stream: trio.abc.Stream, event: h11.Request) -> bool:
    """Answer an upgrade request the fast path did not take, the way wsproto does; True when
    it was accepted (101 sent)."""
    handshake = WSConnection(ConnectionType.SERVER)
    try:
        handshake.initiate_upgrade_connection(list(event.headers), event.target)
        ws_events = list(handshake.events())
    except (WsRemoteProtocolError, UnicodeError) as exc:
        # UnicodeError: wsproto decodes some headers itself (Host as IDNA, the comma lists as
        # ASCII) and lets a byte they cannot hold escape as a UnicodeError.
        hint = getattr(exc, "event_hint", None)
        if not isinstance(hint, RejectConnection):
            hint = RejectConnection(status_code=400)
        await stream.send_all(handshake.send(hint))
        return False
    if not any(isinstance(e, Request) for e in ws_events):
        await stream.send_all(handshake.send(RejectConnection(status_code=400)))
        return False
    await stream.send_all(handshake.send(AcceptConnection()))
    return True


# -- client ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Endpoint:
    secure: bool
    host: str
    port: int
    path: str
    resource: str  # path plus query: the request target

    @property
    def address(self) -> str:
        return _format_address(self.host, self.port)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.secure else 80
        return host if self.port == default_port else f"{host}:{self.port}"


_SCHEMES = {"ws": False, "http": False, "wss": True, "https": True}


def _parse_url(url: str) -> _Endpoint:
    # The fragment goes first, before anything could log or send it.
    url = url.split("#", 1)[0].strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebSocketError("the WebSocket URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise WebSocketError(f"unsupported URL scheme {scheme!r}: expected ws, wss, http or https")
    host = parts.hostname
    if not host:
        raise WebSocketError("the WebSocket URL has no host")
    secure = _SCHEMES[scheme]
    path = parts.path or "/"
    resource = path + (f"?{parts.query}" if parts.query else "")
    if not resource.isascii():
        raise WebSocketError("the WebSocket URL path must be ASCII (percent-encoded)")
    return _Endpoint(
        secure=secure,
        host=host,
        port=port if port is not None else (443 if secure else 80),
        path=path,
        resource=resource,
    )


def _describe_os_error(exc: BaseException) -> str:
    """A short reason for a connection failure, without a traceback."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        return _describe_os_error(cause.exceptions[0])
    return str(exc) or type(exc).__name__


def _ip_family(host: str) -> int | None:
    """The address family of an IP literal in its plain form; None for anything else (a name,
    or an IPv6 literal with a zone, which the resolver handles)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family
    return None


def _connected(sock: socket.socket) -> bool:
    """Whether a connect still in progress has already been made: over loopback (a local host)
    it usually has by the time connect returns, and then the wait for writability would only
    cost a trip through the scheduler."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


#: Where the platform has it (Linux), the socket is made non-blocking as it is created: one
#: system call fewer a dial than setblocking(False) after it.
_SOCK_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)


async def _connect_tcp(host: str, port: int) -> trio.SocketStream:
    """`trio.open_tcp_stream`, except that an IP literal is dialled directly: there is nothing
    to resolve and one address to try, so no resolver call and no happy-eyeballs nursery and
    task (a good part of a local join's connect). The connect itself is trio's socket connect
    without its numeric getaddrinfo and context managers: a non-blocking connect, a wait for
    writability unless it is made already, then SO_ERROR. Cancelled, the socket is closed
    (as trio does: a connect cannot be taken back)."""
    family = _ip_family(host)
    if family is None:
        return await trio.open_tcp_stream(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM | _SOCK_NONBLOCK)
    try:
        if not _SOCK_NONBLOCK:
            sock.setblocking(False)
        error = sock.connect_ex((host, port))
        if error in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            if _connected(sock):
                error = 0
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await trio.lowlevel.wait_writable(sock)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if error:
            raise OSError(error, f"Error connecting to {(host, port)!r}: {os.strerror(error)}")
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def _open_tcp(
    endpoint: _Endpoint,
    resolve_fallback: Callable[[str], Awaitable[list[str]]] | None,
    resolve_override: dict[tuple[str, int], tuple[str, int]] | None,
) -> trio.SocketStream:
    override = (resolve_override or {}).get((endpoint.host, endpoint.port))
    if override is not None:
        ip, port = override
        try:
            return await _connect_tcp(ip, port)
        except OSError as exc:
            raise WebSocketError(
                f"could not connect to {endpoint.address} (overridden to "
                f"{_format_address(ip, port)}): {_describe_os_error(exc)}"
            ) from exc

    try:
        return await _connect_tcp(endpoint.host, endpoint.port)
    except UnicodeError:
        # The idna codec refused the name before any lookup (an empty or over-long label, a
        # character IDNA forbids): no resolver can find it, so say so instead of crashing.
        raise WebSocketError(f"could not resolve {endpoint.host}: not a valid host name") from None
    except socket.gaierror as exc:
        if resolve_fallback is None:
            raise WebSocketError(
                f"could not resolve {endpoint.host}: {_describe_os_error(exc)}"
            ) from exc
        system_error = _describe_os_error(exc)
    except OSError as exc:
        raise WebSocketError(
            f"could not connect to {endpoint.address}: {_describe_os_error(exc)}"
        ) from exc

    # The system resolver failed (captive or filtering DNS is common): ask the fallback
    # (e.g. DNS over HTTPS). TLS still verifies the certificate against the hostname.
    try:
        candidates = await resolve_fallback(endpoint.host)
    except Exception as exc:
        raise WebSocketError(
            f"could not resolve {endpoint.host}: system resolver: {system_error}; "
            f"fallback resolver: {_describe_os_error(exc)}"
        ) from exc
    addresses = []
    for candidate in candidates:
        try:
            addresses.append(str(ipaddress.ip_address(candidate)))
        except ValueError:
            logger.warning("fallback resolver returned a non-IP address for %s", endpoint.host)
    if not addresses:
        raise WebSocketError(
            f"could not resolve {endpoint.host}: system resolver: {system_error}; "
            "fallback resolver: no addresses"
        )
    failures = []
    for address in addresses:
        try:
            return await _connect_tcp(address, endpoint.port)
        except OSError as exc:
            failures.append(f"{_format_address(address, endpoint.port)}: {_describe_os_error(exc)}")
    raise WebSocketError(
        f"could not connect to {endpoint.address} (resolved by the fallback resolver): "
        + "; ".join(failures)
    )


async def _tls_handshake(stream: trio.SSLStream[trio.SocketStream], endpoint: _Endpoint) -> None:
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = cause.verify_message or cause.reason or str(cause)
            raise WebSocketError(
                f"TLS certificate verification failed for {endpoint.host}: {detail}"
            ) from exc
        if isinstance(cause, ssl.SSLError):
            detail = cause.reason or str(cause)
        elif cause is not None:
            detail = _describe_os_error(cause)
        else:
            detail = "connection closed"
        raise WebSocketError(f"TLS handshake with {endpoint.address} failed: {detail}") from exc


async def _client_handshake(
    stream: trio.abc.Stream, endpoint: _Endpoint
) -> tuple[Connection, bytes]:
    """Send the upgrade request and judge the answer (`_wshandshake`); returns wsproto's side
    of the open connection and whatever arrived after the response head."""
    try:
        request, expected_accept = client_request(endpoint.host_header, endpoint.resource)
    except ValueError:
        raise WebSocketError("the WebSocket URL path is malformed") from None
    fd = _raw_socket_fd(stream)
    # A fresh socket takes a small request whole: written at once, the next step is the wait
    # for the answer, with no scheduler pass for the write in between.
    written = _write_now(fd, request) if fd is not None else 0
    if written < len(request):
        await stream.send_all(request[written:])
    # Only the response head is judged here; whatever follows it already belongs to the
    # WebSocket connection, which we build ourselves (with the size limit).
    buffer = bytearray()
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > MAX_RESPONSE_HEAD:
            raise WebSocketError(f"{endpoint.address} sent an oversized HTTP response head")
        data = await _read_some(stream, fd, wait_first=True)
        if not data:
            raise WebSocketError(
                f"{endpoint.address} closed the connection during the WebSocket handshake"
            )
        buffer += data
    head, trailing_data = bytes(buffer[: end + 4]), bytes(buffer[end + 4 :])
    try:
        check_response(head, expected_accept)
    except HandshakeError as exc:
        if exc.status_code is not None:
            raise WebSocketError(
                f"{endpoint.address} refused the WebSocket upgrade: {exc}",
                status_code=exc.status_code,
            ) from None
        raise WebSocketError(
            f"{endpoint.address} sent an invalid WebSocket handshake: {exc}"
        ) from None
    return _new_connection(ConnectionType.CLIENT), trailing_data


def _write_now(fd: int, data: bytes) -> int:
    """Write what the socket takes now (0 when it takes nothing, or is broken: the stream's
    own write then finds out and reports it)."""
    try:
        return os.write(fd, data)
    except OSError:
        return 0


async def _read_some(stream: trio.abc.Stream, fd: int | None, *, wait_first: bool) -> bytes:
    """Some bytes of the opening handshake; b"" at EOF. On a plain socket, read directly:
    `wait_first=False` tries the read before waiting (the bytes are often there already, and
    finding them costs no scheduler pass)."""
    if fd is None:
        return bytes(await stream.receive_some(RECEIVE_CHUNK))
    while True:
        if wait_first:
            await trio.lowlevel.wait_readable(fd)
        wait_first = True
        try:
            return os.read(fd, RECEIVE_CHUNK)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise trio.BrokenResourceError("the connection was lost") from exc


async def connect_websocket(
    url: str,
    *,
    max_message_size: int,
    connect_timeout: float = 15.0,
    ssl_context: ssl.SSLContext | None = None,
    resolve_fallback: Callable[[str], Awaitable[list[str]]] | None = None,
    resolve_override: dict[tuple[str, int], tuple[str, int]] | None = None,
) -> WebSocket:
    """Open a WebSocket to ``url`` (ws, wss, http or https; any ``#fragment`` is ignored).

    Resolution order: ``resolve_override`` (``(host, port) -> (ip, port)``, like curl
    ``--resolve``), then the system resolver, then ``resolve_fallback(host)`` if the system
    resolver failed. TLS uses ``ssl_context``, else the OS trust store plus ``TUNNEL_CA_BUNDLE``
    (``client_ssl_context``), with SNI and hostname verification against the URL's host.
    Everything (TCP, TLS, upgrade) is bounded by ``connect_timeout``. Failures raise
    `WebSocketError`.
    """
    if max_message_size < 0:
        raise ValueError("max_message_size must not be negative")
    if not connect_timeout >= 0:  # what trio.fail_after checked (NaN too)
        raise ValueError("connect_timeout must be non-negative")
    endpoint = _parse_url(url)
    stream: trio.abc.Stream | None = None
    try:
        # fail_after written out: its context manager wrapper cost a fifth of the scope.
        with trio.CancelScope(deadline=trio.current_time() + connect_timeout) as scope:
            tcp_stream = await _open_tcp(endpoint, resolve_fallback, resolve_override)
            stream = tcp_stream
            remote = _peer_name(tcp_stream)
            if endpoint.secure:
                tls_stream = trio.SSLStream(
                    tcp_stream,
                    ssl_context if ssl_context is not None else client_ssl_context(),
                    server_hostname=endpoint.host,
                    https_compatible=True,
                )
                stream = tls_stream
                await _tls_handshake(tls_stream, endpoint)
            try:
                connection, trailing_data = await _client_handshake(stream, endpoint)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise WebSocketError(
                    f"connection to {endpoint.address} was lost during the WebSocket handshake"
                ) from exc
        if scope.cancelled_caught:
            raise trio.TooSlowError
        assert stream is not None  # the scope caught nothing, so the body ran to its end
    except trio.TooSlowError:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise WebSocketError(
            f"timed out connecting to {endpoint.address} after {connect_timeout:g} s"
        ) from None
    except BaseException:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise
    return WebSocket(
        stream,
        connection,
        path=endpoint.path,
        remote=remote,
        client=True,
        max_message_size=max_message_size,
        trailing_data=trailing_data,
    )
