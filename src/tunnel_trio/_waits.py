"""Timed waits without a cancel scope each: one timer task per session serves them all.

A listen or a say waits for something (a transcript change, the host's answer) *or* a
deadline. `trio.move_on_at` per wait costs a cancel scope (entered, deadline registered,
closed) on every message of a busy session, a good part of the per-message cost of chat.
Here a waiting task parks itself (`trio.lowlevel.wait_task_rescheduled`) with its deadline in
a heap, and the session's one timer task sleeps until the earliest deadline still waited on.

Bounds: an entry stays in the heap after its waiter was woken (removing it would cost a heap
search), so the heap is rebuilt from the live entries once it is mostly dead: its size stays
within a small multiple of the tasks actually waiting. Idle cost: the timer wakes only at a
deadline someone still waits on (a dead entry at the top is dropped before arming), so an idle
session with a 30 s listen wakes once in 30 s, as with a cancel scope.

Cancellation of a parked task (its own scopes) works as for any trio wait. When the timer is
not running (before the session started, after it ended) a wait falls back to a cancel scope.

The same task also serves one synchronous client (`set_tick`): the member connection's own
deadlines (handshake, keepalive, acks), which had a timer task of their own at every join.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import trio
from outcome import Value

#: Below this many heap entries there is nothing worth compacting.
_COMPACT_MIN = 64


class Parked:
    """One waiting task; `wake()` (from any task) reschedules it, at most once."""

    __slots__ = ("_timers", "task")

    def __init__(self, timers: Timers) -> None:
        self._timers = timers
        self.task: trio.lowlevel.Task | None = None

    def wake(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            self._timers.live -= 1
            trio.lowlevel.reschedule(task, Value(True))


class Timers:
    """The deadlines of every `Parked` wait of one session, and the task that expires them."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Parked]] = []
        self._count = 0  # tie-breaker: Parked objects do not compare
        self.live = 0  # parked tasks not yet woken
        #: The timer task's sleep (None while it is not sleeping): its deadline is the earliest
        #: one waited on, moved earlier in place by `wait` (without waking the timer task).
        self._sleep: trio.CancelScope | None = None
        #: Its deadline, kept here (the scope's property is a Python call per wait).
        self._sleep_at = math.inf
        self.running = False
        #: The tick client: called (in the timer task) once `tick_at` has come.
        self._tick: Callable[[float], None] | None = None
        self.tick_at = math.inf

    def set_tick(self, tick: Callable[[float], None] | None, at: float = math.inf) -> None:
        """Call `tick(now)` from the timer task once `at` has come (None: no client). The
        client keeps `tick_at` current: `tick_soon` brings it forward, and `tick` itself sets
        the next one (a later one costs one early call at most)."""
        self._tick = tick
        self.tick_at = at if tick is not None else math.inf
        sleep = self._sleep
        if sleep is not None and self.tick_at < self._sleep_at:
            sleep.deadline = self._sleep_at = self.tick_at

    def tick_soon(self, at: float) -> None:
        """Bring the tick forward to `at` if that is earlier (moved in place: no wake-up)."""
        if at < self.tick_at and self._tick is not None:
            self.tick_at = at
            sleep = self._sleep
            if sleep is not None and at < self._sleep_at:
                sleep.deadline = self._sleep_at = at

    async def wait(self, parked: Parked, deadline: float) -> bool:
        """Park the current task until `parked.wake()` (True) or `deadline` (False)."""
        if not self.running:
            with trio.move_on_at(deadline):
                return await self._park(parked)
            return False
        heap = self._heap
        if len(heap) > _COMPACT_MIN and len(heap) > 4 * (self.live + 1):
            heap[:] = [entry for entry in heap if entry[2].task is not None]
            heapq.heapify(heap)
        self._count += 1
        heapq.heappush(heap, (deadline, self._count, parked))
        sleep = self._sleep
        if sleep is not None and deadline < self._sleep_at:
            sleep.deadline = self._sleep_at = deadline
        # `_park`, written out: a coroutine level less on every wait's suspend and resume.
        parked.task = trio.lowlevel.current_task()
        self.live += 1

        def abort(_: object) -> trio.lowlevel.Abort:
            if parked.task is not None:
                parked.task = None
                self.live -= 1
            return trio.lowlevel.Abort.SUCCEEDED

        woken: bool = await trio.lowlevel.wait_task_rescheduled(abort)
        return woken

    async def _park(self, parked: Parked) -> bool:
        parked.task = trio.lowlevel.current_task()
        self.live += 1

        def abort(_: object) -> trio.lowlevel.Abort:
            if parked.task is not None:
                parked.task = None
                self.live -= 1
            return trio.lowlevel.Abort.SUCCEEDED

        woken: bool = await trio.lowlevel.wait_task_rescheduled(abort)
        return woken

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            parked = heapq.heappop(heap)[2]
            task = parked.task
            if task is not None:
                parked.task = None
                self.live -= 1
                trio.lowlevel.reschedule(task, Value(False))

    def _earliest(self) -> float:
        heap = self._heap
        while heap and heap[0][2].task is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    async def run(self) -> None:
        """The timer task: runs until cancelled; then wakes every waiter to look again (each
        falls back to a cancel scope of its own if it waits on)."""
        self.running = True
        try:
            while True:
                self._sleep_at = min(self._earliest(), self.tick_at)
                with trio.CancelScope(deadline=self._sleep_at) as sleep:
                    self._sleep = sleep
                    try:
                        await trio.sleep_forever()
                    finally:
                        self._sleep = None
                now = trio.current_time()
                self._expire(now)
                if self.tick_at <= now:
                    self.tick_at = math.inf
                    tick = self._tick
                    if tick is not None:
                        tick(now)
        finally:
            self.running = False
            for _, _, parked in self._heap:
                parked.wake()
            self._heap.clear()
