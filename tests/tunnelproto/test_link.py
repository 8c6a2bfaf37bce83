"""Join links: format, parse, every parse error, the URL to dial, and the ids derived from secrets."""

from __future__ import annotations

import hashlib

import pytest

from tunnelproto import JoinLink, LinkError, LocalProtocolError, Room
from tunnelproto._link import invite_psk, ticket_psk

SECRET = bytes(range(32))
SECRET_TEXT = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
TUNNEL = "abcdefghijklmnop"
GOOD = f"https://tunnel.example.com/t/{TUNNEL}#{SECRET_TEXT}"


def test_format_is_base_t_tunnel_hash_secret() -> None:
    link = JoinLink(base_url="https://tunnel.example.com", tunnel_id=TUNNEL, secret=SECRET)
    assert str(link) == GOOD
    assert JoinLink.parse(str(link)) == link


def test_parse_reads_every_part() -> None:
    link = JoinLink.parse(GOOD)
    assert link.base_url == "https://tunnel.example.com"
    assert link.tunnel_id == TUNNEL
    assert link.secret == SECRET


@pytest.mark.parametrize(
    ("url", "dial"),
    [
        (f"https://h.example/t/{TUNNEL}#{SECRET_TEXT}", f"wss://h.example/t/{TUNNEL}"),
        (f"http://192.168.1.5:8080/t/{TUNNEL}#{SECRET_TEXT}", f"ws://192.168.1.5:8080/t/{TUNNEL}"),
        (f"wss://h.example/t/{TUNNEL}#{SECRET_TEXT}", f"wss://h.example/t/{TUNNEL}"),
        (f"ws://localhost:9/t/{TUNNEL}#{SECRET_TEXT}", f"ws://localhost:9/t/{TUNNEL}"),
        (f"https://h.example/relay/t/{TUNNEL}#{SECRET_TEXT}", f"wss://h.example/relay/t/{TUNNEL}"),
        (f"http://[::1]:7000/t/{TUNNEL}#{SECRET_TEXT}", f"ws://[::1]:7000/t/{TUNNEL}"),
    ],
)
def test_websocket_url_maps_https_to_wss_and_drops_the_secret(url: str, dial: str) -> None:
    link = JoinLink.parse(url)
    assert link.websocket_url == dial
    assert "#" not in link.websocket_url
    assert SECRET_TEXT not in link.websocket_url


def test_pasted_link_with_whitespace_and_brackets_still_parses() -> None:
    assert JoinLink.parse(f"  <{GOOD}>\n") == JoinLink.parse(GOOD)
    assert JoinLink.parse(f'"{GOOD}"') == JoinLink.parse(GOOD)


def test_repr_hides_the_secret() -> None:
    link = JoinLink.parse(GOOD)
    assert SECRET_TEXT not in repr(link)
    assert repr(SECRET) not in repr(link)


BAD_LINKS = [
    # (link, words the message must contain)
    (f"https://tunnel.example.com/t/{TUNNEL}", "no secret after '#'"),
    (f"https://tunnel.example.com/t/{TUNNEL}#", "no secret after '#'"),
    (f"ftp://tunnel.example.com/t/{TUNNEL}#{SECRET_TEXT}", "https://"),
    (f"tunnel.example.com/t/{TUNNEL}#{SECRET_TEXT}", "https://"),
    (f"https:///t/{TUNNEL}#{SECRET_TEXT}", "no host name"),
    (f"https://user:pw@tunnel.example.com/t/{TUNNEL}#{SECRET_TEXT}", "user name or password"),
    (f"https://tunnel.example.com/t/{TUNNEL}?x=1#{SECRET_TEXT}", "'?' query"),
    (f"https://tunnel.example.com/x/{TUNNEL}#{SECRET_TEXT}", "'/t/<tunnel-id>'"),
    (f"https://tunnel.example.com/t/short#{SECRET_TEXT}", "tunnel id"),
    (f"https://tunnel.example.com/t/{TUNNEL}/#{SECRET_TEXT}", "tunnel id"),
    (f"https://tunnel.example.com/t/{TUNNEL}#{SECRET_TEXT[:-1]}!", "not base64url"),
    (f"https://tunnel.example.com/t/{TUNNEL}#{SECRET_TEXT}=", "not base64url"),
    (f"https://tunnel.example.com/t/{TUNNEL}#{SECRET_TEXT[:20]}", "wrong length"),
    (f"https://tunnel.example.com/t/{TUNNEL}#{SECRET_TEXT}AAAA", "wrong length"),
    (f"https://tunnel.example.com:99999/t/{TUNNEL}#{SECRET_TEXT}", "port"),
    (f"https://[::1/t/{TUNNEL}#{SECRET_TEXT}", "not a valid URL"),
    ("https://h/t/" + TUNNEL + "#" + SECRET_TEXT + "x" * 3000, "too long"),
]


@pytest.mark.parametrize(("text", "words"), BAD_LINKS)
def test_parse_errors_name_the_problem_and_the_fix(text: str, words: str) -> None:
    with pytest.raises(LinkError) as info:
        JoinLink.parse(text)
    message = str(info.value)
    assert words in message
    assert "copy" in message or "user name" in message  # says what to do about it
    secret_part = text.split("#", 1)[1] if "#" in text else ""
    if len(secret_part) >= 8:
        assert secret_part not in message
        assert secret_part[:8] not in message
    assert SECRET_TEXT not in message
    assert info.value.code == "bad-link"
    assert isinstance(info.value, LocalProtocolError)


def test_non_canonical_base64_is_refused() -> None:
    # The last character of a 32-byte secret carries 4 spare bits; setting them changes the text
    # but not the bytes. Accepting both spellings would give one secret two links.
    last = SECRET_TEXT[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) + 1]
    with pytest.raises(LinkError, match="not base64url"):
        JoinLink.parse(f"https://h.example/t/{TUNNEL}#{SECRET_TEXT[:-1]}{twin}")


def test_parse_rejects_non_text() -> None:
    with pytest.raises(LinkError):
        JoinLink.parse(b"https://h/t/x#y")  # type: ignore[arg-type]


def test_invite_id_is_a_keyed_hash_of_the_secret_bound_to_the_tunnel() -> None:
    link = JoinLink.parse(GOOD)
    expected = hashlib.blake2b(
        b"tunnel-mcp/1 invite-id" + TUNNEL.encode(), key=SECRET, digest_size=16
    ).digest()
    assert link.invite_id == expected
    other_tunnel = JoinLink(link.base_url, "zyxwvutsrqponmlk", SECRET)
    assert other_tunnel.invite_id != link.invite_id
    other_secret = JoinLink(link.base_url, TUNNEL, bytes(32))
    assert other_secret.invite_id != link.invite_id
    # The id reveals nothing of the secret: no 4-byte window of one is in the other.
    for i in range(len(SECRET) - 3):
        assert SECRET[i : i + 4] not in link.invite_id


def test_the_psk_and_the_key_id_come_from_the_secret_under_separate_labels() -> None:
    # The secret is never itself the Noise PSK: both the id (sent in the clear) and the PSK
    # are derived from it, each under its own label, so the two uses cannot interact.
    link = JoinLink(base_url="https://h.example", tunnel_id=TUNNEL, secret=SECRET)
    expected = hashlib.blake2b(
        b"tunnel-mcp/1 invite-psk" + TUNNEL.encode(), key=SECRET, digest_size=32
    ).digest()
    assert link.psk == expected
    assert link.psk != SECRET and link.psk[:16] != link.invite_id
    assert ticket_psk(SECRET, TUNNEL) == hashlib.blake2b(
        b"tunnel-mcp/1 ticket-psk" + TUNNEL.encode(), key=SECRET, digest_size=32
    ).digest()
    assert len({link.psk, ticket_psk(SECRET, TUNNEL), invite_psk(SECRET, "other-tunnel-id")}) == 3


def test_a_used_invite_keeps_its_psk_but_forgets_its_secret() -> None:
    from harness import Net

    net = Net()
    (invite,) = net.mint(1)
    link = net.link(invite)
    assert invite.secret == link.secret
    ana = net.join("ana", invite)
    assert ana.is_open and invite.state == "used"
    assert invite.secret is None  # the link cannot be rebuilt from the room's memory
    assert invite.psk == link.psk
    with pytest.raises(LocalProtocolError):
        invite.link("https://h.example", net.room.tunnel_id)
    # The PSK is all a refusal inside Noise needs: a second use still hears "used".
    again = net.join("eve", link)
    assert [getattr(e, "code", None) for e in again.events][:1] == ["used"]


def test_invites_minted_by_a_room_each_have_their_own_secret_and_link() -> None:
    room = Room("goal", "host", 0.0)
    invites = room.mint_invites(3, 0.0)
    links = [inv.link("https://h.example", room.tunnel_id) for inv in invites]
    assert len({link.secret for link in links}) == 3
    assert len({inv.invite_id for inv in invites}) == 3
    for inv, link in zip(invites, links, strict=True):
        assert len(link.secret) == 32
        assert inv.invite_id == link.invite_id
        assert JoinLink.parse(str(link)) == link
        assert repr(inv.secret) not in repr(inv)
    # The tunnel id is long enough (>= 64 bits) and URL-safe.
    assert len(room.tunnel_id) >= 11
    assert JoinLink.parse(str(links[0])).tunnel_id == room.tunnel_id
