"""Sharing and receiving files and folders between sessions over real sockets on 127.0.0.1:
host to member, member to host, member to member (through the host)."""

from __future__ import annotations

import hashlib

import pytest
import trio
from filesharing import leftovers, offer_ended, offer_seen, room_of_three, sha256_of, tree
from filesharing import write_random as random_file

from tunnel_trio.files import manifest_hash
from tunnel_trio.session_types import TunnelError


def make_folder(root):
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "docs").mkdir()
    (root / "docs" / "notes.md").write_text("# notes\n" * 100)
    (root / "empty.txt").write_bytes(b"")
    (root / ".env").write_text("SECRET=1\n")  # looks like a secret: skipped
    (root / "server.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    random_file(root / "data" / "blob.bin", 300_000)
    return {"src/main.py", "docs/notes.md", "empty.txt", "data/blob.bin"}


async def test_a_member_shares_a_file_and_the_other_member_receives_it(nursery, tmp_path):
    host, ben, cy, _ = await room_of_three(nursery)
    src = tmp_path / "report.log"
    digest = random_file(src, 3_000_000)

    prepared = await ben.prepare_share(str(src), note="the failing run")
    assert (prepared.name, prepared.count, prepared.total, prepared.is_folder) == (
        "report.log", 1, 3_000_000, False)
    assert prepared.files[0].sha256 == digest
    shared = await ben.share(prepared)
    assert shared.hash == prepared.hash

    # Everyone sees the offer at the same seq, with its files, sizes and hash.
    seen = [await offer_seen(s, shared.offer_id) for s in (host, ben, cy)]
    assert {m.seq for m in seen} == {shared.seq}
    for m in seen:
        assert m.sender.name == "ben"
        assert (m.file.name, m.file.count, m.file.total, m.file.note) == (
            "report.log", 1, 3_000_000, "the failing run")
        assert m.file.files[0].path == "report.log" and m.file.files[0].sha256 == digest
        assert m.file.hash == shared.hash
    assert [o.offer_id for o in cy.offers()] == [shared.offer_id]
    assert cy.status().offers[0].name == "report.log"

    plan = await cy.plan_receive(shared.offer_id, str(tmp_path / "in"))
    assert plan.destination == str((tmp_path / "in").resolve())
    assert [f.target for f in plan.files] == [str((tmp_path / "in" / "report.log").resolve())]
    assert not (tmp_path / "in").exists() or not any((tmp_path / "in").iterdir())
    result = await cy.receive(plan)
    assert result.complete and not result.failed and result.error is None
    assert [(w.path, w.size, w.sha256) for w in result.written] == [
        ("report.log", 3_000_000, digest)]
    assert sha256_of(tmp_path / "in" / "report.log") == digest
    assert result.delivered_bytes == result.received_bytes == 3_000_000
    assert leftovers(tmp_path / "in") == []
    # The sharer cannot receive its own offer.
    with pytest.raises(TunnelError, match="your own"):
        await ben.plan_receive(shared.offer_id, str(tmp_path / "x"))


async def test_a_folder_from_the_host_to_a_member_skips_secrets(nursery, tmp_path):
    host, ben, _, _ = await room_of_three(nursery)
    folder = tmp_path / "project"
    expected = make_folder(folder)

    prepared = await host.prepare_share(str(folder))
    assert prepared.is_folder and prepared.name == "project"
    assert {f.path for f in prepared.files} == expected
    assert {(s.path, s.reason) for s in prepared.skipped} >= {
        (".env", "looks like a secret"), ("server.pem", "looks like a secret")}
    shared = await host.share(prepared)
    message = await offer_seen(ben, shared.offer_id)
    assert message.file.is_folder and message.file.count == len(expected)
    assert message.file.hash == prepared.hash

    result = await ben.receive(shared.offer_id, str(tmp_path / "got"))
    assert result.complete, result
    got = tree(tmp_path / "got")
    assert got == {p: (folder / p).read_bytes() for p in expected}
    assert {w.path for w in result.written} == expected


async def test_a_folder_from_a_member_to_the_host(nursery, tmp_path):
    host, ben, _, _ = await room_of_three(nursery)
    folder = tmp_path / "fixtures"
    expected = make_folder(folder)
    shared = await ben.share(str(folder))
    await offer_seen(host, shared.offer_id)
    result = await host.receive(shared.offer_id, str(tmp_path / "host-got"))
    assert result.complete, result
    assert tree(tmp_path / "host-got") == {p: (folder / p).read_bytes() for p in expected}


async def test_a_file_from_a_member_to_the_host_and_the_host_to_a_member(nursery, tmp_path):
    host, ben, cy, _ = await room_of_three(nursery)
    src = tmp_path / "a.bin"
    digest = random_file(src, 2_500_000)
    mine = await ben.share(str(src))
    await offer_seen(host, mine.offer_id)
    got = await host.receive(mine.offer_id, str(tmp_path / "host"))
    assert got.complete and sha256_of(tmp_path / "host" / "a.bin") == digest

    back = await host.share(str(tmp_path / "host" / "a.bin"))
    await offer_seen(cy, back.offer_id)
    got = await cy.receive(back.offer_id, str(tmp_path / "cy"))
    assert got.complete and sha256_of(tmp_path / "cy" / "a.bin") == digest


async def test_the_offer_hash_is_the_manifest_in_sha256sum_form(nursery, tmp_path):
    host, ben, _, _ = await room_of_three(nursery)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_bytes(b"x")
    (tmp_path / "d" / "y.txt").write_bytes(b"yy")
    prepared = await ben.prepare_share(str(tmp_path / "d"))
    lines = "".join(f"{f.sha256}  {f.path}\n" for f in prepared.files)
    assert prepared.hash == hashlib.sha256(lines.encode()).hexdigest()
    assert manifest_hash([]) == hashlib.sha256(b"").hexdigest()


async def test_overwrite_is_refused_without_the_flag_and_same_files_are_skipped(
    nursery, tmp_path
):
    host, ben, cy, _ = await room_of_three(nursery)
    folder = tmp_path / "share"
    (folder).mkdir()
    (folder / "same.txt").write_text("same\n")
    (folder / "new.txt").write_text("new content\n")
    shared = await ben.share(str(folder))
    await offer_seen(cy, shared.offer_id)

    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "same.txt").write_text("same\n")
    (dest / "new.txt").write_text("precious local work\n")
    with pytest.raises(TunnelError, match="overwrite"):
        await cy.receive(shared.offer_id, str(dest))
    assert (dest / "new.txt").read_text() == "precious local work\n"
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt", "same.txt"]

    plan = await cy.plan_receive(shared.offer_id, str(dest), overwrite=True)
    assert [(f.path, f.replaces) for f in plan.files] == [("new.txt", True)]
    assert [s.path for s in plan.skipped] == ["same.txt"]
    result = await cy.receive(plan)
    assert result.complete
    assert (dest / "new.txt").read_text() == "new content\n"
    assert [s.path for s in result.skipped] == ["same.txt"]


async def test_offers_end_when_withdrawn_and_a_receive_then_says_why(nursery, tmp_path):
    host, ben, cy, _ = await room_of_three(nursery)
    (tmp_path / "f.txt").write_text("hello")
    shared = await ben.share(str(tmp_path / "f.txt"))
    await offer_seen(cy, shared.offer_id)
    with pytest.raises(TunnelError, match="not one of your live offers"):
        cy.unshare(shared.offer_id)
    ben.unshare(shared.offer_id)
    for session in (host, ben, cy):
        ended = await offer_ended(session, shared.offer_id)
        assert ended.reason.startswith("withdrawn")
        assert ended.file.name == "f.txt" and ended.sender.name == "ben"
    assert cy.offers() == [] and host.status().offers == []
    with pytest.raises(TunnelError, match="withdrew"):
        await cy.plan_receive(shared.offer_id, str(tmp_path / "in"))


async def test_nothing_to_share_and_missing_paths_are_clear_errors(nursery, tmp_path):
    host, ben, _, _ = await room_of_three(nursery)
    (tmp_path / "only-secrets").mkdir()
    (tmp_path / "only-secrets" / ".env").write_text("A=1")
    with pytest.raises(TunnelError, match="nothing to share"):
        await ben.prepare_share(str(tmp_path / "only-secrets"))
    with pytest.raises(TunnelError, match="does not exist"):
        await host.prepare_share(str(tmp_path / "nope"))
    with pytest.raises(TunnelError, match="not live"):
        await host.plan_receive(99, str(tmp_path))


async def test_a_receive_that_outlives_its_wait_goes_on_and_can_be_awaited_again(
    nursery, tmp_path
):
    host, ben, cy, _ = await room_of_three(nursery)
    digest = random_file(tmp_path / "big.bin", 8_000_000)
    shared = await ben.share(str(tmp_path / "big.bin"))
    await offer_seen(cy, shared.offer_id)
    first = await cy.receive(shared.offer_id, str(tmp_path / "in"), wait=0)
    assert first.running and not first.complete
    assert [r.state for r in cy.receives()] == ["running"]
    with trio.fail_after(60):
        final = await cy.receive(shared.offer_id)
    assert final.complete and sha256_of(tmp_path / "in" / "big.bin") == digest
    assert cy.receives() == []


async def test_a_cancelled_receive_leaves_no_partial_file(nursery, tmp_path):
    host, ben, cy, _ = await room_of_three(nursery)
    random_file(tmp_path / "big.bin", 40_000_000)
    shared = await ben.share(str(tmp_path / "big.bin"))
    await offer_seen(cy, shared.offer_id)
    await cy.receive(shared.offer_id, str(tmp_path / "in"), wait=0)
    with trio.fail_after(30):
        while not any(r.received_bytes for r in cy.receives()):
            await trio.sleep(0.01)
    assert await cy.cancel_receive(shared.offer_id)
    assert list((tmp_path / "in").iterdir()) == []
    assert cy.receives() == []
    assert not await cy.cancel_receive(shared.offer_id)
    # The room is fine: the same offer can be received after all.
    result = await cy.receive(shared.offer_id, str(tmp_path / "in"))
    assert result.complete


async def test_chat_flows_while_a_transfer_holds_its_whole_credit(nursery, tmp_path, monkeypatch):
    """File data never stands in front of chat for good: with the receiver's writes held (all
    its credit in flight, chunks waiting at the host and the sharer), chat goes both ways."""
    import threading

    import tunnel_trio.files as files_module

    host, ben, cy, _ = await room_of_three(nursery)
    random_file(tmp_path / "big.bin", 32 * 1024 * 1024)
    shared = await ben.share(str(tmp_path / "big.bin"))
    await offer_seen(cy, shared.offer_id)
    gate = threading.Event()
    real = files_module._write_batch
    monkeypatch.setattr(files_module, "_write_batch",
                        lambda writer, batch: (gate.wait(60), real(writer, batch))[1])
    await cy.receive(shared.offer_id, str(tmp_path / "in"), wait=0)
    with trio.fail_after(30):
        while not (cy.guest.conn.files.transfers()
                   and cy.guest.conn.files.transfers()[0].at >= files_module.RECEIVE_CREDIT):
            await trio.sleep(0.005)

    async def sees(session, text):
        since = 0
        with trio.fail_after(30):
            while True:
                result = await session.listen(since, 5.0)
                since = result.last_seq
                if any(m.text == text for m in result.messages):
                    return

    await ben.say("from the sharer, mid-transfer")
    await sees(cy, "from the sharer, mid-transfer")
    await cy.say("from the receiver, mid-transfer")
    await sees(ben, "from the receiver, mid-transfer")
    assert [r.state for r in cy.receives()] == ["running"]
    gate.set()
    with trio.fail_after(60):
        assert (await cy.receive(shared.offer_id)).complete
