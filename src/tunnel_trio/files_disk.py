"""Every disk and path rule for sharing files and folders (issue 10), in one place.

The protocol frames, the transfer state machine, the session and the MCP tools call this module;
none of them touches the disk or judges a file name themselves. Everything here is synchronous
and blocking: callers run it in a worker thread (`trio.to_thread.run_sync`). Pure stdlib, plus
`git` as a subprocess when a shared folder is inside a git work tree.

At a glance::

    share = scan_share(path, cwd=...)            # Share: entries, sources, skipped, warnings
    with ShareReader(share) as reader:           # sharer, per fetch
        data = reader.read(index, offset, size)  # <= MAX_READ_BYTES
    check_relative_path(name) -> str             # both sides: the one name rule (NFC)
    plan = plan_receive(save_to, entries, overwrite=False)   # receiver, before any write
    writer = plan.writer(index)                  # one file; .written says where to resume
    writer.write(writer.written, data); writer.finish()      # or writer.abort()
    default_save_dir(offer_name, is_folder=...)  # when the agent gives no saveTo

Caps (named constants, each with its own error): MAX_OFFER_BYTES (4 GiB), MAX_OFFER_FILES (1000),
MAX_PATH_DEPTH (32), MAX_PATH_BYTES (1024, UTF-8), MAX_NAME_BYTES (255, UTF-8), plus
MAX_SCAN_ENTRIES (entries a folder scan looks at), MAX_SKIPPED_LISTED and MAX_READ_BYTES.
Errors: `FileShareError`, and its subclasses `SourceChangedError` (a shared file changed or
vanished), `BadRangeError` (a read or write outside a file), `HashMismatchError` and
`DiskFullError` (nothing was kept), so a caller can map each to the protocol's error.

Sharing (the sharer's side)
---------------------------
`scan_share(path, *, cwd=None) -> Share` turns a file or a folder into one offer:

- A single file: its manifest is one entry named by its basename. It is sent whatever its name
  looks like (it was named exactly), provided the name passes `check_relative_path`.
- A folder: a manifest of relative paths (POSIX '/', NFC), in a stable order. Inside a folder,
  `.git` is skipped; files that git ignores are skipped (git is asked through
  `git check-ignore --stdin`; a nested repository is asked separately; a folder git ignores is
  skipped whole, without looking inside); names that match `SECRET_PATTERNS` are skipped;
  symlinks and special files (fifo, socket, device) are never followed nor sent; names that
  `check_relative_path` refuses are skipped, so every offer can be received on any system, and
  so is the later of two names that differ only in case (or Unicode normalisation); a folder
  deeper than MAX_PATH_DEPTH is skipped, and a file that cannot be opened. `Share.skipped` says
  what was left out and why (one of the `SKIP_*` phrases, escaped so a name cannot break a line;
  a folder skipped whole is listed once, with a trailing '/'; past MAX_SKIPPED_LISTED entries
  they are only counted in `skipped_unlisted`). If the folder is in a work tree but git is
  missing or cannot read it, `Share.warnings` says so and nothing is skipped for git. Too many
  files (MAX_OFFER_FILES), bytes (MAX_OFFER_BYTES, checked before hashing) or entries to look at
  (MAX_SCAN_ENTRIES) fail the scan with a clear error rather than send part of a folder.
- The shared path itself being a symlink is refused (share the real path): following it would
  send something other than what the human approved by name. Symlinks higher up in the path
  (macOS /tmp, a symlinked home) are resolved. A folder that git ignores, named exactly, is shared
  (with a warning): naming it is the human's choice.
- Each file's SHA-256 is computed by streaming (`HASH_CHUNK` at a time). A file that changes
  while it is read makes the scan fail with a clear error (share a copy of a file being written);
  one deleted meanwhile is left out. `Share.sources[i]` records where `entries[i]` is on disk
  (the disk name may be NFD, as macOS can store it) and its device, inode, size and mtime.

`ShareReader(share).read(index, offset, size) -> bytes` serves a range of a manifest file. It
opens with O_NOFOLLOW (and O_NONBLOCK, so a file swapped for a fifo cannot hang the thread),
keeps one file open at a time, and after each read checks that the open file is the very file
scanned (device and inode) with the same size and mtime; otherwise `SourceChangedError` and the
bytes are dropped. Ranges outside the file, or over MAX_READ_BYTES, raise `BadRangeError`.

Receiving (the receiver's side)
-------------------------------
`check_relative_path(path) -> str` is the one name rule, applied by the receiver to every name
and by the sharer before offering. It returns the NFC form, or raises `FileShareError` for:
empty names or components, '.' and '..', absolute paths, backslashes, drive letters and every
character Windows forbids in names (``< > : " | ? *``), NUL and other control or invisible
characters (Unicode Cc, Cf: bidi overrides and zero-width characters can disguise a name; Cs, Zl,
Zp) and slash look-alikes, reserved Windows device names (CON, PRN, AUX, NUL, COM0-9, LPT0-9 and
their superscript forms, CONIN$, CONOUT$; with or without an extension, any case), names ending
in a dot or a space, a '.git' component (it could plant hooks or configuration), and the caps
`MAX_NAME_BYTES`, `MAX_PATH_BYTES`, `MAX_PATH_DEPTH`. The same rule applies on every system, so
an offer made on Linux can be received on Windows.

`plan_receive(save_to, entries, *, overwrite, cwd=None) -> ReceivePlan` checks everything before
one byte is written: every name; the caps; two names that are equal after case folding (refused
on EVERY system, not only case-insensitive ones: probing cannot see per-folder case rules, and
an offer then means the same files everywhere); a name that is both a file and a folder; inside
`save_to`, any existing component that is a symlink or not a folder; an existing target that is a
directory, a symlink or a special file (always refused), or a regular file (refused unless
`overwrite`); and free space against the total. `save_to` is the folder the offer's files go
into: a shared file lands at ``save_to/<its name>``, a shared folder's files at
``save_to/<their relative paths>`` (the folder's own name is not added). `save_to` itself and
its missing parents are created; symlinks above it are resolved (the plan shows the real path).

`plan.writer(index) -> FileWriter` receives one manifest file. It creates missing folders under
the plan's root only, opening each one relative to its parent with O_NOFOLLOW (no symlink can be
slipped in between the plan and the write), and writes to a temporary name in the destination
folder (O_EXCL|O_NOFOLLOW, mode 0o600 until done). `write(offset, data)` accepts only
``offset == writer.written`` (resume from `.written`) and never more than the manifest size; the
SHA-256 runs as bytes arrive, so a writer that outlives a dropped connection continues where it
stopped. `finish()` checks size and hash, fsyncs, sets the normal file mode, then moves the file
into place: without overwrite by hard link (or, where links are unsupported, a checked rename),
so a file created meanwhile is never clobbered; with overwrite by `os.replace`. A failed
`finish()` (mismatch, full disk, a target that appeared), an `abort()`, or leaving
``with writer:`` without `finish()` removes the temporary file: no partial file is ever left
under its real name (only a process that dies mid-receive can leave a hidden ``.*.tunnel-part``).
Folders created for the offer stay. Create writers one at a time (each holds two descriptors).

`default_save_dir(offer_name, *, is_folder, home=None)` is where an offer goes when the agent
gives no saveTo: ``~/Downloads/tunnel-mcp/`` for a file, ``~/Downloads/tunnel-mcp/<offer name>/``
for a folder. Not the working directory: received files stay out of the agent's project (and
its git status) unless the agent names a destination there.

Errors are `FileShareError` (or a subclass) whose message says what to do. Messages may quote
file names (escaped, shortened) but never file content.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import hashlib
import os
import secrets
import shutil
import stat
import subprocess
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# --- Caps -----------------------------------------------------------------------------------

#: Bytes in one offer (a file, or all files of a folder together).
MAX_OFFER_BYTES = 4 * 1024**3
#: Files in one offer.
MAX_OFFER_FILES = 1000
#: Components in one relative path ("a/b/c" is 3).
MAX_PATH_DEPTH = 32
#: UTF-8 bytes in one relative path.
MAX_PATH_BYTES = 1024
#: UTF-8 bytes in one component (what Linux, macOS and NTFS all accept).
MAX_NAME_BYTES = 255
#: Directory entries a folder scan looks at before giving up (bounds time and memory).
MAX_SCAN_ENTRIES = 100_000
#: Skipped entries listed one by one in a Share; beyond that they are only counted.
MAX_SKIPPED_LISTED = 500
#: Largest range one `ShareReader.read` returns.
MAX_READ_BYTES = 4 * 1024 * 1024
#: Bytes read at a time while hashing.
HASH_CHUNK = 1024 * 1024
#: Seconds git may take to answer for a whole scan.
GIT_TIMEOUT = 120.0

# --- Why a file was skipped (Skipped.reason) --------------------------------------------------

SKIP_GIT_IGNORED = "ignored by git"
SKIP_GIT_DIR = "inside .git"
SKIP_SECRET = "looks like a secret"
SKIP_SYMLINK = "symlink"
SKIP_SPECIAL = "special file"
SKIP_UNREADABLE = "unreadable"
SKIP_OVER_CAP = "over the cap"
SKIP_BAD_NAME = "name not portable"
SKIP_NAME_CLASH = "name clash"

#: Names a folder share leaves out because they usually hold credentials, matched without regard
#: to case against paths inside the shared folder (never against the shared path itself, which
#: the human named exactly). A pattern without '/' matches a file's name; one ending in '/'
#: matches a folder's name (the folder is skipped whole); one with '/' inside matches the end of
#: a path. Globs as in fnmatch.
SECRET_PATTERNS: tuple[str, ...] = (
    # Environment and dotenv files
    ".env*",
    # Keys and certificates with private parts, key stores
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.ppk",
    "*.kdbx",
    "id_rsa*",
    "id_ed25519*",
    "id_ecdsa*",
    "id_dsa*",
    # Credential files of common tools
    ".netrc",
    "_netrc",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".pgpass",
    ".htpasswd",
    ".vault-token",
    ".s3cfg",
    ".boto",
    "client_secret*.json",
    "*.tfstate",
    "*.tfstate.backup",
    ".docker/config.json",
    ".config/gh/hosts.yml",
    # Folders that hold keys and tokens
    ".ssh/",
    ".aws/",
    ".gnupg/",
    ".azure/",
    ".kube/",
    ".password-store/",
    ".config/gcloud/",
)


# --- Errors ---------------------------------------------------------------------------------


class FileShareError(Exception):
    """A file-sharing step cannot go on; the message says why and what to do."""


class SourceChangedError(FileShareError):
    """A shared file changed (or vanished) since it was scanned."""


class BadRangeError(FileShareError):
    """A read asked for bytes outside a manifest file (or for too many at once)."""


class HashMismatchError(FileShareError):
    """A received file's SHA-256 is not the one offered; nothing was kept."""


class DiskFullError(FileShareError):
    """The destination disk filled up; nothing was kept."""


# --- Records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One file of an offer: relative POSIX path (NFC), size in bytes, SHA-256 digest."""

    path: str
    size: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something a folder share left out: its path (folders end in '/') and a `SKIP_*` reason."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class SourceFile:
    """Where a manifest file is on the sharer's disk and what it was when scanned."""

    path: Path
    device: int
    inode: int
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Share:
    """What `scan_share` found: one offer. `sources[i]` is where `entries[i]` is read from."""

    root: Path
    is_folder: bool
    name: str
    entries: tuple[ManifestEntry, ...]
    skipped: tuple[Skipped, ...]
    total: int
    sources: tuple[SourceFile, ...] = ()
    warnings: tuple[str, ...] = ()
    #: Skipped entries beyond MAX_SKIPPED_LISTED, counted but not listed.
    skipped_unlisted: int = 0


# --- Platform bits --------------------------------------------------------------------------

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_READ_FLAGS = os.O_RDONLY | _O_BINARY | _O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK | _O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW | _O_DIRECTORY
_CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_CLOEXEC | _O_NOFOLLOW | _O_NOCTTY
)
# Folders are opened relative to their parent where the system allows it (Linux, macOS), so the
# path cannot be redirected through a symlink between a check and a use. Elsewhere (Windows) the
# fallback checks each component with lstat first: the same rules, with a small race window.
_USE_DIR_FD = bool(_O_DIRECTORY and _O_NOFOLLOW) and all(
    f in os.supports_dir_fd for f in (os.open, os.mkdir, os.stat, os.unlink, os.rename, os.link)
)
_REPARSE_POINT = getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0)
# Errors that mean "this file system cannot make hard links": fall back to a checked rename.
_NO_LINK_ERRNOS = frozenset(
    code
    for code in (
        getattr(errno, name, None)
        for name in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "EXDEV", "ENOSYS", "EMLINK", "EACCES")
    )
    if code is not None
)
_FULL_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None
)


def _is_link(st: os.stat_result) -> bool:
    """A symlink, or on Windows any reparse point (junctions are symlinks in disguise)."""
    if stat.S_ISLNK(st.st_mode):
        return True
    return bool(_REPARSE_POINT and getattr(st, "st_file_attributes", 0) & _REPARSE_POINT)


@functools.cache
def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


# --- Names ----------------------------------------------------------------------------------

_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{dev}{n}" for dev in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"}
)
#: Characters Windows refuses in names (':' also opens NTFS alternate data streams).
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
#: Characters drawn like '/' or '\\' (a disguised path, and Windows' "best fit" maps some of
#: them to real separators in narrow-character APIs).
_LOOKALIKE_SEPARATORS = frozenset("\u2044\u2215\u2216\u29f5\u29f8\u29f9\ufe68\uff0f\uff3c")
#: Unicode categories refused anywhere in a name: controls, format characters (bidi overrides,
#: zero-width), lone surrogates (not encodable), line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHOWN_LIMIT = 120


def _shown(name: str) -> str:
    """A name safe to put in a message: quoted, invisible characters escaped, shortened."""
    text = _escaped(name)
    if len(text) > _SHOWN_LIMIT:
        text = text[: _SHOWN_LIMIT - 1] + "\u2026"
    return f"'{text}'"


def _escaped(name: str) -> str:
    """A name as printable text: invisible characters and undecodable bytes escaped."""
    return "".join(
        f"\\u{ord(ch):04x}"
        if unicodedata.category(ch) in _REFUSED_CATEGORIES or ch in _LOOKALIKE_SEPARATORS
        else ch
        for ch in name
    )


def _fold(name: str) -> str:
    """Canonical caseless form (Unicode D145): names equal here collide on some file system."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def _component_problem(part: str) -> tuple[str, str] | None:
    if part == "":
        return SKIP_BAD_NAME, "it has an empty component ('//', or '/' at the start or end)"
    if part in (".", ".."):
        return SKIP_BAD_NAME, (
            f"it has a '{part}' component; files must stay inside the folder they are saved to"
        )
    for ch in part:
        if ch in _WINDOWS_FORBIDDEN:
            return SKIP_BAD_NAME, f"it contains {ch!r}, which Windows does not allow in names"
    if part[-1] in ". ":
        return SKIP_BAD_NAME, (
            "a component ends with a dot or a space (Windows drops them, merging names)"
        )
    stem = part.split(".", 1)[0].rstrip(" ").upper()
    if stem in _WINDOWS_RESERVED:
        return SKIP_BAD_NAME, f"{stem} is a reserved device name on Windows"
    if part.casefold() in (".git", "git~1"):
        return SKIP_BAD_NAME, (
            "it has a '.git' component, which could plant git hooks or configuration"
        )
    if len(part.encode("utf-8")) > MAX_NAME_BYTES:
        return SKIP_OVER_CAP, f"a component is longer than {MAX_NAME_BYTES} bytes (MAX_NAME_BYTES)"
    return None


def _path_problem(path: str) -> tuple[str, str] | None:
    """(skip reason, message) for a bad relative path, None for a good NFC one."""
    for ch in path:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return SKIP_BAD_NAME, (
                f"it contains the control or invisible character U+{ord(ch):04X}"
            )
        if ch in _LOOKALIKE_SEPARATORS:
            return SKIP_BAD_NAME, f"it contains U+{ord(ch):04X}, which looks like a slash"
    if path == "":
        return SKIP_BAD_NAME, "it is empty"
    if "\\" in path:
        return SKIP_BAD_NAME, "it contains a backslash; paths use '/' between folders"
    if path.startswith("/"):
        return SKIP_BAD_NAME, "it is an absolute path; paths must be relative"
    if len(path) >= 2 and path[1] == ":" and path[0].isascii() and path[0].isalpha():
        return SKIP_BAD_NAME, "it starts with a drive letter; paths must be relative"
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        return SKIP_OVER_CAP, f"it is longer than {MAX_PATH_BYTES} bytes (MAX_PATH_BYTES)"
    parts = path.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        return SKIP_OVER_CAP, f"it is more than {MAX_PATH_DEPTH} folders deep (MAX_PATH_DEPTH)"
    for part in parts:
        problem = _component_problem(part)
        if problem is not None:
            return problem
    return None


def check_relative_path(path: str) -> str:
    """The one rule for a name inside an offer; returns its NFC form or raises FileShareError."""
    if not isinstance(path, str):
        raise FileShareError("a file name must be text")
    normal = unicodedata.normalize("NFC", path)
    problem = _path_problem(normal)
    if problem is not None:
        raise FileShareError(
            f"the name {_shown(path)} is not allowed: {problem[1]}. "
            "Rename it (or send an archive of the folder) and share again."
        )
    return normal


class _NameSet:
    """Paths of one offer, to find two that would be the same file somewhere."""

    def __init__(self) -> None:
        self._files: dict[str, str] = {}
        self._dirs: dict[str, str] = {}

    def clash(self, path: str) -> str | None:
        """The earlier path `path` collides with (same name after case folding, or a file that
        is also a folder), else None."""
        key = _fold(path)
        if key in self._files:
            return self._files[key]
        if key in self._dirs:
            return self._dirs[key]
        parts = path.split("/")
        for depth in range(1, len(parts)):
            prefix = _fold("/".join(parts[:depth]))
            if prefix in self._files:
                return self._files[prefix]
        return None

    def add(self, path: str) -> None:
        self._files[_fold(path)] = path
        parts = path.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            self._dirs.setdefault(_fold(prefix), prefix + "/")


def _size_text(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _absolute(path: str, cwd: str | None) -> Path:
    if not isinstance(path, str) or path == "":
        raise FileShareError("give a path (absolute, or relative to the working directory)")
    if "\x00" in path:
        raise FileShareError("a path cannot contain a NUL character")
    expanded = os.path.expanduser(path)
    base = cwd if cwd is not None else os.getcwd()
    return Path(os.path.abspath(os.path.join(base, expanded)))


# --- Secrets --------------------------------------------------------------------------------

_SECRET_FILES = tuple(p for p in SECRET_PATTERNS if "/" not in p)
_SECRET_DIRS = tuple(p[:-1] for p in SECRET_PATTERNS if p.endswith("/"))
_SECRET_PATHS = tuple(p for p in SECRET_PATTERNS if "/" in p.rstrip("/") and not p.endswith("/"))


def _suffix_matches(parts: Sequence[str], pattern: str) -> bool:
    want = pattern.split("/")
    if len(parts) < len(want):
        return False
    tail = parts[len(parts) - len(want) :]
    return all(fnmatch.fnmatchcase(p.casefold(), w) for p, w in zip(tail, want, strict=True))


def _secret_file(parts: Sequence[str]) -> bool:
    name = parts[-1].casefold()
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in _SECRET_FILES):
        return True
    return any(_suffix_matches(parts, pattern) for pattern in _SECRET_PATHS)


def _secret_dir(parts: Sequence[str]) -> bool:
    return any(_suffix_matches(parts, pattern) for pattern in _SECRET_DIRS)


# --- Git ------------------------------------------------------------------------------------

# Variables that would point git at another repository than the one on disk.
_GIT_ENV_DROP = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_OBJECT_DIRECTORY",
)


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROP}
    # C locale: messages we pass on are stable; GIT_FLUSH: answer each path at once (we talk to
    # check-ignore one path at a time, so a full pipe can never deadlock us).
    env.update(LC_ALL="C", GIT_FLUSH="1", GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0")
    return env


# A repository's config could name an fsmonitor program; scanning must never run one.
_GIT = ("git", "-c", "core.fsmonitor=false")


class _GitMissing(Exception):
    pass


class _GitOracle:
    """One `git check-ignore --stdin` process for one work tree, asked one path at a time."""

    def __init__(self, top: Path, watchdog: _Watchdog) -> None:
        cmd = [*_GIT, "-C", str(top), "check-ignore", "--stdin", "-z", "-v", "-n"]
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=_git_env(),
            )
        except FileNotFoundError as exc:
            raise _GitMissing from exc
        watchdog.watch(self._proc)
        self._buffer = bytearray()

    def ignored(self, relpath: str) -> bool:
        """Whether git ignores `relpath` (relative to the work tree top, '/' separated)."""
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(os.fsencode(relpath) + b"\0")
            proc.stdin.flush()
            # Each answer is four NUL-terminated fields: source, line, pattern, path.
            while self._buffer.count(0) < 4:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise OSError("git check-ignore stopped answering")
                self._buffer += chunk
        except OSError as exc:
            raise FileShareError(
                "git stopped answering while checking which files it ignores "
                f"(it may have taken longer than {GIT_TIMEOUT:.0f} s); "
                "try again, or share a smaller folder"
            ) from exc
        fields = bytes(self._buffer).split(b"\0", 4)
        self._buffer = bytearray(fields[4])
        pattern = fields[2]
        # With -v -n, a path no pattern matches has an empty pattern, and one re-included by a
        # negated pattern ("!keep.log") shows that pattern: neither is ignored.
        return bool(pattern) and not pattern.startswith(b"!")

    def close(self) -> None:
        proc = self._proc
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class _Watchdog:
    """Kills every git process of a scan once GIT_TIMEOUT has passed."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._expired = False
        self._timer = threading.Timer(GIT_TIMEOUT, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.append(proc)
            if self._expired:
                proc.kill()

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            for proc in self._procs:
                if proc.poll() is None:
                    proc.kill()

    def cancel(self) -> None:
        self._timer.cancel()


def _run_git(args: Sequence[str], where: Path) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [*_GIT, "-C", str(where), *args],
            capture_output=True,
            env=_git_env(),
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as exc:
        raise _GitMissing from exc
    except subprocess.TimeoutExpired as exc:
        raise FileShareError(
            f"git took longer than {GIT_TIMEOUT:.0f} s to answer in {where}; try again"
        ) from exc


@dataclass(slots=True)
class _GitScope:
    """Where a folder's entries are checked: an oracle and the folder's path from its top."""

    oracle: _GitOracle | None
    prefix: str  # '' or 'some/dir/': the scope's folder relative to the work tree top
    base: int  # how many components of a share-relative path lead to that folder

    def query(self, parts: Sequence[str]) -> str:
        return self.prefix + "/".join(parts[self.base :])


class _GitRules:
    """The git side of a scan: finds work trees, starts oracles, collects warnings."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self._watchdog = _Watchdog()
        self._oracles: list[_GitOracle] = []
        self._missing = False
        self._warned_missing = False

    def scope_for(self, folder: Path, shown: str, *, base: int) -> _GitScope | None:
        """A scope if `folder` is (inside) a work tree git can read; None if it is not one.

        For the share root the work tree may start higher up; for a folder inside the share
        only a `.git` right there starts a new one (a nested repository or a submodule).
        """
        is_root = base == 0
        if not is_root and not os.path.lexists(folder / ".git"):
            return None
        try:
            if self._missing:
                raise _GitMissing
            probe = _run_git(["rev-parse", "--is-inside-work-tree", "--show-cdup"], folder)
        except _GitMissing:
            self._missing = True
            if is_root and not _has_dot_git_above(folder):
                return None
            if not self._warned_missing:
                self._warned_missing = True
                self.warnings.append(
                    "git is not installed, so files that .gitignore excludes were not skipped "
                    f"(first seen at {shown}); install git or check the file list"
                )
            return _GitScope(None, "", base)
        if probe.returncode != 0:
            if is_root and not _has_dot_git_above(folder):
                return None
            first = probe.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
            self.warnings.append(
                f"git could not read the repository at {shown} "
                f"({first[0] if first else 'no reason given'}), so files it ignores there were "
                "not skipped; check the file list"
            )
            return _GitScope(None, "", base)
        lines = probe.stdout.decode("utf-8", "surrogateescape").splitlines()
        if not lines or lines[0] != "true":
            return None  # inside a .git folder: not a work tree
        cdup = lines[1] if len(lines) > 1 else ""
        top = Path(os.path.normpath(folder / cdup)) if cdup else folder
        prefix = "" if not cdup else folder.relative_to(top).as_posix() + "/"
        try:
            oracle = _GitOracle(top, self._watchdog)
        except _GitMissing:
            self._missing = True
            return _GitScope(None, "", base)
        self._oracles.append(oracle)
        if is_root and prefix and oracle.ignored(prefix.rstrip("/")):
            self.warnings.append(
                f"{shown} is ignored by git; it was shared anyway because it was named, "
                "without skipping what its .gitignore files exclude"
            )
            return _GitScope(None, "", base)
        return _GitScope(oracle, prefix, base)

    def release(self, scope: _GitScope) -> None:
        """Stop a nested work tree's oracle once its folder is done (bounds live processes)."""
        if scope.oracle is not None and scope.oracle in self._oracles:
            self._oracles.remove(scope.oracle)
            scope.oracle.close()

    def close(self) -> None:
        self._watchdog.cancel()
        for oracle in self._oracles:
            oracle.close()


def _has_dot_git_above(folder: Path) -> bool:
    return any(os.path.lexists(p / ".git") for p in (folder, *folder.parents))


# --- Scanning -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Found:
    path: str  # NFC relative path for the manifest
    disk: Path
    st: os.stat_result


class _Scan:
    def __init__(self, root: Path, shown_root: str) -> None:
        self.root = root
        self.shown_root = shown_root
        self.found: list[_Found] = []
        self.skipped: list[Skipped] = []
        self.skipped_unlisted = 0
        self.looked_at = 0
        self.total = 0
        self.names = _NameSet()
        self.git = _GitRules()

    def skip(self, parts: Sequence[str], reason: str, *, folder: bool = False) -> None:
        if len(self.skipped) >= MAX_SKIPPED_LISTED:
            self.skipped_unlisted += 1
            return
        path = "/".join(_escaped(p) for p in parts) + ("/" if folder else "")
        self.skipped.append(Skipped(path, reason))

    def walk(self, folder: Path, parts: list[str], scope: _GitScope | None) -> None:
        try:
            with os.scandir(folder) as listing:
                children = sorted(listing, key=lambda e: e.name)
        except OSError:
            if not parts:
                raise
            self.skip(parts, SKIP_UNREADABLE, folder=True)
            return
        self.looked_at += len(children)
        if self.looked_at > MAX_SCAN_ENTRIES:
            raise FileShareError(
                f"{self.shown_root} holds more than {MAX_SCAN_ENTRIES} files and folders "
                "(MAX_SCAN_ENTRIES, counting only what was not skipped whole); "
                "share a smaller folder, or an archive of it"
            )
        for child in children:
            self.visit(child, [*parts, child.name], scope)

    def visit(self, child: os.DirEntry[str], parts: list[str], scope: _GitScope | None) -> None:
        try:
            st = child.stat(follow_symlinks=False)
        except FileNotFoundError:
            return  # gone since the listing: nothing to send
        except OSError:
            self.skip(parts, SKIP_UNREADABLE)
            return
        is_dir = stat.S_ISDIR(st.st_mode) and not _is_link(st)
        if child.name.casefold() == ".git":
            self.skip(parts, SKIP_GIT_DIR, folder=is_dir)
            return
        if _is_link(st):
            self.skip(parts, SKIP_SYMLINK)
            return
        if not is_dir and not stat.S_ISREG(st.st_mode):
            self.skip(parts, SKIP_SPECIAL)
            return
        if _secret_dir(parts) if is_dir else _secret_file(parts):
            self.skip(parts, SKIP_SECRET, folder=is_dir)
            return
        relpath = unicodedata.normalize("NFC", "/".join(parts))
        problem = _path_problem(relpath)
        if is_dir and problem is None and len(parts) + 1 > MAX_PATH_DEPTH:
            problem = SKIP_OVER_CAP, "too deep"
        if problem is not None:
            self.skip(parts, problem[0], folder=is_dir)
            return
        if scope is not None and scope.oracle is not None:
            if scope.oracle.ignored(scope.query(parts)):
                self.skip(parts, SKIP_GIT_IGNORED, folder=is_dir)
                return
        if is_dir:
            folder = Path(child.path)
            inner = self.git.scope_for(folder, _shown(relpath), base=len(parts))
            try:
                self.walk(folder, parts, inner if inner is not None else scope)
            finally:
                if inner is not None:
                    self.git.release(inner)
            return
        clash = self.names.clash(relpath)
        if clash is not None:
            self.skip(parts, SKIP_NAME_CLASH)
            return
        self.names.add(relpath)
        self.found.append(_Found(relpath, Path(child.path), st))
        self.total += st.st_size
        if len(self.found) > MAX_OFFER_FILES:
            raise FileShareError(
                f"{self.shown_root} has more than {MAX_OFFER_FILES} files to send "
                "(MAX_OFFER_FILES) after skipping ignored and secret-looking files; "
                "share a smaller folder, or an archive of it"
            )
        _check_total(self.total, self.shown_root)


def _check_total(total: int, shown: str) -> None:
    if total > MAX_OFFER_BYTES:
        raise FileShareError(
            f"{shown} holds more than {_size_text(MAX_OFFER_BYTES)}, the most one offer may "
            "carry (MAX_OFFER_BYTES); share less at a time"
        )


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) != (
        after.st_dev,
        after.st_ino,
        after.st_size,
        after.st_mtime_ns,
    )


def _changed_error(shown: str) -> SourceChangedError:
    return SourceChangedError(
        f"{shown} changed while it was being shared (its size, time or identity is not what "
        "was scanned); share it again once nothing writes to it, or share a copy"
    )


def _hash_source(path: Path, expected: os.stat_result, shown: str) -> bytes:
    """SHA-256 of a regular file, streamed; the open file must be the one that was scanned."""
    fd = os.open(path, _READ_FLAGS)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or _changed(expected, before):
            raise _changed_error(shown)
        digest = hashlib.sha256()
        remaining = before.st_size
        while remaining:
            chunk = os.read(fd, min(HASH_CHUNK, remaining))
            if not chunk:
                raise _changed_error(shown)
            digest.update(chunk)
            remaining -= len(chunk)
        if _changed(before, os.fstat(fd)):
            raise _changed_error(shown)
        return digest.digest()
    finally:
        os.close(fd)


def scan_share(path: str, *, cwd: str | None = None) -> Share:
    """Look at a file or folder to share and build its offer (see the module docstring)."""
    given = _absolute(path, cwd)
    shown = _shown(str(given))
    try:
        st = os.lstat(given)
    except FileNotFoundError:
        raise FileShareError(
            f"{shown} does not exist; check the path (a relative path starts at "
            f"{_shown(cwd if cwd is not None else os.getcwd())})"
        ) from None
    except OSError as exc:
        raise FileShareError(f"cannot look at {shown}: {exc.strerror}") from None
    if _is_link(st):
        raise FileShareError(
            f"{shown} is a symbolic link, and links are never followed when sharing; "
            f"share what it points to by its real path ({_shown(os.path.realpath(given))})"
        )
    if given.parent == given:
        raise FileShareError("the file-system root cannot be shared; share a folder inside it")
    root = given.parent.resolve() / given.name
    name = unicodedata.normalize("NFC", given.name)
    if stat.S_ISREG(st.st_mode):
        return _scan_file(root, name, st, shown)
    if stat.S_ISDIR(st.st_mode):
        return _scan_folder(root, name, shown)
    raise FileShareError(
        f"{shown} is a special file (fifo, socket or device); only regular files and folders "
        "can be shared"
    )


def _scan_file(root: Path, name: str, st: os.stat_result, shown: str) -> Share:
    entry_name = check_relative_path(name)
    _check_total(st.st_size, shown)
    try:
        digest = _hash_source(root, st, shown)
    except OSError as exc:
        raise FileShareError(f"cannot read {shown}: {exc.strerror}") from None
    entry = ManifestEntry(entry_name, st.st_size, digest)
    source = SourceFile(root, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return Share(root, False, entry_name, (entry,), (), st.st_size, (source,))


def _scan_folder(root: Path, name: str, shown: str) -> Share:
    scan = _Scan(root, shown)
    try:
        scope = scan.git.scope_for(root, shown, base=0)
        try:
            scan.walk(root, [], scope)
        except OSError as exc:
            raise FileShareError(f"cannot read the folder {shown}: {exc.strerror}") from None
    finally:
        scan.git.close()
    entries: list[ManifestEntry] = []
    sources: list[SourceFile] = []
    for found in scan.found:
        file_shown = _shown(found.path)
        try:
            digest = _hash_source(found.disk, found.st, file_shown)
        except FileNotFoundError:
            continue  # deleted since the listing: nothing to send, as in the walk
        except OSError:
            scan.skip(found.path.split("/"), SKIP_UNREADABLE)
            continue
        st = found.st
        entries.append(ManifestEntry(found.path, st.st_size, digest))
        sources.append(SourceFile(found.disk, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return Share(
        root=root,
        is_folder=True,
        name=name,
        entries=tuple(entries),
        skipped=tuple(scan.skipped),
        total=sum(e.size for e in entries),
        sources=tuple(sources),
        warnings=tuple(scan.git.warnings),
        skipped_unlisted=scan.skipped_unlisted,
    )


# --- Reading for a receiver -----------------------------------------------------------------


class ShareReader:
    """Serves byte ranges of a Share's files; one open file at a time, safe across threads."""

    def __init__(self, share: Share) -> None:
        if len(share.sources) != len(share.entries):
            raise FileShareError("this share has no source files; make it with scan_share")
        self._share = share
        self._lock = threading.Lock()
        self._index = -1
        self._fd = -1

    def read(self, index: int, offset: int, size: int) -> bytes:
        entries = self._share.entries
        if not 0 <= index < len(entries):
            raise BadRangeError(f"this offer has no file number {index} (it has {len(entries)})")
        entry = entries[index]
        if offset < 0 or size < 0 or offset + size > entry.size:
            raise BadRangeError(
                f"bytes {offset} to {offset + size} are outside {_shown(entry.path)} "
                f"({entry.size} bytes)"
            )
        if size > MAX_READ_BYTES:
            raise BadRangeError(
                f"a read of {size} bytes is over MAX_READ_BYTES ({MAX_READ_BYTES}); "
                "ask for smaller ranges"
            )
        shown = _shown(entry.path)
        with self._lock:
            fd = self._open(index, shown)
            try:
                data = _read_at(fd, offset, size)
                if len(data) != size or _changed_since_scan(self._share.sources[index], fd):
                    raise _changed_error(shown)
            except OSError as exc:
                self._close_locked()
                raise SourceChangedError(f"cannot read {shown} any more: {exc.strerror}") from None
            except SourceChangedError:
                self._close_locked()
                raise
        return data

    def _open(self, index: int, shown: str) -> int:
        if self._index == index:
            return self._fd
        self._close_locked()
        source = self._share.sources[index]
        try:
            fd = os.open(source.path, _READ_FLAGS)
        except FileNotFoundError:
            raise SourceChangedError(f"{shown} is gone since it was shared") from None
        except OSError as exc:
            raise SourceChangedError(
                f"cannot open {shown} any more ({exc.strerror}); it may have been replaced, "
                "share it again"
            ) from None
        self._index, self._fd = index, fd
        return fd

    def _close_locked(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._index, self._fd = -1, -1

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def __enter__(self) -> ShareReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _changed_since_scan(source: SourceFile, fd: int) -> bool:
    st = os.fstat(fd)
    return not stat.S_ISREG(st.st_mode) or (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    ) != (source.device, source.inode, source.size, source.mtime_ns)


def _read_at(fd: int, offset: int, size: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < size:
        if hasattr(os, "pread"):
            chunk = os.pread(fd, size - got, offset + got)
        else:  # Windows: the reader's lock makes seek-then-read safe
            os.lseek(fd, offset + got, os.SEEK_SET)
            chunk = os.read(fd, size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


# --- Receiving ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One file a receive will write: its (normalised) entry, where, and if it replaces one."""

    entry: ManifestEntry
    target: Path
    replaces: bool


@dataclass(frozen=True, slots=True)
class ReceivePlan:
    """What `plan_receive` checked: the real destination folder and every file's target."""

    root: Path
    files: tuple[PlannedFile, ...]
    total: int
    overwrite: bool

    def writer(self, index: int) -> FileWriter:
        """Start receiving `files[index]` (creates its folders and a temporary file)."""
        return FileWriter._open(self, index)


def plan_receive(
    save_to: str,
    entries: Sequence[ManifestEntry],
    *,
    overwrite: bool,
    cwd: str | None = None,
) -> ReceivePlan:
    """Check a whole offer against `save_to` before anything is written (module docstring)."""
    if len(entries) > MAX_OFFER_FILES:
        raise FileShareError(
            f"the offer has {len(entries)} files, more than MAX_OFFER_FILES ({MAX_OFFER_FILES})"
        )
    names = _NameSet()
    normal: list[ManifestEntry] = []
    total = 0
    for entry in entries:
        path = check_relative_path(entry.path)
        shown = _shown(path)
        if type(entry.size) is not int or entry.size < 0:
            raise FileShareError(f"the offer gives {shown} an invalid size")
        if not isinstance(entry.sha256, bytes) or len(entry.sha256) != 32:
            raise FileShareError(f"the offer gives {shown} an invalid SHA-256")
        clash = names.clash(path)
        if clash is not None:
            raise FileShareError(
                f"the names {_shown(clash)} and {shown} would be the same file or folder on a "
                "system that ignores case (or one is a file inside the other); they are refused "
                "on every system. Ask the sharer to rename one"
            )
        names.add(path)
        total += entry.size
        normal.append(ManifestEntry(path, entry.size, entry.sha256))
    if total > MAX_OFFER_BYTES:
        raise FileShareError(
            f"the offer holds {_size_text(total)}, more than MAX_OFFER_BYTES "
            f"({_size_text(MAX_OFFER_BYTES)})"
        )

    root = _absolute(save_to, cwd).resolve()
    existing = root
    while not os.path.lexists(existing):
        existing = existing.parent
    if not os.path.isdir(existing):
        raise FileShareError(
            f"{_shown(str(existing))} is not a folder, so nothing can be saved under it; "
            "choose another saveTo"
        )
    planned: list[PlannedFile] = []
    clobbered: list[str] = []
    for entry in normal:
        target = root.joinpath(*entry.path.split("/"))
        replaces = _check_target(root, entry.path.split("/"))
        if replaces:
            clobbered.append(entry.path)
        planned.append(PlannedFile(entry, target, replaces))
    if clobbered and not overwrite:
        more = f" and {len(clobbered) - 1} more" if len(clobbered) > 1 else ""
        raise FileShareError(
            f"{_shown(str(root / clobbered[0]))}{more} already exist; pass overwrite: true to "
            "replace them, or choose another saveTo"
        )
    free = shutil.disk_usage(existing).free
    if free < total:
        raise DiskFullError(
            f"not enough free space in {_shown(str(existing))}: the offer needs "
            f"{_size_text(total)} and {_size_text(free)} are free; free some space or choose "
            "another saveTo"
        )
    return ReceivePlan(root, tuple(planned), total, overwrite)


def _check_target(root: Path, parts: Sequence[str]) -> bool:
    """Whether the target exists as a regular file; refuses links, non-folders, specials."""
    current = root
    for depth, part in enumerate(parts):
        current = current / part
        shown = _shown(str(current))
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise FileShareError(
                f"cannot look at {shown}: {exc.strerror}; choose another saveTo"
            ) from None
        if depth == len(parts) - 1:
            _refuse_existing(st, shown, overwrite=True)
        elif _is_link(st):
            raise _through_link_error(shown)
        elif not stat.S_ISDIR(st.st_mode):
            raise _not_a_folder_error(shown)
    return True


def _through_link_error(shown: str) -> FileShareError:
    return FileShareError(
        f"{shown} is a symbolic link; nothing is ever written through a link. Choose another saveTo"
    )


def _not_a_folder_error(shown: str) -> FileShareError:
    return FileShareError(
        f"{shown} exists and is not a folder, but the offer puts files inside it; "
        "choose another saveTo"
    )


class _Dir:
    """A folder under the save root, reached without following any symlink."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def open_root(cls, root: Path) -> _Dir:
        shown = _shown(str(root))
        try:
            os.makedirs(root, exist_ok=True)
            if not _USE_DIR_FD:
                st = os.lstat(root)
                if _is_link(st) or not stat.S_ISDIR(st.st_mode):
                    raise FileShareError(f"{shown} is not a folder any more; choose another saveTo")
                return cls(root, None)
            return cls(root, os.open(root, _DIR_FLAGS))
        except OSError as exc:
            raise FileShareError(
                f"cannot use {shown} as the destination ({exc.strerror}); choose another saveTo"
            ) from None

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            if self.fd is not None:
                return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            return os.lstat(self.path / name)
        except FileNotFoundError:
            return None

    def child(self, name: str) -> _Dir:
        """The sub-folder `name`, created if missing; refused if it is a link or not a folder."""
        shown = _shown(str(self.path / name))
        try:
            if self.fd is not None:
                with _suppress_exists():
                    os.mkdir(name, 0o777, dir_fd=self.fd)
                try:
                    return _Dir(self.path / name, os.open(name, _DIR_FLAGS, dir_fd=self.fd))
                except OSError:
                    st = self.lstat(name)
                    if st is None or stat.S_ISDIR(st.st_mode):
                        raise
            else:
                with _suppress_exists():
                    os.mkdir(self.path / name)
                st = self.lstat(name)
                if st is not None and stat.S_ISDIR(st.st_mode) and not _is_link(st):
                    return _Dir(self.path / name, None)
        except OSError as exc:
            raise FileShareError(
                f"cannot create or open the folder {shown} ({exc.strerror}); choose another saveTo"
            ) from None
        if st is not None and _is_link(st):
            raise _through_link_error(shown)
        raise _not_a_folder_error(shown)

    def create_exclusive(self, name: str) -> int:
        if self.fd is not None:
            return os.open(name, _CREATE_FLAGS, 0o600, dir_fd=self.fd)
        return os.open(self.path / name, _CREATE_FLAGS, 0o600)

    def unlink(self, name: str) -> None:
        if self.fd is not None:
            os.unlink(name, dir_fd=self.fd)
        else:
            os.unlink(self.path / name)

    def rename(self, src: str, dst: str, *, replace: bool) -> None:
        move = os.replace if replace else os.rename
        if self.fd is not None:
            move(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        else:
            move(self.path / src, self.path / dst)

    def link_no_replace(self, src: str, dst: str) -> None:
        """Give `src` the name `dst` unless `dst` exists (FileExistsError then)."""
        try:
            if self.fd is not None:
                os.link(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            else:
                os.link(self.path / src, self.path / dst)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
            # No hard links here (FAT, some network shares): a checked rename. On Windows the
            # rename itself refuses an existing name; on POSIX only the check does (a tiny race).
            if self.lstat(dst) is not None:
                raise FileExistsError(errno.EEXIST, "exists", dst) from None
            self.rename(src, dst, replace=False)
            return
        with _suppress_missing():
            self.unlink(src)

    def fsync(self) -> None:
        if self.fd is not None:
            try:
                os.fsync(self.fd)
            except OSError:
                pass  # some file systems cannot sync a folder; the file itself was synced

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextmanager
def _suppress_exists() -> Iterator[None]:
    try:
        yield
    except FileExistsError:
        pass


@contextmanager
def _suppress_missing() -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        pass


_TEMP_SUFFIX = ".tunnel-part"


def _temp_name(name: str) -> str:
    token = secrets.token_hex(6)
    room = MAX_NAME_BYTES - len(f"..{token}{_TEMP_SUFFIX}")
    short = name.encode("utf-8")[:room].decode("utf-8", "ignore")
    return f".{short}.{token}{_TEMP_SUFFIX}"


class FileWriter:
    """Receives one manifest file into a temporary name, then moves it into place."""

    def __init__(
        self, plan: ReceivePlan, item: PlannedFile, folder: _Dir, temp: str, fd: int
    ) -> None:
        self.entry = item.entry
        self.target = item.target
        self.size = item.entry.size
        #: Bytes accepted so far: the only offset `write` takes next.
        self.written = 0
        self._overwrite = plan.overwrite
        self._folder = folder
        self._temp = temp
        self._fd = fd
        self._digest = hashlib.sha256()
        self._state = "open"  # then "done" or "aborted"
        self._shown = _shown(str(item.target))

    @classmethod
    def _open(cls, plan: ReceivePlan, index: int) -> FileWriter:
        if not 0 <= index < len(plan.files):
            raise FileShareError(f"the plan has no file number {index}")
        item = plan.files[index]
        parts = item.entry.path.split("/")
        folder = _Dir.open_root(plan.root)
        try:
            for part in parts[:-1]:
                inner = folder.child(part)
                folder.close()
                folder = inner
            _refuse_existing(folder.lstat(parts[-1]), _shown(str(item.target)), plan.overwrite)
            temp = _temp_name(parts[-1])
            try:
                fd = folder.create_exclusive(temp)
            except OSError as exc:
                raise FileShareError(
                    f"cannot create a file in {_shown(str(folder.path))} ({exc.strerror}); "
                    "choose another saveTo"
                ) from None
        except BaseException:
            folder.close()
            raise
        return cls(plan, item, folder, temp, fd)

    @property
    def done(self) -> bool:
        return self._state == "done"

    def _require_open(self) -> None:
        if self._state != "open":
            raise FileShareError(f"the writer for {self._shown} is already {self._state}")

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Append `data`, which must start at `offset == self.written`."""
        self._require_open()
        if offset != self.written:
            raise BadRangeError(
                f"bytes for {self._shown} start at {offset}, but {self.written} are written; "
                "continue from .written"
            )
        view = memoryview(data).cast("B")
        if len(view) > self.size - self.written:
            raise BadRangeError(
                f"{self._shown} would get more than the {self.size} bytes the offer said"
            )
        try:
            rest = view
            while rest:
                n = os.write(self._fd, rest)
                rest = rest[n:]
        except OSError as exc:
            self._discard()
            raise self._os_error(exc) from None
        self._digest.update(view)
        self.written += len(view)

    def finish(self) -> Path:
        """Check size and hash, sync, and move into place; returns the final path."""
        self._require_open()
        try:
            if self.written != self.size:
                raise FileShareError(
                    f"{self._shown} is incomplete ({self.written} of {self.size} bytes); "
                    "nothing was kept"
                )
            if self._digest.digest() != self.entry.sha256:
                raise HashMismatchError(
                    f"{self._shown} arrived with another SHA-256 than the offer said; "
                    "nothing was kept. Receive it again"
                )
            os.fsync(self._fd)
            mode = 0o666 & ~_umask()
            if hasattr(os, "fchmod"):
                os.fchmod(self._fd, mode)
            os.close(self._fd)
            self._fd = -1
            self._move_into_place()
        except FileExistsError:
            self._discard()
            raise FileShareError(
                f"{self._shown} appeared while it was being received; it was left alone and "
                "the received copy discarded. Pass overwrite: true, or choose another saveTo"
            ) from None
        except OSError as exc:
            self._discard()
            raise self._os_error(exc) from None
        except BaseException:
            self._discard()
            raise
        self._state = "done"
        self._folder.fsync()
        self._folder.close()
        return self.target

    def _move_into_place(self) -> None:
        name = self.target.name
        if self._overwrite:
            _refuse_existing(self._folder.lstat(name), self._shown, True)
            self._folder.rename(self._temp, name, replace=True)
        else:
            self._folder.link_no_replace(self._temp, name)

    def abort(self) -> None:
        """Drop what was received (a cancel); a finished file is left alone."""
        if self._state == "open":
            self._discard()

    def _discard(self) -> None:
        self._state = "aborted"
        if self._fd >= 0:
            with _suppress_os_error():
                os.close(self._fd)
            self._fd = -1
        with _suppress_os_error():
            self._folder.unlink(self._temp)
        self._folder.close()

    def _os_error(self, exc: OSError) -> FileShareError:
        if exc.errno in _FULL_ERRNOS:
            return DiskFullError(
                f"the disk filled up while writing {self._shown}; nothing was kept. Free some "
                "space (or choose another saveTo) and receive it again"
            )
        return FileShareError(f"cannot write {self._shown} ({exc.strerror}); nothing was kept")

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()  # a no-op once finished; otherwise the block ended without finish()


@contextmanager
def _suppress_os_error() -> Iterator[None]:
    try:
        yield
    except OSError:
        pass


def _refuse_existing(st: os.stat_result | None, shown: str, overwrite: bool) -> None:
    if st is None:
        return
    if _is_link(st):
        raise FileShareError(
            f"{shown} is a symbolic link; it is never replaced, not even with overwrite"
        )
    if stat.S_ISDIR(st.st_mode):
        raise FileShareError(f"{shown} is a folder; it is never replaced, not even with overwrite")
    if not stat.S_ISREG(st.st_mode):
        raise FileShareError(f"{shown} is a special file; it is never replaced")
    if not overwrite:
        raise FileShareError(
            f"{shown} already exists; pass overwrite: true to replace it, or choose another saveTo"
        )


def default_save_dir(offer_name: str, *, is_folder: bool, home: Path | None = None) -> Path:
    """Where an offer goes when the agent names no saveTo (see the module docstring)."""
    base = (home if home is not None else Path.home()) / "Downloads" / "tunnel-mcp"
    if not is_folder:
        return base
    try:
        name = check_relative_path(offer_name)
    except FileShareError:
        name = "shared-folder"
    return base / name.replace("/", "-")
