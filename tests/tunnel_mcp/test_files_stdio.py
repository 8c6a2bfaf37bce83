"""Files and folders through real `tunnel-mcp` server processes, driven over stdio by the SDK's
own client: both ways, with and without approval prompts, refusals, dead offers and hostile
names. (The 1 GiB transfer with a drop is in test_files_big.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import mcp_types as types
import pytest
import trio
from mcpstdio import Human, call, error, file_message, pair, server

from tunnel_trio import files_disk
from tunnel_trio.session import open_host
from tunnelproto import FileEntry

MODES = ["legacy", "auto"]


def make_project(root: Path) -> dict[str, bytes]:
    """A small git work tree with a git-ignored file and a secret-looking file; returns the
    files that a share of it must carry."""
    (root / "src").mkdir(parents=True)
    kept = {"src/parser.py": b"def parse(): ...\n", "notes.md": b"# notes\n", ".gitignore": b"*.log\n"}
    for path, data in kept.items():
        (root / path).write_bytes(data)
    (root / "build.log").write_text("ignored by git\n")
    (root / ".env").write_text("API_TOKEN=do-not-share\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return kept


def received_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- both ways, no prompts (the fallback) ----------------------------------------------------------


async def test_a_file_and_a_folder_both_ways_without_approval_prompts(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    report.write_bytes(b"FAILED test_parser.py::test_empty - AssertionError\n")
    project = tmp_path / "fixtures"
    expected = make_project(project)
    async with server(tmp_path, "host") as host, server(tmp_path, "guest") as guest:
        await pair(host, guest)

        # host -> guest: one file, saved in the default folder.
        shared, text = await call(host, "tunnel_share", {"path": str(report), "note": "the failing run"})
        assert shared["shared"] is True and shared["approval"] == "not-asked"
        assert "your human was not asked" in text and str(report) in text
        offer_id = shared["offerId"]
        message, listened = await file_message(guest, offer_id)
        assert message["from"]["name"] == "ana" and message["file"]["name"] == "report.txt"
        assert message["file"]["hash"] == shared["hash"] and message["file"]["note"] == "the failing run"
        assert f'#{message["seq"]} [file] offer {offer_id} from host 1 "ana": file "report.txt"' in listened
        (resource,) = (await guest.read_resource("tunnel://transcript")).contents
        assert isinstance(resource, types.TextResourceContents)
        offers = [m for m in json.loads(resource.text)["messages"] if m["kind"] == "file"]
        assert [m["file"]["offerId"] for m in offers] == [offer_id]
        status, status_text = await call(guest, "tunnel_status")
        assert [o["offerId"] for o in status["offers"]] == [offer_id]
        assert f"offer {offer_id} from host 1" in status_text

        got, text = await call(guest, "tunnel_receive", {"offerId": offer_id})
        saved = tmp_path / "home-guest" / "Downloads" / "tunnel-mcp" / "report.txt"
        assert got["complete"] is True and got["approval"] == "not-asked"
        assert [(f["path"], f["target"]) for f in got["written"]] == [("report.txt", str(saved))]
        assert saved.read_bytes() == report.read_bytes()
        assert got["written"][0]["sha256"] == hashlib.sha256(report.read_bytes()).hexdigest()
        assert "your human was not asked" in text and "untrusted" in text

        # guest -> host: a folder; git-ignored and secret-looking files stay behind.
        shared, text = await call(guest, "tunnel_share", {"path": str(project)})
        skipped = {s["path"]: s["reason"] for s in shared["skipped"]}
        assert skipped[".env"] == files_disk.SKIP_SECRET
        assert skipped["build.log"] == files_disk.SKIP_GIT_IGNORED
        assert sorted(f["path"] for f in shared["files"]) == sorted(expected)
        assert '".env": looks like a secret' in text
        message, _ = await file_message(host, shared["offerId"])
        assert message["file"]["isFolder"] is True and message["file"]["count"] == len(expected)

        into = tmp_path / "received"
        got, _ = await call(host, "tunnel_receive", {"offerId": shared["offerId"], "saveTo": str(into)})
        assert got["complete"] is True and got["destination"] == str(into)
        assert received_tree(into) == expected
    for name in ("host", "guest"):
        log = (tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in log and "do-not-share" not in log


# -- approvals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_the_humans_approve_what_is_read_and_where_it_is_written(tmp_path: Path, mode: str) -> None:
    project = tmp_path / "fixtures"
    expected = make_project(project)
    into = tmp_path / "saved"
    answers = {"share": ["decline", "accept"], "save": ["cancel", "accept"]}

    def decide(prompt: str) -> str:
        if "wants to share" in prompt:
            return answers["share"].pop(0)
        if "wants to save" in prompt:
            return answers["save"].pop(0)
        return "accept"  # the join

    ana, ben = Human(decide), Human(decide)
    async with server(tmp_path, "host", ana, mode) as host, server(tmp_path, "guest", ben, mode) as guest:
        await pair(host, guest)
        declined, text = await call(host, "tunnel_share", {"path": str(project)})
        assert declined["shared"] is False and declined["approval"] == "declined"
        assert declined["offerId"] is None and "Not shared" in text
        assert "offers" not in (await call(guest, "tunnel_status"))[0]  # []: left out

        shared, _ = await call(host, "tunnel_share", {"path": str(project)})
        assert shared["shared"] is True and shared["approval"] == "accepted"
        await file_message(guest, shared["offerId"])

        args = {"offerId": shared["offerId"], "saveTo": str(into)}
        refused, text = await call(guest, "tunnel_receive", args)
        assert refused["received"] is False and refused["approval"] == "cancelled"
        assert "Not received" in text and not into.exists()  # nothing written, not even the folder

        got, _ = await call(guest, "tunnel_receive", args)
        assert got["complete"] is True and got["approval"] == "accepted"
        assert received_tree(into) == expected

    share_prompts = [p for p in ana.prompts if "wants to share" in p]
    assert len(share_prompts) == 2
    size = sum(len(data) for data in expected.values())
    assert f"share 3 files ({size} bytes) from\n{project}\nwith everyone in tunnel" in share_prompts[0]
    assert '".env" (looks like a secret)' in share_prompts[0] and '"build.log" (ignored by git)' in share_prompts[0]
    save_prompts = [p for p in ben.prompts if "wants to save" in p]
    assert len(save_prompts) == 2
    assert f"save 3 files received ({size} bytes) in tunnel" in save_prompts[0]
    assert f'from host 1 "ana" to\n{into}\n' in save_prompts[0]


# -- refusals ---------------------------------------------------------------------------------------


async def test_overwrite_needs_the_flag_and_a_dead_offer_says_why(tmp_path: Path) -> None:
    shared_file = tmp_path / "schema.sql"
    shared_file.write_text("create table t (id int);\n")
    into = tmp_path / "into"
    into.mkdir()
    (into / "schema.sql").write_text("mine, keep me\n")
    async with server(tmp_path, "host") as host, server(tmp_path, "guest") as guest:
        await pair(host, guest)
        shared, _ = await call(guest, "tunnel_share", {"path": str(shared_file)})
        offer_id = shared["offerId"]
        await file_message(host, offer_id)

        refusal = await error(host, "tunnel_receive", {"offerId": offer_id, "saveTo": str(into)})
        assert "already exist" in refusal and "overwrite: true" in refusal
        assert (into / "schema.sql").read_text() == "mine, keep me\n"
        got, _ = await call(host, "tunnel_receive", {"offerId": offer_id, "saveTo": str(into), "overwrite": True})
        assert got["complete"] is True
        assert (into / "schema.sql").read_text() == "create table t (id int);\n"

        refusal = await error(host, "tunnel_receive", {"offerId": offer_id + 100})
        assert f"offer {offer_id + 100} is not live" in refusal
        refusal = await error(guest, "tunnel_receive", {"offerId": offer_id})
        assert "is your own" in refusal

        # The sharer withdraws it: everyone sees why, and a receive says so.
        withdrawn, _ = await call(guest, "tunnel_cancel", {"offerId": offer_id})
        assert withdrawn["action"] == "withdrawn"
        ended, text = await file_message(host, offer_id, "file-offer-ended")
        assert ended["reason"].startswith("withdrawn") and "reason:" in text
        refusal = await error(host, "tunnel_receive", {"offerId": offer_id, "saveTo": str(tmp_path / "x")})
        assert "has ended" in refusal and "withdrew" in refusal
        assert "offers" not in (await call(host, "tunnel_status"))[0]  # []: left out
        refusal = await error(host, "tunnel_cancel", {"offerId": offer_id})
        assert "neither one of your live offers nor one you are receiving" in refusal

        # A share that has nothing to send, or no such path, is a clear error.
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "id_rsa").write_text("-----BEGIN KEY-----\n")
        assert "nothing to share" in await error(guest, "tunnel_share", {"path": str(tmp_path / "secrets")})
        assert "does not exist" in await error(guest, "tunnel_share", {"path": str(tmp_path / "nope")})


#: Manifests a hostile sharer's software can send (here: a hostile host, which sends anything):
#: the receiver refuses each before anything is written.
HOSTILE = [
    ["../evil.txt"],
    ["a/../../evil.txt"],
    ["/etc/passwd"],
    ["C:evil.txt"],
    ["back\\slash"],
    ["nul\x00byte"],
    ["esc\x1b[31m"],
    [".."],
    ["CON"],
    ["dir/nul.log"],
    ["trailing."],
    ["a<b"],
    [".git/config"],
    ["invoice\u202etxt.exe"],
    ["zero\u200bwidth"],
    ["x" * 300],
    ["/".join(["d"] * 40)],
    ["README.md", "readme.md"],
    ["a", "a/b"],
]


async def test_every_hostile_name_is_refused_and_shown_escaped(tmp_path: Path, nursery: trio.Nursery) -> None:
    mallory = await open_host(nursery, "take these", name="mallory", invites=1)
    into = tmp_path / "into"
    digest = hashlib.sha256(b"x").digest()
    async with server(tmp_path, "guest") as guest:
        await call(guest, "tunnel_join", {"joinLink": mallory.initial_invites[0].join_link, "name": "ben"})
        offers = []
        for names in HOSTILE:
            # The room's own publishing, called past its checks: a hostile host sends anything.
            info = mallory.room.files._publish(
                1, "mallory", 0, "evil", None, tuple(FileEntry(n, 1, digest) for n in names),
                len(names), trio.current_time(),
            )
            mallory.relay._dispatch()
            offers.append(info.id)
        for offer_id in offers:
            _, listened = await file_message(guest, offer_id)
            assert all(len(line) < 2000 for line in listened.splitlines())
            assert "\x00" not in listened and "\x1b" not in listened and "\u202e" not in listened
            refusal = await error(guest, "tunnel_receive", {"offerId": offer_id, "saveTo": str(into)})
            assert "cannot be received there" in refusal
        assert not into.exists() or list(into.iterdir()) == []
        assert not (tmp_path / "evil.txt").exists()
        assert "receives" not in (await call(guest, "tunnel_status"))[0]  # []: left out
    await mallory.close()


# -- cancelling a receive ----------------------------------------------------------------------------


async def test_a_receive_returns_running_then_continues_or_is_cancelled(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    # Big enough that the transfer cannot finish before the cancel two calls later, even when
    # the calls are slow (a loaded machine) and the transfer is not: a file finished before the
    # cancel stays, by design, and 48 MiB was once finished in that window.
    with big.open("wb") as f:
        f.write(os.urandom(1024 * 1024) * 192)
    async with server(tmp_path, "host") as host, server(tmp_path, "guest") as guest:
        await pair(host, guest)
        shared, _ = await call(host, "tunnel_share", {"path": str(big)})
        await file_message(guest, shared["offerId"])
        into = tmp_path / "in"
        got, text = await call(guest, "tunnel_receive", {"offerId": shared["offerId"], "saveTo": str(into), "waitMs": 0})
        # waitMs 0: the call returns at once, the transfer goes on in the background.
        assert got["running"] is True and "call tunnel_receive with offerId" in text
        status, _ = await call(guest, "tunnel_status")
        assert [r["offerId"] for r in status["receives"]] == [shared["offerId"]]
        cancelled, _ = await call(guest, "tunnel_cancel", {"offerId": shared["offerId"]})
        assert cancelled["action"] == "cancelled"
        assert [p for p in into.rglob("*") if p.is_file()] == []  # no partial file left
        assert "receives" not in (await call(guest, "tunnel_status"))[0]  # []: left out
        got, _ = await call(guest, "tunnel_receive", {"offerId": shared["offerId"], "saveTo": str(into)})
        with trio.fail_after(120):
            while got["running"]:
                got, _ = await call(guest, "tunnel_receive", {"offerId": shared["offerId"]})
        assert got["complete"] is True
        assert got["written"][0]["sha256"] == shared["files"][0]["sha256"]
        assert (into / "big.bin").stat().st_size == big.stat().st_size
