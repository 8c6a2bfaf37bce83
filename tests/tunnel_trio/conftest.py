"""Fixtures for tunnel_trio tests; the local servers themselves live in _servers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trustme

# Test modules import the helper module as `_servers` (no __init__.py under tests/).
sys.path.insert(0, str(Path(__file__).parent))


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
