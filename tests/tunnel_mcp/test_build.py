"""What the invite tells a guest to install: the very build the host runs, or where to get it.

The builds are real package metadata (a ``.dist-info`` directory read by importlib.metadata),
written the way pip and uv write them: ``direct_url.json`` (PEP 610) only for installs that
did not come from an index.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tunnel_mcp.build import Build, this_build
from tunnel_mcp.models import invite_message
from tunnel_trio.session_types import InviteInfo

REPO = "https://github.com/tunnel-mcp/tunnel-mcp"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def installed(
    tmp_path: Path,
    version: str,
    *,
    direct_url: dict[str, object] | None = None,
    urls: tuple[str, ...] = (f"Repository, {REPO}", f"Issues, {REPO}/issues"),
) -> Build:
    info = tmp_path / f"tunnel_mcp-{version}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.4", "Name: tunnel-mcp", f"Version: {version}"]
    lines += [f"Project-URL: {url}" for url in urls]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    return Build.of(metadata.PathDistribution(info))


def git(url: str = REPO, commit: str = COMMIT) -> dict[str, object]:
    return {"url": url, "vcs_info": {"vcs": "git", "commit_id": commit}}


CHECKOUT = {"url": "file:///home/ana/src/tunnel-mcp", "dir_info": {"editable": True}}


def test_a_published_release_pins_its_version(tmp_path: Path) -> None:
    build = installed(tmp_path, "1.2.3")
    assert build.published
    setup = build.guest_setup()
    assert "    claude mcp add tunnel -- uvx tunnel-mcp==1.2.3\n" in setup
    assert "a stdio server that runs `uvx tunnel-mcp==1.2.3`" in setup
    assert build.register_command() == "claude mcp add tunnel -- uvx tunnel-mcp==1.2.3"


def test_a_pre_release_from_an_index_is_pinned_too(tmp_path: Path) -> None:
    assert "uvx tunnel-mcp==2.0.0rc1" in installed(tmp_path, "2.0.0rc1").guest_setup()


def test_a_git_install_names_its_exact_commit(tmp_path: Path) -> None:
    build = installed(tmp_path, "0.1.0", direct_url=git())
    assert not build.published
    command = f"uvx --from git+{REPO}@{COMMIT} tunnel-mcp"
    setup = build.guest_setup()
    assert f"    claude mcp add tunnel -- {command}\n" in setup
    assert "not on PyPI" in setup
    assert build.register_command() == f"claude mcp add tunnel -- {command}"


@pytest.mark.parametrize(
    ("version", "direct_url"),
    [
        ("0.1.0", CHECKOUT),  # pip install -e . in a checkout
        ("0.1.0", {"url": "file:///tmp/tunnel_mcp-0.1.0.tar.gz", "archive_info": {}}),
        ("0.2.0.dev0", None),  # a development version, even from an index
        ("0.1.0+local", None),
        ("0.1.0", git("https://token:x@github.com/tunnel-mcp/tunnel-mcp")),  # credentials
        ("0.1.0", git("ssh://git@github.com/tunnel-mcp/tunnel-mcp")),
        ("0.1.0", git(commit="main")),  # not a commit id
        ("0.1.0", {"url": REPO, "vcs_info": {"vcs": "hg", "commit_id": COMMIT}}),
        ("0.1.0", {"garbage": True}),
    ],
)
def test_an_unpublished_build_sends_the_guest_to_the_repository(
    tmp_path: Path, version: str, direct_url: dict[str, object] | None
) -> None:
    build = installed(tmp_path, version, direct_url=direct_url)
    assert not build.published
    setup = build.guest_setup()
    assert f"I run tunnel-mcp {version} built from source, which is not on PyPI" in setup
    assert f"install tunnel-mcp {version} from its repository, {REPO}, as its README" in setup
    # Nothing the guest could run that would fetch something else, or fail.
    assert "uvx" not in setup.replace("`uvx tunnel-mcp` would not get you", "")
    assert "token" not in setup and "ssh:" not in setup
    assert build.register_command() == f"claude mcp add tunnel -- {sys.executable} -m tunnel_mcp"


def test_without_a_repository_the_guest_is_told_to_ask(tmp_path: Path) -> None:
    build = installed(tmp_path, "0.1.0", direct_url=CHECKOUT, urls=("Homepage, http://x",))
    setup = build.guest_setup()
    assert "ask me where to get tunnel-mcp 0.1.0" in setup
    assert "uvx tunnel-mcp==" not in setup


def test_this_checkout_is_unpublished_and_names_the_projects_repository() -> None:
    # The test suite runs from a checkout installed with `pip install -e .` (make venv).
    build = this_build()
    assert not build.published
    assert build.repository == REPO  # pyproject.toml's project.urls, read back from metadata


def test_the_invite_carries_the_hosts_build(tmp_path: Path) -> None:
    info = InviteInfo(join_link="https://x.trycloudflare.com/t/abc#s", expires_in_sec=600)
    published = installed(tmp_path, "1.2.3")
    message = invite_message(info, published)
    assert published.guest_setup() in message
    assert "claude mcp add tunnel -- uvx tunnel-mcp==1.2.3" in message
    assert invite_message(info).count(this_build().guest_setup()) == 1


def test_help_shows_the_command_that_registers_this_very_copy() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tunnel_mcp", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    # This test started the server exactly that way, so the command works.
    assert f"    claude mcp add tunnel -- {sys.executable} -m tunnel_mcp\n" in done.stdout
    assert "uvx" not in done.stdout


def test_the_package_version_is_pyprojects_and_the_installed_one() -> None:
    # tunnel_mcp.__version__ is written out (the initialize answer must not wait for a metadata
    # lookup): a release that bumps pyproject.toml must bump it too.
    import tomllib

    import tunnel_mcp

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert tunnel_mcp.__version__ == pyproject["project"]["version"]
    assert tunnel_mcp.__version__ == metadata.version("tunnel-mcp")
