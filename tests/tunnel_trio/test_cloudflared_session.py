"""A whole session through the cloudflared transport, against the fake cloudflared.

Everything of ours on the path is real: the transport starts the (fake) child, parses its log,
checks readiness through DoH, the member dials wss:// with TLS and SNI for the trycloudflare
name (resolved to the fake edge, which forwards to the relay), and close reaps the child.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trustme
from _servers import TUNNEL_HOST, run_doh_server

from tunnel_trio.session import join, open_host
from tunnel_trio.transports import make_transport


async def _edge(fake_cloudflared: Path) -> dict[tuple[str, int], tuple[str, int]]:
    port = int((fake_cloudflared / "edge.port").read_text())
    return {(TUNNEL_HOST, 443): ("127.0.0.1", port)}


async def test_open_join_talk_close_through_cloudflared(
    nursery: trio.Nursery, ca: trustme.CA, fake_cloudflared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doh = await run_doh_server(nursery, ca, {TUNNEL_HOST: ["127.0.0.1"]})
    monkeypatch.setenv("TUNNEL_DOH_RESOLVERS", doh.url)
    host = await open_host(nursery, "ship it", name="ana", transport=make_transport(None))
    link = host.initial_invites[0].join_link
    assert link.startswith(f"https://{TUNNEL_HOST}/t/{host.tunnel_id}#")
    status = host.status()
    assert status.transport == "cloudflared" and status.cloudflared_alive is True
    assert status.public_url == f"https://{TUNNEL_HOST}"
    assert link.split("#")[1] not in repr(status)

    ben = await join(nursery, link, name="ben", resolve_override=await _edge(fake_cloudflared))
    seq = await ben.say("hello through the edge")
    result = await host.listen(0, 5.0)
    assert [m.text for m in result.messages if m.kind == "chat"] == ["hello through the edge"]
    assert result.last_seq == seq

    pid = int((fake_cloudflared / "fake.pid").read_text())
    await host.close("bye")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # no cloudflared left behind
    with trio.fail_after(5):
        while not ben.closed:
            await ben.listen(seq, 1.0)
    assert ben.closed_reason == "closed"


async def test_cloudflared_dying_mid_session_shows_in_status(
    nursery: trio.Nursery, ca: trustme.CA, fake_cloudflared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doh = await run_doh_server(nursery, ca, {TUNNEL_HOST: ["127.0.0.1"]})
    monkeypatch.setenv("TUNNEL_DOH_RESOLVERS", doh.url)
    monkeypatch.setenv("FAKE_CLOUDFLARED_MODE", "die-after-start")
    monkeypatch.setenv("FAKE_CLOUDFLARED_DIE_AFTER", "0.5")
    host = await open_host(nursery, "goal", name="ana", transport=make_transport("cloudflared"))
    with trio.fail_after(10):
        while host.status().cloudflared_alive:
            await trio.sleep(0.05)
    status = host.status()
    assert status.cloudflared_alive is False
    assert any("stopped" in w for w in status.warnings)
    await host.close()
