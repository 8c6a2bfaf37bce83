"""The `tunnel-mcp` command as a user runs it: a real subprocess, `python -m tunnel_mcp`."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tunnel_mcp

SKILL = Path("tunnel-etiquette") / "SKILL.md"
MARKER = Path("tunnel-etiquette") / ".tunnel-mcp-installed"


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunnel_mcp", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_help_lists_the_commands() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for word in ("serve", "install-skill", "demo", "--log-level", "--version", "claude mcp add tunnel"):
        assert word in done.stdout


def test_version_is_the_package_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"tunnel-mcp {tunnel_mcp.__version__}"


def test_unknown_command_exits_2_with_usage() -> None:
    done = run_cli("frobnicate")
    assert done.returncode == 2
    assert "usage: tunnel-mcp" in done.stderr
    assert done.stdout == ""


def test_bad_log_level_exits_2() -> None:
    assert run_cli("--log-level", "loud").returncode == 2
    assert run_cli("serve", "--log-level", "loud").returncode == 2


def test_a_bad_log_level_in_the_environment_is_an_error_that_names_it(tmp_path: Path) -> None:
    env = {"TUNNEL_LOG_LEVEL": "loud", "TUNNEL_SKIP_SKILL_INSTALL": "1"}
    done = run_cli(env=env)
    assert done.returncode == 2
    assert "TUNNEL_LOG_LEVEL='loud' is not a log level" in done.stderr
    assert done.stdout == ""
    # An explicit --log-level is what counts then.
    assert run_cli("install-skill", "--dir", str(tmp_path), "--log-level", "info", env=env).returncode == 0


def test_a_bad_room_capacity_stops_the_server_at_start() -> None:
    done = run_cli(env={"TUNNEL_ROOM_CAPACITY": "100", "TUNNEL_SKIP_SKILL_INSTALL": "1"})
    assert done.returncode == 2
    assert "TUNNEL_ROOM_CAPACITY='100' is not a room size" in done.stderr
    assert done.stdout == ""


def test_log_level_works_before_and_after_the_command() -> None:
    env = {"TUNNEL_SKIP_SKILL_INSTALL": "1", "TUNNEL_LOG_LEVEL": ""}
    quiet = run_cli("serve", env=env)  # stdin at EOF: the server starts and exits
    assert quiet.returncode == 0, quiet.stderr
    assert "stdin closed" not in quiet.stderr  # an info line: not at the default level
    for args in (("serve", "--log-level", "info"), ("--log-level", "info", "serve"), ("--log-level", "info")):
        done = run_cli(*args, env=env)
        assert done.returncode == 0, done.stderr
        assert "INFO" in done.stderr and "stdin closed" in done.stderr, args


def test_install_skill_into_a_directory(tmp_path: Path) -> None:
    done = run_cli("install-skill", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / SKILL).read_text()
    # Claude Code reads the YAML front matter to discover the skill.
    front = text.split("---")[1]
    assert "name: tunnel-etiquette" in front
    assert "description:" in front
    assert "untrusted" in text
    marker = (tmp_path / MARKER).read_text().strip()
    assert marker == hashlib.sha256((tmp_path / SKILL).read_bytes()).hexdigest()

    again = run_cli("install-skill", "--dir", str(tmp_path))
    assert again.returncode == 0
    assert "up to date" in again.stdout


def test_install_skill_default_dir_comes_from_env(tmp_path: Path) -> None:
    done = run_cli("install-skill", env={"TUNNEL_SKILLS_DIR": str(tmp_path / "skills")})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "skills" / SKILL).is_file()


def test_install_skill_never_overwrites_an_edited_copy(tmp_path: Path) -> None:
    assert run_cli("install-skill", "--dir", str(tmp_path)).returncode == 0
    edited = (tmp_path / SKILL).read_text() + "\n## My own house rule\n"
    (tmp_path / SKILL).write_text(edited)

    kept = run_cli("install-skill", "--dir", str(tmp_path))
    assert kept.returncode == 1
    assert "--force" in kept.stdout
    assert (tmp_path / SKILL).read_text() == edited

    forced = run_cli("install-skill", "--dir", str(tmp_path), "--force")
    assert forced.returncode == 0
    assert (tmp_path / SKILL).read_text() != edited
    assert "My own house rule" not in (tmp_path / SKILL).read_text()


def test_install_skill_keeps_a_copy_it_did_not_install(tmp_path: Path) -> None:
    (tmp_path / SKILL).parent.mkdir(parents=True)
    (tmp_path / SKILL).write_text("someone else's skill\n")
    kept = run_cli("install-skill", "--dir", str(tmp_path))
    assert kept.returncode == 1
    assert (tmp_path / SKILL).read_text() == "someone else's skill\n"


def test_install_skill_updates_an_older_copy_it_installed(tmp_path: Path) -> None:
    old = b"---\nname: tunnel-etiquette\ndescription: an older version\n---\nold rules\n"
    (tmp_path / SKILL).parent.mkdir(parents=True)
    (tmp_path / SKILL).write_bytes(old)
    (tmp_path / MARKER).write_text(hashlib.sha256(old).hexdigest() + "\n")
    done = run_cli("install-skill", "--dir", str(tmp_path))
    assert done.returncode == 0
    assert "updated" in done.stdout
    assert (tmp_path / SKILL).read_bytes() != old


def test_serving_installs_the_skill_and_keeps_stdout_for_mcp(tmp_path: Path) -> None:
    # stdin at EOF: the server starts, finds no client, and exits cleanly.
    env = {
        "TUNNEL_SKILLS_DIR": str(tmp_path / "skills"),
        "TUNNEL_HOME": str(tmp_path / "home"),
        "TUNNEL_SKIP_SKILL_INSTALL": "",
    }
    done = run_cli(env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "waiting for an MCP client on stdin" in done.stderr
    assert done.stderr.count("waiting for an MCP client") == 1
    assert (tmp_path / "skills" / SKILL).is_file()
    # The first write into the user's home is announced on stderr, at warning level, once.
    (notice,) = [line for line in done.stderr.splitlines() if "installed the tunnel-etiquette" in line]
    assert "WARNING" in notice and str(tmp_path / "skills" / SKILL) in notice
    assert "TUNNEL_SKIP_SKILL_INSTALL" in notice
    again = run_cli(env=env)
    assert again.returncode == 0, again.stderr
    assert "tunnel-etiquette" not in again.stderr


def test_a_skill_the_user_deleted_is_not_reinstalled_on_start(tmp_path: Path) -> None:
    skills = tmp_path / "skills"
    env = {
        "TUNNEL_SKILLS_DIR": str(skills),
        "TUNNEL_HOME": str(tmp_path / "home"),
        "TUNNEL_SKIP_SKILL_INSTALL": "",
    }
    assert run_cli(env=env).returncode == 0
    assert (skills / SKILL).is_file()
    for path in (skills / "tunnel-etiquette").iterdir():
        path.unlink()
    (skills / "tunnel-etiquette").rmdir()
    assert run_cli(env=env).returncode == 0
    assert not (skills / SKILL).exists()  # the user's choice stands
    assert run_cli("install-skill", env=env).returncode == 0  # until they ask for it again
    assert (skills / SKILL).is_file()


def test_serving_skips_the_skill_when_asked(tmp_path: Path) -> None:
    done = run_cli(env={"TUNNEL_SKILLS_DIR": str(tmp_path), "TUNNEL_SKIP_SKILL_INSTALL": "1"})
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / SKILL).exists()
    assert "skill" not in done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_server_cleanly(signum: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunnel_mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TUNNEL_SKIP_SKILL_INSTALL": "1"},
    )
    try:
        assert proc.stderr is not None
        # Wait for the banner so the signal lands while serving, not during interpreter start-up.
        deadline = time.monotonic() + 30
        banner = b""
        while b"waiting for an MCP client" not in banner and time.monotonic() < deadline:
            banner += proc.stderr.readline()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # stdin is still open: only the signal can have ended it.
    assert proc.returncode == 0, err
    assert out == b""
    assert b"Traceback" not in err
