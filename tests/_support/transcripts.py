"""Reading a session's whole transcript the way an agent does: listen until a seq is seen."""

from __future__ import annotations

from typing import Any

import trio


async def collect(
    session: Any, until_seq: int, *, since: int = 0, timeout: float = 30.0
) -> list[Any]:
    """Every transcript message with seq in (since, until_seq], own messages included.
    Local notices (seq 0) are left out."""
    got: list[Any] = []
    with trio.fail_after(timeout):
        while since < until_seq:
            result = await session.listen(since, 5.0, include_own=True)
            # A listen may also return messages past until_seq (a later join, say).
            got.extend(m for m in result.messages if 0 < m.seq <= until_seq)
            since = result.last_seq
    return got
