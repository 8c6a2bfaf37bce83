"""Timed waits served by one timer task (tunnel_trio._waits), and the session waits on them."""

from __future__ import annotations

import math

import trio
import trio.testing

from tunnel_trio._waits import Parked, Timers
from tunnel_trio.session import join, open_host


async def test_a_wait_ends_at_its_deadline_or_when_woken(autojump_clock):
    timers = Timers()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        await trio.sleep(0)
        start = trio.current_time()
        assert await timers.wait(Parked(timers), start + 5) is False
        assert trio.current_time() - start >= 5

        parked = Parked(timers)
        woken_at: list[float] = []

        async def waiter() -> None:
            assert await timers.wait(parked, trio.current_time() + 60) is True
            woken_at.append(trio.current_time())

        nursery.start_soon(waiter)
        await trio.sleep(1)
        parked.wake()
        parked.wake()  # a second wake does nothing
        await trio.sleep(1)
        assert woken_at and woken_at[0] - start < 60
        # An earlier deadline than the one the timer sleeps until is still kept.
        late = Parked(timers)
        nursery.start_soon(timers.wait, late, trio.current_time() + 3600)
        await trio.sleep(0)
        before = trio.current_time()
        assert await timers.wait(Parked(timers), before + 2) is False
        assert trio.current_time() - before < 3
        late.wake()
        nursery.cancel_scope.cancel()


async def test_the_heap_stays_bounded_by_the_tasks_that_wait():
    timers = Timers()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        for _ in range(3000):
            parked = Parked(timers)
            nursery.start_soon(timers.wait, parked, trio.current_time() + 30)
            await trio.testing.wait_all_tasks_blocked()
            assert timers.live == 1
            parked.wake()
            # Woken long before their deadlines: their entries must not pile up.
            assert len(timers._heap) <= 100
        assert timers.live == 0
        nursery.cancel_scope.cancel()


async def test_a_cancelled_wait_leaves_nothing_live(autojump_clock):
    timers = Timers()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        with trio.move_on_after(1):
            await timers.wait(Parked(timers), math.inf)
        assert timers.live == 0
        nursery.cancel_scope.cancel()


async def test_without_the_timer_task_a_wait_still_ends_at_its_deadline(autojump_clock):
    timers = Timers()
    start = trio.current_time()
    assert await timers.wait(Parked(timers), start + 7) is False
    assert trio.current_time() - start >= 7


async def test_the_timer_stopping_wakes_its_waiters_to_look_again(autojump_clock):
    timers = Timers()
    results: list[bool] = []
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.run)
            await trio.sleep(0)

            async def waiter() -> None:
                results.append(await timers.wait(Parked(timers), trio.current_time() + 3600))

            outer.start_soon(waiter)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert results == [True]
    assert not timers.running


async def test_quiet_listens_time_out_and_leave_no_waiters_behind(nursery, autojump_clock):
    host = await open_host(nursery, "quiet", name="host")
    member = await join(nursery, host.initial_invites[0].join_link, name="m")
    since = 0
    with trio.fail_after(60):  # the member's own `joined` (seq 1) may still be on its way
        while since < 1:
            since = (await member.listen(since, 5)).last_seq
    for _ in range(50):
        start = trio.current_time()
        result = await member.listen(since, 30)
        assert result.timed_out
        assert trio.current_time() - start >= 30
    assert member._transcript._waiting == []
    assert member._transcript.timers.live == 0
    # A listen still returns as soon as something comes.
    async with trio.open_nursery() as inner:

        async def speak() -> None:
            await trio.sleep(5)
            await host.say("hello")

        inner.start_soon(speak)
        start = trio.current_time()
        result = await member.listen(since, 30)
        assert [m.text for m in result.messages] == ["hello"]
        assert trio.current_time() - start < 30
    await member.close()
    await host.close()
