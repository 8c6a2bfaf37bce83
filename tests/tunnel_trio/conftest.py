"""Fixtures for tunnel_trio tests; the local servers themselves live in _support/_servers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from _servers import FAKE, HOSTNAME, TUNNEL_HOST, write_leaf_files


@pytest.fixture
def ca() -> trustme.CA:
    """A throwaway certificate authority for local HTTPS servers."""
    return trustme.CA()


@pytest.fixture
def ca_bundle(ca: trustme.CA, tmp_path: Path) -> Path:
    """`ca` as a PEM file, for TUNNEL_CA_BUNDLE."""
    path = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def fake_cloudflared(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: trustme.CA, ca_bundle: Path
) -> Path:
    """The fake on TUNNEL_CLOUDFLARED, with a TLS edge for TUNNEL_HOST; returns the port file."""
    cert, key = write_leaf_files(ca, tmp_path, TUNNEL_HOST)
    for name, value in {
        "TUNNEL_CLOUDFLARED": str(FAKE),
        "TUNNEL_CA_BUNDLE": str(ca_bundle),
        "FAKE_CLOUDFLARED_MODE": "ok",
        "FAKE_CLOUDFLARED_HOSTNAME": HOSTNAME,
        "FAKE_CLOUDFLARED_TLS_CERT": str(cert),
        "FAKE_CLOUDFLARED_TLS_KEY": str(key),
        "FAKE_CLOUDFLARED_PORT_FILE": str(tmp_path / "edge.port"),
        "FAKE_CLOUDFLARED_PID_FILE": str(tmp_path / "fake.pid"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TUNNEL_HOME", str(tmp_path / "tunnel-home"))
    monkeypatch.delenv("TUNNEL_DOH", raising=False)
    return tmp_path


