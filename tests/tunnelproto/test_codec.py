"""The frame encoding: a strict deterministic CBOR subset. One value, one encoding."""

from __future__ import annotations

from typing import Any

import pytest
from core_properties import hello_frames, welcome_frames
from hypothesis import given
from hypothesis import strategies as st

from tunnelproto import RemoteProtocolError
from tunnelproto._codec import MAX_DEPTH, MAX_ITEMS, Value, decode, encode


def same(a: Any, b: Any) -> bool:
    """Equality that keeps bool and int apart, as CBOR does."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize(
    ("value", "hex_"),
    [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (255, "18ff"),
        (256, "190100"),
        (65535, "19ffff"),
        (65536, "1a00010000"),
        (2**32, "1b0000000100000000"),
        (2**64 - 1, "1bffffffffffffffff"),
        (-1, "20"),
        (-25, "3818"),
        (-(2**64), "3bffffffffffffffff"),
        (b"", "40"),
        (b"\x00\xff", "4200ff"),
        ("", "60"),
        ("a", "6161"),
        ("\u00fc", "62c3bc"),
        ([], "80"),
        ([1, [2]], "82018102"),
        ({}, "a0"),
        (False, "f4"),
        (True, "f5"),
        (None, "f6"),
        # Keys sorted by their encoded bytes: shorter encodings first, then bytewise.
        ({"b": 1, "a": 2, "aa": 3}, "a3616102616201626161" + "03"),
    ],
)
def test_known_encodings(value: Value, hex_: str) -> None:
    assert encode(value).hex() == hex_
    assert same(decode(bytes.fromhex(hex_)), value)


def test_encode_refuses_values_outside_the_subset() -> None:
    for bad in (1.5, 2**64, -(2**64) - 1, {1: 2}, (1, 2), object()):
        with pytest.raises((TypeError, ValueError)):
            encode(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hex_", "why"),
    [
        ("1817", "non-shortest"),  # 23 in two bytes
        ("190017", "non-shortest"),
        ("1900ff", "non-shortest"),
        ("1a0000ffff", "non-shortest"),
        ("1b00000000ffffffff", "non-shortest"),
        ("3817", "non-shortest"),
        ("5801" + "00", "non-shortest"),  # byte string length 1 in long form
        ("7801" + "61", "non-shortest"),
        ("9801" + "00", "non-shortest"),
        ("b801" + "616100", "non-shortest"),
        ("a2616201616102", "unsorted"),  # {"b":1,"a":2} in the wrong order
        ("a2616101616102", "unsorted or duplicated"),  # duplicate key "a"
        ("a2626161016162" + "02", "unsorted"),  # "aa" before "b": longer key first is wrong
        ("5f4100ff", "indefinite"),
        ("7f6161ff", "indefinite"),
        ("9f01ff", "indefinite"),
        ("bf616101ff", "indefinite"),
        ("1c", "indefinite or reserved"),
        ("c100", "tags"),
        ("d82000", "tags"),
        ("f93c00", "float"),  # half float 1.0
        ("fa3f800000", "float"),
        ("fb3ff0000000000000", "float"),
        ("f7", "simple value"),  # undefined
        ("f0", "simple value"),
        ("f820", "simple value"),
        ("0000", "trailing"),
        ("a1016161", "map key is not text"),
        ("a1410061", "map key is not text"),
        ("62c3", "truncated"),
        ("1a0001", "truncated"),
        ("", "truncated"),
        ("6180", "UTF-8"),  # lone continuation byte
        ("63eda080", "UTF-8"),  # an encoded surrogate
        ("8181818181818100", "nests too deeply"),
    ],
)
def test_strictness(hex_: str, why: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(bytes.fromhex(hex_))
    assert why in str(info.value)
    assert info.value.code == "malformed"


def test_depth_limit_is_exact() -> None:
    deepest = encode([[[[0]]]])  # depth MAX_DEPTH for the innermost item
    assert MAX_DEPTH == 4
    assert same(decode(deepest), [[[[0]]]])
    with pytest.raises(RemoteProtocolError, match="deeply"):
        decode(encode([[[[[0]]]]]))


def test_huge_declared_lengths_fail_fast() -> None:
    # A 4-byte header claiming 4 GiB must not allocate or loop: it is just truncated.
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decode(bytes.fromhex("5affffffff"))
    with pytest.raises(RemoteProtocolError, match="too long"):
        decode(bytes.fromhex("9b0000000100000000"))
    with pytest.raises(RemoteProtocolError, match="too long"):
        decode(bytes.fromhex("bb0000000100000000"))
    assert len(decode(encode(list(range(MAX_ITEMS))))) == MAX_ITEMS  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError, match="too long"):
        decode(encode(list(range(MAX_ITEMS + 1))))


def test_binary_safe() -> None:
    blob = bytes(range(256)) * 4
    assert decode(encode({"data": blob, "text": "\x00\n\u202e"})) == {
        "data": blob,
        "text": "\x00\n\u202e",
    }


leaves = (
    st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.booleans()
    | st.none()
)


def values(depth: int = MAX_DEPTH) -> st.SearchStrategy[Value]:
    if depth == 0:
        return leaves
    inner = values(depth - 1)
    return (
        leaves
        | st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    )


@given(values())
def test_round_trip(value: Value) -> None:
    data = encode(value)
    assert same(decode(data), value)
    assert encode(decode(data)) == data


@given(st.binary(max_size=64))
def test_anything_decodable_has_exactly_one_encoding(data: bytes) -> None:
    try:
        value = decode(data)
    except RemoteProtocolError:
        return
    assert encode(value) == data


def test_a_canonical_roster_is_read_row_by_row_and_anything_else_by_the_decoder() -> None:
    # Rosters go to every member at every join and leave: the direct reader takes them
    # (check_direct_decode holds it to the general decoder on mutated inputs).
    from tunnelproto import _frames as f

    roster = f.Roster(
        members=(f.MemberEntry(1, "host", True, True), f.MemberEntry(300, "ana\u00e9", False, False))
    )
    data = roster.encode()
    assert f._decode_known(data, 0) == (roster, len(data))
    assert f.decode_frame(data) == roster
    assert f.decode_frames(data + data) == [roster, roster]
    # A row the encoder never writes (keys out of order) is left to the general decoder,
    # which refuses it.
    swapped = data.replace(b"\x62on\xf5\x64host\xf5", b"\x64host\xf5\x62on\xf5", 1)
    assert f._decode_known(swapped, 0) is None
    with pytest.raises(RemoteProtocolError, match="unsorted"):
        f.decode_frame(swapped)


@given(welcome_frames())
def test_the_welcome_is_written_and_read_directly_as_the_general_codec_does(welcome) -> None:
    # Every join's welcome goes through the direct writer (host) and reader (member);
    # check_direct_decode holds the reader to the general decoder on mutated inputs too.
    from tunnelproto import _frames as f

    data = welcome.encode()
    assert data == encode(welcome.to_value())
    assert f._parse(decode(data)) == welcome == f.decode_frame(data)
    if all(len(key.encode()) < 24 for key in welcome.limits):
        assert f._decode_known(data, 0) == (welcome, len(data))
    else:  # a long limit name: left to the general decoder
        assert f._decode_known(data, 0) is None


@given(hello_frames())
def test_the_hello_is_written_and_read_directly_as_the_general_codec_does(hello) -> None:
    from tunnelproto import _frames as f

    data = hello.encode()
    assert data == encode(hello.to_value())
    assert f._decode_known(data, 0) == (hello, len(data))
    assert f._parse(decode(data)) == hello == f.decode_frame(data)


def test_a_hello_the_direct_writer_does_not_take_is_the_general_encoders() -> None:
    from tunnelproto import _frames as f

    for odd in (f.Hello(v=True, name="n", sw="s"), f.Hello(v=1, name="n", sw="s", caps=["x"])):  # type: ignore[arg-type]
        assert f._encode_hello(odd) is None
        assert odd.encode() == encode(odd.to_value())
    # A hello without caps, or with a null last, is valid; the general decoder reads it.
    bare = encode({"t": "hello", "v": 1, "name": "n", "sw": "s", "last": None})
    assert f._decode_known(bare, 0) is None
    assert f.decode_frame(bare) == f.Hello(v=1, name="n", sw="s")


@pytest.mark.parametrize(
    "odd",
    [
        {"limits": {"text": True}},  # a bool where an integer belongs
        {"limits": {"text": -1}},
        {"caps": ["files/1"]},  # a list, not a tuple
        {"you": 2**64},
        {"ticket": bytearray(b"t")},
    ],
)
def test_a_welcome_the_direct_writer_does_not_take_is_the_general_encoders(odd) -> None:
    # Values outside the frame's types are not the direct writer's to judge: the general
    # encoder writes them (or refuses), exactly as before.
    import dataclasses

    from tunnelproto import _frames as f

    welcome = dataclasses.replace(
        f.Welcome(
            goal="g", you=2, name="n", roster=(), last=0, first=1, ticket=b"", resumed=False,
            limits={}, caps=None,
        ),
        **odd,
    )
    assert f._encode_welcome(welcome) is None
    try:
        expected: object = encode(welcome.to_value())
    except (TypeError, ValueError) as exc:
        expected = type(exc)
    try:
        got: object = welcome.encode()
    except (TypeError, ValueError) as exc:
        got = type(exc)
    assert got == expected


def _decode_or_error(data: bytes) -> object:
    try:
        return ("value", decode(data))
    except RemoteProtocolError as exc:
        return ("error", str(exc))


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(0, 30) | st.text(max_size=25),
        lambda inner: st.dictionaries(st.text(max_size=24), inner, max_size=5)
        | st.lists(inner, max_size=3),
        max_leaves=12,
    ).map(lambda v: encode({"k": v}))
    | st.binary(max_size=60),
    st.data(),
)
def test_maps_read_in_line_match_the_general_reader(data: bytes, draw: st.DataObject) -> None:
    # The in-line reading of map items (`_decode_shallow_map`) against the general one, on
    # encodings and on mutations of them: the same value or the same error.
    import tunnelproto._codec as codec

    if data and draw.draw(st.booleans()):
        i = draw.draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw.draw(st.integers(0, 255))]) + data[i + 1 :]
    fast = _decode_or_error(data)
    original = codec._decode_shallow_map
    codec._decode_shallow_map = codec._decode_map  # type: ignore[assignment]
    try:
        general = _decode_or_error(data)
    finally:
        codec._decode_shallow_map = original
    assert fast == general
