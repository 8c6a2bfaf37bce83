"""Files (spec "Files"): what both ends share. The host's side is `_files_room.py`, the
member's `_files_member.py`; this module holds the caps, the checks of a manifest, the paging of
manifests into frames, and the state tables of offers and transfers.

How a driver uses files (all calls sans-IO; drain outputs after every call, as for chat):

Host (the relay, `room = Room(...)`; files are `room.files`, a `RoomFiles`):
- Every member connection that announced "files/1" has it; nothing to configure.
  `RoomConfig.offer_ttl` (1800 s) and `file_window` (1 MiB) are the knobs.
- Bulk lane: after each `data_to_send()` drain, for each `room.bulk_connections()` whose
  outbound queue is low (under a batch), call `room.pull_bulk(conn, batch)` and drain
  `data_to_send()` again right away. Never pull for a connection whose queue is not low: that
  is what keeps chat ahead of chunks.
- Events: drain `room.files.take_events()` after every room call. `ReadRequest(transfer,
  offer_id, file, offset, size)`: read that range of the host's own offer (in a thread), then
  `room.files.provide_chunk(transfer, offset, data)` (False: it ended, drop the data) or
  `room.files.read_failed(transfer, "changed" | "unreadable", message)`.
  `ChunkReceived(transfer, offset, data)`: the host's own fetch; write, then
  `room.files.grant(transfer, len(data))`. `FetchComplete(transfer)`, `FetchAborted(transfer,
  code, message)`: the host's fetch ended.
- Calls: `room.files.share(name, entries, now, note=)` -> OfferInfo; `unshare(offer_id, now)`;
  `offers()` / `offer(id)` (live, whole manifests); `fetch(offer_id, file, now, at=, credit=)`
  -> transfer id; `grant`; `cancel(transfer)`; `transfers()` -> [TransferInfo] for status.
  Offers and their ends are transcript entries (`TranscriptEntry.event` "file-offer" /
  "file-offer-ended", `.offer` an OfferInfo without its files, `.summary` the reason of an
  end; the first page is in `.frame`, the whole manifest in `offer(id)` while it lives).

Member (`conn = MemberConnection(link, name, now, caps=(FILES_CAP,))`; files are `conn.files`):
- `conn.files.enabled` once welcomed by a host with files/1. A resume is built from
  `resume_state()` as before, with the same caps: unfinished fetches (same transfer ids),
  unstamped shares and pending listings carry over by themselves.
- Bulk lane: when the outbound queue is low and `conn.has_bulk()`, `conn.pull_bulk(batch)`,
  then send `data_to_send()`.
- Events (from `next_event()`, in order with chat): `FileOffer(offer)` / `FileOfferEnded`
  (total order, `seq`); `ShareAccepted(ref, offer_id, seq)` / `ShareRejected(ref, code, ...)`;
  `FileList(offer_id, files)` / `FileListFailed`; `ReadRequest` -> `conn.files.provide_chunk`
  or `read_failed` on the same object that asked; `ChunkReceived` -> write, then
  `conn.files.grant(transfer, n)` on the current connection object; `FetchComplete`,
  `FetchAborted(transfer, code, message)`.
- Calls: `share(name, entries, note=)` -> ref; `unshare(offer_id)`; `offers()` / `offer(id)`;
  `request_files(offer_id)` (whole manifest, for offers over one page); `fetch(offer_id, file,
  at=, credit=)` -> transfer id; `grant`; `cancel`; `transfers()`.

What belongs here: sizes, counts, lengths, the shape of a path (relative, '/'-separated, no '.'
or '..'), the order of the states. What does not: disk I/O and the full rules for names on a
real file system (Windows device names, case clashes, Unicode look-alikes): those are the
driver's (`tunnel_trio.files_disk`), which applies them to every name it writes or reads.
"""

from __future__ import annotations

import enum

from . import _codec
from . import _frames as f
from ._channel import MAX_PLAINTEXT
from ._errors import LocalProtocolError, RemoteProtocolError
from ._state import FILES_CAP as FILES_CAP

# ---- caps (spec "Files", limits); each one has a clear error when hit ----------------------
#: Bytes in one offer, all its files together (4 GiB: the issue asks for at least 2).
MAX_OFFER_BYTES = 4 * 1024**3
#: Files in one offer.
MAX_OFFER_FILES = 1000
#: Components in one relative path ("a/b/c" is 3).
MAX_PATH_DEPTH = 32
#: UTF-8 bytes in one relative path.
MAX_PATH_BYTES = 1024
#: UTF-8 bytes in one path component (what Linux, macOS and NTFS all accept).
MAX_NAME_BYTES = 255
#: UTF-8 bytes in an offer's name (a file's or a folder's name, for display).
MAX_OFFER_NAME_BYTES = 255
#: Characters in an offer's note.
MAX_NOTE_CHARS = 1000
#: Encoded bytes of one offer's manifest (its file entries): bounds what the host keeps per
#: offer, whatever the path lengths. 1000 files with 200-byte paths fit.
MAX_MANIFEST_BYTES = 256 * 1024
#: Live offers of one member (the host included).
MAX_MEMBER_OFFERS = 8
#: Live offers in one room.
MAX_ROOM_OFFERS = 32
#: Transfers one member receives at once.
MAX_MEMBER_TRANSFERS = 4
#: Transfers in one room at once (the host holds at most `file_window` bytes for each).
MAX_ROOM_TRANSFERS = 32
#: Bytes a receiver may have outstanding (granted and not yet received) on one transfer, by
#: default (`RoomConfig.file_window`, sent as `welcome.limits.file_window`).
DEFAULT_FILE_WINDOW = 1024 * 1024
#: The largest window a member accepts from a host, so a hostile host cannot make it buffer more.
MAX_FILE_WINDOW = 16 * 1024 * 1024
#: The largest chunk payload.
MAX_CHUNK = f.MAX_CHUNK
#: Bytes one read request asks for (less near the end of the credit or the file): whole
#: chunks, so that every chunk a read makes is full (see `read_size`).
READ_SIZE = 4 * MAX_CHUNK

# ---- codes --------------------------------------------------------------------------------
#: Why an offer ended (`unoffer.reason`, the summary of a `file-offer-ended` event).
END_WITHDRAWN = "withdrawn"
END_LEFT = "left"
END_REMOVED = "removed"
END_EXPIRED = "expired"
END_REASONS = (END_WITHDRAWN, END_LEFT, END_REMOVED, END_EXPIRED)

#: Why a transfer ended early (`abort.code`).
ABORT_GONE = "gone"
ABORT_BAD_FETCH = "bad-fetch"
ABORT_BUSY = "busy"
ABORT_CHANGED = "changed"
ABORT_UNREADABLE = "unreadable"
#: Local only (never on the wire): the room closed, or the host's own fetch ended with it.
ABORT_CLOSED = "closed"
#: The codes a sharer may send in `abort`; the host passes any other as `unreadable`.
SHARER_ABORT_CODES = frozenset({ABORT_CHANGED, ABORT_UNREADABLE})
ABORT_CODES = (ABORT_GONE, ABORT_BAD_FETCH, ABORT_BUSY, ABORT_CHANGED, ABORT_UNREADABLE)

#: `error` codes: a refused share (with its ref) ...
ERR_TOO_LARGE = "offer-too-large"
ERR_BAD_PATH = "bad-path"
ERR_BAD_OFFER = "bad-offer"
ERR_OFFER_LIMIT = "offer-limit"
#: ... and fatal transfer errors (no ref, close 4001).
ERR_BAD_CHUNK = "bad-chunk"
ERR_OVER_CREDIT = "over-credit"
ERR_BAD_TRANSFER = "bad-transfer"

#: Event kinds a member without files/1 gets in place of `offer` and `unoffer`.
KIND_OFFER = "file-offer"
KIND_OFFER_ENDED = "file-offer-ended"

# ---- state tables -------------------------------------------------------------------------


class OfferState(enum.Enum):
    LIVE = "live"  # stamped; fetches are served
    ENDED = "ended"  # withdrawn, sharer left or removed, TTL passed: the `unoffer` is out


class TransferState(enum.Enum):
    """A transfer at the host (and a fetch at a member, which only sees RELAYING and ENDED)."""

    RELAYING = "relaying"  # the sharer is reachable: it is pulled (or the host reads)
    PARKED = "parked"  # the sharer's seat is disconnected: held, pulled again at its resume
    ENDED = "ended"  # done, cancelled, aborted, or its receiver's connection ended


#: The only moves a transfer makes (Rule 1 of `_state.py`, for transfers): the code asserts it.
TRANSFER_MOVES: dict[TransferState, frozenset[TransferState]] = {
    TransferState.RELAYING: frozenset({TransferState.PARKED, TransferState.ENDED}),
    TransferState.PARKED: frozenset({TransferState.RELAYING, TransferState.ENDED}),
    TransferState.ENDED: frozenset(),
}

OFFER_MOVES: dict[OfferState, frozenset[OfferState]] = {
    OfferState.LIVE: frozenset({OfferState.ENDED}),
    OfferState.ENDED: frozenset(),
}


def read_size(at: int, end: int) -> int:
    """What the next read request of a transfer asks for, from byte `at` up to `end` (the
    credit's or the file's end, whichever comes first): READ_SIZE, or whole chunks when the
    credit allows more than one, or the rest.

    Each read becomes its own chunks, so a read that is not whole chunks ends in a short one,
    and a chunk costs every hop (sharer, host, receiver) the same per-message work whatever its
    size: 256 KiB reads made one chunk in five 512 bytes long. Rounding down never waits: what
    is left over is read next, with whatever credit came meanwhile."""
    n = min(READ_SIZE, end - at)
    return n - n % MAX_CHUNK if n > MAX_CHUNK else n


def move(state: TransferState, to: TransferState) -> TransferState:
    assert to in TRANSFER_MOVES[state], f"transfer cannot go from {state} to {to}"
    return to


# ---- checks -------------------------------------------------------------------------------

_Err = type[LocalProtocolError] | type[RemoteProtocolError]
_FORBIDDEN = frozenset("\\:") | frozenset(chr(c) for c in range(32)) | {"\x7f"}


def _utf8_len(text: str) -> int | None:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def path_problem(path: str) -> str | None:
    """Why `path` cannot be a manifest path, or None. Only its shape: relative, '/'-separated,
    no empty, '.' or '..' component, no backslash, colon (drive letters) or control character,
    and the depth and length caps. The receiver's driver checks much more before writing."""
    size = _utf8_len(path)
    if size is None:
        return "is not valid Unicode text"
    if not path:
        return "is empty"
    if size > MAX_PATH_BYTES:
        return f"is too long ({size} bytes, max {MAX_PATH_BYTES})"
    bad = _FORBIDDEN.intersection(path)
    if bad:
        return "contains a backslash, a colon or a control character"
    parts = path.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        return f"is too deep ({len(parts)} levels, max {MAX_PATH_DEPTH})"
    for part in parts:
        if part in ("", ".", ".."):
            return "is not a relative path (empty, '.' or '..' component, or a leading '/')"
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            return f"has a component over {MAX_NAME_BYTES} bytes"
    return None


def check_head(name: str, note: str | None, count: int, total: int, error: _Err) -> None:
    """The offer's own fields (not its files)."""
    size = _utf8_len(name) if isinstance(name, str) else None
    if size is None or not name.strip():
        raise error("the offer needs a name (the file's or the folder's)", ERR_BAD_OFFER)
    if size > MAX_OFFER_NAME_BYTES:
        raise error(f"the offer's name is too long ({size} bytes, max {MAX_OFFER_NAME_BYTES})",
                    ERR_BAD_OFFER)
    if note is not None and (len(note) > MAX_NOTE_CHARS or _utf8_len(note) is None):
        raise error(f"the note must be text of at most {MAX_NOTE_CHARS} characters", ERR_BAD_OFFER)
    if count < 1:
        raise error("an offer needs at least one file", ERR_BAD_OFFER)
    if count > MAX_OFFER_FILES:
        raise error(
            f"too many files ({count}, max {MAX_OFFER_FILES} per offer): share a smaller folder "
            "or an archive", ERR_TOO_LARGE)
    if total > MAX_OFFER_BYTES:
        raise error(
            f"the offer is too large ({total} bytes, max {MAX_OFFER_BYTES}): share less, or split "
            "it", ERR_TOO_LARGE)


def entry_size(entry: f.FileEntry) -> int:
    """Encoded bytes of one manifest entry (what paging and MAX_MANIFEST_BYTES count)."""
    return len(_codec.encode(entry.to_value()))


class ManifestCheck:
    """Checks a manifest entry by entry, as pages arrive: paths, sizes, duplicates, the caps."""

    __slots__ = ("error", "count", "total", "paths", "bytes", "sum")

    def __init__(self, count: int, total: int, error: _Err) -> None:
        self.error = error
        self.count = count
        self.total = total
        self.paths: set[str] = set()
        self.bytes = 0
        self.sum = 0

    @property
    def done(self) -> bool:
        return len(self.paths) >= self.count

    def add(self, entries: tuple[f.FileEntry, ...] | list[f.FileEntry]) -> None:
        err = self.error
        if len(self.paths) + len(entries) > self.count:
            raise err(f"the manifest has more files than its count ({self.count})", ERR_BAD_OFFER)
        for entry in entries:
            problem = path_problem(entry.path)
            if problem is not None:
                raise err(f"the path {entry.path[:120]!r} {problem}", ERR_BAD_PATH)
            if entry.path in self.paths:
                raise err(f"the path {entry.path[:120]!r} is listed twice", ERR_BAD_OFFER)
            if len(entry.sha256) != 32:
                raise err("a file's hash must be a 32-byte SHA-256", ERR_BAD_OFFER)
            self.paths.add(entry.path)
            self.sum += entry.size
            self.bytes += entry_size(entry)
            if self.sum > self.total:
                raise err("the files add up to more than the offer's total", ERR_BAD_OFFER)
            if self.bytes > MAX_MANIFEST_BYTES:
                raise err(
                    f"the file list is too long (over {MAX_MANIFEST_BYTES} bytes of names and "
                    "hashes): share a smaller folder or an archive", ERR_TOO_LARGE)

    def finish(self) -> None:
        if not self.done:
            raise self.error("the manifest ended early", ERR_BAD_OFFER)
        if self.sum != self.total:
            raise self.error("the files do not add up to the offer's total", ERR_BAD_OFFER)


# ---- paging: a manifest travels in pages, each inside one frame ----------------------------


def page_budget(empty_frame: f.Frame) -> int:
    """Bytes of file entries that fit in `empty_frame` (the frame with `files=()`): the frame
    stays within MAX_PLAINTEXT however many entries (the array head grows by up to 2 bytes)."""
    return MAX_PLAINTEXT - len(empty_frame.encode()) - 2


def page_end(sizes: list[int] | tuple[int, ...], start: int, budget: int) -> int:
    """The end (exclusive) of the page of entries from `start` that fits in `budget` bytes;
    at least one entry when any is left (one entry is never near a frame's size)."""
    end, used = start, 0
    while end < len(sizes) and (used + sizes[end] <= budget or end == start):
        used += sizes[end]
        end += 1
    return end


def share_frames(
    ref: int, name: str, note: str | None, files: tuple[f.FileEntry, ...]
) -> list[f.Share | f.Manifest]:
    """A share as frames: `share` with the first page, then `manifest` pages."""
    total = sum(e.size for e in files)
    sizes = [entry_size(e) for e in files]
    head = f.Share(ref=ref, name=name, count=len(files), total=total, files=(), note=note)
    end = page_end(sizes, 0, page_budget(head))
    frames: list[f.Share | f.Manifest] = [
        f.Share(ref=ref, name=name, count=len(files), total=total, files=files[:end], note=note)
    ]
    budget = page_budget(f.Manifest(ref=ref, at=2**64 - 1, files=()))
    while end < len(files):
        start, end = end, page_end(sizes, end, budget)
        frames.append(f.Manifest(ref=ref, at=start, files=files[start:end]))
    return frames
