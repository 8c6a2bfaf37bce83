"""`tunnel-mcp demo` end to end, and the registry manifest that points users at the package."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import tunnel_mcp

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_whole_story_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tunnel_mcp", "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TUNNEL_TRANSPORT": "cloudflared"},  # the demo must pick local itself
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for promise in ("tunnel_open", "tunnel_join", "already used", "ciphertext", "no child process"):
        assert promise in out
    assert "Demo complete" in out
    # ana shares a folder: the secret-looking and git-ignored files are shown as skipped, her
    # human approves what is read, ben's approves where it is written, and he gets the rest.
    assert "skipped: .env (looks like a secret)" in out
    assert "skipped: debug.log (ignored by git)" in out
    assert "ana's MCP client shows ana this prompt:" in out and "wants to share 3 files" in out
    assert "wants to save 3 files received" in out
    assert "ben has exactly the shared files" in out
    assert "sk_demo_do_not_share" not in out + done.stderr
    # The guest's human approved the join at a prompt, and both ends show the same phrase.
    assert "ben's MCP client shows ben this prompt:" in out
    phrases = re.findall(r"verification phrase, on \w+'s side: +([a-z]+(?: [a-z]+){3})$", out, re.MULTILINE)
    assert len(phrases) == 2 and phrases[0] == phrases[1], out
    # Never a usable secret on the screen: 43 base64url characters after '#'.
    assert not re.search(r"#[A-Za-z0-9_-]{43}", out + done.stderr)


def test_registry_manifest_names_the_package_and_its_settings() -> None:
    manifest = json.loads((ROOT / "server.json").read_text())
    (package,) = manifest["packages"]
    assert package["registryType"] == "pypi"
    assert package["identifier"] == "tunnel-mcp"
    assert package["transport"] == {"type": "stdio"}
    # A release that bumps the package but not the manifest would publish a stale entry.
    assert manifest["version"] == package["version"] == tunnel_mcp.__version__
    names = {env["name"] for env in package["environmentVariables"]}
    assert names >= {
        "TUNNEL_TRANSPORT",
        "TUNNEL_DOH",
        "TUNNEL_DOH_RESOLVERS",
        "TUNNEL_CLOUDFLARED",
        "TUNNEL_CLOUDFLARED_BASE_URL",
        "TUNNEL_HOME",
        "TUNNEL_SKILLS_DIR",
        "TUNNEL_SKIP_SKILL_INSTALL",
        "TUNNEL_CA_BUNDLE",
        "TUNNEL_CONNECT_TO",
    }
    assert len(manifest["description"]) <= 100
    # The registry verifies PyPI ownership through this marker in the README.
    assert f"mcp-name: {manifest['name']}" in (ROOT / "README.md").read_text()


def readme_environment_variables() -> list[str]:
    """The variables in the first column of README's "Environment variables" table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Environment variables\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(TUNNEL_[A-Z0-9_]+)` \|", section, re.MULTILINE)


def test_the_manifest_lists_exactly_the_environment_variables_the_readme_documents() -> None:
    manifest = json.loads((ROOT / "server.json").read_text())
    (package,) = manifest["packages"]
    in_manifest = [env["name"] for env in package["environmentVariables"]]
    in_readme = readme_environment_variables()
    assert len(in_readme) >= 10, "README's environment variable table was not found"
    # A registry client shows users the manifest's list, so a setting missing there is hidden.
    assert sorted(in_manifest) == sorted(in_readme), (
        f"only in README: {sorted(set(in_readme) - set(in_manifest))}; "
        f"only in server.json: {sorted(set(in_manifest) - set(in_readme))}"
    )
    for env in package["environmentVariables"]:
        assert env["description"] and env["isSecret"] is False


def test_the_manifest_and_the_package_name_the_same_repository() -> None:
    manifest = json.loads((ROOT / "server.json").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    repository = project["urls"]["Repository"]
    assert manifest["repository"] == {"url": repository, "source": "github"}
    # The registry name io.github.<owner>/<repo> must be the GitHub repository's.
    owner_and_repo = repository.removeprefix("https://github.com/")
    assert manifest["name"] == f"io.github.{owner_and_repo}"
    # README points users at that repository, never at a package index it is not on yet.
    readme = (ROOT / "README.md").read_text()
    assert f"uvx --from git+{repository} tunnel-mcp" in readme
