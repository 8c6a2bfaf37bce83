"""cloudflared: finding, the pinned download, the quick tunnel child, DNS readiness.

The child is tests/fake_cloudflared/cloudflared, which prints cloudflared's real log format;
FAKE_CLOUDFLARED_MODE picks its behaviour. Downloads come from a local h11 server.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
import trustme
from _servers import (
    client_ssl_context,
    run_doh_server,
    run_http_server,
    serve_http,
    server_ssl_context,
)

from tunnel_trio._cloudflared import (
    RATE_LIMITED_MESSAGE,
    CloudflaredError,
    QuickTunnel,
    ensure_cloudflared,
    find_cloudflared,
    find_quick_tunnel_url,
    load_pins,
    wait_until_resolvable,
)
from tunnel_trio._doh import DohClient, DohError

FAKE = Path(__file__).resolve().parents[1] / "fake_cloudflared" / "cloudflared"
HOSTNAME = "amber-cedar-summit-orbit"
URL = f"https://{HOSTNAME}.trycloudflare.com"

needs_pidfd = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfd_open")


@dataclass
class Fake:
    counter: Path
    pid_file: Path
    monkeypatch: pytest.MonkeyPatch

    def mode(self, mode: str) -> None:
        self.monkeypatch.setenv("FAKE_CLOUDFLARED_MODE", mode)

    @property
    def runs(self) -> int:
        return int(self.counter.read_text()) if self.counter.exists() else 0

    @property
    def last_pid(self) -> int:
        return int(self.pid_file.read_text())


@pytest.fixture(autouse=True)
def tunnel_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Keep every test out of the real ~/.tunnel."""
    home = tmp_path / "tunnel-home"
    monkeypatch.setenv("TUNNEL_HOME", str(home))
    return home


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Fake:
    state = Fake(tmp_path / "runs", tmp_path / "fake.pid", monkeypatch)
    monkeypatch.setenv("FAKE_CLOUDFLARED_COUNTER_FILE", str(state.counter))
    monkeypatch.setenv("FAKE_CLOUDFLARED_PID_FILE", str(state.pid_file))
    monkeypatch.setenv("FAKE_CLOUDFLARED_HOSTNAME", HOSTNAME)
    monkeypatch.setenv("FAKE_CLOUDFLARED_MODE", "ok")
    return state


async def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Return once `pid` has exited (a zombie counts); fail after `timeout`."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with trio.fail_after(timeout):
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


# --- reading the log -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "url"),
    [
        (f"2025-08-06T10:00:01Z INF |  {URL}                                         |", URL),
        (f"{URL}", URL),
        (
            "2025-08-06T10:00:01Z INF |  https://Bright-Owl.trycloudflare.com  |",
            "https://bright-owl.trycloudflare.com",
        ),
        (f"\x1b[32mINF\x1b[0m |  {URL}  |", URL),
        ("2025-08-06T10:00:01Z INF |  https://api.trycloudflare.com  |", None),
        (
            'failed to request quick Tunnel: Post "https://api.trycloudflare.com/tunnel": dial tcp',
            None,
        ),
        ("INF see https://api.trycloudflare.com/tunnel for details", None),
        (f"INF {URL}.evil.example", None),
        (f"INF https://evil.example/{URL}", None),
        (f"INF x{URL}", None),
        (f"INF {URL}/path", None),
        ("INF https://www.cloudflare.com/website-terms/", None),
        ("INF https://trycloudflare.com", None),
    ],
)
def test_tunnel_url_is_only_a_whole_tunnel_hostname(line: str, url: str | None) -> None:
    assert find_quick_tunnel_url(line) == url


# --- running it ------------------------------------------------------------------------------


@needs_pidfd
async def test_start_returns_the_url_from_real_format_output(
    nursery: trio.Nursery, fake: Fake
) -> None:
    tunnel = QuickTunnel(FAKE, attempts=1, attempt_timeout=20)
    assert not tunnel.alive()
    assert await tunnel.start(nursery, 9) == URL
    assert tunnel.alive()
    assert tunnel.pid == fake.last_pid
    await tunnel.stop()
    assert not tunnel.alive()
    await wait_gone(fake.last_pid)
    await tunnel.stop()  # idempotent


async def test_cloudflared_is_isolated_from_the_users_config(
    nursery: trio.Nursery, fake: Fake, tunnel_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv_file = tunnel_home.parent / "argv.json"
    monkeypatch.setenv("FAKE_CLOUDFLARED_ARGV_FILE", str(argv_file))
    tunnel = QuickTunnel(FAKE, attempts=1, attempt_timeout=20)
    await tunnel.start(nursery, 4321)
    await tunnel.stop()
    config = tunnel_home / "cloudflared-quick-tunnel.yml"
    assert json.loads(argv_file.read_text()) == [
        "tunnel",
        "--no-autoupdate",
        "--config",
        str(config),
        "--url",
        "http://127.0.0.1:4321",
    ]
    # ~/.cloudflared/config.yml ingress rules would answer the quick tunnel with 404s.
    assert [line for line in config.read_text().splitlines() if not line.startswith("#")] == ["{}"]


async def test_api_failure_is_retried_then_reported(nursery: trio.Nursery, fake: Fake) -> None:
    fake.mode("api-fail")
    tunnel = QuickTunnel(FAKE, attempts=2, attempt_timeout=20)
    with pytest.raises(CloudflaredError) as caught:
        await tunnel.start(nursery, 9)
    message = str(caught.value)
    assert message.startswith("Cloudflare did not create a quick tunnel: failed to request quick")
    assert "no such host" in message and "gave up after 2 attempts" in message
    assert fake.runs == 2
    assert not tunnel.alive()


async def test_a_failed_attempt_is_retried(nursery: trio.Nursery, fake: Fake) -> None:
    fake.mode("api-fail,ok")
    tunnel = QuickTunnel(FAKE, attempts=3, attempt_timeout=20)
    assert await tunnel.start(nursery, 9) == URL
    assert fake.runs == 2
    await tunnel.stop()


async def test_rate_limiting_is_reported_without_retrying(
    nursery: trio.Nursery, fake: Fake
) -> None:
    fake.mode("ratelimit")
    tunnel = QuickTunnel(FAKE, attempts=3, attempt_timeout=20)
    with pytest.raises(CloudflaredError) as caught:
        await tunnel.start(nursery, 9)
    assert str(caught.value) == RATE_LIMITED_MESSAGE
    assert "rate limited" in RATE_LIMITED_MESSAGE and "transport=url" in RATE_LIMITED_MESSAGE
    assert fake.runs == 1  # retrying would only extend the ban


@needs_pidfd
async def test_a_silent_cloudflared_times_out_and_is_killed(
    nursery: trio.Nursery, fake: Fake
) -> None:
    fake.mode("hang")
    # The timeout must leave the fake (a Python script) time to start and count its run even
    # on a loaded CI machine; 0.5 s was not always enough there, nor 3 s beside two
    # CPU-burning processes.
    tunnel = QuickTunnel(FAKE, attempts=2, attempt_timeout=8)
    with pytest.raises(CloudflaredError, match=r"no quick tunnel URL within 8 s.*2 attempts"):
        await tunnel.start(nursery, 9)
    assert fake.runs == 2
    await wait_gone(fake.last_pid)


async def test_an_early_exit_reports_the_last_log_lines(nursery: trio.Nursery, fake: Fake) -> None:
    fake.mode("exit-early")
    tunnel = QuickTunnel(FAKE, attempts=1, attempt_timeout=20)
    with pytest.raises(CloudflaredError) as caught:
        await tunnel.start(nursery, 9)
    message = str(caught.value)
    assert "cloudflared exited with status 1 before creating a quick tunnel" in message
    assert "FTL fake cloudflared exiting early, as asked" in message


async def test_a_missing_executable_is_a_clear_error(nursery: trio.Nursery, tmp_path: Path) -> None:
    tunnel = QuickTunnel(tmp_path / "nope", attempts=1)
    with pytest.raises(CloudflaredError, match="cannot run cloudflared.*TUNNEL_CLOUDFLARED"):
        await tunnel.start(nursery, 9)


async def test_death_after_start_is_noticed(
    nursery: trio.Nursery,
    fake: Fake,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.mode("die-after-start")
    monkeypatch.setenv("FAKE_CLOUDFLARED_DIE_AFTER", "1.0")
    tunnel = QuickTunnel(FAKE, attempts=1, attempt_timeout=20)
    await tunnel.start(nursery, 9)
    assert tunnel.alive()
    with trio.fail_after(10):
        await tunnel.wait_exited()
    assert not tunnel.alive()
    assert tunnel.returncode == 1
    assert "cloudflared exited unexpectedly (status 1)" in caplog.text
    assert "connection with edge closed" in caplog.text  # the output was still being drained
    await tunnel.stop()


@needs_pidfd
async def test_stop_kills_a_child_that_ignores_sigterm(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    stubborn = tmp_path / "cloudflared"
    stubborn.write_text(
        f"#!/bin/sh\ntrap '' TERM\necho '2025-08-06T10:00:01Z INF |  {URL}  |' >&2\nexec sleep 60\n"
    )
    stubborn.chmod(0o755)
    tunnel = QuickTunnel(stubborn, attempts=1, attempt_timeout=20, stop_timeout=0.3)
    assert await tunnel.start(nursery, 9) == URL
    pid = tunnel.pid
    assert pid is not None
    await tunnel.stop()
    assert tunnel.returncode == -9
    await wait_gone(pid)


PARENT = r"""
import sys
import trio
import trio._core._thread_cache as thread_cache
from tunnel_trio._cloudflared import QuickTunnel

# trio's idle worker threads retire quickly here. Linux sends PR_SET_PDEATHSIG when the
# *thread* that forked exits, so a child forked from a worker thread would die right away.
if hasattr(thread_cache, "IDLE_TIMEOUT"):
    thread_cache.IDLE_TIMEOUT = 0.05

async def main():
    async with trio.open_nursery() as nursery:
        tunnel = QuickTunnel(sys.argv[1], attempts=1, attempt_timeout=20)
        await tunnel.start(nursery, 9)
        await trio.to_thread.run_sync(lambda: None)
        await trio.sleep(0.5)
        print(tunnel.pid, "alive" if tunnel.alive() else "dead", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


@needs_pidfd
async def test_the_child_dies_with_its_parent(fake: Fake) -> None:
    parent = await trio.lowlevel.open_process(
        [sys.executable, "-c", PARENT, str(FAKE)], stdout=subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        output = b""
        with trio.fail_after(20):
            while not output.endswith(b"\n"):
                chunk = await parent.stdout.receive_some(1024)
                assert chunk, "the parent exited without reporting the child"
                output += chunk
        pid_text, state = output.decode().split()
        assert state == "alive"  # survived trio's worker threads retiring
        parent.kill()  # SIGKILL: no chance to clean up; only the kernel can stop the child
        await parent.wait()
        await wait_gone(int(pid_text))
    finally:
        parent.kill()
        await parent.wait()


# --- finding and downloading -----------------------------------------------------------------


def executable(path: Path, content: bytes = b"#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(0o755)
    return path


def test_find_cloudflared_order(tmp_path: Path) -> None:
    explicit = executable(tmp_path / "explicit" / "cf")
    on_path = executable(tmp_path / "path" / "cloudflared")
    ours = executable(tmp_path / "home" / "bin" / "cloudflared")
    env = {"TUNNEL_HOME": str(tmp_path / "home"), "PATH": str(on_path.parent)}
    assert find_cloudflared({**env, "TUNNEL_CLOUDFLARED": str(explicit)}) == explicit
    assert find_cloudflared(env) == on_path
    assert find_cloudflared({**env, "PATH": str(tmp_path / "empty")}) == ours
    assert find_cloudflared({"TUNNEL_HOME": str(tmp_path / "none"), "PATH": ""}) is None
    with pytest.raises(CloudflaredError, match="TUNNEL_CLOUDFLARED=.*not an executable file"):
        find_cloudflared({**env, "TUNNEL_CLOUDFLARED": str(tmp_path / "missing")})


# cloudflared 2026.6.1, the SHA-256 of each release asset exactly as published.
RELEASE_2026_6_1 = {
    "linux-amd64": (
        "cloudflared-linux-amd64",
        "5861a10a438fe8ddcfebb3b830f83966cbf193edafce0fe2eeb198fbae1f7a22",
    ),
    "linux-arm64": (
        "cloudflared-linux-arm64",
        "59816ce9b16db71f5bc2a86d59b3632a96c8c3ee934bde2bc8641ee83a6070eb",
    ),
    "darwin-amd64": (
        "cloudflared-darwin-amd64.tgz",
        "d7a66b525fe76820da6e5406611b61e48b40de682368ac00454d9158f085be4b",
    ),
    "darwin-arm64": (
        "cloudflared-darwin-arm64.tgz",
        "f6d4c439c6c782b83264951d327989ce5e23373acc5942b872411601fedb020d",
    ),
    "windows-amd64": (
        "cloudflared-windows-amd64.exe",
        "5253e66f1f493c4e13539749f1aa86fd0c61e3072900fec29a44ba046a6d97e2",
    ),
}


def test_the_shipped_pins_are_the_verified_2026_6_1_release() -> None:
    pins = load_pins({})
    assert pins.version == "2026.6.1"
    assert pins.verified
    assert pins.base_url == "https://github.com/cloudflare/cloudflared/releases/download/2026.6.1"
    assert {key: (pin.asset, pin.sha256) for key, pin in pins.platforms.items()} == RELEASE_2026_6_1
    assert {key for key, pin in pins.platforms.items() if pin.archive} == {
        "darwin-amd64",
        "darwin-arm64",
    }


async def test_the_shipped_pins_are_what_a_download_is_checked_against(
    tmp_path: Path, mirror: Mirror
) -> None:
    mirror.files["cloudflared-linux-arm64"] = BINARY
    env = {
        "TUNNEL_HOME": str(tmp_path / "home"),
        "PATH": "",
        "TUNNEL_CLOUDFLARED_BASE_URL": mirror.base,
    }
    with pytest.raises(CloudflaredError) as caught:
        await ensure_cloudflared(env=env, system="Linux", machine="aarch64")
    assert str(caught.value) == (
        "checksum mismatch for cloudflared-linux-arm64: expected "
        f"{RELEASE_2026_6_1['linux-arm64'][1]}, got {hashlib.sha256(BINARY).hexdigest()}; "
        "refusing to run it"
    )
    assert mirror.requests[0] == "/releases/cloudflared-linux-arm64"
    assert list((tmp_path / "home" / "bin").iterdir()) == []


async def test_a_pin_without_a_hash_refuses_to_download(tmp_path: Path) -> None:
    pins = tmp_path / "pins.json"
    pins.write_text(
        json.dumps(
            {
                "version": "2026.6.1",
                "platforms": {"linux-amd64": {"asset": "cloudflared-linux-amd64", "sha256": None}},
            }
        )
    )
    env = {"TUNNEL_HOME": str(tmp_path / "home"), "PATH": "", "TUNNEL_CLOUDFLARED_PINS": str(pins)}
    with pytest.raises(CloudflaredError) as caught:
        await ensure_cloudflared(env=env, system="Linux", machine="x86_64")
    message = str(caught.value)
    assert "no verified SHA-256 for cloudflared-linux-amd64" in message
    assert "TUNNEL_CLOUDFLARED" in message
    assert "https://github.com/cloudflare/cloudflared/releases/tag/2026.6.1" in message
    assert not (tmp_path / "home" / "bin" / "cloudflared").exists()


@pytest.mark.parametrize(
    ("machine", "key"),
    [("i686", "linux-386"), ("armv7l", "linux-arm"), ("sparc64", "linux-sparc64")],
)
async def test_a_platform_without_a_pin_says_to_install_it_yourself(
    tmp_path: Path, machine: str, key: str
) -> None:
    env = {"TUNNEL_HOME": str(tmp_path), "PATH": ""}
    with pytest.raises(CloudflaredError) as caught:
        await ensure_cloudflared(env=env, system="Linux", machine=machine)
    message = str(caught.value)
    assert f"cloudflared is not installed and there is no pinned download for {key}" in message
    assert "Install cloudflared yourself" in message and "TUNNEL_CLOUDFLARED" in message


def write_pins(path: Path, platform: str, asset: str, blob: bytes, fmt: str = "binary") -> Path:
    path.write_text(
        json.dumps(
            {
                "version": "2026.6.1",
                "verified": True,
                "platforms": {
                    platform: {
                        "asset": asset,
                        "format": fmt,
                        "sha256": hashlib.sha256(blob).hexdigest(),
                    }
                },
            }
        )
    )
    return path


BINARY = b"#!/bin/sh\necho fake cloudflared\n"


@dataclass
class Mirror:
    base: str
    requests: list[str]
    files: dict[str, bytes]


@pytest.fixture
async def mirror(nursery: trio.Nursery) -> Mirror:
    """Serves /cdn/<asset>; /releases/<asset> redirects there, like GitHub does; /loop/<asset>
    redirects to itself."""
    files: dict[str, bytes] = {}
    requests: list[str] = []

    async def handler(
        request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        target = request.target.decode()
        requests.append(target)
        name = target.rsplit("/", 1)[-1]
        if target.startswith("/releases/"):
            return 302, [("Location", f"/cdn/{name}?signature=x")], b"redirecting"
        if target.startswith("/loop/"):
            return 302, [("Location", target)], b"round and round"
        blob = files.get(name.split("?")[0])
        return (200, [], blob) if blob is not None else (404, [], b"no such asset")

    port = await serve_http(nursery, handler)
    return Mirror(f"http://127.0.0.1:{port}/releases", requests, files)


def download_env(tmp_path: Path, mirror: Mirror, pins: Path) -> dict[str, str]:
    return {
        "TUNNEL_HOME": str(tmp_path / "home"),
        "PATH": "",
        "TUNNEL_CLOUDFLARED_PINS": str(pins),
        "TUNNEL_CLOUDFLARED_BASE_URL": mirror.base,
    }


async def test_download_with_a_good_hash_installs_it(tmp_path: Path, mirror: Mirror) -> None:
    mirror.files["cloudflared-linux-amd64"] = BINARY
    pins = write_pins(tmp_path / "pins.json", "linux-amd64", "cloudflared-linux-amd64", BINARY)
    env = download_env(tmp_path, mirror, pins)
    installed = await ensure_cloudflared(env=env, system="Linux", machine="x86_64")
    assert installed == tmp_path / "home" / "bin" / "cloudflared"
    assert installed.read_bytes() == BINARY
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    assert sorted(p.name for p in installed.parent.iterdir()) == ["cloudflared"]  # no temp files
    assert mirror.requests == [
        "/releases/cloudflared-linux-amd64",
        "/cdn/cloudflared-linux-amd64?signature=x",
    ]
    # Next time it is found, not downloaded again.
    assert await ensure_cloudflared(env=env, system="Linux", machine="x86_64") == installed
    assert len(mirror.requests) == 2


async def test_an_https_download_trusts_the_extra_bundle_and_nothing_else(
    tmp_path: Path, nursery: trio.Nursery, ca: trustme.CA, ca_bundle: Path
) -> None:
    base = await run_http_server(
        nursery, {"/cloudflared-linux-amd64": (200, [], BINARY)}, ssl_context=server_ssl_context(ca)
    )
    pins = write_pins(tmp_path / "pins.json", "linux-amd64", "cloudflared-linux-amd64", BINARY)
    env = {
        "TUNNEL_HOME": str(tmp_path / "home"),
        "PATH": "",
        "TUNNEL_CLOUDFLARED_PINS": str(pins),
        "TUNNEL_CLOUDFLARED_BASE_URL": base,
    }
    with pytest.raises(CloudflaredError, match="certificate verification failed"):
        await ensure_cloudflared(env=env, system="Linux", machine="x86_64")
    assert list((tmp_path / "home" / "bin").iterdir()) == []
    env["TUNNEL_CA_BUNDLE"] = str(ca_bundle)
    installed = await ensure_cloudflared(env=env, system="Linux", machine="x86_64")
    assert installed.read_bytes() == BINARY


async def test_download_with_a_bad_hash_is_refused(tmp_path: Path, mirror: Mirror) -> None:
    mirror.files["cloudflared-linux-amd64"] = BINARY + b"tampered"
    pins = write_pins(tmp_path / "pins.json", "linux-amd64", "cloudflared-linux-amd64", BINARY)
    with pytest.raises(CloudflaredError) as caught:
        await ensure_cloudflared(
            env=download_env(tmp_path, mirror, pins), system="Linux", machine="x86_64"
        )
    expected = hashlib.sha256(BINARY).hexdigest()
    actual = hashlib.sha256(BINARY + b"tampered").hexdigest()
    assert str(caught.value) == (
        f"checksum mismatch for cloudflared-linux-amd64: expected {expected}, got {actual}; "
        "refusing to run it"
    )
    assert list((tmp_path / "home" / "bin").iterdir()) == []  # nothing left behind


async def test_a_missing_asset_is_reported(tmp_path: Path, mirror: Mirror) -> None:
    pins = write_pins(tmp_path / "pins.json", "linux-amd64", "cloudflared-linux-amd64", BINARY)
    with pytest.raises(CloudflaredError, match="failed: HTTP 404.*Install cloudflared yourself"):
        await ensure_cloudflared(
            env=download_env(tmp_path, mirror, pins), system="Linux", machine="x86_64"
        )
    assert list((tmp_path / "home" / "bin").iterdir()) == []


def tgz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


async def test_a_truncated_download_installs_nothing(
    tmp_path: Path, mirror: Mirror, nursery: trio.Nursery
) -> None:
    """The server promises the whole binary, sends half and hangs up."""

    async def half_then_close(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BINARY)}\r\n\r\n".encode()
            await stream.send_all(head + BINARY[: len(BINARY) // 2])

    listeners = await nursery.start(partial(trio.serve_tcp, half_then_close, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    pins = write_pins(tmp_path / "pins.json", "linux-amd64", "cloudflared-linux-amd64", BINARY)
    env = {
        **download_env(tmp_path, mirror, pins),
        "TUNNEL_CLOUDFLARED_BASE_URL": f"http://127.0.0.1:{port}",
    }
    with pytest.raises(
        CloudflaredError, match="downloading cloudflared from .* failed: invalid HTTP"
    ):
        await ensure_cloudflared(env=env, system="Linux", machine="x86_64")
    assert list((tmp_path / "home" / "bin").iterdir()) == []


async def test_a_redirect_loop_installs_nothing(tmp_path: Path, mirror: Mirror) -> None:
    mirror.files["cloudflared-linux-amd64"] = BINARY
    pins = write_pins(tmp_path / "pins.json", "linux-amd64", "cloudflared-linux-amd64", BINARY)
    env = {
        **download_env(tmp_path, mirror, pins),
        "TUNNEL_CLOUDFLARED_BASE_URL": mirror.base.replace("/releases", "/loop"),
    }
    with pytest.raises(CloudflaredError, match="too many redirects.*Install cloudflared yourself"):
        await ensure_cloudflared(env=env, system="Linux", machine="x86_64")
    assert mirror.requests == ["/loop/cloudflared-linux-amd64"] * 6  # the first and 5 redirects
    assert list((tmp_path / "home" / "bin").iterdir()) == []


def regular(name: str, data: bytes = BINARY) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o755
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, b""


async def install_tgz(
    tmp_path: Path, mirror: Mirror, archive: bytes, *, pinned: bytes | None = None
) -> Path:
    """Publish `archive` as the darwin-arm64 asset, pinned to the hash of `pinned` (default:
    the archive itself), and let ensure_cloudflared fetch it."""
    mirror.files["cloudflared-darwin-arm64.tgz"] = archive
    pins = write_pins(
        tmp_path / "pins.json",
        "darwin-arm64",
        "cloudflared-darwin-arm64.tgz",
        archive if pinned is None else pinned,
        "tgz",
    )
    env = download_env(tmp_path, mirror, pins)
    return await ensure_cloudflared(env=env, system="Darwin", machine="arm64")


@pytest.mark.parametrize(
    "members",
    [
        [regular("cloudflared")],
        [regular("./cloudflared")],
        # macOS's tar stores extended attributes as an AppleDouble "._" member beside the file.
        [regular("._cloudflared", b"\x00\x05\x16\x07 not a program"), regular("cloudflared")],
    ],
    ids=["bare", "dot-slash", "with-appledouble"],
)
async def test_a_tgz_release_installs_its_cloudflared(
    tmp_path: Path, mirror: Mirror, members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    installed = await install_tgz(tmp_path, mirror, tgz(members))
    assert installed == tmp_path / "home" / "bin" / "cloudflared"
    assert installed.read_bytes() == BINARY
    assert os.access(installed, os.X_OK)
    assert sorted(p.name for p in installed.parent.iterdir()) == ["cloudflared"]


@pytest.mark.parametrize(
    ("members", "complaint"),
    [
        ([regular("../evil"), regular("cloudflared")], "a file named '../evil'"),
        ([regular("cloudflared"), regular("/tmp/evil")], "a file named '/tmp/evil'"),
        ([regular("cloudflared"), regular("README.md")], "a file named 'README.md'"),
        ([regular("bin/cloudflared")], "a file named 'bin/cloudflared'"),
        ([special("cloudflared", tarfile.SYMTYPE, "/bin/sh")], "a link named 'cloudflared'"),
        ([special("cloudflared", tarfile.LNKTYPE, "/bin/sh")], "a link named 'cloudflared'"),
        ([regular("cloudflared"), special("x", tarfile.SYMTYPE, "/etc")], "a link named 'x'"),
        ([special("cloudflared", tarfile.CHRTYPE)], "a special file named 'cloudflared'"),
        ([special("cloudflared", tarfile.FIFOTYPE)], "a special file named 'cloudflared'"),
        ([special("cloudflared", tarfile.DIRTYPE)], "a directory named 'cloudflared'"),
        ([regular("cloudflared"), regular("cloudflared", b"second")], "a file named 'cloudflared'"),
        ([], "holds no file named cloudflared"),
        ([regular("._cloudflared")] * 3, "more than 2 members"),
    ],
)
async def test_a_hostile_tgz_installs_nothing(
    tmp_path: Path,
    mirror: Mirror,
    members: list[tuple[tarfile.TarInfo, bytes]],
    complaint: str,
) -> None:
    with pytest.raises(CloudflaredError) as caught:
        await install_tgz(tmp_path, mirror, tgz(members))
    assert complaint in str(caught.value)
    assert list((tmp_path / "home" / "bin").iterdir()) == []
    assert not (tmp_path / "home" / "evil").exists() and not (tmp_path / "evil").exists()


async def test_a_tgz_is_checked_against_its_pin_before_it_is_opened(
    tmp_path: Path, mirror: Mirror
) -> None:
    # Not even gzip: had it been opened first, the error would be about unpacking.
    with pytest.raises(CloudflaredError, match="^checksum mismatch for cloudflared-darwin-arm64"):
        await install_tgz(tmp_path, mirror, b"not a tar archive", pinned=tgz([regular("x")]))
    assert list((tmp_path / "home" / "bin").iterdir()) == []


async def test_a_tgz_that_is_not_an_archive_is_a_clear_error(
    tmp_path: Path, mirror: Mirror
) -> None:
    with pytest.raises(CloudflaredError, match="cannot unpack the downloaded cloudflared archive"):
        await install_tgz(tmp_path, mirror, b"not a tar archive")
    assert list((tmp_path / "home" / "bin").iterdir()) == []


def test_a_malformed_pins_file_is_a_clear_error(tmp_path: Path) -> None:
    pins = tmp_path / "pins.json"
    pins.write_text(
        json.dumps(
            {"version": "1", "platforms": {"linux-amd64": {"asset": "x", "sha256": "not-hex"}}}
        )
    )
    with pytest.raises(CloudflaredError, match="malformed.*64 hex digits"):
        load_pins({"TUNNEL_CLOUDFLARED_PINS": str(pins)})
    with pytest.raises(CloudflaredError, match="cannot read the cloudflared pins file"):
        load_pins({"TUNNEL_CLOUDFLARED_PINS": str(tmp_path / "missing.json")})


# --- readiness -------------------------------------------------------------------------------


async def test_readiness_waits_until_the_name_resolves(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    name = f"{HOSTNAME}.trycloudflare.com"
    server = await run_doh_server(nursery, ca, {name: ["192.0.2.9"]}, answer_after=2)
    doh = DohClient([server.url], ssl_context=client_ssl_context(ca))
    assert await wait_until_resolvable(name, doh, budget=20, env={}, initial_delay=0.01)
    assert server.queries == 3


class ScriptedDoh(DohClient):
    """Answers from a script instead of the network: [] (not yet), an error, or addresses."""

    def __init__(self, script: list[list[str] | Exception]) -> None:
        super().__init__(["https://127.0.0.1:1/dns-query"], ssl_context=None)
        self.script = script
        self.lookups = 0

    async def resolve(self, hostname: str, *, qtype: str = "A") -> list[str]:
        step = self.script[min(self.lookups, len(self.script) - 1)]
        self.lookups += 1
        await trio.sleep(0.05)
        if isinstance(step, Exception):
            raise step
        return step


async def test_readiness_gives_up_when_the_budget_is_spent(autojump_clock: object) -> None:
    doh = ScriptedDoh([[]])
    start = trio.current_time()
    assert not await wait_until_resolvable("slow.trycloudflare.com", doh, budget=60, env={})
    assert trio.current_time() - start == pytest.approx(60)
    assert 5 < doh.lookups < 25  # backs off instead of hammering the resolver


async def test_readiness_survives_resolver_errors(autojump_clock: object) -> None:
    doh = ScriptedDoh([DohError("timed out"), [], ["192.0.2.1"]])
    assert await wait_until_resolvable("x.trycloudflare.com", doh, budget=60, env={})
    assert doh.lookups == 3


async def test_readiness_with_doh_off_returns_false_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    doh = ScriptedDoh([["192.0.2.1"]])
    assert not await wait_until_resolvable("x.trycloudflare.com", doh, env={"TUNNEL_DOH": "off"})
    assert doh.lookups == 0
    assert "DNS-over-HTTPS is off" in caplog.text
