"""Asking the human: every approval a tool needs goes through here (MCP elicitation, form mode).

The promise is that nothing reaches the room before the human said yes, where the human asked
for that. The tools ask this module, and only this module asks:

* joining (guest): after the handshake, before tunnel_join returns, so before any say or listen:
  the goal, the host, the members and the verification phrase (`approve_join`);
* each outgoing message, when the human turned that on (`TUNNEL_APPROVE=say`, or
  `approveSays: true` on open/join) (`approve_say`);
* going on past the turn budget: each server counts its own agent's says since the human last
  approved; at `TUNNEL_TURN_BUDGET` (default 40, 0 turns it off) the next say asks whether to
  go on (`approve_say` again);
* files (issue 10): reading files from disk to share them, writing received ones
  (`approve_reading`, `approve_writing`).

How a question reaches the human depends on the protocol the client speaks:

* The handshake era (up to 2025-11-25: the agents' clients of today): the server sends an
  `elicitation/create` request in the middle of the tool call and waits for the answer, at most
  `ANSWER_WITHIN`, reporting progress meanwhile (clients give up on a silent call after 60 s).
* 2026-07-28 on (SEP-2322): a tool call cannot wait on the client. Its round ends with an
  `InputRequiredResult` carrying the question (`InputRequired`, which the toolkit returns), and
  the client calls the tool again with the human's answer. The tool runs again from the start
  and asks the same question; this time `ask` finds the answer. The round's `requestState` is
  a random token naming a question kept here, never state the client could forge: an answer
  counts only for the question it was given to, once, and only within `ANSWER_WITHIN`.

A client without the elicitation capability cannot ask anyone: the answer is `not-asked`, the
tools behave as they always did (the client's own tool-permission prompt is the gate), and
their results tell the agent to ask its human itself. Nothing here ever waits without a bound.

A decline, a cancel or no answer are all a no: a clear tool result, never an error that
invites the agent to try again.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import trio
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import (
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequiredResult,
    InputResponse,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError

from tunnel_mcp.render import _count, _quote, _visible
from tunnel_mcp.render import size_text as _size

T = TypeVar("T")

#: How long a question waits for the human's answer; none by then counts as a no. Long enough
#: to read the prompt and check a phrase with the other human; a client's own 60 s tool timeout
#: is kept at bay by progress notifications while the handshake-era call waits.
ANSWER_WITHIN = 120.0

APPROVE_ENV = "TUNNEL_APPROVE"
TURN_BUDGET_ENV = "TUNNEL_TURN_BUDGET"
DEFAULT_TURN_BUDGET = 40
#: Larger budgets are not a check-in any more; the variable's range stops here.
MAX_TURN_BUDGET = 100_000

#: Questions asked in 2026-era rounds that wait for their answer, per MCP connection (the
#: oldest are forgotten first: an agent cannot grow this by calling tools in a loop).
MAX_OPEN_ROUNDS = 32

#: What the human answered. `not-asked`: the client cannot show a prompt (no elicitation).
Answer = Literal["accepted", "declined", "cancelled", "unanswered", "not-asked"]

#: Files a share's prompt names among those it leaves out (the rest are counted).
SKIPPED_SHOWN = 10

#: The form every question shows: no fields, only the client's accept / decline buttons.
_YES_OR_NO: dict[str, Any] = {"type": "object", "properties": {}}
#: The key of the one question an input-required round carries.
_ROUND_KEY = "approval"


class Call(Protocol):
    """The tool call a question is asked in (the toolkit's ToolContext)."""

    @property
    def request(self) -> ServerRequestContext[Any, Any]: ...

    @property
    def input_responses(self) -> Mapping[str, InputResponse] | None: ...

    @property
    def request_state(self) -> str | None: ...

    #: What this call brought for its questions (set by `Approvals.ask` on first use).
    approval_answers: CallAnswers | None

    async def with_progress(self, what: str, work: Callable[[], Awaitable[T]]) -> T: ...


class InputRequired(Exception):
    """Ends a 2026-era tool round: the client asks the human, then calls the tool again."""

    def __init__(self, result: InputRequiredResult) -> None:
        super().__init__("the human's answer is needed")
        self.result = result


@dataclass(frozen=True, slots=True)
class Question:
    """One question for the human. `subject` is what the answer is about (the text to be sent,
    the member and phrase of a join, a path): an answer counts only for the same kind and
    subject, whatever the shown message says around it."""

    kind: Literal["join", "say", "turns", "read-files", "write-files"]
    subject: str
    message: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.kind}\0{self.subject}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Policy:
    """What the human set for one tunnel: approve every say, and the turn budget (0: off)."""

    approve_says: bool = False
    turn_budget: int = DEFAULT_TURN_BUDGET


def read_policy(*, approve_says: bool = False, env: Mapping[str, str] = os.environ) -> Policy:
    """The policy for a tunnel opened or joined now. `approve_says` (the tool argument) can
    only turn approvals on: an agent cannot turn off what its human set.

    Raises ValueError, naming the variable, when TUNNEL_APPROVE or TUNNEL_TURN_BUDGET holds
    something else than they take.
    """
    raw = env.get(APPROVE_ENV, "").strip()
    wanted = {word.strip().lower() for word in raw.split(",") if word.strip()}
    if wanted - {"say"}:
        raise ValueError(
            f"{APPROVE_ENV}={raw!r} is not understood: set it to `say` (your human approves every "
            "tunnel_say first) or unset it"
        )
    budget_raw = env.get(TURN_BUDGET_ENV, "").strip()
    budget = DEFAULT_TURN_BUDGET
    if budget_raw:
        budget = int(budget_raw) if budget_raw.isascii() and budget_raw.isdigit() else -1
        if not 0 <= budget <= MAX_TURN_BUDGET:
            raise ValueError(
                f"{TURN_BUDGET_ENV}={budget_raw!r} is not a turn budget: set it to a whole number "
                f"of messages from 0 (no budget) to {MAX_TURN_BUDGET} (default "
                f"{DEFAULT_TURN_BUDGET}), or unset it"
            )
    return Policy(approve_says=approve_says or "say" in wanted, turn_budget=budget)


@dataclass(frozen=True, slots=True)
class SayDecision:
    """Whether a say goes out. `answer`: what the human answered, when asked. `reason`: why it
    is not sent (for the agent). `note`: what the agent should know about one that is sent."""

    send: bool
    answer: Answer | None = None
    reason: str | None = None
    note: str | None = None


@dataclass(slots=True)
class CallAnswers:
    """The answers one 2026-era tool call brought, by question digest; `waiting`: questions it
    was asked before and brought no answer for, with their deadlines."""

    given: dict[str, Answer] = field(default_factory=dict)
    waiting: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Round:
    """A question asked in a 2026-era round, waiting for the client's next call."""

    digest: str
    deadline: float
    answered: dict[str, Answer] = field(default_factory=dict)  # by earlier rounds of the call


class Approvals:
    """The approvals of one MCP connection: its open questions and the current tunnel's policy."""

    def __init__(self) -> None:
        self._rounds: OrderedDict[str, _Round] = OrderedDict()
        self.policy = Policy()
        self._turns = 0  # this agent's says since its human last approved

    # -- the tunnel's policy and turn budget -----------------------------------------------------

    def begin(self, policy: Policy) -> None:
        """A new tunnel: its policy, and a fresh turn budget."""
        self.policy = policy
        self._turns = 0

    @property
    def turns_left(self) -> int | None:
        """Says left before the human is asked whether to go on (None: no budget)."""
        budget = self.policy.turn_budget
        return max(0, budget - self._turns) if budget else None

    def said(self) -> None:
        """One say of this agent reached the connection (sent or queued)."""
        self._turns += 1

    def _renew(self) -> None:
        self._turns = 0

    # -- asking ------------------------------------------------------------------------------------

    async def ask(self, call: Call, question: Question) -> Answer:
        """The human's answer to `question` (see the module docstring for how it is asked).

        Raises InputRequired to end a 2026-era round (the toolkit returns it to the client).
        """
        if not _can_elicit(call.request):
            return "not-asked"
        if call.request.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
            return await self._ask_now(call, question)
        return self._answer_or_ask(call, question)

    async def _ask_now(self, call: Call, question: Question) -> Answer:
        request = call.request

        async def answer() -> Answer:
            with trio.move_on_after(ANSWER_WITHIN):
                try:
                    result = await request.session.elicit_form(
                        question.message, _YES_OR_NO, related_request_id=request.request_id
                    )
                except (MCPError, ValidationError):
                    # The client declared elicitation yet could not ask (or answered
                    # nonsense): nobody said yes.
                    return "unanswered"
                return _answer_of(result)
            return "unanswered"

        return await call.with_progress("waiting for your human's answer", answer)

    def _answer_or_ask(self, call: Call, question: Question) -> Answer:
        now = trio.current_time()
        if call.approval_answers is None:
            call.approval_answers = self._take_round(call, now)
        answers = call.approval_answers
        if question.digest in answers.given:
            return answers.given[question.digest]
        # Asked again without an answer (the client called without one): same deadline.
        deadline = answers.waiting.get(question.digest, now + ANSWER_WITHIN)
        if now > deadline:
            return "unanswered"
        token = secrets.token_urlsafe(16)
        self._rounds[token] = _Round(question.digest, deadline, dict(answers.given))
        while len(self._rounds) > MAX_OPEN_ROUNDS:
            self._rounds.popitem(last=False)
        request = ElicitRequest(
            params=ElicitRequestFormParams(message=question.message, requested_schema=_YES_OR_NO)
        )
        raise InputRequired(
            InputRequiredResult(input_requests={_ROUND_KEY: request}, request_state=token)
        )

    def _take_round(self, call: Call, now: float) -> CallAnswers:
        """The answers a call brings: those of the round its requestState names (taken once, so
        an answer cannot be replayed), and the one the client gives now."""
        answers = CallAnswers()
        token = call.request_state
        asked = self._rounds.pop(token, None) if token else None
        if asked is None:
            return answers
        answers.given.update(asked.answered)
        response = (call.input_responses or {}).get(_ROUND_KEY)
        if response is None:
            answers.waiting[asked.digest] = asked.deadline
        elif now > asked.deadline:
            answers.given[asked.digest] = "unanswered"  # too late: the tool moved on
        else:
            answers.given[asked.digest] = _answer_of(response)
        return answers

    # -- the questions -----------------------------------------------------------------------------

    async def approve_join(
        self,
        call: Call,
        *,
        tunnel_id: str,
        goal: str,
        host: str,
        members: Sequence[str],
        you: str,
        phrase: str | None,
    ) -> Answer:
        """May this member stay in the tunnel it just joined? Only `accepted` and `not-asked`
        keep it in; the caller leaves on anything else."""
        shown = ", ".join(_quote(name) for name in members) or "nobody yet"
        message = (
            "Your agent joined a tunnel and waits for your OK before it says or reads anything.\n"
            f"Host: {_quote(host)}\n"
            f"Goal, written by the host: {_quote(goal)}\n"
            f"Members: {shown}; you are {_quote(you)}\n"
            f"Verification phrase: {phrase or '(none)'}\n"
            "Compare these four words with the host's human over a channel you both trust (a "
            "call, a DM): different words mean someone else is in between, so decline.\n"
            f"Accept to stay in the tunnel. Decline leaves it at once; so does no answer within "
            f"{_duration(ANSWER_WITHIN)}."
        )
        subject = f"{tunnel_id}\0{you}\0{phrase}"
        return await self.ask(call, Question("join", subject, message))

    async def approve_say(
        self, call: Call, *, tunnel_id: str, speaker: str, text: str, after_check_in: bool = False
    ) -> SayDecision:
        """May this say go out? Asks the human when says need approval, or when the turn budget
        is used up; call `said()` once it went out."""
        budget = self.policy.turn_budget
        at_budget = budget > 0 and self._turns >= budget
        if self.policy.approve_says:
            note = (
                f"\n(Your agent has said {self._turns} messages since you last approved; accepting "
                f"also lets it say {budget} more before it asks again.)"
                if at_budget
                else ""
            )
            message = (
                f"Your agent wants to say this in tunnel {tunnel_id}, to everyone in the room, as "
                f"{_quote(speaker)}:\n\n{_visible(text)}\n\n"
                f"Accept sends it. Decline means it is not sent.{note}"
            )
            answer = await self.ask(call, Question("say", f"{tunnel_id}\0{text}", message))
            if answer == "accepted":
                self._renew()  # the human read this one: the count starts again
                return SayDecision(True, answer)
            if answer != "not-asked":
                return SayDecision(False, answer, _not_sent(answer, "this message"))
            unasked = (
                f"{APPROVE_ENV}=say asks your human to approve every message, but your MCP client "
                "cannot show approval prompts: show your human each message and get their OK "
                "before you send it."
            )
            if not at_budget:
                return SayDecision(True, answer, note=unasked)
            if not after_check_in:
                return SayDecision(False, answer, self._check_in(budget))
            self._renew()
            return SayDecision(True, answer, note=unasked)
        if not at_budget:
            return SayDecision(True)
        message = (
            f"Your agent has said {self._turns} messages in tunnel {tunnel_id} since you last "
            f"approved ({TURN_BUDGET_ENV}={budget}). Its next message would be:\n\n"
            f"{_visible(text)}\n\n"
            f"Accept lets it go on for {budget} more messages, this one included. Decline stops "
            "it here: it will check in with you."
        )
        answer = await self.ask(call, Question("turns", f"{tunnel_id}\0{self._turns}\0{text}", message))
        if answer == "accepted" or (answer == "not-asked" and after_check_in):
            self._renew()
            return SayDecision(True, answer)
        if answer == "not-asked":
            return SayDecision(False, answer, self._check_in(budget))
        return SayDecision(
            False,
            answer,
            _not_sent(answer, "going on")
            + " Check in with your human: summarise the conversation and ask how to go on.",
        )

    def _check_in(self, budget: int) -> str:
        return (
            f"Not sent: you have said {self._turns} messages in this tunnel since your human last "
            f"approved, and the turn budget is {budget} ({TURN_BUDGET_ENV}). Check in with your "
            "human now: summarise the conversation so far and ask whether to go on. Only if they "
            "say yes, call tunnel_say again with afterCheckIn: true (that renews the budget)."
        )

    async def approve_reading(
        self,
        call: Call,
        *,
        tunnel_id: str,
        path: str,
        files: int,
        total_bytes: int,
        skipped: Sequence[tuple[str, str]] = (),
        skipped_unlisted: int = 0,
        digest: str | None = None,
    ) -> Answer:
        """May `files` files (`total_bytes` in all) under `path` be offered to the room? Asked
        after the local scan (which lists and hashes them) and before anything is sent; only
        `accepted` is a yes from the human. `skipped`: (path, why) of what the scan left out;
        `digest`: the offer's hash, so an answer counts only for exactly these files."""
        left_out = ""
        if skipped or skipped_unlisted:
            shown = ", ".join(f"{_quote(p)} ({why})" for p, why in skipped[:SKIPPED_SHOWN])
            more = len(skipped) - min(len(skipped), SKIPPED_SHOWN) + skipped_unlisted
            left_out = (
                f"Left out (never sent): {shown}" + (f" and {more} more" if more else "") + "\n"
            )
        message = (
            f"Your agent wants to share {_count(files, 'file')} ({_size(total_bytes)}) from\n"
            f"{_visible(path)}\n"
            f"with everyone in tunnel {tunnel_id}.\n{left_out}"
            "Nothing is sent before you accept (the files were only read here, to list and hash "
            "them).\nAccept shares them. Decline shares nothing."
        )
        subject = f"{tunnel_id}\0{path}\0{files}\0{total_bytes}\0{digest}"
        return await self.ask(call, Question("read-files", subject, message))

    async def approve_writing(
        self,
        call: Call,
        *,
        tunnel_id: str,
        destination: str,
        files: int | None = None,
        total_bytes: int | None = None,
        sharer: str | None = None,
        replaces: int = 0,
    ) -> Answer:
        """May files received in the tunnel be written to `destination` (the full path)? Ask
        before anything is written; only `accepted` is a yes from the human. `sharer`: who
        offers them (shown quoted); `replaces`: existing files they would overwrite."""
        what = "files received"
        if files is not None:
            what = f"{_count(files, 'file')} received"
            if total_bytes is not None:
                what += f" ({_size(total_bytes)})"
        source = f" from {sharer}" if sharer else ""
        clobbers = (
            f"They replace {_count(replaces, 'existing file')} there (overwrite).\n" if replaces else ""
        )
        message = (
            f"Your agent wants to save {what} in tunnel {tunnel_id}{source} to\n"
            f"{_visible(destination)}\n{clobbers}"
            "Nothing is written before you accept.\nAccept saves them there. Decline saves nothing."
        )
        subject = f"{tunnel_id}\0{destination}\0{files}\0{total_bytes}\0{replaces}"
        return await self.ask(call, Question("write-files", subject, message))


def _can_elicit(request: ServerRequestContext[Any, Any]) -> bool:
    """Whether the client declared form-mode elicitation (a bare `elicitation: {}`, from before
    modes existed, counts as form; url-only does not)."""
    capabilities = request.session.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None:
        return False
    return elicitation.form is not None or elicitation.url is None


_ACTIONS: dict[str, Answer] = {"accept": "accepted", "decline": "declined", "cancel": "cancelled"}


def _answer_of(response: object) -> Answer:
    if not isinstance(response, ElicitResult):
        return "unanswered"  # a response of another kind is not an answer to this question
    return _ACTIONS.get(response.action, "unanswered")


def _not_sent(answer: Answer, what: str) -> str:
    said = {
        "declined": "your human declined",
        "cancelled": "your human dismissed the prompt for",
        "unanswered": f"your human did not answer within {_duration(ANSWER_WITHIN)} about",
    }.get(answer, "your human did not approve")
    return f"Not sent: {said} {what}. Do not send it again unless your human asks you to."


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} seconds"
