"""Which tunnel-mcp build is running, and how a guest installs the same one.

The invite tells the guest what to install. Telling them "the same version" only works if
that version can be fetched, so the answer comes from how this copy was installed, as the
package metadata records it (PEP 610):

* installed from a package index (no ``direct_url.json``), at a release version: that
  version is published, so ``uvx tunnel-mcp==X.Y.Z``;
* installed from a git URL (``uvx --from git+https://...``): ``direct_url.json`` names the
  repository and the exact commit, so the guest gets ``uvx --from git+<url>@<commit>``;
* anything else (a checkout installed with ``pip install -e .``, a local directory or
  archive, a source tree that is not installed): not on PyPI, and no command we could print
  is sure to fetch the same code, so the guest is sent to the repository named in the
  package's ``project.urls`` and its README.

A ``.devN`` or ``+local`` version is never treated as published, wherever it came from.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Literal
from urllib.parse import urlsplit

DISTRIBUTION = "tunnel-mcp"
REPOSITORY_LABELS = ("repository", "source", "source code")

# A final or pre-release version as PyPI stores it: no .devN, no +local part.
_RELEASE = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")

Source = Literal["index", "git", "other"]


@dataclass(frozen=True, slots=True)
class Build:
    version: str
    source: Source
    repository: str | None  # project.urls "Repository", if the metadata names one
    git_url: str | None = None  # for source == "git": where the commit lives
    commit: str | None = None

    @classmethod
    def of(cls, dist: metadata.Distribution) -> Build:
        version = dist.version
        repository = _repository(dist.metadata.get_all("Project-URL") or [])
        direct = dist.read_text("direct_url.json")
        if direct is None:
            return cls(version, "index", repository)
        git_url, commit = _git_origin(direct)
        if git_url is not None and commit is not None:
            return cls(version, "git", repository, git_url, commit)
        return cls(version, "other", repository)

    @property
    def published(self) -> bool:
        return self.source == "index" and _RELEASE.match(self.version) is not None

    def guest_setup(self) -> str:
        """The invite's setup paragraph: how the guest installs this same build."""
        if self.published or self.source == "git":
            command = self._uvx_command()
            same = (
                "the version I run, so we run the same code"
                if self.published
                else f"tunnel-mcp {self.version} exactly as I run it, from its repository; "
                "it is not on PyPI"
            )
            return (
                "One-time setup, in a terminal (Claude Code):\n"
                f"    claude mcp add tunnel -- {command}\n"
                f"(other MCP clients: add a stdio server that runs `{command}`).\n"
                f"This is {same}."
            )
        where = (
            f"install tunnel-mcp {self.version} from its repository, {self.repository}, as its "
            'README says under "Install" (ask me which commit I run)'
            if self.repository
            else f"ask me where to get tunnel-mcp {self.version}"
        )
        return (
            f"One-time setup: I run tunnel-mcp {self.version} built from source, which is not on "
            f"PyPI, so `uvx tunnel-mcp` would not get you the same program: {where}, then "
            "register it with your agent."
        )

    def register_command(self) -> str:
        """How to register this very copy with Claude Code (for --help)."""
        if self.published or self.source == "git":
            command = self._uvx_command()
        else:
            command = f"{shlex.quote(sys.executable)} -m tunnel_mcp"
        return f"claude mcp add tunnel -- {command}"

    def _uvx_command(self) -> str:
        if self.source == "git":
            return f"uvx --from git+{self.git_url}@{self.commit} tunnel-mcp"
        return f"uvx tunnel-mcp=={self.version}"


@cache
def this_build() -> Build:
    """The running copy of tunnel-mcp (read once: its metadata does not change under us)."""
    try:
        return Build.of(metadata.distribution(DISTRIBUTION))
    except metadata.PackageNotFoundError:
        from tunnel_mcp import __version__

        return Build(__version__, "other", None)


def _repository(project_urls: list[str]) -> str | None:
    """The "Repository" entry of ``Project-URL: <label>, <url>`` lines, if it is plain https."""
    for entry in project_urls:
        label, _, url = entry.partition(",")
        url = url.strip()
        if label.strip().lower() in REPOSITORY_LABELS and _plain_https(url):
            return url
    return None


def _git_origin(direct_url_json: str) -> tuple[str | None, str | None]:
    """(repository URL, commit) from a PEP 610 record of a git install, else (None, None).

    Only a plain https URL is repeated in an invite: a URL with credentials, or an ssh or
    file URL, would leak something or not work for the guest.
    """
    try:
        record = json.loads(direct_url_json)
        url, vcs = record["url"], record["vcs_info"]
        kind, commit = vcs["vcs"], vcs["commit_id"]
    except (ValueError, TypeError, KeyError):
        return None, None
    if kind != "git" or not isinstance(url, str) or not isinstance(commit, str):
        return None, None
    if not _plain_https(url) or not _COMMIT.match(commit):
        return None, None
    return url, commit


def _plain_https(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and not parts.query
        and not parts.fragment
        and re.fullmatch(r"[!-~]{1,300}", url) is not None  # printable ASCII, no spaces
    )
