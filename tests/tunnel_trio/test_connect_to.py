"""TUNNEL_CONNECT_TO: parsing, and that a member's dial honours it (TLS still for the link's name)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio
import trustme
from _servers import TUNNEL_HOST, closed_port, server_ssl_context

from tunnel_trio._connect_to import connect_to_from_env, parse_connect_to
from tunnel_trio.session import TunnelError, join, open_host, relay_answers


def test_entries_map_a_name_and_port_to_another_address() -> None:
    assert parse_connect_to("A.trycloudflare.com:443:127.0.0.1:8443, b.example:80:[::1]:9000") == {
        ("a.trycloudflare.com", 443): ("127.0.0.1", 8443),
        ("b.example", 80): ("::1", 9000),
    }
    assert parse_connect_to("") == {} == connect_to_from_env({})
    assert connect_to_from_env({"TUNNEL_CONNECT_TO": "h:1:i:2"}) == {("h", 1): ("i", 2)}


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("not-an-entry", "'not-an-entry' is not HOST:PORT:CONNECT_HOST:CONNECT_PORT"),
        ("h:443:127.0.0.1", "is not HOST:PORT:CONNECT_HOST:CONNECT_PORT"),
        ("h:443:127.0.0.1:http", "is not HOST:PORT:CONNECT_HOST:CONNECT_PORT"),
        ("h:443:127.0.0.1:70000", "has port 70000; ports are 1 to 65535"),
        ("h:0:127.0.0.1:80", "has port 0; ports are 1 to 65535"),
        ("h:1:::1:2", "is not HOST:PORT"),  # IPv6 needs brackets
    ],
)
def test_bad_entries_say_what_is_wrong(value: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="TUNNEL_CONNECT_TO") as caught:
        parse_connect_to(value)
    assert complaint in str(caught.value)


async def test_join_refuses_a_malformed_setting_clearly(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNNEL_CONNECT_TO", "nonsense")
    with pytest.raises(TunnelError, match="TUNNEL_CONNECT_TO entry 'nonsense'"):
        await join(nursery, f"https://{TUNNEL_HOST}/t/abcdefghijk#{'A' * 43}", name="ben")


async def test_a_member_dials_the_override_with_tls_for_the_links_name(
    nursery: trio.Nursery, ca: trustme.CA, ca_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A TLS edge for TUNNEL_HOST in front of a local relay, reachable only through the override.
    host = await open_host(nursery, "goal", name="ana")
    relay_port = host.relay.port

    async def edge(client: trio.SocketStream) -> None:
        tls = trio.SSLStream(client, server_ssl_context(ca, TUNNEL_HOST), server_side=True)
        upstream = await trio.open_tcp_stream("127.0.0.1", relay_port)

        async def pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
            try:
                async for chunk in src:
                    await dst.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await trio.aclose_forcefully(dst)

        async with trio.open_nursery() as pumps:
            pumps.start_soon(pump, tls, upstream)
            pumps.start_soon(pump, upstream, tls)

    listeners = await nursery.start(partial(trio.serve_tcp, edge, 0, host="127.0.0.1"))
    edge_port = listeners[0].socket.getsockname()[1]
    local_link = host.initial_invites[0].join_link
    link = f"https://{TUNNEL_HOST}" + local_link[local_link.index("/t/") :]
    monkeypatch.setenv("TUNNEL_CA_BUNDLE", str(ca_bundle))
    monkeypatch.setenv("TUNNEL_DOH", "off")  # nothing may be resolved: only the override works

    monkeypatch.setenv("TUNNEL_CONNECT_TO", f"{TUNNEL_HOST}:443:127.0.0.1:{closed_port()}")
    assert await relay_answers(link) is False
    monkeypatch.setenv("TUNNEL_CONNECT_TO", f"{TUNNEL_HOST}:443:127.0.0.1:{edge_port}")
    assert await relay_answers(link) is True

    ben = await join(nursery, link, name="ben")
    seq = await ben.say("through the override")
    got = await host.listen(0, 5.0)
    assert [m.text for m in got.messages if m.kind == "chat"] == ["through the override"]
    assert got.last_seq == seq

    # The certificate is still checked against the link's name, whatever address is dialled.
    monkeypatch.setenv("TUNNEL_CONNECT_TO", f"other.trycloudflare.com:443:127.0.0.1:{edge_port}")
    other = "https://other.trycloudflare.com" + local_link[local_link.index("/t/") :]
    assert await relay_answers(other) is False
    await host.close()
    assert await relay_answers(link) is False
