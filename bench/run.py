"""Benchmarks of the tunnel on 127.0.0.1, each beside a bare wsproto-on-trio baseline.

    python bench/run.py            # the default run (well under a minute on 2 cores)
    python bench/run.py --quick    # a ~10 s smoke run with small counts
    python bench/run.py --json out.json
    python bench/run.py --json out.json --files   # also bench/files.py, its figures in out.json

Everything runs in one process and one trio loop: a host, its members and the baseline server
and clients share the CPU, as two agents on one machine would. Figures are measured, printed
and optionally written out; nothing here judges them (speed is never asserted).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import _baseline as base
import _goals as goals
import _idle as idle
import _mcp as mcp
import _startup as startup
import _tunnel as tun
import trio
from _stats import Figure, render_table

SMALL = 32
LARGE = 1024


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to take."""

    joins: int
    joins_filling: int
    latency_samples: int
    pipe_count_small: int
    pipe_count_large: int
    reps: int
    senders: int
    fanout_members: int
    fanout_count: int
    stall_count: int
    stall_size: int
    startup_reps: int
    mcp_joins: int
    mcp_samples: int
    idle_window: float


DEFAULT = Plan(
    joins=40,
    joins_filling=15,
    latency_samples=300,
    pipe_count_small=600,
    pipe_count_large=600,
    reps=3,
    senders=32,
    fanout_members=15,
    fanout_count=120,
    stall_count=8192,
    stall_size=LARGE,
    startup_reps=7,
    mcp_joins=20,
    mcp_samples=200,
    idle_window=25.0,
)
QUICK = Plan(
    joins=8,
    joins_filling=8,
    latency_samples=60,
    pipe_count_small=400,
    pipe_count_large=300,
    reps=1,
    senders=16,
    fanout_members=15,
    fanout_count=60,
    stall_count=2048,
    stall_size=LARGE,
    startup_reps=3,
    mcp_joins=5,
    mcp_samples=30,
    idle_window=5.0,
)


async def measure(plan: Plan, progress: bool) -> list[Figure]:
    figures: list[Figure] = []

    started = time.perf_counter()

    def step(name: str) -> None:
        if progress:
            print(f"  {time.perf_counter() - started:5.1f} s  {name}", file=sys.stderr, flush=True)

    server = base.BareServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        n = plan.latency_samples

        step("join")
        connect = await base.connect_time(server, plan.joins)
        fig = await tun.join_time(plan.joins, stay=False)
        fig.baseline = connect
        figures.append(fig)
        fig = await tun.join_time(plan.joins_filling, stay=True)
        fig.baseline = connect
        figures.append(fig)

        step("say -> ack, host.say, one-way")
        fig = await tun.say_ack(SMALL, n)
        fig.baseline = await base.echo_rtt(server, SMALL, n)
        figures.append(fig)
        fig = await tun.host_say(SMALL, n)
        fig.baseline = await base.send_call(server, SMALL, n)
        figures.append(fig)
        for size in (SMALL, LARGE):
            fig = await tun.one_way(size, n)
            fig.baseline = await base.one_way(server, size, n)
            figures.append(fig)

        for size, count in ((SMALL, plan.pipe_count_small), (LARGE, plan.pipe_count_large)):
            step(f"pipelined {size} B")
            fig = await tun.pipelined_member(size, count, plan.reps, plan.senders)
            fig.baseline = await base.echo_pipelined(server, size, count, plan.reps)
            figures.append(fig)
            fig = await tun.pipelined_host(size, count, plan.reps)
            fig.baseline = await base.push(server, size, count, plan.reps)
            figures.append(fig)

        step(f"fan-out 1 -> {plan.fanout_members}")
        for size in (SMALL, LARGE):
            fig = await tun.fan_out(size, plan.fanout_count, plan.fanout_members, plan.reps)
            fig.baseline = await base.fan_out(
                server, size, plan.fanout_count, plan.fanout_members, plan.reps
            )
            figures.append(fig)

        step("stalled member memory")
        fig = await tun.stalled_reader_memory(plan.stall_size, plan.stall_count)
        fig.baseline = await base.stalled_reader_memory(
            server, plan.stall_size, plan.stall_count, budget=0.5
        )
        figures.append(fig)

        step("done")
        nursery.cancel_scope.cancel()
    return figures


async def measure_processes(plan: Plan, progress: bool) -> list[Figure]:
    """The figures of real server processes (start-up, MCP calls, idle). They run first, in a
    fresh event loop: this process is their MCP client, and after the library figures its heap
    (and the garbage collector's work) is much larger."""
    figures: list[Figure] = []
    started = time.perf_counter()

    def step(name: str) -> None:
        if progress:
            print(f"  {time.perf_counter() - started:5.1f} s  {name}", file=sys.stderr, flush=True)

    step("start-up: server processes over stdio")
    figures.append(await startup.start_to_initialize(plan.startup_reps))
    figures += await startup.first_join(plan.startup_reps)

    step("MCP: join, say -> listen, status over stdio")
    figures += await mcp.mcp_figures(plan.mcp_joins, plan.mcp_samples)

    if idle.available():
        step(f"idle: {plan.idle_window:g} s of silence")
        figures += await idle.idle_figures(plan.idle_window)
    return figures


def _notes(plan: Plan, figures: list[Figure]) -> list[str]:
    by_key = {f.key: f for f in figures}
    imports = startup.server_imports()
    filling = by_key["join.filling"]
    stall = by_key["stall.mem"]
    x = stall.extra
    return [
        "ratio = tunnel median / baseline median: above 1 is slower for times and memory, "
        "below 1 is slower for rates.",
        "baseline = bare wsproto on trio (bench/_baseline.py, frozen: it imports nothing of ours) on 127.0.0.1: no Noise, no room, "
        "no session; the same message sizes.",
        "join: open_host once, then one join per fresh invite, timed from join() to its "
        f"return. 'host alone': {plan.joins} joins, each member leaves (untimed) before the "
        f"next. 'room filling': {plan.joins_filling} joins whose members stay; first fifth "
        f"median {filling.extra['first_fifth_median_ms']:.2f} ms, last fifth "
        f"{filling.extra['last_fifth_median_ms']:.2f} ms (every member, host and joiner share "
        "this process). Baseline: TCP connect + HTTP upgrade only.",
        "member.say -> seq is member -> host -> member (the say comes back stamped); "
        "its baseline is the echo round trip of the same size.",
        "host.say() does no network wait (it seals and writes for each member, or, corked, "
        "leaves that to the flush of what is held); its baseline is one `await ws.send()` of "
        "the same size.",
        "one-way: the host says a perf_counter stamp, the member's listen() returns it; "
        "baseline: the server stamps, the client receives.",
        f"pipelined member->member: {plan.senders} concurrent member.say() tasks on one member, "
        "deliveries counted by another member's listen(); RATE LIMITER AND INBOUND BUDGET "
        f"LIFTED (RoomConfig rate_burst={tun.UNLIMITED['rate_burst']:,}, "
        f"rate_per_sec={tun.UNLIMITED['rate_per_sec']:g}, inbound_* likewise); "
        "bench/flood.py measures the budget against a flooder; "
        "baseline: a client pipelining at an echo server (also two hops).",
        "pipelined host->member: host.say() in a loop, yielding between says (the host is "
        "not rate-limited); baseline: a bare server streaming to one client.",
        f"fan-out: RoomConfig(capacity={plan.fanout_members + 1}), the host says "
        f"{plan.fanout_count} messages, {plan.fanout_members} members listen; "
        "deliveries/s = messages x members / time until the last member has them all. "
        "Baseline: a bare server sending each message to every client in turn. "
        "Pipelined host->member and fan-out: the host says faster than the process goes idle, "
        "so the relay's autocork holds its says (at most 64, 5 ms) and each member gets them "
        "in one transport message (batch/1); a say made after the process went idle goes out "
        "at once (one-way).",
        f"rates are the median of {plan.reps} run(s) (a fresh room each); no p95 for them.",
        "start-up: `python -m tunnel_mcp` spawned and driven by the SDK's stdio client "
        "(handshake-era initialize); baseline: a process that only imports mcp.server.lowlevel "
        "(importing any part of the SDK imports all of it). Imports of the server, cumulative: "
        f"mcp {imports['mcp']:.0f} ms, trio {imports['trio']:.0f} ms, tunnel_mcp.stdio "
        f"{imports['tunnel_mcp.stdio']:.0f} ms in all. first join: a fresh guest process's "
        f"first tunnel_join (local transport), {startup.SETTLE:g} s after its start (a human "
        "pastes the link), from the call to its answer; baseline: the same process joining "
        "again after leaving.",
        "MCP rows: a host and a guest `python -m tunnel_mcp` (local transport, no turn budget) "
        "driven by this process's SDK stdio client; steady state (warm-up calls not counted). "
        f"join: {plan.mcp_joins} joins with fresh links, each left before the next. "
        f"say -> listen ({plan.mcp_samples} samples): the guest's tunnel_listen is pending "
        f"({mcp.LISTEN_SETTLE * 1000:g} ms after it was called) when the host's tunnel_say is "
        "called; timed until the listen has returned. Baseline of each: an MCP ping round trip "
        "on the same connection, taken in turn with the samples (the SDK's floor per request).",
        mcp.cpu_note(figures),
        f"idle: over {plan.idle_window:g} s of silence (after 3 s to settle), CPU ms and wakeups "
        "(context switches of all threads) per second of a host `python -m tunnel_mcp` with 2 "
        "guest processes joined, of one of those guests, and of a server process with no "
        "tunnel; baseline: a process that imported the SDK and blocks on stdin. Keepalives: "
        "a connection silent for 20 s is pinged."
        if "idle.host.cpu" in by_key
        else "idle: not measured (needs Linux /proc).",
        f"stalled member: default RoomConfig (window {x['room_window_kib']:.0f} KiB), "
        f"the host says {plan.stall_count} x {plan.stall_size} B "
        f"({x['said_kib']:.0f} KiB) while its only member never reads. "
        f"Relay peak queued {x['relay_peak_queued_kib']:.1f} KiB "
        f"(outbox limit {x['relay_outbox_limit_kib']:.0f} KiB, queued at the end "
        f"{x['relay_queued_now_kib']:.1f} KiB); transcript kept "
        f"{x['transcript_kept_kib']:.0f} KiB of frames (cap {x['transcript_cap_kib']:.0f} KiB); "
        f"heap still held at the end {x['heap_after_kib']:.0f} KiB. "
        "The heap peak is mostly the transcript (held for history and resume, bounded by "
        "transcript_cap), not queues. Baseline: a bare server whose send() blocks once the "
        f"socket buffers are full (it got {stall.baseline.extra['sent_before_blocking_kib']:.0f}"
        " KiB into them)."
        if stall.baseline
        else "",
    ]


def _files(quick: bool) -> dict[str, object] | None:
    """bench/files.py in its own process (its own figures and table), its JSON brought back."""
    print(flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "files.json"
        argv = [sys.executable, str(Path(__file__).with_name("files.py")), "--json", str(out)]
        done = subprocess.run(argv + (["--quick"] if quick else []), check=False)
        if not out.exists():
            print(f"- bench/files.py failed (exit {done.returncode}); no file figures", file=sys.stderr)
            return None
        result: dict[str, object] = json.loads(out.read_text())
        result["exit_code"] = done.returncode
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~10 s smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--files", action="store_true", help="also run bench/files.py (1 GiB; 128 MiB with --quick)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else DEFAULT
    # The session layer logs reconnects and cut-offs at INFO; the table is the output here.
    logging.basicConfig(level=logging.WARNING)

    print(
        f"tunnel-mcp bench ({'quick' if args.quick else 'default'}): "
        f"Python {platform.python_version()}, trio {trio.__version__}, "
        f"{os.cpu_count()} CPUs, 127.0.0.1",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    processes = trio.run(measure_processes, plan, not args.quiet)
    figures = trio.run(measure, plan, not args.quiet) + processes
    wall = time.perf_counter() - t0

    print()
    print(render_table(figures))
    print()
    notes = [note for note in _notes(plan, figures) if note]
    for note in notes:
        if note:
            print(f"- {note}")
    print(f"- total wall time {wall:.1f} s")
    print()
    judged = goals.rows(figures)
    print(goals.render(judged))

    files = _files(args.quick) if args.files else None

    if args.json:
        out = {
            "mode": "quick" if args.quick else "default",
            "python": platform.python_version(),
            "trio": trio.__version__,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "wall_seconds": wall,
            "plan": asdict(plan),
            "rate_limits_lifted_for_pipelined": tun.UNLIMITED,
            "figures": {f.key: f.as_json() for f in figures},
            "issue_11_goals": judged,
            "notes": notes,
            "files": files,
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"- results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
