"""Join links, and the ids derived from their secrets.

A join link is `<base>/t/<tunnel-id>#<secret>`. The secret sits in the URL fragment, which
browsers and HTTP clients never send in a request: the relay, the Cloudflare edge and any proxy
see the tunnel id but never the secret. On the wire the member names its invite by an id that is
a keyed hash of the secret, so the id reveals nothing about the secret and a secret from one
tunnel yields an unrelated id in another.

A secret (an invite's or a resume ticket's) is never used as a key itself: the key id and the
Noise PSK are both derived from it, under different labels (spec section 4). So the two uses
cannot interact, and the host can keep the PSK of a used invite (to refuse a second use inside
Noise) without keeping the secret that makes the link.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ._errors import LocalProtocolError

SECRET_LEN = 32
ID_LEN = 16
TUNNEL_ID_BYTES = 12  # 96 bits, comfortably over the 64 the spec asks for
_TUNNEL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{11,64}$")
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")

PSK_LEN = 32
INVITE_ID_LABEL = b"tunnel-mcp/1 invite-id"
TICKET_ID_LABEL = b"tunnel-mcp/1 ticket-id"
INVITE_PSK_LABEL = b"tunnel-mcp/1 invite-psk"
TICKET_PSK_LABEL = b"tunnel-mcp/1 ticket-psk"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url; raises ValueError."""
    if not _B64URL_RE.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(data) != text:  # reject non-canonical trailing bits
        raise ValueError("not canonical base64url")
    return data


def derive(label: bytes, secret: bytes, tunnel_id: str, size: int) -> bytes:
    """BLAKE2b keyed with the secret over label || tunnel id, with output length `size`
    (spec section 4: 16 for a key id, 32 for a PSK)."""
    return hashlib.blake2b(label + tunnel_id.encode("ascii"), key=secret, digest_size=size).digest()


def invite_id(secret: bytes, tunnel_id: str) -> bytes:
    return derive(INVITE_ID_LABEL, secret, tunnel_id, ID_LEN)


def ticket_id(secret: bytes, tunnel_id: str) -> bytes:
    return derive(TICKET_ID_LABEL, secret, tunnel_id, ID_LEN)


def invite_psk(secret: bytes, tunnel_id: str) -> bytes:
    return derive(INVITE_PSK_LABEL, secret, tunnel_id, PSK_LEN)


def ticket_psk(secret: bytes, tunnel_id: str) -> bytes:
    return derive(TICKET_PSK_LABEL, secret, tunnel_id, PSK_LEN)


class LinkError(LocalProtocolError):
    """A join link that cannot be used; the message says how to fix it and never echoes the secret."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, "bad-link")


@dataclass(frozen=True, slots=True)
class JoinLink:
    base_url: str  # scheme://host[:port][/prefix], as the host advertised it
    tunnel_id: str
    secret: bytes

    def __repr__(self) -> str:  # never let the secret reach a log through repr()
        return (
            f"JoinLink(base_url={self.base_url!r}, tunnel_id={self.tunnel_id!r}, secret=<hidden>)"
        )

    def __str__(self) -> str:
        return f"{self.base_url}/t/{self.tunnel_id}#{b64url(self.secret)}"

    @property
    def invite_id(self) -> bytes:
        return invite_id(self.secret, self.tunnel_id)

    @property
    def psk(self) -> bytes:
        """The Noise PSK of a join with this link (never the secret itself)."""
        return invite_psk(self.secret, self.tunnel_id)

    @property
    def websocket_url(self) -> str:
        """The URL to dial: https->wss, http->ws, fragment removed."""
        scheme, rest = self.base_url.split("://", 1)
        scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
        return f"{scheme}://{rest}/t/{self.tunnel_id}"

    @classmethod
    def parse(cls, text: str) -> JoinLink:
        if not isinstance(text, str):
            raise LinkError("the join link must be text")
        text = text.strip().strip("<>\"'")
        if len(text) > 2048:
            raise LinkError("the join link is too long: copy just the link, nothing around it")
        if "#" not in text:
            raise LinkError("the link has no secret after '#': copy the whole link")
        before, secret_text = text.split("#", 1)
        try:
            parts = urlsplit(before)
        except ValueError:
            raise LinkError("the join link is not a valid URL: copy the whole link") from None
        if parts.scheme not in ("https", "http", "wss", "ws"):
            raise LinkError(
                "the join link must start with https:// (or http:// for local and LAN use): "
                "copy the whole link"
            )
        if not parts.hostname:
            raise LinkError("the join link has no host name: copy the whole link")
        if parts.username or parts.password:
            raise LinkError("the join link must not contain a user name or password")
        if parts.query:
            raise LinkError("the join link must not have a '?' query: copy the link exactly")
        path = parts.path
        marker = path.rfind("/t/")
        if marker < 0:
            raise LinkError("the join link has no '/t/<tunnel-id>' part: copy the whole link")
        tunnel = path[marker + 3 :]
        if not _TUNNEL_ID_RE.match(tunnel):
            raise LinkError("the tunnel id in the link is malformed: copy the whole link")
        if not secret_text:
            raise LinkError("the link has no secret after '#': copy the whole link")
        try:
            secret = b64url_decode(secret_text)
        except ValueError:
            raise LinkError(
                "the secret after '#' is damaged (not base64url): copy the whole link again"
            ) from None
        if len(secret) != SECRET_LEN:
            raise LinkError(
                "the secret after '#' has the wrong length (the link was cut short?): "
                "copy the whole link again"
            )
        try:
            port = parts.port
        except ValueError:
            raise LinkError("the port in the join link is invalid: copy the whole link") from None
        host = parts.hostname
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        netloc = host if port is None else f"{host}:{port}"
        base = f"{parts.scheme}://{netloc}{path[:marker]}"
        return cls(base_url=base, tunnel_id=tunnel, secret=secret)


def normalize_base_url(base_url: str) -> str:
    """Validate a base URL a host advertises; returns it without a trailing slash."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("https", "http", "wss", "ws") or not parts.hostname:
        raise LocalProtocolError(f"base URL must be http(s)://host[:port], got {base_url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise LocalProtocolError("base URL must not have a query, fragment or user info")
    return base_url.rstrip("/")
