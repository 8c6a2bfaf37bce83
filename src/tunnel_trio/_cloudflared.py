"""cloudflared: finding it, downloading a pinned release, running a Quick Tunnel.

Three concerns, in file order:

* **Finding** (`find_cloudflared`): ``TUNNEL_CLOUDFLARED``, then PATH, then our own
  ``~/.tunnel/bin``.
* **Downloading** (`ensure_cloudflared`): only a release whose SHA-256 is pinned in
  ``cloudflared-pins.json``. The hash is checked before the file is made executable or
  unpacked; a pin without a hash means "no download", never "download without checking".
* **Running** (`QuickTunnel`): ``cloudflared tunnel --url http://127.0.0.1:<port>``, reading
  its log for the ``https://<words>.trycloudflare.com`` URL, with retries, a per-attempt
  timeout, clear errors for Cloudflare's rate limiting, and a child that dies with us.

`wait_until_resolvable` polls DNS-over-HTTPS until the new name exists; it never asks the
system resolver, whose negative cache would keep the name unresolvable for up to the zone's
negative TTL (see ``_doh``).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import trio

from ._doh import DohClient, DohError, doh_enabled
from ._http import HttpError, http_request
from ._tls import client_ssl_context

logger = logging.getLogger(__name__)

CLOUDFLARED_ENV = "TUNNEL_CLOUDFLARED"
HOME_ENV = "TUNNEL_HOME"
PINS_ENV = "TUNNEL_CLOUDFLARED_PINS"
BASE_URL_ENV = "TUNNEL_CLOUDFLARED_BASE_URL"

MAX_DOWNLOAD = 200 * 1024 * 1024
MAX_ARCHIVE_MEMBERS = 2  # cloudflared and perhaps its ._cloudflared
RELEASES_URL = "https://github.com/cloudflare/cloudflared/releases"


class CloudflaredError(Exception):
    """cloudflared is missing, could not be installed, or could not create a tunnel."""


def _install_hint(version: str | None = None) -> str:
    release = f"{RELEASES_URL}/tag/{version}" if version else RELEASES_URL
    return (
        "Install cloudflared yourself (macOS: `brew install cloudflared`; Linux: your package "
        f"manager or Cloudflare's packages; or a binary from {release}) so that it is on PATH, "
        f"or set {CLOUDFLARED_ENV} to its full path."
    )


# --- finding ------------------------------------------------------------------------------------


def _exe_name() -> str:
    return "cloudflared.exe" if sys.platform == "win32" else "cloudflared"


def tunnel_home(env: Mapping[str, str] = os.environ) -> Path:
    """Our state directory: ``TUNNEL_HOME`` if set, else ``~/.tunnel``."""
    home = env.get(HOME_ENV, "").strip()
    return Path(home).expanduser() if home else Path.home() / ".tunnel"


def install_path(env: Mapping[str, str] = os.environ) -> Path:
    """Where `ensure_cloudflared` puts the binary it downloads."""
    return tunnel_home(env) / "bin" / _exe_name()


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_cloudflared(env: Mapping[str, str] = os.environ) -> Path | None:
    """``TUNNEL_CLOUDFLARED``, else ``cloudflared`` on PATH, else ``~/.tunnel/bin``.

    An explicit ``TUNNEL_CLOUDFLARED`` that is not an executable file is an error rather than
    a silent fall-through: the user asked for that binary.
    """
    explicit = env.get(CLOUDFLARED_ENV, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        if not _is_executable(path):
            raise CloudflaredError(
                f"{CLOUDFLARED_ENV}={explicit!r} is not an executable file; "
                "fix the path, or unset it to use cloudflared from PATH"
            )
        return path
    on_path = shutil.which("cloudflared", path=env.get("PATH", os.defpath))
    if on_path:
        return Path(on_path)
    ours = install_path(env)
    return ours if _is_executable(ours) else None


# --- pins and download --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pin:
    platform: str  # e.g. "linux-amd64"
    asset: str  # file name on the release page
    archive: bool  # a .tgz holding `cloudflared`, rather than the bare binary
    sha256: str | None  # None: not verified, so never downloaded


@dataclass(frozen=True, slots=True)
class Pins:
    version: str
    verified: bool
    base_url: str
    platforms: Mapping[str, Pin]
    source: str  # where they were read from, for messages


_MACHINES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "x86": "386",
    "armv6l": "arm",
    "armv7l": "arm",
    "armv7": "arm",
    "arm": "arm",
}


def platform_key(system: str | None = None, machine: str | None = None) -> str:
    """``<os>-<arch>`` in cloudflared's release naming, e.g. ``linux-amd64``."""
    system = (system if system is not None else platform.system()).strip().lower()
    machine = (machine if machine is not None else platform.machine()).strip().lower()
    return f"{system}-{_MACHINES.get(machine, machine)}"


def load_pins(env: Mapping[str, str] = os.environ) -> Pins:
    """The shipped pins, or the JSON file named by ``TUNNEL_CLOUDFLARED_PINS``."""
    override = env.get(PINS_ENV, "").strip()
    try:
        if override:
            source = override
            text = Path(override).expanduser().read_text(encoding="utf-8")
        else:
            source = "the built-in cloudflared-pins.json"
            text = (
                resources.files(__package__)
                .joinpath("cloudflared-pins.json")
                .read_text(encoding="utf-8")
            )
    except OSError as exc:
        raise CloudflaredError(
            f"cannot read the cloudflared pins file {source!r}: {exc.strerror or exc}"
        ) from None
    try:
        return _parse_pins(json.loads(text), source)
    except (ValueError, TypeError, KeyError) as exc:
        raise CloudflaredError(
            f"the cloudflared pins file {source!r} is malformed: {exc}"
        ) from None


def _parse_pins(data: object, source: str) -> Pins:
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    version = data["version"]
    verified = data.get("verified", False)
    base_url = data.get("base_url") or f"{RELEASES_URL}/download/{version}"
    platforms = data["platforms"]
    if not isinstance(version, str) or not isinstance(verified, bool):
        raise ValueError("'version' must be a string and 'verified' a boolean")
    if not isinstance(base_url, str) or not isinstance(platforms, dict):
        raise ValueError("'base_url' must be a string and 'platforms' an object")
    pins: dict[str, Pin] = {}
    for key, entry in platforms.items():
        if not isinstance(entry, dict):
            raise ValueError(f"platform {key!r} must be an object")
        asset, fmt, sha256 = entry["asset"], entry.get("format", "binary"), entry.get("sha256")
        if not isinstance(asset, str) or not asset or "/" in asset or asset.startswith("."):
            raise ValueError(f"platform {key!r}: 'asset' must be a plain file name")
        if fmt not in ("binary", "tgz"):
            raise ValueError(f"platform {key!r}: 'format' must be 'binary' or 'tgz'")
        if sha256 is not None and (
            not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256)
        ):
            raise ValueError(f"platform {key!r}: 'sha256' must be 64 hex digits or null")
        pins[key] = Pin(key, asset, fmt == "tgz", sha256.lower() if sha256 else None)
    return Pins(version, verified, base_url, pins, source)


async def ensure_cloudflared(
    *,
    env: Mapping[str, str] = os.environ,
    system: str | None = None,
    machine: str | None = None,
) -> Path:
    """A usable cloudflared: an installed one, else the pinned release, downloaded and checked.

    `system`/`machine` default to this machine (``platform.system()``/``machine()``).
    """
    found = find_cloudflared(env)
    if found is not None:
        return found
    key = platform_key(system, machine)
    pins = load_pins(env)
    pin = pins.platforms.get(key)
    if pin is None:
        raise CloudflaredError(
            f"cloudflared is not installed and there is no pinned download for {key}. "
            + _install_hint()
        )
    if pin.sha256 is None:
        raise CloudflaredError(
            f"cloudflared is not installed, and the automatic download is off: {pins.source} "
            f"has no verified SHA-256 for {pin.asset} (cloudflared {pins.version}), and an "
            "unverified binary is never run. " + _install_hint(pins.version)
        )
    if not pins.verified:
        logger.warning("cloudflared pins in %s are not marked verified", pins.source)
    base = env.get(BASE_URL_ENV, "").strip() or pins.base_url
    url = f"{base.rstrip('/')}/{pin.asset}"
    dest = install_path(env)
    logger.info("downloading cloudflared %s from %s", pins.version, url)
    await _download_verified(url, pin, dest, env)
    logger.info("installed cloudflared %s at %s", pins.version, dest)
    return dest


async def _download_verified(url: str, pin: Pin, dest: Path, env: Mapping[str, str]) -> None:
    assert pin.sha256 is not None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600: not executable until the hash has been checked.
        fd, name = tempfile.mkstemp(prefix=".cloudflared-", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise CloudflaredError(
            f"cannot write to {dest.parent}: {exc.strerror or exc}; set {HOME_ENV} to a "
            f"writable directory, or install cloudflared yourself. " + _install_hint()
        ) from None
    leftovers = [Path(name)]
    try:
        digest = hashlib.sha256()
        async with trio.wrap_file(os.fdopen(fd, "wb")) as out:

            async def sink(chunk: bytes) -> None:
                digest.update(chunk)
                await out.write(chunk)

            try:
                response = await http_request(
                    url,
                    ssl_context=client_ssl_context(env),
                    idle_timeout=60.0,
                    max_body=MAX_DOWNLOAD,
                    max_redirects=5,  # GitHub answers with a redirect to its CDN
                    sink=sink,
                )
            except (HttpError, ValueError) as exc:
                raise CloudflaredError(
                    f"downloading cloudflared from {url} failed: {exc}. " + _install_hint()
                ) from None
        if response.status != 200:
            raise CloudflaredError(
                f"downloading cloudflared from {url} failed: HTTP {response.status}. "
                + _install_hint()
            )
        actual = digest.hexdigest()
        if actual != pin.sha256:
            raise CloudflaredError(
                f"checksum mismatch for {pin.asset}: expected {pin.sha256}, got {actual}; "
                "refusing to run it"
            )
        binary = Path(name)
        if pin.archive:
            binary = await trio.to_thread.run_sync(_extract_cloudflared, Path(name), dest.parent)
            leftovers.append(binary)
        os.chmod(binary, 0o755)
        os.replace(binary, dest)
    finally:
        for path in leftovers:
            path.unlink(missing_ok=True)


def _extract_cloudflared(archive: Path, directory: Path) -> Path:
    """Copy the archive's one member, the regular file `cloudflared`, to a new temp file.

    Called only after the archive's SHA-256 matched its pin. Cloudflare builds the darwin
    assets with ``tar czf <asset> cloudflared``, so anything else in the archive means it is
    not what we expect, and the whole archive is refused rather than picked through: another
    path, a ``../`` or absolute name, a link, a device, a directory, a second `cloudflared`.
    The one exception is ``._cloudflared``, the AppleDouble entry macOS's tar adds for a file's
    extended attributes; it is never read. Bytes land only in a temp file we name ourselves.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            binary: tarfile.TarInfo | None = None
            for count, member in enumerate(tar):
                if count >= MAX_ARCHIVE_MEMBERS:
                    raise CloudflaredError(
                        f"the downloaded archive holds more than {MAX_ARCHIVE_MEMBERS} members; "
                        "refusing it"
                    )
                if member.name in _APPLEDOUBLE_MEMBERS and member.isreg():
                    continue
                if member.name not in _BINARY_MEMBERS or not member.isreg() or binary is not None:
                    raise CloudflaredError(
                        f"the downloaded archive holds {_describe_member(member)} besides the "
                        "cloudflared binary; refusing it"
                    )
                binary = member
            if binary is None:
                raise CloudflaredError("the downloaded archive holds no file named cloudflared")
            if binary.size > MAX_DOWNLOAD:
                raise CloudflaredError("the cloudflared binary in the archive is too large")
            source = tar.extractfile(binary)
            if source is None:  # pragma: no cover - isreg() members always have data
                raise CloudflaredError("cannot read cloudflared from the downloaded archive")
            fd, name = tempfile.mkstemp(prefix=".cloudflared-", suffix=".bin", dir=directory)
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, 1024 * 1024)
            except BaseException:
                Path(name).unlink(missing_ok=True)
                raise
            return Path(name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CloudflaredError(f"cannot unpack the downloaded cloudflared archive: {exc}") from None


_BINARY_MEMBERS = frozenset({"cloudflared", "./cloudflared"})
_APPLEDOUBLE_MEMBERS = frozenset({"._cloudflared", "./._cloudflared"})


def _describe_member(member: tarfile.TarInfo) -> str:
    """What an unexpected member is, for the error; its name is untrusted, so quoted and cut."""
    if member.issym() or member.islnk():
        kind = "a link"
    elif member.isdir():
        kind = "a directory"
    elif member.isreg():
        kind = "a file"
    else:
        kind = "a special file"
    return f"{kind} named {ascii(member.name[:80])}"


# --- reading cloudflared's log ------------------------------------------------------------------

# The URL must be a whole token: preceded by start/space/'|' (the banner box) and followed by
# end/space/'|'. So `"https://api.trycloudflare.com/tunnel"` inside an error never matches, and
# the API host itself is excluded by name in case it ever appears bare.
_TUNNEL_URL = re.compile(
    r"(?<![^\s|])https://([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\.trycloudflare\.com/?(?![^\s|])",
    re.IGNORECASE,
)
_NOT_TUNNEL_NAMES = frozenset({"api", "www"})
_LOG_PREFIX = re.compile(r"^\S+\s+(?:DBG|INF|WRN|ERR|FTL)\s+")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_RATE_LIMIT_MARKERS = ("429 Too Many Requests", 'status_code="429', "error code: 1015")
_REQUEST_FAILED_MARKERS = (
    "failed to request quick Tunnel",
    "Error unmarshaling QuickTunnel response",
    "failed to unmarshal quick Tunnel",
    "failed to parse quick Tunnel ID",
    "failed to read quick-tunnel response",
)
RATE_LIMITED_MESSAGE = (
    "Cloudflare refused to create a quick tunnel (rate limited: 429 Too Many Requests); "
    "wait a minute and try again, or use transport=url with your own reverse proxy"
)


def find_quick_tunnel_url(line: str) -> str | None:
    """The ``https://<name>.trycloudflare.com`` tunnel URL on this log line, if any."""
    for match in _TUNNEL_URL.finditer(_ANSI.sub("", line)):
        name = match.group(1).lower()
        if name not in _NOT_TUNNEL_NAMES:
            return f"https://{name}.trycloudflare.com"
    return None


def _scrub(line: str) -> str:
    """A log line fit for an error message: no escapes or control characters, bounded.

    cloudflared's quick-tunnel output carries no secrets (our link secrets never reach it);
    this only keeps messages readable and short.
    """
    line = _ANSI.sub("", line)
    line = "".join(ch if ch.isprintable() else " " for ch in line).strip()
    return line if len(line) <= 300 else line[:297] + "..."


def _message_of(line: str) -> str:
    return _LOG_PREFIX.sub("", _scrub(line))


class _LineReader:
    """Lines from a byte stream, each at most `max_line` bytes (longer ones are split)."""

    def __init__(self, stream: trio.abc.ReceiveStream, max_line: int = 16 * 1024) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._max_line = max_line
        self._eof = False

    async def next_line(self) -> str | None:
        """The next line without its line ending, or None at end of stream."""
        while True:
            newline = self._buffer.find(b"\n", 0, self._max_line)
            if newline >= 0:
                return self._take(newline, skip=1)
            if len(self._buffer) >= self._max_line:
                return self._take(self._max_line, skip=0)
            if self._eof:
                return self._take(len(self._buffer), skip=0) if self._buffer else None
            try:
                data = await self._stream.receive_some(64 * 1024)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                data = b""
            if not data:
                self._eof = True
            self._buffer += data

    def _take(self, length: int, *, skip: int) -> str:
        raw = bytes(self._buffer[:length])
        del self._buffer[: length + skip]
        return raw.decode("utf-8", "replace").rstrip("\r")


# --- the child process --------------------------------------------------------------------------


class _Child(Protocol):
    pid: int
    output: trio.abc.ReceiveStream

    def poll(self) -> int | None: ...
    async def wait(self) -> int: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    async def aclose(self) -> None: ...


_LIVE_CHILDREN: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _terminate_leftovers() -> None:
    # Best effort where there is no parent-death signal, and for exits without stop().
    for popen in list(_LIVE_CHILDREN):
        if popen.poll() is None:
            try:
                popen.terminate()
            except OSError:  # pragma: no cover
                pass


_PR_SET_PDEATHSIG = 1


def _parent_death_signal_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when its parent dies, or None.

    The libc lookup happens here, in the parent: between fork and exec the child may only do
    async-signal-safe things, so the preexec_fn makes one prctl call and one getppid check.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        return None
    parent = os.getpid()
    sigterm = ctypes.c_ulong(signal.SIGTERM)
    zero = ctypes.c_ulong(0)

    def preexec() -> None:
        prctl(ctypes.c_int(_PR_SET_PDEATHSIG), sigterm, zero, zero, zero)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class _PopenChild:
    """A POSIX child forked from the trio thread, its stdout+stderr on one pipe.

    Not ``trio.lowlevel.open_process``: that forks from a worker thread, and Linux sends
    PR_SET_PDEATHSIG when the *thread* that forked exits, not the process. trio retires idle
    worker threads after 10 s, which would SIGTERM cloudflared 10 s into every session. Forking
    here blocks the event loop for the few milliseconds fork+exec takes.
    """

    def __init__(self, argv: list[str]) -> None:
        read_fd, write_fd = os.pipe()
        try:
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                preexec_fn=_parent_death_signal_preexec(),
                close_fds=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        _LIVE_CHILDREN.add(self._popen)
        self.pid = self._popen.pid
        self.output: trio.abc.ReceiveStream = trio.lowlevel.FdStream(read_fd)
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except OSError:  # pragma: no cover - kernels before 5.3
                self._pidfd = None
        self._wait_lock = trio.Lock()

    def poll(self) -> int | None:
        code = self._popen.poll()
        if code is not None:
            _LIVE_CHILDREN.discard(self._popen)
        return code

    async def wait(self) -> int:
        async with self._wait_lock:
            if self._popen.returncode is None:
                if self._pidfd is not None:
                    await trio.lowlevel.wait_readable(self._pidfd)
                else:  # pragma: no cover - no pidfd: a thread blocks in waitpid
                    await trio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True)
            code = self._popen.wait()
        _LIVE_CHILDREN.discard(self._popen)
        return code

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        try:
            self._popen.send_signal(signum)  # a no-op once reaped, so never a reused pid
        except ProcessLookupError:  # pragma: no cover - exited between poll and kill
            pass

    async def aclose(self) -> None:
        await self.output.aclose()
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class _TrioChild:  # pragma: no cover - Windows
    """Windows: no PDEATHSIG and no FdStream, so trio's own process (plus atexit)."""

    def __init__(self, process: trio.Process) -> None:
        self._process = process
        self.pid = process.pid
        assert process.stdout is not None
        self.output: trio.abc.ReceiveStream = process.stdout

    def poll(self) -> int | None:
        return self._process.poll()

    async def wait(self) -> int:
        return await self._process.wait()

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()

    async def aclose(self) -> None:
        await self.output.aclose()


async def _spawn(argv: list[str]) -> _Child:
    try:
        if sys.platform == "win32":  # pragma: no cover
            process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            return _TrioChild(process)
        return _PopenChild(argv)
    except OSError as exc:
        raise CloudflaredError(
            f"cannot run cloudflared at {argv[0]}: {exc.strerror or exc}. " + _install_hint()
        ) from None


async def _terminate(child: _Child, grace: float) -> None:
    """SIGTERM, up to `grace` seconds to exit, then SIGKILL; always reaps."""
    if child.poll() is None:
        child.terminate()
        with trio.move_on_after(grace):
            await child.wait()
            return
        logger.warning("cloudflared ignored SIGTERM for %g s; killing it", grace)
        child.kill()
    await child.wait()


# --- the quick tunnel ---------------------------------------------------------------------------


QUICK_TUNNEL_CONFIG = "cloudflared-quick-tunnel.yml"
_QUICK_TUNNEL_CONFIG_TEXT = (
    "# Written by tunnel-mcp: an empty cloudflared config, so that quick tunnels ignore\n"
    "# ~/.cloudflared/config.yml (its ingress rules would answer them with 404).\n"
    "{}\n"
)


class _AttemptFailed(Exception):
    def __init__(self, reason: str, *, retry: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class QuickTunnel:
    """One ``cloudflared tunnel --url http://127.0.0.1:<port>`` child and its public URL.

    `attempts` and `attempt_timeout` bound `start`; `stop_timeout` is how long `stop` waits
    after SIGTERM before SIGKILL. `config_file` (default ``~/.tunnel/cloudflared-quick-tunnel.yml``)
    is the empty config written and passed with ``--config`` so the user's own cloudflared
    config cannot hijack the quick tunnel.
    """

    def __init__(
        self,
        executable: Path | str,
        *,
        attempts: int = 3,
        attempt_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        config_file: Path | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.executable = str(executable)
        self.config_file = (
            config_file if config_file is not None else tunnel_home() / QUICK_TUNNEL_CONFIG
        )
        self._isolated = False
        self.attempts = attempts
        self.attempt_timeout = attempt_timeout
        self.stop_timeout = stop_timeout
        self.url: str | None = None
        self.pid: int | None = None
        self.returncode: int | None = None
        self._child: _Child | None = None
        self._exited = trio.Event()
        self._stopping = False
        self._supervision = trio.CancelScope()
        self._recent: deque[str] = deque(maxlen=8)

    def argv(self, local_port: int) -> list[str]:
        config = ["--config", str(self.config_file)] if self._isolated else []
        return [
            self.executable,
            "tunnel",
            "--no-autoupdate",
            *config,
            "--url",
            f"http://127.0.0.1:{local_port}",
        ]

    def _isolate_from_user_config(self) -> None:
        # Without --config, cloudflared loads ~/.cloudflared/config.yml; a named tunnel's
        # ingress rules there (ending in `service: http_status:404`) then answer every request
        # to the quick tunnel with 404. An empty config of our own keeps them out.
        try:
            path = self.config_file
            if not path.is_file() or path.read_text(encoding="utf-8") != _QUICK_TUNNEL_CONFIG_TEXT:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(_QUICK_TUNNEL_CONFIG_TEXT, encoding="utf-8")
            self._isolated = True
        except OSError as exc:
            logger.warning(
                "cannot write %s (%s): cloudflared will read ~/.cloudflared/config.yml if any; "
                "set %s to a writable directory",
                self.config_file,
                exc.strerror or exc,
                HOME_ENV,
            )

    async def start(self, nursery: trio.Nursery, local_port: int) -> str:
        """Run cloudflared until it prints the tunnel URL; return that URL.

        The child's output keeps being drained (logged at DEBUG) by a task in `nursery`, which
        also notices if the child dies. Raises CloudflaredError, with what to do, on failure.
        """
        if self._child is not None or self._stopping:
            raise RuntimeError("QuickTunnel.start() may only be called once")
        self._isolate_from_user_config()
        reason = ""
        for attempt in range(1, self.attempts + 1):
            child = await _spawn(self.argv(local_port))
            reader = _LineReader(child.output)
            try:
                url = await self._read_url(child, reader)
            except _AttemptFailed as failure:
                with trio.CancelScope(shield=True):
                    await _terminate(child, self.stop_timeout)
                    await child.aclose()
                if not failure.retry:
                    raise CloudflaredError(failure.reason) from None
                reason = failure.reason
                logger.info("cloudflared attempt %d/%d failed: %s", attempt, self.attempts, reason)
                continue
            except BaseException:
                with trio.CancelScope(shield=True):
                    await _terminate(child, self.stop_timeout)
                    await child.aclose()
                raise
            self._child, self.pid, self.url = child, child.pid, url
            nursery.start_soon(self._supervise, child, reader)
            logger.info("cloudflared quick tunnel is up: %s (pid %d)", url, child.pid)
            return url
        raise CloudflaredError(
            f"{reason} (gave up after {self.attempts} attempt{'s' if self.attempts > 1 else ''})"
        )

    async def _read_url(self, child: _Child, reader: _LineReader) -> str:
        recent: deque[str] = deque(maxlen=6)
        with trio.move_on_after(self.attempt_timeout):
            while (line := await reader.next_line()) is not None:
                logger.debug("cloudflared: %s", line)
                recent.append(_scrub(line))
                url = find_quick_tunnel_url(line)
                if url is not None:
                    self._recent.extend(recent)
                    return url
                if any(marker in line for marker in _RATE_LIMIT_MARKERS):
                    raise _AttemptFailed(RATE_LIMITED_MESSAGE, retry=False)
                if any(marker in line for marker in _REQUEST_FAILED_MARKERS):
                    raise _AttemptFailed(
                        f"Cloudflare did not create a quick tunnel: {_message_of(line)}. Check "
                        "this machine's internet connection, or use transport=url with your own "
                        "reverse proxy"
                    )
            code = await child.wait()
            shown = "\n  ".join(recent) if recent else "(no output)"
            raise _AttemptFailed(
                f"cloudflared exited with status {code} before creating a quick tunnel; "
                f"its last output:\n  {shown}"
            )
        raise _AttemptFailed(
            f"cloudflared printed no quick tunnel URL within {self.attempt_timeout:g} s"
        )

    async def _supervise(self, child: _Child, reader: _LineReader) -> None:
        with self._supervision:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain, reader)
                code = await child.wait()
                self.returncode = code
                self._exited.set()
                if not self._stopping:
                    logger.warning(
                        "cloudflared exited unexpectedly (status %d): the quick tunnel %s is "
                        "gone. Its last output: %s",
                        code,
                        self.url,
                        " | ".join(self._recent) or "(none)",
                    )

    async def _drain(self, reader: _LineReader) -> None:
        # Keeps the pipe empty: a full pipe would block cloudflared's logging, then cloudflared.
        while (line := await reader.next_line()) is not None:
            logger.debug("cloudflared: %s", line)
            self._recent.append(_scrub(line))

    def alive(self) -> bool:
        """True while the child runs; False before start, after stop, or once it died."""
        child = self._child
        if child is None or self._exited.is_set() or self._stopping:
            return False
        return child.poll() is None

    async def wait_exited(self) -> None:
        """Return once the child has exited (for whatever reason)."""
        await self._exited.wait()

    async def stop(self) -> None:
        """SIGTERM, wait up to `stop_timeout`, SIGKILL, reap. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        child = self._child
        if child is None:
            return
        with trio.CancelScope(shield=True):
            await _terminate(child, self.stop_timeout)
            self.returncode = child.poll()
            self._exited.set()
            self._supervision.cancel()
            await child.aclose()


# --- readiness ----------------------------------------------------------------------------------


async def wait_until_resolvable(
    hostname: str,
    doh: DohClient,
    budget: float = 60.0,
    *,
    env: Mapping[str, str] = os.environ,
    initial_delay: float = 0.5,
    max_delay: float = 5.0,
) -> bool:
    """Poll DoH until `hostname` has an A record; False once `budget` seconds are spent.

    Only DoH is asked, never the system resolver: an early NXDOMAIN there is cached and would
    break the guest's later lookup. With DoH disabled this returns False at once.
    """
    if not doh_enabled(env):
        logger.info("not waiting for %s to appear in DNS: DNS-over-HTTPS is off", hostname)
        return False
    delay = initial_delay
    lookups = 0
    with trio.move_on_after(budget):
        while True:
            lookups += 1
            try:
                if await doh.resolve(hostname, qtype="A"):
                    logger.info("%s resolves (after %d DoH lookups)", hostname, lookups)
                    return True
            except DohError as exc:
                logger.debug("DoH lookup of %s failed: %s", hostname, exc)
            await trio.sleep(delay)
            delay = min(delay * 2, max_delay)
    logger.warning("%s did not resolve within %g s (%d DoH lookups)", hostname, budget, lookups)
    return False
