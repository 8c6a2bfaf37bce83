"""The display name an agent gets when it does not choose one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunnel_mcp.identity import default_display_name, sanitize_name


@pytest.fixture
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "gitconfig"
    config.write_text("")
    monkeypatch.chdir(tmp_path)  # no repository-level config
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return config


def test_git_user_name_comes_first(isolated_git: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolated_git.write_text("[user]\n\tname = Ana\\tDuarte\n")
    monkeypatch.setenv("USER", "os-user")
    monkeypatch.setenv("LOGNAME", "os-user")
    assert default_display_name() == "Ana Duarte"


def test_os_user_name_without_git_config(isolated_git: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(var, "ben\x07")
    assert default_display_name() == "ben"


def test_sanitize_keeps_one_short_printable_line() -> None:
    assert sanitize_name("  ana\n\r\x1b[31m  dev ") == "ana [31m dev"
    assert len(sanitize_name("x" * 500)) == 64
    assert sanitize_name("\n\t") == ""
