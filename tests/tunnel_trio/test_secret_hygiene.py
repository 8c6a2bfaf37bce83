"""Secret hygiene, end to end: no link secret, resume ticket or Noise key ever reaches a log
record (at any level, tracebacks included), an exception the caller sees, a repr or a status.

One test drives real sessions on 127.0.0.1 through the flows that touch secrets (open, join,
say/listen, invite, leave, a used link, a wrong secret, a forged handshake, bad links, a
dropped connection and its resume, close) while spies in the protocol core record every secret
that comes into being: each handshake's psk (invite secrets and resume tickets) and ephemeral
private key, each Noise transport key, each ticket a member receives. At the end every one of
them, in every usual spelling (hex, base64url, base64, the body of its bytes repr, and prefixes),
is looked for in everything that was logged, raised, repr'd or reported.
"""

from __future__ import annotations

import base64
import logging
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import trio
from dropproxy import DropProxy
from transcripts import collect

from tunnel_trio._ws import WebSocketClosed, connect_websocket
from tunnel_trio.session import HostSession, MemberSession, join, open_host, relay_answers
from tunnel_trio.session_types import JoinRefusedError, NotOpenError, TunnelError
from tunnelproto import MAX_FRAME, JoinLink, MemberConnection, _channel, _frames, _member, _noise
from tunnelproto._link import ID_LEN, b64url, b64url_decode

FORMATTER = logging.Formatter("%(levelname)s %(name)s: %(message)s")


def _spellings(raw: bytes) -> set[str]:
    """The ways a secret usually ends up in text, including a truncated 'just the start'."""
    hexed = raw.hex()
    url = b64url(raw)
    std = base64.b64encode(raw).decode("ascii")
    body = repr(raw)[2:-1]  # b'...' without the quotes: also catches it inside a larger repr
    return {
        hexed,
        hexed.upper(),
        url,
        std,
        std.rstrip("="),
        body,
        hexed[:16],
        url[:16],
        std[:16],
        repr(list(raw))[1:-1],
    }


@dataclass
class Secrets:
    """Every secret seen, by its raw bytes, with where it came from."""

    found: dict[bytes, list[str]] = field(default_factory=dict)

    def add(self, raw: bytes | None, what: str) -> None:
        if raw is None:
            return
        assert isinstance(raw, bytes) and len(raw) == 32, (what, len(raw) if raw else raw)
        self.found.setdefault(raw, []).append(what)

    def add_link(self, link: str, what: str) -> None:
        secret_text = link.split("#", 1)[1]
        raw = b64url_decode(secret_text)
        self.add(raw, what)
        # The brief spellings, stated explicitly as well: the link's own text after '#',
        # the raw bytes in hex and as repr(bytes).
        assert secret_text in _spellings(raw) and raw.hex() in _spellings(raw)

    def needles(self) -> Iterator[tuple[str, str]]:
        for raw, whats in self.found.items():
            for spelling in _spellings(raw):
                yield spelling, " = ".join(sorted(set(whats)))


@dataclass
class Seen:
    """Everything a user, an agent or a log reader could get to see."""

    texts: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    exceptions: int = 0

    def repr_of(self, where: str, obj: object) -> None:
        # repr only: str() of a JoinLink *is* the link, by design (it is what gets forwarded).
        self.texts.append((f"repr({where})", repr(obj)))

    def exception(self, where: str, exc: BaseException) -> None:
        self.exceptions += 1
        self.texts.append((f"traceback({where})", "".join(traceback.format_exception(exc))))
        # The whole chain, a context hidden by `from None` included: it still rides along on
        # the exception object, for any handler that walks it.
        chain: BaseException | None = exc
        depth = 0
        while chain is not None and depth < 10:
            self.texts.append((f"str({where}, link {depth})", str(chain)))
            self.texts.append((f"repr({where}, link {depth})", repr(chain)))
            self.texts.append((f"args({where}, link {depth})", repr(chain.args)))
            chain = chain.__cause__ or chain.__context__
            depth += 1

    def status(self, where: str, session: HostSession | MemberSession) -> None:
        self.texts.append((f"status({where})", repr(session.status())))


def _spy_on_the_core(monkeypatch: pytest.MonkeyPatch, secrets: Secrets, seen: Seen) -> None:
    """Record each secret the protocol core creates or receives, on both sides."""
    hs_init = _noise.HandshakeState.__init__

    def handshake_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        hs_init(self, *args, **kwargs)
        secrets.add(self._psk, "a handshake psk (invite secret or resume ticket)")
        secrets.add(self._e_private, "a Noise ephemeral private key")

    channel_init = _channel.Channel.__init__

    def new_channel(self, send, recv, **kwargs):  # type: ignore[no-untyped-def]
        channel_init(self, send, recv, **kwargs)
        secrets.add(send._k, "a Noise transport key (send)")
        secrets.add(recv._k, "a Noise transport key (receive)")

    on_msg2 = _member.MemberConnection._on_msg2

    def member_on_msg2(self, data):  # type: ignore[no-untyped-def]
        try:
            on_msg2(self, data)
        finally:
            secrets.add(self._ticket, "a resume ticket a member received")

    decode = _frames.decode_frame

    def decode_frame(data):  # type: ignore[no-untyped-def]
        frame = decode(data)
        seen.repr_of(f"decoded {type(frame).__name__} frame", frame)
        return frame

    decode_batch = _frames.decode_frames

    def decode_frames(data):  # type: ignore[no-untyped-def]
        frames = decode_batch(data)  # batch/1: several frames in one message
        for frame in frames:
            seen.repr_of(f"decoded {type(frame).__name__} frame", frame)
        return frames

    monkeypatch.setattr(_noise.HandshakeState, "__init__", handshake_init)
    monkeypatch.setattr(_channel.Channel, "__init__", new_channel)
    monkeypatch.setattr(_member.MemberConnection, "_on_msg2", member_on_msg2)
    monkeypatch.setattr(_frames, "decode_frame", decode_frame)
    monkeypatch.setattr(_frames, "decode_frames", decode_frames)


def _via(link: str, port: int) -> str:
    parsed = JoinLink.parse(link)
    return str(JoinLink(f"http://127.0.0.1:{port}", parsed.tunnel_id, parsed.secret))


def _member_secrets(secrets: Secrets, member: MemberSession, who: str) -> None:
    """The resume ticket and the transport keys a member holds right now."""
    conn = member.guest.conn
    assert conn is not None
    state = conn.resume_state()
    assert state is not None
    secrets.add(state.ticket, f"{who}'s resume ticket (ResumeState)")
    secrets.add(conn._ticket, f"{who}'s resume ticket (MemberConnection)")
    assert conn._channel is not None
    secrets.add(conn._channel._send._k, f"{who}'s Noise send key")
    secrets.add(conn._channel._recv._k, f"{who}'s Noise receive key")


def _host_secrets(secrets: Secrets, host: HostSession) -> None:
    room = host.room
    for invite in room._invites.values():
        secrets.add(invite.secret, "an invite secret the room holds")  # None once used
        secrets.add(invite.psk, "an invite's Noise PSK the room holds")
    for seat in room._seats.values():
        for psk in seat.tickets.values():
            secrets.add(psk, f"a resume ticket's PSK of seat {seat.id}")
    for conn in room._conns.values():
        if conn.channel is not None:
            secrets.add(conn.channel._send._k, f"the room's send key for conn {conn.id}")
            secrets.add(conn.channel._recv._k, f"the room's receive key for conn {conn.id}")
        if conn.pending is not None:
            secrets.add(conn.pending.new_ticket, "a ticket pending confirmation")


def _reprs(seen: Seen, where: str, host: HostSession, members: dict[str, MemberSession]) -> None:
    seen.repr_of(f"{where}: host session", host)
    seen.repr_of(f"{where}: host relay", host.relay)
    seen.repr_of(f"{where}: room", host.room)
    seen.repr_of(f"{where}: room invites", list(host.room._invites.values()))
    seen.repr_of(f"{where}: room seats", list(host.room._seats.values()))
    seen.repr_of(f"{where}: room connections", list(host.room._conns.values()))
    seen.repr_of(f"{where}: initial invites", host.initial_invites)
    seen.status(f"{where}: host", host)
    for name, member in members.items():
        seen.repr_of(f"{where}: {name} session", member)
        seen.repr_of(f"{where}: {name} link", member.link)
        seen.repr_of(f"{where}: {name} guest", member.guest)
        seen.repr_of(f"{where}: {name} connection", member.guest.conn)
        if member.guest.conn is not None:
            seen.repr_of(f"{where}: {name} resume state", member.guest.conn.resume_state())
        seen.status(f"{where}: {name}", member)


async def _refused(seen: Seen, where: str, nursery: trio.Nursery, link: str) -> TunnelError:
    with pytest.raises(TunnelError) as info:
        await join(nursery, link, name="eve")
    seen.exception(where, info.value)
    return info.value


async def test_no_secret_reaches_logs_errors_reprs_or_status(nursery, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = Secrets()
    seen = Seen()
    with pytest.MonkeyPatch.context() as monkeypatch:
        _spy_on_the_core(monkeypatch, secrets, seen)
        await _drive_every_flow(nursery, secrets, seen)

    records = list(caplog.records)
    logged = [(f"log record {i}", FORMATTER.format(r)) for i, r in enumerate(records)]
    # The capture works (the drop is logged): otherwise this would prove nothing.
    assert any(r.name.startswith("tunnel_trio") for r in records)
    assert any("reconnecting" in text for _, text in logged)

    kinds = {what for whats in secrets.found.values() for what in whats}
    assert len(secrets.found) >= 20, kinds
    for kind in (
        "an initial invite",
        "ben's resume ticket (ResumeState)",
        "a Noise transport key (send)",
        "a Noise ephemeral private key",
        "a resume ticket a member received",
    ):
        assert any(k.startswith(kind) for k in kinds), (kind, kinds)
    assert seen.exceptions >= 8

    leaks = [
        f"{what} (as {spelling!r}) in {where}: {text[:500]!r}"
        for where, text in logged + seen.texts
        for spelling, what in secrets.needles()
        if spelling in text
    ]
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks[:20])


async def _drive_every_flow(nursery: trio.Nursery, secrets: Secrets, seen: Seen) -> None:
    host = await open_host(nursery, "keep the secrets secret", name="ana", invites=3)
    links = [invite.join_link for invite in host.initial_invites]
    for link in links:
        secrets.add_link(link, "an initial invite")
    parsed = JoinLink.parse(links[0])
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)

    # Join, one member through a proxy that can cut the connection, and talk.
    ben = await join(nursery, _via(links[0], proxy.port), name="ben")
    cat = await join(nursery, links[1], name="cat")
    members = {"ben": ben, "cat": cat}
    await ben.say("hello from ben")
    await host.say("hello from ana")
    last = await cat.say("hello from cat")
    for session in (host, ben, cat):
        assert [m.seq for m in await collect(session, last)] == list(range(1, last + 1))
    _member_secrets(secrets, ben, "ben")
    _member_secrets(secrets, cat, "cat")
    _host_secrets(secrets, host)
    _reprs(seen, "talking", host, members)

    # The link probe dials the relay (it must not send the secret anywhere).
    assert await relay_answers(links[0])

    # A used link, a wrong secret for the real tunnel id, a tunnel that does not exist.
    used = await _refused(seen, "join with a used link", nursery, links[0])
    assert isinstance(used, JoinRefusedError) and used.code == "used"
    wrong_secret = os.urandom(32)
    secrets.add(wrong_secret, "a wrong secret for the real tunnel id")
    wrong = str(JoinLink(parsed.base_url, parsed.tunnel_id, wrong_secret))
    refused = await _refused(seen, "join with a wrong secret", nursery, wrong)
    assert isinstance(refused, JoinRefusedError) and refused.code == "unknown-invite"
    no_tunnel = f"{parsed.base_url}/t/AAAAAAAAAAAAAAAA#{links[0].split('#')[1]}"
    await _refused(seen, "join with an unknown tunnel id", nursery, no_tunnel)

    # Malformed links that still carry (part of) a real secret.
    base, secret_text = links[2].split("#")
    for what, bad in {
        "cut short": links[2][:-4],
        "damaged": f"{base}#{secret_text[:-1]}!",
        "with a query": f"{base}?x=1#{secret_text}",
        "too long": links[2] + "A" * 2100,
        "too long a secret": links[2] + "AAAA",
    }.items():
        await _refused(seen, f"join with a link {what}", nursery, bad)

    # A forged handshake: the real invite id of an open invite, sealed with a wrong key.
    # The room fails it (it cannot decrypt) and must say nothing about the key it tried.
    real = JoinLink.parse(links[2])
    forger_secret = os.urandom(32)
    secrets.add(forger_secret, "a forger's secret")
    forger = MemberConnection(
        JoinLink(real.base_url, real.tunnel_id, forger_secret), "mallory", trio.current_time()
    )
    msg1 = forger.data_to_send()[0]
    forged = msg1[:1] + real.invite_id + msg1[1 + ID_LEN :]
    ws = await connect_websocket(real.websocket_url, max_message_size=MAX_FRAME)
    with trio.fail_after(5):
        await ws.send(forged)
        try:
            while True:
                await ws.receive()
        except WebSocketClosed as exc:
            seen.exception("the forged handshake's close", exc)
    await ws.aclose()

    # The invite survived the forgery; a third member joins with it, then leaves.
    dan = await join(nursery, links[2], name="dan")
    members["dan"] = dan
    _member_secrets(secrets, dan, "dan")
    await dan.say("dan here, leaving soon")
    await dan.close()

    # More invites: one used, one left pending (status shows only that it exists).
    more = host.invite(2)
    for invite in more:
        secrets.add_link(invite.join_link, "a minted invite")
    seen.repr_of("host.invite() result", more)
    eli = await join(nursery, more[0].join_link, name="eli")
    members["eli"] = eli
    _member_secrets(secrets, eli, "eli")
    _host_secrets(secrets, host)
    assert len(host.status().pending_invites) == 1
    _reprs(seen, "after invites", host, members)

    # Drop ben's connection; he resumes his seat with his ticket (and gets a new one).
    first = ben.guest.conn
    assert first is not None
    seen.repr_of("ben's resume state before the drop", first.resume_state())
    ben_id = ben.self_member.id
    proxy.drop_all()
    with trio.fail_after(10):
        while ben.guest.conn is first or ben.status().connection != "connected":
            seen.status("ben while reconnecting", ben)
            await trio.sleep(0.02)
    assert ben.self_member.id == ben_id
    last = await ben.say("ben is back")
    events = [(m.event, m.subject.name if m.subject else None) for m in await collect(host, last)]
    assert ("reconnected", "ben") in events
    assert ben.guest.conn.resumed_from is not None  # a real resume, with the old ticket
    _member_secrets(secrets, ben, "ben")
    _host_secrets(secrets, host)
    _reprs(seen, "after the resume", host, members)

    # Errors a caller can trigger on a live tunnel.
    with pytest.raises(TunnelError) as info:
        await host.listen(10**6, 0)
    seen.exception("listen beyond the last seq", info.value)
    with pytest.raises(TunnelError) as info:
        host.invite(0)
    seen.exception("invite(0)", info.value)

    # Close; everything after it is refused, and the relay is gone.
    await host.close("done")
    with trio.fail_after(10):
        for member in (ben, cat, eli):
            while not member.closed:
                await member.listen(member.status().last_seq, 1.0)
    _reprs(seen, "closed", host, members)
    with pytest.raises(NotOpenError) as closed_info:
        await ben.say("anyone?")
    seen.exception("say after close", closed_info.value)
    with pytest.raises(NotOpenError) as closed_info:
        host.invite(1)
    seen.exception("invite after close", closed_info.value)
    await _refused(seen, "join a closed tunnel", nursery, more[1].join_link)
    assert not await relay_answers(links[0])
    for member in (ben, cat, eli):
        await member.close()
