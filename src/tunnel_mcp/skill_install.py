"""Installing the `tunnel-etiquette` skill where Claude Code looks for skills.

Python has no post-install hook, so the server installs the skill best-effort when it starts and
`tunnel-mcp install-skill` does it on demand. Either way a copy the user edited is never
overwritten without `--force`: next to the skill we keep a marker holding the SHA-256 of the
bytes we wrote, so "an older version we installed" (safe to update) and "a copy someone changed"
(leave alone) can be told apart.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Literal

SKILL_NAME = "tunnel-etiquette"
SKILL_FILE = "SKILL.md"
MARKER_FILE = ".tunnel-mcp-installed"

InstallAction = Literal["installed", "updated", "unchanged", "replaced", "kept-edited"]


@dataclass(frozen=True, slots=True)
class InstallResult:
    action: InstallAction
    path: Path
    #: The server's start-up install wrote into this directory for the first time.
    first_time: bool = False

    @property
    def changed(self) -> bool:
        return self.action in ("installed", "updated", "replaced")

    def describe(self) -> str:
        match self.action:
            case "installed":
                return f"installed the {SKILL_NAME} skill at {self.path}"
            case "updated":
                return f"updated the {SKILL_NAME} skill at {self.path}"
            case "unchanged":
                return f"the {SKILL_NAME} skill at {self.path} is already up to date"
            case "replaced":
                return f"replaced the edited {SKILL_NAME} skill at {self.path} (--force)"
            case "kept-edited":
                return (
                    f"left {self.path} alone: it was edited after tunnel-mcp installed it "
                    "(or was not installed by tunnel-mcp); run `tunnel-mcp install-skill --force` "
                    "to overwrite it"
                )


def default_skills_dir() -> Path:
    """`TUNNEL_SKILLS_DIR` if set, else `~/.claude/skills` (where Claude Code reads user skills)."""
    configured = os.environ.get("TUNNEL_SKILLS_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".claude" / "skills"


def skill_text() -> bytes:
    """The skill as shipped in this package."""
    return (resources.files("tunnel_mcp") / "skill" / SKILL_FILE).read_bytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    # A crash mid-write must never leave a truncated skill that then looks "edited by the user".
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a skill is an ordinary readable file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install_skill(skills_dir: Path | None = None, *, force: bool = False) -> InstallResult:
    """Copy the skill to `<skills_dir>/tunnel-etiquette/SKILL.md`.

    Raises OSError when the directory cannot be written.
    """
    base = skills_dir if skills_dir is not None else default_skills_dir()
    target_dir = base / SKILL_NAME
    target = target_dir / SKILL_FILE
    marker = target_dir / MARKER_FILE
    wanted = skill_text()
    wanted_hash = _sha256(wanted)

    if not target.exists():
        action: InstallAction = "installed"
    else:
        current = target.read_bytes()
        if current == wanted:
            if _read_marker(marker) != wanted_hash:
                _write_atomically(marker, (wanted_hash + "\n").encode())
            return InstallResult("unchanged", target)
        if _read_marker(marker) == _sha256(current):
            action = "updated"  # an older version we wrote ourselves, untouched since
        elif force:
            action = "replaced"
        else:
            return InstallResult("kept-edited", target)

    target_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(target, wanted)
    _write_atomically(marker, (wanted_hash + "\n").encode())
    return InstallResult(action, target)


AUTO_RECORD = "skill-auto-installed"


def auto_install(skills_dir: Path | None = None, *, state_dir: Path | None = None) -> InstallResult | None:
    """The server's best-effort install at start: the first time, and updates after that.

    A user who deleted the skill did so on purpose: once we have auto-installed into a
    directory (recorded in our state directory, `~/.tunnel`), a missing skill stays missing
    until `tunnel-mcp install-skill` is run by hand. Returns None when it left things alone.
    """
    base = skills_dir if skills_dir is not None else default_skills_dir()
    target = base / SKILL_NAME / SKILL_FILE
    if state_dir is None:
        from tunnel_trio._cloudflared import tunnel_home

        state_dir = tunnel_home()
    record = state_dir / AUTO_RECORD
    try:
        installed_before = str(target) in record.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        installed_before = False
    if installed_before and not target.exists():
        return None
    result = install_skill(base)
    if not installed_before:
        state_dir.mkdir(parents=True, exist_ok=True)
        with record.open("a", encoding="utf-8") as f:
            f.write(f"{target}\n")
        return replace(result, first_time=result.changed)
    return result


def _read_marker(marker: Path) -> str | None:
    try:
        return marker.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
