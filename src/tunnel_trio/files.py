"""Files for sessions (issue 10): sharing and receiving, the same for a host and a member.

`HostSession` and `MemberSession` each own one `SessionFiles` (`HostFiles`, `MemberFiles`)
as `session.files`, and delegate their file methods to it:

    prepared = await session.prepare_share(path)       # scan: what the human approves
    result = await session.share(prepared)             # the offer, in the room's total order
    plan = await session.plan_receive(offer_id, save_to)    # every target, before any write
    result = await session.receive(plan)               # fetch, write, verify, rename

Where the work happens:

- Reads of our own offers run in worker threads (`files_disk.ShareReader`): the core asks for
  `READ_SIZE` at a time (at most one request per transfer outstanding); a thread reads up to
  `READ_AHEAD` and the next requests are answered from that. The relay's and the member's
  event handling only start them.
- A receive runs in the session's nursery, not in the caller's task: a caller whose wait ends
  (or whose tool call is cancelled) leaves it running, and `receive` again finds it. Each file
  is written through a `files_disk.FileWriter` (temporary name, SHA-256 as bytes arrive, then a
  checked rename) in worker threads, `WRITE_BATCH_BYTES` per thread call, and only then is that
  much credit granted back: a slow disk slows the sharer instead of filling memory. A fetch
  keeps `RECEIVE_CREDIT` (8 chunks, 511 KiB, within the room's `file_window`) outstanding: that bounds
  what the receiver holds unwritten, what the host holds of the transfer, and what a chat
  message can find ahead of it on either connection (measured in bench/files.py).
- A dropped member connection does not end its fetches: the core fetches again after the
  resume from the last byte delivered (which the writer has, or will have, written), so nothing
  delivered is sent again. A receive that stopped but can go on (the sharer could not read, the
  room was busy, the connection came back as a new member) keeps its writers, so `receive`
  again continues from `FileWriter.written`. One that cannot go on (the offer ended, the file
  changed, a hash mismatch, a full disk, a cancel, the tunnel closed) removes every partial
  file: only verified files ever appear under their names.

Events come in through `on_event` (a member's, from its reader task, with the connection
object that produced them; the host's from the relay's `on_files`), in the room's order, and
never call back into the room synchronously.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from tunnelproto import (
    MAX_CHUNK,
    MAX_MEMBER_TRANSFERS,
    ChunkReceived,
    FetchAborted,
    FetchComplete,
    FileEntry,
    FileList,
    FileListFailed,
    FileOffer,
    FileOfferEnded,
    LocalProtocolError,
    MemberConnection,
    OfferInfo,
    ReadRequest,
    ShareAccepted,
    ShareRejected,
    TunnelEvent,
)
from tunnelproto._files import (
    ABORT_BAD_FETCH,
    ABORT_BUSY,
    ABORT_CHANGED,
    ABORT_CLOSED,
    ABORT_GONE,
    ABORT_UNREADABLE,
    READ_SIZE,
    ManifestCheck,
    check_head,
)

from . import files_disk
from .session_types import (
    FileOfferInfo,
    MemberInfo,
    NotOpenError,
    OfferFile,
    PlannedFile,
    PreparedReceive,
    PreparedShare,
    ReceivedFile,
    ReceiveProgress,
    ReceiveResult,
    ShareResult,
    SkippedFile,
    TranscriptMessage,
    TunnelError,
)

if TYPE_CHECKING:
    from .session import HostSession, MemberSession

log = logging.getLogger("tunnel_trio.files")

#: Files of an offer that a transcript message and a status list (`plan_receive` lists all).
MAX_FILES_SHOWN = 20
#: Received bytes written per worker-thread call, then granted back as credit: a receiver
#: writes once this much (or a quarter of its window, if less) is queued, or the file is done.
#: The rest of the window stays open meanwhile, so the sharer never waits for it; one thread
#: hop per batch rather than per chunk is most of what a transfer costs on a busy machine.
WRITE_BATCH_BYTES = 256 * 1024
#: Credit a receiver keeps outstanding on a fetch (at most the room's `file_window`). What is
#: in flight is what a chat message from the sharer, or to the receiver, may wait behind; on
#: loopback the rate is bound by CPU, not by this, so it is kept small.
RECEIVE_CREDIT = 8 * MAX_CHUNK
#: A sharer reads this much of a file per worker-thread call and answers the core's next read
#: requests (READ_SIZE each) from it; at most MAX_READ_AHEADS such buffers are kept.
READ_AHEAD = 4 * READ_SIZE
MAX_READ_AHEADS = 8
#: How long `share` waits for the host to stamp a member's share before saying it is queued.
SHARE_TIMEOUT = 30.0
#: A fetch the room turned away as busy (too many transfers) is tried again after this long,
#: up to BUSY_TRIES times; then the receive stops, resumable.
BUSY_RETRY = 2.0
BUSY_TRIES = 15
#: Ended offers whose reason we remember, to explain a fetch that found them gone.
MAX_ENDED_REMEMBERED = 64
#: Offers remembered for transcript messages (a room has at most 32 live; the rest are
#: forgotten oldest first, so a hostile host cannot make us hold more).
MAX_KNOWN_OFFERS = 64

#: Why an offer ended, in words (the `unoffer` reasons of spec "Files").
END_WORDS = {
    "withdrawn": "the sharer withdrew it",
    "left": "its sharer left the room",
    "removed": "its sharer was removed from the room",
    "expired": "it expired (an offer lasts 30 minutes unless shared again)",
}


def manifest_hash(entries: Sequence[FileEntry] | Sequence[files_disk.ManifestEntry]) -> str:
    """The offer's hash: SHA-256 of ``"<sha256 hex>  <path>\\n"`` per file, in manifest order."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry.sha256.hex()}  {entry.path}\n".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _offer_files(entries: Sequence[FileEntry] | Sequence[files_disk.ManifestEntry]) -> tuple[
    OfferFile, ...
]:
    return tuple(OfferFile(e.path, e.size, e.sha256.hex()) for e in entries)


def _looks_like_folder(name: str, count: int, files: Sequence[FileEntry]) -> bool:
    # A one-file offer is named after its file (scan_share); anything else is a folder's.
    return not (count == 1 and len(files) == 1 and files[0].path == name)


def _end_words(reason: str) -> str:
    return END_WORDS.get(reason, reason)


class _Stop(Exception):
    """A file could not be received. `scope`: "file" (the others go on), "all" (the whole
    receive stops and its partial files go), "pause" (this file stops, keeping what it has, so
    a later `receive` continues it)."""

    def __init__(self, message: str, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class _Sink:
    """The chunks of one fetch, waiting to be written (at most the window: credit is granted
    only once they are), and how the fetch ended."""

    __slots__ = ("tid", "chunks", "queued", "outcome", "delivered", "_wake")

    def __init__(self) -> None:
        self.tid = 0
        self.chunks: deque[tuple[int, bytes]] = deque()
        self.queued = 0
        #: None while it runs; "done", or an abort code and message.
        self.outcome: tuple[str, str] | None = None
        self.delivered = 0
        self._wake = trio.Event()

    def put(self, offset: int, data: bytes) -> None:
        self.chunks.append((offset, data))
        self.queued += len(data)
        self.delivered += len(data)
        self._wake.set()

    def end(self, code: str, message: str = "") -> None:
        if self.outcome is None:
            self.outcome = (code, message)
        self._wake.set()

    def take(self, max_bytes: int) -> list[tuple[int, bytes]]:
        batch: list[tuple[int, bytes]] = []
        size = 0
        while self.chunks and (not batch or size + len(self.chunks[0][1]) <= max_bytes):
            item = self.chunks.popleft()
            batch.append(item)
            size += len(item[1])
        self.queued -= size
        return batch

    async def wait(self) -> None:
        """Until the next chunk or the end."""
        await self._wake.wait()
        self._wake = trio.Event()


def _write_batch(writer: files_disk.FileWriter, batch: list[tuple[int, bytes]]) -> int:
    """In a worker thread: append the chunks (hashing as they go). Returns the bytes written."""
    n = 0
    for offset, data in batch:
        writer.write(offset, data)
        n += len(data)
    return n


@dataclass(eq=False)
class _Receive:
    """One offer being received into one destination."""

    prepared: PreparedReceive
    plan: files_disk.ReceivePlan
    indices: tuple[int, ...]  # plan index -> file index in the offer's manifest
    writers: dict[int, files_disk.FileWriter] = field(default_factory=dict)
    written: dict[int, ReceivedFile] = field(default_factory=dict)
    failed: dict[int, SkippedFile] = field(default_factory=dict)
    paused: dict[int, str] = field(default_factory=dict)  # plan index -> why it stopped
    #: Bytes delivered by the room across all its fetches (each byte once, resumes included).
    delivered: int = 0
    running: bool = False
    finished: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope | None = None
    error: str | None = None
    fatal: bool = False

    @property
    def offer_id(self) -> int:
        return self.prepared.offer_id

    def received_bytes(self) -> int:
        done = sum(f.size for f in self.written.values())
        return done + sum(w.written for w in self.writers.values())

    @property
    def complete(self) -> bool:
        return len(self.written) == len(self.plan.files)

    @property
    def resumable(self) -> bool:
        """Stopped, with files paused that `receive` again continues (every other file is
        written or failed by the end of a run)."""
        return not self.running and not self.fatal and bool(self.paused)

    def state(self) -> str:
        if self.running:
            return "running"
        if self.complete:
            return "complete"
        return "resumable" if self.resumable else "failed"

    def result(self) -> ReceiveResult:
        complete = self.complete
        resumable = self.resumable
        return ReceiveResult(
            offer_id=self.offer_id,
            destination=self.prepared.destination,
            written=tuple(self.written[i] for i in sorted(self.written)),
            skipped=self.prepared.skipped,
            failed=tuple(self.failed[i] for i in sorted(self.failed)),
            complete=complete,
            running=self.running,
            resumable=resumable,
            received_bytes=self.received_bytes(),
            total_bytes=self.plan.total,
            error=None if complete or self.running else self.error,
            delivered_bytes=self.delivered,
        )

    def progress(self) -> ReceiveProgress:
        return ReceiveProgress(
            offer_id=self.offer_id,
            name=self.prepared.name,
            destination=self.prepared.destination,
            files_done=len(self.written),
            count=len(self.plan.files),
            received_bytes=self.received_bytes(),
            total_bytes=self.plan.total,
            state=self.state(),  # type: ignore[arg-type]
        )


class SessionFiles:
    """The session side of files: offers we know, shares we serve, receives we run."""

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        #: Our live offers: offer id -> (what was scanned, its reader).
        self._readers: dict[int, tuple[files_disk.Share, files_disk.ShareReader]] = {}
        #: Live offers in the room, as transcript messages and status show them.
        self._known: OrderedDict[int, FileOfferInfo] = OrderedDict()
        self._ended: OrderedDict[int, str] = OrderedDict()
        self._sinks: dict[int, _Sink] = {}
        #: Read ahead for our offers: (asker, transfer) -> (offer id, offset, bytes from it).
        self._ahead: OrderedDict[tuple[object, int], tuple[int, int, memoryview]] = OrderedDict()
        self._receives: dict[int, _Receive] = {}
        #: Transfers we receive at once, all receives together (the room's per-member cap).
        self._slots = trio.Semaphore(MAX_MEMBER_TRANSFERS)

    # ---- overridden per role ---------------------------------------------------------------

    def _names(self, member_id: int) -> MemberInfo:
        raise NotImplementedError

    def _me(self) -> int:
        raise NotImplementedError

    def _require_open(self) -> None:
        raise NotImplementedError

    async def _publish(self, prepared: PreparedShare) -> tuple[int, int]:
        """Offer `prepared`; (offer id, seq) once the room stamped it. Registers the reader."""
        raise NotImplementedError

    def _unshare(self, offer_id: int) -> None:
        raise NotImplementedError

    def _live(self, offer_id: int) -> OfferInfo | None:
        raise NotImplementedError

    async def _manifest(self, offer_id: int) -> tuple[FileEntry, ...]:
        raise NotImplementedError

    async def _fetch(self, offer_id: int, file: int, at: int, sink: _Sink) -> None:
        """Start the fetch (with `_credit()`) and bind `sink` to its transfer id before any
        event for it."""
        raise NotImplementedError

    def _grant(self, transfer: int, n: int) -> None:
        raise NotImplementedError

    def _window(self) -> int:
        """Bytes a fetch may have outstanding (the room's `file_window`)."""
        raise NotImplementedError

    def _credit(self) -> int:
        # Whole chunks where the window allows one: a credit that is not leaves the sharer,
        # once it catches up with it, a short chunk to send, and that chunk's credit comes back
        # just as short, so every catch-up after it sends one more (each costs every hop a
        # whole message).
        credit = min(RECEIVE_CREDIT, self._window())
        return max(1, credit - credit % MAX_CHUNK if credit > MAX_CHUNK else credit)

    def _cancel(self, transfer: int) -> None:
        raise NotImplementedError

    def _provide(self, asker: Any, transfer: int, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def _read_failed(self, asker: Any, transfer: int, code: str, message: str) -> None:
        raise NotImplementedError

    # ---- lifetime ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The nursery reads and receives run in; serve until cancelled (the session ends),
        then drop every partial file and close every shared file."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.end()

    def bind(self, nursery: trio.Nursery) -> None:
        """Instead of `run`: reads and receives run in `nursery` (the session's own: no task
        and no nursery of their own at every join); the session calls `end` once it closed."""
        self._nursery = nursery

    def end(self) -> None:
        """Drop every partial file and close every shared file (the session ended)."""
        self._nursery = None
        for sink in self._sinks.values():
            sink.end(ABORT_CLOSED, "the tunnel closed")
        for job in self._receives.values():
            _abort(self._discard(job, "the tunnel closed before the files were received"))
        self._receives.clear()
        for _, reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is None:
            raise NotOpenError("the tunnel is closed")
        self._nursery.start_soon(fn, *args)

    # ---- events ------------------------------------------------------------------------------

    def on_event(self, event: TunnelEvent, asker: object = None) -> TranscriptMessage | None:
        """A file event from the room, in order (`asker`: the member's connection object that
        produced it). Returns the transcript message it makes, if any. Never blocks."""
        if isinstance(event, ChunkReceived):
            sink = self._sinks.get(event.transfer)
            if sink is not None:
                sink.put(event.offset, event.data)
        elif isinstance(event, FetchComplete):
            sink = self._sinks.get(event.transfer)
            if sink is not None:
                sink.end("done")
        elif isinstance(event, FetchAborted):
            sink = self._sinks.get(event.transfer)
            if sink is not None:
                sink.end(event.code, event.message)
        elif isinstance(event, ReadRequest):
            self._on_read(event, asker)
        elif isinstance(event, FileOffer):
            return self.offer_message(event.offer)
        elif isinstance(event, FileOfferEnded):
            return self.ended_message(event.seq, event.ts, event.offer_id, event.sharer,
                                      event.reason)
        return None

    def offer_message(self, info: OfferInfo) -> TranscriptMessage:
        """The `file` message of an offer (and remember the offer while it lives)."""
        whole = len(info.files) >= info.count
        offer = FileOfferInfo(
            offer_id=info.id,
            sharer=self._names(info.sharer),
            name=info.name,
            count=info.count,
            total=info.total,
            files=_offer_files(info.files[:MAX_FILES_SHOWN]),
            hash=manifest_hash(info.files) if whole else None,
            is_folder=_looks_like_folder(info.name, info.count, info.files),
            note=info.note,
            seq=info.seq,
        )
        self._known[info.id] = offer
        while len(self._known) > MAX_KNOWN_OFFERS:
            self._known.popitem(last=False)
        return TranscriptMessage(
            seq=info.seq, kind="file", ts=info.ts / 1000, sender=offer.sharer,
            event="file-offer", file=offer,
        )

    def ended_message(
        self, seq: int, ts: int, offer_id: int, sharer: int, reason: str
    ) -> TranscriptMessage:
        """The `file` message of an offer's end; our reader of it (if ours) closes."""
        offer = self._known.pop(offer_id, None)
        if offer is None:
            offer = FileOfferInfo(offer_id, self._names(sharer), f"offer {offer_id}", 0, 0, (),
                                  None, False)
        self._ended[offer_id] = reason
        while len(self._ended) > MAX_ENDED_REMEMBERED:
            self._ended.popitem(last=False)
        mine = self._readers.pop(offer_id, None)
        if mine is not None:
            for key in [k for k, v in self._ahead.items() if v[0] == offer_id]:
                del self._ahead[key]
            if self._nursery is not None:
                self._nursery.start_soon(trio.to_thread.run_sync, mine[1].close)
        return TranscriptMessage(
            seq=seq, kind="file", ts=ts / 1000, sender=offer.sharer, event="file-offer-ended",
            file=offer, reason=f"{reason}: {_end_words(reason)}",
        )

    # ---- sharing ---------------------------------------------------------------------------

    async def prepare_share(
        self, path: str, *, note: str | None = None, cwd: str | None = None
    ) -> PreparedShare:
        """Scan `path` (a file or a folder) in a worker thread; nothing is sent."""
        self._require_open()
        try:
            scan = await trio.to_thread.run_sync(lambda: files_disk.scan_share(path, cwd=cwd))
        except files_disk.FileShareError as exc:
            raise TunnelError(str(exc)) from None
        if not scan.entries:
            why = f" ({len(scan.skipped) + scan.skipped_unlisted} skipped)" if scan.skipped else ""
            raise TunnelError(f"there is nothing to share in {scan.root}{why}: every file was "
                              "skipped or the folder is empty")
        entries = _entries(scan)
        try:
            check_head(scan.name, note, len(entries), scan.total, LocalProtocolError)
            check = ManifestCheck(len(entries), scan.total, LocalProtocolError)
            check.add(entries)
            check.finish()
        except LocalProtocolError as exc:
            raise TunnelError(str(exc)) from None
        return PreparedShare(
            path=str(scan.root),
            name=scan.name,
            is_folder=scan.is_folder,
            files=_offer_files(scan.entries),
            count=len(scan.entries),
            total=scan.total,
            hash=manifest_hash(scan.entries),
            skipped=tuple(SkippedFile(s.path, s.reason) for s in scan.skipped),
            skipped_unlisted=scan.skipped_unlisted,
            warnings=scan.warnings,
            note=note,
            scan=scan,
        )

    async def share(self, what: str | PreparedShare, *, note: str | None = None) -> ShareResult:
        """Offer a prepared share (or scan `what` first) to the room."""
        prepared = what if isinstance(what, PreparedShare) else await self.prepare_share(
            what, note=note
        )
        self._require_open()
        offer_id, seq = await self._publish(prepared)
        return ShareResult(
            offer_id=offer_id, seq=seq, name=prepared.name, is_folder=prepared.is_folder,
            files=prepared.files, count=prepared.count, total=prepared.total, hash=prepared.hash,
            skipped=prepared.skipped, skipped_unlisted=prepared.skipped_unlisted,
            warnings=prepared.warnings, note=prepared.note,
        )

    def unshare(self, offer_id: int) -> None:
        """Withdraw one of our offers: everyone sees it end (`withdrawn`)."""
        self._require_open()
        if offer_id not in self._readers:
            raise TunnelError(f"offer {offer_id} is not one of your live offers: tunnel_status "
                              "lists them")
        self._unshare(offer_id)

    def _register(self, offer_id: int, scan: files_disk.Share) -> None:
        self._readers[offer_id] = (scan, files_disk.ShareReader(scan))

    def _on_read(self, request: ReadRequest, asker: object) -> None:
        mine = self._readers.get(request.offer_id)
        if mine is None or self._nursery is None:
            self._read_failed(asker, request.transfer, ABORT_UNREADABLE,
                              "that offer is no longer shared")
            return
        self._nursery.start_soon(self._read, mine[1], request, asker)

    async def _read(
        self, reader: files_disk.ShareReader, request: ReadRequest, asker: object
    ) -> None:
        key = (asker, request.transfer)
        ahead = self._ahead.pop(key, None)
        # A read-ahead shorter than the request is read again with what follows it: answering
        # with less would cut a short chunk (see tunnelproto's `read_size`).
        if ahead is not None and ahead[1] == request.offset and len(ahead[2]) >= request.size:
            _, offset, view = ahead
            data = bytes(view[: request.size])
            if len(view) > len(data):
                self._ahead[key] = (request.offer_id, offset + len(data), view[len(data) :])
            self._provide(asker, request.transfer, request.offset, data)
            return
        scan = self._readers[request.offer_id][0] if request.offer_id in self._readers else None
        size = request.size
        if scan is not None and 0 <= request.file < len(scan.entries):
            left = scan.entries[request.file].size - request.offset
            size = max(size, min(READ_AHEAD, left))
        try:
            whole = await trio.to_thread.run_sync(
                reader.read, request.file, request.offset, size
            )
        except files_disk.SourceChangedError as exc:
            self._read_failed(asker, request.transfer, ABORT_CHANGED,
                              f"{exc} (the sharer can share it again)")
            return
        except (files_disk.FileShareError, OSError) as exc:
            self._read_failed(asker, request.transfer, ABORT_UNREADABLE, str(exc))
            return
        finally:
            mine = self._readers.get(request.offer_id)
            if mine is None or mine[1] is not reader:
                # The offer ended while we read: the read may have reopened its file.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(reader.close)
        view = memoryview(whole)
        data = bytes(view[: request.size])
        if len(view) > len(data) and mine is not None and mine[1] is reader:
            self._ahead[key] = (request.offer_id, request.offset + len(data), view[len(data) :])
            while len(self._ahead) > MAX_READ_AHEADS:
                self._ahead.popitem(last=False)
        try:
            self._provide(asker, request.transfer, request.offset, data)
        except LocalProtocolError:  # a bug; the receiver's fetch then waits for its sharer
            log.exception("providing a chunk of offer %d failed", request.offer_id)

    # ---- offers ----------------------------------------------------------------------------

    def offers(self) -> list[FileOfferInfo]:
        """The live offers in the room, oldest first."""
        return list(self._known.values())

    # ---- receiving -------------------------------------------------------------------------

    async def plan_receive(
        self,
        offer_id: int,
        save_to: str | None = None,
        *,
        overwrite: bool = False,
        cwd: str | None = None,
    ) -> PreparedReceive:
        """Check where offer `offer_id` would be written (every target, in a worker thread);
        nothing is written. Files already there with the same size and SHA-256 are skipped."""
        self._require_open()
        if isinstance(offer_id, bool) or not isinstance(offer_id, int):
            raise TunnelError("offerId must be an offer's id, a whole number from tunnel_listen")
        info = self._live(offer_id)
        if info is None:
            raise TunnelError(self._gone_words(offer_id))
        if info.sharer == self._me():
            raise TunnelError(f"offer {offer_id} is your own: there is nothing to receive")
        files = await self._manifest(offer_id)
        entries = [files_disk.ManifestEntry(e.path, e.size, e.sha256) for e in files]
        if save_to is None:
            folder = _looks_like_folder(info.name, len(files), files)
            save_to = str(files_disk.default_save_dir(info.name, is_folder=folder))
        try:
            plan, indices, skipped = await trio.to_thread.run_sync(
                _plan, save_to, entries, overwrite, cwd
            )
        except files_disk.FileShareError as exc:
            raise TunnelError(f"offer {offer_id} cannot be received there: {exc}") from None
        return PreparedReceive(
            offer_id=offer_id,
            name=info.name,
            sharer=self._names(info.sharer),
            destination=str(plan.root),
            files=tuple(
                PlannedFile(p.entry.path, str(p.target), p.entry.size, p.entry.sha256.hex(),
                            p.replaces)
                for p in plan.files
            ),
            count=len(plan.files),
            total=plan.total,
            overwrite=overwrite,
            skipped=tuple(skipped),
            plan=(plan, indices),
        )

    async def receive(
        self,
        what: int | PreparedReceive,
        save_to: str | None = None,
        *,
        overwrite: bool = False,
        wait: float | None = None,
        cwd: str | None = None,
    ) -> ReceiveResult:
        """Receive an offer as planned (or plan it first). Waits until it is done, or for
        `wait` seconds: it then goes on in the background (`running`), and `receive` again
        waits for it. A receive that stopped but can go on (`resumable`) continues when called
        again, from what it already verified; one of an offer that is being received already
        waits for that one."""
        offer_id = what.offer_id if isinstance(what, PreparedReceive) else what
        job = self._receives.get(offer_id)
        if job is not None:
            if isinstance(what, PreparedReceive) and what.destination != job.prepared.destination:
                raise TunnelError(
                    f"offer {offer_id} is already being received into "
                    f"{job.prepared.destination}: receive it there, or cancel that receive first"
                )
        else:
            prepared = what if isinstance(what, PreparedReceive) else await self.plan_receive(
                what, save_to, overwrite=overwrite, cwd=cwd
            )
            job = self._receives.get(offer_id)  # another call may have started it meanwhile
            if job is None:
                plan: files_disk.ReceivePlan
                indices: tuple[int, ...]
                plan, indices = prepared.plan  # type: ignore[misc]
                job = _Receive(prepared, plan, indices)
                self._receives[offer_id] = job
        if not job.running and (not job.finished.is_set() or job.resumable):
            self._require_open()
            self._spawn(self._run_receive, job)  # raises if the tunnel is closing
            job.finished = trio.Event()
            job.running = True
            job.error = None
        with trio.move_on_after(math.inf if wait is None else max(0.0, wait)):
            await job.finished.wait()
        result = job.result()
        if not job.running and not job.resumable and self._receives.get(offer_id) is job:
            del self._receives[offer_id]  # its caller has seen how it ended
        return result

    async def cancel_receive(self, offer_id: int) -> bool:
        """Stop receiving `offer_id` and remove its partial files (finished files stay).
        False if no receive of it was running or waiting to continue."""
        job = self._receives.pop(offer_id, None)
        if job is None:
            return False
        job.error = "cancelled"
        job.fatal = True
        if job.scope is not None:
            job.scope.cancel()
        if job.running:
            await job.finished.wait()
        else:
            await trio.to_thread.run_sync(_abort, self._discard(job, "cancelled"))
        return True

    def receives(self) -> list[ReceiveProgress]:
        return [job.progress() for job in self._receives.values()]

    async def _run_receive(self, job: _Receive) -> None:
        try:
            with trio.CancelScope() as scope:
                job.scope = scope
                todo: deque[int] = deque(
                    i for i in range(len(job.plan.files))
                    if i not in job.written and i not in job.failed
                )
                job.paused.clear()
                async with trio.open_nursery() as nursery:
                    for _ in range(min(MAX_MEMBER_TRANSFERS, len(todo))):
                        nursery.start_soon(self._worker, job, todo, scope)
        except Exception as exc:  # a bug must not take the session down with it
            log.exception("receiving offer %d failed", job.offer_id)
            job.error = f"the receive failed unexpectedly ({type(exc).__name__})"
            job.fatal = True
        finally:
            job.scope = None
            if not job.complete and (job.fatal or not job.paused):
                # A cut that cannot be continued (the offer ended, a cancel, the tunnel
                # closed): no partial file stays.
                writers = self._discard(job, job.error or "the tunnel closed")
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_abort, writers)
            # Only now: a `receive` made while the partial files were being removed must
            # wait for this run's end, not start the job again beside it.
            job.running = False
            job.finished.set()

    async def _worker(self, job: _Receive, todo: deque[int], scope: trio.CancelScope) -> None:
        while todo:
            index = todo.popleft()
            try:
                await self._receive_file(job, index)
            except _Stop as stop:
                if stop.scope == "file":
                    writer = job.writers.pop(index, None)
                    if writer is not None:
                        with trio.CancelScope(shield=True):
                            await trio.to_thread.run_sync(writer.abort)
                    job.failed[index] = SkippedFile(job.plan.files[index].entry.path, str(stop))
                elif stop.scope == "pause":
                    job.paused[index] = str(stop)
                    job.error = str(stop)
                else:
                    job.error = str(stop)
                    job.fatal = True
                    scope.cancel()
                    return

    async def _receive_file(self, job: _Receive, index: int) -> None:
        entry = job.plan.files[index].entry
        file = job.indices[index]
        writer = job.writers.get(index)
        if writer is None:
            try:
                writer = await trio.to_thread.run_sync(job.plan.writer, index)
            except files_disk.FileShareError as exc:
                raise _Stop(str(exc), "file") from None
            job.writers[index] = writer
        busy = 0
        while writer.written < writer.size:
            async with self._slots:
                code, message = await self._fetch_into(job, file, writer)
            if code == "done":
                break
            if code == ABORT_BUSY and busy < BUSY_TRIES:
                busy += 1
                await trio.sleep(BUSY_RETRY)
                continue
            if code == ABORT_BUSY:
                raise _Stop(f"the room is busy with other transfers: {message}; receive again "
                            "later to continue", "pause")
            if code == ABORT_GONE:
                raise _Stop(self._gone_words(job.offer_id), "all")
            if code == ABORT_CLOSED:
                raise _Stop(f"the transfer stopped: {message}", "all")
            if code == "lost":
                raise _Stop(message, "pause")
            if code == ABORT_UNREADABLE:
                raise _Stop(f"the sharer could not read {entry.path!r}: {message}; receive again "
                            "to continue", "pause")
            if code == ABORT_CHANGED:
                raise _Stop(f"the file changed on the sharer's disk since it was offered: "
                            f"{message}", "file")
            raise _Stop(f"the sharer or host refused it ({code}): {message}", "file")
        try:
            target = await trio.to_thread.run_sync(writer.finish)
        except files_disk.DiskFullError as exc:
            job.writers.pop(index, None)
            raise _Stop(str(exc), "all") from None
        except files_disk.FileShareError as exc:
            job.writers.pop(index, None)
            raise _Stop(str(exc), "file") from None
        job.writers.pop(index, None)
        job.written[index] = ReceivedFile(entry.path, str(target), entry.size,
                                          entry.sha256.hex())

    async def _fetch_into(
        self, job: _Receive, file: int, writer: files_disk.FileWriter
    ) -> tuple[str, str]:
        """One fetch from `writer.written`, written as it comes; its outcome."""
        sink = _Sink()
        try:
            await self._fetch(job.offer_id, file, writer.written, sink)
        except LocalProtocolError as exc:
            return exc.code or ABORT_BAD_FETCH, str(exc)
        except TunnelError as exc:  # the tunnel closed, or the host cannot do files
            raise _Stop(str(exc), "all") from None
        # Write once a batch is queued: the credit outstanding is then still at least
        # window - batch, so the sharer keeps sending and the batch always fills (or the file
        # ends, which says so).
        batch_bytes = min(WRITE_BATCH_BYTES, max(1, self._credit() // 2))
        try:
            while True:
                if sink.chunks and (sink.queued >= batch_bytes or sink.outcome is not None):
                    batch = sink.take(WRITE_BATCH_BYTES)
                    try:
                        n = await trio.to_thread.run_sync(_write_batch, writer, batch)
                    except files_disk.DiskFullError as exc:
                        raise _Stop(str(exc), "all") from None
                    except files_disk.FileShareError as exc:
                        raise _Stop(str(exc), "file") from None
                    if sink.outcome is None:
                        self._grant(sink.tid, n)
                    continue
                if sink.outcome is not None:
                    return sink.outcome
                await sink.wait()
        finally:
            job.delivered += sink.delivered
            self._sinks.pop(sink.tid, None)
            if sink.outcome is None:
                self._cancel(sink.tid)  # we stop early (a cancel, a full disk): tell the room

    def _discard(self, job: _Receive, why: str) -> list[files_disk.FileWriter]:
        """The receive cannot go on: mark it so and hand back its unfinished writers, whose
        partial files the caller removes (`_abort`, in a worker thread: it unlinks)."""
        writers = list(job.writers.values())
        job.writers.clear()
        for index in job.paused:
            if index not in job.failed:
                job.failed[index] = SkippedFile(job.plan.files[index].entry.path, why)
        job.paused.clear()
        job.fatal = True
        if job.error is None:
            job.error = why
        return writers

    def _fresh_join(self) -> None:
        """We came back as a new member: the room forgot our fetches (they end, resumable)."""
        for sink in list(self._sinks.values()):
            sink.end("lost", "the connection was re-established as a new member; receive "
                             "again to continue")

    def _gone_words(self, offer_id: int) -> str:
        reason = self._ended.get(offer_id)
        if reason is not None:
            return f"offer {offer_id} has ended ({_end_words(reason)}): it can no longer be received"
        return (f"offer {offer_id} is not live (it ended, or never was): tunnel_status lists the "
                "live offers")


def _abort(writers: list[files_disk.FileWriter]) -> None:
    """Remove the partial files of these writers (blocking)."""
    for writer in writers:
        writer.abort()


def _entries(scan: files_disk.Share) -> tuple[FileEntry, ...]:
    return tuple(FileEntry(e.path, e.size, e.sha256) for e in scan.entries)


def _same_file(path: str, size: int, sha256: bytes) -> bool:
    """Whether `path` is a regular file (not a link) with this size and SHA-256."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(files_disk.HASH_CHUNK):
                digest.update(chunk)
        return digest.digest() == sha256
    except OSError:
        return False


def _plan(
    save_to: str, entries: list[files_disk.ManifestEntry], overwrite: bool, cwd: str | None
) -> tuple[files_disk.ReceivePlan, tuple[int, ...], list[SkippedFile]]:
    """In a worker thread: the plan, leaving out files already at their target (same size and
    SHA-256), with each planned file's index in the manifest."""
    first = files_disk.plan_receive(save_to, entries, overwrite=True, cwd=cwd)
    keep: list[int] = []
    skipped: list[SkippedFile] = []
    for i, planned in enumerate(first.files):
        if planned.replaces and _same_file(str(planned.target), planned.entry.size,
                                           planned.entry.sha256):
            skipped.append(SkippedFile(planned.entry.path, "already there (same SHA-256)"))
        else:
            keep.append(i)
    plan = files_disk.plan_receive(save_to, [entries[i] for i in keep], overwrite=overwrite,
                                   cwd=cwd)
    return plan, tuple(keep), skipped


# ---- the two roles ---------------------------------------------------------------------------


class HostFiles(SessionFiles):
    """The host's side: the room is in this process; calls go through `relay.call`."""

    def __init__(self, session: HostSession) -> None:
        super().__init__()
        self._session = session

    def on_room_events(self, events: list[TunnelEvent]) -> None:
        for event in events:
            self.on_event(event)

    def _names(self, member_id: int) -> MemberInfo:
        info = self._session._names.get(member_id)
        assert info is not None
        return info

    def _me(self) -> int:
        return self._session.room.host_id

    def _require_open(self) -> None:
        self._session._require_open()

    async def _publish(self, prepared: PreparedShare) -> tuple[int, int]:
        scan: files_disk.Share = prepared.scan  # type: ignore[assignment]
        room = self._session.room
        try:
            info = self._session.relay.call(
                lambda now: room.files.share(prepared.name, _entries(scan), now,
                                             note=prepared.note)
            )
        except LocalProtocolError as exc:
            raise TunnelError(str(exc)) from None
        assert isinstance(info, OfferInfo)
        self._register(info.id, scan)
        return info.id, info.seq

    def _unshare(self, offer_id: int) -> None:
        room = self._session.room
        self._session.relay.call(lambda now: room.files.unshare(offer_id, now))

    def _live(self, offer_id: int) -> OfferInfo | None:
        return self._session.room.files.offer(offer_id)

    async def _manifest(self, offer_id: int) -> tuple[FileEntry, ...]:
        info = self._session.room.files.offer(offer_id)
        if info is None:
            raise TunnelError(self._gone_words(offer_id))
        return info.files

    async def _fetch(self, offer_id: int, file: int, at: int, sink: _Sink) -> None:
        self._session._require_open()
        room = self._session.room

        def start(now: float) -> None:
            # Bound before the relay dispatches: an event for it may come in that dispatch.
            sink.tid = room.files.fetch(offer_id, file, now, at=at, credit=self._credit())
            self._sinks[sink.tid] = sink

        self._session.relay.call(start)

    def _window(self) -> int:
        return self._session.room.config.file_window

    def _grant(self, transfer: int, n: int) -> None:
        room = self._session.room
        if not room.closed:
            self._session.relay.call(lambda now: room.files.grant(transfer, n))

    def _cancel(self, transfer: int) -> None:
        room = self._session.room
        if not room.closed:
            self._session.relay.call(lambda now: room.files.cancel(transfer))

    def _provide(self, asker: Any, transfer: int, offset: int, data: bytes) -> None:
        room = self._session.room
        if not room.closed:
            self._session.relay.call(lambda now: room.files.provide_chunk(transfer, offset, data))

    def _read_failed(self, asker: Any, transfer: int, code: str, message: str) -> None:
        room = self._session.room
        if not room.closed:
            self._session.relay.call(lambda now: room.files.read_failed(transfer, code, message))


@dataclass(eq=False)
class _PendingShare:
    prepared: PreparedShare
    result: ShareAccepted | ShareRejected | None = None
    done: trio.Event = field(default_factory=trio.Event)


class MemberFiles(SessionFiles):
    """A member's side: calls go to the current `MemberConnection` (`session.guest.conn`)."""

    def __init__(self, session: MemberSession) -> None:
        super().__init__()
        self._session = session
        self._shares: dict[int, _PendingShare] = {}
        self._lists: dict[int, tuple[trio.Event, list[FileList | FileListFailed]]] = {}

    def on_event(self, event: TunnelEvent, asker: object = None) -> TranscriptMessage | None:
        if isinstance(event, ShareAccepted):
            pending = self._shares.pop(event.ref, None)
            if pending is not None:
                self._register(event.offer_id, pending.prepared.scan)  # type: ignore[arg-type]
                pending.result = event
                pending.done.set()
            return None
        if isinstance(event, ShareRejected):
            pending = self._shares.pop(event.ref, None)
            if pending is not None:
                pending.result = event
                pending.done.set()
            return None
        if isinstance(event, (FileList, FileListFailed)):
            waiting = self._lists.get(event.offer_id)
            if waiting is not None:
                waiting[1].append(event)
                waiting[0].set()
            return None
        return super().on_event(event, asker)

    def _names(self, member_id: int) -> MemberInfo:
        info = self._session._names.get(member_id)
        assert info is not None
        return info

    def _me(self) -> int:
        return self._session.self_member.id

    def _require_open(self) -> None:
        self._session._require_open()

    async def _conn(self, deadline: float = math.inf) -> MemberConnection:
        conn = await self._session._open_connection(deadline)
        if conn is None:
            raise TunnelError(
                "the connection to the host is down" + self._session._retrying()
                + ": try again once tunnel_status shows connected"
            )
        if not conn.files.enabled:
            raise TunnelError("the host's tunnel-mcp does not support files (it has no files/1): "
                              "ask the host to update it")
        return conn

    async def _publish(self, prepared: PreparedShare) -> tuple[int, int]:
        scan: files_disk.Share = prepared.scan  # type: ignore[assignment]
        deadline = trio.current_time() + SHARE_TIMEOUT
        while True:
            conn = await self._conn(deadline)
            try:
                ref = conn.files.share(prepared.name, _entries(scan), note=prepared.note)
            except LocalProtocolError as exc:
                raise TunnelError(str(exc)) from None
            pending = self._shares[ref] = _PendingShare(prepared)
            self._session.guest.flush()
            with trio.move_on_at(deadline):
                while pending.result is None and not self._session.closed:
                    await pending.done.wait()
            result = pending.result
            if result is None:
                self._session._require_open()
                # Still pending in the connection: it is re-sent after every resume and, once
                # stamped, served (the ShareAccepted handler registers it).
                raise TunnelError(
                    "the host has not confirmed the share yet (the connection may be down): it "
                    "is queued and offered once the connection is back; tunnel_status lists "
                    "your live offers. Do not share it again"
                )
            if isinstance(result, ShareAccepted):
                return result.offer_id, result.seq
            if result.code == "rate-limited" and result.retry_ms is not None:
                retry_at = trio.current_time() + result.retry_ms / 1000
                if retry_at <= deadline:
                    await trio.sleep_until(retry_at)
                    continue
            raise TunnelError(f"the host did not accept the share: {result.message}")

    def _unshare(self, offer_id: int) -> None:
        conn = self._session.guest.conn
        if conn is None or conn.state.value != "open":
            raise TunnelError("not connected to the host right now: withdraw it once "
                              "tunnel_status shows connected")
        try:
            conn.files.unshare(offer_id)
        except LocalProtocolError as exc:
            raise TunnelError(str(exc)) from None
        self._session.guest.flush()

    def _live(self, offer_id: int) -> OfferInfo | None:
        conn = self._session.guest.conn
        return conn.files.offer(offer_id) if conn is not None else None

    async def _manifest(self, offer_id: int) -> tuple[FileEntry, ...]:
        conn = await self._conn(trio.current_time() + SHARE_TIMEOUT)
        info = conn.files.offer(offer_id)
        if info is None:
            raise TunnelError(self._gone_words(offer_id))
        if len(info.files) >= info.count:
            return info.files
        event = trio.Event()
        got: list[FileList | FileListFailed] = []
        self._lists[offer_id] = (event, got)
        try:
            conn.files.request_files(offer_id)
            self._session.guest.flush()
            with trio.move_on_after(SHARE_TIMEOUT):
                await event.wait()
        except LocalProtocolError as exc:
            raise TunnelError(str(exc)) from None
        finally:
            self._lists.pop(offer_id, None)
        if not got:
            raise TunnelError(f"the host did not list the files of offer {offer_id} in time; "
                              "try again")
        if isinstance(got[0], FileListFailed):
            raise TunnelError(self._gone_words(offer_id))
        return got[0].files

    async def _fetch(self, offer_id: int, file: int, at: int, sink: _Sink) -> None:
        conn = await self._conn()
        sink.tid = conn.files.fetch(offer_id, file, at=at, credit=self._credit())
        self._sinks[sink.tid] = sink  # events are drained by the reader task, after this
        self._session.guest.flush()

    def _window(self) -> int:
        conn = self._session.guest.conn
        return conn.files.window if conn is not None else 1

    def _grant(self, transfer: int, n: int) -> None:
        # The current connection object, open or not: credit granted before a resume's
        # welcome goes into the fetch it sends (and Guest takes the state of the last object
        # along when it redials).
        conn = self._session.guest.conn
        if conn is not None:
            conn.files.grant(transfer, n)
            self._session.guest.flush()

    def _cancel(self, transfer: int) -> None:
        conn = self._session.guest.conn
        if conn is not None:
            conn.files.cancel(transfer)
            self._session.guest.flush()

    def _provide(self, asker: Any, transfer: int, offset: int, data: bytes) -> None:
        if isinstance(asker, MemberConnection) and asker.files.provide_chunk(
            transfer, offset, data
        ) and asker is self._session.guest.conn:
            self._session.guest.pump()  # the next ReadRequest is already waiting

    def _read_failed(self, asker: Any, transfer: int, code: str, message: str) -> None:
        if isinstance(asker, MemberConnection):
            asker.files.read_failed(transfer, code, message)
            if asker is self._session.guest.conn:
                self._session.guest.pump()
