"""Helpers for the file-sharing tests over real sockets: a room of three, files to share."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import trio
from dropproxy import DropProxy

from tunnel_trio.session import join, open_host
from tunnelproto import JoinLink

GUARD = 60.0


def via(link: str, port: int) -> str:
    """The join link, dialled through a proxy on `port`."""
    parsed = JoinLink.parse(link)
    return str(JoinLink(f"http://127.0.0.1:{port}", parsed.tunnel_id, parsed.secret))


async def room_of_three(
    nursery: trio.Nursery, *, proxy_ben: bool = False, proxy_cy: bool = False, **config: Any
) -> tuple[Any, Any, Any, dict[str, DropProxy]]:
    """A host "ana" and members "ben" and "cy" (optionally each through a DropProxy)."""
    from tunnel_trio.session import RoomConfig

    host = await open_host(nursery, "files", name="ana", invites=2,
                           config=RoomConfig(**config) if config else None)
    proxies: dict[str, DropProxy] = {}
    members = []
    for name, invite, proxied in (("ben", host.initial_invites[0], proxy_ben),
                                  ("cy", host.initial_invites[1], proxy_cy)):
        link = invite.join_link
        if proxied:
            proxy = DropProxy(host.relay.port)
            await nursery.start(proxy.run)
            proxies[name] = proxy
            link = via(link, proxy.port)
        members.append(await join(nursery, link, name=name))
    return host, members[0], members[1], proxies


async def offer_seen(session: Any, offer_id: int, timeout: float = GUARD) -> Any:
    """The `file` message of `offer_id`, once `session` has it."""
    since = 0
    with trio.fail_after(timeout):
        while True:
            result = await session.listen(since, 5.0, include_own=True)
            since = result.last_seq
            for m in result.messages:
                if m.kind == "file" and m.event == "file-offer" and m.file.offer_id == offer_id:
                    return m


async def offer_ended(session: Any, offer_id: int, timeout: float = GUARD) -> Any:
    """The `file-offer-ended` message of `offer_id`, once `session` has it."""
    since = 0
    with trio.fail_after(timeout):
        while True:
            result = await session.listen(since, 5.0, include_own=True)
            since = result.last_seq
            for m in result.messages:
                if m.kind == "file" and m.event == "file-offer-ended" and (
                    m.file.offer_id == offer_id
                ):
                    return m


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_random(path: Path, size: int) -> str:
    """A file of `size` random bytes; returns its SHA-256 (hex)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under `root`, by relative POSIX path, with its content."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def leftovers(root: Path) -> list[str]:
    """Temporary files a receive may have left (there must be none)."""
    return [p.name for p in root.rglob("*") if p.name.endswith(".tunnel-part")]
