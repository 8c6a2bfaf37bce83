"""The verification phrase: the same on both ends of a join, different under a relay, fixed for
the life of a seat, and never sent."""

from __future__ import annotations

import pytest
from harness import BASE_URL, DetRng, Net

from tunnelproto import (
    JoinLink,
    LocalProtocolError,
    MemberConnection,
    MemberState,
    Room,
    Send,
    Welcomed,
    _channel,
    derive_phrase,
)
from tunnelproto._phrase import wordlist


def _is_phrase(text: str | None) -> bool:
    words = (text or "").split(" ")
    return len(words) == 4 and all(w in wordlist() for w in words)


def test_both_ends_of_every_join_hold_the_same_phrase() -> None:
    net = Net()
    peers = [net.join(name) for name in ("ana", "bob", "cy", "ana")]
    phrases = []
    for peer in peers:
        assert peer.member_id is not None
        (welcome,) = peer.welcomes()
        assert _is_phrase(welcome.phrase)
        assert welcome.phrase == peer.mc.phrase == net.room.phrase(peer.member_id)
        phrases.append(welcome.phrase)
    # Each join is its own handshake: its own phrase.
    assert len(set(phrases)) == len(phrases)
    # The host's own transcript carries each member's phrase on its `joined` entry, only there.
    joined = {e.member: e.phrase for e in net.room.entries_since(0) if e.event == "joined"}
    assert joined == {p.member_id: p.mc.phrase for p in peers}
    assert all(e.phrase is None for e in net.room.entries_since(0) if e.event != "joined")
    assert net.room.phrase(net.room.host_id) is None
    assert net.room.phrase(999) is None
    net.check()


def test_the_phrase_never_travels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither end sends a phrase: not in a frame the room seals, not in what members seal."""
    sealed: list[bytes] = []
    seal = _channel.Channel.seal

    def spy(self: _channel.Channel, plaintext: bytes) -> bytes:
        sealed.append(plaintext)
        return seal(self, plaintext)

    monkeypatch.setattr(_channel.Channel, "seal", spy)
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    net.say(ana, "hi")
    net.drop(bob)
    net.resume(bob)
    net.remove(bob.member_id or 0, "just checking")
    phrases = {p.mc.phrase for p in (ana, bob)}
    assert len(sealed) > 10 and len(phrases) == 2
    for phrase in phrases:
        assert phrase is not None
        needle = phrase.encode()
        assert not any(needle in plaintext for plaintext in sealed)
        assert not any(needle in entry.frame for entry in net.room.entries_since(0))


def test_reprs_do_not_show_the_phrase() -> None:
    net = Net()
    ana = net.join("ana")
    phrase = ana.mc.phrase
    assert phrase is not None
    state = ana.mc.resume_state()
    seat = net.room._seats[ana.member_id or 0]
    joined = [e for e in net.room.entries_since(0) if e.event == "joined"]
    for obj in (ana.welcomes()[0], state, seat, joined[0]):
        assert phrase not in repr(obj), type(obj).__name__


def _mint_with_secret(room: Room, secret: bytes, now: float) -> None:
    """Mint one invite whose secret is `secret` (an attacker who knows a link can)."""
    real_rng = room._rng
    room._rng = lambda n: secret
    try:
        room.mint_invites(1, now)
    finally:
        room._rng = real_rng


def test_a_relaying_attacker_ends_with_two_phrases() -> None:
    """Mallory holds ana's link and sits on the path. She joins the real room with it (as the
    member), and answers ana's dial as a fake host that knows the link's secret. Both
    handshakes succeed and she can pass the chat along both ways; only the phrases tell."""
    rng = DetRng(b"relay")
    room = Room("the real goal", "host", 0.0, rng=rng)
    (invite,) = room.mint_invites(1, 0.0)
    link = invite.link(BASE_URL, room.tunnel_id)

    # Mallory's fake room: same tunnel id, and the one invite it mints has the link's secret.
    fake = Room("the real goal", "host", 0.0, rng=rng, tunnel_id=link.tunnel_id)
    _mint_with_secret(fake, link.secret, 0.0)

    def pump(r: Room, conn: int, member: MemberConnection) -> None:
        for _ in range(10):
            for data in member.data_to_send():
                r.receive(conn, data, 0.0)
            for out in r.data_to_send():
                if isinstance(out, Send):
                    member.receive_data(out.data, 0.0)

    def connect(r: Room, member: MemberConnection) -> tuple[int, int]:
        conn = r.open_connection(0.0)
        assert conn is not None
        pump(r, conn, member)
        assert member.state is MemberState.OPEN and member.member_id is not None
        return conn, member.member_id

    ana = MemberConnection(link, "ana", 0.0, rng=DetRng(b"ana"))
    mallory = MemberConnection(JoinLink.parse(str(link)), "ana", 0.0, rng=DetRng(b"mallory"))
    fake_conn, ana_id = connect(fake, ana)  # ana <-> Mallory posing as the host
    real_conn, mallory_id = connect(room, mallory)  # Mallory posing as ana <-> the real host

    # The relay works: Mallory reads what ana says in her fake room and says it in the real one.
    ana.say("the deploy key is in the vault")
    pump(fake, fake_conn, ana)
    (heard,) = [e.text for e in fake.entries_since(0) if e.kind == "chat"]
    mallory.say(heard or "")
    pump(room, real_conn, mallory)
    assert [(e.sender, e.text) for e in room.entries_since(0) if e.kind == "chat"] == [
        (mallory_id, "the deploy key is in the vault")
    ]
    # Nothing in the handshake told anyone: both were welcomed as usual.
    for member in (ana, mallory):
        events = []
        while (ev := member.next_event()) is not None:
            events.append(ev)
        assert isinstance(events[0], Welcomed) and not events[0].resumed

    # Each pair agrees with itself ...
    assert ana.phrase == fake.phrase(ana_id)
    assert mallory.phrase == room.phrase(mallory_id)
    # ... but what ana reads out is not what the real host sees.
    assert ana.phrase != room.phrase(mallory_id)


@pytest.mark.parametrize("seed", [b"1", b"2", b"3", b"4", b"5"])
def test_a_relay_gives_different_phrases_whatever_the_keys(seed: bytes) -> None:
    """The same attack with other ephemeral keys: never a match (44 bits)."""
    net = Net(seed=seed)
    (invite,) = net.mint(1)
    link = net.link(invite)
    fake = Net(seed=seed + b"fake")
    # A fake room under the same tunnel id holding the same invite secret.
    fake.room = Room("goal", "host", fake.now, rng=fake.rng, tunnel_id=link.tunnel_id)
    _mint_with_secret(fake.room, link.secret, fake.now)
    ana = fake.join("ana", link)
    mallory = net.join("ana", link)
    assert ana.is_open and mallory.is_open
    assert ana.mc.phrase == fake.room.phrase(ana.member_id or 0)
    assert mallory.mc.phrase == net.room.phrase(mallory.member_id or 0)
    assert ana.mc.phrase != mallory.mc.phrase


def test_the_phrase_is_kept_across_resumes() -> None:
    net = Net()
    ana, bob = net.join("ana"), net.join("bob")
    phrase = ana.mc.phrase
    assert phrase is not None
    for _ in range(3):
        net.drop(ana)
        state = ana.mc.resume_state()
        assert state is not None and state.phrase == phrase
        net.host_say("while away")
        net.resume(ana)
        welcome = ana.current_events()[0]
        assert isinstance(welcome, Welcomed) and welcome.resumed
        # A resume is another handshake (another hash) but the seat's phrase stays.
        assert welcome.phrase == ana.mc.phrase == net.room.phrase(ana.member_id or 0) == phrase
    assert net.room.phrase(bob.member_id or 0) == bob.mc.phrase != phrase
    net.check()


def test_the_phrase_survives_lost_resume_welcomes_and_acks() -> None:
    net = Net()
    ana = net.join("ana")
    phrase = ana.mc.phrase
    net.drop(ana)
    net.resume(ana, pump=False)
    net.send_now(ana)
    ana.hold_out = True  # she gets a welcome, her ack is lost
    net.pump()
    assert ana.mc.phrase == phrase
    net.drop(ana)
    held = ana.mc.resume_state()
    net.resume(ana, state=held, pump=False)
    ana.hold_in = True  # this welcome is lost
    net.pump()
    net.drop(ana)
    net.resume(ana, state=held)
    assert ana.is_open
    assert ana.mc.phrase == net.room.phrase(ana.member_id or 0) == phrase


def test_a_join_that_never_confirmed_and_joins_again_gets_the_new_seats_phrase() -> None:
    net = Net()
    (invite,) = net.mint(1)
    ana = net.join("ana", invite, pump=False)
    net.send_now(ana)
    ana.hold_out = True  # welcomed, but the confirming ack is lost: the room seats nobody
    net.pump()
    first = ana.mc.phrase
    assert first is not None and net.room.phrase(ana.member_id or 0) is None
    net.drop(ana)
    again = net.join("ana", invite)
    assert again.is_open
    assert again.mc.phrase == net.room.phrase(again.member_id or 0) != first


def test_derive_phrase_checks_its_input() -> None:
    with pytest.raises(LocalProtocolError):
        derive_phrase(bytes(32))
    assert derive_phrase(bytes(64)) == derive_phrase(bytes(64))
    assert derive_phrase(bytes(64)) != derive_phrase(bytes(63) + b"\x01")
