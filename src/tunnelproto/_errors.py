"""The two error types of the core, after h11.

`LocalProtocolError`: the caller misused the API (said something while closed, minted more seats
than the room has, a chat text over the limit). Fix the calling code, or tell the user.

`RemoteProtocolError`: the peer sent something wrong. Anything that arrives from the network can
only ever raise this one (the fuzz targets check it); the connection it arrived on is then dead,
and nothing else in the room is affected.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class. `code` is a short machine-readable reason (also used on the wire)."""

    def __init__(self, msg: str, code: str = "protocol") -> None:
        super().__init__(msg)
        self.code = code


class LocalProtocolError(ProtocolError):
    """The local caller did something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer did something the protocol does not allow."""
