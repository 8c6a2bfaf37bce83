"""A tiny one-shot HTTP/1.1 client: h11 over trio TCP, optionally TLS.

Two users, both small: the DNS-over-HTTPS client (one POST, answer under 64 KiB) and the
cloudflared downloader (one GET, GitHub redirects it to a CDN, body streamed to a file). So:
one request per connection (``Connection: close``), no pooling, no cookies, no compression.

Bounds, because both talk to the network: response headers are capped by h11's
``max_incomplete_event_size``; bodies by ``max_body`` (checked against Content-Length up front
and against the bytes actually received); every network wait by ``idle_timeout``. Callers
that need a total deadline wrap the call in ``trio.move_on_after``.

Every failure, whatever its cause (refused connection, TLS verification, garbage from the
server), surfaces as ``HttpError`` with a short message that names no secrets: the URLs
passed here are resolver and release URLs, never tunnel links.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import h11
import trio

from ._tls import client_ssl_context

USER_AGENT = "tunnel-mcp/0.1"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_HEADER_BYTES = 64 * 1024  # GitHub's redirect responses carry large CSP headers
MAX_DISCARDED_BODY = 64 * 1024  # bodies of redirects and errors we only keep for messages
RECEIVE_SIZE = 64 * 1024

BodySink = Callable[[bytes], Awaitable[None]]
ResolveOverride = Mapping[tuple[str, int], tuple[str, int]]


class HttpError(Exception):
    """The request failed: network, TLS, protocol, size or redirect trouble."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...]  # names lowercased, in wire order
    body: bytes  # empty when the body went to a sink
    url: str  # the URL that produced this response, after redirects

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str  # without brackets
    port: int
    host_header: str
    target: str  # path?query, what goes on the request line


def _parse_url(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise HttpError(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise HttpError(f"invalid URL {url!r}: only http and https are supported")
    if parts.username is not None or parts.password is not None:
        raise HttpError("invalid URL: credentials in URLs are not supported")
    host = parts.hostname
    if not host:
        raise HttpError(f"invalid URL {url!r}: no host")
    if port is None:
        port = 443 if scheme == "https" else 80
    shown_host = f"[{host}]" if ":" in host else host
    default_port = 443 if scheme == "https" else 80
    host_header = shown_host if port == default_port else f"{shown_host}:{port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return _Target(scheme, host, port, host_header, target)


def _describe_tls_failure(exc: BaseException) -> str | None:
    """A readable reason if `exc` (or what it wraps) is a TLS failure, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({current.verify_message})"
        if isinstance(current, ssl.SSLError):
            return f"TLS error ({current.reason or current})"
        current = current.__cause__ or current.__context__
    return None


async def _open_stream(
    target: _Target,
    ssl_context: ssl.SSLContext | None,
    idle_timeout: float,
    resolve_override: ResolveOverride | None,
) -> trio.abc.Stream:
    connect_host, connect_port = target.host, target.port
    if resolve_override and (target.host, target.port) in resolve_override:
        connect_host, connect_port = resolve_override[(target.host, target.port)]
    try:
        with trio.fail_after(idle_timeout):
            tcp = await trio.open_tcp_stream(connect_host, connect_port)
    except trio.TooSlowError:
        raise HttpError("timed out connecting") from None
    except OSError as exc:
        raise HttpError(f"cannot connect: {exc.strerror or exc}") from None
    if target.scheme == "http":
        return tcp
    if ssl_context is None:
        try:
            ssl_context = client_ssl_context()
        except ValueError as exc:
            await trio.aclose_forcefully(tcp)
            raise HttpError(str(exc)) from None
    # For an IP literal, Python sends no SNI and matches the certificate's IP SANs, which is
    # what RFC 8484 resolvers such as https://1.1.1.1 present.
    stream = trio.SSLStream(tcp, ssl_context, server_hostname=target.host)
    try:
        with trio.fail_after(idle_timeout):
            await stream.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise HttpError("timed out during the TLS handshake") from None
    except (trio.BrokenResourceError, OSError) as exc:
        await trio.aclose_forcefully(stream)
        reason = _describe_tls_failure(exc) or "connection closed during the TLS handshake"
        raise HttpError(reason) from None
    return stream


async def _request_once(
    target: _Target,
    url: str,
    method: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    *,
    ssl_context: ssl.SSLContext | None,
    idle_timeout: float,
    max_body: int,
    resolve_override: ResolveOverride | None,
    sink: BodySink | None,
) -> HttpResponse:
    stream = await _open_stream(target, ssl_context, idle_timeout, resolve_override)
    try:
        return await _exchange(
            stream, target, url, method, headers, body, idle_timeout, max_body, sink
        )
    except h11.RemoteProtocolError as exc:
        raise HttpError(f"invalid HTTP response ({exc})") from None
    except trio.TooSlowError:
        raise HttpError("timed out waiting for the server") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise HttpError(_describe_tls_failure(exc) or "connection lost") from None
    finally:
        await trio.aclose_forcefully(stream)


async def _exchange(
    stream: trio.abc.Stream,
    target: _Target,
    url: str,
    method: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    idle_timeout: float,
    max_body: int,
    sink: BodySink | None,
) -> HttpResponse:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
    all_headers = [
        ("Host", target.host_header),
        ("User-Agent", USER_AGENT),
        ("Connection", "close"),
        *headers,
    ]
    if body or method in ("POST", "PUT"):
        all_headers.append(("Content-Length", str(len(body))))
    out = conn.send(h11.Request(method=method, target=target.target, headers=all_headers))
    if body:
        out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    with trio.fail_after(idle_timeout):
        await stream.send_all(out)

    response: h11.Response | None = None
    chunks: list[bytes] = []
    received = 0
    to_sink = False
    truncate = False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            with trio.fail_after(idle_timeout):
                data = await stream.receive_some(RECEIVE_SIZE)
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            response = event
            ok = 200 <= event.status_code < 300
            to_sink = sink is not None and ok
            # In streaming mode a redirect or error body is only kept for the message.
            truncate = sink is not None and not ok
            length = _content_length(event)
            if not truncate and length is not None and length > max_body:
                raise HttpError(f"response too large ({length} bytes; the limit is {max_body})")
            continue
        if isinstance(event, h11.Data):
            received += len(event.data)
            if truncate and received > MAX_DISCARDED_BODY:
                break  # Connection: close, so abandoning the rest is fine
            if received > max_body:
                raise HttpError(f"response too large (over {max_body} bytes)")
            if to_sink:
                assert sink is not None
                await sink(bytes(event.data))
            else:
                chunks.append(bytes(event.data))
            continue
        if isinstance(event, h11.EndOfMessage):
            break
        if isinstance(event, h11.ConnectionClosed):  # pragma: no cover - h11 raises first
            raise HttpError("connection closed before the response ended")
    assert response is not None
    return HttpResponse(
        status=response.status_code,
        headers=tuple(
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in response.headers
        ),
        body=b"".join(chunks),
        url=url,
    )


def _content_length(response: h11.Response) -> int | None:
    for name, value in response.headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:  # pragma: no cover - h11 validates Content-Length
                return None
    return None


async def http_request(
    url: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    ssl_context: ssl.SSLContext | None = None,
    idle_timeout: float = 30.0,
    max_body: int = 1024 * 1024,
    max_redirects: int = 0,
    resolve_override: ResolveOverride | None = None,
    sink: BodySink | None = None,
) -> HttpResponse:
    """Send one request and return the response (body bounded by `max_body`).

    `ssl_context` defaults to ``client_ssl_context()`` (the OS trust store + ``TUNNEL_CA_BUNDLE``).
    With `max_redirects` > 0, 301/302/303/307/308 are followed (a 303 turns into a GET);
    an https -> http redirect is refused. With a `sink`, the body of the final 2xx response
    is handed to it chunk by chunk instead of being kept in memory; other responses
    (redirects, errors) keep at most 64 KiB for the caller's error message.
    `resolve_override` maps (host, port) from the URL to the address actually dialled, with
    TLS still verified against the URL's host: how tests point a public name at 127.0.0.1.
    """
    method = method.upper()
    current = url
    for _ in range(max_redirects + 1):
        target = _parse_url(current)
        response = await _request_once(
            target,
            current,
            method,
            headers,
            body,
            ssl_context=ssl_context,
            idle_timeout=idle_timeout,
            max_body=max_body,
            resolve_override=resolve_override,
            sink=sink,
        )
        location = response.header("location")
        if max_redirects == 0 or response.status not in REDIRECT_STATUSES or not location:
            return response
        following = urljoin(current, location.strip())
        if target.scheme == "https" and urlsplit(following).scheme.lower() != "https":
            raise HttpError(f"refusing a redirect from https to {following!r}")
        if response.status == 303:
            method, body = "GET", b""
        current = following
    raise HttpError(f"too many redirects (more than {max_redirects})")
