"""Fuzz targets over the protocol core, on the budget of the active Hypothesis profile:
`HYPOTHESIS_PROFILE=ci-fuzz` is what CI spends on every submission (one run per target),
`fuzz` runs rounds of them for a fixed time (see conftest.py).

The property bodies live in tests/tunnelproto/core_properties.py (the unit tests run the same
ones on a small budget); each target here takes a share of the profile's max_examples, sized
so the ci-fuzz run stays around a minute on two cores.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from core_properties import (
    MEMBER_STATES,
    ROOM_STATES,
    RoomMachine,
    batches,
    check_batch_decode,
    check_codec,
    check_direct_decode,
    check_file_frames,
    check_link_parse,
    check_member_garbage,
    check_room_garbage,
    directish,
    link_texts,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

SLOW_OK = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]

Rounds = Callable[[Callable[[], None], int], None]


def share(fraction: float) -> int:
    """`fraction` of the active profile's max_examples (at least 10)."""
    return max(10, int(settings().max_examples * fraction))


@pytest.mark.parametrize("state", ROOM_STATES)
def test_fuzz_room_connection(state: str, fuzz_rounds: Rounds) -> None:
    """Garbage, mutated messages and well-sealed nonsense frames on one room connection, in
    each state: never an exception out of Room.receive, the others keep working."""

    @settings(max_examples=share(0.25), suppress_health_check=SLOW_OK)
    @given(data=st.data())
    def target(data: st.DataObject) -> None:
        check_room_garbage(state, data)

    fuzz_rounds(target, share(0.25))


@pytest.mark.parametrize("state", MEMBER_STATES)
def test_fuzz_member_connection(state: str, fuzz_rounds: Rounds) -> None:
    """Anything fed to a MemberConnection raises RemoteProtocolError or nothing."""

    @settings(max_examples=share(0.3), suppress_health_check=SLOW_OK)
    @given(data=st.data())
    def target(data: st.DataObject) -> None:
        check_member_garbage(state, data)

    fuzz_rounds(target, share(0.3))


def test_fuzz_codec(fuzz_rounds: Rounds) -> None:
    """Only RemoteProtocolError, and whatever decodes re-encodes to the same bytes."""

    @settings(max_examples=share(2.0), suppress_health_check=SLOW_OK)
    @given(st.binary(max_size=200))
    def target(data: bytes) -> None:
        check_codec(data)

    fuzz_rounds(target, share(2.0))


def test_fuzz_link_parse(fuzz_rounds: Rounds) -> None:
    """Arbitrary text: a JoinLink that round-trips, or a LinkError that never echoes the secret."""

    @settings(max_examples=share(1.0), suppress_health_check=SLOW_OK)
    @given(link_texts)
    def target(text: str) -> None:
        check_link_parse(text)

    fuzz_rounds(target, share(1.0))


@settings(max_examples=share(1.0), suppress_health_check=SLOW_OK)
@given(directish() | st.binary(max_size=120))
def test_fuzz_direct_readers(data: bytes) -> None:
    """The direct readers of the hot-path frames (chunk, message, say, ack, roster, welcome,
    hello) and the general decoder agree, alone and at the start of a batch."""
    check_direct_decode(data)


@settings(max_examples=share(0.5), suppress_health_check=SLOW_OK)
@given(batches())
def test_fuzz_batches(encoded: list[bytes]) -> None:
    """A batch of frames decodes to its frames, in order."""
    check_batch_decode(encoded)


@settings(max_examples=share(0.2), suppress_health_check=SLOW_OK)
@given(data=st.data())
def test_fuzz_file_frames(data: st.DataObject) -> None:
    """Runs of nearly-right chunk, credit, cancel, abort, fetch, list and unshare frames
    against a transfer in progress: nobody's memory grows past a window, only senders of bad
    frames are cut."""
    check_file_frames(data)


class FuzzRoomMachine(RoomMachine):
    pass


def test_fuzz_room_machine(fuzz_rounds: Rounds) -> None:
    """The room with members joining, talking, dropping and resuming under a walking clock."""
    machine_settings = settings(
        max_examples=share(0.2), stateful_step_count=60, suppress_health_check=SLOW_OK
    )

    def target() -> None:
        run_state_machine_as_test(FuzzRoomMachine, settings=machine_settings)

    fuzz_rounds(target, share(0.2))
