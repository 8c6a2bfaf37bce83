"""Removing a member: the host ends a seat at once and for good (spec "Removing a member").

`Room.remove()` does the seat work; this module holds what removal adds to the protocol:

- the host's reason, bounded and checked like a closing summary;
- the words a member shows its user when it was removed (from a `close{reason: removed}`, or
  from a `removed` refusal of a resume);
- `RemovedTickets`: the tickets of removed seats, remembered (the newest few) so that a member
  who was away when it was removed hears `removed` when it tries to resume. Without them it
  would hear `unknown-invite`, which a member reads as "my join never completed" and answers by
  joining again with its link, only to be told the link was used: true, and useless.
"""

from __future__ import annotations

from collections import OrderedDict

from ._errors import LocalProtocolError
from ._names import one_line

#: The close reason, refusal code and event kind of a removal.
REMOVED = "removed"
#: Max length of the host's reason, in characters; longer reasons are cut.
MAX_REASON_CHARS = 1000
#: Tickets of removed seats remembered for a `removed` refusal (a seat holds at most 4).
MAX_REMOVED_TICKETS = 64
#: How much of the host's reason a member puts in its one-line message.
MESSAGE_REASON_CHARS = 500


def check_reason(reason: str | None) -> str | None:
    """The reason as the room records it: None when blank, cut to MAX_REASON_CHARS."""
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise LocalProtocolError("the reason must be text", "bad-reason")
    if not reason.strip():
        return None
    reason = reason[:MAX_REASON_CHARS]
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError("the reason is not valid Unicode text", "bad-reason") from None
    return reason


def removed_message(reason: str | None) -> str:
    """What a removed member tells its user. The reason is the host's words: one line, cut."""
    message = "the host removed you from the room"
    cleaned = one_line(reason, MESSAGE_REASON_CHARS) if reason else ""
    if cleaned:
        message += f" (the host's reason: {cleaned})"
    return message


class RemovedTickets:
    """Ticket id -> ticket secret of recently removed seats, the newest MAX_REMOVED_TICKETS.

    The secret is kept so that the refusal can be encrypted: a `removed` refusal is
    authenticated, unlike the plaintext `unknown-invite`.
    """

    __slots__ = ("_tickets",)

    def __init__(self) -> None:
        self._tickets: OrderedDict[bytes, bytes] = OrderedDict()

    def __repr__(self) -> str:
        return f"RemovedTickets({len(self._tickets)} tickets, secrets=<hidden>)"

    def add(self, tickets: dict[bytes, bytes]) -> None:
        for ticket_id, secret in tickets.items():
            self._tickets[ticket_id] = secret
            self._tickets.move_to_end(ticket_id)
        while len(self._tickets) > MAX_REMOVED_TICKETS:
            self._tickets.popitem(last=False)

    def get(self, ticket_id: bytes) -> bytes | None:
        return self._tickets.get(ticket_id)

    def clear(self) -> None:
        self._tickets.clear()
