"""What one file transfer costs the protocol core, per role, with no I/O at all.

    python bench/files_core.py [megabytes]     # default 256

A sharer (MemberConnection), the host (Room, relaying) and a receiver (MemberConnection) in one
process, wired back to back the way the drivers wire them: the sharer's driver answers each
ReadRequest at once from memory, the receiver's driver grants each chunk back at once, both
bulk lanes are pulled whenever they have something. The CPU time of each role's calls is
measured apart, so each figure is an upper bound on what that side alone can move per second
(on loopback the three run in three processes). Printed, never asserted.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from tunnelproto import (
    FILES_CAP,
    ChunkReceived,
    FetchComplete,
    FileEntry,
    MemberConnection,
    ReadRequest,
    Room,
    Send,
    ShareAccepted,
)

T = TypeVar("T")
BATCH = 64 * 1024
cpu: dict[str, float] = defaultdict(float)


def timed(role: str, fn: Callable[[], T]) -> T:
    start = time.process_time()
    try:
        return fn()
    finally:
        cpu[role] += time.process_time() - start


def main(megabytes: int) -> None:
    size = megabytes * 1024 * 1024
    data = bytes(size)  # content does not change the cost; hashing is the driver's
    now = 0.0
    room = Room("bench", "host", now)
    invites = room.mint_invites(2, now)
    members = {
        name: MemberConnection(inv.link("http://127.0.0.1", room.tunnel_id), name, now,
                               caps=(FILES_CAP,))
        for name, inv in zip(("sharer", "receiver"), invites, strict=True)
    }
    conn_of = {name: room.open_connection(now) for name in members}
    member_of = {conn: name for name, conn in conn_of.items()}
    done = False
    got = 0

    def pump() -> bool:
        nonlocal done, got
        moved = False
        for name, mc in members.items():
            for message in timed(name, mc.data_to_send):
                moved = True
                timed("host", lambda m=message, c=conn_of[name]: room.receive(c, m, now))
        for conn in timed("host", room.bulk_connections):
            timed("host", lambda c=conn: room.pull_bulk(c, BATCH))
        for out in timed("host", room.data_to_send):
            assert isinstance(out, Send)
            moved = True
            name = member_of[out.conn]
            timed(name, lambda mc=members[name], d=out.data: mc.receive_data(d, now))
        for name, mc in members.items():
            while (ev := mc.next_event()) is not None:
                moved = True
                if isinstance(ev, ReadRequest):
                    chunk = data[ev.offset : ev.offset + ev.size]
                    timed(name, lambda m=mc, e=ev, c=chunk: m.files.provide_chunk(
                        e.transfer, e.offset, c))
                elif isinstance(ev, ChunkReceived):
                    got += len(ev.data)
                    timed(name, lambda m=mc, e=ev: m.files.grant(e.transfer, len(e.data)))
                elif isinstance(ev, FetchComplete):
                    done = True
                elif isinstance(ev, ShareAccepted):
                    offers.append(ev.offer_id)
            if mc.has_bulk():
                moved = True
                timed(name, lambda m=mc: m.pull_bulk(BATCH))
        return moved

    offers: list[int] = []
    while pump():
        pass
    entry = FileEntry("big.bin", size, hashlib.sha256(b"not checked here").digest())
    members["sharer"].files.share("big", [entry])
    while pump():
        pass
    cpu.clear()
    members["receiver"].files.fetch(offers[0], 0)
    while not done:
        if not pump():
            raise SystemExit("the transfer stalled")
    assert got == size
    print(f"{megabytes} MiB member to member through the host, CPU time per role:")
    for role in ("sharer", "host", "receiver"):
        print(f"  {role:9s} {cpu[role]:6.2f} s   {size / cpu[role] / 1e6:7.0f} MB/s")
    total = sum(cpu.values())
    print(f"  {'all three':9s} {total:6.2f} s   {size / total / 1e6:7.0f} MB/s (one core for all)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
