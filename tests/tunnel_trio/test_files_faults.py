"""File sharing when things go wrong, over real sockets: hostile names, offers that die, a file
that changes on the sharer's disk mid-transfer, and a member whose software has no files/1."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
import trio
from filesharing import leftovers, offer_ended, offer_seen, room_of_three, write_random

from tunnel_trio import files_disk
from tunnel_trio._ws import connect_websocket
from tunnel_trio.session_types import TunnelError
from tunnelproto import MAX_FRAME, FileEntry, JoinLink, MemberConnection, RoomEvent, Welcomed

HASH = hashlib.sha256(b"x").digest()

#: Names a hostile member can put in a manifest (the protocol's shape rules let them through);
#: the receiver's rules refuse each before anything is written.
MEMBER_NAMES = [
    ["CON"],
    ["aux.txt"],
    ["dir/nul.log"],
    ["COM1"],
    ["trailing."],
    ["trailing "],
    ["a<b"],
    ['q"uote'],
    ["pi|pe"],
    ["que?ry"],
    ["st*r"],
    [".git/config"],
    ["hooks/.git/x"],
    ["invoice\u202etxt.exe"],  # a bidi override disguising the extension
    ["zero\u200bwidth"],
    ["README.md", "readme.md"],  # a case clash
    ["a", "a/b"],  # a file and a folder of the same name
]
#: Names only a hostile host could send (the room itself refuses them from members).
HOST_NAMES = [
    ["../evil.txt"],
    ["a/../../evil.txt"],
    ["/etc/passwd"],
    ["C:evil.txt"],
    ["back\\slash"],
    ["nul\x00byte"],
    ["esc\x1b[31m"],
    [".."],
    [""],
]


def entries(names):
    return [FileEntry(name, 1, HASH) for name in names]


async def _offered_by_member(ben, names):
    """ben's connection offers a manifest by hand, as a hostile member's software would."""
    conn = ben.guest.conn
    before = {o.id for o in conn.files.offers()}
    conn.files.share("evil", entries(names))
    ben.guest.flush()
    with trio.fail_after(30):
        while True:
            new = [o.id for o in conn.files.offers() if o.id not in before]
            if new:
                return new[0]
            await trio.sleep(0.01)


@pytest.mark.parametrize("names", MEMBER_NAMES, ids=repr)
async def test_every_bad_name_from_a_hostile_member_is_refused(nursery, tmp_path, names):
    host, ben, cy, _ = await room_of_three(nursery)
    offer_id = await _offered_by_member(ben, names)
    await offer_seen(cy, offer_id)
    dest = tmp_path / "dest"
    for session in (cy, host):
        with pytest.raises(TunnelError, match="cannot be received there"):
            await session.plan_receive(offer_id, str(dest))
        with pytest.raises(TunnelError, match="cannot be received there"):
            await session.receive(offer_id, str(dest))
    assert not dest.exists() or list(dest.iterdir()) == []
    assert cy.receives() == []


@pytest.mark.parametrize("names", HOST_NAMES, ids=repr)
async def test_every_bad_name_from_a_hostile_host_is_refused(nursery, tmp_path, names):
    host, ben, cy, _ = await room_of_three(nursery)
    # The room checks members' manifests; a hostile host (here: the room's own publishing,
    # called past its checks) sends whatever it likes.
    info = host.room.files._publish(ben.self_member.id, "ben", 0, "evil", None,
                                    tuple(entries(names)), len(names), trio.current_time())
    host.relay._dispatch()
    await offer_seen(cy, info.id)
    dest = tmp_path / "dest"
    with pytest.raises(TunnelError, match="cannot be received there"):
        await cy.receive(info.id, str(dest))
    assert not dest.exists() or list(dest.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


async def _receiving_a_big_file(nursery, tmp_path):
    """ben shares a 64 MiB file and cy is receiving it (bytes have arrived)."""
    host, ben, cy, _ = await room_of_three(nursery)
    write_random(tmp_path / "big.bin", 64 * 1024 * 1024)
    shared = await ben.share(str(tmp_path / "big.bin"))
    await offer_seen(cy, shared.offer_id)
    await cy.receive(shared.offer_id, str(tmp_path / "in"), wait=0)
    with trio.fail_after(60):
        while not any(r.received_bytes for r in cy.receives()):
            await trio.sleep(0.005)
    return ben, cy, shared


async def test_an_offer_whose_sharer_leaves_ends_and_the_transfer_leaves_nothing(
    nursery, tmp_path
):
    ben, cy, shared = await _receiving_a_big_file(nursery, tmp_path)
    await ben.close()
    ended = await offer_ended(cy, shared.offer_id)
    assert ended.reason.startswith("left")
    with trio.fail_after(60):
        result = await cy.receive(shared.offer_id)
    assert not result.complete and not result.resumable and not result.running
    assert "sharer left" in result.error
    assert list((tmp_path / "in").iterdir()) == []  # no partial file, not even a hidden one
    assert cy.receives() == []
    with pytest.raises(TunnelError, match="sharer left"):
        await cy.plan_receive(shared.offer_id, str(tmp_path / "in"))


async def test_a_receive_called_while_a_cut_one_removes_its_files_waits_for_it(
    nursery, tmp_path, monkeypatch
):
    # The sharer leaves; while the receiver's run removes its partial files (in a worker
    # thread), the agent calls receive again. That call must wait for the run to end and get
    # its result, not start the receive a second time beside it.
    from tunnel_trio import files as files_mod

    removing = threading.Event()
    release = threading.Event()
    real_abort = files_mod._abort

    def slow_abort(writers):
        removing.set()
        release.wait(30)
        real_abort(writers)

    runs = []
    real_run = files_mod.SessionFiles._run_receive

    async def counted_run(self, job):
        runs.append(job.offer_id)
        await real_run(self, job)

    monkeypatch.setattr(files_mod, "_abort", slow_abort)
    monkeypatch.setattr(files_mod.SessionFiles, "_run_receive", counted_run)
    ben, cy, shared = await _receiving_a_big_file(nursery, tmp_path)
    await ben.close()
    with trio.fail_after(60):
        while not removing.is_set():
            await trio.sleep(0.005)
    async with trio.open_nursery() as waiting:
        results = []

        async def receive_again():
            results.append(await cy.receive(shared.offer_id))

        waiting.start_soon(receive_again)
        await trio.sleep(0.05)
        release.set()
    (result,) = results
    assert runs == [shared.offer_id]  # one run, never a second beside the first
    assert not result.running and not result.complete and not result.resumable
    assert "sharer left" in result.error
    assert list((tmp_path / "in").iterdir()) == []


async def test_an_offer_expires_after_its_ttl(nursery, tmp_path):
    host, ben, cy, _ = await room_of_three(nursery, offer_ttl=2.0)
    (tmp_path / "f.txt").write_text("soon gone")
    shared = await ben.share(str(tmp_path / "f.txt"))
    ended = await offer_ended(cy, shared.offer_id)
    assert ended.reason.startswith("expired")
    assert cy.offers() == [] and ben.offers() == []
    with pytest.raises(TunnelError, match="expired"):
        await cy.receive(shared.offer_id, str(tmp_path / "in"))


async def test_a_file_changed_on_the_sharers_disk_mid_transfer_is_refused_cleanly(
    nursery, tmp_path, monkeypatch
):
    host, ben, cy, _ = await room_of_three(nursery)
    folder = tmp_path / "share"
    write_random(folder / "a-changing.bin", 8 * 1024 * 1024)
    (folder / "b-steady.txt").write_text("steady\n")
    shared = await ben.share(str(folder))
    await offer_seen(cy, shared.offer_id)

    # Hold the sharer's third read of the big file until the file has changed under it.
    reads = 0
    gate = threading.Event()
    real_read = files_disk.ShareReader.read

    def read(self, index, offset, size):
        nonlocal reads
        if index == 0:
            reads += 1
            if reads == 3:
                gate.wait(30)
        return real_read(self, index, offset, size)

    monkeypatch.setattr(files_disk.ShareReader, "read", read)
    await cy.receive(shared.offer_id, str(tmp_path / "in"), wait=0)
    with trio.fail_after(30):
        while reads < 3:
            await trio.sleep(0.005)
    with open(folder / "a-changing.bin", "r+b") as f:
        f.write(b"changed!")
    os.utime(folder / "a-changing.bin", ns=(1, 1))  # and its mtime, whatever the clock says
    gate.set()
    with trio.fail_after(60):
        result = await cy.receive(shared.offer_id)
    assert [w.path for w in result.written] == ["b-steady.txt"]
    assert [f.path for f in result.failed] == ["a-changing.bin"]
    assert "changed" in result.failed[0].reason
    assert not result.complete and not result.resumable
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["b-steady.txt"]
    assert leftovers(tmp_path / "in") == []


async def test_a_sharer_that_lies_about_a_hash_gets_nothing_written(nursery, tmp_path):
    host, ben, cy, _ = await room_of_three(nursery)
    src = tmp_path / "f.bin"
    write_random(src, 200_000)
    prepared = await ben.prepare_share(str(src))
    # Rewrite the file after the scan, keeping its size and its mtime: the sharer's checks
    # cannot see it, so the bytes sent are not the ones offered.
    stat = os.stat(src)
    with open(src, "r+b") as f:
        f.write(b"tampered")
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    shared = await ben.share(prepared)
    await offer_seen(cy, shared.offer_id)
    result = await cy.receive(shared.offer_id, str(tmp_path / "in"))
    assert not result.complete and result.written == ()
    assert "another SHA-256" in result.failed[0].reason
    assert list((tmp_path / "in").iterdir()) == []


async def test_a_member_without_files_still_chats_and_sees_offers_as_events(nursery, tmp_path):
    host, ben, _, _ = await room_of_three(nursery)
    (invite,) = host.invite(1)
    parsed = JoinLink.parse(invite.join_link)
    ws = await connect_websocket(parsed.websocket_url, max_message_size=MAX_FRAME)
    old = MemberConnection(parsed, "old", trio.current_time())  # no caps: an older member
    await ws.send_many(old.data_to_send())
    old.receive_data(await ws.receive(), trio.current_time())
    assert isinstance(old.next_event(), Welcomed)
    assert not old.files.enabled
    await ws.send_many(old.data_to_send())  # the confirming ack

    (tmp_path / "f.txt").write_text("hi")
    shared = await ben.share(str(tmp_path / "f.txt"))
    await ben.say("did you get it?")
    seen: list[object] = []
    with trio.fail_after(30):
        while not any(getattr(e, "text", None) == "did you get it?" for e in seen):
            old.receive_data(await ws.receive(), trio.current_time())
            while (event := old.next_event()) is not None:
                seen.append(event)
            await ws.send_many(old.data_to_send())
    offers = [e for e in seen if isinstance(e, RoomEvent) and e.kind == "file-offer"]
    assert offers and offers[0].seq == shared.seq and "f.txt" in offers[0].summary
    old.say("yes, as an event")
    await ws.send_many(old.data_to_send())
    since = 0
    with trio.fail_after(30):
        while True:
            result = await ben.listen(since, 5.0)
            since = result.last_seq
            if any(m.text == "yes, as an event" for m in result.messages):
                break
    await ws.aclose()
