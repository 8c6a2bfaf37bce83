"""How the relay on this machine becomes reachable by the other agents.

A `Transport` says where the relay must listen (`bind_address`) and, once it listens, turns
the local port into the public base URL handed out in links (`start`). Four of them:

* ``cloudflared`` (default): a throwaway Cloudflare Quick Tunnel, no account, no open port.
* ``local``: 127.0.0.1 only; both agents on this machine (demos, tests).
* ``direct``: listen on a LAN address the user names; others dial it directly.
* ``url``: the user runs their own reverse proxy (ngrok, Tailscale Funnel, ``ssh -R``) and
  tells us its public URL.

Every public URL is ``http(s)://host[:port]`` with no trailing slash; ws/wss given to ``url``
are normalised to http/https, so callers handle one form.
"""

from __future__ import annotations

import abc
import ipaddress
import logging
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import trio

from ._cloudflared import (
    QUICK_TUNNEL_CONFIG,
    QuickTunnel,
    ensure_cloudflared,
    tunnel_home,
    wait_until_resolvable,
)
from ._doh import DohClient, doh_enabled

logger = logging.getLogger(__name__)

TRANSPORT_ENV = "TUNNEL_TRANSPORT"
TRANSPORT_NAMES = ("cloudflared", "local", "direct", "url")
LOOPBACK = "127.0.0.1"


class Transport(abc.ABC):
    name: str
    warning: str | None = None  # something the user should hear, e.g. a slow tunnel
    public_url: str | None = None  # set by start()

    def __init__(self) -> None:
        self.warning = None
        self.public_url = None
        self._stopped = False

    @abc.abstractmethod
    def bind_address(self) -> tuple[str, int]:
        """Where the relay must listen: (host, port); port 0 means any free port."""

    @abc.abstractmethod
    async def start(self, nursery: trio.Nursery, local_port: int) -> str:
        """Make the relay listening on `local_port` reachable; return its public base URL."""

    async def stop(self) -> None:
        """Tear down whatever start() set up. Idempotent; leaves no child process."""
        self._stopped = True

    def alive(self) -> bool:
        """False once the transport has died (e.g. cloudflared exited) or was stopped."""
        return not self._stopped


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _quoted(value: str) -> str:
    """`value` quoted for an error message, or nothing when it may hold a secret.

    A join link (its secret follows '#') or user info (a password before '@') pasted into the
    wrong option must not be echoed back into the agent's transcript and the client's logs.
    """
    return "" if "#" in value or "@" in value else f" {value!r}"


def parse_bind(bind: str, *, what: str = "bind") -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port); host must be an IP address."""
    text = bind.strip()
    shown = _quoted(bind)
    example = f"pass {what} as an IP address, e.g. 192.168.1.20 or 192.168.1.20:8765"
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"invalid {what}{shown}: missing ']'; {example}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"invalid {what}{shown}; {example}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    port = 0
    if port_text:
        # ASCII digits only: int() also reads '²' (and fails) or '٣' (and succeeds).
        digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
        if not digits or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"invalid {what}{shown}: the port must be 0-65535; {example}")
        port = int(port_text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        named = repr(host) if shown else "the host"
        raise ValueError(f"invalid {what}{shown}: {named} is not an IP address; {example}") from None
    return str(address), port


class LocalTransport(Transport):
    """Loopback only: the URL works on this machine and nowhere else."""

    name = "local"

    def bind_address(self) -> tuple[str, int]:
        return (LOOPBACK, 0)

    async def start(self, nursery: trio.Nursery, local_port: int) -> str:
        self.public_url = f"http://{LOOPBACK}:{local_port}"
        return self.public_url


class DirectTransport(Transport):
    """Listen on a LAN address the user gives; others connect to it directly (plain http)."""

    name = "direct"

    def __init__(self, bind: str) -> None:
        super().__init__()
        host, port = parse_bind(bind)
        if ipaddress.ip_address(host).is_unspecified:
            raise ValueError(
                f"invalid bind {bind!r}: {host} listens everywhere but cannot be handed out as "
                "a link; pass the LAN address the others will dial, e.g. 192.168.1.20"
            )
        self.host, self.port = host, port

    def bind_address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def start(self, nursery: trio.Nursery, local_port: int) -> str:
        self.public_url = f"http://{_host_for_url(self.host)}:{local_port}"
        return self.public_url


def normalize_public_url(public_url: str) -> str:
    """``scheme://host[:port]`` with http/https (ws/wss mapped), lowercased, default port dropped.

    Raises ValueError for anything else: userinfo, a path, a query or a fragment cannot be
    carried into links, and guessing would hand out links that do not work.
    """
    text = public_url.strip()
    shown = _quoted(public_url)
    hint = (
        "pass publicUrl as the base URL your reverse proxy serves, e.g. https://example.ngrok.app"
    )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid publicUrl{shown}: {exc}; {hint}") from None
    scheme = {"http": "http", "https": "https", "ws": "http", "wss": "https"}.get(
        parts.scheme.lower()
    )
    if scheme is None:
        raise ValueError(f"invalid publicUrl{shown}: use http, https, ws or wss; {hint}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"invalid publicUrl: it must not contain a user name or password; {hint}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(
            f"invalid publicUrl{shown}: no path, query or fragment is supported; {hint}"
        )
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"invalid publicUrl{shown}: no host name; {hint}")
    default_port = 443 if scheme == "https" else 80
    netloc = _host_for_url(host)
    if port is not None and port != default_port:
        netloc += f":{port}"
    return f"{scheme}://{netloc}"


class UrlTransport(Transport):
    """The user's own reverse proxy forwards `public_url` to our local port.

    `bind` ("127.0.0.1:8765") fixes the local port so the proxy can be configured ahead of
    time; without it the port is ephemeral and reported when the relay starts.
    """

    name = "url"

    def __init__(self, public_url: str, *, bind: str | None = None) -> None:
        super().__init__()
        self.normalized_url = normalize_public_url(public_url)
        self.host, self.port = parse_bind(bind) if bind else (LOOPBACK, 0)

    def bind_address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def start(self, nursery: trio.Nursery, local_port: int) -> str:
        logger.info(
            "transport=url: %s must forward to %s:%d",
            self.normalized_url,
            _host_for_url(self.host),
            local_port,
        )
        self.public_url = self.normalized_url
        if self.port == 0:
            # The port was ephemeral, so the user cannot have configured their proxy for it
            # yet: the status (and tunnel_open's result) must say where to point it.
            self.warning = (
                f"configure your reverse proxy to forward {self.normalized_url} to "
                f"http://{_host_for_url(self.host)}:{local_port} (or pass bind to fix the port)"
            )
        return self.public_url


class CloudflaredTransport(Transport):
    """A Cloudflare Quick Tunnel: ``https://<words>.trycloudflare.com`` -> 127.0.0.1:<port>.

    `attempts`/`attempt_timeout` go to QuickTunnel; `readiness_budget` is how long start()
    waits (through DoH) for the new name to resolve before returning with a `warning`.
    """

    name = "cloudflared"

    def __init__(
        self,
        *,
        env: Mapping[str, str] = os.environ,
        attempts: int = 3,
        attempt_timeout: float = 30.0,
        readiness_budget: float = 60.0,
        doh: DohClient | None = None,
    ) -> None:
        super().__init__()
        self._env = env
        self._attempts = attempts
        self._attempt_timeout = attempt_timeout
        self._readiness_budget = readiness_budget
        self._doh = doh
        self._tunnel: QuickTunnel | None = None

    def bind_address(self) -> tuple[str, int]:
        return (LOOPBACK, 0)

    async def start(self, nursery: trio.Nursery, local_port: int) -> str:
        if self._tunnel is not None:
            raise RuntimeError("CloudflaredTransport.start() may only be called once")
        executable = await ensure_cloudflared(env=self._env)
        self._tunnel = QuickTunnel(
            executable,
            attempts=self._attempts,
            attempt_timeout=self._attempt_timeout,
            config_file=tunnel_home(self._env) / QUICK_TUNNEL_CONFIG,
        )
        url = await self._tunnel.start(nursery, local_port)
        try:
            await self._wait_for_dns(url)
        except BaseException:
            await self.stop()
            raise
        self.public_url = url
        return url

    async def _wait_for_dns(self, url: str) -> None:
        hostname = urlsplit(url).hostname
        assert hostname is not None
        if not doh_enabled(self._env):
            self.warning = (
                f"{url} was just created; with DNS-over-HTTPS off its name was not checked, "
                "so it may take a minute to become reachable"
            )
            return
        doh = self._doh if self._doh is not None else DohClient(env=self._env)
        if not await wait_until_resolvable(hostname, doh, self._readiness_budget, env=self._env):
            self.warning = (
                f"{url} did not appear in DNS within {self._readiness_budget:g} s; it may take "
                "another minute to become reachable"
            )

    async def stop(self) -> None:
        await super().stop()
        if self._tunnel is not None:
            await self._tunnel.stop()

    def alive(self) -> bool:
        return self._tunnel is not None and self._tunnel.alive() and super().alive()


def make_transport(
    name: str | None,
    *,
    public_url: str | None = None,
    bind: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> Transport:
    """The transport called `name` (None: ``TUNNEL_TRANSPORT``, else cloudflared).

    Raises ValueError, saying what to pass, for an unknown name, a missing publicUrl (url) or
    bind (direct), and for options the chosen transport would silently ignore.
    """
    chosen = (name if name is not None else env.get(TRANSPORT_ENV, "")).strip().lower()
    chosen = chosen or "cloudflared"
    if chosen not in TRANSPORT_NAMES:
        if name is None:  # it came from the environment: say where, or nobody finds it
            raise ValueError(
                f"{TRANSPORT_ENV}={chosen!r} is not a transport: set it to one of "
                f"{', '.join(TRANSPORT_NAMES)}, or unset it (cloudflared), or pass transport"
            )
        raise ValueError(f"unknown transport {chosen!r}: use one of {', '.join(TRANSPORT_NAMES)}")
    if public_url is not None and chosen != "url":
        raise ValueError(f"publicUrl only applies to transport=url (not {chosen})")
    if bind is not None and chosen not in ("direct", "url"):
        raise ValueError(f"bind only applies to transport=direct or url (not {chosen})")
    if chosen == "url":
        if not public_url:
            raise ValueError(
                "transport=url needs the public URL of your reverse proxy: pass publicUrl, "
                "e.g. https://example.ngrok.app"
            )
        return UrlTransport(public_url, bind=bind)
    if chosen == "direct":
        if not bind:
            raise ValueError(
                "transport=direct needs the LAN address to listen on: pass bind, "
                "e.g. 192.168.1.20 or 192.168.1.20:8765"
            )
        return DirectTransport(bind)
    if chosen == "local":
        return LocalTransport()
    return CloudflaredTransport(env=env)
