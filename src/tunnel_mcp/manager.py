"""The one tunnel session this server process holds, and its lifetime.

The MCP tools are thin: they validate, call the `TunnelManager`, and render the result. The
manager owns the trio nursery the session's background tasks live in (opened by the server's
lifespan, so it outlives any single tool call), keeps at most one session per process, and
tells interested parties (the `tunnel://transcript` resource) when the transcript grows.

`tunnel_trio.session` is imported lazily: the CLI (`--help`, `install-skill`) must work even
where the network layer cannot be imported.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Literal

import trio

from tunnel_mcp.approvals import Approvals
from tunnel_mcp.identity import default_display_name, sanitize_name
from tunnel_trio.errors import NotOpenError, TunnelError

if TYPE_CHECKING:
    from tunnel_trio.session import HostSession, MemberSession, RoomConfig

    Session = HostSession | MemberSession

log = logging.getLogger(__name__)

TransportName = Literal["cloudflared", "local", "direct", "url"]

NO_TUNNEL = "no open tunnel: call tunnel_open (to host) or tunnel_join (with a join link) first"
ALREADY_HOSTING = (
    "you already host tunnel {id}: keep using it, or call tunnel_close first (that ends the room "
    "for everyone) to open or join another"
)
ALREADY_IN = (
    "you are already in tunnel {id} as a member: keep using it (tunnel_listen, tunnel_say), or "
    "call tunnel_close first to leave it before joining or opening another"
)
CLOSED = (
    "the tunnel is closed: call tunnel_status to see why, or tunnel_open / tunnel_join to start "
    "a new one"
)
NOT_HOST = "only the host can {what}: you joined this tunnel as a member (ask the host's human)"
AWAITING = (
    "you joined tunnel {id}, but your human has not approved it yet: the tunnel stays out of "
    "reach until tunnel_join returns that they accepted (tunnel_close leaves it)"
)
OVER_FOR_YOU = (
    "{message}. This tunnel is over for you: call tunnel_status for details, or tunnel_open / "
    "tunnel_join to start another"
)

#: What a first tunnel_open or tunnel_join needs beyond the server itself (about 0.1 s of imports:
#: the protocol core, PyNaCl, wsproto, h11). `preload_session_layer` loads it in a worker
#: thread once the server is up, so neither the MCP handshake nor the first join waits for it.
SESSION_LAYER = ("tunnel_trio.session", "tunnel_trio.transports")
#: Leave the handshake and the first listings to the server before competing for the CPU.
PRELOAD_AFTER = 0.5


async def preload_session_layer(delay: float = PRELOAD_AFTER) -> None:
    """Import the session layer in the background (best effort: a tool imports it anyway)."""
    await trio.sleep(delay)

    def load() -> None:
        for name in SESSION_LAYER:
            importlib.import_module(name)

    try:
        await trio.to_thread.run_sync(load, abandon_on_cancel=True)
    except Exception as exc:  # the first tool call imports it again and reports the error
        log.debug("preloading the session layer failed: %s", type(exc).__name__)
    else:
        log.debug("session layer loaded")


#: Members a room holds, the host included: the protocol's default and maximum (tunnelproto's
#: DEFAULT_CAPACITY and MAX_CAPACITY, repeated here so that starting the server does not import
#: the protocol layer; a test keeps them equal).
DEFAULT_ROOM_CAPACITY = 16
MAX_ROOM_CAPACITY = 64
CAPACITY_ENV = "TUNNEL_ROOM_CAPACITY"


def room_capacity(env: Mapping[str, str] = os.environ) -> int:
    """How many members a room this server hosts holds (`TUNNEL_ROOM_CAPACITY`, else 16).

    Raises ValueError, naming the variable, for anything but a whole number 2..64.
    """
    raw = env.get(CAPACITY_ENV, "").strip()
    if not raw:
        return DEFAULT_ROOM_CAPACITY
    capacity = int(raw) if raw.isascii() and raw.isdigit() else 0
    if not 2 <= capacity <= MAX_ROOM_CAPACITY:
        raise ValueError(
            f"{CAPACITY_ENV}={raw!r} is not a room size: set it to a whole number from 2 to "
            f"{MAX_ROOM_CAPACITY} (members including the host; default {DEFAULT_ROOM_CAPACITY}), "
            "or unset it"
        )
    return capacity


#: What chat and markdown put around a pasted link: white space (and zero-width spaces), quotes,
#: backticks, brackets, emphasis, and the sentence's own punctuation. A join link ends with its
#: secret, which is base64url (A-Z a-z 0-9 - _), and starts with its scheme, so none of these
#: can be part of a link's first or last character: trimming them from the two ends never
#: changes a link, and nothing inside the link is touched. (tunnelproto's parser keeps the
#: spec's narrower rule 1; chat decoration is this layer's business.)
_PASTED_AROUND = " \t\r\n\u00a0\u200b\ufeff\"'`<>()[]{}*"
_PASTED_AFTER = _PASTED_AROUND + ".,;:!?"


def unwrap_pasted_link(text: str) -> str:
    """A join link as pasted in chat, without the decoration around it (see above)."""
    trimmed = text.rstrip(_PASTED_AFTER).lstrip(_PASTED_AROUND)
    # A whole line of decoration (or an empty paste) goes to the parser as it came, which
    # then says what is missing.
    return trimmed or text.strip()


#: How long one background wait for new transcript entries lasts before it starts over.
_WATCH_SLICE = 30.0

TranscriptListener = Callable[[], Awaitable[None]]


class TunnelManager:
    """Holds the current session (host or member) for one MCP connection."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        display_name: Callable[[], str] = default_display_name,
        room_config: RoomConfig | None = None,
        capacity: int | None = None,
    ) -> None:
        self._nursery = nursery
        self._display_name = display_name
        self._default_name: str | None = None
        self._room_config = room_config  # None: the protocol's defaults (tests shorten timers)
        self._capacity = capacity  # with room_config None; None: $TUNNEL_ROOM_CAPACITY
        self._session: Session | None = None
        #: A join that waits for the human's approval (see `join`); kept once it closed so the
        #: tool can still say why.
        self._held: MemberSession | None = None
        self._watch_scope: trio.CancelScope | None = None
        #: The human's approvals for this connection (its questions, the tunnel's policy).
        self.approvals = Approvals()
        self._lock = trio.Lock()
        self._listeners: list[TranscriptListener] = []
        #: Whether anyone wants to hear of new transcript entries (see `watch_transcript`).
        self._watched = False
        self._watch_wanted = trio.Event()

    # -- state -----------------------------------------------------------------------------

    @property
    def session(self) -> Session | None:
        """The current session, open or closed; None before the first open/join."""
        return self._session

    def current(self) -> Session:
        """The current session, even if closed (status and listen still work on it)."""
        held = self.holding
        if held is not None:
            raise TunnelError(AWAITING.format(id=held.tunnel_id))
        if self._session is None:
            raise NotOpenError(NO_TUNNEL)
        return self._session

    def current_open(self) -> Session:
        session = self.current()
        if session.closed:
            # Say what ended it when that was not our own doing (the host removed us, ...).
            message = session.status().closed_message
            raise NotOpenError(OVER_FOR_YOU.format(message=message) if message else CLOSED)
        return session

    def host(self, what: str = "invite") -> HostSession:
        session = self.current_open()
        if session.role != "host":
            raise TunnelError(NOT_HOST.format(what=what))
        return session

    def _ensure_free(self) -> None:
        held = self.holding
        if held is not None:
            raise TunnelError(AWAITING.format(id=held.tunnel_id))
        session = self._session
        if session is not None and not session.closed:
            wording = ALREADY_HOSTING if session.role == "host" else ALREADY_IN
            raise TunnelError(wording.format(id=session.tunnel_id))

    async def _name(self, name: str | None) -> str:
        if name is not None:
            cleaned = sanitize_name(name)
            if cleaned:
                return cleaned
        if self._default_name is None:
            # `git config` is a subprocess: keep it off the event loop, and ask once.
            self._default_name = await trio.to_thread.run_sync(self._display_name)
        return self._default_name

    # -- lifecycle -------------------------------------------------------------------------

    async def open(
        self,
        goal: str,
        *,
        invites: int = 1,
        transport: TransportName | None = None,
        public_url: str | None = None,
        bind: str | None = None,
        name: str | None = None,
    ) -> HostSession:
        from tunnel_trio.session import RoomConfig, open_host
        from tunnel_trio.transports import make_transport

        if not goal.strip():
            raise TunnelError("the goal is empty: say in one sentence what the agents should achieve")
        async with self._lock:
            self._ensure_free()
            try:
                chosen = make_transport(transport, public_url=public_url, bind=bind)
                config = self._room_config or RoomConfig(capacity=self._capacity or room_capacity())
            except ValueError as exc:
                raise TunnelError(str(exc)) from None
            session = await open_host(
                self._nursery,
                goal,
                name=await self._name(name),
                invites=invites,
                transport=chosen,
                config=config,
            )
            self._adopt(session)
            log.info("opened tunnel %s as host", session.tunnel_id)
            return session

    async def join(self, link: str, *, admit_within: float, name: str | None = None) -> MemberSession:
        """Join with `link` and hold the member until the human approved: until `admit` no tool
        reaches it (nothing is said, nothing is read), and unless admitted within
        `admit_within` seconds it leaves (the host sees `left`)."""
        from tunnel_trio.session import join

        async with self._lock:
            self._ensure_free()
            session = await join(self._nursery, unwrap_pasted_link(link), name=await self._name(name))
            self._held = session
            self._nursery.start_soon(self._leave_unless_admitted, session, admit_within)
            log.info("joined tunnel %s as member %d", session.tunnel_id, session.self_member.id)
            return session

    @property
    def holding(self) -> MemberSession | None:
        """The join that waits for the human's approval right now, if any."""
        held = self._held
        return held if held is not None and not held.closed else None

    def held(self, link: str) -> MemberSession | None:
        """The join of `link` that waits for the human's approval (or waited, and left)."""
        from tunnelproto import JoinLink, LocalProtocolError

        held = self._held
        if held is None:
            return None
        try:
            asked = JoinLink.parse(unwrap_pasted_link(link))
        except LocalProtocolError:
            return None
        same = asked.tunnel_id == held.link.tunnel_id and asked.secret == held.link.secret
        return held if same else None

    def admit(self, session: MemberSession) -> None:
        """The human approved the held join: from now on it is the current tunnel."""
        if self._held is session:
            self._held = None
        if session.closed:
            raise NotOpenError(CLOSED)
        self._adopt(session)
        log.info("admitted into tunnel %s", session.tunnel_id)

    async def withdraw(self, session: MemberSession) -> None:
        """The human did not approve the held join: leave (the host sees `left`)."""
        if self._held is session:
            self._held = None
        await session.close(None)
        log.info("left tunnel %s: not approved", session.tunnel_id)

    async def _leave_unless_admitted(self, session: MemberSession, within: float) -> None:
        await trio.sleep(within)
        if self._held is session and not session.closed:
            log.info("left tunnel %s: not approved in time", session.tunnel_id)
            await session.close(None)

    async def close(self, summary: str | None = None) -> Session:
        """Close the current session (host: ends the room for everyone; member: leaves), or
        leave a join still waiting for the human's approval."""
        held = self.holding
        if held is not None:
            await self.withdraw(held)
            return held
        session = self.current()
        await session.close(summary)
        await self._notify()
        return session

    async def aclose(self) -> None:
        """Shutdown path: close whatever is open. Never raises a TunnelError."""
        held, self._held = self._held, None
        if held is not None and not held.closed:
            try:
                await held.close(None)
            except TunnelError as exc:
                log.warning("leaving the tunnel on shutdown failed: %s", exc)
        session = self._session
        if session is None or session.closed:
            return
        try:
            await session.close(None)
        except TunnelError as exc:
            log.warning("closing the tunnel on shutdown failed: %s", exc)
        log.info("closed tunnel %s on shutdown", session.tunnel_id)

    # -- transcript change notifications ---------------------------------------------------

    def add_transcript_listener(self, listener: TranscriptListener) -> None:
        self._listeners.append(listener)

    def watch_transcript(self, wanted: bool) -> None:
        """Say whether anyone wants the listeners told of new transcript entries (the server:
        while the transcript resource has subscribers). Following the transcript costs every
        message a second wake-up and page in this process (about a quarter of its CPU for a
        message), so the manager follows it only while wanted; once wanted again, the
        listeners are told at once (what came meanwhile) and then of every new entry."""
        self._watched = wanted
        if wanted:
            self._watch_wanted.set()
        elif self._watch_wanted.is_set():
            self._watch_wanted = trio.Event()

    def _adopt(self, session: Session) -> None:
        if self._watch_scope is not None:
            self._watch_scope.cancel()
        self._session = session
        scope = trio.CancelScope()
        self._watch_scope = scope
        self._nursery.start_soon(self._watch, session, scope)

    async def _watch(self, session: Session, scope: trio.CancelScope) -> None:
        # One long-poll at a time over the session's own listen(), so resource subscribers learn
        # about new entries without the agent having to call tunnel_listen.
        with scope:
            since = 0
            await self._notify()
            while not session.closed:
                if not self._watched:
                    await self._watch_wanted.wait()
                    since = session.newest(max_messages=1).last_seq
                    await self._notify()  # whatever came while nobody listened
                    continue
                try:
                    # notices=False: local notices are the agent's, for its tunnel_listen.
                    result = await session.listen(
                        since, _WATCH_SLICE, include_own=True, notices=False
                    )
                except TunnelError:
                    break
                if result.messages:
                    since = max(since, result.last_seq)
                    await self._notify()
                elif not result.timed_out:
                    # Nothing new but not a timeout either (e.g. closing): don't spin.
                    since = max(since, result.last_seq)
                    await trio.sleep(1)
            await self._notify()

    async def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                await listener()
            except Exception:  # a broken subscriber must never take the tunnel down
                log.debug("transcript listener failed", exc_info=True)

