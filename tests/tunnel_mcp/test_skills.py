"""The etiquette skill over MCP (the Skills extension, SEP-2640), read by a real MCP client.

A host that implements the extension lists the skill, then verifies every file it reads against
the entry's digests and sizes, and the entry's frontmatter against the file's: these tests do
exactly what such a host does, over `mcp.Client` connected to the real server.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, Literal

import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from pydantic import TypeAdapter

from tunnel_mcp.server import build_server
from tunnel_mcp.skill_install import skill_text
from tunnel_mcp.skills import EXTENSION_ID, SkillCatalog, load_skill, parse_frontmatter

SKILL_URI = "skill://tunnel-etiquette/SKILL.md"
RAW = TypeAdapter(dict[str, Any])


class ListSkills(types.Request[types.PaginatedRequestParams | None, Literal["skills/list"]]):
    method: Literal["skills/list"] = "skills/list"
    params: types.PaginatedRequestParams | None = None


class GetSkillParams(types.RequestParams):
    uri: str


class GetSkill(types.Request[GetSkillParams, Literal["skills/get"]]):
    method: Literal["skills/get"] = "skills/get"


async def list_skills(client: Client, cursor: str | None = None) -> dict[str, Any]:
    params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
    return await client.session.send_request(ListSkills(params=params), RAW)


async def get_skill(client: Client, uri: str) -> dict[str, Any]:
    return await client.session.send_request(GetSkill(params=GetSkillParams(uri=uri)), RAW)


async def read_bytes(client: Client, uri: str) -> bytes:
    (content,) = (await client.read_resource(uri)).contents
    if isinstance(content, types.TextResourceContents):
        return content.text.encode("utf-8")
    return base64.b64decode(content.blob)


async def verified_files(client: Client, entry: dict[str, Any]) -> dict[str, bytes]:
    """Every file of the entry, each checked against its digest and size, as a host must."""
    files = {}
    for resource in entry["resources"]:
        data = await read_bytes(client, resource["uri"])
        assert resource["digest"] == "sha256:" + hashlib.sha256(data).hexdigest(), resource["uri"]
        assert resource["size"] == len(data), resource["uri"]
        files[resource["uri"]] = data
    return files


async def test_a_client_discovers_lists_and_reads_the_skill_over_mcp() -> None:
    async with Client(build_server()) as client:
        assert client.protocol_version == "2026-07-28"
        capabilities = client.server_capabilities
        assert capabilities.extensions == {EXTENSION_ID: {}}  # no directoryRead
        assert capabilities.resources is not None  # the extension requires it
        assert SKILL_URI in (client.instructions or "")  # the server points agents at it

        listing = await list_skills(client)
        assert listing["resultType"] == "complete"
        assert listing["ttlMs"] > 0 and listing["cacheScope"] in ("public", "private")
        assert "nextCursor" not in listing
        (entry,) = listing["skills"]
        assert entry["uri"] == SKILL_URI
        # The last path segment is the skill's name; the manifest is complete.
        assert entry["frontmatter"]["name"] == SKILL_URI.split("/")[-2] == "tunnel-etiquette"
        assert [r["uri"] for r in entry["resources"]][0] == SKILL_URI

        files = await verified_files(client, entry)
        skill_md = files[SKILL_URI]
        assert skill_md == skill_text()  # the same bytes install-skill writes
        assert parse_frontmatter(skill_md.decode()) == entry["frontmatter"]
        assert "untrusted" in skill_md.decode()

        got = await get_skill(client, SKILL_URI)
        assert got["resultType"] == "complete"
        assert got["ttlMs"] > 0 and "cacheScope" in got
        assert got["skill"] == entry

        listed = {r.uri: r for r in (await client.list_resources()).resources}
        resource = listed[SKILL_URI]
        assert resource.mime_type == "text/markdown"
        assert resource.name == entry["frontmatter"]["name"]
        assert resource.description == entry["frontmatter"]["description"]


async def test_unknown_skills_and_cursors_are_invalid_params() -> None:
    async with Client(build_server()) as client:
        for uri in ("skill://tunnel-etiquette/README.md", "skill://other/SKILL.md", "tunnel://transcript"):
            with pytest.raises(MCPError) as info:
                await get_skill(client, uri)
            assert info.value.code == types.INVALID_PARAMS
        with pytest.raises(MCPError) as info:
            await list_skills(client, cursor="page-2")
        assert info.value.code == types.INVALID_PARAMS
        with pytest.raises(MCPError) as info:
            await client.read_resource("skill://tunnel-etiquette/missing.md")
        assert info.value.code == types.INVALID_PARAMS


async def test_a_handshake_era_client_reads_the_skill_as_an_ordinary_resource() -> None:
    # 2025-11-25 has no capabilities.extensions; the files are still plain resources.
    async with Client(build_server(), mode="legacy") as client:
        assert client.protocol_version == "2025-11-25"
        assert SKILL_URI in {r.uri for r in (await client.list_resources()).resources}
        assert await read_bytes(client, SKILL_URI) == skill_text()


async def test_no_prompts_capability_without_prompts() -> None:
    for mode in ("legacy", "auto"):
        async with Client(build_server(), mode=mode) as client:
            assert client.server_capabilities.prompts is None, mode
            assert client.server_capabilities.tools is not None


# -- the skill's files --------------------------------------------------------------------------


def test_the_shipped_frontmatter_is_plain_yaml() -> None:
    front = parse_frontmatter(skill_text().decode())
    assert set(front) == {"name", "description"}
    assert front["name"] == "tunnel-etiquette"
    assert front["description"].startswith("How to behave")


@pytest.mark.parametrize(
    "line",
    [
        "name: yes",  # a YAML boolean
        "name: 1.5",
        "name: 2026-01-01",  # a timestamp
        "name: null",
        "name: 'quoted'",
        "name: [a, b]",
        "name: a: b",
        "name: x #comment",
        "name: |",
        "name:",
        "  continued",
        "Name: x",
    ],
)
def test_frontmatter_that_yaml_would_read_differently_is_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_frontmatter(f"---\n{line}\ndescription: d\n---\nbody\n")


def test_frontmatter_needs_name_and_description_and_a_closing_line() -> None:
    for text in ("---\nname: a\n---\n", "---\ndescription: d\n---\n", "---\nname: a\ndescription: d\n", "# no frontmatter\n"):
        with pytest.raises(ValueError):
            parse_frontmatter(text)


def test_a_skill_whose_name_is_not_its_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "SKILL.md").write_text("---\nname: other\ndescription: d\n---\nbody\n")
    with pytest.raises(ValueError, match="other"):
        load_skill(tmp_path, "tunnel-etiquette")


def test_supporting_files_are_in_the_manifest(tmp_path: Path) -> None:
    skill_md = b"---\nname: demo\ndescription: d\n---\nsee references/a.md\n"
    (tmp_path / "SKILL.md").write_bytes(skill_md)
    (tmp_path / "references").mkdir()
    (tmp_path / "references" / "a.md").write_bytes(b"more\n")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\x00")
    skill = load_skill(tmp_path, "demo")
    entry = skill.entry()
    assert [(r.uri, r.size) for r in entry.resources] == [
        ("skill://demo/SKILL.md", len(skill_md)),
        ("skill://demo/logo.png", 5),
        ("skill://demo/references/a.md", 5),
    ]
    assert entry.resources[2].digest == "sha256:" + hashlib.sha256(b"more\n").hexdigest()
    # Bytes that are not text are served as a blob, byte for byte.
    read = SkillCatalog([skill]).read("skill://demo/logo.png")
    assert read is not None
    (content,) = read.contents
    assert isinstance(content, types.BlobResourceContents)
    assert base64.b64decode(content.blob) == b"\x89PNG\x00"
