"""The tunnel figures, measured through the session API (open_host / join / say / listen).

Every scenario opens its own room on 127.0.0.1 (the `local` transport) and closes it, so one
scenario's transcript never slows the next. Where many says must be in flight the room's rate
limiter and inbound budget are lifted (`UNLIMITED`): they would otherwise hold a member to 5
says/s and cut it off past 100 frames/s, and the figure would measure the limiter, not the
tunnel.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from _stats import Figure

from tunnel_trio._ws import WebSocket, connect_websocket
from tunnel_trio.session import HostSession, MemberSession, RoomConfig, join, open_host
from tunnelproto import MAX_FRAME, JoinLink, MemberConnection, Welcomed
from tunnelproto._room import MAX_CAPACITY

#: The rate limiter (and the inbound budget that is sized from it) out of the way (see the
#: module docstring).
UNLIMITED = {
    "rate_burst": 1_000_000_000,
    "rate_per_sec": 1e9,
    "inbound_frame_burst": 1_000_000_000,
    "inbound_frames_per_sec": 1e9,
    "inbound_byte_burst": 1 << 60,
    "inbound_bytes_per_sec": 1e18,
}
STAMP_DIGITS = 20


def text_of(size: int, tag: int = 0) -> str:
    """An ASCII chat text of exactly `size` bytes (at least STAMP_DIGITS), unique by `tag`."""
    return f"{tag:0{STAMP_DIGITS}d}".ljust(size, "x")


@dataclass
class Room:
    host: HostSession
    members: list[MemberSession]


@asynccontextmanager
async def room(
    members: int, config: RoomConfig | None = None, *, goal: str = "bench"
) -> AsyncIterator[Room]:
    """A host with `members` joined members; everything is torn down on exit."""
    async with trio.open_nursery() as nursery:
        host = await open_host(nursery, goal, name="host", config=config)
        joined = []
        for i in range(members):
            invite = host.initial_invites[0] if i == 0 else host.invite(1)[0]
            joined.append(await join(nursery, invite.join_link, name=f"m{i}"))
        try:
            yield Room(host, joined)
        finally:
            with trio.move_on_after(5):
                await host.close()
            nursery.cancel_scope.cancel()


async def _count_chats(member: MemberSession, want: int, since: int = 0) -> int:
    """Listen (as an agent would) until `want` chat messages arrived; returns the last seq."""
    got = 0
    while got < want:
        result = await member.listen(since, 30.0)
        got += sum(1 for m in result.messages if m.kind == "chat")
        since = result.last_seq
    return since


# ---------------------------------------------------------------------------- latency


async def join_time(n: int, *, stay: bool) -> Figure:
    """open_host once, then `n` joins, each with a fresh invite.

    stay=False: each member leaves (untimed) before the next joins, so every join finds the
    host alone. stay=True: the members stay, so join k finds k-1 members in the room.
    """
    samples = []
    config = RoomConfig(capacity=min(MAX_CAPACITY, n + 1) if stay else 2)
    async with trio.open_nursery() as nursery:
        host = await open_host(nursery, "bench joins", name="host", invites=1, config=config)
        link = host.initial_invites[0].join_link
        for i in range(n):
            if i:
                link = host.invite(1)[0].join_link
            t0 = time.perf_counter()
            member = await join(nursery, link, name=f"m{i}")
            samples.append((time.perf_counter() - t0) * 1000)
            if not stay:
                await member.close()
                with trio.fail_after(10):  # the seat is free once the host saw the goodbye
                    while len(host.room.roster()) > 1:
                        await trio.sleep(0.001)
        await host.close()
        nursery.cancel_scope.cancel()
    if stay:
        fig = Figure("join.filling", f"join, room filling to {n} members", "ms", samples)
    else:
        fig = Figure("join.empty", "join, host alone in the room", "ms", samples)
    k = max(1, n // 5)
    fig.extra["first_fifth_median_ms"] = sorted(samples[:k])[k // 2]
    fig.extra["last_fifth_median_ms"] = sorted(samples[-k:])[k // 2]
    return fig


async def say_ack(size: int, n: int) -> Figure:
    """member.say() until it returns the seq the host stamped (member->host->member)."""
    samples = []
    async with room(1, RoomConfig(**UNLIMITED)) as r:
        member = r.members[0]
        for i in range(n + 20):
            text = text_of(size, i)
            t0 = time.perf_counter()
            await member.say(text)
            if i >= 20:
                samples.append((time.perf_counter() - t0) * 1e6)
    return Figure(f"say_ack.{size}", f"member.say -> seq {size} B", "us", samples)


async def host_say(size: int, n: int) -> Figure:
    """host.say() call time with one member listening (seal + queue; no network wait)."""
    samples = []
    async with room(1) as r:
        host, member = r.host, r.members[0]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_count_chats, member, n + 20)
            for i in range(n + 20):
                text = text_of(size, i)
                t0 = time.perf_counter()
                await host.say(text)
                elapsed = time.perf_counter() - t0
                if i >= 20:
                    samples.append(elapsed * 1e6)
                await trio.sleep(0)  # a host agent does other things between says
    return Figure(f"host_say.{size}", f"host.say() call {size} B", "us", samples)


async def one_way(size: int, n: int) -> Figure:
    """host.say(stamp) -> member.listen() returns it; one process, so one clock."""
    samples: list[float] = []
    async with room(1) as r:
        host, member = r.host, r.members[0]
        send_arrival, arrivals = trio.open_memory_channel[float](1)

        async def listener() -> None:
            since = 0
            while True:
                result = await member.listen(since, 30.0)
                now = time.perf_counter_ns()
                since = result.last_seq
                for m in result.messages:
                    if m.kind == "chat" and m.text:
                        await send_arrival.send((now - int(m.text[:STAMP_DIGITS])) / 1000)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener)
            for i in range(n + 20):
                await host.say(text_of(size, time.perf_counter_ns()))
                latency = await arrivals.receive()
                if i >= 20:
                    samples.append(latency)
            nursery.cancel_scope.cancel()
    return Figure(f"oneway.{size}", f"one-way host->member {size} B", "us", samples)


# ---------------------------------------------------------------------------- throughput


async def pipelined_member(size: int, count: int, reps: int, senders: int) -> Figure:
    """`senders` concurrent member.say() tasks on member A; deliveries counted at member B."""
    rates = []
    for _ in range(reps):
        async with room(2, RoomConfig(**UNLIMITED)) as r:
            a, b = r.members
            per_task = count // senders

            async def talk(first: int, a: MemberSession = a, per_task: int = per_task) -> None:
                for i in range(first, first + per_task):
                    await a.say(text_of(size, i))

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_count_chats, b, per_task * senders)
                for s in range(senders):
                    nursery.start_soon(talk, s * per_task)
            rates.append(per_task * senders / (time.perf_counter() - t0))
    return Figure(
        f"pipe.member.{size}",
        f"pipelined member->member {size} B",
        "msg/s",
        rates,
        higher_is_better=True,
        show_p95=False,
        note=f"{senders} concurrent say tasks, rate limiter lifted",
    )


async def _host_stream(host: HostSession, size: int, count: int) -> None:
    for i in range(count):
        await host.say(text_of(size, i))
        await trio.sleep(0)


async def pipelined_host(size: int, count: int, reps: int) -> Figure:
    """host.say() in a loop (yielding between says); deliveries counted at the member."""
    rates = []
    for _ in range(reps):
        async with room(1) as r:
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_count_chats, r.members[0], count)
                nursery.start_soon(_host_stream, r.host, size, count)
            rates.append(count / (time.perf_counter() - t0))
    return Figure(
        f"pipe.host.{size}",
        f"pipelined host->member {size} B",
        "msg/s",
        rates,
        higher_is_better=True,
        show_p95=False,
    )


async def fan_out(size: int, count: int, members: int, reps: int) -> Figure:
    """The host says `count` messages; each of `members` listening members must get them all."""
    rates = []
    for _ in range(reps):
        async with room(members, RoomConfig(capacity=members + 1)) as r:
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for member in r.members:
                    nursery.start_soon(_count_chats, member, count)
                nursery.start_soon(_host_stream, r.host, size, count)
            rates.append(count * members / (time.perf_counter() - t0))
    return Figure(
        f"fanout.{size}",
        f"fan-out 1->{members} {size} B",
        "deliv/s",
        rates,
        higher_is_better=True,
        show_p95=False,
    )


# ---------------------------------------------------------------------------- memory


async def _stalled_member(link: str, name: str) -> tuple[WebSocket, MemberConnection]:
    """A hand-driven member: joins, confirms, then never reads again."""
    parsed = JoinLink.parse(link)
    ws = await connect_websocket(parsed.websocket_url, max_message_size=MAX_FRAME)
    conn = MemberConnection(parsed, name, trio.current_time())
    for data in conn.data_to_send():
        await ws.send(data)
    conn.receive_data(await ws.receive(), trio.current_time())
    if not isinstance(conn.next_event(), Welcomed):
        raise RuntimeError("the stalled member was not welcomed")
    for data in conn.data_to_send():  # the confirming ack
        await ws.send(data)
    return ws, conn


async def stalled_reader_memory(size: int, count: int) -> Figure:
    """The host says `count` messages while its only member has stopped reading.

    Default RoomConfig (1 MiB window). Reports the heap peak (tracemalloc, whole process:
    the host, plus the stalled member that holds nothing) above the level before the says,
    and the relay's own figures: the peak of its outbound queues and the transcript it keeps.
    """
    async with trio.open_nursery() as nursery:
        host = await open_host(nursery, "bench stall", name="host")
        ws, _conn = await _stalled_member(host.initial_invites[0].join_link, "sloth")
        relay = host.relay
        await trio.sleep(0.05)  # the confirmation lands; the seat is taken
        gc.collect()
        tracemalloc.start()
        try:
            start, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            for i in range(count):
                await host.say(text_of(size, i))
                await trio.sleep(0)
            await trio.sleep(0.2)  # the writer pushes what the window allows into the socket
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        fig = Figure(
            "stall.mem",
            "host, stalled member: heap peak",
            "KiB",
            [(peak - start) / 1024],
            show_p95=False,
            note="default window; tracemalloc over the whole process",
        )
        fig.extra.update(
            said_kib=count * size / 1024,
            heap_after_kib=(current - start) / 1024,
            relay_peak_queued_kib=relay.peak_queued_bytes / 1024,
            relay_outbox_limit_kib=relay.outbox_limit / 1024,
            relay_queued_now_kib=relay.queued_bytes() / 1024,
            room_window_kib=host.room.config.window / 1024,
            transcript_kept_kib=host.room._kept_bytes / 1024,
            transcript_cap_kib=host.room.config.transcript_cap / 1024,
        )
        await ws.aclose()  # gone before close(), so the host does not wait for its goodbye
        with trio.move_on_after(5):
            await host.close()
        nursery.cancel_scope.cancel()
    return fig
