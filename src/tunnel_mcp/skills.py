"""The etiquette skill over MCP: the Skills extension (`io.modelcontextprotocol/skills`, SEP-2640).

A client that implements the extension finds the skill with `skills/list` (or confirms a URI it
was given with `skills/get`) and reads its files with `resources/read`: nothing has to be
written into the user's home. What the extension's specification asks of a server, and where it
is done here:

* Declare `io.modelcontextprotocol/skills` under `capabilities.extensions`, beside the
  `resources` capability. Settings `{}`: no `directoryRead`, so `resources/directory/read` is
  not served (a client may not call it then).
* `skills/list`: an entry for every skill served, `resultType: "complete"` and the cache hints
  `ttlMs`/`cacheScope`; no `nextCursor` (one page), so any cursor sent back is invalid.
* `skills/get {uri}`: the entry of the skill whose `SKILL.md` is at `uri`; error -32602
  (invalid params) for a URI that names no skill served here.
* An entry is `{uri, frontmatter, resources}`: `uri` of the skill's `SKILL.md`, its YAML
  frontmatter verbatim as a JSON object, and every file of the skill (`SKILL.md` included) with
  `digest` `sha256:<64 lowercase hex>` over the file's raw bytes and `size` in bytes.
* Every file is a resource `skill://<skill-name>/<path>`, read with `resources/read`; the
  `SKILL.md` resource has mimeType `text/markdown` and the frontmatter's name and description.

The skill's name (`tunnel-etiquette`) is also the last segment of its path, as the
extension requires. The bytes served are the ones `tunnel-mcp install-skill` writes.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    BlobResourceContents,
    CacheableResult,
    PaginatedRequestParams,
    PaginatedResult,
    ReadResourceResult,
    RequestParams,
    Resource,
    TextResourceContents,
)
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from tunnel_mcp.skill_install import SKILL_FILE, SKILL_NAME

EXTENSION_ID = "io.modelcontextprotocol/skills"
SCHEME = "skill://"

#: How long a client may treat a listing or an entry as current. The files ship inside the
#: package, so they change only when the server is upgraded (and restarted).
CACHE_TTL_MS = 60 * 60 * 1000

_MIME_TYPES = {".md": "text/markdown", ".txt": "text/plain", ".json": "application/json"}


# -- the skill, as files -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkillFile:
    """One file of a skill: its path from the skill's root ('/'-separated) and its bytes."""

    path: str
    data: bytes

    @property
    def mime_type(self) -> str:
        suffix = self.path[self.path.rfind(".") :] if "." in self.path else ""
        return _MIME_TYPES.get(suffix, "application/octet-stream")

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class Skill:
    name: str
    frontmatter: dict[str, str]
    files: tuple[SkillFile, ...]

    def uri_of(self, file: SkillFile) -> str:
        return f"{SCHEME}{self.name}/{file.path}"

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.name}/{SKILL_FILE}"

    def entry(self) -> SkillEntry:
        return SkillEntry(
            uri=self.uri,
            frontmatter=dict(self.frontmatter),
            resources=[
                SkillResource(uri=self.uri_of(f), digest=f.digest, size=len(f.data))
                for f in self.files
            ],
        )


def load_skill(root: Traversable, name: str) -> Skill:
    """The skill in the directory `root`, served under `name`.

    Raises ValueError when the skill does not follow the Agent Skills format as far as the
    extension relies on it (a `SKILL.md` whose frontmatter names the skill `name`).
    """
    files: list[SkillFile] = []

    def walk(directory: Traversable, prefix: str) -> None:
        for child in sorted(directory.iterdir(), key=lambda c: c.name):
            if child.name.startswith((".", "__")):
                continue
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            else:
                files.append(SkillFile(f"{prefix}{child.name}", child.read_bytes()))

    walk(root, "")
    top = next((f for f in files if f.path == SKILL_FILE), None)
    if top is None:
        raise ValueError(f"the skill {name!r} has no {SKILL_FILE}")
    frontmatter = parse_frontmatter(top.data.decode("utf-8"))
    if frontmatter["name"] != name:
        raise ValueError(f"{SKILL_FILE} names the skill {frontmatter['name']!r}, not {name!r}")
    # SKILL.md first, then the supporting files in path order.
    files.sort(key=lambda f: (f.path != SKILL_FILE, f.path))
    return Skill(name, frontmatter, tuple(files))


def etiquette_skill() -> Skill:
    """The tunnel-etiquette skill as shipped in this package."""
    return load_skill(resources.files("tunnel_mcp") / "skill", SKILL_NAME)


# -- frontmatter -------------------------------------------------------------------------------

_KEY = re.compile(r"[a-z][a-z0-9_-]*\Z")
#: Plain scalars a YAML parser would read as something other than that same string: booleans,
#: nulls and numbers (YAML 1.1 and 1.2 spellings), and anything starting with an indicator.
_NOT_A_PLAIN_STRING = re.compile(
    r"(?i:y|yes|n|no|true|false|on|off|null|~)\Z"
    r"|[-+]?(\.[0-9]|[0-9])[0-9a-fA-FxXoObB_:.eE+-]*\Z"
    r"|[-+]?\.(inf|nan)\Z"
    r"|[-?:,\[\]{}#&*!|>'\"%@`]"
)


def parse_frontmatter(text: str) -> dict[str, str]:
    """The YAML frontmatter of a SKILL.md as a dict, for the subset our skills are written in.

    Only `key: plain scalar` lines, each value a string exactly as a YAML parser would read
    it; anything richer raises ValueError (rather than risk an entry whose frontmatter differs
    from what a client parses out of the file, which the extension makes a verification
    failure).
    """
    if not text.startswith("---\n"):
        raise ValueError(f"{SKILL_FILE} must begin with '---' and YAML frontmatter")
    end = text.find("\n---\n", 3)
    if end < 0:
        raise ValueError(f"{SKILL_FILE}'s frontmatter has no closing '---'")
    found: dict[str, str] = {}
    for line in text[4:end].split("\n"):
        key, colon, value = line.partition(": ")
        value = value.strip()
        if not colon or not _KEY.match(key) or key in found:
            raise ValueError(f"unsupported frontmatter line {line[:40]!r}")
        if not value or _NOT_A_PLAIN_STRING.match(value) or ": " in value or " #" in value:
            raise ValueError(f"frontmatter {key!r} is not a plain YAML string")
        found[key] = value
    for required in ("name", "description"):
        if required not in found:
            raise ValueError(f"{SKILL_FILE}'s frontmatter has no {required!r}")
    return found


# -- the wire ----------------------------------------------------------------------------------


class _Shape(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class SkillResource(_Shape):
    uri: str
    digest: str
    size: int


class SkillEntry(_Shape):
    uri: str
    frontmatter: dict[str, Any]
    resources: list[SkillResource]


class ListSkillsResult(PaginatedResult, CacheableResult):
    skills: list[SkillEntry]
    result_type: str = "complete"


class GetSkillResult(CacheableResult):
    skill: SkillEntry
    result_type: str = "complete"


class GetSkillRequestParams(RequestParams):
    uri: str = Field(description="URI of the skill's SKILL.md.")


# -- serving -----------------------------------------------------------------------------------


class SkillCatalog:
    """The skills this server serves, over the extension's methods and as resources."""

    def __init__(self, skills: Sequence[Skill]) -> None:
        self._skills = {skill.uri: skill for skill in skills}
        self._files = {skill.uri_of(f): (skill, f) for skill in skills for f in skill.files}

    def serve_on(self, server: Server[Any]) -> None:
        """Declare the extension on `server` and answer its two methods there."""
        server.extensions[EXTENSION_ID] = {}
        server.add_request_handler("skills/list", PaginatedRequestParams, self._list)
        server.add_request_handler("skills/get", GetSkillRequestParams, self._get)

    async def _list(self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams) -> ListSkillsResult:
        if params.cursor is not None:
            raise MCPError(INVALID_PARAMS, "invalid cursor: skills/list has only one page")
        return ListSkillsResult(
            skills=[skill.entry() for skill in self._skills.values()],
            ttl_ms=CACHE_TTL_MS,
            cache_scope="public",
        )

    async def _get(self, ctx: ServerRequestContext[Any], params: GetSkillRequestParams) -> GetSkillResult:
        skill = self._skills.get(params.uri)
        if skill is None:
            served = ", ".join(self._skills) or "none"
            raise MCPError(INVALID_PARAMS, f"No skill is served at {params.uri} (served here: {served})")
        return GetSkillResult(skill=skill.entry(), ttl_ms=CACHE_TTL_MS, cache_scope="public")

    def resources(self) -> list[Resource]:
        listed = []
        for uri, (skill, file) in self._files.items():
            top = file.path == SKILL_FILE
            listed.append(
                Resource(
                    uri=uri,
                    name=skill.name if top else file.path,
                    description=skill.frontmatter["description"] if top else None,
                    mime_type=file.mime_type,
                    size=len(file.data),
                )
            )
        return listed

    def read(self, uri: str) -> ReadResourceResult | None:
        """The contents of the skill file at `uri`, or None if no skill file is there."""
        found = self._files.get(uri)
        if found is None:
            return None
        _, file = found
        contents: TextResourceContents | BlobResourceContents
        try:
            if not file.mime_type.startswith("text/"):
                raise UnicodeDecodeError("utf-8", b"", 0, 0, "not a text type")
            contents = TextResourceContents(uri=uri, text=file.data.decode("utf-8"), mime_type=file.mime_type)
        except UnicodeDecodeError:
            blob = base64.b64encode(file.data).decode("ascii")
            contents = BlobResourceContents(uri=uri, blob=blob, mime_type=file.mime_type)
        return ReadResourceResult(contents=[contents], ttl_ms=CACHE_TTL_MS, cache_scope="public")
