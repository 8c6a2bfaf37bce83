"""HTTP written by hand, for attackers in tests: requests no real client would send as they do."""

from __future__ import annotations


def upgrade_request(path: str) -> bytes:
    """A complete, valid WebSocket upgrade request head for `path` on 127.0.0.1."""
    return (
        f"GET {path} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode("ascii")
