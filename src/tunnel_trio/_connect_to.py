"""``TUNNEL_CONNECT_TO``: dial another address for a host name, like curl's ``--connect-to``.

``TUNNEL_CONNECT_TO=quartz.trycloudflare.com:443:127.0.0.1:8443`` makes a member that joins a
``https://quartz.trycloudflare.com/...`` link open its TCP connection to 127.0.0.1:8443
instead of resolving the name. Everything else is unchanged: TLS still sends SNI for, and
verifies the certificate of, the name in the link, so the override can redirect a connection
but never weakens who it authenticates (and the Noise handshake authenticates the host on top).

It is for reaching a relay through an edge, mirror or test server that DNS does not point at:
the test suite runs `tunnel-mcp demo --transport cloudflared` against a fake cloudflared edge on
127.0.0.1 this way. Several entries are separated by commas; IPv6 addresses go in brackets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

CONNECT_TO_ENV = "TUNNEL_CONNECT_TO"

_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[^:\[\],\s]+)"
_ENTRY = re.compile(rf"^(?P<host>{_HOST}):(?P<port>\d{{1,5}}):(?P<to_host>{_HOST}):(?P<to_port>\d{{1,5}})$")

Overrides = dict[tuple[str, int], tuple[str, int]]


def _port(text: str, entry: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(
            f"{CONNECT_TO_ENV} entry {entry!r} has port {port}; ports are 1 to 65535"
        )
    return port


def parse_connect_to(value: str) -> Overrides:
    """``HOST:PORT:CONNECT_HOST:CONNECT_PORT[,...]`` -> {(host, port): (connect_host, port)}.

    Raises ValueError naming the bad entry and the expected form.
    """
    overrides: Overrides = {}
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(
                f"{CONNECT_TO_ENV} entry {entry!r} is not HOST:PORT:CONNECT_HOST:CONNECT_PORT "
                "(for example example.trycloudflare.com:443:127.0.0.1:8443); fix or unset it"
            )
        host = match["host"].strip("[]").lower()
        to_host = match["to_host"].strip("[]")
        overrides[(host, _port(match["port"], entry))] = (to_host, _port(match["to_port"], entry))
    return overrides


def connect_to_from_env(env: Mapping[str, str] | None = None) -> Overrides:
    """The overrides ``TUNNEL_CONNECT_TO`` asks for (empty when unset)."""
    if env is None:
        env = os.environ
    return parse_connect_to(env.get(CONNECT_TO_ENV, ""))
