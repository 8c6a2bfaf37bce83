"""A 1 GiB file member to member through three real server processes over stdio, with the
receiver's connection cut in the middle: the transfer resumes, the file arrives whole (same
SHA-256), and the host, which relays it, stays small (RSS growth from /proc under 64 MiB)."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import trio
from dropproxy import DropProxy
from filesharing import sha256_of, via
from mcpstdio import call, file_message, pid_of, rss_bytes, server

SIZE = 1024**3
MIB = 1024 * 1024
#: What the host may grow by while it relays the whole file.
RSS_GROWTH_LIMIT = 64 * MIB


def write_file(path: Path, size: int) -> str:
    """`size` bytes, each MiB different (a random block with the MiB's number in front), so a
    misplaced or repeated range changes the hash. Returns the SHA-256 (hex)."""
    import os

    block = bytearray(os.urandom(MIB))
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(size // MIB):
            block[:8] = i.to_bytes(8, "big")
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")
async def test_a_1_gib_file_member_to_member_resumes_after_a_drop(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    if shutil.disk_usage(tmp_path).free < 3 * SIZE:
        pytest.skip("needs 3 GiB free in the temporary folder (the file, its copy, a margin)")
    big = tmp_path / "big.bin"
    into = tmp_path / "in"
    digest = await trio.to_thread.run_sync(write_file, big, SIZE)
    try:
        async with (
            server(tmp_path, "host") as host,
            server(tmp_path, "ben") as ben,
            server(tmp_path, "cy") as cy,
        ):
            opened, _ = await call(host, "tunnel_open", {"goal": "a big file", "name": "ana", "invites": 2})
            first, second = (i["joinLink"] for i in opened["invites"])
            proxy = DropProxy(int(second.split("/t/")[0].rsplit(":", 1)[1]))
            await nursery.start(proxy.run)
            await call(ben, "tunnel_join", {"joinLink": first, "name": "ben"})
            await call(cy, "tunnel_join", {"joinLink": via(second, proxy.port), "name": "cy"})
            host_pid = pid_of(tmp_path, "host")

            shared, _ = await call(ben, "tunnel_share", {"path": str(big)})
            offer_id = shared["offerId"]
            await file_message(cy, offer_id)

            before = rss_bytes(host_pid)
            peak = before

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, rss_bytes(host_pid))
                    await trio.sleep(0.02)

            async with trio.open_nursery() as sampling:
                sampling.start_soon(sample)
                got, _ = await call(cy, "tunnel_receive", {"offerId": offer_id, "saveTo": str(into), "waitMs": 0})
                assert got["running"] is True
                with trio.fail_after(300):
                    received = 0
                    while received < SIZE * 0.4:
                        await trio.sleep(0.05)
                        status, _ = await call(cy, "tunnel_status")
                        received = status["receives"][0]["receivedBytes"]
                    dialled = proxy.connections
                    proxy.drop_all()  # cy's connection dies under the transfer
                    while not got["complete"]:
                        got, _ = await call(cy, "tunnel_receive", {"offerId": offer_id})
                        assert got["running"] or got["resumable"] or got["complete"], got
                sampling.cancel_scope.cancel()

            assert proxy.drops >= 1
            assert proxy.connections > dialled  # cy came back on a new connection
            assert got["written"][0]["sha256"] == digest
            assert await trio.to_thread.run_sync(sha256_of, into / "big.bin") == digest
            print(f"host RSS growth: {(peak - before) / MIB:.1f} MiB")  # (shown with -s)
            assert peak - before < RSS_GROWTH_LIMIT, f"host RSS grew {(peak - before) / MIB:.1f} MiB"
    finally:
        big.unlink(missing_ok=True)
        (into / "big.bin").unlink(missing_ok=True)
