"""The hand-written data path of tunnel_trio._wsframes, checked against wsproto's own framing.

wsproto writes the frames a peer could send (and reads the frames we write), so every test
here compares our bytes with an independent implementation of RFC 6455.
"""

from __future__ import annotations

import os

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, Ping, TextMessage
from wsproto.frame_protocol import XorMaskerSimple

from tunnel_trio._wsframes import (
    TEXT,
    ControlFrame,
    FrameParser,
    FramingError,
    frame_messages,
    mask,
)

SIZES = [0, 1, 3, 4, 5, 125, 126, 127, 2047, 2048, 2049, 65535, 65536, 70_000]


def wsproto_messages(conn: Connection, data: bytes) -> list[bytes]:
    conn.receive_data(data)
    out, partial = [], b""
    for event in conn.events():
        assert isinstance(event, BytesMessage), event
        partial += event.data
        if event.message_finished:
            out.append(partial)
            partial = b""
    return out


def parsed(parser: FrameParser) -> list[object]:
    items = list(parser.items)
    parser.items.clear()
    return items


@pytest.mark.parametrize("size", SIZES)
def test_mask_matches_wsproto_and_undoes_itself(size: int) -> None:
    data, key = os.urandom(size), os.urandom(4)
    masked = mask(data, key)
    assert masked == XorMaskerSimple(key).process(data)
    assert mask(masked, key) == data


@pytest.mark.parametrize("client", [True, False])
def test_frames_we_write_are_what_wsproto_reads(client: bool) -> None:
    messages = [os.urandom(n) for n in SIZES]
    peer = Connection(ConnectionType.SERVER if client else ConnectionType.CLIENT)
    assert wsproto_messages(peer, frame_messages(messages, client=client)) == messages


def test_a_client_masks_every_frame_with_a_fresh_key() -> None:
    one = frame_messages([b"x" * 64], client=True)
    two = frame_messages([b"x" * 64], client=True)
    assert one[1] & 0x80 and two[1] & 0x80
    assert one[2:6] != two[2:6]  # 32 random bits each; equal by chance once in 4 billion
    assert frame_messages([b"x"], client=False) == b"\x82\x01x"  # a server never masks


@pytest.mark.parametrize("client", [True, False])
def test_frames_wsproto_writes_are_what_we_read(client: bool) -> None:
    peer = Connection(ConnectionType.SERVER if client else ConnectionType.CLIENT)
    messages = [os.urandom(n) for n in SIZES]
    wire = b"".join(peer.send(BytesMessage(data=m)) for m in messages)
    parser = FrameParser(client=client, max_message_size=1 << 20)
    parser.feed(wire)
    assert parsed(parser) == messages
    assert not parser.done


def test_byte_by_byte_gives_the_same_messages() -> None:
    peer = Connection(ConnectionType.CLIENT)
    messages = [os.urandom(n) for n in (0, 5, 126, 70_000)]
    wire = b"".join(peer.send(BytesMessage(data=m)) for m in messages)
    parser = FrameParser(client=False, max_message_size=1 << 20)
    for i in range(len(wire)):
        parser.feed(wire[i : i + 1])
    assert parsed(parser) == messages
    assert parser.messages == len(messages)
    assert parser.buffered() == 0


def test_a_fragmented_message_with_a_ping_in_between() -> None:
    peer = Connection(ConnectionType.CLIENT)
    wire = (
        peer.send(BytesMessage(data=b"first ", message_finished=False))
        + peer.send(Ping(payload=b"are you there"))
        + peer.send(BytesMessage(data=b"second ", message_finished=False))
        + peer.send(BytesMessage(data=b"third", message_finished=True))
    )
    parser = FrameParser(client=False, max_message_size=100)
    parser.feed(wire)
    items = parsed(parser)
    assert isinstance(items[0], ControlFrame)
    server = Connection(ConnectionType.SERVER)
    server.receive_data(items[0].raw)  # handed whole to wsproto, which parses it
    assert [type(e) for e in server.events()] == [Ping]
    assert items[1:] == [b"first second third"]


def test_text_is_reported_once_the_message_is_whole() -> None:
    peer = Connection(ConnectionType.CLIENT)
    parser = FrameParser(client=False, max_message_size=100)
    parser.feed(peer.send(TextMessage(data="hi ", message_finished=False)))
    assert parsed(parser) == []
    parser.feed(peer.send(TextMessage(data="there")) + peer.send(BytesMessage(data=b"b")))
    assert parsed(parser) == [TEXT, b"b"]


def test_a_close_frame_ends_parsing() -> None:
    parser = FrameParser(client=True, max_message_size=100)
    parser.feed(b"\x88\x02\x03\xe8" + b"\x82\x01x")  # close 1000, then a message
    items = parsed(parser)
    assert len(items) == 1 and isinstance(items[0], ControlFrame)
    assert parser.done
    parser.feed(b"\x82\x01y")
    assert parsed(parser) == []


def _header(b0: int, length: int, *, masked: bool) -> bytes:
    m = 0x80 if masked else 0
    if length < 126:
        head = bytes((b0, m | length))
    elif length < 0x10000:
        head = bytes((b0, m | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((b0, m | 127)) + length.to_bytes(8, "big")
    return head + (b"\x00\x00\x00\x00" if masked else b"")


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (_header(0xC2, 1, masked=True) + b"x", 1002),  # RSV1 set
        (_header(0x82, 1, masked=False) + b"x", 1002),  # a client that does not mask
        (_header(0x80, 1, masked=True) + b"x", 1002),  # continuation with no message
        (_header(0x02, 1, masked=True) + b"x" + _header(0x82, 1, masked=True) + b"y", 1002),
        (_header(0x83, 1, masked=True) + b"x", 1002),  # reserved data opcode
        (_header(0x8B, 0, masked=True), 1002),  # reserved control opcode
        (_header(0x09, 0, masked=True), 1002),  # fragmented ping
        (_header(0x89, 126, masked=True) + b"p" * 126, 1002),  # ping over 125 bytes
        (b"\x82\xff\x80" + bytes(7) + bytes(4), 1002),  # 64-bit length, top bit set
        (_header(0x82, 101, masked=True), 1009),  # over the limit: decided on the header
        (_header(0x02, 60, masked=True) + bytes(60) + _header(0x80, 41, masked=True), 1009),
    ],
)
def test_framing_errors_get_the_close_code_wsproto_used(wire: bytes, code: int) -> None:
    parser = FrameParser(client=False, max_message_size=100)
    parser.feed(wire)
    items = parsed(parser)
    assert isinstance(items[-1], FramingError), items
    assert items[-1].code == code
    assert parser.done
    parser.feed(_header(0x82, 1, masked=True) + b"z")  # nothing after the error is parsed
    assert parsed(parser) == []


def test_a_server_frame_must_not_be_masked() -> None:
    parser = FrameParser(client=True, max_message_size=100)
    parser.feed(_header(0x82, 1, masked=True) + b"x")
    (item,) = parsed(parser)
    assert isinstance(item, FramingError) and item.code == 1002


def test_a_message_of_exactly_the_limit_is_accepted() -> None:
    peer = Connection(ConnectionType.CLIENT)
    parser = FrameParser(client=False, max_message_size=100)
    parser.feed(
        peer.send(BytesMessage(data=b"a" * 60, message_finished=False))
        + peer.send(BytesMessage(data=b"b" * 40))
    )
    assert parsed(parser) == [b"a" * 60 + b"b" * 40]
