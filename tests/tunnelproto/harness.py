"""An in-memory network for tunnelproto: one Room, several MemberConnections, explicit time.

The harness plays the drivers' part: it opens connections, carries every transport message
between the room and the members (in order, one message at a time), closes transports when
either side asks, and moves time only when a test says so (`tick` steps through every deadline
and keeps traffic flowing, `jump` is a machine that slept: one timer call at the new time).

It records everything each side emitted (`Net.wire`) so tests can assert what never appears in
the clear, and everything each member was told (`Peer.events`) so the checkers can compare every
member's view of the transcript with the room's.

Imported by tests/tunnelproto and by fuzz/ (both put this directory on sys.path).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from tunnelproto import (
    BATCH_CAP,
    FILES_CAP,
    MAX_FRAME,
    MAX_PLAINTEXT,
    ChatMessage,
    ChunkReceived,
    ConnectionEnded,
    Disconnect,
    FetchAborted,
    FetchComplete,
    FileEntry,
    FileOffer,
    FileOfferEnded,
    Invite,
    JoinLink,
    MemberConnection,
    MemberEntry,
    MemberState,
    ReadRequest,
    RemoteProtocolError,
    ResumeState,
    Room,
    RoomConfig,
    RoomEvent,
    SayAccepted,
    SayRejected,
    Send,
    ShareAccepted,
    TranscriptEntry,
    TunnelEvent,
    Welcomed,
    _frames,
)
from tunnelproto._channel import MSG2_NOISE, Channel, new_handshake
from tunnelproto._link import ID_LEN

BASE_URL = "https://tunnel.example"
START = 1000.0
#: What the harness's relay pulls per connection per step (a real relay: when its queue is low).
BULK_BATCH = 64 * 1024


def manifest(contents: list[bytes], prefix: str = "f") -> list[FileEntry]:
    """A manifest for files with these contents."""
    return [
        FileEntry(f"{prefix}/{i}.bin", len(data), hashlib.sha256(data).digest())
        for i, data in enumerate(contents)
    ]


@dataclass(eq=False)
class Disk:
    """One side's driver for files: what it shares (contents by offer and file) and what it
    received (bytes by transfer, in order). `auto_read` answers ReadRequests at once,
    `auto_grant` grants the credit back as soon as a chunk is "written"."""

    shares: dict[int, list[bytes]] = field(default_factory=dict)  # ref (member) -> contents
    offers: dict[int, list[bytes]] = field(default_factory=dict)  # offer id -> contents
    received: dict[int, bytearray] = field(default_factory=dict)
    starts: dict[int, int] = field(default_factory=dict)  # transfer -> first offset
    complete: set[int] = field(default_factory=set)
    aborted: dict[int, FetchAborted] = field(default_factory=dict)
    #: Outstanding reads (when not auto), each with the object that asked: a driver answers
    #: on that one (a read for a connection that died is dropped there).
    reads: list[tuple[object, ReadRequest]] = field(default_factory=list)
    #: transfer -> the whole file it fetches: every ChunkReceived is checked against it.
    expect: dict[int, bytes] = field(default_factory=dict)
    auto_read: bool = True
    auto_grant: bool = True
    ungranted: dict[int, int] = field(default_factory=dict)
    #: Most bytes of ChunkReceived ever delivered and not yet granted back, per transfer.
    peak_ungranted: int = 0

    def content(self, offer: int, file: int) -> bytes:
        return self.offers[offer][file]


class DetRng:
    """Deterministic randomness, so a failing example replays byte for byte."""

    def __init__(self, seed: bytes = b"harness") -> None:
        self._seed = seed
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.blake2b(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return out[:n]


@dataclass(eq=False)
class Peer:
    """One seat as the tests see it: a joining member and every connection it used."""

    label: str
    name: str
    link: JoinLink
    mc: MemberConnection
    invite: Invite | None = None
    joined_at: float = 0.0
    conn_id: int | None = None
    transport_open: bool = False
    refused_at_door: bool = False
    hold_in: bool = False  # room -> member messages wait in `inbox` (the member stopped reading)
    hold_out: bool = False  # member -> room messages wait in `outbox`
    #: The member's driver drains its output after every message it reads (as a driver that
    #: answers each message at once would), rather than once all that arrived together is read.
    drain_each: bool = False
    inbox: list[bytes] = field(default_factory=list)
    outbox: list[bytes] = field(default_factory=list)
    connections: list[MemberConnection] = field(default_factory=list)
    conn_ids: list[int | None] = field(default_factory=list)
    conn_events: list[list[TunnelEvent]] = field(default_factory=list)
    disconnects: list[Disconnect] = field(default_factory=list)
    said: dict[int, str] = field(default_factory=dict)
    accepted: dict[int, int] = field(default_factory=dict)
    rejected: dict[int, SayRejected] = field(default_factory=dict)
    accept_count: dict[int, int] = field(default_factory=dict)
    errors: list[RemoteProtocolError] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    caps: tuple[str, ...] = ()
    disk: Disk = field(default_factory=Disk)

    @property
    def events(self) -> list[TunnelEvent]:
        return [ev for evs in self.conn_events for ev in evs]

    @property
    def entries(self) -> list[ChatMessage | RoomEvent | FileOffer | FileOfferEnded]:
        """Transcript entries this seat received, over all its connections, in order."""
        return [
            ev
            for ev in self.events
            if isinstance(ev, ChatMessage | FileOffer | FileOfferEnded)
            or (isinstance(ev, RoomEvent) and ev.seq > 0)
        ]

    @property
    def seqs(self) -> list[int]:
        return [ev.seq for ev in self.entries]

    @property
    def notices(self) -> list[RoomEvent]:
        return [ev for ev in self.events if isinstance(ev, RoomEvent) and ev.seq == 0]

    @property
    def texts(self) -> list[str]:
        return [ev.text for ev in self.entries if isinstance(ev, ChatMessage)]

    @property
    def member_id(self) -> int | None:
        return self.mc.member_id

    @property
    def is_open(self) -> bool:
        return self.mc.state is MemberState.OPEN

    def welcomes(self) -> list[Welcomed]:
        return [ev for ev in self.events if isinstance(ev, Welcomed)]

    def last_end(self) -> ConnectionEnded | None:
        """How the current connection ended, if it did."""
        for ev in reversed(self.conn_events[-1]):
            if isinstance(ev, ConnectionEnded):
                return ev
        return None

    def current_events(self) -> list[TunnelEvent]:
        return self.conn_events[-1]

    def record(self, ev: TunnelEvent) -> None:
        self.conn_events[-1].append(ev)
        if isinstance(ev, SayAccepted):
            self.accepted[ev.ref] = ev.seq
            self.accept_count[ev.ref] = self.accept_count.get(ev.ref, 0) + 1
        elif isinstance(ev, SayRejected):
            self.rejected[ev.ref] = ev
        elif isinstance(ev, ShareAccepted):
            if ev.ref in self.disk.shares:
                self.disk.offers[ev.offer_id] = self.disk.shares[ev.ref]
        else:
            drive_files(self.disk, self.mc.files, ev)


def drive_files(disk: Disk, files: object, ev: object) -> None:
    """What a file driver does with one event (files: a MemberFiles or a RoomFiles)."""
    if isinstance(ev, ReadRequest):
        disk.reads.append((files, ev))
        if disk.auto_read:
            serve_reads(disk)
    elif isinstance(ev, ChunkReceived):
        got = disk.received.setdefault(ev.transfer, bytearray())
        disk.starts.setdefault(ev.transfer, ev.offset)
        assert ev.offset == disk.starts[ev.transfer] + len(got), "a chunk out of order"
        want = disk.expect.get(ev.transfer)
        if want is not None:
            assert ev.data == want[ev.offset : ev.offset + len(ev.data)], "a byte not shared"
        got += ev.data
        disk.ungranted[ev.transfer] = disk.ungranted.get(ev.transfer, 0) + len(ev.data)
        disk.peak_ungranted = max(disk.peak_ungranted, disk.ungranted[ev.transfer])
        if disk.auto_grant:
            grant_all(disk, files)
    elif isinstance(ev, FetchComplete):
        disk.complete.add(ev.transfer)
    elif isinstance(ev, FetchAborted):
        disk.aborted[ev.transfer] = ev


def serve_reads(disk: Disk) -> None:
    reads, disk.reads = disk.reads, []
    for files, req in reads:
        data = disk.content(req.offer_id, req.file)[req.offset : req.offset + req.size]
        files.provide_chunk(req.transfer, req.offset, data)  # type: ignore[attr-defined]


def grant_all(disk: Disk, files: object) -> None:
    pending, disk.ungranted = disk.ungranted, {}
    for transfer, n in pending.items():
        files.grant(transfer, n)  # type: ignore[attr-defined]


class Net:
    """The room, its members and the wire between them."""

    def __init__(
        self,
        goal: str = "ship the parser",
        host_name: str = "host",
        *,
        config: RoomConfig | None = None,
        now: float = START,
        seed: bytes = b"net",
    ) -> None:
        self.now = now
        self.rng = DetRng(seed)
        self.room = Room(goal, host_name, now, config=config, rng=self.rng)
        self.peers: list[Peer] = []
        self.by_conn: dict[int, Peer] = {}
        #: Room output for connections no live peer owns (raw test connections, old ones).
        self.raw: dict[int, list[Send | Disconnect]] = {}
        #: Every room output, in order.
        self.room_out: list[Send | Disconnect] = []
        #: Every byte string any side emitted.
        self.wire: list[bytes] = []
        #: Seq of the room's closing event, once the room has closed.
        self.close_seq: int | None = None
        self._labels = 0
        #: The host's own file driver.
        self.host_disk = Disk()
        #: Every chunk message the relay pulled, by connection (for memory and order checks).
        self.bulk_out: list[tuple[int, int]] = []
        #: False: the relay's queues are never low, it pulls nothing from its bulk lane.
        self.bulk_enabled = True
        self._links: dict[bytes, JoinLink] = {}

    # ------------------------------------------------------------------ setup

    def mint(self, n: int = 1) -> list[Invite]:
        invites = self.room.mint_invites(n, self.now)
        for invite in invites:  # kept as the human who forwarded it would: the room forgets
            self._links[invite.invite_id] = invite.link(BASE_URL, self.room.tunnel_id)
        return invites

    def link(self, invite: Invite) -> JoinLink:
        return self._links[invite.invite_id]

    def join(
        self,
        name: str,
        invite: Invite | JoinLink | None = None,
        *,
        pump: bool = True,
        label: str | None = None,
        files: bool = False,
        batch: bool = False,
    ) -> Peer:
        """A new member dials in with `invite` (a fresh one is minted when None); with `files`
        it announces files/1, with `batch` batch/1."""
        if invite is None:
            invite = self.mint(1)[0]
        link = self.link(invite) if isinstance(invite, Invite) else invite
        caps = ((FILES_CAP,) if files else ()) + ((BATCH_CAP,) if batch else ())
        mc = MemberConnection(link, name, self.now, rng=self.rng, caps=caps)
        self._labels += 1
        peer = Peer(
            label=label or f"p{self._labels}",
            name=name,
            link=link,
            mc=mc,
            invite=invite if isinstance(invite, Invite) else None,
            joined_at=self.now,
            caps=caps,
        )
        self.peers.append(peer)
        self._attach(peer, mc)
        if pump:
            self.pump()
        return peer

    def resume(
        self, peer: Peer, *, pump: bool = True, state: ResumeState | None = None
    ) -> MemberConnection:
        """The member dials again with its resume state (the one from its last connection).
        The new connection starts reading and writing normally (holds are cleared)."""
        if state is None:
            state = peer.mc.resume_state()
        assert state is not None, "nothing to resume"
        mc = MemberConnection(
            peer.link, peer.name, self.now, resume=state, rng=self.rng, caps=peer.caps
        )
        peer.inbox.clear()
        peer.outbox.clear()
        peer.hold_in = peer.hold_out = False
        self._attach(peer, mc)
        if pump:
            self.pump()
        return mc

    def _attach(self, peer: Peer, mc: MemberConnection) -> None:
        peer.mc = mc
        peer.connections.append(mc)
        peer.conn_events.append([])
        conn_id = self.room.open_connection(self.now)
        peer.conn_id = conn_id
        peer.conn_ids.append(conn_id)
        if conn_id is None:
            # The driver closes the socket at once: to the member it is a dropped connection.
            peer.refused_at_door = True
            peer.transport_open = False
            mc.data_to_send()
            mc.connection_lost(self.now)
            self._drain_events(peer)
            return
        peer.transport_open = True
        self.by_conn[conn_id] = peer

    # ------------------------------------------------------------------ raw connections

    def open_raw(self) -> int:
        conn_id = self.room.open_connection(self.now)
        assert conn_id is not None
        self.pump()  # as a driver does: an arrival may push out another connection
        return conn_id

    def feed_raw(self, conn_id: int, data: bytes) -> list[Send | Disconnect]:
        """Feed one message on a connection the test drives by hand; returns what the room
        said back to that connection. `room.receive` must never raise, whatever `data` is."""
        self.wire.append(data)
        self.room.receive(conn_id, data, self.now)
        self.pump()
        return self.raw.get(conn_id, [])

    def raw_disconnected(self, conn_id: int) -> Disconnect | None:
        for item in self.raw.get(conn_id, []):
            if isinstance(item, Disconnect):
                return item
        return None

    # ------------------------------------------------------------------ actions

    def say(self, peer: Peer, text: str, *, pump: bool = True) -> int:
        ref = peer.mc.say(text)
        peer.said[ref] = text
        if pump:
            self.pump()
        return ref

    def share(
        self, peer: Peer, contents: list[bytes], name: str = "files", *, pump: bool = True,
        note: str | None = None, prefix: str = "f",
    ) -> int:
        """`peer` shares files with these contents; returns the ref."""
        ref = peer.mc.files.share(name, manifest(contents, prefix), note=note)
        peer.disk.shares[ref] = contents
        if pump:
            self.pump()
        return ref

    def host_share(self, contents: list[bytes], name: str = "files", prefix: str = "f") -> int:
        info = self.room.files.share(name, manifest(contents, prefix), self.now)
        self.host_disk.offers[info.id] = contents
        self.pump()
        return info.id

    def fetch(self, peer: Peer, offer: int, file: int, contents: list[bytes], **kw: int) -> int:
        """`peer` fetches; every chunk it gets is checked against `contents[file]`."""
        x = peer.mc.files.fetch(offer, file, **kw)
        peer.disk.expect[x] = contents[file]
        self.pump()
        return x

    def offer_of(self, peer: Peer, ref: int) -> int:
        (acc,) = [ev for ev in peer.events if isinstance(ev, ShareAccepted) and ev.ref == ref]
        return acc.offer_id

    def host_say(self, text: str, *, pump: bool = True) -> TranscriptEntry:
        entry = self.room.say(text, self.now)
        if pump:
            self.pump()
        return entry

    def leave(self, peer: Peer) -> None:
        peer.mc.leave()
        self._drain_events(peer)
        self.pump()

    def close(self, summary: str | None = None) -> None:
        self.room.close(summary, self.now)
        self.pump()

    def remove(self, member_id: int, reason: str | None = None) -> TranscriptEntry:
        """The host removes a member (connected or not) for good."""
        entry = self.room.remove(member_id, reason, self.now)
        self.pump()
        return entry

    def drop(self, peer: Peer, *, room_notices: bool = True, pump: bool = True) -> None:
        """The transport under `peer` dies; whatever was in flight is lost. With
        `room_notices=False` only the member notices (a half-open TCP connection): the room
        keeps the connection until its keepalive gives up or a resume replaces it."""
        if not peer.transport_open:
            return
        peer.inbox.clear()
        peer.outbox.clear()
        peer.transport_open = False
        peer.mc.connection_lost(self.now)
        self._drain_events(peer)
        if room_notices and peer.conn_id is not None:
            self.room.connection_lost(peer.conn_id, self.now)
        if pump:
            self.pump()

    def send_now(self, peer: Peer) -> None:
        """Deliver what the member has queued (e.g. its handshake message 1) without pumping,
        so a test can hold what comes after."""
        self._flush_member(peer)

    def release(self, peer: Peer) -> None:
        """Deliver what was held for or from `peer`, and stop holding."""
        peer.hold_in = peer.hold_out = False
        inbox, peer.inbox = peer.inbox, []
        outbox, peer.outbox = peer.outbox, []
        for data in outbox:
            if peer.transport_open and peer.conn_id is not None:
                self.room.receive(peer.conn_id, data, self.now)
        for data in inbox:
            if peer.transport_open:
                self._deliver_to_member(peer, data)
        self.pump()

    # ------------------------------------------------------------------ time

    def deadlines(self) -> list[float]:
        found = [self.room.next_deadline()]
        found += [p.mc.next_deadline() for p in self.peers if p.transport_open]
        return [d for d in found if d is not None]

    def fire(self) -> None:
        """Run every timer at the current time, then let traffic settle."""
        self.room.handle_timer(self.now)
        for peer in self.peers:
            if peer.transport_open:
                peer.mc.handle_timer(self.now)
                self._drain_events(peer)
        self.pump()

    def tick(self, dt: float) -> None:
        """Let `dt` seconds pass with the network up: every deadline fires at its time."""
        target = self.now + dt
        for _ in range(100_000):
            found = self.deadlines()
            if not found or min(found) > target:
                break
            self.now = max(self.now, min(found))
            self.fire()
            after = self.deadlines()
            # After handle_timer(now) nothing may still be due at `now`: a deadline that does
            # not move would spin a real driver's timer loop.
            assert not after or min(after) > self.now, (
                f"a deadline did not advance past {self.now}: {sorted(after)[:3]}"
            )
        else:
            raise AssertionError("too many timer firings")
        self.now = target

    def jump(self, dt: float) -> None:
        """The whole machine slept for `dt` seconds: one timer call at the new time."""
        self.now += dt
        self.fire()

    # ------------------------------------------------------------------ the wire

    def pump(self, max_rounds: int = 1_000_000) -> None:
        for _ in range(max_rounds):
            if not self._step():
                return
        raise AssertionError("the network never went quiet")

    def _step(self) -> bool:
        moved = False
        for peer in list(self.peers):
            self._drain_events(peer)  # what local calls (fetch, share) emitted
            moved |= self._flush_member(peer)
        out = self.room.data_to_send()
        if out:
            moved = True
        for item in out:
            self._route(item)
        moved |= self._drive_host_files()
        # The bulk lane, after everything above: what a relay does when its queues are low.
        for conn_id in self.room.bulk_connections() if self.bulk_enabled else ():
            peer = self.by_conn.get(conn_id)
            if peer is not None and peer.hold_in:
                continue  # the member stopped reading: its queue is full, nothing is pulled
            sealed = self.room.pull_bulk(conn_id, BULK_BATCH)
            assert 0 < sealed <= BULK_BATCH + MAX_FRAME
            self.bulk_out.append((conn_id, sealed))
            moved = True
            for item in self.room.data_to_send():
                self._route(item)
        for peer in list(self.peers):
            if peer.transport_open and not peer.hold_out and peer.mc.has_bulk():
                moved |= peer.mc.pull_bulk(BULK_BATCH) > 0
                self._flush_member(peer)
        if self.room.closed and self.close_seq is None:
            self.close_seq = self.room.last_seq
        return moved

    def _drive_host_files(self) -> bool:
        events = self.room.files.take_events()
        for ev in events:
            drive_files(self.host_disk, self.room.files, ev)
        return bool(events)

    def _flush_member(self, peer: Peer) -> bool:
        data = peer.mc.data_to_send()
        if not peer.transport_open or peer.conn_id is None:
            return False
        peer.sent.extend(data)
        self.wire.extend(data)
        for item in data:
            assert len(item) <= MAX_FRAME
            if peer.hold_out:
                peer.outbox.append(item)
            else:
                self.room.receive(peer.conn_id, item, self.now)
        if peer.mc.state in (MemberState.CLOSED, MemberState.ERROR):
            # The member is done with this connection: its driver closes the socket.
            peer.transport_open = False
            self.room.connection_lost(peer.conn_id, self.now)
            return True
        return bool(data)

    def _route(self, item: Send | Disconnect) -> None:
        self.room_out.append(item)
        if isinstance(item, Send):
            assert len(item.data) <= MAX_FRAME, "a Send larger than MAX_FRAME"
            self.wire.append(item.data)
        peer = self.by_conn.get(item.conn)
        if peer is None or peer.conn_id != item.conn or not peer.transport_open:
            self.raw.setdefault(item.conn, []).append(item)
            return
        if isinstance(item, Send):
            if peer.hold_in:
                peer.inbox.append(item.data)
            else:
                self._deliver_to_member(peer, item.data)
        else:
            peer.disconnects.append(item)
            peer.transport_open = False
            peer.inbox.clear()
            peer.outbox.clear()
            peer.mc.data_to_send()
            peer.mc.connection_lost(self.now)
            self._drain_events(peer)

    def _deliver_to_member(self, peer: Peer, data: bytes) -> None:
        peer.received.append(data)
        try:
            peer.mc.receive_data(data, self.now)
        except RemoteProtocolError as exc:
            peer.errors.append(exc)
        self._drain_events(peer)
        if peer.drain_each:
            self._flush_member(peer)

    def _drain_events(self, peer: Peer) -> None:
        while (ev := peer.mc.next_event()) is not None:
            peer.record(ev)
        if peer.disk.auto_read and peer.disk.reads:
            serve_reads(peer.disk)

    # ------------------------------------------------------------------ checks

    def check(self, peers: Iterable[Peer] | None = None) -> None:
        """Every member's view agrees with the room's transcript: same total order, no gap, no
        duplicate, says accepted at most once and as sent, nothing after the room closed."""
        room_entries = {e.seq: e for e in self.room.entries_since(0)}
        for peer in self.peers if peers is None else peers:
            check_peer(peer, room_entries, self.close_seq)
            seqs = list(peer.accepted.values())
            assert len(seqs) == len(set(seqs)), f"{peer.label}: two says accepted at one seq"
            for ref, seq in peer.accepted.items():
                assert peer.accept_count[ref] == 1, f"{peer.label}: say {ref} accepted twice"
                assert ref not in peer.rejected, f"{peer.label}: say {ref} accepted and rejected"
                entry = room_entries.get(seq)
                if entry is not None:
                    assert entry.kind == "chat" and entry.sender == peer.member_id
                    assert entry.text == peer.said[ref]
            if peer.member_id is None:
                continue
            # No say is doubled: the room holds at most as many copies of a text from this
            # member as the member said it (and was not told it was rejected).
            stamped: dict[str, int] = {}
            for e in room_entries.values():
                if e.kind == "chat" and e.sender == peer.member_id:
                    assert e.text is not None
                    stamped[e.text] = stamped.get(e.text, 0) + 1
            said: dict[str, int] = {}
            for ref, text in peer.said.items():
                if ref not in peer.rejected:
                    said[text] = said.get(text, 0) + 1
            for text, n in stamped.items():
                assert n <= said.get(text, 0), f"{peer.label}: {text!r} stamped {n} times"
        if self.room.closed:
            assert self.room.data_to_send() == []
            for peer in self.peers:
                assert not peer.transport_open or peer.refused_at_door


def check_peer(
    peer: Peer, room_entries: dict[int, TranscriptEntry], close_seq: int | None
) -> None:
    assert not peer.errors, f"{peer.label} saw protocol errors: {peer.errors!r}"
    expected = None
    for conn_events in peer.conn_events:
        ends = [i for i, ev in enumerate(conn_events) if isinstance(ev, ConnectionEnded)]
        assert len(ends) <= 1, f"{peer.label}: a connection ended twice"
        if ends:
            assert ends[0] == len(conn_events) - 1, f"{peer.label}: events after the end"
        for ev in conn_events:
            if isinstance(ev, Welcomed):
                if not ev.resumed:
                    expected = 1
                continue
            if isinstance(ev, RoomEvent) and ev.seq == 0:
                assert ev.kind == "history-truncated" and ev.first_seq is not None
                assert expected is not None and ev.first_seq > expected
                expected = ev.first_seq
                continue
            if not isinstance(ev, ChatMessage | RoomEvent | FileOffer | FileOfferEnded):
                continue
            assert expected is not None, f"{peer.label}: transcript entry before welcome"
            assert ev.seq == expected, f"{peer.label}: got seq {ev.seq}, expected {expected}"
            expected += 1
            if close_seq is not None:
                assert ev.seq <= close_seq, f"{peer.label}: delivered after the room closed"
            entry = room_entries.get(ev.seq)
            if entry is None:
                continue  # dropped by the transcript cap since
            if isinstance(ev, FileOffer):
                assert entry.offer is not None and entry.event == "file-offer"
                assert dataclasses.replace(ev.offer, files=()) == entry.offer
                assert entry.ts == ev.offer.ts
                stamped = _frames.decode_frame(entry.frame)
                assert isinstance(stamped, _frames.Offer) and stamped.files == ev.offer.files
                continue
            assert entry.ts == ev.ts
            if isinstance(ev, FileOfferEnded):
                assert entry.offer is not None and entry.event == "file-offer-ended"
                assert (ev.offer_id, ev.sharer, ev.reason) == (
                    entry.offer.id,
                    entry.offer.sharer,
                    entry.summary,
                )
                continue
            if isinstance(ev, ChatMessage):
                assert entry.kind == "chat"
                assert (entry.sender, entry.text) == (ev.sender_id, ev.text)
            else:
                assert entry.kind == "event"
                assert (entry.event, entry.member, entry.name, entry.summary) == (
                    ev.kind,
                    ev.member_id,
                    ev.name,
                    ev.summary,
                )


class FakeHost:
    """A hand-driven host for one MemberConnection, to feed it crafted (but properly
    encrypted) handshake replies and frames. Built from the core's own Noise and channel
    pieces: a test double of the room that can say things a real room never would."""

    def __init__(self, link: JoinLink, rng: DetRng | None = None) -> None:
        self.link = link
        self.rng = rng or DetRng(b"fake-host")
        self.channel: Channel | None = None

    def answer(self, msg1: bytes, payload: bytes, *, psk: bytes | None = None) -> bytes:
        """Handshake message 2 carrying `payload` (any bytes) for member message 1 `msg1`."""
        hs = new_handshake(
            initiator=False,
            tunnel_id=self.link.tunnel_id,
            psk=self.link.psk if psk is None else psk,
            rng=self.rng,
        )
        hs.read_message(msg1[1 + ID_LEN :])
        reply = hs.write_message(payload[: MAX_PLAINTEXT - 32])  # what fits in one message
        send, recv = hs.split()
        self.channel = Channel(send, recv)
        return bytes([MSG2_NOISE]) + reply

    def welcome(self, msg1: bytes, **overrides: object) -> bytes:
        fields: dict[str, object] = {
            "goal": "the goal",
            "you": 2,
            "name": "ana",
            "roster": (MemberEntry(1, "host", True, True), MemberEntry(2, "ana", False, True)),
            "last": 0,
            "first": 1,
            "ticket": bytes(32),
            "resumed": False,
            "limits": {"text": 32768},
        }
        fields.update(overrides)
        return self.answer(msg1, _frames.Welcome(**fields).encode())  # type: ignore[arg-type]

    def seal(self, plaintext: bytes) -> bytes:
        """Seal up to MAX_PLAINTEXT bytes of `plaintext` (more cannot be one Noise message)."""
        assert self.channel is not None
        return self.channel.seal(plaintext[:MAX_PLAINTEXT])

    def frame(self, frame: _frames.Frame) -> bytes:
        return self.seal(frame.encode())

    def open(self, data: bytes) -> _frames.Frame:
        assert self.channel is not None
        return self.channel.open(data)


def seal_as_member(peer: Peer, plaintext: bytes) -> bytes:
    """Seal `plaintext` with the member's own session keys: what a modified client could send.
    Reaches into the MemberConnection because the public API only seals valid frames."""
    channel = peer.mc._channel
    assert channel is not None, "the member has no session yet"
    return channel.seal(plaintext[:MAX_PLAINTEXT])


def craft_msg1(
    link: JoinLink,
    payload: bytes,
    *,
    version: int = 1,
    key_id: bytes | None = None,
    rng: DetRng | None = None,
) -> bytes:
    """Handshake message 1 made with the link's real secret but carrying any `payload` as the
    hello: reaches the room's hello parsing, which random bytes never would."""
    hs = new_handshake(
        initiator=True, tunnel_id=link.tunnel_id, psk=link.psk, rng=rng or DetRng(b"craft")
    )
    noise = hs.write_message(payload[: MAX_PLAINTEXT - 32])
    return bytes([version]) + (link.invite_id if key_id is None else key_id) + noise
