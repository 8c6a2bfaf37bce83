"""The verification phrase and removing a member, through real sessions on 127.0.0.1."""

from __future__ import annotations

import logging
import re

import pytest
import trio
from dropproxy import DropProxy
from transcripts import collect

from tunnel_trio.session import HostSession, MemberSession, join, open_host
from tunnel_trio.session_types import NotOpenError, TunnelError
from tunnelproto import JoinLink
from tunnelproto._phrase import wordlist

FORMATTER = logging.Formatter("%(levelname)s %(name)s: %(message)s")


def _via(link: str, port: int) -> str:
    parsed = JoinLink.parse(link)
    return str(JoinLink(f"http://127.0.0.1:{port}", parsed.tunnel_id, parsed.secret))


def _row(session: HostSession | MemberSession, member_id: int):  # type: ignore[no-untyped-def]
    (row,) = [m for m in session.status().members if m.id == member_id]
    return row


async def _until(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def _joined(nursery: trio.Nursery, host: HostSession, link: str, name: str) -> MemberSession:
    """Join, and wait until the host has seated the member (its ack confirmed the join): a
    join returns at the welcome, a moment before."""
    member = await join(nursery, link, name=name)
    await _until(lambda: member.self_member.id in {m.id for m in host.status().members})
    return member


class GatedProxy(DropProxy):
    """A DropProxy that can also hold new connections at the door (a network that is down)."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.up = trio.Event()
        self.up.set()

    def go_down(self) -> None:
        self.up = trio.Event()
        self.drop_all()

    async def _handle(self, client: trio.SocketStream) -> None:
        await self.up.wait()
        await super()._handle(client)


async def test_both_ends_see_the_same_phrase_and_only_the_host_sees_all(nursery):
    host = await open_host(nursery, "check the phrase", name="ana", invites=2)
    link_b, link_c = (i.join_link for i in host.initial_invites)
    ben = await _joined(nursery, host, link_b, "ben")
    cy = await _joined(nursery, host, link_c, "cy")
    # Seated at the host is not yet in ben's roster: that takes the roster's trip to ben.
    await _until(lambda: cy.self_member.id in {m.id for m in ben.status().members})
    for member in (ben, cy):
        words = (member.phrase or "").split(" ")
        assert len(words) == 4 and all(w in wordlist() for w in words)
        # The member's own row shows its phrase; the host's status shows the same words.
        assert _row(member, member.self_member.id).phrase == member.phrase
        assert _row(host, member.self_member.id).phrase == member.phrase
    assert ben.phrase != cy.phrase
    assert _row(host, host.self_member.id).phrase is None
    # A member sees no one else's phrase.
    assert _row(ben, cy.self_member.id).phrase is None
    assert _row(ben, host.self_member.id).phrase is None

    last = await host.say("hello")
    joined = [m for m in await collect(host, last) if m.event == "joined"]
    assert {m.subject.id: m.phrase for m in joined} == {
        ben.self_member.id: ben.phrase,
        cy.self_member.id: cy.phrase,
    }
    # The members' copies of the same events carry no phrase: the room never sends one.
    for member in (ben, cy):
        seen = [m for m in await collect(member, last) if m.event == "joined"]
        assert seen and all(m.phrase is None for m in seen)
    # Status reprs (what a log line would print) hide the phrases.
    for session in (host, ben, cy):
        for phrase in (ben.phrase, cy.phrase):
            assert phrase and phrase not in repr(session.status())
    await host.close()


async def test_the_phrase_survives_a_dropped_connection(nursery):
    host = await open_host(nursery, "keep the phrase", name="ana")
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)
    ben = await _joined(nursery, host, _via(host.initial_invites[0].join_link, proxy.port), "ben")
    phrase = ben.phrase
    first = ben.guest.conn
    proxy.drop_all()
    await _until(lambda: ben.guest.conn is not first and ben.status().connection == "connected")
    assert ben.guest.conn is not None and ben.guest.conn.resumed_from is not None
    assert ben.phrase == ben.guest.conn.phrase == phrase
    assert _row(host, ben.self_member.id).phrase == phrase
    assert ben.status().warnings == []
    await host.close()


async def test_the_host_removes_a_member(nursery):
    host = await open_host(nursery, "remove one", name="ana", invites=2)
    link_b, link_c = (i.join_link for i in host.initial_invites)
    ben = await _joined(nursery, host, link_b, "ben")
    cy = await _joined(nursery, host, link_c, "cy")
    await ben.say("hi from ben")
    removed = host.remove(ben.self_member.id, "the phrase did not match")
    assert (removed.event, removed.subject.name, removed.text) == (
        "removed",
        "ben",
        "the phrase did not match",
    )
    assert [m.name for m in host.status().members] == ["ana", "cy"]

    # Ben's session ends for good, and every call says why.
    await _until(lambda: ben.closed)
    status = ben.status()
    assert status.closed_reason == "removed" and status.connection == "closed"
    assert status.closed_message == (
        "the host removed you from the room (the host's reason: the phrase did not match)"
    )
    with pytest.raises(NotOpenError) as info:
        await ben.say("let me back")
    assert "removed you" in str(info.value) and "the phrase did not match" in str(info.value)
    assert "new link" in str(info.value)
    result = await ben.listen(0, 5.0)
    assert not result.timed_out  # a closed session never makes its agent wait
    assert [(m.event, m.text) for m in result.messages if m.kind == "event"][-1] == (
        "removed",
        "the phrase did not match",
    )
    # Cy saw it too, in order, and goes on.
    events = [(m.event, m.subject.name if m.subject else None) for m in await collect(cy, removed.seq)]
    assert events[-1] == ("removed", "ben")
    assert await cy.say("carry on") == removed.seq + 1
    # Ben's link is spent.
    with pytest.raises(TunnelError) as used:
        await join(nursery, link_b, name="ben again")
    assert "used" in str(used.value)
    await host.close()


async def test_a_member_removed_while_away_is_told_when_it_comes_back(nursery):
    host = await open_host(nursery, "remove the absent", name="ana")
    proxy = GatedProxy(host.relay.port)
    await nursery.start(proxy.run)
    ben = await _joined(nursery, host, _via(host.initial_invites[0].join_link, proxy.port), "ben")
    ben_id = ben.self_member.id
    proxy.go_down()
    await _until(lambda: not _row(host, ben_id).connected)
    host.remove(ben_id, "you went quiet")
    assert not ben.closed  # ben does not know yet: he is trying to resume
    proxy.up.set()
    await _until(lambda: ben.closed)
    assert ben.closed_reason == "removed"
    assert ben.status().closed_message == "the host removed you from the room"
    with pytest.raises(NotOpenError) as info:
        await ben.say("back")
    assert "removed you" in str(info.value)
    await host.close()


async def test_what_the_host_cannot_remove(nursery):
    host = await open_host(nursery, "remove errors", name="ana")
    ben = await _joined(nursery, host, host.initial_invites[0].join_link, "ben")
    with pytest.raises(TunnelError, match="is you, the host"):
        host.remove(host.self_member.id)
    with pytest.raises(TunnelError, match="there is no member 99"):
        host.remove(99)
    with pytest.raises(TunnelError, match="whole number"):
        host.remove("2")  # type: ignore[arg-type]
    host.remove(ben.self_member.id)
    with pytest.raises(TunnelError, match=r"member 2 \(ben\) is no longer in the room"):
        host.remove(ben.self_member.id)
    await host.close()
    with pytest.raises(NotOpenError):
        host.remove(ben.self_member.id)


async def test_phrases_never_reach_the_logs(nursery, caplog):
    """Like the secret hygiene test: drive joins, a resume, statuses, listens and a removal
    with every logger at DEBUG, then look for every phrase in every log record."""
    caplog.set_level(logging.DEBUG)
    host = await open_host(nursery, "phrases stay out of logs", name="ana", invites=2)
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)
    link_b, link_c = (i.join_link for i in host.initial_invites)
    ben = await _joined(nursery, host, _via(link_b, proxy.port), "ben")
    cy = await _joined(nursery, host, link_c, "cy")
    await ben.say("hello")
    first = ben.guest.conn
    proxy.drop_all()
    await _until(lambda: ben.guest.conn is not first and ben.status().connection == "connected")
    for session in (host, ben, cy):
        session.status()
        await session.listen(0, 0.0)
    phrases = [ben.phrase, cy.phrase]
    host.remove(cy.self_member.id, "done")
    await _until(lambda: cy.closed)
    await host.close()
    await _until(lambda: ben.closed)

    records = [FORMATTER.format(r) for r in caplog.records]
    assert any("reconnecting" in text for text in records)  # the capture works
    for phrase in phrases:
        assert phrase is not None
        # The words in order, whatever joins them (spaces, dashes, quotes and commas of a repr).
        pattern = re.compile(r"\W+".join(phrase.split(" ")))
        leaks = [text for text in records if pattern.search(text)]
        assert not leaks, leaks[:3]


async def test_a_fresh_rejoin_brings_a_new_phrase_and_says_so(nursery):
    """The member's first confirmation is lost: the room never seated it, so its resume is
    refused as unknown and it joins afresh with its link. That new seat has a new phrase: the
    member's status shows it, agreeing with the host, and warns that it changed."""
    host = await open_host(nursery, "goal", name="ana")
    proxy = DropProxy(host.relay.port)
    await nursery.start(proxy.run)
    real_receive = host.room.receive
    seen: dict[int, int] = {}

    def receive(conn, data, now):  # type: ignore[no-untyped-def]
        seen[conn] = seen.get(conn, 0) + 1
        if conn == 1 and seen[conn] == 2:
            proxy.drop_all()  # the confirming ack is lost with the connection
            return
        real_receive(conn, data, now)

    host.room.receive = receive  # type: ignore[method-assign]
    ben = await join(nursery, _via(host.initial_invites[0].join_link, proxy.port), name="ben")
    first = ben.phrase
    assert first is not None and ben.status().warnings == []
    await _until(lambda: [m.name for m in host.status().members] == ["ana", "ben"])
    await _until(lambda: ben.status().connection == "connected")
    assert ben.phrase != first
    assert _row(host, ben.self_member.id).phrase == ben.phrase == _row(ben, ben.self_member.id).phrase
    assert any("phrase changed" in w for w in ben.status().warnings)
    await host.close()
