"""Files, the member's side (spec "Files"): one `MemberFiles` per `MemberConnection`, as
`conn.files`. It is on when both `hello.caps` and `welcome.caps` carry "files/1".

As a receiver: `fetch()` a file of a live offer; each `ChunkReceived` event is the next bytes
in order; the driver writes them and `grant()`s that much credit back; `FetchComplete` or
`FetchAborted` ends it. A fetch survives a dropped connection: it is in `ResumeState`, and the
resumed connection fetches again from the last byte delivered (same transfer id), so nothing
delivered is sent again.

As a sharer: `share()` a manifest (the driver scanned the files); the host then `pull`s, and each
`ReadRequest` event asks the driver for bytes, which it hands back with `provide_chunk()`. Chunks
are sealed only in `pull_bulk()`, which the driver calls when its outbound queue is low (they
then come out of `data_to_send()`), so chat sealed meanwhile is sent first.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _frames as f
from ._channel import SEAL_OVERHEAD
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    ChunkReceived,
    FetchAborted,
    FetchComplete,
    FileList,
    FileListFailed,
    FileOffer,
    FileOfferEnded,
    OfferInfo,
    ReadRequest,
    ShareAccepted,
    ShareRejected,
    TransferInfo,
)
from ._files import (
    ABORT_BAD_FETCH,
    ABORT_BUSY,
    ABORT_CLOSED,
    ABORT_GONE,
    ABORT_UNREADABLE,
    DEFAULT_FILE_WINDOW,
    ERR_BAD_CHUNK,
    ERR_BAD_TRANSFER,
    ERR_OFFER_LIMIT,
    ERR_OVER_CREDIT,
    FILES_CAP,
    MAX_CHUNK,
    MAX_FILE_WINDOW,
    MAX_MEMBER_OFFERS,
    MAX_MEMBER_TRANSFERS,
    MAX_OFFER_FILES,
    MAX_ROOM_OFFERS,
    MAX_ROOM_TRANSFERS,
    SHARER_ABORT_CODES,
    ManifestCheck,
    check_head,
    read_size,
    share_frames,
)
from ._names import one_line
from ._state import MemberState

if TYPE_CHECKING:
    from ._member import MemberConnection

#: Live offers a member remembers (the oldest are forgotten past it, so a host cannot make a
#: member hold more); a room has at most MAX_ROOM_OFFERS.
MAX_KNOWN_OFFERS = 2 * MAX_ROOM_OFFERS


@dataclass(slots=True, eq=False)
class _Fetch:
    x: int
    offer: int
    file: int
    size: int
    received: int  # the next byte to come
    limit: int  # granted up to here (exclusive)


@dataclass(slots=True, eq=False)
class _Pull:
    x: int  # the host's id
    offer: int
    file: int
    size: int
    read: int  # the next byte to ask the driver for
    sent: int  # the next byte to seal
    limit: int
    reading: int = 0  # bytes of the outstanding ReadRequest
    buffer: deque[bytes] = field(default_factory=deque, repr=False)
    head_pos: int = 0


@dataclass(frozen=True, slots=True)
class FilesResume:
    """What of the files state survives a dropped connection (inside ResumeState)."""

    next_x: int
    fetches: tuple[tuple[int, int, int, int, int, int], ...]  # x, offer, file, size, got, limit
    pending: tuple[tuple[int, tuple[f.Share | f.Manifest, ...], tuple[int, ...]], ...]
    mine: tuple[tuple[int, tuple[int, ...]], ...]  # my live offers: id, file sizes
    offers: tuple[OfferInfo, ...]
    listings: tuple[tuple[int, int, tuple[f.FileEntry, ...]], ...]  # offer, count, files so far


class MemberFiles:
    def __init__(self, conn: MemberConnection, resume: FilesResume | None) -> None:
        self._mc = conn
        #: "files/1" is in force on this connection (known from the welcome on).
        self.enabled = False
        self.window = DEFAULT_FILE_WINDOW
        self._offers: OrderedDict[int, OfferInfo] = OrderedDict()
        self._listings: dict[int, tuple[int, list[f.FileEntry]]] = {}
        self._mine: dict[int, tuple[int, ...]] = {}
        self._pending: dict[int, tuple[tuple[f.Share | f.Manifest, ...], tuple[int, ...]]] = {}
        self._fetches: dict[int, _Fetch] = {}
        self._next_x = 1
        self._pulls: dict[int, _Pull] = {}
        self._bulk: deque[int] = deque()
        #: Credit granted since the last `data_to_send()`: one `credit` frame per fetch and
        #: drain, however many grants (like acks, section 12).
        self._credit: dict[int, int] = {}
        if resume is not None:
            self._next_x = resume.next_x
            self._fetches = {row[0]: _Fetch(*row) for row in resume.fetches}
            self._pending = {ref: (frames, sizes) for ref, frames, sizes in resume.pending}
            self._mine = dict(resume.mine)
            self._offers = OrderedDict((o.id, o) for o in resume.offers)
            self._listings = {o: (n, list(files)) for o, n, files in resume.listings}

    # ============================================================== the driver's API

    def share(
        self, name: str, files: Sequence[f.FileEntry], *, note: str | None = None
    ) -> int:
        """Offer `files` (the driver's manifest, paths relative, '/'-separated) under `name`.
        Returns the ref: ShareAccepted(ref, offer_id) or ShareRejected(ref) follows."""
        self._require()
        entries = tuple(files)
        total = sum(e.size for e in entries)
        check_head(name, note, len(entries), total, LocalProtocolError)
        check = ManifestCheck(len(entries), total, LocalProtocolError)
        check.add(entries)
        check.finish()
        if len(self._pending) + len(self._mine) >= MAX_MEMBER_OFFERS:
            raise LocalProtocolError(
                f"too many live offers ({MAX_MEMBER_OFFERS} per member): withdraw one first",
                ERR_OFFER_LIMIT)
        ref = self._mc._take_ref()
        frames = tuple(share_frames(ref, name, note, entries))
        self._pending[ref] = (frames, tuple(e.size for e in entries))
        for frame in frames:
            self._mc._queue(frame)
        return ref

    def unshare(self, offer_id: int) -> None:
        """Withdraw my offer: every member sees it end (`withdrawn`), its transfers abort."""
        self._require()
        if offer_id not in self._mine:
            raise LocalProtocolError(f"offer {offer_id} is not one of my live offers", "not-yours")
        self._mc._queue(f.Unshare(offer=offer_id))

    def offers(self) -> list[OfferInfo]:
        """The live offers this connection knows, oldest first (first manifest page each)."""
        return list(self._offers.values())

    def offer(self, offer_id: int) -> OfferInfo | None:
        return self._offers.get(offer_id)

    def request_files(self, offer_id: int) -> None:
        """Ask for the whole manifest of an offer: FileList (or FileListFailed) follows."""
        self._require()
        info = self._offers.get(offer_id)
        if info is None:
            raise LocalProtocolError(f"no live offer {offer_id} is known here", ABORT_GONE)
        if len(info.files) >= info.count:
            self._mc._events.append(FileList(offer_id, info.files))
        elif offer_id not in self._listings:
            self._listings[offer_id] = (info.count, list(info.files))
            self._mc._queue(f.ListFiles(offer=offer_id, at=len(info.files)))

    def fetch(
        self, offer_id: int, file: int, *, at: int = 0, credit: int | None = None
    ) -> int:
        """Receive file `file` (its index in the manifest) of a live offer from byte `at` (0, or
        where an earlier, interrupted fetch's writer stopped). Returns the transfer id of the
        ChunkReceived / FetchComplete / FetchAborted events. `credit` (default: the window)
        is how many bytes may come before the next `grant()`."""
        self._require()
        info = self._offers.get(offer_id)
        if info is None:
            raise LocalProtocolError(f"no live offer {offer_id} is known here", ABORT_GONE)
        if info.sharer == self._mc.member_id:
            raise LocalProtocolError("this is my own offer", ABORT_BAD_FETCH)
        if not 0 <= file < info.count:
            raise LocalProtocolError(f"offer {offer_id} has no file {file}", ABORT_BAD_FETCH)
        if file >= len(info.files):
            raise LocalProtocolError("list the offer's files first (request_files)", "unlisted")
        size = info.files[file].size
        if not 0 <= at <= size:
            raise LocalProtocolError(f"file {file} has {size} bytes", ABORT_BAD_FETCH)
        credit = self.window if credit is None else credit
        if not 0 <= credit <= self.window:
            raise LocalProtocolError(f"credit must be 0..{self.window}", ERR_OVER_CREDIT)
        if len(self._fetches) >= MAX_MEMBER_TRANSFERS:
            raise LocalProtocolError(
                f"at most {MAX_MEMBER_TRANSFERS} fetches at once: wait for one to end", ABORT_BUSY)
        x = self._next_x
        self._next_x += 1
        if at == size:
            self._mc._events.append(FetchComplete(x))
            return x
        self._fetches[x] = _Fetch(x, offer_id, file, size, at, at + credit)
        self._mc._queue(f.Fetch(x=x, offer=offer_id, file=file, at=at, credit=credit))
        return x

    def grant(self, transfer: int, n: int) -> None:
        """`n` more bytes of fetch `transfer` may come (the driver wrote that many). Call it on
        the current connection: while it is not open yet the credit waits for the resume."""
        if n < 0:
            raise LocalProtocolError("credit cannot be negative", ERR_OVER_CREDIT)
        fx = self._fetches.get(transfer)
        if fx is None or n == 0:
            return  # ended meanwhile: its event says how
        if fx.limit + n - fx.received > self.window:
            raise LocalProtocolError(f"credit over the window ({self.window} bytes)",
                                     ERR_OVER_CREDIT)
        fx.limit += n
        self._credit[transfer] = self._credit.get(transfer, 0) + n

    def cancel(self, transfer: int) -> None:
        """Stop fetch `transfer` (no event follows; chunks already on the way are dropped)."""
        self._credit.pop(transfer, None)
        if self._fetches.pop(transfer, None) is not None and self._open:
            self._mc._queue(f.Cancel(x=transfer))

    def provide_chunk(self, transfer: int, offset: int, data: bytes) -> bool:
        """The bytes a ReadRequest asked for (from `offset`, at most its `size`). False: the
        pull ended meanwhile (cancelled, the connection dropped); drop the data."""
        p = self._pulls.get(transfer)
        if p is None or not self._open:
            return False
        if not p.reading:
            raise LocalProtocolError(f"transfer {transfer} has no read outstanding", "no-read")
        if offset != p.read or not 0 < len(data) <= p.reading:
            raise LocalProtocolError(
                f"the read of transfer {transfer} was for {p.reading} bytes at {p.read}",
                "bad-read")
        p.reading = 0
        p.read += len(data)
        p.buffer.append(bytes(data))
        if transfer not in self._bulk:
            self._bulk.append(transfer)
        self._want_read(p)
        return True

    def read_failed(self, transfer: int, code: str, message: str) -> None:
        """The driver could not read for `transfer`: `changed` or `unreadable`."""
        p = self._pulls.pop(transfer, None)
        if p is not None and self._open:
            code = code if code in SHARER_ABORT_CODES else ABORT_UNREADABLE
            self._mc._queue(f.Abort(x=transfer, code=code, msg=one_line(message, 200)))

    def transfers(self) -> list[TransferInfo]:
        """My fetches (`at`: bytes delivered) and what is pulled from me (`at`: bytes sealed)."""
        me = self._mc.member_id or 0
        out = []
        for fx in self._fetches.values():
            sharer = self._offers[fx.offer].sharer if fx.offer in self._offers else 0
            out.append(TransferInfo(fx.x, fx.offer, fx.file, fx.size, fx.received, sharer, me))
        for p in self._pulls.values():
            out.append(TransferInfo(p.x, p.offer, p.file, p.size, p.sent, me, 0))
        return out

    def has_bulk(self) -> bool:
        return bool(self._bulk) and self._open

    def pull_bulk(self, max_bytes: int) -> int:
        """Seal chunk frames, pulls in turn, until about `max_bytes` (at least one when any
        waits); they join `data_to_send()` behind everything sealed before. Returns the bytes
        sealed."""
        channel = self._mc._channel
        if channel is None or not self._open:
            return 0
        size = 0
        while self._bulk and size < max_bytes:
            x = self._bulk.popleft()
            p = self._pulls.get(x)
            if p is None or not p.buffer:
                continue
            data = _take(p)
            plaintext = f.encode_chunk(x, p.sent, data)
            self._mc._emit(plaintext)
            p.sent += len(data)
            size += len(plaintext) + SEAL_OVERHEAD
            if p.buffer:
                self._bulk.append(x)
            elif p.sent == p.size:
                del self._pulls[x]  # done: the host ends it when the last byte reaches it
        return size

    # ============================================================== hooks called by the member

    @property
    def _open(self) -> bool:
        return self.enabled and self._mc.state is MemberState.OPEN

    def flush_credit(self) -> None:
        """Queue the credit granted since the last call (from `data_to_send()`). Credit granted
        while the connection is not open is carried by the fetch its resume sends."""
        if not self._credit:
            return
        credit, self._credit = self._credit, {}
        if self._open:
            for x, n in credit.items():
                if x in self._fetches:
                    self._mc._queue(f.Credit(x=x, n=n))

    def _require(self) -> None:
        if self._mc.state is not MemberState.OPEN:
            raise LocalProtocolError("not connected to the room", "not-open")
        if not self.enabled:
            raise LocalProtocolError("the host does not support files (no files/1)", "no-files")

    def on_welcome(self, welcome: f.Welcome) -> None:
        self.enabled = FILES_CAP in (welcome.caps or ()) and FILES_CAP in self._mc.caps
        window = welcome.limits.get("file_window", DEFAULT_FILE_WINDOW)
        self.window = max(1, min(window, MAX_FILE_WINDOW))
        if self.enabled:
            return
        # Files state from an earlier connection, and a host that no longer has files/1.
        for x in self._fetches:
            self._mc._events.append(FetchAborted(x, ABORT_CLOSED, "the host stopped files"))
        for ref in self._pending:
            self._mc._events.append(ShareRejected(ref, "no-files", "the host stopped files"))
        self._fetches.clear()
        self._pending.clear()
        self._listings.clear()

    def resend(self) -> list[tuple[int, tuple[f.Frame, ...]]]:
        """Shares not yet stamped, by ref: re-sent after a resume, in ref order with the says
        (the room drops what it already handled, as for says)."""
        return [(ref, frames) for ref, (frames, _) in self._pending.items()]

    def after_welcome(self) -> None:
        """Resume: fetch again from the last byte delivered, list again."""
        self._credit.clear()  # in each fetch's credit
        for fx in sorted(self._fetches.values(), key=lambda fx: fx.x):
            self._mc._queue(f.Fetch(x=fx.x, offer=fx.offer, file=fx.file, at=fx.received,
                                    credit=fx.limit - fx.received))
        for offer_id, (_, files) in self._listings.items():
            self._mc._queue(f.ListFiles(offer=offer_id, at=len(files)))

    def snapshot(self) -> FilesResume:
        return FilesResume(
            next_x=self._next_x,
            fetches=tuple(
                (fx.x, fx.offer, fx.file, fx.size, fx.received, fx.limit)
                for fx in self._fetches.values()
            ),
            pending=tuple((ref, frames, sizes) for ref, (frames, sizes) in self._pending.items()),
            mine=tuple(self._mine.items()),
            offers=tuple(self._offers.values()),
            listings=tuple((o, n, tuple(files)) for o, (n, files) in self._listings.items()),
        )

    def on_error(self, error: f.Error) -> bool:
        """An `error` with a ref: True if it refuses one of my shares."""
        if error.ref is None or error.ref not in self._pending:
            return False
        del self._pending[error.ref]
        self._mc._events.append(
            ShareRejected(error.ref, one_line(error.code, 32), one_line(error.msg, 500),
                          error.retry)
        )
        return True

    def on_frame(self, frame: f.Frame) -> None:
        """A frame of MEMBER_ACCEPTS_FILES (an `offer` or `unoffer` has had its seq checked)."""
        if isinstance(frame, f.Chunk):
            self._on_chunk(frame)
        elif isinstance(frame, f.Credit):
            p = self._pulls.get(frame.x)
            if p is not None:
                if p.limit + frame.n - p.sent > self.window:
                    raise RemoteProtocolError("credit over the window", ERR_OVER_CREDIT)
                p.limit += frame.n
                self._want_read(p)
        elif isinstance(frame, f.Pull):
            self._on_pull(frame)
        elif isinstance(frame, f.Cancel):
            self._pulls.pop(frame.x, None)
        elif isinstance(frame, f.Abort):
            self._credit.pop(frame.x, None)
            if self._fetches.pop(frame.x, None) is not None:
                self._mc._events.append(
                    FetchAborted(frame.x, one_line(frame.code, 32), one_line(frame.msg, 200))
                )
        elif isinstance(frame, f.Offer):
            self._on_offer(frame)
        elif isinstance(frame, f.Unoffer):
            self._offers.pop(frame.id, None)
            self._mine.pop(frame.id, None)
            self._mc._events.append(
                FileOfferEnded(frame.seq, frame.ts, frame.id, frame.from_,
                               one_line(frame.reason, 32))
            )
        elif isinstance(frame, f.Listing):
            self._on_listing(frame)

    # ============================================================== internals

    def _on_offer(self, offer: f.Offer) -> None:
        if not len(offer.files) <= offer.count <= MAX_OFFER_FILES:
            raise RemoteProtocolError("an offer with a bad file count", "malformed")
        info = OfferInfo(offer.id, offer.from_, offer.name, offer.count, offer.total,
                         offer.files, offer.note, offer.seq, offer.ts)
        self._offers[offer.id] = info
        while len(self._offers) > MAX_KNOWN_OFFERS:
            self._offers.popitem(last=False)
        if offer.from_ == self._mc.member_id and offer.ref in self._pending:
            _, sizes = self._pending.pop(offer.ref)
            self._mine[offer.id] = sizes
            self._mc._events.append(ShareAccepted(offer.ref, offer.id, offer.seq))
        self._mc._events.append(FileOffer(info))

    def _on_listing(self, listing: f.Listing) -> None:
        wanted = self._listings.get(listing.offer)
        if wanted is None or listing.at != len(wanted[1]):
            raise RemoteProtocolError("a listing nobody asked for", "unexpected")
        count, files = wanted
        if not listing.files:
            del self._listings[listing.offer]
            self._mc._events.append(
                FileListFailed(listing.offer, "the offer ended before its files were listed")
            )
            return
        if len(files) + len(listing.files) > count:
            raise RemoteProtocolError("a listing longer than its offer", "malformed")
        files.extend(listing.files)
        if len(files) < count:
            self._mc._queue(f.ListFiles(offer=listing.offer, at=len(files)))
            return
        del self._listings[listing.offer]
        whole = tuple(files)
        info = self._offers.get(listing.offer)
        if info is not None:
            self._offers[listing.offer] = dataclasses.replace(info, files=whole)
        self._mc._events.append(FileList(listing.offer, whole))

    def _on_pull(self, pull: f.Pull) -> None:
        if pull.x in self._pulls:
            raise RemoteProtocolError("a pull with an id already in use", ERR_BAD_TRANSFER)
        if len(self._pulls) >= MAX_ROOM_TRANSFERS:
            raise RemoteProtocolError("more pulls than a room has transfers", ERR_BAD_TRANSFER)
        if pull.credit > self.window:
            raise RemoteProtocolError("credit over the window", ERR_OVER_CREDIT)
        sizes = self._mine.get(pull.offer)
        if sizes is None:
            self._mc._queue(f.Abort(x=pull.x, code=ABORT_GONE, msg="not a live offer of mine"))
            return
        if pull.file >= len(sizes) or pull.at > sizes[pull.file]:
            self._mc._queue(f.Abort(x=pull.x, code=ABORT_BAD_FETCH, msg="no such byte range"))
            return
        size = sizes[pull.file]
        if pull.at == size:
            return
        p = _Pull(pull.x, pull.offer, pull.file, size, pull.at, pull.at, pull.at + pull.credit)
        self._pulls[pull.x] = p
        self._want_read(p)

    def _want_read(self, p: _Pull) -> None:
        end = min(p.limit, p.size)
        if p.reading or p.read >= end:
            return
        p.reading = read_size(p.read, end)
        self._mc._events.append(ReadRequest(p.x, p.offer, p.file, p.read, p.reading))

    def _on_chunk(self, chunk: f.Chunk) -> None:
        fx = self._fetches.get(chunk.x)
        if fx is None:
            if 0 < chunk.x < self._next_x:
                return  # it crossed our cancel on the wire
            raise RemoteProtocolError("a chunk nobody asked for", ERR_BAD_CHUNK)
        n = len(chunk.data)
        if chunk.at != fx.received or not 0 < n <= MAX_CHUNK or chunk.at + n > fx.size:
            raise RemoteProtocolError("a chunk out of range", ERR_BAD_CHUNK)
        if chunk.at + n > fx.limit:
            raise RemoteProtocolError("a chunk beyond the credit granted", ERR_OVER_CREDIT)
        fx.received += n
        self._mc._events.append(ChunkReceived(chunk.x, chunk.at, chunk.data))
        if fx.received == fx.size:
            del self._fetches[chunk.x]
            self._mc._events.append(FetchComplete(chunk.x))


def _take(p: _Pull) -> bytes | memoryview:
    head = p.buffer[0]
    start = p.head_pos
    n = min(len(head) - start, MAX_CHUNK)
    if start == 0 and n == len(head):
        p.buffer.popleft()
        return head
    piece = memoryview(head)[start : start + n]
    p.head_pos += n
    if p.head_pos == len(head):
        p.buffer.popleft()
        p.head_pos = 0
    return piece
