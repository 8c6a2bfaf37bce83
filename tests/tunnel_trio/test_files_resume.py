"""A large file member to member while connections drop: it resumes from the last byte
delivered, nothing delivered is sent again, and the host holds a bounded amount throughout.
(The 1 GiB case is measured in bench/files.py; this one is kept small for CI time.)"""

from __future__ import annotations

import threading

import trio
from dropproxy import DropProxy
from filesharing import leftovers, offer_seen, room_of_three, sha256_of, via, write_random

import tunnel_trio.files as files_module
from tunnel_trio.files import RECEIVE_CREDIT
from tunnel_trio.session import join, open_host

SIZE = 64 * 1024 * 1024


def host_holds(host) -> int:
    """File bytes the host's room buffers for its transfers, plus its relay's queues."""
    held = sum(len(b) for t in host.room.files._transfers.values() for b in t.buffer)
    return held + host.relay.queued_bytes()


async def test_a_large_file_resumes_across_drops_of_the_receiver_and_the_sharer(
    nursery, tmp_path
):
    host, ben, cy, proxies = await room_of_three(nursery, proxy_ben=True, proxy_cy=True)
    digest = write_random(tmp_path / "big.bin", SIZE)
    shared = await ben.share(str(tmp_path / "big.bin"))
    await offer_seen(cy, shared.offer_id)

    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, host_holds(host))
            await trio.sleep(0.002)

    nursery.start_soon(sample)
    started = await cy.receive(shared.offer_id, str(tmp_path / "in"), wait=0)
    assert started.running

    async def progress_past(fraction: float) -> None:
        with trio.fail_after(120):
            while not any(r.received_bytes > SIZE * fraction for r in cy.receives()):
                await trio.sleep(0.005)

    await progress_past(0.25)
    proxies["cy"].drop_all()  # the receiver drops: its fetch resumes from the last byte
    await progress_past(0.6)
    proxies["ben"].drop_all()  # the sharer drops: the transfer waits, then is pulled again
    with trio.fail_after(180):
        result = await cy.receive(shared.offer_id)
    sampling = False

    assert proxies["cy"].drops >= 1 and proxies["ben"].drops >= 1
    assert result.complete, result
    assert sha256_of(tmp_path / "in" / "big.bin") == digest
    assert result.written[0].sha256 == digest
    # Nothing delivered was delivered again: the room handed over each byte exactly once.
    assert result.delivered_bytes == SIZE
    assert leftovers(tmp_path / "in") == []
    # The host relays without holding the file: at most the receiver's credit in its room,
    # plus what its outboxes hold (each bounded), whatever the file's size.
    assert peak <= RECEIVE_CREDIT + 2 * host.relay.outbox_limit
    assert host.room.files.transfers() == []


async def test_credit_granted_while_the_receiver_is_away_is_carried_into_the_resume(
    nursery, tmp_path, monkeypatch
):
    """Writes that finish after the receiver's connection dropped grant their credit to the
    dead connection object; the resume must take that credit along, or the transfer (whose
    credit was all in use at the drop) would never move again."""
    host = await open_host(nursery, "files", name="ana", invites=2)
    ben = await join(nursery, host.initial_invites[0].join_link, name="ben")
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)
    cy = await join(nursery, via(host.initial_invites[1].join_link, proxy.port), name="cy",
                    connect_timeout=2.0)
    size = 4 * 1024 * 1024
    digest = write_random(tmp_path / "f.bin", size)
    shared = await ben.share(str(tmp_path / "f.bin"))
    await offer_seen(cy, shared.offer_id)

    gate = threading.Event()
    real = files_module._write_batch
    monkeypatch.setattr(files_module, "_write_batch",
                        lambda writer, batch: (gate.wait(60), real(writer, batch))[1])
    await cy.receive(shared.offer_id, str(tmp_path / "in"), wait=0)
    with trio.fail_after(60):  # every byte of credit delivered, none written yet
        while not (cy.guest.conn.files.transfers()
                   and cy.guest.conn.files.transfers()[0].at == RECEIVE_CREDIT):
            await trio.sleep(0.005)
    proxy.blackhole = True
    proxy.drop_all()
    with trio.fail_after(60):
        while cy.status().connection != "reconnecting":
            await trio.sleep(0.005)
    gate.set()  # the writes finish while we are away: their credit goes to the old object
    with trio.fail_after(60):
        while not any(r.received_bytes == RECEIVE_CREDIT for r in cy.receives()):
            await trio.sleep(0.005)
    proxy.blackhole = False
    proxy.drop_all()  # the dial stuck in the black hole; the next one gets through
    with trio.fail_after(60):
        result = await cy.receive(shared.offer_id)
    assert result.complete and sha256_of(tmp_path / "in" / "f.bin") == digest
    assert result.delivered_bytes == size


async def test_a_receive_the_sharer_could_not_serve_continues_when_called_again(
    nursery, tmp_path, monkeypatch
):
    from tunnel_trio import files_disk

    host, ben, cy, _ = await room_of_three(nursery)
    size = 6 * 1024 * 1024
    digest = write_random(tmp_path / "f.bin", size)
    shared = await ben.share(str(tmp_path / "f.bin"))
    await offer_seen(cy, shared.offer_id)

    reads = 0
    real_read = files_disk.ShareReader.read

    def read(self, index, offset, size):
        nonlocal reads
        reads += 1
        if reads == 3:  # once: a transient trouble on the sharer's side
            raise files_disk.FileShareError("cannot read f.bin: Input/output error")
        return real_read(self, index, offset, size)

    monkeypatch.setattr(files_disk.ShareReader, "read", read)
    with trio.fail_after(60):
        first = await cy.receive(shared.offer_id, str(tmp_path / "in"))
    assert not first.complete and first.resumable and not first.running
    assert "could not read" in first.error and "receive again" in first.error
    assert 0 < first.received_bytes < size
    assert [r.state for r in cy.receives()] == ["resumable"]
    assert leftovers(tmp_path / "in") != []  # the verified part is kept, under a hidden name
    assert not (tmp_path / "in" / "f.bin").exists()

    with trio.fail_after(60):
        second = await cy.receive(shared.offer_id)
    assert second.complete and sha256_of(tmp_path / "in" / "f.bin") == digest
    # The second fetch started where the first stopped: no byte came twice.
    assert second.delivered_bytes == size
    assert leftovers(tmp_path / "in") == [] and cy.receives() == []
