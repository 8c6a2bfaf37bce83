"""The disk and path rules of file sharing, on real files in tmp_path (and a real git)."""

from __future__ import annotations

import errno
import hashlib
import ntpath
import os
import posixpath
import shutil
import socket
import stat
import subprocess
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tunnel_trio import files_disk as fd
from tunnel_trio.files_disk import (
    BadRangeError,
    DiskFullError,
    FileShareError,
    HashMismatchError,
    ManifestEntry,
    ShareReader,
    Skipped,
    SourceChangedError,
    check_relative_path,
    default_save_dir,
    plan_receive,
    scan_share,
)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def entry(path: str, data: bytes) -> ManifestEntry:
    return ManifestEntry(path, len(data), hashlib.sha256(data).digest())


def write(path: Path, data: bytes | str = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def paths(share: fd.Share) -> list[str]:
    return [e.path for e in share.entries]


def skipped(share: fd.Share) -> dict[str, str]:
    return {s.path: s.reason for s in share.skipped}


def listing(folder: Path) -> list[str]:
    """Everything under `folder`, hidden files included, as sorted relative paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def receive_all(share: fd.Share, save_to: Path, *, overwrite: bool = False) -> list[Path]:
    plan = plan_receive(str(save_to), share.entries, overwrite=overwrite)
    done = []
    with ShareReader(share) as reader:
        for index, item in enumerate(plan.files):
            with plan.writer(index) as writer:
                offset = 0
                while offset < item.entry.size:
                    chunk = reader.read(index, offset, min(1000, item.entry.size - offset))
                    writer.write(offset, chunk)
                    offset += len(chunk)
                done.append(writer.finish())
    return done


# --- check_relative_path ----------------------------------------------------------------------

BAD_NAMES = [
    ("", "empty"),
    (".", "'.' component"),
    ("..", "'..' component"),
    ("a/../b", "'..' component"),
    ("./a", "'.' component"),
    ("a/./b", "'.' component"),
    ("../../etc/passwd", "'..' component"),
    ("a//b", "empty component"),
    ("a/", "empty component"),
    ("/etc/passwd", "absolute path"),
    ("C:", "drive letter"),
    ("C:foo", "drive letter"),
    ("c:/windows/x", "drive letter"),
    ("a\\b", "backslash"),
    ("\\\\server\\share\\x", "backslash"),
    ("..\\x", "backslash"),
    ("a\x00b", "U+0000"),
    ("a\nb", "U+000A"),
    ("a\x7fb", "U+007F"),
    ("a\x1bb", "U+001B"),
    ("evil\u202etxt.exe", "U+202E"),
    ("zero\u200bwidth", "U+200B"),
    ("line\u2028sep", "U+2028"),
    ("slash\u2215alike", "looks like a slash"),
    ("full\uff0fwidth", "looks like a slash"),
    ("CON", "reserved device name"),
    ("con", "reserved device name"),
    ("con.txt", "reserved device name"),
    ("dir/Lpt9.tar.gz", "reserved device name"),
    ("aux", "reserved device name"),
    ("Nul.json", "reserved device name"),
    ("prn", "reserved device name"),
    ("COM1", "reserved device name"),
    ("com0.log", "reserved device name"),
    ("COM\u00b9", "reserved device name"),
    ("CONIN$", "reserved device name"),
    ("nul .txt", "reserved device name"),
    ("name.", "ends with a dot or a space"),
    ("name ", "ends with a dot or a space"),
    ("dir./x", "ends with a dot or a space"),
    ("ab:c", "':'"),
    ("file.txt:stream", "':'"),
    ("a*b", "'*'"),
    ("what?", "'?'"),
    ('say"hi"', "'\"'"),
    ("a<b>", "'<'"),
    ("a|b", "'|'"),
    (".git/config", ".git"),
    ("sub/.GIT/hooks/pre-commit", ".git"),
    ("GIT~1/config", ".git"),
    ("x" * 256, "MAX_NAME_BYTES"),
    ("\u00e9" * 128, "MAX_NAME_BYTES"),  # 256 bytes in UTF-8
    ("/".join(["d"] * 33), "MAX_PATH_DEPTH"),
    ("/".join(["d" * 200] * 6), "MAX_PATH_BYTES"),
]


@pytest.mark.parametrize(("name", "why"), BAD_NAMES)
def test_a_bad_name_is_refused_with_a_message_that_says_why(name: str, why: str) -> None:
    with pytest.raises(FileShareError) as caught:
        check_relative_path(name)
    message = str(caught.value)
    assert why in message
    assert "Rename it" in message
    # The message quotes the name with invisible characters escaped: it cannot spoof a line.
    assert "\n" not in message and "\x00" not in message and "\u202e" not in message


GOOD_NAMES = [
    "a",
    "README.md",
    "dir/sub/file.txt",
    ".env",  # a secret-looking name is a sharer's rule, not a name rule
    ".gitignore",
    ".github/workflows/ci.yml",
    "CONSOLE.txt",
    "con-fig",
    "COM10",
    "LPT",
    "x" * 255,
    "\u00e9" * 127,
    "/".join(["d"] * 32),
    "/".join(["d" * 203] * 5),  # 1019 bytes
    " leading space",
    "emoji \U0001f600.txt",
    "\u65e5\u672c\u8a9e/\u30d5\u30a1\u30a4\u30eb",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_a_good_name_is_returned_as_is(name: str) -> None:
    assert check_relative_path(name) == name


def test_a_name_comes_back_in_nfc() -> None:
    decomposed = "cafe\u0301/re\u0301sume\u0301.txt"
    assert check_relative_path(decomposed) == "caf\u00e9/r\u00e9sum\u00e9.txt"


def test_a_name_that_is_not_text_is_refused() -> None:
    with pytest.raises(FileShareError, match="must be text"):
        check_relative_path(b"a.txt")  # type: ignore[arg-type]


# Names built from the pieces that break path rules, mixed with ordinary text.
_PIECES = st.sampled_from(
    [
        "/", "\\", ".", "..", ":", "C:", "c:", "CON", "nul", " ", "~", "$", "\x00", "\n", "a",
        "b.txt", "e\u0301", "\u00e9", "\u202e", "\uff0f", "//", "./", "../", "\\\\", "?", "*",
        ".git", "GIT~1", "\u2024", "\u2025", "\uff0e", "\u0130", "K", "\u212a",
    ]
)  # fmt: skip
_NAMES = st.one_of(
    st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=12).map("".join),
    st.text(max_size=40),
)


@given(_NAMES)
@example("a/b")
@example("\u2025/x")
def test_whatever_is_accepted_stays_inside_the_base_folder_on_posix_and_windows(
    name: str,
) -> None:
    try:
        accepted = check_relative_path(name)
    except FileShareError:
        return
    for base, flavour in (("/srv/base", posixpath), ("C:\\srv\\base", ntpath)):
        joined = flavour.normpath(flavour.join(base, *accepted.split("/")))
        assert joined.startswith(base + flavour.sep), (accepted, joined)
        assert flavour.splitdrive(joined)[0] == flavour.splitdrive(base)[0]
    assert check_relative_path(accepted) == accepted
    assert accepted == unicodedata.normalize("NFC", accepted)
    assert len(accepted.encode("utf-8")) <= fd.MAX_PATH_BYTES


def test_whatever_is_accepted_stays_inside_a_real_folder(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    for name in ("a/b", "x" * 255, "caf\u00e9", "\u2025", "...x"):
        target = (base / check_relative_path(name)).resolve()
        assert target.is_relative_to(base.resolve())


# --- scan_share: a single file ----------------------------------------------------------------


def test_a_single_file_is_one_entry_named_by_its_basename(tmp_path: Path) -> None:
    data = b"hello world\n" * 1000
    write(tmp_path / "logs" / "build.log", data)
    share = scan_share("logs/build.log", cwd=str(tmp_path))
    assert not share.is_folder
    assert share.name == "build.log"
    assert share.entries == (entry("build.log", data),)
    assert share.total == len(data)
    assert share.root == (tmp_path / "logs" / "build.log").resolve()
    assert share.skipped == ()


def test_a_secret_looking_file_named_exactly_is_shared(tmp_path: Path) -> None:
    for name in (".env", "server.pem", "id_rsa"):
        write(tmp_path / name, "secret")
        assert paths(scan_share(str(tmp_path / name))) == [name]


@needs_git
def test_a_git_ignored_file_named_exactly_is_shared(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    write(tmp_path / ".gitignore", "*.log\n")
    write(tmp_path / "out.log", "log")
    assert paths(scan_share(str(tmp_path / "out.log"))) == ["out.log"]


def test_a_shared_symlink_is_refused_and_the_real_path_is_named(tmp_path: Path) -> None:
    real = write(tmp_path / "real.txt", "data")
    (tmp_path / "link.txt").symlink_to(real)
    with pytest.raises(FileShareError, match="symbolic link") as caught:
        scan_share(str(tmp_path / "link.txt"))
    assert str(real) in str(caught.value)
    (tmp_path / "linkdir").symlink_to(tmp_path)
    with pytest.raises(FileShareError, match="symbolic link"):
        scan_share(str(tmp_path / "linkdir"))


def test_a_symlink_above_the_shared_path_is_resolved(tmp_path: Path) -> None:
    write(tmp_path / "real" / "f.txt", "data")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    share = scan_share(str(tmp_path / "alias" / "f.txt"))
    assert share.root == (tmp_path / "real" / "f.txt").resolve()


def test_a_shared_special_file_or_missing_path_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FileShareError, match="special file"):
        scan_share(str(tmp_path / "fifo"))
    with pytest.raises(FileShareError, match="does not exist"):
        scan_share(str(tmp_path / "nope"))
    with pytest.raises(FileShareError, match="file-system root"):
        scan_share("/")


def test_a_single_file_with_a_name_other_systems_refuse_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "aux.txt", "x")
    with pytest.raises(FileShareError, match="reserved device name"):
        scan_share(str(tmp_path / "aux.txt"))


# --- scan_share: folders ----------------------------------------------------------------------


def test_a_folder_is_a_manifest_of_relative_paths_in_a_stable_order(tmp_path: Path) -> None:
    root = tmp_path / "fixtures"
    files = {"b.json": b"{}", "a/one.txt": b"1", "a/two/deep.txt": b"22", "empty": b""}
    for name, data in files.items():
        write(root / name, data)
    share = scan_share(str(root))
    assert share.is_folder and share.name == "fixtures"
    assert share.entries == tuple(
        entry(p, files[p]) for p in ["a/one.txt", "a/two/deep.txt", "b.json", "empty"]
    )
    assert share.total == 5
    assert share.warnings == ()
    assert [s.path for s in share.sources] == [root / p for p in paths(share)]


def test_symlinks_fifos_and_sockets_in_a_folder_are_never_sent(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "secret.txt", "outside")
    root = tmp_path / "share"
    write(root / "ok.txt", "ok")
    (root / "to-file").symlink_to(outside)
    (root / "to-dir").symlink_to(outside.parent)
    (root / "dangling").symlink_to(tmp_path / "missing")
    os.mkfifo(root / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "sock"))
        share = scan_share(str(root))
    finally:
        sock.close()
    assert paths(share) == ["ok.txt"]
    assert skipped(share) == {
        "dangling": fd.SKIP_SYMLINK,
        "pipe": fd.SKIP_SPECIAL,
        "sock": fd.SKIP_SPECIAL,
        "to-dir": fd.SKIP_SYMLINK,
        "to-file": fd.SKIP_SYMLINK,
    }


SECRETS = [
    ".env",
    ".env.local",
    ".envrc",
    "config/SERVER.PEM",
    "tls/private.key",
    "cert.p12",
    "cert.pfx",
    "vault.kdbx",
    "id_rsa",
    "id_rsa.pub",
    "keys/id_ed25519",
    "id_ecdsa",
    "id_dsa",
    ".netrc",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    "home/.docker/config.json",
    "client_secret_123.json",
    "infra/terraform.tfstate",
]
SECRET_FOLDERS = [".ssh", ".aws", ".gnupg", "home/.kube", "home/.config/gcloud"]
NOT_SECRETS = [
    "environment.md",
    "key_points.txt",
    "keys/readme.md",
    "docker/config.json",
    ".config/other.yml",
    "pem.txt",
    "ssh/notes.txt",
]


def test_secret_looking_files_in_a_folder_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    for name in SECRETS + NOT_SECRETS:
        write(root / name, "data")
    for folder in SECRET_FOLDERS:
        write(root / folder / "credentials", "data")
    share = scan_share(str(root))
    assert sorted(paths(share)) == sorted(NOT_SECRETS)
    expected = {name: fd.SKIP_SECRET for name in SECRETS}
    expected.update({f"{folder}/": fd.SKIP_SECRET for folder in SECRET_FOLDERS})
    assert skipped(share) == expected


def test_a_folder_named_exactly_is_shared_but_secret_files_inside_it_are_not(
    tmp_path: Path,
) -> None:
    ssh = tmp_path / ".ssh"
    write(ssh / "config", "Host x")
    write(ssh / "id_ed25519", "key")
    share = scan_share(str(ssh))
    assert paths(share) == ["config"]
    assert skipped(share) == {"id_ed25519": fd.SKIP_SECRET}


def test_dot_git_is_always_skipped(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    write(root / ".git" / "config", "[core]")
    write(root / "sub" / ".git", "gitdir: elsewhere")
    write(root / "sub" / "file.txt", "x")
    share = scan_share(str(root))
    assert paths(share) == ["sub/file.txt"]
    assert skipped(share) == {".git/": fd.SKIP_GIT_DIR, "sub/.git": fd.SKIP_GIT_DIR}


def test_names_no_system_can_receive_everywhere_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "share"
    for name in ("ok.txt", "CON.txt", "time 10:30.log", "trailing.", "tab\there", "a\\b"):
        write(root / name, "x")
    write(root / "aux" / "inside.txt", "x")
    share = scan_share(str(root))
    assert paths(share) == ["ok.txt"]
    assert skipped(share) == {
        "CON.txt": fd.SKIP_BAD_NAME,
        "a\\b": fd.SKIP_BAD_NAME,
        "aux/": fd.SKIP_BAD_NAME,
        "tab\\u0009here": fd.SKIP_BAD_NAME,
        "time 10:30.log": fd.SKIP_BAD_NAME,
        "trailing.": fd.SKIP_BAD_NAME,
    }


def test_an_undecodable_name_is_skipped_and_listed_printably(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    (root / os.fsdecode(b"bad\xff.txt")).write_bytes(b"x")
    share = scan_share(str(root))
    assert share.entries == ()
    assert share.skipped == (Skipped("bad\\udcff.txt", fd.SKIP_BAD_NAME),)
    share.skipped[0].path.encode("utf-8")  # safe for JSON and the terminal


def test_names_that_differ_only_in_case_or_normalisation_keep_the_first(tmp_path: Path) -> None:
    root = tmp_path / "share"
    write(root / "README", "upper")
    write(root / "readme", "lower")
    write(root / "Docs" / "a.txt", "1")
    write(root / "docs", "a file named like the folder")
    write(root / "cafe\u0301", "decomposed")
    write(root / "caf\u00e9", "composed: the same name once normalised")
    share = scan_share(str(root))
    assert paths(share) == ["Docs/a.txt", "README", "caf\u00e9"]
    assert share.sources[2].path.name == "cafe\u0301"
    assert skipped(share) == {
        "caf\u00e9": fd.SKIP_NAME_CLASH,
        "docs": fd.SKIP_NAME_CLASH,
        "readme": fd.SKIP_NAME_CLASH,
    }


def test_a_decomposed_name_on_disk_is_offered_in_nfc_and_still_read(tmp_path: Path) -> None:
    root = tmp_path / "share"
    write(root / "cafe\u0301.txt", "coffee")
    share = scan_share(str(root))
    assert paths(share) == ["caf\u00e9.txt"]
    with ShareReader(share) as reader:
        assert reader.read(0, 0, 6) == b"coffee"


def when_opening(monkeypatch: pytest.MonkeyPatch, path: Path, act: Callable[[], object]) -> None:
    """Run `act` just before the module opens `path` (what root or timing cannot stage)."""
    real_open = os.open

    def opening(name: object, *args: object, **kwargs: object) -> int:
        if Path(str(name)) == path:
            act()
        return real_open(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fd.os, "open", opening)


def test_an_unreadable_file_in_a_folder_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "share"
    write(root / "ok.txt", "ok")
    locked = write(root / "locked.txt", "no")

    def refuse() -> None:  # chmod 000 does not stop root, so refuse here
        raise PermissionError(errno.EACCES, "Permission denied", str(locked))

    when_opening(monkeypatch, locked, refuse)
    share = scan_share(str(root))
    assert paths(share) == ["ok.txt"]
    assert skipped(share) == {"locked.txt": fd.SKIP_UNREADABLE}


def test_a_file_deleted_during_the_scan_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "share"
    write(root / "ok.txt", "ok")
    doomed = write(root / "doomed.tmp", "gone soon")
    when_opening(monkeypatch, doomed, doomed.unlink)
    share = scan_share(str(root))
    assert paths(share) == ["ok.txt"] and share.skipped == ()


def test_a_file_written_to_during_the_scan_fails_it_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write(tmp_path / "live.log", "line\n" * 10)
    real_read = os.read

    def read_then_append(fileno: int, n: int) -> bytes:
        data = real_read(fileno, n)
        with open(log, "ab") as f:
            f.write(b"another line\n")
        return data

    monkeypatch.setattr(fd, "HASH_CHUNK", 8)
    monkeypatch.setattr(fd.os, "read", read_then_append)
    with pytest.raises(SourceChangedError, match="changed while it was being shared.*a copy"):
        scan_share(str(log))


# --- scan_share: git --------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    write(root / ".gitignore", "build/\n*.log\n!keep.log\nsub/cache/\n")
    write(root / "src" / "main.py", "print()")
    write(root / "app.log", "noise")
    write(root / "keep.log", "kept by a negated pattern")
    write(root / "tracked.log", "tracked although it matches *.log")
    git(root, "add", "-f", "tracked.log")
    for n in range(50):
        write(root / "build" / f"part{n}" / "out.o", "obj")
    write(root / "sub" / "notes.md", "notes")
    write(root / "sub" / "trace.log", "noise")
    write(root / "sub" / "cache" / "blob", "noise")
    return root


@needs_git
def test_files_git_ignores_are_skipped_and_ignored_folders_are_not_entered(repo: Path) -> None:
    share = scan_share(str(repo))
    assert paths(share) == [".gitignore", "keep.log", "src/main.py", "sub/notes.md", "tracked.log"]
    assert skipped(share) == {
        ".git/": fd.SKIP_GIT_DIR,
        "app.log": fd.SKIP_GIT_IGNORED,
        "build/": fd.SKIP_GIT_IGNORED,
        "sub/cache/": fd.SKIP_GIT_IGNORED,
        "sub/trace.log": fd.SKIP_GIT_IGNORED,
    }
    assert share.warnings == ()


@needs_git
def test_a_folder_inside_a_work_tree_follows_the_rules_of_the_whole_tree(repo: Path) -> None:
    share = scan_share(str(repo / "sub"))
    assert paths(share) == ["notes.md"]
    assert skipped(share) == {"cache/": fd.SKIP_GIT_IGNORED, "trace.log": fd.SKIP_GIT_IGNORED}


@needs_git
def test_an_ignored_folder_named_exactly_is_shared_with_a_warning(repo: Path) -> None:
    share = scan_share(str(repo / "build"))
    assert len(share.entries) == 50
    assert len(share.warnings) == 1 and "ignored by git" in share.warnings[0]


@needs_git
def test_a_nested_repository_is_asked_about_its_own_ignores(tmp_path: Path) -> None:
    root = tmp_path / "workspace"  # not a repository itself
    inner = root / "inner"
    inner.mkdir(parents=True)
    git(inner, "init", "-q")
    write(inner / ".gitignore", "*.tmp\n")
    write(inner / "a.tmp", "noise")
    write(inner / "a.txt", "kept")
    write(root / "b.tmp", "not in a repository: kept")
    share = scan_share(str(root))
    assert paths(share) == ["b.tmp", "inner/.gitignore", "inner/a.txt"]
    assert skipped(share) == {
        "inner/.git/": fd.SKIP_GIT_DIR,
        "inner/a.tmp": fd.SKIP_GIT_IGNORED,
    }


@needs_git
def test_without_git_a_work_tree_is_shared_with_a_warning(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "no-git-here"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    share = scan_share(str(repo))
    assert "app.log" in paths(share)
    assert len(share.warnings) == 1 and "git is not installed" in share.warnings[0]
    # Outside any work tree a missing git is nobody's business.
    write(tmp_path / "plain" / "x.log", "x")
    assert scan_share(str(tmp_path / "plain")).warnings == ()


@needs_git
def test_a_repository_config_cannot_make_the_scan_run_a_program(repo: Path) -> None:
    marker = repo.parent / "ran"
    hook = write(repo.parent / "monitor.sh", f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    git(repo, "config", "core.fsmonitor", str(hook))
    scan_share(str(repo))
    assert not marker.exists()


# --- scan_share: caps -------------------------------------------------------------------------


def test_too_many_files_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fd, "MAX_OFFER_FILES", 3)
    for n in range(4):
        write(tmp_path / "share" / f"f{n}", "x")
    with pytest.raises(FileShareError, match="more than 3 files.*MAX_OFFER_FILES.*archive"):
        scan_share(str(tmp_path / "share"))


def test_too_many_entries_to_look_at_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fd, "MAX_SCAN_ENTRIES", 10)
    for n in range(11):
        (tmp_path / "share" / f"d{n}").mkdir(parents=True)
    with pytest.raises(FileShareError, match="MAX_SCAN_ENTRIES"):
        scan_share(str(tmp_path / "share"))


def test_too_many_bytes_is_refused_before_anything_is_hashed(tmp_path: Path) -> None:
    with open(tmp_path / "huge.img", "wb") as sparse:
        sparse.truncate(fd.MAX_OFFER_BYTES + 1)
    with pytest.raises(FileShareError, match="MAX_OFFER_BYTES"):
        scan_share(str(tmp_path / "huge.img"))
    write(tmp_path / "two" / "small", "x")
    with open(tmp_path / "two" / "big", "wb") as sparse:
        sparse.truncate(fd.MAX_OFFER_BYTES)
    with pytest.raises(FileShareError, match="MAX_OFFER_BYTES"):
        scan_share(str(tmp_path / "two"))


def test_a_file_over_2_gib_fits_the_caps_and_is_read_at_its_far_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fd.MAX_OFFER_BYTES >= 2 * 1024**3
    size = 3 * 1024**3
    with open(tmp_path / "big.img", "wb") as sparse:
        sparse.seek(size - 5)
        sparse.write(b"tail!")
    # Hashing 3 GiB takes too long for a test; everything else about the scan is real.
    monkeypatch.setattr(fd, "_hash_source", lambda path, st, shown: b"\x01" * 32)
    share = scan_share(str(tmp_path / "big.img"))
    assert share.total == size and share.entries[0].size == size
    with ShareReader(share) as reader:
        assert reader.read(0, size - 5, 5) == b"tail!"
    plan = plan_receive(str(tmp_path / "in"), share.entries, overwrite=False)
    assert plan.total == size


def test_a_too_deep_folder_is_skipped_over_the_cap(tmp_path: Path) -> None:
    root = tmp_path / "share"
    deep = root.joinpath(*["d"] * fd.MAX_PATH_DEPTH)
    write(deep / "too-deep.txt", "x")
    write(deep.parent / "deepest.txt", "x")
    share = scan_share(str(root))
    assert paths(share) == ["/".join(["d"] * (fd.MAX_PATH_DEPTH - 1) + ["deepest.txt"])]
    assert skipped(share) == {"/".join(["d"] * fd.MAX_PATH_DEPTH) + "/": fd.SKIP_OVER_CAP}


def test_the_skipped_list_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fd, "MAX_SKIPPED_LISTED", 2)
    for n in range(5):
        write(tmp_path / "share" / f"{n}.pem", "x")
    share = scan_share(str(tmp_path / "share"))
    assert len(share.skipped) == 2 and share.skipped_unlisted == 3


# --- ShareReader ------------------------------------------------------------------------------


@pytest.fixture
def two_files(tmp_path: Path) -> fd.Share:
    write(tmp_path / "share" / "a.txt", b"0123456789")
    write(tmp_path / "share" / "b.txt", b"abcdef")
    return scan_share(str(tmp_path / "share"))


def test_the_reader_serves_ranges_of_each_file(two_files: fd.Share) -> None:
    with ShareReader(two_files) as reader:
        assert reader.read(0, 0, 10) == b"0123456789"
        assert reader.read(1, 2, 3) == b"cde"
        assert reader.read(0, 9, 1) == b"9"
        assert reader.read(0, 10, 0) == b""


@pytest.mark.parametrize(
    ("index", "offset", "size", "why"),
    [
        (2, 0, 1, "no file number 2"),
        (-1, 0, 1, "no file number -1"),
        (0, 0, 11, "outside"),
        (0, 10, 1, "outside"),
        (0, -1, 1, "outside"),
        (0, 0, -1, "outside"),
    ],
)
def test_the_reader_refuses_out_of_range_requests(
    two_files: fd.Share, index: int, offset: int, size: int, why: str
) -> None:
    with ShareReader(two_files) as reader, pytest.raises(BadRangeError, match=why):
        reader.read(index, offset, size)


def test_the_reader_refuses_a_read_over_its_bound(
    two_files: fd.Share, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fd, "MAX_READ_BYTES", 4)
    with ShareReader(two_files) as reader, pytest.raises(BadRangeError, match="MAX_READ_BYTES"):
        reader.read(0, 0, 5)


def test_the_reader_notices_a_file_that_grew(two_files: fd.Share) -> None:
    with ShareReader(two_files) as reader:
        assert reader.read(0, 0, 2) == b"01"
        with open(two_files.sources[0].path, "ab") as f:
            f.write(b"more")
        with pytest.raises(SourceChangedError, match="changed while it was being shared"):
            reader.read(0, 2, 2)


def test_the_reader_notices_a_file_replaced_by_another_of_the_same_size(
    two_files: fd.Share,
) -> None:
    path = two_files.sources[1].path
    stamp = path.stat()
    replacement = write(path.with_name("new"), b"ABCDEF")
    os.utime(replacement, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    replacement.replace(path)
    with ShareReader(two_files) as reader, pytest.raises(SourceChangedError):
        reader.read(1, 0, 6)


def test_the_reader_never_follows_a_file_swapped_for_a_symlink(
    two_files: fd.Share, tmp_path: Path
) -> None:
    secret = write(tmp_path / "secret", b"0123456789")
    path = two_files.sources[0].path
    path.unlink()
    path.symlink_to(secret)
    with ShareReader(two_files) as reader, pytest.raises(SourceChangedError, match="replaced"):
        reader.read(0, 0, 10)


def test_the_reader_reports_a_vanished_file(two_files: fd.Share) -> None:
    two_files.sources[0].path.unlink()
    with ShareReader(two_files) as reader, pytest.raises(SourceChangedError, match="gone"):
        reader.read(0, 0, 1)


def test_the_reader_is_not_hung_by_a_file_swapped_for_a_fifo(two_files: fd.Share) -> None:
    path = two_files.sources[0].path
    path.unlink()
    os.mkfifo(path)
    with ShareReader(two_files) as reader, pytest.raises(SourceChangedError):
        reader.read(0, 0, 1)


# --- plan_receive -----------------------------------------------------------------------------


def test_a_plan_says_where_each_file_goes(tmp_path: Path) -> None:
    entries = [entry("a.txt", b"a"), entry("dir/b.txt", b"bb")]
    plan = plan_receive("in", entries, overwrite=False, cwd=str(tmp_path))
    assert plan.root == (tmp_path / "in").resolve()
    assert [f.target for f in plan.files] == [plan.root / "a.txt", plan.root / "dir" / "b.txt"]
    assert [f.replaces for f in plan.files] == [False, False]
    assert plan.total == 3
    assert not (tmp_path / "in").exists()  # planning writes nothing


def test_a_plan_normalises_names_to_nfc(tmp_path: Path) -> None:
    plan = plan_receive(str(tmp_path), [entry("cafe\u0301", b"x")], overwrite=False)
    assert plan.files[0].entry.path == "caf\u00e9"


@pytest.mark.parametrize(("name", "why"), BAD_NAMES[:12] + BAD_NAMES[20:30])
def test_a_plan_refuses_every_bad_name(tmp_path: Path, name: str, why: str) -> None:
    entries = [entry("fine.txt", b"x"), entry(name, b"x")]
    with pytest.raises(FileShareError, match=None) as caught:
        plan_receive(str(tmp_path / "in"), entries, overwrite=False)
    assert why in str(caught.value)
    assert not (tmp_path / "in").exists()


@pytest.mark.parametrize(
    "names",
    [
        ["README.md", "readme.md"],
        ["Dir/a", "dir/A"],
        ["stra\u00dfe", "STRASSE"],
        ["caf\u00e9", "CAFE\u0301"],
        ["a", "a/b"],
        ["a/b", "A"],
        ["x/y/z", "X/Y"],
    ],
)
def test_a_plan_refuses_names_that_would_be_one_file_somewhere(
    tmp_path: Path, names: list[str]
) -> None:
    with pytest.raises(FileShareError, match="same file or folder"):
        plan_receive(str(tmp_path), [entry(n, b"x") for n in names], overwrite=False)


def test_a_plan_refuses_offers_over_the_caps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = ManifestEntry("big", fd.MAX_OFFER_BYTES, b"\x00" * 32)
    with pytest.raises(FileShareError, match="MAX_OFFER_BYTES"):
        plan_receive(str(tmp_path), [big, entry("one-more", b"x")], overwrite=False)
    monkeypatch.setattr(fd, "MAX_OFFER_FILES", 2)
    with pytest.raises(FileShareError, match="MAX_OFFER_FILES"):
        plan_receive(str(tmp_path), [entry(f"f{n}", b"") for n in range(3)], overwrite=False)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (ManifestEntry("f", -1, b"\x00" * 32), "invalid size"),
        (ManifestEntry("f", True, b"\x00" * 32), "invalid size"),
        (ManifestEntry("f", 1, b"\x00" * 31), "invalid SHA-256"),
    ],
)
def test_a_plan_refuses_a_malformed_entry(tmp_path: Path, bad: ManifestEntry, why: str) -> None:
    with pytest.raises(FileShareError, match=why):
        plan_receive(str(tmp_path), [bad], overwrite=False)


def test_a_plan_refuses_a_symlink_inside_save_to(tmp_path: Path) -> None:
    save_to = tmp_path / "in"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (save_to / "sub").mkdir(parents=True)
    (save_to / "sub" / "link").symlink_to(elsewhere)
    with pytest.raises(FileShareError, match="symbolic link"):
        plan_receive(str(save_to), [entry("sub/link/x.txt", b"x")], overwrite=False)
    (save_to / "file-link").symlink_to(elsewhere / "target.txt")
    for overwrite in (False, True):
        with pytest.raises(FileShareError, match="symbolic link"):
            plan_receive(str(save_to), [entry("file-link", b"x")], overwrite=overwrite)
    assert listing(elsewhere) == []


def test_a_plan_refuses_a_file_where_a_folder_is_needed_and_never_replaces_a_folder(
    tmp_path: Path,
) -> None:
    write(tmp_path / "in" / "notes", "a file")
    (tmp_path / "in" / "folder").mkdir()
    with pytest.raises(FileShareError, match="not a folder"):
        plan_receive(str(tmp_path / "in"), [entry("notes/x", b"x")], overwrite=True)
    with pytest.raises(
        FileShareError, match="is a folder; it is never replaced, not even with overwrite"
    ):
        plan_receive(str(tmp_path / "in"), [entry("folder", b"x")], overwrite=True)
    with pytest.raises(FileShareError, match="is not a folder"):
        plan_receive(str(tmp_path / "in" / "notes" / "deeper"), [entry("x", b"")], overwrite=True)


def test_a_plan_never_replaces_a_special_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(FileShareError, match="special file"):
        plan_receive(str(tmp_path), [entry("pipe", b"x")], overwrite=True)


def test_a_symlink_at_save_to_itself_is_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    plan = plan_receive(str(tmp_path / "alias"), [entry("x", b"x")], overwrite=False)
    assert plan.root == (tmp_path / "real").resolve()


def test_an_existing_file_is_refused_without_overwrite_and_replaced_with_it(
    tmp_path: Path,
) -> None:
    write(tmp_path / "share" / "a.txt", "new")
    write(tmp_path / "share" / "b.txt", "new too")
    share = scan_share(str(tmp_path / "share"))
    write(tmp_path / "in" / "a.txt", "old")
    write(tmp_path / "in" / "b.txt", "old")
    with pytest.raises(FileShareError, match=r"a\.txt' and 1 more already exist.*overwrite"):
        plan_receive(str(tmp_path / "in"), share.entries, overwrite=False)
    assert (tmp_path / "in" / "a.txt").read_text() == "old"
    plan = plan_receive(str(tmp_path / "in"), share.entries, overwrite=True)
    assert [f.replaces for f in plan.files] == [True, True]
    receive_all(share, tmp_path / "in", overwrite=True)
    assert (tmp_path / "in" / "a.txt").read_text() == "new"
    assert listing(tmp_path / "in") == ["a.txt", "b.txt"]


def test_a_plan_checks_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = SimpleNamespace(total=9, used=7, free=2)
    monkeypatch.setattr(fd.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(DiskFullError, match="not enough free space.*needs 3 bytes.*2 bytes"):
        plan_receive(str(tmp_path / "in"), [entry("f", b"abc")], overwrite=False)


def test_a_save_to_that_is_a_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "file", "x")
    with pytest.raises(FileShareError, match="not a folder"):
        plan_receive(str(tmp_path / "file"), [entry("x", b"x")], overwrite=False)


# --- FileWriter -------------------------------------------------------------------------------


@pytest.fixture(params=["dir-fd", "checked-paths"])
def dir_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Folders opened by descriptor (Linux, macOS), or by lstat-checked paths (Windows)."""
    if request.param == "checked-paths":
        monkeypatch.setattr(fd, "_USE_DIR_FD", False)
    return str(request.param)


def test_a_folder_round_trips_and_lands_with_the_normal_file_mode(
    tmp_path: Path, dir_mode: str
) -> None:
    files = {"a.txt": b"a" * 5000, "deep/er/b.bin": bytes(range(256)) * 10, "empty": b""}
    for name, data in files.items():
        write(tmp_path / "share" / name, data)
    share = scan_share(str(tmp_path / "share"))
    done = receive_all(share, tmp_path / "in" / "new")
    assert done == [(tmp_path / "in" / "new" / p).resolve() for p in sorted(files)]
    for name, data in files.items():
        path = tmp_path / "in" / "new" / name
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~fd._umask()
    assert listing(tmp_path / "in" / "new") == [
        "a.txt",
        "deep",
        "deep/er",
        "deep/er/b.bin",
        "empty",
    ]


def test_a_file_is_written_under_a_private_temporary_name_until_finished(
    tmp_path: Path,
) -> None:
    plan = plan_receive(str(tmp_path), [entry("f.txt", b"abc")], overwrite=False)
    writer = plan.writer(0)
    writer.write(0, b"ab")
    (temp,) = list(tmp_path.iterdir())
    assert temp.name.startswith(".f.txt.") and temp.name.endswith(".tunnel-part")
    assert stat.S_IMODE(temp.stat().st_mode) == 0o600
    writer.write(2, b"c")
    assert writer.finish() == tmp_path.resolve() / "f.txt"
    assert listing(tmp_path) == ["f.txt"]
    assert writer.done


def test_writing_resumes_from_written_and_refuses_any_other_offset(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    plan = plan_receive(str(tmp_path), [entry("f", data)], overwrite=False)
    writer = plan.writer(0)
    writer.write(0, data[:3000])
    # The connection drops here; the same writer continues after the resume.
    with pytest.raises(BadRangeError, match="continue from .written"):
        writer.write(0, data[:10])
    with pytest.raises(BadRangeError, match="continue from .written"):
        writer.write(3500, data[3500:])
    assert writer.written == 3000
    writer.write(writer.written, data[writer.written : 7000])
    writer.write(writer.written, data[writer.written :])
    with pytest.raises(BadRangeError, match="more than the 10240 bytes"):
        writer.write(writer.written, b"x")
    writer.finish()
    assert (tmp_path / "f").read_bytes() == data


def test_a_writer_refuses_more_bytes_than_the_offer_said(tmp_path: Path) -> None:
    plan = plan_receive(str(tmp_path), [entry("f", b"abc")], overwrite=False)
    with plan.writer(0) as writer, pytest.raises(BadRangeError, match="more than the 3 bytes"):
        writer.write(0, b"abcd")
    assert writer.written == 0


def no_leftovers(folder: Path) -> None:
    assert [p for p in listing(folder) if "tunnel-part" in p] == []


def test_a_hash_mismatch_leaves_nothing(tmp_path: Path, dir_mode: str) -> None:
    wrong = ManifestEntry("f.txt", 3, hashlib.sha256(b"abc").digest())
    plan = plan_receive(str(tmp_path / "in"), [wrong], overwrite=False)
    writer = plan.writer(0)
    writer.write(0, b"abd")
    with pytest.raises(HashMismatchError, match="nothing was kept"):
        writer.finish()
    assert listing(tmp_path / "in") == []
    with pytest.raises(FileShareError, match="already aborted"):
        writer.write(3, b"")


def test_a_hash_mismatch_never_touches_the_file_it_would_replace(tmp_path: Path) -> None:
    write(tmp_path / "f.txt", "precious")
    plan = plan_receive(str(tmp_path), [entry("f.txt", b"abc")], overwrite=True)
    writer = plan.writer(0)
    writer.write(0, b"abd")
    with pytest.raises(HashMismatchError):
        writer.finish()
    assert listing(tmp_path) == ["f.txt"]
    assert (tmp_path / "f.txt").read_text() == "precious"


def test_an_incomplete_file_is_not_finished_and_leaves_nothing(tmp_path: Path) -> None:
    plan = plan_receive(str(tmp_path), [entry("f", b"abc")], overwrite=False)
    writer = plan.writer(0)
    writer.write(0, b"ab")
    with pytest.raises(FileShareError, match=r"incomplete \(2 of 3 bytes\)"):
        writer.finish()
    assert listing(tmp_path) == []


def test_a_full_disk_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dir_mode: str
) -> None:
    plan = plan_receive(str(tmp_path), [entry("f", b"a" * 100)], overwrite=False)
    writer = plan.writer(0)
    writer.write(0, b"a" * 40)
    real_write = os.write

    def full(fileno: int, data: bytes) -> int:
        if fileno == writer._fd:
            real_write(fileno, bytes(data)[:7])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fileno, data)

    monkeypatch.setattr(fd.os, "write", full)
    with pytest.raises(DiskFullError, match="disk filled up.*nothing was kept"):
        writer.write(40, b"a" * 60)
    assert listing(tmp_path) == []


def test_a_cancel_leaves_nothing(tmp_path: Path, dir_mode: str) -> None:
    plan = plan_receive(str(tmp_path), [entry("d/f", b"abc"), entry("g", b"x")], overwrite=False)
    writer = plan.writer(0)
    writer.write(0, b"ab")
    writer.abort()
    writer.abort()  # twice is fine
    with pytest.raises(RuntimeError), plan.writer(1) as other:
        other.write(0, b"x")
        raise RuntimeError("the transfer was cancelled")
    with plan.writer(1) as forgotten:
        forgotten.write(0, b"x")  # the block ends without finish(): nothing is kept
    no_leftovers(tmp_path)
    assert listing(tmp_path) == ["d"]  # folders made for the offer stay


def test_a_file_that_appears_meanwhile_is_not_clobbered(tmp_path: Path, dir_mode: str) -> None:
    plan = plan_receive(str(tmp_path), [entry("f.txt", b"abc")], overwrite=False)
    writer = plan.writer(0)
    writer.write(0, b"abc")
    write(tmp_path / "f.txt", "someone else's")
    with pytest.raises(FileShareError, match="appeared while it was being received"):
        writer.finish()
    assert (tmp_path / "f.txt").read_text() == "someone else's"
    assert listing(tmp_path) == ["f.txt"]


def test_a_file_that_appears_before_writing_starts_is_not_clobbered(tmp_path: Path) -> None:
    plan = plan_receive(str(tmp_path), [entry("f.txt", b"abc")], overwrite=False)
    write(tmp_path / "f.txt", "someone else's")
    with pytest.raises(FileShareError, match="already exists"):
        plan.writer(0)
    assert listing(tmp_path) == ["f.txt"]


def test_without_hard_links_the_no_overwrite_move_is_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dir_mode: str
) -> None:
    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(fd.os, "link", no_links)
    plan = plan_receive(str(tmp_path), [entry("a", b"1"), entry("b", b"2")], overwrite=False)
    first = plan.writer(0)
    first.write(0, b"1")
    first.finish()
    second = plan.writer(1)
    second.write(0, b"2")
    write(tmp_path / "b", "theirs")
    with pytest.raises(FileShareError, match="appeared"):
        second.finish()
    assert (tmp_path / "a").read_text() == "1"
    assert (tmp_path / "b").read_text() == "theirs"
    assert listing(tmp_path) == ["a", "b"]


@pytest.mark.parametrize("swap", ["folder", "target"])
def test_a_symlink_slipped_in_after_the_plan_is_never_written_through(
    tmp_path: Path, swap: str, dir_mode: str
) -> None:
    save_to = tmp_path / "in"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plan = plan_receive(str(save_to), [entry("sub/f", b"x")], overwrite=True)
    save_to.mkdir()
    if swap == "folder":
        (save_to / "sub").symlink_to(elsewhere)
    else:
        (save_to / "sub").mkdir()
        (save_to / "sub" / "f").symlink_to(elsewhere / "f")
    with pytest.raises(FileShareError, match="symbolic link"):
        plan.writer(0)
    assert listing(elsewhere) == []


def test_a_symlink_slipped_in_just_before_the_move_is_not_replaced(
    tmp_path: Path, dir_mode: str
) -> None:
    plan = plan_receive(str(tmp_path / "in"), [entry("f", b"x")], overwrite=True)
    writer = plan.writer(0)
    writer.write(0, b"x")
    (tmp_path / "in" / "f").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileShareError, match="symbolic link"):
        writer.finish()
    assert (tmp_path / "in" / "f").is_symlink()
    no_leftovers(tmp_path)


def test_a_long_name_still_gets_a_temporary_name_within_the_limit(tmp_path: Path) -> None:
    name = "\u00e9" * 127  # 254 bytes
    plan = plan_receive(str(tmp_path), [entry(name, b"x")], overwrite=False)
    with plan.writer(0) as writer:
        writer.write(0, b"x")
        (temp,) = list(tmp_path.iterdir())
        assert len(temp.name.encode()) <= fd.MAX_NAME_BYTES
        writer.finish()
    assert listing(tmp_path) == [name]


def test_a_writer_for_a_missing_index_is_refused(tmp_path: Path) -> None:
    plan = plan_receive(str(tmp_path), [entry("f", b"x")], overwrite=False)
    with pytest.raises(FileShareError, match="no file number 1"):
        plan.writer(1)


# --- default_save_dir -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "is_folder", "expected"),
    [
        ("build.log", False, "Downloads/tunnel-mcp"),
        ("fixtures", True, "Downloads/tunnel-mcp/fixtures"),
        ("../../etc", True, "Downloads/tunnel-mcp/shared-folder"),
        ("CON", True, "Downloads/tunnel-mcp/shared-folder"),
        ("a/b", True, "Downloads/tunnel-mcp/a-b"),
    ],
)
def test_the_default_destination_is_under_downloads(
    tmp_path: Path, name: str, is_folder: bool, expected: str
) -> None:
    assert default_save_dir(name, is_folder=is_folder, home=tmp_path) == tmp_path / expected


def test_files_received_by_default_are_in_downloads_and_not_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write(tmp_path / "share" / "x.txt", "x")
    share = scan_share(str(tmp_path / "share"))
    save_to = default_save_dir(share.name, is_folder=share.is_folder)
    receive_all(share, save_to)
    assert (tmp_path / "home" / "Downloads" / "tunnel-mcp" / "share" / "x.txt").exists()
