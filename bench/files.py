"""One large file member to member through the tunnel, beside a bare TCP relay of the same bytes.

    python bench/files.py              # 1 GiB (about a minute on 2 cores)
    python bench/files.py --size 256   # MiB
    python bench/files.py --quick      # 128 MiB
    python bench/files.py --json out.json

Three processes, as three agents on one machine: this one is the host (its relay and room, with
nothing shared or received by it); two children join it as members, one shares the file and the
other receives it (`prepare_share`/`share`, then `plan_receive`/`receive`: scan, fetch, write
to a temporary name, SHA-256, fsync, rename). While the file moves, the sharer says a stamped
ping every PING_EVERY seconds and the receiver's `listen` notes when each arrives: the same
pings before the transfer are the idle figure. Both members' connections carry the transfer
(sharer -> host, host -> receiver), so every ping goes behind chunks twice.

The baseline is the same bytes through a bare TCP relay in this process (no WebSocket, no Noise,
no room): a child reads the file and sends it, another writes it, hashes it and fsyncs it.
The host's RSS is sampled (Linux: /proc) while the transfer runs; its growth over what it held
before is the figure (the relay holds at most a window per transfer).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from _stats import Figure, render_table

MIB = 1024 * 1024
PING_EVERY = 0.1
IDLE_PINGS = 30
BLOCK = 256 * 1024


def rss_bytes() -> int:
    """This process's resident set (Linux); 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def make_file(path: Path, size: int) -> None:
    block = os.urandom(4 * MIB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


# ---- children ------------------------------------------------------------------------------


async def sharer(link: str, path: str) -> dict[str, object]:
    from tunnel_trio.session import join

    async with trio.open_nursery() as nursery:
        me = await join(nursery, link, name="sharer")
        since = 0
        # Wait for the host's word: everyone is in.
        while True:
            result = await me.listen(since, 5.0)
            since = result.last_seq
            if any(m.kind == "chat" and m.text == "go" for m in result.messages):
                break
        for i in range(IDLE_PINGS):
            await me.say(f"ping idle {i} {time.monotonic_ns()}")
            await trio.sleep(PING_EVERY)
        prepared = await me.prepare_share(path)
        cpu0 = time.process_time()
        await me.share(prepared)
        done = trio.Event()

        async def watch() -> None:
            nonlocal since
            while not done.is_set() and not me.closed:
                result = await me.listen(since, 5.0)
                since = result.last_seq
                if any(m.kind == "chat" and m.text == "received" for m in result.messages):
                    done.set()

        nursery.start_soon(watch)
        i = 0
        while not done.is_set():
            await me.say(f"ping busy {i} {time.monotonic_ns()}")
            i += 1
            with trio.move_on_after(PING_EVERY):
                await done.wait()
        out = {"rss_peak": _peak_rss(), "cpu": time.process_time() - cpu0}
        await me.close()
        nursery.cancel_scope.cancel()
    return out


async def receiver(link: str, save_to: str) -> dict[str, object]:
    from tunnel_trio.session import join

    async with trio.open_nursery() as nursery:
        me = await join(nursery, link, name="receiver")
        idle: list[float] = []
        busy: list[float] = []
        offer: list[int] = []
        window: list[int] = []  # receive start and end, monotonic ns
        got = trio.Event()

        async def listen() -> None:
            since = 0
            while not me.closed:  # a closed session's listen returns at once
                result = await me.listen(since, 5.0)
                now = time.monotonic_ns()
                since = result.last_seq
                for m in result.messages:
                    if m.kind == "chat" and m.text and m.text.startswith("ping "):
                        _, phase, _, stamp = m.text.split()
                        (idle if phase == "idle" else busy).append((now - int(stamp)) / 1e6)
                    elif m.kind == "file" and m.event == "file-offer" and m.file and not offer:
                        offer.append(m.file.offer_id)
                        got.set()

        nursery.start_soon(listen)
        await got.wait()
        plan = await me.plan_receive(offer[0], save_to)
        window.append(time.monotonic_ns())
        cpu0 = time.process_time()
        result = await me.receive(plan)
        cpu1 = time.process_time()
        window.append(time.monotonic_ns())
        await me.say("received")
        await trio.sleep(0.5)  # the pings still on their way
        out = {
            "seconds": (window[1] - window[0]) / 1e9,
            "complete": result.complete,
            "error": result.error,
            "bytes": result.received_bytes,
            "sha256": result.written[0].sha256 if result.written else None,
            "idle_ms": idle,
            "busy_ms": busy,
            "rss_peak": _peak_rss(),
            "cpu": cpu1 - cpu0,
        }
        await me.close()
        nursery.cancel_scope.cancel()
    return out


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tcp_send(port: int, path: str) -> dict[str, object]:
    with socket.create_connection(("127.0.0.1", port)) as sock, open(path, "rb") as f:
        while block := f.read(BLOCK):
            sock.sendall(block)
    return {}


def tcp_receive(port: int, out: str) -> dict[str, object]:
    digest = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", port)) as sock, open(out, "wb") as f:
        sock.sendall(b"r")  # tells the relay which end this is
        first = sock.recv(BLOCK)
        start = time.monotonic_ns()
        n = 0
        data = first
        while data:
            f.write(data)
            digest.update(data)
            n += len(data)
            data = sock.recv(BLOCK)
        f.flush()
        os.fsync(f.fileno())
    return {"seconds": (time.monotonic_ns() - start) / 1e9, "bytes": n,
            "sha256": digest.hexdigest()}


def child_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    if args.child == "sharer":
        out = trio.run(sharer, args.link, args.path)
    elif args.child == "receiver":
        out = trio.run(receiver, args.link, args.path)
    elif args.child == "tcp-send":
        out = tcp_send(args.port, args.path)
    else:
        out = tcp_receive(args.port, args.path)
    print(json.dumps(out))


# ---- the parent: host and relay ----------------------------------------------------------------


def _spawn(*argv: str) -> list[str]:
    return [sys.executable, __file__, "--child", *argv]


async def _run_child(argv: list[str], out: dict[str, dict[str, object]], key: str) -> None:
    done = await trio.run_process(argv, capture_stdout=True, stderr=None, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {key} child failed ({done.returncode})")
    out[key] = json.loads(done.stdout.decode().strip().splitlines()[-1])


async def tunnel_run(path: Path, save_to: Path) -> dict[str, object]:
    from tunnel_trio.session import RoomConfig, open_host

    results: dict[str, dict[str, object]] = {}
    # The pings are 10 a second from one member: lift the say rate limit (not what is measured).
    config = RoomConfig(rate_burst=1000, rate_per_sec=1000.0)
    async with trio.open_nursery() as nursery:
        host = await open_host(nursery, "bench files", name="host", invites=2, config=config)
        links = [i.join_link for i in host.initial_invites]
        rss_before = rss_bytes()
        peak = rss_before
        async with trio.open_nursery() as kids:
            kids.start_soon(_run_child, _spawn("sharer", "--link", links[0], "--path", str(path)),
                            results, "sharer")
            kids.start_soon(_run_child, _spawn("receiver", "--link", links[1], "--path",
                                               str(save_to)), results, "receiver")
            with trio.fail_after(60):
                while sum(m.connected for m in host.status().members) < 3:
                    await trio.sleep(0.05)
            await host.say("go")
            cpu0 = time.process_time()
            while len(results) < 2:
                peak = max(peak, rss_bytes())
                await trio.sleep(0.05)
        relay_peak = host.relay.peak_queued_bytes
        host_cpu = time.process_time() - cpu0
        await host.close()
        nursery.cancel_scope.cancel()
    return {
        "host_rss_before": rss_before,
        "host_rss_peak": peak,
        "relay_peak_queued": relay_peak,
        "host_cpu": host_cpu,
        **results,
    }


async def tcp_run(path: Path, out: Path) -> dict[str, object]:
    results: dict[str, dict[str, object]] = {}
    ends: dict[str, trio.SocketStream] = {}
    both = trio.Event()
    rss_before = rss_bytes()
    peak = rss_before

    async def accept(stream: trio.SocketStream) -> None:
        first = await stream.receive_some(1)
        if first == b"r":
            ends["receiver"] = stream
        else:
            ends["sender"] = stream
            ends["first"] = first  # type: ignore[assignment]
        if len(ends) >= 3:
            both.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, accept, 0, )
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(_run_child, _spawn("tcp-receive", "--port", str(port), "--path",
                                              str(out)), results, "receiver")
        with trio.fail_after(30):
            while "receiver" not in ends:
                await trio.sleep(0.01)
        nursery.start_soon(_run_child, _spawn("tcp-send", "--port", str(port), "--path",
                                              str(path)), results, "sender")
        await both.wait()
        sender, receiver = ends["sender"], ends["receiver"]
        await receiver.send_all(ends["first"])  # type: ignore[arg-type]
        while data := await sender.receive_some(BLOCK):
            await receiver.send_all(data)
            peak = max(peak, rss_bytes())
        await receiver.aclose()
        while len(results) < 2:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return {"relay_rss_before": rss_before, "relay_rss_peak": peak, **results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB to send (default 1024)")
    parser.add_argument("--quick", action="store_true", help="128 MiB")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--link", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    logging.basicConfig(level=logging.WARNING)
    size = (128 if args.quick else args.size) * MIB
    print(f"tunnel-mcp files bench: {size // MIB} MiB, Python {platform.python_version()}, "
          f"trio {trio.__version__}, {os.cpu_count()} CPUs, 127.0.0.1", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="tunnel-bench-files-"))
    try:
        source = work / "big.bin"
        make_file(source, size)
        expected = subprocess.run(["sha256sum", str(source)], capture_output=True, text=True,
                                  check=False).stdout.split()[:1]
        print("  tcp relay baseline ...", file=sys.stderr)
        base = trio.run(tcp_run, source, work / "tcp.bin")
        (work / "tcp.bin").unlink()
        print("  tunnel ...", file=sys.stderr)
        tun = trio.run(tunnel_run, source, work / "received")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rec = tun["receiver"]
    brec = base["receiver"]
    assert isinstance(rec, dict) and isinstance(brec, dict)
    ok = rec["complete"] and (not expected or rec["sha256"] == expected[0])
    mbps = size / rec["seconds"] / 1e6
    base_mbps = size / brec["seconds"] / 1e6
    figures = [
        Figure("files.rate", f"{size // MIB} MiB member->member", "MB/s", [mbps],
               higher_is_better=True, show_p95=False,
               baseline=Figure("tcp.rate", "bare TCP relay", "MB/s", [base_mbps],
                               higher_is_better=True, show_p95=False)),
        Figure("files.chat", "chat say->listen during the transfer", "ms", rec["busy_ms"],
               baseline=Figure("files.chat.idle", "idle", "ms", rec["idle_ms"])),
        Figure("files.host_rss", "host RSS growth during the transfer", "MiB",
               [(tun["host_rss_peak"] - tun["host_rss_before"]) / MIB], show_p95=False,
               baseline=Figure("tcp.rss", "bare relay RSS growth", "MiB",
                               [(base["relay_rss_peak"] - base["relay_rss_before"]) / MIB],
                               show_p95=False)),
        Figure("files.receiver_rss", "receiver peak RSS", "MiB", [rec["rss_peak"] / MIB],
               show_p95=False),
        Figure("files.sharer_rss", "sharer peak RSS", "MiB",
               [tun["sharer"]["rss_peak"] / MIB], show_p95=False),  # type: ignore[index]
    ]
    print()
    print(render_table(figures))
    print()
    print(f"- transfer {'verified (SHA-256 equal)' if ok else 'FAILED: ' + str(rec['error'])}; "
          f"tunnel {rec['seconds']:.2f} s, bare TCP relay {brec['seconds']:.2f} s (both include "
          "the receiver's SHA-256 and fsync).")
    print("- chat: the sharer says a monotonic-clock stamp every "
          f"{PING_EVERY * 1000:.0f} ms, the receiver's listen() notes its arrival; baseline = "
          f"the same before the transfer ({IDLE_PINGS} pings). Ratio = during / idle medians.")
    print(f"- relay peak queued bytes for one connection: {tun['relay_peak_queued'] / 1024:.0f} "
          "KiB; the host shares and receives nothing itself (it relays).")
    sharer_cpu = tun["sharer"]["cpu"]  # type: ignore[index]
    print(f"- CPU seconds during the transfer: host {tun['host_cpu']:.2f} (with the idle pings "
          f"before it), sharer {sharer_cpu:.2f}, receiver {rec['cpu']:.2f} (its SHA-256 and "
          "writes included); the slowest role alone could move "
          f"{size / max(tun['host_cpu'], sharer_cpu, rec['cpu']) / 1e6:.0f} MB/s on a core of "
          "its own. On a busy 2-core machine the three share what is left.")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"size": size, "verified": ok, "figures": {f.key: f.as_json() for f in figures}},
            indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
