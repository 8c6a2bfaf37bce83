"""Files (spec "Files"): negotiation, offers and their ends, transfers through the host with
credit, the bulk lane, resume, caps and bad input. Through the public API, with fake `now`."""

from __future__ import annotations

import hashlib
import random

import pytest
from harness import FakeHost, Net, Peer, grant_all, manifest, seal_as_member, serve_reads

from tunnelproto import (
    CLOSE_PROTOCOL_ERROR,
    FILES_CAP,
    MAX_CHUNK,
    MAX_MEMBER_OFFERS,
    MAX_MEMBER_TRANSFERS,
    MAX_OFFER_BYTES,
    MAX_OFFER_FILES,
    ChatMessage,
    ChunkReceived,
    FileEntry,
    FileList,
    FileListFailed,
    FileOffer,
    FileOfferEnded,
    LocalProtocolError,
    MemberConnection,
    MemberState,
    ReadRequest,
    RemoteProtocolError,
    RoomConfig,
    RoomEvent,
    ShareAccepted,
    ShareRejected,
    TransferInfo,
    _frames,
)
from tunnelproto._files import READ_SIZE, share_frames

WINDOW = 256 * 1024


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def net_with(**config: object) -> Net:
    return Net(config=RoomConfig(**config))  # type: ignore[arg-type]


def events_of(peer: Peer, cls: type) -> list:  # type: ignore[type-arg]
    return [ev for ev in peer.events if isinstance(ev, cls)]


def host_buffered(net: Net) -> int:
    """Bytes the host holds for transfers (received from sharers, not yet sealed onward)."""
    return sum(t.received - t.sent for t in net.room.files._transfers.values())


# ---------------------------------------------------------------------------- negotiation


def test_files_are_on_only_where_both_sides_announce_them() -> None:
    net = Net()
    ana, old = net.join("ana", files=True), net.join("old")
    assert ana.mc.files.enabled and not old.mc.files.enabled
    assert ana.mc.limits["file_window"] == RoomConfig().file_window
    assert "file_window" not in old.mc.limits
    with pytest.raises(LocalProtocolError) as info:
        old.mc.files.share("x", manifest([b"x"]))
    assert info.value.code == "no-files"


def test_a_member_without_files_sees_generic_events_in_the_same_order() -> None:
    net = Net()
    ana, old = net.join("ana", files=True), net.join("old")
    ref = net.share(ana, [b"hello", b"world!"], "greetings")
    oid = net.offer_of(ana, ref)
    net.say(old, "old still chats")
    ana.mc.files.unshare(oid)
    net.pump()
    offer_ev, end_ev = [e for e in old.entries if isinstance(e, RoomEvent)][-2:]
    assert (offer_ev.kind, offer_ev.member_id, offer_ev.name) == ("file-offer", ana.member_id, "ana")
    assert offer_ev.summary == "greetings (2 files, 11 bytes)"
    assert (end_ev.kind, end_ev.summary) == ("file-offer-ended", "withdrawn")
    # Ana sees the same seqs as offer frames.
    (offered,) = events_of(ana, FileOffer)
    (ended,) = events_of(ana, FileOfferEnded)
    assert (offered.seq, ended.seq) == (offer_ev.seq, end_ev.seq)
    assert old.texts[-1] == "old still chats"
    net.check()


def test_file_frames_from_a_member_without_files_are_unexpected() -> None:
    net = Net()
    old = net.join("old")
    net.room.receive(old.conn_id or 0, seal_as_member(old, _frames.Fetch(
        x=1, offer=1, file=0, at=0, credit=10).encode()), net.now)
    net.pump()
    assert [d.code for d in old.disconnects] == [CLOSE_PROTOCOL_ERROR]


def test_a_member_refuses_file_frames_it_did_not_negotiate() -> None:
    net = Net()
    link = net.link(net.mint()[0])  # the Net that minted the invite keeps its link
    mc = MemberConnection(link, "ana", 0.0, caps=(FILES_CAP,))
    host = FakeHost(link)
    mc.receive_data(host.welcome(mc.data_to_send()[0]), 0.0)  # no caps in the welcome
    assert not mc.files.enabled
    with pytest.raises(RemoteProtocolError) as info:
        mc.receive_data(host.frame(_frames.Pull(x=1, offer=1, file=0, at=0, credit=1)), 0.0)
    assert info.value.code == "unexpected"


# ---------------------------------------------------------------------------- offers


def test_an_offer_reaches_everyone_in_the_total_order() -> None:
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [b"a" * 10, b"bb"]
    ref = net.share(ana, contents, "stuff", note="the fixtures")
    (acc,) = events_of(ana, ShareAccepted)
    assert acc.ref == ref
    for peer in (ana, bob):
        (ev,) = events_of(peer, FileOffer)
        info = ev.offer
        assert (info.id, info.sharer, info.name, info.note) == (acc.offer_id, ana.member_id,
                                                              "stuff", "the fixtures")
        assert (info.count, info.total, info.files) == (2, 12, tuple(manifest(contents)))
        assert ev.seq == acc.seq
    entry = net.room.entries_since(acc.seq - 1)[0]
    assert entry.event == "file-offer" and entry.offer is not None
    assert (entry.offer.id, entry.offer.count, entry.offer.files) == (acc.offer_id, 2, ())
    assert [o.id for o in net.room.files.offers()] == [acc.offer_id]
    assert [o.id for o in bob.mc.files.offers()] == [acc.offer_id]
    net.check()


def test_a_long_manifest_travels_in_pages_both_ways() -> None:
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    entries = [
        FileEntry(f"{'d' * 100}/{i:04d}-{'n' * 100}.txt", i, hashlib.sha256(b"%d" % i).digest())
        for i in range(MAX_OFFER_FILES)
    ]
    frames = share_frames(1, "big", None, tuple(entries))
    assert len(frames) > 2 and all(len(fr.encode()) <= 65519 for fr in frames)
    ref = ana.mc.files.share("big", entries)
    ana.disk.shares[ref] = [bytes(i) for i in range(MAX_OFFER_FILES)]
    net.pump()
    oid = net.offer_of(ana, ref)
    (ev,) = events_of(bob, FileOffer)
    assert ev.offer.count == MAX_OFFER_FILES and 0 < len(ev.offer.files) < MAX_OFFER_FILES
    assert net.room.files.offer(oid).files == tuple(entries)  # type: ignore[union-attr]
    with pytest.raises(LocalProtocolError) as info:
        bob.mc.files.fetch(oid, MAX_OFFER_FILES - 1)
    assert info.value.code == "unlisted"
    bob.mc.files.request_files(oid)
    net.pump()
    (listed,) = events_of(bob, FileList)
    assert listed.offer_id == oid and listed.files == tuple(entries)
    # Now every file can be fetched.
    x = bob.mc.files.fetch(oid, 900)
    net.pump()
    assert x in bob.disk.complete and bob.disk.received[x] == bytes(900)


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        ([], "bad-offer"),
        ([FileEntry("a", 1, bytes(32))] * 2, "bad-offer"),
        ([FileEntry("a", 1, bytes(31))], "bad-offer"),
        ([FileEntry("a", MAX_OFFER_BYTES + 1, bytes(32))], "offer-too-large"),
        ([FileEntry(f"f{i}", 0, bytes(32)) for i in range(MAX_OFFER_FILES + 1)], "offer-too-large"),
        ([FileEntry("/etc/passwd", 1, bytes(32))], "bad-path"),
        ([FileEntry("a/../b", 1, bytes(32))], "bad-path"),
        ([FileEntry("./a", 1, bytes(32))], "bad-path"),
        ([FileEntry("a//b", 1, bytes(32))], "bad-path"),
        ([FileEntry("a/", 1, bytes(32))], "bad-path"),
        ([FileEntry("C:/x", 1, bytes(32))], "bad-path"),
        ([FileEntry("a\\b", 1, bytes(32))], "bad-path"),
        ([FileEntry("a\x00b", 1, bytes(32))], "bad-path"),
        ([FileEntry("a\nb", 1, bytes(32))], "bad-path"),
        ([FileEntry("/".join(["d"] * 33), 1, bytes(32))], "bad-path"),
        ([FileEntry("x" * 256, 1, bytes(32))], "bad-path"),
        ([FileEntry("/".join(["y" * 200] * 6), 1, bytes(32))], "bad-path"),
        ([FileEntry(f"{'p' * 250}/{i}", 0, bytes(32)) for i in range(1000)], "offer-too-large"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_bad_manifest_is_refused_by_the_member_and_by_the_room(
    entries: list[FileEntry], code: str
) -> None:
    net = Net()
    ana = net.join("ana", files=True)
    with pytest.raises(LocalProtocolError) as info:
        ana.mc.files.share("bad", entries)
    assert info.value.code == code
    with pytest.raises(LocalProtocolError) as info:
        net.room.files.share("bad", entries, net.now)
    assert info.value.code == code
    # A modified client that sends it anyway is refused by the room, with the same code, and
    # stays connected; the room keeps nothing of it.
    if entries and sum(len(e.path) for e in entries) < 60_000:
        ref = ana.mc._take_ref()
        count, total = len(entries), sum(e.size for e in entries)
        share = _frames.Share(ref=ref, name="bad", count=count, total=total, files=tuple(entries))
        data = share.encode() if len(entries[0].sha256) == 32 else None
        if data is not None:
            net.room.receive(ana.conn_id or 0, seal_as_member(ana, data), net.now)
            net.pump()
            seat = net.room._seats[ana.member_id or 0]
            assert seat.refused[ref].code == code
            assert ana.is_open and not net.room.files.offers()


def test_offer_names_and_notes_are_bounded() -> None:
    net = Net()
    ana = net.join("ana", files=True)
    for name, note in (("", None), (" ", None), ("n" * 256, None), ("ok", "x" * 1001)):
        with pytest.raises(LocalProtocolError) as info:
            ana.mc.files.share(name, manifest([b"x"]), note=note)
        assert info.value.code == "bad-offer"


def test_live_offers_are_capped_per_member_and_per_room() -> None:
    net = Net()
    ana = net.join("ana", files=True)
    for i in range(MAX_MEMBER_OFFERS):
        net.share(ana, [b"%d" % i])
    with pytest.raises(LocalProtocolError) as info:
        ana.mc.files.share("one more", manifest([b"x"]))
    assert info.value.code == "offer-limit"
    for i in range(MAX_MEMBER_OFFERS):
        net.host_share([b"%d" % i])
    with pytest.raises(LocalProtocolError) as info:
        net.room.files.share("one more", manifest([b"x"]), net.now)
    assert info.value.code == "offer-limit"


def test_a_share_costs_a_rate_limit_token() -> None:
    net = net_with(rate_burst=2, rate_per_sec=1.0)
    ana = net.join("ana", files=True)
    net.say(ana, "one")
    net.say(ana, "two")
    ref = net.share(ana, [b"x"])
    (rejected,) = events_of(ana, ShareRejected)
    assert (rejected.ref, rejected.code) == (ref, "rate-limited") and rejected.retry_ms
    net.tick(2.0)
    ref = net.share(ana, [b"x"])
    assert [ev.ref for ev in events_of(ana, ShareAccepted)] == [ref]


def test_offers_end_in_the_total_order_for_every_reason() -> None:
    net = net_with(offer_ttl=100.0, grace=30.0)
    ana, bob, cy = (net.join(n, files=True) for n in ("ana", "bob", "cy"))
    withdrawn = net.offer_of(ana, net.share(ana, [b"1"]))
    expires = net.offer_of(ana, net.share(ana, [b"2"]))
    leaves = net.offer_of(bob, net.share(bob, [b"3"]))
    removed = net.offer_of(cy, net.share(cy, [b"4"]))
    ana.mc.files.unshare(withdrawn)
    net.pump()
    net.leave(bob)
    net.remove(cy.member_id or 0, None)
    net.tick(101.0)
    ends = {ev.offer_id: ev.reason for ev in events_of(ana, FileOfferEnded)}
    assert ends == {withdrawn: "withdrawn", leaves: "left", removed: "removed",
                    expires: "expired"}
    assert net.room.files.offers() == [] and ana.mc.files.offers() == []
    net.check([ana])


def test_an_offer_outlives_a_drop_but_not_the_grace_period() -> None:
    net = net_with(grace=30.0)
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    oid = net.offer_of(ana, net.share(ana, [b"x"]))
    net.drop(ana)
    assert [o.id for o in net.room.files.offers()] == [oid]
    net.tick(31.0)
    (ended,) = events_of(bob, FileOfferEnded)
    assert (ended.offer_id, ended.reason) == (oid, "left")


# ---------------------------------------------------------------------------- transfers


@pytest.mark.parametrize("batch", [False, True], ids=["one frame a message", "batch/1"])
@pytest.mark.parametrize("who", ["member to member", "host to member", "member to host"])
def test_a_file_arrives_byte_for_byte_whoever_shares(who: str, batch: bool) -> None:
    net = Net()
    ana = net.join("ana", files=True, batch=batch)
    bob = net.join("bob", files=True, batch=batch)
    contents = [blob(3 * 1024 * 1024 + 17, 1), b"", b"tail"]
    if who == "host to member":
        oid = net.host_share(contents)
    else:
        oid = net.offer_of(ana, net.share(ana, contents))
    if who == "member to host":
        disk = net.host_disk
        x = net.room.files.fetch(oid, 0, net.now)
        disk.expect[x] = contents[0]
        net.pump()
    else:
        disk = bob.disk
        x = net.fetch(bob, oid, 0, contents)
    assert x in disk.complete and bytes(disk.received[x]) == contents[0]
    net.check()


@pytest.mark.parametrize("who", ["member to member", "host to member"])
def test_chunks_are_full_but_the_files_last(who: str) -> None:
    # Every chunk costs each hop the same per-message work whatever its size: reads that are
    # not whole chunks (256 KiB reads made one chunk in five 512 bytes long) cost a quarter
    # more messages than the bytes need.
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(2 * 1024 * 1024 + 5, 3)]
    if who == "host to member":
        oid = net.host_share(contents)
    else:
        oid = net.offer_of(ana, net.share(ana, contents))
    x = net.fetch(bob, oid, 0, contents, credit=8 * MAX_CHUNK)
    assert x in bob.disk.complete
    sizes = [len(ev.data) for ev in events_of(bob, ChunkReceived)]
    assert sizes[:-1] == [MAX_CHUNK] * (len(sizes) - 1)
    assert len(sizes) == -(-len(contents[0]) // MAX_CHUNK)


def test_a_credit_under_a_chunk_is_still_read() -> None:
    # Reads are whole chunks only when the credit allows more than one: a receiver granting
    # less than a chunk at a time is still served (never a wait for more credit).
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(3 * MAX_CHUNK, 4)]
    oid = net.offer_of(ana, net.share(ana, contents))
    bob.disk.auto_grant = False
    x = net.fetch(bob, oid, 0, contents, credit=MAX_CHUNK + 100)
    assert len(bob.disk.received[x]) == MAX_CHUNK + 100
    for _ in range(3):
        grant_all(bob.disk, bob.mc.files)
        net.pump()
    bob.disk.auto_grant = True
    grant_all(bob.disk, bob.mc.files)
    net.pump()
    assert x in bob.disk.complete and bytes(bob.disk.received[x]) == contents[0]


def test_a_receiver_gets_exactly_its_credit_and_the_host_holds_at_most_a_window() -> None:
    net = net_with(file_window=WINDOW)
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(5 * WINDOW, 2)]
    oid = net.offer_of(ana, net.share(ana, contents))
    bob.disk.auto_grant = False
    x = net.fetch(bob, oid, 0, contents, credit=100_000)
    assert len(bob.disk.received[x]) == 100_000
    assert host_buffered(net) == 0
    # The host holds what the sharer sent while the receiver does not read.
    net.bulk_enabled = False
    bob.mc.files.grant(x, WINDOW - 100_000)
    bob.disk.ungranted.clear()
    net.pump()
    assert 0 < host_buffered(net) <= WINDOW
    with pytest.raises(LocalProtocolError):
        bob.mc.files.grant(x, WINDOW)  # over the window
    net.bulk_enabled = True
    net.pump()
    assert len(bob.disk.received[x]) == WINDOW and host_buffered(net) == 0
    bob.disk.auto_grant = True
    grant_all(bob.disk, bob.mc.files)
    net.pump()
    assert x in bob.disk.complete and bytes(bob.disk.received[x]) == contents[0]


def test_a_fetch_can_start_at_a_byte_and_an_empty_rest_completes_at_once() -> None:
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(200_000, 3), b""]
    oid = net.offer_of(ana, net.share(ana, contents))
    x = net.fetch(bob, oid, 0, contents, at=150_001)
    assert bob.disk.starts[x] == 150_001 and bytes(bob.disk.received[x]) == contents[0][150_001:]
    for file, at in ((1, 0), (0, 200_000)):
        y = bob.mc.files.fetch(oid, file, at=at)
        net.pump()
        assert y in bob.disk.complete and y not in bob.disk.received
    with pytest.raises(LocalProtocolError):
        bob.mc.files.fetch(oid, 0, at=200_001)
    with pytest.raises(LocalProtocolError):
        bob.mc.files.fetch(oid, 2)
    with pytest.raises(LocalProtocolError):
        ana.mc.files.fetch(oid, 0)  # her own


def test_concurrent_fetches_are_capped() -> None:
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(100_000, i) for i in range(MAX_MEMBER_TRANSFERS + 1)]
    oid = net.offer_of(ana, net.share(ana, contents))
    bob.disk.auto_grant = False
    for i in range(MAX_MEMBER_TRANSFERS):
        bob.mc.files.fetch(oid, i, credit=10)
    net.pump()
    with pytest.raises(LocalProtocolError) as info:
        bob.mc.files.fetch(oid, MAX_MEMBER_TRANSFERS)
    assert info.value.code == "busy"
    # A client that asks anyway gets an abort, not a transfer.
    raw = _frames.Fetch(x=99, offer=oid, file=4, at=0, credit=10)
    bob.mc.files._fetches[99] = bob.mc.files._fetches[1].__class__(99, oid, 4, 100_000, 0, 10)
    net.room.receive(bob.conn_id or 0, seal_as_member(bob, raw.encode()), net.now)
    net.pump()
    assert bob.disk.aborted[99].code == "busy"
    assert len(net.room.files.transfers()) == MAX_MEMBER_TRANSFERS


def test_a_cancel_stops_the_sharer_and_frees_the_host() -> None:
    net = net_with(file_window=WINDOW)
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(4 * WINDOW, 4)]
    oid = net.offer_of(ana, net.share(ana, contents))
    bob.disk.auto_grant = False
    x = net.fetch(bob, oid, 0, contents)
    reads = len(events_of(ana, ReadRequest))
    bob.mc.files.cancel(x)
    bob.mc.files.grant(x, 1000)  # a late grant is harmless
    net.pump()
    assert net.room.files.transfers() == [] and ana.mc.files.transfers() == []
    assert len(events_of(ana, ReadRequest)) == reads
    assert x not in bob.disk.complete and x not in bob.disk.aborted
    assert ana.is_open and bob.is_open


def test_a_file_that_changed_on_the_sharers_disk_aborts_the_fetch() -> None:
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(2 * READ_SIZE, 5)]
    oid = net.offer_of(ana, net.share(ana, contents))
    ana.disk.auto_read = False
    x = net.fetch(bob, oid, 0, contents)
    ((_, req),) = ana.disk.reads
    ana.mc.files.read_failed(req.transfer, "changed", "the file changed since it was shared")
    net.pump()
    assert bob.disk.aborted[x].code == "changed"
    assert "changed since" in bob.disk.aborted[x].message
    assert ana.mc.files.provide_chunk(req.transfer, req.offset, b"late") is False


def test_the_hosts_reads_fail_the_same_way() -> None:
    net = Net()
    bob = net.join("bob", files=True)
    contents = [blob(READ_SIZE + 5, 6)]
    oid = net.host_share(contents)
    net.host_disk.auto_read = False
    x = net.fetch(bob, oid, 0, contents)
    ((_, req),) = net.host_disk.reads
    with pytest.raises(LocalProtocolError):
        net.room.files.provide_chunk(req.transfer, req.offset + 1, b"x")
    net.room.files.read_failed(req.transfer, "whatever", "disk on fire")
    net.pump()
    assert bob.disk.aborted[x].code == "unreadable"
    assert net.room.files.provide_chunk(req.transfer, req.offset, b"x") is False


def test_an_ended_offer_aborts_its_transfers_and_refuses_new_ones() -> None:
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(3 * 1024 * 1024, 7)]
    oid = net.offer_of(ana, net.share(ana, contents))
    bob.disk.auto_grant = False
    x = net.fetch(bob, oid, 0, contents)
    ana.mc.files.unshare(oid)
    net.pump()
    assert bob.disk.aborted[x].code == "gone"
    assert net.room.files.transfers() == [] and host_buffered(net) == 0
    with pytest.raises(LocalProtocolError) as info:
        bob.mc.files.fetch(oid, 0)
    assert info.value.code == "gone"
    with pytest.raises(LocalProtocolError):
        net.room.files.fetch(oid, 0, net.now)


def test_chat_is_sealed_before_chunks_that_wait() -> None:
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(2 * 1024 * 1024, 8)]
    oid = net.offer_of(ana, net.share(ana, contents))
    net.bulk_enabled = False  # the relay's queues are full of chunks ...
    net.fetch(bob, oid, 0, contents)
    assert bob.conn_id in net.room.bulk_connections()
    assert not events_of(bob, ChunkReceived)
    net.host_say("chat goes first")  # ... and chat still goes out at once
    assert bob.texts[-1] == "chat goes first"
    net.say(ana, "so does a member's")
    assert bob.texts[-1] == "so does a member's"
    net.bulk_enabled = True
    net.pump()
    kinds = [type(ev) for ev in bob.events if isinstance(ev, ChatMessage | ChunkReceived)]
    first_chunk = kinds.index(ChunkReceived)
    assert ChatMessage not in kinds[first_chunk:]
    net.check()


# ---------------------------------------------------------------------------- resume


def test_a_receiver_that_drops_resumes_from_its_last_byte() -> None:
    net = net_with(file_window=WINDOW)
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(6 * WINDOW + 11, 9)]
    oid = net.offer_of(ana, net.share(ana, contents))
    bob.disk.auto_grant = False
    x = net.fetch(bob, oid, 0, contents)
    assert len(bob.disk.received[x]) == WINDOW
    net.drop(bob)
    assert net.room.files.transfers() == []
    # The driver wrote what it got and grants on the new connection, before its welcome.
    net.resume(bob, pump=False)
    bob.disk.auto_grant = True
    grant = bob.disk.ungranted.pop(x)
    bob.mc.files.grant(x, grant)
    net.pump()
    assert x in bob.disk.complete and bytes(bob.disk.received[x]) == contents[0]
    got = sum(len(ev.data) for ev in events_of(bob, ChunkReceived) if ev.transfer == x)
    assert got == len(contents[0])  # nothing was sent twice
    net.check()


def test_a_sharer_that_drops_is_pulled_again_after_its_resume() -> None:
    net = net_with(file_window=WINDOW)
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(6 * WINDOW, 10)]
    oid = net.offer_of(ana, net.share(ana, contents))
    bob.disk.auto_grant = False
    x = net.fetch(bob, oid, 0, contents)
    net.drop(ana)
    (info,) = net.room.files.transfers()
    assert isinstance(info, TransferInfo) and info.parked and info.at == WINDOW
    bob.disk.auto_grant = True
    bob.mc.files.grant(x, bob.disk.ungranted.pop(x))
    net.pump()
    assert len(bob.disk.received[x]) == WINDOW  # nothing comes while ana is away
    net.resume(ana)
    assert x in bob.disk.complete and bytes(bob.disk.received[x]) == contents[0]
    relayed = sum(len(ev.data) for ev in events_of(bob, ChunkReceived))
    assert relayed == len(contents[0])
    net.check()


def test_the_host_receiving_waits_for_a_sharer_that_drops() -> None:
    net = Net()
    ana = net.join("ana", files=True)
    contents = [blob(3 * 1024 * 1024, 11)]
    oid = net.offer_of(ana, net.share(ana, contents))
    net.host_disk.auto_grant = False
    x = net.room.files.fetch(oid, 0, net.now)
    net.host_disk.expect[x] = contents[0]
    net.pump()
    net.drop(ana)
    net.host_disk.auto_grant = True
    net.room.files.grant(x, net.host_disk.ungranted.pop(x))
    net.resume(ana)
    assert x in net.host_disk.complete and bytes(net.host_disk.received[x]) == contents[0]


@pytest.mark.parametrize("lost", ["the share", "the stamped offer"])
def test_a_share_cut_by_a_drop_is_stamped_exactly_once(lost: str) -> None:
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    entries = [FileEntry(f"{'d' * 200}/{i}", 1, bytes(32)) for i in range(600)]
    ref = ana.mc.files.share("many", entries)
    if lost == "the share":
        ana.hold_out = True
    else:
        ana.hold_in = True
    net.pump()
    net.drop(ana)
    net.resume(ana)
    accepted = [ev for ev in events_of(ana, ShareAccepted) if ev.ref == ref]
    assert len(accepted) == 1
    assert len(net.room.files.offers()) == 1 and len(events_of(bob, FileOffer)) == 1
    net.check()


def test_a_listing_cut_by_a_drop_is_asked_again() -> None:
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    entries = [FileEntry(f"{'d' * 200}/{i}", 1, bytes(32)) for i in range(600)]
    ana.mc.files.share("many", entries)
    net.pump()
    (ev,) = events_of(bob, FileOffer)
    bob.hold_in = True
    bob.mc.files.request_files(ev.offer.id)
    net.pump()
    net.drop(bob)
    net.resume(bob)
    (listed,) = events_of(bob, FileList)
    assert listed.files == tuple(entries)


def test_an_offer_that_ends_while_listing_fails_the_listing() -> None:
    net = Net()
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    entries = [FileEntry(f"{'d' * 200}/{i}", 1, bytes(32)) for i in range(600)]
    ana.mc.files.share("many", entries)
    net.pump()
    (ev,) = events_of(bob, FileOffer)
    bob.hold_in = True
    bob.mc.files.request_files(ev.offer.id)
    net.pump()
    bob.inbox.clear()  # the first page is lost ...
    bob.hold_in = False
    ana.mc.files.unshare(ev.offer.id)
    net.pump()
    net.drop(bob)
    net.resume(bob)  # ... and asked again after the offer ended
    (failed,) = events_of(bob, FileListFailed)
    assert failed.offer_id == ev.offer.id


# ---------------------------------------------------------------------------- bad input


def _feed(net: Net, peer: Peer, frame: _frames.Frame) -> None:
    net.room.receive(peer.conn_id or 0, seal_as_member(peer, frame.encode()), net.now)
    net.pump()


def _transfer_in_progress(net: Net) -> tuple[Peer, Peer, int, int, list[bytes]]:
    """Ana shares, bob fetches; ana's driver has not read yet (the pull is open)."""
    ana, bob = net.join("ana", files=True), net.join("bob", files=True)
    contents = [blob(3 * WINDOW, 12)]
    oid = net.offer_of(ana, net.share(ana, contents))
    ana.disk.auto_read = False
    bob.disk.auto_grant = False
    x = net.fetch(bob, oid, 0, contents, credit=100_000)
    ((_, req),) = ana.disk.reads
    return ana, bob, req.transfer, x, contents


@pytest.mark.parametrize(
    ("what", "code"),
    [
        ("a chunk nobody asked for", "bad-chunk"),
        ("a chunk out of order", "bad-chunk"),
        ("a chunk past the file's end", "bad-chunk"),
        ("an empty chunk", "bad-chunk"),
        ("a chunk beyond the credit", "over-credit"),
        ("a chunk for another member's pull", "bad-chunk"),
        ("credit for a fetch never made", "bad-transfer"),
        ("credit over the window", "over-credit"),
        ("a fetch whose id does not grow", "bad-transfer"),
        ("a fetch with credit over the window", "over-credit"),
        ("a manifest page for no share", "unexpected"),
        ("a say between a share and its pages", "unexpected"),
    ],
)
def test_bad_file_frames_cut_only_the_senders_connection(what: str, code: str) -> None:
    net = net_with(file_window=WINDOW)
    ana, bob, hx, x, contents = _transfer_in_progress(net)
    cy = net.join("cy", files=True)
    size = len(contents[0])
    sender, frame = {
        "a chunk nobody asked for": (ana, _frames.Chunk(x=hx + 50, at=0, data=b"x")),
        "a chunk out of order": (ana, _frames.Chunk(x=hx, at=5, data=b"x")),
        "a chunk past the file's end": (ana, _frames.Chunk(x=hx, at=size, data=bytes(1))),
        "an empty chunk": (ana, _frames.Chunk(x=hx, at=0, data=b"")),
        "a chunk beyond the credit": (ana, _frames.Chunk(x=hx, at=0, data=bytes(MAX_CHUNK))),
        "a chunk for another member's pull": (cy, _frames.Chunk(x=hx, at=0, data=b"x")),
        "credit for a fetch never made": (bob, _frames.Credit(x=x + 5, n=1)),
        "credit over the window": (bob, _frames.Credit(x=x, n=WINDOW)),
        "a fetch whose id does not grow": (
            bob, _frames.Fetch(x=x, offer=1, file=0, at=0, credit=1)),
        "a fetch with credit over the window": (
            bob, _frames.Fetch(x=x + 1, offer=1, file=0, at=0, credit=WINDOW + 1)),
        "a manifest page for no share": (
            cy, _frames.Manifest(ref=9, at=1, files=(FileEntry("a", 1, bytes(32)),))),
        "a say between a share and its pages": (cy, _frames.Say(ref=9, text="hi")),
    }[what]
    if what == "a chunk past the file's end":
        t = net.room.files._transfers[hx]
        t.received = t.sent = size  # as if every byte had come
        t.pull_limit = size + 10
    if what == "a chunk beyond the credit":
        net.room.files._transfers[hx].pull_limit = MAX_CHUNK - 1
    if what == "a say between a share and its pages":
        share = _frames.Share(ref=8, name="n", count=2, total=2,
                              files=(FileEntry("a", 1, bytes(32)),))
        _feed(net, cy, share)
    mark = len(net.room_out)
    _feed(net, sender, frame)
    (cut,) = sender.disconnects
    assert cut.code == CLOSE_PROTOCOL_ERROR
    errors = [ev for ev in net.room_out[mark:] if getattr(ev, "conn", None) == sender.conn_id]
    assert errors, what
    others = [p for p in (ana, bob, cy) if p is not sender]
    assert all(p.is_open for p in others)
    assert host_buffered(net) <= WINDOW
    net.host_say("the room goes on")
    assert all(p.texts[-1] == "the room goes on" for p in others)
    if sender is cy:
        # The transfer itself is unharmed.
        assert len(net.room.files.transfers()) == 1


def test_the_error_code_of_a_cut_is_the_specs() -> None:
    """The `error` frame before the close names the spec's code (read by a FakeHost-like
    observer: the member keeps it as the reason of its drop)."""
    net = net_with(file_window=WINDOW)
    ana, _bob, hx, _x, _ = _transfer_in_progress(net)
    _feed(net, ana, _frames.Chunk(x=hx, at=0, data=bytes(MAX_CHUNK + 1)))
    end = ana.last_end()
    assert end is not None and "bad-chunk" in end.message


def test_late_frames_for_an_ended_transfer_are_dropped_quietly() -> None:
    net = net_with(file_window=WINDOW)
    ana, bob, hx, x, _ = _transfer_in_progress(net)
    bob.mc.files.cancel(x)
    net.pump()
    _feed(net, ana, _frames.Chunk(x=hx, at=0, data=b"late"))  # crossed the cancel
    _feed(net, ana, _frames.Abort(x=hx, code="changed", msg="late"))
    _feed(net, bob, _frames.Credit(x=x, n=5))
    _feed(net, bob, _frames.Cancel(x=x))
    assert ana.is_open and bob.is_open and host_buffered(net) == 0
    assert net.room.files.transfers() == []


def test_a_refused_share_does_not_block_the_next_and_is_refused_again_after_resume() -> None:
    net = Net()
    ana = net.join("ana", files=True)
    ref = ana.mc._take_ref()
    bad = _frames.Share(ref=ref, name="x", count=1, total=1,
                        files=(FileEntry("../x", 1, bytes(32)),))
    ana.mc.files._pending[ref] = ((bad,), (1,))  # as a client without local checks would
    _feed(net, ana, bad)
    (rejected,) = events_of(ana, ShareRejected)
    assert (rejected.ref, rejected.code) == (ref, "bad-path")
    ok = net.share(ana, [b"fine"])
    assert [ev.ref for ev in events_of(ana, ShareAccepted)] == [ok]


# ---------------------------------------------------------------------------- a hostile host


def _files_member() -> tuple[MemberConnection, FakeHost]:
    net = Net()
    link = net.link(net.mint()[0])
    mc = MemberConnection(link, "ana", 0.0, caps=(FILES_CAP,))
    host = FakeHost(link)
    mc.receive_data(host.welcome(mc.data_to_send()[0], caps=(FILES_CAP,),
                                 limits={"file_window": 1000}), 0.0)
    assert mc.files.enabled and mc.files.window == 1000
    for data in mc.data_to_send():
        host.open(data)  # keeps the fake host's nonces in step
    return mc, host


def _offer(seq: int, oid: int, sizes: list[int], sharer: int = 1) -> _frames.Offer:
    files = tuple(FileEntry(f"f{i}", n, bytes(32)) for i, n in enumerate(sizes))
    return _frames.Offer(seq=seq, ts=0, from_=sharer, ref=0, id=oid, name="x",
                         count=len(files), total=sum(sizes), files=files)


@pytest.mark.parametrize(
    ("what", "code"),
    [
        ("a chunk nobody asked for", "bad-chunk"),
        ("a chunk beyond the credit", "over-credit"),
        ("a chunk out of order", "bad-chunk"),
        ("a pull with credit over the window", "over-credit"),
        ("a listing nobody asked for", "unexpected"),
        ("an offer with more files than its count", "malformed"),
    ],
)
def test_a_member_refuses_bad_file_frames_from_the_host(what: str, code: str) -> None:
    mc, host = _files_member()
    mc.receive_data(host.frame(_offer(1, 1, [5000])), 0.0)
    x = mc.files.fetch(1, 0, credit=100)
    frame = {
        "a chunk nobody asked for": _frames.Chunk(x=x + 1, at=0, data=b"x"),
        "a chunk beyond the credit": _frames.Chunk(x=x, at=0, data=bytes(101)),
        "a chunk out of order": _frames.Chunk(x=x, at=1, data=b"x"),
        "a pull with credit over the window": _frames.Pull(x=1, offer=1, file=0, at=0,
                                                           credit=1001),
        "a listing nobody asked for": _frames.Listing(offer=1, at=1, files=()),
        "an offer with more files than its count": _frames.Offer(
            seq=2, ts=0, from_=1, ref=0, id=2, name="x", count=0, total=0,
            files=(FileEntry("a", 0, bytes(32)),)),
    }[what]
    with pytest.raises(RemoteProtocolError) as info:
        mc.receive_data(host.frame(frame), 0.0)
    assert info.value.code == code
    assert mc.state is MemberState.ERROR


def test_a_member_bounds_what_a_host_makes_it_remember() -> None:
    mc, host = _files_member()
    for i in range(1, 200):
        mc.receive_data(host.frame(_offer(i, i, [1])), 0.0)
    assert len(mc.files.offers()) == 64
    # Pulls for offers that are not ours are answered with an abort, and cost nothing.
    for data in mc.data_to_send():
        host.open(data)
    for i in range(1, 100):
        mc.receive_data(host.frame(_frames.Pull(x=i, offer=5, file=0, at=0, credit=10)), 0.0)
    answers = [host.open(d) for d in mc.data_to_send()]
    assert {type(a) for a in answers} == {_frames.Abort} and mc.files._pulls == {}


def test_paced_frames_are_the_ones_the_room_asked_for() -> None:
    """What an inbound budget may leave uncharged: chunks inside a pull's credit, and one credit
    per chunk sent; not a chunk out of turn, nor a credit the room did not prompt."""
    net = net_with(file_window=WINDOW)
    ana, bob, hx, x, _ = _transfer_in_progress(net)
    files = net.room.files
    assert files.paced(ana.conn_id or 0, _frames.Chunk(x=hx, at=0, data=b"x" * 1000))
    assert not files.paced(ana.conn_id or 0, _frames.Chunk(x=hx, at=1, data=b"x"))
    assert not files.paced(ana.conn_id or 0, _frames.Chunk(x=hx, at=0, data=bytes(100_001)))
    assert not files.paced(bob.conn_id or 0, _frames.Chunk(x=hx, at=0, data=b"x"))
    assert not files.paced(ana.conn_id or 0, _frames.Chunk(x=hx + 9, at=0, data=b"x"))
    # No chunk has reached bob yet: his credit is not prompted by the room.
    assert not files.paced(bob.conn_id or 0, _frames.Credit(x=x, n=10))
    while ana.disk.reads:  # a read of a whole chunk, then one of the rest
        serve_reads(ana.disk)
        net.pump()
    chunks = events_of(bob, ChunkReceived)
    assert len(chunks) == 2  # 100 000 bytes of credit: a full chunk and the rest
    assert files.paced(bob.conn_id or 0, _frames.Credit(x=x, n=10))
    assert not files.paced(bob.conn_id or 0, _frames.Credit(x=x, n=0))
    assert not files.paced(ana.conn_id or 0, _frames.Credit(x=x, n=10))
    net.bulk_enabled = False  # what comes next waits at the host, unsent
    ana.disk.auto_read = True
    bob.disk.ungranted.clear()
    for chunk in chunks:  # a credit per chunk (a driver that drains after each write)
        assert files.paced(bob.conn_id or 0, _frames.Credit(x=x, n=10))
        bob.mc.files.grant(x, len(chunk.data))
        net.pump()
    assert host_buffered(net) > 0
    # Each chunk sent was answered; no chunk went to bob since: another credit is not prompted.
    assert not files.paced(bob.conn_id or 0, _frames.Credit(x=x, n=10))
    net.bulk_enabled = True
    net.pump()
    assert x not in bob.disk.complete  # bob does not grant: the transfer waits for credit
    assert files.paced(bob.conn_id or 0, _frames.Credit(x=x, n=10))
    assert not files.paced(bob.conn_id or 0, _frames.Fetch(x=x + 1, offer=1, file=0, at=0,
                                                           credit=1))
