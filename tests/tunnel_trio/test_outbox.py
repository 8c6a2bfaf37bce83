"""The per-connection outbound queue: order, its byte bound, and batches for one write."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tunnel_trio._outbox import CloseMarker, Outbox, OutboxFull


async def test_a_batch_takes_what_is_queued_in_order_up_to_the_byte_limit() -> None:
    box = Outbox(limit=1000)
    for data in (b"a" * 10, b"b" * 20, b"c" * 30, b"d" * 40):
        box.put(data)
    assert box.queued_bytes == 100
    assert await box.get_batch(60) == [b"a" * 10, b"b" * 20, b"c" * 30]
    assert box.queued_bytes == 40
    # A message bigger than the batch limit still goes, alone.
    box.put(b"e" * 500)
    assert await box.get_batch(60) == [b"d" * 40]
    assert await box.get_batch(60) == [b"e" * 500]
    assert box.queued_bytes == 0


async def test_a_batch_stops_at_the_close_marker() -> None:
    box = Outbox(limit=1000)
    box.put(b"last words")
    box.close(1000, "bye")
    box.put(b"ignored after close")
    assert await box.get_batch(1 << 16) == [b"last words"]
    assert await box.get_batch(1 << 16) == CloseMarker(1000, "bye")


async def test_a_batch_waits_for_the_first_message() -> None:
    box = Outbox(limit=1000)
    got: list[list[bytes] | CloseMarker] = []

    async def writer() -> None:
        got.append(await box.get_batch(1 << 16))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        box.put(b"x")
        box.put(b"y")  # queued before the writer runs: the same batch
    assert got == [[b"x", b"y"]]


def test_the_byte_bound_is_enforced() -> None:
    box = Outbox(limit=10)
    box.put(b"12345")
    with pytest.raises(OutboxFull):
        box.put(b"123456")
    assert box.queued_bytes == 5
