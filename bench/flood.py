"""Host CPU and an honest member's say latency while another member floods the room.

    python bench/flood.py                          # idle, then each flood for 20 s
    python bench/flood.py --seconds 30 --modes oversized,duplicate
    python bench/flood.py --quick                  # 5 s per phase
    python bench/flood.py --json out.json

Three processes, so that the CPU figure is the host's alone: the host (relay and room) runs in
one child process, the flooder in another, and the honest member here. The honest member says
a short text every 0.25 s (under the room's rate limit of 5 a second) and times each say until
the host stamped it, first with nobody flooding ("idle"), then during each flood.

The floods are what a seated member can send that the room refuses or ignores, as fast as one
connection takes it: `oversized` says (64 KB texts, refused as too long), `duplicate` says (32 KB
texts, all with one already-used ref, ignored), `empty` says (refused), `acks` (acks that
acknowledge nothing new). The flooder reads what the host sends (so the relay's outbound queue
is not what stops it) and, whenever the host cuts it off, takes its seat back with its resume
ticket at once and floods on: the figure is what a determined flooder costs the host.

Host CPU is read from /proc (Linux), as a share of one core over the phase. Figures are
measured and printed; nothing here judges them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
from _stats import percentile

from tunnel_trio._ws import WebSocketClosed, connect_websocket
from tunnel_trio.session import join, open_host
from tunnelproto import MAX_FRAME, JoinLink, MemberConnection, Welcomed
from tunnelproto import _frames as f

MODES = ("oversized", "duplicate", "empty", "acks")
SAY_EVERY = 0.25
BATCH = 16


# ------------------------------------------------------------------------- host process


async def _host_main() -> None:
    async with trio.open_nursery() as nursery:
        host = await open_host(nursery, "flood bench", name="host", invites=1 + len(MODES))
        links = [inv.join_link for inv in host.initial_invites]
        print(json.dumps({"pid": os.getpid(), "links": links}), flush=True)
        # Serve until the parent closes our stdin.
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        with trio.move_on_after(5):
            await host.close()
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------- flooder process


def _flood_frame(mode: str, ref: int) -> f.Frame:
    if mode == "oversized":
        return f.Say(ref=ref, text="x" * 65000)  # refused: too long (max 32768 bytes)
    if mode == "duplicate":
        return f.Say(ref=1, text="d" * 32000)  # ref 1 was used: ignored as a re-send
    if mode == "empty":
        return f.Say(ref=ref, text=" ")  # refused: empty
    return f.Ack(seq=0)  # acknowledges nothing new


async def _read_all(ws: Any, conn: MemberConnection) -> None:
    """Read (and ack) everything, so the host's outbound queue never stops the flood."""
    while True:
        data = await ws.receive()
        try:
            conn.receive_data(data, trio.current_time())
        except Exception:  # noqa: BLE001 - the flooder only reads to keep the queue empty
            pass
        for _ in iter(conn.next_event, None):
            pass


async def _flooder_main(link_text: str, mode: str, seconds: float) -> None:
    link = JoinLink.parse(link_text)
    stats: dict[str, Any] = {
        "mode": mode, "bytes": 0, "frames": 0, "cuts": [], "resumes": 0, "first_cut_s": None
    }
    resume = None
    ref = 2  # refs only grow, across connections too (ref 1 is the first, honest say)
    start = trio.current_time()
    end = start + seconds

    def cut(code: int | str) -> None:
        if trio.current_time() < end:
            stats["cuts"].append(code)
            if stats["first_cut_s"] is None:
                stats["first_cut_s"] = round(trio.current_time() - start, 2)

    while trio.current_time() < end:
        ws = await connect_websocket(link.websocket_url, max_message_size=MAX_FRAME)
        conn = MemberConnection(link, "flooder", trio.current_time(), resume=resume)
        try:
            await ws.send_many(conn.data_to_send())
            conn.receive_data(await ws.receive(), trio.current_time())
            welcomed = any(isinstance(e, Welcomed) for e in iter(conn.next_event, None))
            if not welcomed:
                cut("refused")
                break
            if resume is None:
                conn.say("hello")  # uses ref 1, so duplicates have something to repeat
            else:
                stats["resumes"] += 1
            resume = conn.resume_state()
            channel = conn._channel
            assert channel is not None

            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_all, ws, conn)
                with trio.move_on_at(end):
                    while True:
                        batch = conn.data_to_send()
                        for _ in range(BATCH):
                            batch.append(channel.seal(_flood_frame(mode, ref).encode()))
                            ref += 1
                        await ws.send_many(batch)
                        stats["frames"] += len(batch)
                        stats["bytes"] += sum(len(b) for b in batch)
                nursery.cancel_scope.cancel()
        except WebSocketClosed as exc:
            cut(exc.code)
        except BaseExceptionGroup as group:
            closed = [e for e in group.exceptions if isinstance(e, WebSocketClosed)]
            if not closed:
                raise
            cut(closed[0].code)
        finally:
            await ws.aclose()
        if resume is not None:
            # Take the seat back at once with the latest ticket (a fresh one per welcome).
            state = conn.resume_state()
            resume = state or resume
    print(json.dumps(stats), flush=True)


# ------------------------------------------------------------------------- the measurement


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _honest(member: Any, seconds: float, latencies: list[float]) -> None:
    end = trio.current_time() + seconds
    n = 0
    while trio.current_time() < end:
        n += 1
        t0 = time.perf_counter()
        await member.say(f"honest {n}")
        latencies.append((time.perf_counter() - t0) * 1000)
        await trio.sleep(max(0.0, SAY_EVERY - (time.perf_counter() - t0)))


async def _phase(
    host_pid: int, member: Any, seconds: float, mode: str | None, link: str | None
) -> dict[str, Any]:
    latencies: list[float] = []
    flood: dict[str, Any] = {}
    cpu0, wall0 = _cpu_seconds(host_pid), time.perf_counter()
    async with trio.open_nursery() as nursery:
        if mode is not None:
            assert link is not None

            async def run_flooder() -> None:
                args = [sys.executable, __file__, "--role", "flooder", "--link", link,
                        "--mode", mode, "--seconds", str(seconds)]
                done = await trio.run_process(args, capture_stdout=True, stdin=subprocess.DEVNULL)
                flood.update(json.loads(done.stdout.decode().strip().splitlines()[-1]))

            nursery.start_soon(run_flooder)
        await _honest(member, seconds, latencies)
    cpu1, wall1 = _cpu_seconds(host_pid), time.perf_counter()
    return {
        "phase": mode or "idle",
        "seconds": round(wall1 - wall0, 2),
        "host_cpu_pct": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
        "say_ms_median": round(percentile(latencies, 50), 2),
        "say_ms_p95": round(percentile(latencies, 95), 2),
        "say_ms_max": round(max(latencies), 2),
        "says": len(latencies),
        "flood": flood,
    }


async def _main(seconds: float, modes: list[str]) -> list[dict[str, Any]]:
    host = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--role", "host"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert host.stdout is not None and host.stdin is not None
    line = b""
    while not line.endswith(b"\n"):
        line += await host.stdout.receive_some(65536)
    info = json.loads(line)
    results = []
    try:
        async with trio.open_nursery() as nursery:
            member = await join(nursery, info["links"][0], name="honest")
            results.append(await _phase(info["pid"], member, seconds, None, None))
            for i, mode in enumerate(modes):
                await trio.sleep(2.0)  # let the previous flood's leftovers drain
                results.append(await _phase(info["pid"], member, seconds, mode, info["links"][i + 1]))
                print(f"  {json.dumps(results[-1])}", file=sys.stderr, flush=True)
            await member.close()
            nursery.cancel_scope.cancel()
    finally:
        await host.stdin.aclose()
        with trio.move_on_after(10):
            await host.wait()
        if host.returncode is None:
            host.kill()
    return results


def _render(results: list[dict[str, Any]]) -> str:
    head = (f"{'phase':<10} {'host CPU':>9} {'say p50':>9} {'say p95':>9} {'say max':>9} "
            f"{'flood sent':>11} {'first cut':>10} {'cut off (close codes)':<24}")
    lines = [head, "-" * len(head)]
    for r in results:
        fl = r["flood"]
        sent = f"{fl['bytes'] / 1e6:.0f} MB" if fl else "-"
        first = f"{fl['first_cut_s']:.2f} s" if fl and fl["first_cut_s"] is not None else "-"
        cuts = fl.get("cuts", []) if fl else []
        summary = "-"
        if fl:
            codes = sorted({str(c) for c in cuts})
            summary = f"{len(cuts)}x {','.join(codes)}" if cuts else "never"
        lines.append(
            f"{r['phase']:<10} {r['host_cpu_pct']:>8.1f}% {r['say_ms_median']:>7.1f}ms "
            f"{r['say_ms_p95']:>7.1f}ms {r['say_ms_max']:>7.1f}ms {sent:>11} {first:>10} "
            f"{summary:<24}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("main", "host", "flooder"), default="main")
    parser.add_argument("--link")
    parser.add_argument("--mode", choices=MODES)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--modes", default=",".join(MODES), help="floods to run, comma-separated")
    parser.add_argument("--quick", action="store_true", help="5 s phases")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    args = parser.parse_args(argv)
    if args.role == "host":
        trio.run(_host_main)
        return 0
    if args.role == "flooder":
        trio.run(_flooder_main, args.link, args.mode, args.seconds)
        return 0
    seconds = 5.0 if args.quick else args.seconds
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {sorted(unknown)}")
    print(f"flood bench: {len(modes)} floods of {seconds:g} s, {os.cpu_count()} CPUs, 127.0.0.1",
          file=sys.stderr)
    results = trio.run(_main, seconds, modes)
    print()
    print(_render(results))
    print()
    print("- host CPU: the host process (relay + room) as a share of one core over the phase.")
    print(f"- say: the honest member says every {SAY_EVERY} s and waits for its stamped copy.")
    print("- flood sent: what the flooder wrote to its sockets (the host read at most that); "
          "first cut: seconds from the flood's start to the host's first close; cut off: how "
          "often the host closed its connection, and with which codes (1006: the close frame "
          "was lost; the flooder tries to resume at once each time, 'refused' when it could "
          "not).")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"- results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
