"""Transports: choosing and validating them, and the cloudflared one end to end with the fake."""

from __future__ import annotations

import os
from pathlib import Path

import h11
import pytest
import trio
import trustme
from _servers import TUNNEL_HOST, client_ssl_context, run_doh_server, serve_http

from tunnel_trio._cloudflared import CloudflaredError
from tunnel_trio._http import http_request
from tunnel_trio.transports import (
    CloudflaredTransport,
    DirectTransport,
    LocalTransport,
    UrlTransport,
    make_transport,
)

# --- choosing --------------------------------------------------------------------------------


def test_make_transport_chooses_by_name_then_environment_then_cloudflared() -> None:
    assert isinstance(make_transport(None, env={}), CloudflaredTransport)
    assert isinstance(make_transport(None, env={"TUNNEL_TRANSPORT": " Local "}), LocalTransport)
    assert isinstance(make_transport("local", env={"TUNNEL_TRANSPORT": "url"}), LocalTransport)
    assert isinstance(make_transport("cloudflared", env={}), CloudflaredTransport)
    assert isinstance(make_transport("direct", bind="192.168.1.20", env={}), DirectTransport)
    url = make_transport("url", public_url="https://a.example", env={})
    assert isinstance(url, UrlTransport)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "ngrok"},
            "unknown transport 'ngrok': use one of cloudflared, local, direct, url",
        ),
        (
            {"name": "url"},
            "transport=url needs the public URL of your reverse proxy: pass publicUrl",
        ),
        ({"name": "direct"}, "transport=direct needs the LAN address to listen on: pass bind"),
        ({"name": "local", "public_url": "https://a.example"}, "publicUrl only applies to"),
        ({"name": "cloudflared", "bind": "127.0.0.1:80"}, "bind only applies to"),
    ],
)
def test_make_transport_errors_say_what_to_pass(kwargs: dict[str, str], message: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(ValueError) as caught:
        make_transport(name, env={}, **kwargs)
    assert str(caught.value).startswith(message)


def test_an_unknown_transport_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ValueError) as caught:
        make_transport(None, env={"TUNNEL_TRANSPORT": "carrier-pigeon"})
    assert str(caught.value).startswith(
        "TUNNEL_TRANSPORT='carrier-pigeon' is not a transport: set it to one of cloudflared, "
        "local, direct, url"
    )


# --- local, direct, url ----------------------------------------------------------------------


async def test_local_transport(nursery: trio.Nursery) -> None:
    transport = LocalTransport()
    assert transport.bind_address() == ("127.0.0.1", 0)
    assert await transport.start(nursery, 40123) == "http://127.0.0.1:40123"
    assert transport.public_url == "http://127.0.0.1:40123"
    assert transport.alive() and transport.warning is None
    await transport.stop()
    await transport.stop()
    assert not transport.alive()


@pytest.mark.parametrize(
    ("bind", "address", "url"),
    [
        ("192.168.1.20:8765", ("192.168.1.20", 8765), "http://192.168.1.20:8765"),
        ("10.0.0.5", ("10.0.0.5", 0), "http://10.0.0.5:8765"),
        ("[fd00::5]:9000", ("fd00::5", 9000), "http://[fd00::5]:8765"),
    ],
)
async def test_direct_transport(
    nursery: trio.Nursery, bind: str, address: tuple[str, int], url: str
) -> None:
    transport = DirectTransport(bind)
    assert transport.bind_address() == address
    assert await transport.start(nursery, 8765) == url


@pytest.mark.parametrize(
    ("bind", "message"),
    [
        ("laptop.local:8765", "'laptop.local' is not an IP address"),
        ("192.168.1.20:99999", "the port must be 0-65535"),
        ("192.168.1.20:http", "the port must be 0-65535"),
        ("0.0.0.0:8765", "pass the LAN address the others will dial"),
        ("[::]:8765", "pass the LAN address the others will dial"),
        ("[fd00::5:8765", "missing ']'"),
        ("", "is not an IP address"),
    ],
)
def test_direct_transport_rejects_bad_addresses(bind: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DirectTransport(bind)


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("https://Relay.Example.ngrok.app/", "https://relay.example.ngrok.app"),
        ("https://relay.example:443", "https://relay.example"),
        ("wss://relay.example", "https://relay.example"),
        ("ws://relay.example:8080", "http://relay.example:8080"),
        ("http://[2001:db8::1]:9000", "http://[2001:db8::1]:9000"),
        (" http://100.64.0.7 ", "http://100.64.0.7"),
    ],
)
async def test_url_transport_normalizes(nursery: trio.Nursery, given: str, normalized: str) -> None:
    transport = UrlTransport(given)
    assert transport.bind_address() == ("127.0.0.1", 0)
    assert await transport.start(nursery, 5555) == normalized
    # The port was ephemeral: the user is told where their proxy must forward.
    assert transport.warning is not None
    assert f"forward {normalized} to http://127.0.0.1:5555" in transport.warning


async def test_url_transport_with_a_fixed_port_needs_no_warning(nursery: trio.Nursery) -> None:
    transport = UrlTransport("https://a.example", bind="127.0.0.1:8765")
    assert await transport.start(nursery, 8765) == "https://a.example"
    assert transport.warning is None


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("ftp://relay.example", "use http, https, ws or wss"),
        ("relay.example", "use http, https, ws or wss"),
        ("https://me:secret@relay.example", "must not contain a user name or password"),
        ("https://relay.example/tunnel", "no path, query or fragment"),
        ("https://relay.example/?a=1", "no path, query or fragment"),
        ("https://relay.example#x", "no path, query or fragment"),
        ("https://", "no host name"),
        ("https://relay.example:99999", "invalid publicUrl"),
    ],
)
def test_url_transport_rejects_what_links_cannot_carry(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        UrlTransport(given)
    assert "secret" not in str(caught.value)  # never echo a password back


def test_url_transport_can_pin_the_local_port() -> None:
    transport = make_transport("url", public_url="https://a.example", bind="127.0.0.1:8765", env={})
    assert transport.bind_address() == ("127.0.0.1", 8765)


# --- cloudflared, end to end with the fake ---------------------------------------------------


async def relay(request: h11.Request, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    return 200, [("Content-Type", "text/plain")], b"relay saw " + request.target


async def test_cloudflared_transport_end_to_end(
    nursery: trio.Nursery,
    ca: trustme.CA,
    fake_cloudflared: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doh = await run_doh_server(nursery, ca, {TUNNEL_HOST: ["127.0.0.1"]}, answer_after=1)
    monkeypatch.setenv("TUNNEL_DOH_RESOLVERS", doh.url)
    relay_port = await serve_http(nursery, relay)

    transport = make_transport(None)
    assert isinstance(transport, CloudflaredTransport)
    assert transport.bind_address() == ("127.0.0.1", 0)
    with trio.fail_after(20):
        url = await transport.start(nursery, relay_port)
    assert url == f"https://{TUNNEL_HOST}"
    assert transport.public_url == url
    assert transport.warning is None
    assert transport.alive()
    assert doh.names[-1] == TUNNEL_HOST  # readiness was checked through DoH

    # The fake edge really points at the relay: https://<name>.trycloudflare.com -> relay.
    edge_port = int((fake_cloudflared / "edge.port").read_text())
    response = await http_request(
        f"{url}/hello",
        ssl_context=client_ssl_context(ca),
        resolve_override={(TUNNEL_HOST, 443): ("127.0.0.1", edge_port)},
    )
    assert (response.status, response.body) == (200, b"relay saw /hello")

    pid = int((fake_cloudflared / "fake.pid").read_text())
    await transport.stop()
    assert not transport.alive()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no child left behind
    await transport.stop()


async def test_cloudflared_transport_warns_when_the_name_is_slow_to_resolve(
    nursery: trio.Nursery, ca: trustme.CA, fake_cloudflared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doh = await run_doh_server(nursery, ca, {})  # never resolves
    monkeypatch.setenv("TUNNEL_DOH_RESOLVERS", doh.url)
    transport = CloudflaredTransport(readiness_budget=0.5)
    with trio.fail_after(20):
        url = await transport.start(nursery, 9)
    assert url == f"https://{TUNNEL_HOST}"
    assert transport.warning is not None
    assert "did not appear in DNS within 0.5 s" in transport.warning
    assert transport.alive()  # the link is still handed out
    await transport.stop()


async def test_cloudflared_transport_notices_when_cloudflared_dies(
    nursery: trio.Nursery, ca: trustme.CA, fake_cloudflared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNNEL_DOH", "off")
    monkeypatch.setenv("FAKE_CLOUDFLARED_MODE", "die-after-start")
    monkeypatch.setenv("FAKE_CLOUDFLARED_DIE_AFTER", "0.5")
    transport = CloudflaredTransport()
    await transport.start(nursery, 9)
    assert transport.warning is not None and "was not checked" in transport.warning
    with trio.fail_after(10):
        while transport.alive():
            await trio.sleep(0.05)
    await transport.stop()


async def test_cloudflared_transport_without_cloudflared_says_how_to_install(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TUNNEL_CLOUDFLARED", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("TUNNEL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNNEL_CLOUDFLARED_PINS", raising=False)
    transport = CloudflaredTransport()
    with pytest.raises(CloudflaredError, match="Install cloudflared yourself"):
        await transport.start(nursery, 9)
    assert not transport.alive()
    await transport.stop()
