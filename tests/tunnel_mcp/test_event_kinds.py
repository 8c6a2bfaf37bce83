"""Every event kind the session layer can hand over reaches the agent: `removed`, and a kind
from a later version of the protocol (the core lets only well-formed kinds in)."""

from __future__ import annotations

import pytest

from tunnel_mcp.models import Message
from tunnel_trio.session_types import MemberInfo, TranscriptMessage


@pytest.mark.parametrize("kind", ["removed", "x-later-kind"])
def test_an_event_of_any_kind_becomes_a_message(kind: str) -> None:
    message = TranscriptMessage(
        seq=7,
        kind="event",
        ts=1.0,
        sender=None,
        text="the host's words",
        event=kind,  # type: ignore[arg-type]
        subject=MemberInfo(3, "ben", False),
    )
    dumped = Message.of(message).model_dump(by_alias=True, exclude_none=True)
    assert dumped["event"] == kind and dumped["text"] == "the host's words"
    assert dumped["subject"]["name"] == "ben"
