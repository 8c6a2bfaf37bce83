"""The inbound budget of a seat (spec section 18): what a member's frames may cost the host.

What belongs here: the two token buckets (transport bytes, frames) and their arithmetic. What
does not: which frames are charged and what happens when one cannot be paid for (that is
`_room.py`, which ends the connection with `error{flooding}` and close 4010).

Why a budget besides the rate limit: the rate limit bounds what reaches the transcript, but a
member can also send what the room refuses or ignores (oversized, empty or rate-limited says,
says repeating a ref, acks that acknowledge nothing, unasked pongs), and each still costs the
host a decryption and a decoding. Before this budget, 568 MB of oversized says in 30 s cost the
host half a core without a disconnect.
"""

from __future__ import annotations


class TokenBucket:
    """`burst` tokens at most, refilled at `rate` a second; starts full."""

    __slots__ = ("_burst", "_rate", "_tokens", "_at")

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self._burst = float(burst)
        self._rate = float(rate)
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:  # a clock that steps back refills nothing (and takes nothing)
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now

    def spend(self, amount: float, now: float) -> bool:
        """Take `amount` tokens if there are that many; False (nothing taken) if not."""
        tokens = self._tokens
        if now > self._at:  # `_refill`, written out: it runs for every message and frame
            tokens = min(self._burst, tokens + (now - self._at) * self._rate)
            self._at = now
        if tokens < amount:
            self._tokens = tokens
            return False
        self._tokens = tokens - amount
        return True

    def refund(self, amount: float, now: float) -> None:
        """Give back `amount` tokens spent on something that turned out to be free (never past
        `burst`): what a message costs is known only once it is decrypted."""
        self._refill(now)
        self._tokens = min(self._burst, self._tokens + amount)


class InboundBudget:
    """A seat's bytes and frames. One per seat, not per connection: resuming does not refill it."""

    __slots__ = ("bytes", "frames")

    def __init__(
        self,
        *,
        byte_burst: float,
        bytes_per_sec: float,
        frame_burst: float,
        frames_per_sec: float,
        now: float,
    ) -> None:
        self.bytes = TokenBucket(byte_burst, bytes_per_sec, now)
        self.frames = TokenBucket(frame_burst, frames_per_sec, now)

    def __repr__(self) -> str:
        return f"InboundBudget(bytes={self.bytes._tokens:.0f}, frames={self.frames._tokens:.1f})"
