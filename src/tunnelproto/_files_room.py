"""Files, the host's side (spec "Files"): offers, manifests and transfers of one `Room`.

`Room` owns one `RoomFiles` as `room.files` and calls its hooks (`on_open`, `on_frame`,
`on_conn_closed`, `on_seat_gone`, the timer and the close); the host's driver calls the public
methods below. Every transfer goes through the host, which holds at most `file_window` bytes of
it (the receiver's outstanding credit) whoever shares and receives:

- a member shares: the host `pull`s from the sharer's connection and relays each `chunk` to the
  receiver, re-sealed, when the relay asks for bulk (`pull_bulk`);
- the host shares: the room asks its driver to read (`ReadRequest` in `take_events()`), the
  driver hands the bytes back (`provide_chunk`), they go out the same way;
- the host receives: chunks come to the driver as `ChunkReceived`, it writes them and `grant`s
  the credit back.

Chat never waits behind chunks: chunk frames are sealed only in `pull_bulk`, which the relay
calls when a connection's outbound queue is low; they join `data_to_send()` behind everything
sealed before (chat, events, acks), so at most one batch of chunks is ever ahead of a chat
message. Control frames (pull, credit, cancel, abort, listing) go out at once, like chat.
"""

from __future__ import annotations

import dataclasses
from collections import deque
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
    OfferInfo,
    ReadRequest,
    TransferInfo,
    TunnelEvent,
)
from ._files import (
    ABORT_BAD_FETCH,
    ABORT_BUSY,
    ABORT_CLOSED,
    ABORT_GONE,
    ABORT_UNREADABLE,
    END_EXPIRED,
    END_WITHDRAWN,
    ERR_BAD_CHUNK,
    ERR_BAD_OFFER,
    ERR_BAD_TRANSFER,
    ERR_OFFER_LIMIT,
    ERR_OVER_CREDIT,
    KIND_OFFER,
    KIND_OFFER_ENDED,
    MAX_CHUNK,
    MAX_MEMBER_OFFERS,
    MAX_MEMBER_TRANSFERS,
    MAX_ROOM_OFFERS,
    MAX_ROOM_TRANSFERS,
    SHARER_ABORT_CODES,
    ManifestCheck,
    OfferState,
    TransferState,
    check_head,
    entry_size,
    move,
    page_budget,
    page_end,
    read_size,
)
from ._names import one_line
from ._transcript import TranscriptEntry

if TYPE_CHECKING:
    from ._room import Room, Seat, _Conn


@dataclass(slots=True, eq=False)
class _Offer:
    info: OfferInfo  # with the whole manifest
    sharer_name: str
    ref: int
    expires_at: float
    sizes: tuple[int, ...]  # encoded size of each manifest entry, for paging
    transfers: set[int] = field(default_factory=set)
    state: OfferState = OfferState.LIVE


@dataclass(slots=True, eq=False)
class _Transfer:
    """One transfer through the host. Offsets are absolute positions in the file:
    sent <= received <= pull_limit <= limit, and received - sent bytes wait in `buffer`."""

    id: int  # room-wide; the `x` of the pull to the sharer, the `transfer` of host events
    offer: _Offer
    file: int
    size: int
    receiver: int  # member id
    receiver_conn: int | None  # None: the host receives
    receiver_x: int  # the receiver's id for it (the host's own: `id`)
    limit: int  # the receiver accepts bytes up to here (exclusive)
    received: int  # the next byte to come from the sharer
    sent: int  # the next byte to go to the receiver
    sharer_conn: int | None = None  # the connection pulled from; None: the host, or parked
    pull_limit: int = 0  # what the current pull may send up to
    buffer: deque[bytes] = field(default_factory=deque, repr=False)
    head_pos: int = 0  # bytes of buffer[0] already sent
    reading: int = 0  # host shares: bytes of the outstanding ReadRequest (0: none)
    state: TransferState = TransferState.RELAYING
    #: Chunks sent to the receiver and not yet answered by a credit: a credit is "paced" (see
    #: `paced`) only while there is one, and each answers one. A receiver may credit once per
    #: run of chunks or once per chunk (its driver drains after every message it reads).
    unanswered: int = 0

    @property
    def sharer(self) -> int:
        return self.offer.info.sharer


@dataclass(slots=True, eq=False)
class _PendingShare:
    """A member's share whose manifest pages are still coming (one per connection)."""

    frame: f.Share
    files: list[f.FileEntry]
    check: ManifestCheck


@dataclass(slots=True, eq=False)
class _ConnFiles:
    """Per OPEN connection with files/1."""

    seat_id: int
    max_x: int = 0  # the highest fetch id the member used on this connection
    fetches: dict[int, int] = field(default_factory=dict)  # the member's x -> transfer id
    pulls: set[int] = field(default_factory=set)  # transfer ids pulled from this connection
    pending: _PendingShare | None = None
    bulk: deque[int] = field(default_factory=deque)  # transfers with chunks waiting, in turn
    queued: set[int] = field(default_factory=set)


class RoomFiles:
    def __init__(self, room: Room) -> None:
        self._room = room
        self._offers: dict[int, _Offer] = {}
        self._next_offer = 1
        self._transfers: dict[int, _Transfer] = {}
        self._next_transfer = 1
        self._conns: dict[int, _ConnFiles] = {}
        self._events: list[TunnelEvent] = []

    @property
    def window(self) -> int:
        return self._room.config.file_window

    # ============================================================== the host's API

    def share(
        self, name: str, files: Sequence[f.FileEntry], now: float, *, note: str | None = None
    ) -> OfferInfo:
        """The host offers `files` (its driver's manifest) to the room. The offer is in the
        transcript when this returns; every member learns it in the total order."""
        room = self._room
        if room.closed:
            raise LocalProtocolError("the room is closed", "closed")
        entries = tuple(files)
        total = sum(e.size for e in entries)
        check_head(name, note, len(entries), total, LocalProtocolError)
        check = ManifestCheck(len(entries), total, LocalProtocolError)
        check.add(entries)
        check.finish()
        self._check_offer_caps(room.host_id, LocalProtocolError)
        return self._publish(room.host_id, room.host_name, 0, name, note, entries, total, now)

    def unshare(self, offer_id: int, now: float) -> None:
        """Withdraw one of the host's offers (a no-op if it already ended)."""
        offer = self._offers.get(offer_id)
        if offer is not None:
            if offer.info.sharer != self._room.host_id:
                raise LocalProtocolError(f"offer {offer_id} is not the host's", "not-yours")
            self._end_offer(offer, END_WITHDRAWN, now)

    def offers(self) -> list[OfferInfo]:
        """The live offers, oldest first, each with its whole manifest."""
        return [o.info for o in self._offers.values()]

    def offer(self, offer_id: int) -> OfferInfo | None:
        offer = self._offers.get(offer_id)
        return offer.info if offer is not None else None

    def transfers(self) -> list[TransferInfo]:
        """Every transfer in progress: `at` is what has gone to the receiver."""
        return [
            TransferInfo(t.id, t.offer.info.id, t.file, t.size, t.sent, t.sharer, t.receiver,
                         t.state is TransferState.PARKED)
            for t in self._transfers.values()
        ]

    def fetch(
        self, offer_id: int, file: int, now: float, *, at: int = 0, credit: int | None = None
    ) -> int:
        """The host receives file `file` of a member's offer from byte `at` (its writer's
        position on a retry). Returns the transfer id of the ChunkReceived / FetchComplete /
        FetchAborted events that follow. `credit` defaults to the whole window."""
        room = self._room
        if room.closed:
            raise LocalProtocolError("the room is closed", "closed")
        offer = self._offers.get(offer_id)
        if offer is None:
            raise LocalProtocolError(f"offer {offer_id} is not live (it ended, or never was)",
                                     ABORT_GONE)
        if offer.info.sharer == room.host_id:
            raise LocalProtocolError("this is the host's own offer", ABORT_BAD_FETCH)
        size = self._file_size(offer, file, at, LocalProtocolError)
        credit = self.window if credit is None else credit
        if not 0 <= credit <= self.window:
            raise LocalProtocolError(f"credit must be 0..{self.window}", ERR_OVER_CREDIT)
        mine = sum(1 for t in self._transfers.values() if t.receiver_conn is None)
        if mine >= MAX_MEMBER_TRANSFERS or len(self._transfers) >= MAX_ROOM_TRANSFERS:
            raise LocalProtocolError(
                f"too many transfers at once (at most {MAX_MEMBER_TRANSFERS} per member, "
                f"{MAX_ROOM_TRANSFERS} in the room): wait for one to finish", ABORT_BUSY)
        tid = self._new_id()
        if at == size:
            self._events.append(FetchComplete(tid))
            return tid
        t = _Transfer(tid, offer, file, size, room.host_id, None, tid, at + credit, at, at)
        self._add(t)
        return tid

    def grant(self, transfer: int, n: int) -> None:
        """The host's driver wrote `n` more bytes of its fetch: that much more may come."""
        if n < 0:
            raise LocalProtocolError("credit cannot be negative", ERR_OVER_CREDIT)
        t = self._transfers.get(transfer)
        if t is None or t.receiver_conn is not None:
            return  # ended meanwhile (the driver learns it from an event)
        if t.limit + n - t.sent > self.window:
            raise LocalProtocolError(f"credit over the window ({self.window} bytes)",
                                     ERR_OVER_CREDIT)
        self._credit(t, n)

    def cancel(self, transfer: int) -> None:
        """The host stops its own fetch (a no-op once it ended)."""
        t = self._transfers.get(transfer)
        if t is not None and t.receiver_conn is None:
            self._end(t, cancel_sharer=True)

    def provide_chunk(self, transfer: int, offset: int, data: bytes) -> bool:
        """The bytes a ReadRequest asked for (from `offset`, at most its `size`; fewer is fine,
        the rest is asked again). False: the transfer ended meanwhile, drop the data."""
        t = self._transfers.get(transfer)
        if t is None or t.sharer != self._room.host_id:
            return False
        if not t.reading:
            raise LocalProtocolError(f"transfer {transfer} has no read outstanding", "no-read")
        if offset != t.received or not 0 < len(data) <= t.reading:
            raise LocalProtocolError(
                f"the read of transfer {transfer} was for {t.reading} bytes at {t.received}",
                "bad-read",
            )
        t.reading = 0
        self._accept(t, bytes(data))
        self._want_read(t)
        return True

    def read_failed(self, transfer: int, code: str, message: str) -> None:
        """The host's driver could not read for `transfer`: `changed` (the file is not what was
        offered any more) or `unreadable`. The receiver gets it as an abort."""
        t = self._transfers.get(transfer)
        if t is not None and t.sharer == self._room.host_id:
            self._abort(t, code if code in SHARER_ABORT_CODES else ABORT_UNREADABLE,
                        one_line(message, 200))

    def take_events(self) -> list[TunnelEvent]:
        """What the host's driver must act on: ReadRequest, ChunkReceived, FetchComplete,
        FetchAborted, in order. Drain after every room call, like `data_to_send()`."""
        out, self._events = self._events, []
        return out

    def has_events(self) -> bool:
        """Whether `take_events()` has anything."""
        return bool(self._events)

    # ---- the bulk lane

    def has_bulk(self, conn_id: int) -> bool:
        cf = self._conns.get(conn_id)
        return cf is not None and bool(cf.bulk)

    def bulk_connections(self) -> list[int]:
        """Connections with chunks waiting for `pull_bulk`."""
        return [cid for cid, cf in self._conns.items() if cf.bulk]

    def pull_bulk(self, conn_id: int, max_bytes: int) -> int:
        """Seal chunk frames for `conn_id`, transfers in turn, until about `max_bytes` (at least
        one frame when any waits); they join `data_to_send()` as Sends, behind everything sealed
        before. Returns the bytes sealed."""
        cf = self._conns.get(conn_id)
        conn = self._room._conns.get(conn_id)
        if cf is None or conn is None or conn.channel is None:
            return 0
        size = 0
        while cf.bulk and size < max_bytes:
            tid = cf.bulk.popleft()
            cf.queued.discard(tid)
            t = self._transfers.get(tid)
            if t is None or not t.buffer:
                continue
            data = self._take(t)
            plaintext = f.encode_chunk(t.receiver_x, t.sent, data)
            self._room._emit(conn, plaintext)
            t.sent += len(data)
            t.unanswered += 1
            size += len(plaintext) + SEAL_OVERHEAD
            if t.buffer:
                cf.bulk.append(tid)
                cf.queued.add(tid)
            elif t.sent == t.size:
                self._end(t, cancel_sharer=False)  # done; the sharer's pull ends by itself
        return size

    # ============================================================== hooks called by Room

    def on_open(self, conn: _Conn) -> None:
        """`conn` just became OPEN. A sharer that comes back is pulled again from where its
        transfers stopped."""
        if not conn.files or conn.seat_id is None:
            return
        self._conns[conn.id] = _ConnFiles(conn.seat_id)
        for t in self._transfers.values():
            if t.state is TransferState.PARKED and t.sharer == conn.seat_id:
                t.state = move(t.state, TransferState.RELAYING)
                self._pull(t, conn.id)

    def before_say(self, conn: _Conn) -> None:
        """A `say` (or `share`) while a share's manifest is still coming would break the ref
        order that resume relies on (spec "Files", sharing)."""
        cf = self._conns.get(conn.id)
        if cf is not None and cf.pending is not None:
            raise RemoteProtocolError("a new say or share before a share's manifest ended",
                                      "unexpected")

    def paced(self, conn_id: int, frame: f.Frame) -> bool:
        """True for a file frame the room itself asked for, whose number and size the room
        bounds: a chunk inside the credit of a pull from this connection, and a credit for a
        fetch of this connection's answering a chunk the host sent it (each chunk answers one
        credit: there are never more paced credits than chunks sent).
        The room's inbound budget does not charge these a frame (like acks that retire
        entries), and gives back a paced chunk's data bytes: they are bounded by the receivers'
        windows, and charging them would cut off every sharer of a large file. No side effect:
        call it before `on_frame`."""
        if isinstance(frame, f.Chunk):
            t = self._transfers.get(frame.x)
            return (
                t is not None
                and t.sharer_conn == conn_id
                and frame.at == t.received
                and 0 < len(frame.data) <= MAX_CHUNK
                and frame.at + len(frame.data) <= min(t.pull_limit, t.size)
            )
        if isinstance(frame, f.Credit):
            cf = self._conns.get(conn_id)
            tid = cf.fetches.get(frame.x) if cf is not None else None
            t = self._transfers.get(tid) if tid is not None else None
            return t is not None and t.unanswered > 0 and frame.n > 0
        return False

    def on_frame(self, conn: _Conn, seat: Seat, frame: f.Frame, now: float) -> None:
        """A frame of ROOM_ACCEPTS_FILES from an OPEN connection with files/1."""
        cf = self._conns[conn.id]
        if isinstance(frame, f.Chunk):
            self._on_chunk(conn, frame)
        elif isinstance(frame, f.Credit):
            t = self._fetch_of(cf, frame.x)
            if t is not None:
                if t.limit + frame.n - t.sent > self.window:
                    raise RemoteProtocolError(
                        f"credit over the window ({self.window} bytes)", ERR_OVER_CREDIT)
                if frame.n > 0 and t.unanswered > 0:
                    t.unanswered -= 1  # the chunk this credit answers (see `paced`)
                self._credit(t, frame.n)
        elif isinstance(frame, f.Fetch):
            self._on_fetch(conn, cf, seat, frame)
        elif isinstance(frame, f.Cancel):
            t = self._fetch_of(cf, frame.x)
            if t is not None:
                self._end(t, cancel_sharer=True)
        elif isinstance(frame, f.Abort):
            t = self._transfers.get(frame.x)
            if t is not None and t.sharer_conn == conn.id:
                code = frame.code if frame.code in SHARER_ABORT_CODES else ABORT_UNREADABLE
                self._abort(t, code, one_line(frame.msg, 200))
        elif isinstance(frame, f.Share):
            self._on_share(conn, cf, seat, frame, now)
        elif isinstance(frame, f.Manifest):
            self._on_manifest(conn, cf, seat, frame, now)
        elif isinstance(frame, f.ListFiles):
            self._on_list(conn, frame)
        elif isinstance(frame, f.Unshare):
            offer = self._offers.get(frame.offer)
            if offer is not None and offer.info.sharer == seat.id:
                self._end_offer(offer, END_WITHDRAWN, now)

    def on_conn_closed(self, conn_id: int) -> None:
        """The connection ended (any way). Its fetches end (the receiver re-fetches after its
        resume); transfers pulled from it wait for the sharer's resume."""
        cf = self._conns.pop(conn_id, None)
        if cf is None:
            return
        for tid in list(cf.fetches.values()):
            t = self._transfers.get(tid)
            if t is not None:
                self._end(t, cancel_sharer=True)
        for tid in cf.pulls:
            t = self._transfers.get(tid)
            if t is not None and t.state is TransferState.RELAYING:
                t.state = move(t.state, TransferState.PARKED)
                t.sharer_conn = None

    def on_seat_gone(self, seat_id: int, reason: str, now: float) -> None:
        """The seat was vacated (`left`) or removed: its offers end, in the total order."""
        for offer in [o for o in self._offers.values() if o.info.sharer == seat_id]:
            self._end_offer(offer, reason, now)

    def next_deadline(self) -> float | None:
        if not self._offers:
            return None  # the usual case, asked after every message: no generator made
        return min(o.expires_at for o in self._offers.values())

    def handle_timer(self, now: float) -> None:
        for offer in [o for o in self._offers.values() if now >= o.expires_at]:
            self._end_offer(offer, END_EXPIRED, now)

    def on_room_closed(self) -> None:
        """No `unoffer`s: the room's `closed` says it all. The host's own fetches end."""
        for t in self._transfers.values():
            if t.receiver_conn is None:
                self._events.append(FetchAborted(t.id, ABORT_CLOSED, "the room closed"))
        self._transfers.clear()
        self._offers.clear()
        self._conns.clear()

    # ============================================================== offers

    def _check_offer_caps(
        self, sharer: int, error: type[LocalProtocolError] | type[RemoteProtocolError]
    ) -> None:
        mine = sum(1 for o in self._offers.values() if o.info.sharer == sharer)
        if mine >= MAX_MEMBER_OFFERS:
            raise error(f"too many live offers ({MAX_MEMBER_OFFERS} per member): withdraw one "
                        "first", ERR_OFFER_LIMIT)
        if len(self._offers) >= MAX_ROOM_OFFERS:
            raise error(f"the room has too many live offers ({MAX_ROOM_OFFERS}): wait for one "
                        "to end", ERR_OFFER_LIMIT)

    def _publish(
        self,
        sharer: int,
        sharer_name: str,
        ref: int,
        name: str,
        note: str | None,
        files: tuple[f.FileEntry, ...],
        total: int,
        now: float,
    ) -> OfferInfo:
        room = self._room
        oid = self._next_offer
        self._next_offer += 1
        seq, ts = room.last_seq + 1, room._ts(now)
        sizes = tuple(entry_size(e) for e in files)
        head = f.Offer(seq=seq, ts=ts, from_=sharer, ref=ref, id=oid, name=name,
                       count=len(files), total=total, files=(), note=note)
        first = files[: page_end(sizes, 0, page_budget(head))]
        plural = "" if len(files) == 1 else "s"
        summary = f"{name} ({len(files)} file{plural}, {total} bytes)"
        fallback = f.Event(kind=KIND_OFFER, seq=seq, ts=ts, member=sharer, name=sharer_name,
                           summary=summary)
        info = OfferInfo(oid, sharer, name, len(files), total, first, note, seq, ts)
        # The entry keeps the offer without its files: they are in `frame` already (the
        # transcript cap counts encoded bytes), and in `offers()` while the offer lives.
        entry = TranscriptEntry(
            seq, ts, "event", None, summary, KIND_OFFER, sharer, sharer_name, summary,
            dataclasses.replace(head, files=first).encode(), fallback=fallback.encode(),
            offer=dataclasses.replace(info, files=()),
        )
        offer = _Offer(dataclasses.replace(info, files=files), sharer_name, ref,
                       now + room.config.offer_ttl, sizes)
        self._offers[oid] = offer
        room._append(entry, now)
        return offer.info

    def _end_offer(self, offer: _Offer, reason: str, now: float) -> None:
        room = self._room
        info = offer.info
        del self._offers[info.id]
        offer.state = OfferState.ENDED
        seq, ts = room.last_seq + 1, room._ts(now)
        name = offer.sharer_name
        frame = f.Unoffer(seq=seq, ts=ts, id=info.id, from_=info.sharer, reason=reason)
        fallback = f.Event(kind=KIND_OFFER_ENDED, seq=seq, ts=ts, member=info.sharer,
                           name=name, summary=reason)
        room._append(
            TranscriptEntry(
                seq, ts, "event", None, reason, KIND_OFFER_ENDED, info.sharer, name,
                reason, frame.encode(), fallback=fallback.encode(),
                offer=dataclasses.replace(info, files=()),
            ),
            now,
        )
        for tid in list(offer.transfers):
            t = self._transfers.get(tid)
            if t is not None:
                self._abort(t, ABORT_GONE, f"the offer ended ({reason})")

    def _on_share(
        self, conn: _Conn, cf: _ConnFiles, seat: Seat, share: f.Share, now: float
    ) -> None:
        self.before_say(conn)
        if share.ref == 0:
            raise RemoteProtocolError("share.ref must start at 1", "malformed")
        if share.ref <= seat.last_ref:
            # A re-send after a resume (section 11's dedupe): its pages are ignored below.
            refused = seat.refused.get(share.ref)
            if refused is not None:
                self._room._send_frame(conn, refused)
            return
        try:
            check_head(share.name, share.note, share.count, share.total, RemoteProtocolError)
            if not share.files:
                raise RemoteProtocolError("a share carries its first file", ERR_BAD_OFFER)
            check = ManifestCheck(share.count, share.total, RemoteProtocolError)
            check.add(share.files)
        except RemoteProtocolError as exc:
            self._refuse(conn, cf, seat, share.ref, exc)
            return
        cf.pending = _PendingShare(share, list(share.files), check)
        if check.done:
            self._complete(conn, cf, seat, now)

    def _on_manifest(
        self, conn: _Conn, cf: _ConnFiles, seat: Seat, page: f.Manifest, now: float
    ) -> None:
        if page.ref <= seat.last_ref:
            return  # a page of a share already stamped or refused (re-sent after a resume)
        pending = cf.pending
        if pending is None or page.ref != pending.frame.ref:
            raise RemoteProtocolError("a manifest page for no share in progress", "unexpected")
        try:
            if page.at != len(pending.files) or not page.files:
                raise RemoteProtocolError("manifest pages out of order, or empty", ERR_BAD_OFFER)
            pending.check.add(page.files)
        except RemoteProtocolError as exc:
            self._refuse(conn, cf, seat, page.ref, exc)
            return
        pending.files.extend(page.files)
        if pending.check.done:
            self._complete(conn, cf, seat, now)

    def _complete(self, conn: _Conn, cf: _ConnFiles, seat: Seat, now: float) -> None:
        pending = cf.pending
        assert pending is not None
        share = pending.frame
        try:
            pending.check.finish()
            self._check_offer_caps(seat.id, RemoteProtocolError)
        except RemoteProtocolError as exc:
            self._refuse(conn, cf, seat, share.ref, exc)
            return
        # A share costs a rate-limit token, like a say.
        wait = self._room._take_token(seat, now)
        if wait is not None:
            error = RemoteProtocolError("you are sharing too fast; wait and share again",
                                        "rate-limited")
            self._refuse(conn, cf, seat, share.ref, error, retry=wait)
            return
        cf.pending = None
        seat.last_ref = share.ref
        self._publish(seat.id, seat.name, share.ref, share.name, share.note,
                      tuple(pending.files), share.total, now)

    def _refuse(
        self,
        conn: _Conn,
        cf: _ConnFiles,
        seat: Seat,
        ref: int,
        exc: RemoteProtocolError,
        retry: int | None = None,
    ) -> None:
        cf.pending = None
        seat.last_ref = max(seat.last_ref, ref)
        self._room._refuse_say(conn, seat, f.Error(code=exc.code, msg=str(exc), ref=ref,
                                                   retry=retry))

    def _on_list(self, conn: _Conn, request: f.ListFiles) -> None:
        # BUDGET: a listing is up to a frame of answer for a small request; the frame budget
        # charges the request (and the relay cuts a connection whose queue overflows).
        offer = self._offers.get(request.offer)
        files: tuple[f.FileEntry, ...] = ()
        if offer is not None and request.at < offer.info.count:
            empty = f.Listing(offer=request.offer, at=request.at, files=())
            end = page_end(offer.sizes, request.at, page_budget(empty))
            files = offer.info.files[request.at : end]
        self._room._send_frame(conn, f.Listing(offer=request.offer, at=request.at, files=files))

    # ============================================================== transfers

    def _new_id(self) -> int:
        tid = self._next_transfer
        self._next_transfer += 1
        return tid

    @staticmethod
    def _file_size(
        offer: _Offer, file: int, at: int, error: type[LocalProtocolError] | None = None
    ) -> int:
        if file >= offer.info.count:
            if error is not None:
                raise error(f"offer {offer.info.id} has no file {file}", ABORT_BAD_FETCH)
            return -1
        size = offer.info.files[file].size
        if at > size:
            if error is not None:
                raise error(f"file {file} has only {size} bytes", ABORT_BAD_FETCH)
            return -1
        return size

    def _fetch_of(self, cf: _ConnFiles, x: int) -> _Transfer | None:
        """The receiver's transfer `x` on this connection; None for one that ended (a late
        credit or cancel, crossing its end on the wire)."""
        tid = cf.fetches.get(x)
        if tid is None:
            if 0 < x <= cf.max_x:
                return None
            raise RemoteProtocolError(f"no transfer {x} was fetched", ERR_BAD_TRANSFER)
        return self._transfers[tid]

    def _on_fetch(self, conn: _Conn, cf: _ConnFiles, seat: Seat, fetch: f.Fetch) -> None:
        if fetch.x <= cf.max_x:
            raise RemoteProtocolError("fetch.x must grow on each fetch", ERR_BAD_TRANSFER)
        cf.max_x = fetch.x
        if fetch.credit > self.window:
            raise RemoteProtocolError(f"credit over the window ({self.window} bytes)",
                                      ERR_OVER_CREDIT)
        offer = self._offers.get(fetch.offer)
        code, msg = "", ""
        if offer is None:
            code, msg = ABORT_GONE, "that offer is not live (it ended, or never was)"
        elif offer.info.sharer == seat.id:
            code, msg = ABORT_BAD_FETCH, "that is your own offer"
        elif self._file_size(offer, fetch.file, fetch.at) < 0:
            code, msg = ABORT_BAD_FETCH, "no such file in that offer, or a start past its end"
        elif len(cf.fetches) >= MAX_MEMBER_TRANSFERS or len(self._transfers) >= MAX_ROOM_TRANSFERS:
            code, msg = ABORT_BUSY, (
                f"too many transfers at once (at most {MAX_MEMBER_TRANSFERS} per member, "
                f"{MAX_ROOM_TRANSFERS} in the room): fetch again when one has finished")
        if code:
            self._room._send_frame(conn, f.Abort(x=fetch.x, code=code, msg=msg))
            return
        assert offer is not None
        size = offer.info.files[fetch.file].size
        if fetch.at == size:
            return  # nothing to send: the receiver already holds the whole file
        tid = self._new_id()
        t = _Transfer(tid, offer, fetch.file, size, seat.id, conn.id, fetch.x,
                      fetch.at + fetch.credit, fetch.at, fetch.at)
        cf.fetches[fetch.x] = tid
        self._add(t)

    def _add(self, t: _Transfer) -> None:
        self._transfers[t.id] = t
        t.offer.transfers.add(t.id)
        if t.sharer == self._room.host_id:
            self._want_read(t)
            return
        sharer = self._room._seats.get(t.sharer)
        conn_id = sharer.conn if sharer is not None and sharer.connected else None
        if conn_id is not None and conn_id in self._conns:
            self._pull(t, conn_id)
        else:
            t.state = move(t.state, TransferState.PARKED)

    def _pull(self, t: _Transfer, conn_id: int) -> None:
        t.sharer_conn = conn_id
        t.pull_limit = t.limit
        self._conns[conn_id].pulls.add(t.id)
        self._send(conn_id, f.Pull(x=t.id, offer=t.offer.info.id, file=t.file, at=t.received,
                                   credit=t.limit - t.received))

    def _credit(self, t: _Transfer, n: int) -> None:
        t.limit += n
        if t.sharer == self._room.host_id:
            self._want_read(t)
        elif t.sharer_conn is not None and n:
            t.pull_limit += n
            self._send(t.sharer_conn, f.Credit(x=t.id, n=n))

    def _want_read(self, t: _Transfer) -> None:
        end = min(t.limit, t.size)
        if t.reading or t.received >= end or t.state is not TransferState.RELAYING:
            return
        t.reading = read_size(t.received, end)
        self._events.append(ReadRequest(t.id, t.offer.info.id, t.file, t.received, t.reading))

    def _on_chunk(self, conn: _Conn, chunk: f.Chunk) -> None:
        t = self._transfers.get(chunk.x)
        if t is None:
            if 0 < chunk.x < self._next_transfer:
                return  # it crossed our cancel (or the offer's end) on the wire: dropped
            raise RemoteProtocolError("a chunk nobody asked for", ERR_BAD_CHUNK)
        if t.sharer_conn != conn.id:
            raise RemoteProtocolError("a chunk for a transfer not pulled from you", ERR_BAD_CHUNK)
        n = len(chunk.data)
        if chunk.at != t.received or not 0 < n <= MAX_CHUNK or chunk.at + n > t.size:
            raise RemoteProtocolError(
                f"chunk out of range (expected bytes from {t.received}, 1 to {MAX_CHUNK} of "
                f"them, within the file's {t.size})", ERR_BAD_CHUNK)
        if chunk.at + n > t.pull_limit:
            raise RemoteProtocolError("a chunk beyond the credit granted", ERR_OVER_CREDIT)
        self._accept(t, chunk.data)

    def _accept(self, t: _Transfer, data: bytes) -> None:
        """Bytes from the sharer: straight to the host's driver, or waiting for pull_bulk."""
        at = t.received
        t.received += len(data)
        if t.receiver_conn is None:
            t.sent = t.received
            self._events.append(ChunkReceived(t.id, at, data))
            if t.sent == t.size:
                self._events.append(FetchComplete(t.id))
                self._end(t, cancel_sharer=False)
            return
        t.buffer.append(data)
        cf = self._conns.get(t.receiver_conn)
        if cf is not None and t.id not in cf.queued:
            cf.bulk.append(t.id)
            cf.queued.add(t.id)
            self._room._other_output = True  # the driver pulls it at its next drain

    @staticmethod
    def _take(t: _Transfer) -> bytes | memoryview:
        head = t.buffer[0]
        start = t.head_pos
        n = min(len(head) - start, MAX_CHUNK)
        if start == 0 and n == len(head):
            t.buffer.popleft()
            return head
        piece = memoryview(head)[start : start + n]
        t.head_pos += n
        if t.head_pos == len(head):
            t.buffer.popleft()
            t.head_pos = 0
        return piece

    def _abort(self, t: _Transfer, code: str, message: str) -> None:
        if t.receiver_conn is None:
            self._events.append(FetchAborted(t.id, code, message))
        else:
            self._send(t.receiver_conn, f.Abort(x=t.receiver_x, code=code, msg=message))
        self._end(t, cancel_sharer=True)

    def _end(self, t: _Transfer, *, cancel_sharer: bool) -> None:
        if cancel_sharer and t.sharer_conn is not None:
            self._send(t.sharer_conn, f.Cancel(x=t.id))
        self._transfers.pop(t.id, None)
        t.offer.transfers.discard(t.id)
        if t.receiver_conn is not None:
            cf = self._conns.get(t.receiver_conn)
            if cf is not None:
                cf.fetches.pop(t.receiver_x, None)
                if t.id in cf.queued:
                    # Its buffered chunks are dropped below: nothing is left for pull_bulk, so
                    # the connection is not listed by bulk_connections for them any more.
                    cf.queued.discard(t.id)
                    cf.bulk.remove(t.id)
        if t.sharer_conn is not None:
            cf = self._conns.get(t.sharer_conn)
            if cf is not None:
                cf.pulls.discard(t.id)
        t.buffer.clear()
        t.state = move(t.state, TransferState.ENDED)

    def _send(self, conn_id: int, frame: f.Frame) -> None:
        conn = self._room._conns.get(conn_id)
        if conn is not None:
            self._room._send_frame(conn, frame)
