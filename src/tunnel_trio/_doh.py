"""DNS-over-HTTPS (RFC 8484): a minimal A/AAAA client over our own h11 HTTP client.

Why we need it at all: a fresh ``*.trycloudflare.com`` name takes a while to appear in DNS.
If the guest's *system* resolver is asked too early it caches the NXDOMAIN (negative caching,
RFC 2308, up to the zone's SOA minimum), and the link stays broken for that machine long after
the name exists. So the host polls readiness through DoH only, and the guest's WebSocket client
falls back to DoH when its system resolver says no.

Resolvers are IP literals by default, so using DoH needs no DNS; their certificates carry IP
SANs, and TLS is verified against the IP (see ``_http``).

The decoder is strict and bounded: every read is bounds-checked, compression pointers must
point strictly backwards (so they cannot loop), names are capped at 255 bytes, and anything
malformed raises ``DohError``, never IndexError or struct.error. ``decode_response`` is pure
(bytes in, addresses out) so it can be fuzzed directly.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import struct
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import trio

from ._http import HttpError, ResolveOverride, http_request
from ._tls import client_ssl_context

logger = logging.getLogger(__name__)

DEFAULT_RESOLVERS: tuple[str, ...] = (
    "https://1.1.1.1/dns-query",
    "https://1.0.0.1/dns-query",
    "https://8.8.8.8/dns-query",
)
RESOLVERS_ENV = "TUNNEL_DOH_RESOLVERS"
DOH_ENV = "TUNNEL_DOH"
_DISABLED_VALUES = frozenset({"off", "0", "false", "no"})

DNS_MESSAGE_TYPE = "application/dns-message"
MAX_MESSAGE = 65535  # a DNS message cannot be larger (RFC 8484 section 6)
MAX_NAME = 255  # RFC 1035 section 2.3.4, in wire bytes
MAX_POINTER_HOPS = 64

QTYPES: Mapping[str, int] = {"A": 1, "AAAA": 28}
_TYPE_CNAME = 5
_CLASS_IN = 1
_RCODES = {1: "FORMERR", 2: "SERVFAIL", 4: "NOTIMP", 5: "REFUSED"}
_RCODE_NXDOMAIN = 3


class DohError(Exception):
    """A DNS-over-HTTPS lookup failed, or a resolver sent a malformed answer."""


def doh_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """False when ``TUNNEL_DOH`` is off/0/false/no (any case): the user opted out."""
    return env.get(DOH_ENV, "").strip().lower() not in _DISABLED_VALUES


def resolvers_from_env(env: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """``TUNNEL_DOH_RESOLVERS`` (comma-separated https URLs) or the defaults."""
    raw = env.get(RESOLVERS_ENV, "")
    urls = tuple(part.strip() for part in raw.split(",") if part.strip())
    for url in urls:
        _check_resolver_url(url, source=RESOLVERS_ENV)
    return urls or DEFAULT_RESOLVERS


def _check_resolver_url(url: str, *, source: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() != "https" or not parts.hostname:
        raise ValueError(
            f"{source}: {url!r} is not a DNS-over-HTTPS URL; "
            "use https URLs such as https://1.1.1.1/dns-query"
        )


def _label(url: str) -> str:
    """How a resolver is named in messages: its host[:port]."""
    return urlsplit(url).netloc or url


# --- wire format -------------------------------------------------------------------------------


def _encode_name(hostname: str) -> tuple[bytes, tuple[bytes, ...]]:
    """Wire-format name and its lowercased labels; ValueError if it is not a DNS name."""
    name = hostname.strip().rstrip(".")
    if not name:
        raise ValueError(f"{hostname!r} is not a DNS name")
    try:
        ascii_name = name.encode("idna")
    except UnicodeError:
        raise ValueError(f"{hostname!r} is not a valid DNS name") from None
    labels = tuple(label.lower() for label in ascii_name.split(b"."))
    wire = bytearray()
    for label in labels:
        if not 1 <= len(label) <= 63:
            raise ValueError(f"{hostname!r} is not a valid DNS name (bad label length)")
        wire.append(len(label))
        wire += label
    wire.append(0)
    if len(wire) > MAX_NAME:
        raise ValueError(f"{hostname!r} is too long for DNS")
    return bytes(wire), labels


def encode_query(hostname: str, qtype: str = "A", *, msg_id: int = 0) -> bytes:
    """An RFC 1035 query with RD=1 and one question (IN class).

    RFC 8484 section 4.1 recommends ID 0 so that identical queries are cache-friendly; the
    HTTPS layer, not the ID, is what protects against spoofing.
    """
    code = _qtype_code(qtype)
    wire, _ = _encode_name(hostname)
    header = struct.pack("!HHHHHH", msg_id & 0xFFFF, 0x0100, 1, 0, 0, 0)
    return header + wire + struct.pack("!HH", code, _CLASS_IN)


def _qtype_code(qtype: str) -> int:
    try:
        return QTYPES[qtype.upper()]
    except KeyError:
        raise ValueError(f"unsupported query type {qtype!r}: use A or AAAA") from None


class _Reader:
    def __init__(self, message: bytes) -> None:
        self.message = message
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.message):
            raise DohError("malformed DNS response (truncated)")
        chunk = self.message[self.pos : end]
        self.pos = end
        return chunk

    def u16(self) -> int:
        value: int = struct.unpack("!H", self.take(2))[0]
        return value

    def name(self) -> tuple[bytes, ...]:
        labels, self.pos = _read_name(self.message, self.pos)
        return labels


def _read_name(message: bytes, start: int) -> tuple[tuple[bytes, ...], int]:
    """Labels (lowercased) of the name at `start`, and the offset just past it.

    Compression pointers (RFC 1035 section 4.1.4) must point strictly before the start of
    the segment being read; offsets therefore strictly decrease and no loop is possible.
    The hop cap and the 255-byte limit bound the work anyway.
    """
    labels: list[bytes] = []
    pos = start
    segment_start = start
    end_of_name: int | None = None
    wire_length = 1
    hops = 0
    while True:
        if pos >= len(message):
            raise DohError("malformed DNS response (name runs past the end)")
        length = message[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(message):
                raise DohError("malformed DNS response (truncated pointer)")
            pointer = ((length & 0x3F) << 8) | message[pos + 1]
            if pointer >= segment_start:
                raise DohError("malformed DNS response (compression pointer does not point back)")
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise DohError("malformed DNS response (too many compression pointers)")
            if end_of_name is None:
                end_of_name = pos + 2
            pos = segment_start = pointer
            continue
        if kind:
            raise DohError("malformed DNS response (unknown label type)")
        if length == 0:
            return tuple(labels), (end_of_name if end_of_name is not None else pos + 1)
        if pos + 1 + length > len(message):
            raise DohError("malformed DNS response (label runs past the end)")
        wire_length += 1 + length
        if wire_length > MAX_NAME:
            raise DohError("malformed DNS response (name longer than 255 bytes)")
        labels.append(message[pos + 1 : pos + 1 + length].lower())
        pos += 1 + length


def decode_response(
    message: bytes, *, hostname: str, qtype: str = "A", msg_id: int = 0
) -> list[str]:
    """Addresses answering `qtype` for `hostname`, following CNAMEs within the answer.

    Returns [] for NXDOMAIN and for NODATA (the name exists without such records). Raises
    DohError for error RCODEs, truncation, a mismatched ID or question, and any malformed
    byte; ValueError only if `hostname`/`qtype` themselves are invalid (caller misuse).
    """
    code = _qtype_code(qtype)
    _, qlabels = _encode_name(hostname)
    if len(message) > MAX_MESSAGE:
        raise DohError("malformed DNS response (longer than 65535 bytes)")
    reader = _Reader(message)
    resp_id, flags, qdcount, ancount = struct.unpack("!HHHH", reader.take(8))
    reader.take(4)  # NSCOUNT, ARCOUNT: those sections are not needed
    if not flags & 0x8000:
        raise DohError("malformed DNS response (not a response)")
    if resp_id != msg_id:
        raise DohError("DNS response ID does not match the query")
    if (flags >> 11) & 0xF:
        raise DohError("malformed DNS response (unexpected opcode)")
    if flags & 0x0200:
        raise DohError("DNS response was truncated")
    rcode = flags & 0xF
    if qdcount != 1:
        raise DohError("DNS response does not echo our question")
    if reader.name() != qlabels or reader.u16() != code or reader.u16() != _CLASS_IN:
        raise DohError("DNS response is for a different question")
    if rcode == _RCODE_NXDOMAIN:
        return []
    if rcode:
        raise DohError(f"resolver answered {_RCODES.get(rcode, f'RCODE {rcode}')}")

    aliases: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}
    records: list[tuple[tuple[bytes, ...], str]] = []
    for _ in range(ancount):
        owner = reader.name()
        rtype, rclass = reader.u16(), reader.u16()
        reader.take(4)  # TTL
        rdlength = reader.u16()
        rdata_start = reader.pos
        rdata = reader.take(rdlength)
        if rclass != _CLASS_IN:
            continue
        if rtype == _TYPE_CNAME:
            target, end = _read_name(message, rdata_start)
            if end != rdata_start + rdlength:
                raise DohError("malformed DNS response (bad CNAME record)")
            aliases.setdefault(owner, target)
        elif rtype == code:
            if code == QTYPES["A"]:
                if rdlength != 4:
                    raise DohError("malformed DNS response (A record is not 4 bytes)")
                records.append((owner, str(ipaddress.IPv4Address(rdata))))
            else:
                if rdlength != 16:
                    raise DohError("malformed DNS response (AAAA record is not 16 bytes)")
                records.append((owner, str(ipaddress.IPv6Address(rdata))))

    names = {qlabels}
    current = qlabels
    for _ in range(len(aliases)):  # a CNAME chain longer than the answer must loop
        following = aliases.get(current)
        if following is None or following in names:
            break
        names.add(following)
        current = following
    addresses: list[str] = []
    for owner, address in records:
        if owner in names and address not in addresses:
            addresses.append(address)
    return addresses


# --- client ------------------------------------------------------------------------------------


class DohClient:
    """Resolves names through DoH resolvers, tried in order until one answers.

    `resolvers` defaults to ``TUNNEL_DOH_RESOLVERS`` or DEFAULT_RESOLVERS; `ssl_context` to
    ``client_ssl_context()`` (the OS trust store plus ``TUNNEL_CA_BUNDLE``); `timeout` bounds each
    resolver's whole request; `resolve_override` maps (host, port) -> (ip, port) for the TCP
    connection (tests). `env` is where the two environment variables are read from.
    """

    def __init__(
        self,
        resolvers: Sequence[str] | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        resolve_override: dict[tuple[str, int], tuple[str, int]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if env is None:
            env = os.environ
        if resolvers is None:
            self.resolvers = resolvers_from_env(env)
        else:
            for url in resolvers:
                _check_resolver_url(url, source="resolver")
            self.resolvers = tuple(resolvers)
        if not self.resolvers:
            raise ValueError("DohClient needs at least one resolver URL")
        self.ssl_context = ssl_context if ssl_context is not None else client_ssl_context(env)
        self.timeout = timeout
        self.resolve_override: ResolveOverride | None = resolve_override

    async def resolve(self, hostname: str, *, qtype: str = "A") -> list[str]:
        """IP address strings for `hostname` ([] for NXDOMAIN or no such records).

        The first resolver that gives a well-formed answer wins; only failures move on to the
        next one. Raises DohError listing every resolver's failure if none answered, and
        ValueError if `hostname` is not a DNS name. An IP literal is returned as is.
        """
        literal = _ip_literal(hostname, qtype)
        if literal is not None:
            return literal
        query = encode_query(hostname, qtype)
        failures: list[str] = []
        for url in self.resolvers:
            reason = "timed out"
            with trio.move_on_after(self.timeout):
                try:
                    response = await http_request(
                        url,
                        method="POST",
                        headers=[("Content-Type", DNS_MESSAGE_TYPE), ("Accept", DNS_MESSAGE_TYPE)],
                        body=query,
                        ssl_context=self.ssl_context,
                        idle_timeout=self.timeout,
                        max_body=MAX_MESSAGE,
                        resolve_override=self.resolve_override,
                    )
                    addresses = _answer_from(
                        response.status,
                        response.header("content-type"),
                        response.body,
                        hostname,
                        qtype,
                    )
                except (HttpError, DohError) as exc:
                    reason = str(exc)
                else:
                    logger.debug("DoH %s %s via %s: %s", qtype, hostname, _label(url), addresses)
                    return addresses
            logger.debug("DoH %s %s via %s failed: %s", qtype, hostname, _label(url), reason)
            failures.append(f"{_label(url)}: {reason}")
        raise DohError(
            "DNS-over-HTTPS failed: "
            + "; ".join(failures)
            + f" (if your network blocks these resolvers, set {RESOLVERS_ENV} to ones it allows,"
            f" or {DOH_ENV}=off)"
        )


def _answer_from(
    status: int, content_type: str | None, body: bytes, hostname: str, qtype: str
) -> list[str]:
    if status != 200:
        raise DohError(f"HTTP {status}")
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != DNS_MESSAGE_TYPE:
        raise DohError(f"unexpected content type {media_type or 'none'!r}")
    return decode_response(body, hostname=hostname, qtype=qtype)


def _ip_literal(hostname: str, qtype: str) -> list[str] | None:
    try:
        address = ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        return None
    want = 4 if _qtype_code(qtype) == QTYPES["A"] else 6
    return [str(address)] if address.version == want else []


async def resolve_fallback(hostname: str) -> list[str]:
    """DoH lookup for when the system resolver failed: A records, else AAAA records.

    Returns [] if DoH is disabled (``TUNNEL_DOH=off``) or the name does not exist. Raises
    DohError if every resolver failed, or if TUNNEL_DOH_RESOLVERS / TUNNEL_CA_BUNDLE are
    unusable, so the caller can report both failures.
    """
    if not doh_enabled():
        logger.debug("DoH fallback skipped for %s: %s=off", hostname, DOH_ENV)
        return []
    try:
        client = DohClient()
    except ValueError as exc:
        raise DohError(f"DNS-over-HTTPS is misconfigured: {exc}") from None
    addresses = await client.resolve(hostname, qtype="A")
    if addresses:
        return addresses
    return await client.resolve(hostname, qtype="AAAA")
