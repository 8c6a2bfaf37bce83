"""Hypothesis properties over the core, on the small budget of `make test`. fuzz/ runs the same
targets (core_properties.py) with larger budgets."""

from __future__ import annotations

import pytest
from core_properties import (
    MEMBER_STATES,
    ROOM_STATES,
    RoomMachine,
    check_codec,
    check_link_parse,
    check_member_garbage,
    check_room_garbage,
    link_texts,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def budget(fraction: float, minimum: int = 10) -> int:
    """A share of the active profile's max_examples."""
    return max(minimum, int(settings().max_examples * fraction))


@pytest.mark.parametrize("state", ROOM_STATES)
@settings(max_examples=budget(0.5), suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_garbage_to_a_room_connection_only_ends_that_connection(
    state: str, data: st.DataObject
) -> None:
    check_room_garbage(state, data)


@pytest.mark.parametrize("state", MEMBER_STATES)
@settings(max_examples=budget(1.0))
@given(data=st.data())
def test_garbage_to_a_member_raises_only_remote_protocol_error(
    state: str, data: st.DataObject
) -> None:
    check_member_garbage(state, data)


@given(st.binary(max_size=100))
def test_codec_garbage(data: bytes) -> None:
    check_codec(data)


@given(link_texts)
def test_link_parse_garbage(text: str) -> None:
    check_link_parse(text)


TestRoomMachine = RoomMachine.TestCase
TestRoomMachine.settings = settings(
    max_examples=budget(1.0),
    stateful_step_count=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
