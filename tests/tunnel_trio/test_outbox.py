"""The per-connection outbound queue: order, its byte bound, and batches for one write."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from tunnel_trio._outbox import DIRECT_MAX, CloseMarker, Outbox, OutboxFull


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


class FakeSocket:
    """Stands in for the WebSocket's direct path: records what it took, leaves `leave` bytes
    unsent, or refuses (`accept` False) as a busy or TLS WebSocket does."""

    def __init__(self) -> None:
        self.taken: list[list[bytes]] = []
        self.accept = True
        self.leave = 0
        self.unsent_bytes = 0

    def send_now(self, messages: Sequence[bytes]) -> bool:
        if not self.accept:
            return False
        self.taken.append(list(messages))
        self.unsent_bytes += self.leave
        return True


async def test_an_idle_writer_lets_a_small_burst_go_straight_to_the_socket() -> None:
    sock = FakeSocket()
    box = Outbox(limit=1 << 20, direct=sock)
    got: list[list[bytes] | CloseMarker] = []

    async def writer() -> None:
        got.append(await box.get_batch(1 << 16))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        box.put_all([b"a", b"b"])
        assert sock.taken == [[b"a", b"b"]] and box.queued_bytes == 0
        # The writer is still asleep (it was never woken), so the path stays open.
        box.put_all([b"c"])
        assert sock.taken == [[b"a", b"b"], [b"c"]]
        # What the socket could not take: the writer wakes with nothing queued to write it.
        sock.leave = 1
        box.put_all([b"d"])
        await trio.testing.wait_all_tasks_blocked()
    assert got == [[]]


async def test_the_direct_path_is_closed_while_the_writer_has_work_or_the_burst_is_big() -> None:
    sock = FakeSocket()
    box = Outbox(limit=1 << 20, direct=sock)
    # Before the writer ever asked for anything, nothing is queued or written: direct.
    box.put_all([b"0"])
    assert sock.taken == [[b"0"]] and box.queued_bytes == 0
    # The writer holds a batch (it is writing it): what comes next queues behind it.
    box.put(b"1")
    assert await box.get_batch(1 << 16) == [b"1"]
    box.put_all([b"1b"])
    assert sock.taken == [[b"0"]] and box.queued_bytes == 2
    assert await box.get_batch(1 << 16) == [b"1b"]

    got: list[list[bytes] | CloseMarker] = []

    async def writer() -> None:
        got.append(await box.get_batch(1 << 20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        box.put_all([b"x" * (DIRECT_MAX + 1)])  # too big to leave unsent outside the bound
        box.put_all([b"2"])  # behind it, never around it
        assert sock.taken == [[b"0"]]
    assert got == [[b"x" * (DIRECT_MAX + 1), b"2"]]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        sock.accept = False  # a write in progress, a TLS stream, a closing WebSocket
        box.put_all([b"3"])
    assert got[-1] == [b"3"] and sock.taken == [[b"0"]]

    box.close(1000, "bye")
    sock.accept = True
    box.put_all([b"after the close"])
    assert sock.taken == [[b"0"]]


@pytest.mark.parametrize("need", ["queued", "left unsent", "closed"])
async def test_a_writer_started_on_demand_starts_once_when_first_needed(need: str) -> None:
    # Until then the outbox is as idle as a waiting writer: small bursts go direct. The first
    # thing the direct path cannot finish starts the writer, which then finds it in order.
    sock = FakeSocket()
    started: list[int] = []
    got: list[list[bytes] | CloseMarker] = []

    async def writer() -> None:
        got.append(await box.get_batch(1 << 16))

    async with trio.open_nursery() as nursery:

        def start_writer() -> None:
            started.append(1)
            nursery.start_soon(writer)

        box = Outbox(limit=1 << 20, direct=sock, start_writer=start_writer)
        box.put_all([b"a"])
        box.put_all([b"b", b"c"])
        assert sock.taken == [[b"a"], [b"b", b"c"]] and not started
        if need == "queued":
            sock.accept = False  # busy, or TLS
            box.put_all([b"d"])
            box.put_all([b"e"])
        elif need == "left unsent":
            sock.leave = 1
            box.put_all([b"d"])
        else:
            box.close(1000, "bye")
        assert started == [1]
        await trio.testing.wait_all_tasks_blocked()
    assert started == [1]
    assert got == {"queued": [[b"d", b"e"]], "left unsent": [[]], "closed": [CloseMarker(1000, "bye")]}[need]
