"""The errors the sessions raise to their callers (also importable from `session_types`).

A module of their own: the MCP server's manager catches and raises them, and it is imported
before the server answers the client's handshake, which should not wait for the session
types' twenty dataclasses (~11 ms).
"""

from __future__ import annotations


class TunnelError(Exception):
    """An error a user (or an agent) can act on. The message says what to do next.

    Messages never contain secrets, so they are safe to show and to log.
    """


class NotOpenError(TunnelError):
    """The session is closed (or was never open)."""


class SayQueuedError(TunnelError):
    """`say()` could not get the host's confirmation in time, but the message is not lost: it is
    queued and goes out once the connection is back (`send()` reports this as a receipt)."""


class JoinRefusedError(TunnelError):
    """The host refused the join; `code` is the refusal code from the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
