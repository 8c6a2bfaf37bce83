"""Humans in control, through the real MCP client: approvals by elicitation, the verification
phrase, removing a member, the turn budget.

Every approval is tested in both ways a client can be asked: `legacy` (the handshake era: the
server sends `elicitation/create` in the middle of the call) and `auto` (2026-07-28: the call
ends with an `InputRequiredResult` and the client calls again with the answer).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import trio
from inprocess import InProcessRoom
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from tunnel_mcp import approvals, room_tools

MODES = ["legacy", "auto"]
GOAL = "Agree on the retry policy"
PHRASE = re.compile(r"^[a-z]+ [a-z]+ [a-z]+ [a-z]+$")


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNNEL_APPROVE", raising=False)
    monkeypatch.delenv("TUNNEL_TURN_BUDGET", raising=False)


class Human:
    """An elicitation callback: answers as `decide` says, and keeps every prompt it was shown."""

    def __init__(
        self,
        decide: Callable[[str], Awaitable[str]] | str = "accept",
    ) -> None:
        self.prompts: list[str] = []
        self._decide = decide

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        self.prompts.append(params.message)
        action = self._decide if isinstance(self._decide, str) else await self._decide(params.message)
        return types.ElicitResult(action=action, content={} if action == "accept" else None)  # type: ignore[arg-type]


Room = InProcessRoom


async def call(client: Client, tool: str, args: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """A tool call that must succeed: its structured content and its text."""
    result = await client.call_tool(tool, args or {})
    text = result.content[0].text if isinstance(result.content[0], types.TextContent) else ""
    assert not result.is_error, f"{tool} failed: {text}"
    assert result.structured_content is not None
    return result.structured_content, text


async def error(client: Client, tool: str, args: dict[str, Any] | None = None) -> str:
    result = await client.call_tool(tool, args or {})
    assert result.is_error, f"{tool} should have failed"
    assert isinstance(result.content[0], types.TextContent)
    return result.content[0].text


async def open_room(host: Client) -> str:
    opened, _ = await call(host, "tunnel_open", {"goal": GOAL, "transport": "local", "name": "ana"})
    return str(opened["joinLink"])


async def heard(client: Client, since: int = 0) -> list[dict[str, Any]]:
    """Everything in the client's transcript so far, its own messages included."""
    got, _ = await call(client, "tunnel_listen", {"sinceSeq": since, "timeoutMs": 0, "includeOwn": True})
    return list(got["messages"])


async def host_sees(host: Client, event: str, name: str = "ben") -> dict[str, Any]:
    """Wait (a generous bound) until the host's transcript has `event` about `name`."""
    with trio.fail_after(30):
        while True:
            for m in await heard(host):
                if m.get("event") == event and (m.get("subject") or {}).get("name") == name:
                    return m
            await trio.sleep(0.05)


def chats(messages: list[dict[str, Any]]) -> list[str]:
    return [m["text"] for m in messages if m["kind"] == "chat"]


# -- joining ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_an_accepted_join_shows_the_human_what_it_joins_and_the_same_phrase_as_the_host(
    mode: str,
) -> None:
    human = Human("accept")
    async with Room().clients({}, {"mode": mode, "elicitation_callback": human}) as (host, guest):
        link = await open_room(host)
        joined, text = await call(guest, "tunnel_join", {"joinLink": link, "name": "ben"})
        assert joined["joined"] is True and joined["approval"] == "accepted"
        phrase = joined["phrase"]
        assert PHRASE.match(phrase), phrase
        assert f"Verification phrase: {phrase}" in text
        # The human saw the goal, the host, the members and the phrase before saying yes.
        (prompt,) = human.prompts
        assert f'Goal, written by the host: "{GOAL}"' in prompt
        assert 'Host: "ana"' in prompt and '"ben"' in prompt
        assert f"Verification phrase: {phrase}" in prompt
        assert "a call, a DM" in prompt
        # The same four words on both ends: the host's status, its joined event, the guest's status.
        status, status_text = await call(host, "tunnel_status")
        ben = next(m for m in status["members"] if m["name"] == "ben")
        assert ben["phrase"] == phrase and f"phrase: {phrase}" in status_text
        assert (await host_sees(host, "joined"))["phrase"] == phrase
        mine, _ = await call(guest, "tunnel_status")
        assert mine["phrase"] == phrase
        assert [m.get("phrase", "null: left out") for m in mine["members"] if m["name"] == "ana"] == ["null: left out"]
        # And the member can talk.
        said, _ = await call(guest, "tunnel_say", {"text": "hello"})
        assert said["sent"] is True and said["seq"] > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_a_declined_or_dismissed_join_leaves_at_once_and_nothing_is_said(
    mode: str, action: str
) -> None:
    async with Room().clients({}, {"mode": mode, "elicitation_callback": Human(action)}) as (host, guest):
        link = await open_room(host)
        result, text = await call(guest, "tunnel_join", {"joinLink": link, "name": "ben"})
        assert result["joined"] is False
        assert result["approval"] == {"decline": "declined", "cancel": "cancelled"}[action]
        assert text.startswith("Not joined:") and "left" in text
        await host_sees(host, "left")
        assert chats(await heard(host)) == []
        # The tunnel never became the agent's: nothing to say into.
        assert "no open tunnel" in await error(guest, "tunnel_say", {"text": "hi"})


async def test_nothing_reaches_the_guests_agent_before_its_human_answers(nursery: trio.Nursery) -> None:
    asked = trio.Event()
    answer = trio.Event()

    async def decide(_: str) -> str:
        asked.set()
        await answer.wait()
        return "accept"

    room = Room()
    async with room.clients({}, {"mode": "legacy", "elicitation_callback": Human(decide)}) as (host, guest):
        link = await open_room(host)
        await call(host, "tunnel_say", {"text": "before you joined"})
        joined: list[dict[str, Any]] = []

        async def join() -> None:
            joined.append((await call(guest, "tunnel_join", {"joinLink": link, "name": "ben"}))[0])

        nursery.start_soon(join)
        with trio.fail_after(30):
            await asked.wait()
        # While the human has the prompt, the room holds ben, but his agent reaches nothing.
        for tool, args in [("tunnel_say", {"text": "x"}), ("tunnel_listen", {"timeoutMs": 0}), ("tunnel_status", {})]:
            assert "has not approved it yet" in await error(guest, tool, args)
        assert "has not approved it yet" in await error(guest, "tunnel_open", {"goal": "g", "transport": "local"})
        answer.set()
        with trio.fail_after(30):
            while not joined:
                await trio.sleep(0.02)
        assert joined[0]["approval"] == "accepted"
        assert chats(await heard(guest)) == ["before you joined"]


async def test_a_join_nobody_answers_in_time_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    # Handshake era: the server stops waiting at the bound; the prompt may stay open forever.
    monkeypatch.setattr(approvals, "ANSWER_WITHIN", 2.0)
    monkeypatch.setattr(room_tools, "ANSWER_WITHIN", 2.0)

    async def never(_: str) -> str:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async with Room().clients({}, {"mode": "legacy", "elicitation_callback": Human(never)}) as (host, guest):
        link = await open_room(host)
        with trio.fail_after(60):
            result, text = await call(guest, "tunnel_join", {"joinLink": link, "name": "ben"})
        assert result["joined"] is False and result["approval"] == "unanswered"
        assert "did not answer" in text
        await host_sees(host, "left")


async def test_a_late_answer_in_the_2026_flow_does_not_join(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(approvals, "ANSWER_WITHIN", 2.0)
    monkeypatch.setattr(room_tools, "ANSWER_WITHIN", 2.0)

    async def late(_: str) -> str:
        await trio.sleep(3.0)  # past the bound, before the held join gives up on its own
        return "accept"

    async with Room().clients({}, {"elicitation_callback": Human(late)}) as (host, guest):
        link = await open_room(host)
        result, _ = await call(guest, "tunnel_join", {"joinLink": link, "name": "ben"})
        assert result["joined"] is False and result["approval"] == "unanswered"
        await host_sees(host, "left")


async def test_a_join_whose_client_never_calls_back_leaves_by_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 2026 era: the server cannot wait inside the call; the held join leaves on its own.
    monkeypatch.setattr(approvals, "ANSWER_WITHIN", 1.0)
    monkeypatch.setattr(room_tools, "ANSWER_WITHIN", 1.0)
    monkeypatch.setattr(room_tools, "ADMIT_GRACE", 1.0)

    async def never(_: str) -> str:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    room = Room()
    async with room.clients({}, {"elicitation_callback": Human(never)}) as (host, guest):
        link = await open_room(host)
        async with trio.open_nursery() as abandoned:
            abandoned.start_soon(call, guest, "tunnel_join", {"joinLink": link, "name": "ben"})
            await host_sees(host, "joined")
            await host_sees(host, "left")
            abandoned.cancel_scope.cancel()
        assert room.managers[1].holding is None


async def test_without_elicitation_the_join_goes_ahead_and_the_agent_is_told_to_ask() -> None:
    async with Room().clients({}, {}) as (host, guest):
        link = await open_room(host)
        joined, text = await call(guest, "tunnel_join", {"joinLink": link, "name": "ben"})
        assert joined["joined"] is True and joined["approval"] == "not-asked"
        assert "cannot show approval prompts" in text and joined["phrase"] in text
        assert "compare the phrase with the host's human" in text


async def test_closing_a_held_join_leaves_it() -> None:
    asked = trio.Event()

    async def wait(_: str) -> str:
        asked.set()
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async with Room().clients({}, {"mode": "legacy", "elicitation_callback": Human(wait)}) as (host, guest):
        link = await open_room(host)
        async with trio.open_nursery() as waiting:
            waiting.start_soon(call, guest, "tunnel_join", {"joinLink": link, "name": "ben"})
            with trio.fail_after(30):
                await asked.wait()
            closed, text = await call(guest, "tunnel_close")
            waiting.cancel_scope.cancel()
        assert closed["role"] == "member" and "before your human approved" in text
        await host_sees(host, "left")


# -- says -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_approved_says_reach_the_room_only_after_the_human_said_yes(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNNEL_APPROVE", "say")
    checked: list[list[str]] = []
    hosts: list[Client] = []

    async def decide(prompt: str) -> str:
        if "wants to say" not in prompt:
            return "accept"  # the join
        checked.append(chats(await heard(hosts[0])))  # what the room has while the human reads
        return "decline" if "secret plan" in prompt else "accept"

    async with Room().clients({}, {"mode": mode, "elicitation_callback": Human(decide)}) as (host, guest):
        hosts.append(host)
        link = await open_room(host)
        await call(guest, "tunnel_join", {"joinLink": link, "name": "ben"})
        status, text = await call(guest, "tunnel_status")
        assert status["approveSays"] is True and "approves every tunnel_say" in text
        said, _ = await call(guest, "tunnel_say", {"text": "line one\nline two \u202e"})
        assert said["sent"] is True and said["approval"] == "accepted" and said["seq"] > 0
        refused, text = await call(guest, "tunnel_say", {"text": "the secret plan"})
        assert refused == {**refused, "sent": False, "approval": "declined", "seq": None}
        assert text.startswith("Not sent: your human declined") and "Do not send it again" in text
        assert checked == [[], ["line one\nline two \u202e"]]
        assert chats(await heard(host)) == ["line one\nline two \u202e"]


async def test_the_say_prompt_shows_the_exact_text_with_hidden_characters_made_visible(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    human = Human("accept")
    async with Room().clients({"mode": "legacy", "elicitation_callback": human}) as (host,):
        await call(host, "tunnel_open", {"goal": GOAL, "transport": "local", "name": "ana", "approveSays": True})
        await call(host, "tunnel_say", {"text": "pay\u202e 100\u200b\nnow"})
        (prompt,) = human.prompts
        assert "pay\\u202e 100\\u200b\nnow" in prompt and "\u202e" not in prompt


async def test_an_agent_cannot_turn_off_the_approvals_its_human_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNEL_APPROVE", "say")
    human = Human("decline")
    async with Room().clients({"elicitation_callback": human}) as (host,):
        await call(host, "tunnel_open", {"goal": GOAL, "transport": "local", "approveSays": False})
        said, _ = await call(host, "tunnel_say", {"text": "hi"})
        assert said["sent"] is False and len(human.prompts) == 1


async def test_approved_says_without_elicitation_are_sent_with_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNEL_APPROVE", "say")
    async with Room().clients({}) as (host,):
        await open_room(host)
        said, text = await call(host, "tunnel_say", {"text": "hi"})
        assert said["sent"] is True and said["approval"] == "not-asked"
        assert "cannot show approval prompts" in text


# -- the turn budget ----------------------------------------------------------------------------


async def test_at_the_turn_budget_an_agent_without_prompts_must_check_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNEL_TURN_BUDGET", "2")
    async with Room().clients({}) as (host,):
        await open_room(host)
        assert (await call(host, "tunnel_status"))[0]["turnsLeft"] == 2
        await call(host, "tunnel_say", {"text": "one"})
        said, text = await call(host, "tunnel_say", {"text": "two"})
        assert said["turnsLeft"] == 0 and "Turn budget used up" in text
        refused, text = await call(host, "tunnel_say", {"text": "three"})
        assert refused["sent"] is False and refused["seq"] is None and refused["approval"] == "not-asked"
        assert "Check in with your human" in text and "afterCheckIn: true" in text
        assert "TUNNEL_TURN_BUDGET" in text
        status, text = await call(host, "tunnel_status")
        assert (status["turnsLeft"], status["turnBudget"]) == (0, 2) and "Turns left" in text
        said, _ = await call(host, "tunnel_say", {"text": "three", "afterCheckIn": True})
        assert said["sent"] is True and said["turnsLeft"] == 1
        assert chats(await heard(host)) == ["one", "two", "three"]


@pytest.mark.parametrize("mode", MODES)
async def test_at_the_turn_budget_the_human_is_asked_whether_to_go_on(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNNEL_TURN_BUDGET", "1")
    answers = ["accept", "decline"]

    async def decide(prompt: str) -> str:
        assert "has said 1 messages" in prompt and "TUNNEL_TURN_BUDGET=1" in prompt
        return answers.pop(0)

    human = Human(decide)
    async with Room().clients({"mode": mode, "elicitation_callback": human}) as (host,):
        await open_room(host)
        await call(host, "tunnel_say", {"text": "one"})
        said, _ = await call(host, "tunnel_say", {"text": "two"})
        assert said["sent"] is True and said["approval"] == "accepted" and said["turnsLeft"] == 0
        # afterCheckIn cannot stand in for a human who can be asked.
        refused, text = await call(host, "tunnel_say", {"text": "three", "afterCheckIn": True})
        assert refused["sent"] is False and refused["approval"] == "declined"
        assert "Check in with your human" in text
        assert len(human.prompts) == 2 and "two" in human.prompts[0]
        assert chats(await heard(host)) == ["one", "two"]


async def test_a_zero_budget_never_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNEL_TURN_BUDGET", "0")
    human = Human("decline")
    async with Room().clients({"elicitation_callback": human}) as (host,):
        await open_room(host)
        for n in range(5):
            said, _ = await call(host, "tunnel_say", {"text": str(n)})
            assert said["sent"] is True and said["turnsLeft"] is None
        assert human.prompts == []
        assert "turnsLeft" not in (await call(host, "tunnel_status"))[0]  # null: left out


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TUNNEL_TURN_BUDGET", "lots"), ("TUNNEL_TURN_BUDGET", "-1"), ("TUNNEL_APPROVE", "everything")],
)
async def test_a_bad_setting_is_an_error_naming_the_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    async with Room().clients({}) as (host,):
        text = await error(host, "tunnel_open", {"goal": GOAL, "transport": "local"})
        assert variable in text and repr(value) in text
        assert "no open tunnel" in await error(host, "tunnel_status")


@pytest.mark.parametrize(
    ("env", "argument", "expected"),
    [
        ({}, False, approvals.Policy(False, 40)),
        ({}, True, approvals.Policy(True, 40)),
        ({"TUNNEL_APPROVE": " Say "}, False, approvals.Policy(True, 40)),
        ({"TUNNEL_APPROVE": "", "TUNNEL_TURN_BUDGET": " 7 "}, False, approvals.Policy(False, 7)),
        ({"TUNNEL_TURN_BUDGET": "0"}, False, approvals.Policy(False, 0)),
    ],
)
def test_the_policy_comes_from_the_humans_settings(
    env: dict[str, str], argument: bool, expected: approvals.Policy
) -> None:
    assert approvals.read_policy(approve_says=argument, env=env) == expected


@pytest.mark.parametrize("value", ["say,files", "off", "1"])
def test_tunnel_approve_takes_only_say(value: str) -> None:
    with pytest.raises(ValueError, match="TUNNEL_APPROVE"):
        approvals.read_policy(env={"TUNNEL_APPROVE": value})


@pytest.mark.parametrize("value", ["1.5", "ten", "100001", "²"])
def test_the_turn_budget_is_a_whole_number(value: str) -> None:
    with pytest.raises(ValueError, match="TUNNEL_TURN_BUDGET"):
        approvals.read_policy(env={"TUNNEL_TURN_BUDGET": value})


# -- removing a member ----------------------------------------------------------------------------


async def test_the_host_removes_a_member_everyone_sees_it_and_its_agent_is_told() -> None:
    async with Room().clients({}, {}, {}) as (host, guest, third):
        opened, _ = await call(host, "tunnel_open", {"goal": GOAL, "transport": "local", "name": "ana", "invites": 2})
        ben, _ = await call(guest, "tunnel_join", {"joinLink": opened["invites"][0]["joinLink"], "name": "ben"})
        await call(third, "tunnel_join", {"joinLink": opened["invites"][1]["joinLink"], "name": "cy"})
        await host_sees(host, "joined", "cy")
        member_id = ben["self"]["id"]
        assert "only the host can remove" in await error(third, "tunnel_remove", {"memberId": member_id})
        assert "is you, the host" in await error(host, "tunnel_remove", {"memberId": 1})
        assert "no member 99" in await error(host, "tunnel_remove", {"memberId": 99})

        removed, text = await call(host, "tunnel_remove", {"memberId": member_id, "reason": "phrase mismatch"})
        assert removed["removed"] == {"id": member_id, "name": "ben", "isHost": False}
        assert removed["reason"] == "phrase mismatch" and '"phrase mismatch"' in text
        event = await host_sees(host, "removed")
        assert event["seq"] == removed["seq"] and event["text"] == "phrase mismatch"
        with trio.fail_after(30):
            while not any(m.get("event") == "removed" for m in await heard(third)):
                await trio.sleep(0.05)
        # The removed member's agent learns it on its next call, with the host's reason.
        with trio.fail_after(30):
            while (await call(guest, "tunnel_status"))[0]["connection"] != "closed":
                await trio.sleep(0.05)
        refused = await error(guest, "tunnel_say", {"text": "hello?"})
        assert "removed you" in refused and "phrase mismatch" in refused and "over for you" in refused
        status, _ = await call(guest, "tunnel_status")
        assert "phrase mismatch" in status["closedMessage"]
        assert "no longer in the room" in await error(host, "tunnel_remove", {"memberId": member_id})
        members = (await call(host, "tunnel_status"))[0]["members"]
        assert [m["name"] for m in members] == ["ana", "cy"]


# -- over stdio, with real server processes ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_over_stdio_the_human_approves_the_join_and_the_phrases_match(tmp_path: Path, mode: str) -> None:
    human = Human(_stdio_answer)

    def params(env: dict[str, str]) -> StdioServerParameters:
        args = ["-m", "tunnel_mcp", "--log-level", "debug"]
        return StdioServerParameters(command=sys.executable, args=args, env=env)

    def server_env(tmp_path: Path) -> dict[str, str]:
        return {
            **os.environ,
            "TUNNEL_TRANSPORT": "local",
            "TUNNEL_SKIP_SKILL_INSTALL": "1",
            "TUNNEL_SKILLS_DIR": str(tmp_path / "skills"),
        }

    logs = {name: tmp_path / f"{name}.log" for name in ("host", "guest")}
    guest_env = {**server_env(tmp_path), "TUNNEL_APPROVE": "say"}
    async with AsyncExitStack() as stack:
        host_log = stack.enter_context(logs["host"].open("w"))
        guest_log = stack.enter_context(logs["guest"].open("w"))
        host = await stack.enter_async_context(
            Client(stdio_client(params(server_env(tmp_path)), errlog=host_log), read_timeout_seconds=60)
        )
        guest = await stack.enter_async_context(
            Client(
                stdio_client(params(guest_env), errlog=guest_log),
                mode=mode,
                elicitation_callback=human,
                read_timeout_seconds=60,
            )
        )
        link = await open_room(host)
        joined, _ = await call(guest, "tunnel_join", {"joinLink": link, "name": "ben"})
        assert joined["approval"] == "accepted" and PHRASE.match(joined["phrase"])
        status, _ = await call(host, "tunnel_status")
        assert [m["phrase"] for m in status["members"] if m["name"] == "ben"] == [joined["phrase"]]
        said, _ = await call(guest, "tunnel_say", {"text": "approved words"})
        refused, _ = await call(guest, "tunnel_say", {"text": "words nobody approved"})
        assert said["sent"] is True and refused["sent"] is False
        assert chats(await heard(host)) == ["approved words"]
    assert [p.split("\n", 1)[0] for p in human.prompts] == [
        "Your agent joined a tunnel and waits for your OK before it says or reads anything.",
        f"Your agent wants to say this in tunnel {joined['tunnelId']}, to everyone in the room, as \"ben\":",
        f"Your agent wants to say this in tunnel {joined['tunnelId']}, to everyone in the room, as \"ben\":",
    ]
    # The phrase is for the two humans: it appears in no log line, even at debug level.
    for log in logs.values():
        text = log.read_text()
        assert "joined tunnel" in text or "opened tunnel" in text, text  # the log is not empty
        assert joined["phrase"] not in text


async def _stdio_answer(prompt: str) -> str:
    return "decline" if "nobody approved" in prompt else "accept"
