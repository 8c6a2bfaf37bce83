"""MCP messages over this process's stdin and stdout, native to trio.

The SDK's `stdio_server` reads each stdin line in a worker thread and writes (and flushes)
each answer in two more, then hands every message across a memory stream: about four thread
round trips and two task hand-offs per request, most of an MCP call's latency once the tool
itself is fast. Here, when stdin and stdout are pipes or sockets (which is how every MCP client
starts a server), they are read and written in trio directly (`_Pipe`: non-blocking, waiting
only when there is nothing to read or no room to write), and the server's dispatcher pulls
each message straight from the read side. Anything else (a
terminal, a file) is read and written in worker threads, as before.

What stays as the SDK does it, on purpose:
- the client's stream is moved off the standard descriptors while serving: fd 0 reads
  /dev/null (a child such as cloudflared can never steal MCP bytes) and fd 1 writes to
  stderr, so a stray `print` or a library's output can never corrupt the protocol: the only
  bytes on the real stdout are whole MCP messages, one a line;
- lines are decoded as UTF-8 with undecodable bytes replaced, and parsed with the SDK's own
  JSON-RPC message adapter; answers are serialized as the SDK does (aliases, unset fields out).

A line that cannot be parsed is shown to `answer_unreadable`, whose reply (a parse error for a
request the server can identify) goes straight back to the client; a line it does not answer
goes to the dispatcher as the exception, as the SDK's transport does.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Protocol

import anyio
import mcp_types as types
import trio
from mcp.os.win32.utilities import rebind_std_handle_to_fd
from mcp.shared.message import SessionMessage

#: How much is read from stdin at a time.
READ_SIZE = 1 << 16
#: The longest line (one MCP message) this server reads. Nothing a client sends legitimately
#: comes close (a chat text fits one protocol frame); a longer line is skipped as it streams
#: by and answered with an error, so a runaway client cannot grow this process without bound.
MAX_LINE = 32 << 20

log = logging.getLogger(__name__)


class _LineTooLong(Exception):
    """A line longer than MAX_LINE went by (skipped)."""


class _Wire(Protocol):
    async def receive_some(self, max_bytes: int) -> bytes: ...
    async def send_all(self, data: bytes) -> None: ...
    async def aclose(self) -> None: ...


class _ThreadedFd:
    """A blocking descriptor (a terminal, a file) read and written in worker threads.

    Reads may be abandoned on cancellation (a terminal may never send another line); the
    descriptor is then left open, since a thread may still be blocked on it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def receive_some(self, max_bytes: int) -> bytes:
        return await trio.to_thread.run_sync(os.read, self._fd, max_bytes, abandon_on_cancel=True)

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = await trio.to_thread.run_sync(os.write, self._fd, view)
            view = view[written:]

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _Pipe:
    """A pipe or socket in non-blocking mode (trio's `FdStream` owns the descriptor: its mode,
    its closing), read and written without a pass through the scheduler when the bytes are
    already there or fit the pipe at once.

    trio's streams take that pass before every read and write (a checkpoint, so a loop over a
    busy stream cannot starve other tasks): three per request here (the read, the write and
    the write lock), each an extra round of the run loop with its `epoll_wait`. The tasks
    around these calls check in with the scheduler for every message already (the SDK's
    dispatcher passes each through a memory stream, and `StdinMessages.receive` yields for
    each line it skips), and a read or write that must wait still waits in trio."""

    def __init__(self, fd: int) -> None:
        self._stream = trio.lowlevel.FdStream(fd)

    def _fd(self) -> int:
        fd = self._stream.fileno()  # -1 once closed: never a number the process reused
        if fd < 0:
            raise trio.ClosedResourceError("the stream was closed")
        return fd

    async def receive_some(self, max_bytes: int) -> bytes:
        while True:
            fd = self._fd()
            try:
                return os.read(fd, max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
            except OSError as exc:
                raise trio.BrokenResourceError from exc

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            fd = self._fd()
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
            except OSError as exc:
                raise trio.BrokenResourceError from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


def _wire(fd: int) -> _Wire:
    """A non-blocking trio stream for a pipe or socket; worker threads for anything else.

    Non-blocking mode belongs to the open file, shared with every process holding it: a pipe a
    client made for this server is ours alone, a terminal is shared with the shell."""
    if sys.platform != "win32":
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            return _Pipe(fd)
    return _ThreadedFd(fd)


def _claim(fd: int, diversion: int) -> int:
    """Move the stream on `fd` to a private descriptor (returned); `fd` gets `diversion`."""
    private = os.dup(fd)
    os.set_inheritable(private, False)
    _point(fd, diversion)
    return private


def _point(fd: int, to: int) -> None:
    os.dup2(to, fd)
    if sys.platform == "win32":  # children inherit the Win32 standard handles, not the fds
        with suppress(OSError):
            rebind_std_handle_to_fd(fd)


class StdinMessages:
    """The read side: each line of stdin, parsed, as the SDK's dispatcher pulls it.

    Satisfies the SDK's read-stream protocol (`receive`, async iteration, `aclose`)."""

    def __init__(
        self,
        wire: _Wire,
        answer_unreadable: Callable[[str], SessionMessage | None],
        replies: StdoutMessages,
    ) -> None:
        self._wire = wire
        self._answer_unreadable = answer_unreadable
        self._replies = replies
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline
        self._eof = False
        self._closed = False
        self._skipping = False  # inside a line longer than MAX_LINE

    async def _line(self) -> bytes | None:
        """The next line without its newline; None at the end of the stream.

        Raises _LineTooLong once a line longer than MAX_LINE has gone by."""
        reads = 0
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._scanned = 0
                if self._skipping:
                    self._skipping = False
                    raise _LineTooLong
                return line
            if len(self._buffer) > MAX_LINE or self._skipping:
                self._skipping = True
                self._buffer.clear()
            self._scanned = len(self._buffer)
            if self._eof:
                if self._skipping:
                    return None
                if not self._buffer:
                    return None
                line = bytes(self._buffer)  # a last line without a newline
                self._buffer.clear()
                self._scanned = 0
                return line
            if reads:
                # A line arriving over many reads (a long one, or one being skipped) lets the
                # other tasks run between them: reads that find bytes waiting do not (`_Pipe`).
                await trio.lowlevel.checkpoint()
            reads += 1
            chunk = await self._wire.receive_some(READ_SIZE)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    async def receive(self) -> SessionMessage | Exception:
        if self._closed:
            raise anyio.ClosedResourceError
        skipped = False
        while True:
            if skipped:
                # A line that gives the dispatcher nothing (blank, unreadable, too long) still
                # lets the other tasks run: a stream of them must not hold the loop (`_Pipe`).
                await trio.lowlevel.checkpoint()
            skipped = True
            try:
                line = await self._line()
            except _LineTooLong:
                log.warning("stdin: a message over %d bytes was skipped and answered with an error", MAX_LINE)
                error = types.ErrorData(
                    code=types.INVALID_REQUEST,
                    message=f"Invalid request: the message is longer than {MAX_LINE:,} bytes; nothing "
                    "was done.",
                )
                await self._reply(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=None, error=error)))
                continue
            if line is None:
                raise anyio.EndOfStream
            text = line.decode("utf-8", errors="replace")
            if not text.strip():
                continue
            try:
                message = types.jsonrpc_message_adapter.validate_json(text, by_name=False)
            except Exception as exc:
                reply = self._answer_unreadable(text)
                if reply is None:
                    return exc
                await self._reply(reply)
                continue
            return SessionMessage(message)

    async def _reply(self, reply: SessionMessage) -> None:
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._replies.send(reply)

    def __aiter__(self) -> StdinMessages:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> StdinMessages:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class StdoutMessages:
    """The write side: each message serialized as one line and written whole.

    Satisfies the SDK's write-stream protocol (`send`, `aclose`); many tasks may send at once."""

    def __init__(self, wire: _Wire) -> None:
        self._wire = wire
        self._lock = trio.Lock()
        self._closed = False
        #: Set once a first message is out (the answer to `initialize`, when a client starts
        #: the server): the server then loads what it deferred (`tunnel_mcp.stdio`).
        self.answered = trio.Event()

    async def send(self, item: SessionMessage, /) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        data = item.message.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8") + b"\n"
        # The lock keeps a message whose write must wait whole; free, it is taken without the
        # scheduler pass `async with` would cost (see `_Pipe`).
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()
        try:
            await self._wire.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, BrokenPipeError) as exc:
            # The client went away: the dispatcher treats this like a closed stream.
            raise anyio.BrokenResourceError from exc
        finally:
            self._lock.release()
        self.answered.set()

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> StdoutMessages:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


@asynccontextmanager
async def stdio_streams(
    answer_unreadable: Callable[[str], SessionMessage | None],
) -> AsyncIterator[tuple[StdinMessages, StdoutMessages]]:
    """Serve MCP on this process's stdin/stdout (see the module docstring).

    `answer_unreadable(line)` is called for a line that is not a JSON-RPC message: its reply,
    if any, is sent to the client and the line skipped."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        stdin_fd = _claim(0, devnull)
    finally:
        os.close(devnull)
    stdout_fd = _claim(1, 2)
    reader, writer = _wire(stdin_fd), _wire(stdout_fd)
    try:
        stdout = StdoutMessages(writer)
        yield StdinMessages(reader, answer_unreadable, stdout), stdout
    finally:
        # Put the client's stdout back on fd 1 (the process may still log at exit, to stderr).
        with suppress(OSError):
            _point(1, stdout_fd)
        with trio.CancelScope(shield=True):
            await writer.aclose()
            await reader.aclose()
        if isinstance(writer, _ThreadedFd):
            with suppress(OSError):
                os.close(stdout_fd)
