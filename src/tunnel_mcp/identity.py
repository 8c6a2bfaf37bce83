"""The display name this agent uses in a tunnel when none is given."""

from __future__ import annotations

import getpass
import subprocess
import unicodedata

MAX_NAME_LEN = 64
FALLBACK_NAME = "agent"


def sanitize_name(raw: str) -> str:
    """One printable line of at most 64 characters (the room sanitizes again; this is for us)."""
    kept = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in raw)
    collapsed = " ".join(kept.split())
    return collapsed[:MAX_NAME_LEN].strip()


def _git_user_name() -> str | None:
    try:
        done = subprocess.run(
            ["git", "config", "--get", "user.name"],
            capture_output=True,
            text=True,
            timeout=3,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _os_user_name() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return None


def default_display_name() -> str:
    """`git config user.name`, else the OS user name, else "agent"."""
    for candidate in (_git_user_name(), _os_user_name()):
        if candidate:
            name = sanitize_name(candidate)
            if name:
                return name
    return FALLBACK_NAME
