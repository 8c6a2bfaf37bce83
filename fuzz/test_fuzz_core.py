"""Fuzz targets over the protocol core, on the budget of the active Hypothesis profile:
`HYPOTHESIS_PROFILE=ci-fuzz` is what CI spends on every submission, `fuzz` runs much longer.

The property bodies live in tests/tunnelproto/core_properties.py (the unit tests run the same
ones on a small budget); each target here takes a share of the profile's max_examples, sized
so the ci-fuzz run stays around a minute on two cores.
"""

from __future__ import annotations

import pytest
from core_properties import (
    MEMBER_STATES,
    ROOM_STATES,
    RoomMachine,
    check_chunk_decode,
    check_codec,
    check_file_frames,
    check_link_parse,
    check_member_garbage,
    check_room_garbage,
    chunkish,
    link_texts,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SLOW_OK = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


def share(fraction: float) -> int:
    """`fraction` of the active profile's max_examples (at least 10)."""
    return max(10, int(settings().max_examples * fraction))


@pytest.mark.parametrize("state", ROOM_STATES)
@settings(max_examples=share(0.25), suppress_health_check=SLOW_OK)
@given(data=st.data())
def test_fuzz_room_connection(state: str, data: st.DataObject) -> None:
    """Garbage, mutated messages and well-sealed nonsense frames on one room connection, in
    each state: never an exception out of Room.receive, the others keep working."""
    check_room_garbage(state, data)


@pytest.mark.parametrize("state", MEMBER_STATES)
@settings(max_examples=share(0.3), suppress_health_check=SLOW_OK)
@given(data=st.data())
def test_fuzz_member_connection(state: str, data: st.DataObject) -> None:
    """Anything fed to a MemberConnection raises RemoteProtocolError or nothing."""
    check_member_garbage(state, data)


@settings(max_examples=share(2.0), suppress_health_check=SLOW_OK)
@given(st.binary(max_size=200))
def test_fuzz_codec(data: bytes) -> None:
    """Only RemoteProtocolError, and whatever decodes re-encodes to the same bytes."""
    check_codec(data)


@settings(max_examples=share(1.0), suppress_health_check=SLOW_OK)
@given(link_texts)
def test_fuzz_link_parse(text: str) -> None:
    """Arbitrary text: a JoinLink that round-trips, or a LinkError that never echoes the secret."""
    check_link_parse(text)


@settings(max_examples=share(1.0), suppress_health_check=SLOW_OK)
@given(chunkish() | st.binary(max_size=120))
def test_fuzz_chunk_reader(data: bytes) -> None:
    """The direct chunk reader (the hot path of transfers) and the general decoder agree."""
    check_chunk_decode(data)


@settings(max_examples=share(0.2), suppress_health_check=SLOW_OK)
@given(data=st.data())
def test_fuzz_file_frames(data: st.DataObject) -> None:
    """Runs of nearly-right chunk, credit, cancel, abort, fetch, list and unshare frames
    against a transfer in progress: nobody's memory grows past a window, only senders of bad
    frames are cut."""
    check_file_frames(data)


class FuzzRoomMachine(RoomMachine):
    pass


TestFuzzRoomMachine = FuzzRoomMachine.TestCase
TestFuzzRoomMachine.settings = settings(
    max_examples=share(0.2), stateful_step_count=60, suppress_health_check=SLOW_OK
)
