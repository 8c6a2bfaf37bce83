"""What outgoing TLS trusts: the OS trust store through truststore, plus TUNNEL_CA_BUNDLE.

The dials are real: TLS servers on 127.0.0.1 with a trustme certificate, reached the way a
user's tunnel-mcp reaches them (the guest's wss:// dial, an HTTPS request such as DoH or the
cloudflared download). A trustme CA is in no OS store, so only TUNNEL_CA_BUNDLE can make them
succeed: that shows the bundle is honoured, and that nothing falls back to trusting anything.
"""

from __future__ import annotations

import os
import ssl
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme
import truststore
from _servers import run_http_server, server_ssl_context

from tunnel_trio._doh import DohClient
from tunnel_trio._http import HttpError, http_request
from tunnel_trio._tls import client_ssl_context
from tunnel_trio._ws import WebSocket, WebSocketClosed, serve_websocket
from tunnel_trio.session import relay_answers
from tunnelproto import JoinLink

HOST = "tunnel-test.invalid"


def test_the_context_is_truststores_and_verifies() -> None:
    context = client_ssl_context({})
    assert isinstance(context, truststore.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_the_doh_client_uses_it_by_default() -> None:
    assert isinstance(DohClient().ssl_context, truststore.SSLContext)


async def test_an_https_request_trusts_the_extra_bundle_and_nothing_else(
    nursery: trio.Nursery, ca: trustme.CA, ca_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = await run_http_server(
        nursery, {"/asset": (200, [], b"payload")}, ssl_context=server_ssl_context(ca)
    )
    monkeypatch.delenv("TUNNEL_CA_BUNDLE", raising=False)
    with pytest.raises(HttpError, match="certificate verification failed"):
        await http_request(f"{base}/asset")
    monkeypatch.setenv("TUNNEL_CA_BUNDLE", str(ca_bundle))
    response = await http_request(f"{base}/asset")
    assert (response.status, response.body) == (200, b"payload")


async def test_the_guests_wss_dial_trusts_the_extra_bundle_and_nothing_else(
    nursery: trio.Nursery, ca: trustme.CA, ca_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hang_up(ws: WebSocket) -> None:
        try:
            await ws.receive()
        except WebSocketClosed:
            pass

    listeners = await nursery.start(
        partial(
            serve_websocket,
            hang_up,
            "127.0.0.1",
            0,
            accept_path=lambda path: path.startswith("/t/"),
            max_message_size=1024,
            ssl_context=server_ssl_context(ca, HOST),
        )
    )
    port = listeners[0].socket.getsockname()[1]
    link = str(JoinLink(f"https://{HOST}:{port}", "tls-test-tunnel", os.urandom(32)))
    monkeypatch.setenv("TUNNEL_CONNECT_TO", f"{HOST}:{port}:127.0.0.1:{port}")
    monkeypatch.setenv("TUNNEL_DOH", "off")
    monkeypatch.delenv("TUNNEL_CA_BUNDLE", raising=False)
    assert not await relay_answers(link, timeout=30)
    monkeypatch.setenv("TUNNEL_CA_BUNDLE", str(ca_bundle))
    assert await relay_answers(link, timeout=30)
