"""The makers that build hot-path objects without their dataclass __init__ (tunnelproto._make)
must give exactly what the constructor gives: every field, equal, hashable, still frozen.
(The member's ChatMessage events are compared with the constructor's in test_member.py.)"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnelproto import _codec
from tunnelproto import _frames as f
from tunnelproto._events import ChatMessage
from tunnelproto._make import maker, setters
from tunnelproto._transcript import TranscriptEntry, chat_entry

u64 = st.integers(min_value=0, max_value=2**64 - 1)


def same(made: object, built: object) -> None:
    assert type(made) is type(built)
    names = [field.name for field in dataclasses.fields(built)]  # type: ignore[arg-type]
    for name in names:
        assert getattr(made, name) == getattr(built, name), name
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, names[0], 0)


def test_setters_refuses_a_class_whose_slots_are_not_its_fields() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError):
        setters(NoSlots)
    with pytest.raises(TypeError):
        maker(NoSlots)


@given(seq=u64, sender=u64, ts=u64, text=st.text())
def test_maker_builds_the_constructors_object(seq: int, sender: int, ts: int, text: str) -> None:
    # ChatMessage has a base (TunnelEvent, empty slots): the twin must share it to swap in.
    same(maker(ChatMessage)(seq, sender, ts, text), ChatMessage(seq, sender, ts, text))


@given(seq=u64, ts=u64, sender=u64, text=st.text(), frame=st.binary())
def test_chat_entry_is_the_constructors(
    seq: int, ts: int, sender: int, text: str, frame: bytes
) -> None:
    same(
        chat_entry(seq, ts, sender, text, frame),
        TranscriptEntry(seq, ts, "chat", sender, text, None, None, None, None, frame),
    )


@given(seq=u64, ts=u64, ref=u64, sender=u64, text=st.text())
def test_chat_frame_encoded_and_decoded_without_the_frame_object(
    seq: int, ts: int, ref: int, sender: int, text: str
) -> None:
    frame = f.Message(seq=seq, ts=ts, text=text, ref=ref, from_=sender)
    data = f.encode_message(seq, ts, text, ref, sender)
    assert data == _codec.encode(frame.to_value())  # the general encoder's bytes
    same(f.decode_frame(data), frame)
    same(f.decode_frames(data + data)[1], frame)


@given(ref=u64, seq=u64, text=st.text())
def test_say_and_ack_encoded_and_decoded_without_the_frame_object(
    ref: int, seq: int, text: str
) -> None:
    say, ack = f.Say(ref=ref, text=text), f.Ack(seq=seq)
    assert f.encode_say(ref, text) == say.encode() == _codec.encode(say.to_value())
    assert f.encode_ack(seq) == ack.encode() == _codec.encode(ack.to_value())
    both = f.encode_ack(seq) + f.encode_say(ref, text)
    if ref:  # ref 0 is refused by the decoder
        decoded = f.decode_frames(both)
        same(decoded[0], ack)
        same(decoded[1], say)


def test_encode_say_and_ack_leave_what_is_out_of_their_range_to_the_general_encoder() -> None:
    assert f.encode_say(-1, "x") == _codec.encode(f.Say(ref=-1, text="x").to_value())
    assert f.encode_ack(-1) == _codec.encode(f.Ack(seq=-1).to_value())
    with pytest.raises(ValueError):
        f.encode_ack(2**64)


def test_encode_message_leaves_what_is_out_of_its_range_to_the_general_encoder() -> None:
    negative = f.Message(seq=1, ts=2, text="x", ref=3, from_=-1)
    assert f.encode_message(1, 2, "x", 3, -1) == _codec.encode(negative.to_value())
    with pytest.raises(ValueError):
        f.encode_message(1, 2**64, "x", 3, 4)
