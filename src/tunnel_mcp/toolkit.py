"""How a tunnel tool is declared, listed and called, and the guards every tool shares.

A tool is a plain async function: its annotated parameters are the MCP arguments, its
`Annotated[ToolResult, Model]` return annotation names the structured result, and its
docstring is the description an agent reads. `tool()` turns such a function into a `Tool`:
an arguments model built from the signature (published as the input schema), the result
model (published as the output schema, in the form clients check cheaply: schemas.py) and
the dedented docstring. The server answers `tools/list` and `tools/call` from a table of
`Tool`s through the SDK's low-level `Server`, so every word an agent sees is ours, and every
call passes through the guards here:

* arguments that fail validation are answered with `bad_arguments` (field names and rules,
  never the rejected values, which may hold a join link);
* a session-layer error becomes a tool error whose text says what to do (`guarded`);
* anything unexpected becomes a tool error that hides its text (it could hold anything).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import logging
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import annotated_types
import trio
from mcp.server.context import ServerRequestContext
from mcp.types import (
    CallToolRequestParams,
    InputRequiredResult,
    InputResponse,
    ToolAnnotations,
)
from mcp.types import Tool as ToolListing
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from tunnel_mcp.approvals import Approvals, CallAnswers, InputRequired
from tunnel_mcp.manager import TunnelManager
from tunnel_mcp.models import field_title
from tunnel_mcp.schemas import compact
from tunnel_trio.session_types import TunnelError

log = logging.getLogger(__name__)

ToolFunction = Callable[..., Awaitable["ToolResult"]]
T = TypeVar("T")

#: How often a waiting tunnel_listen (or a slow open/join) reports progress.
PROGRESS_EVERY = 5.0


class ToolContext:
    """What a tool sees of the MCP request it serves: its connection's tunnel, its human's
    approvals, and progress. Also the `approvals.Call` a question to the human is asked in."""

    __slots__ = ("approval_answers", "input_responses", "request", "request_state")

    def __init__(
        self,
        request: ServerRequestContext[Any, Any],
        input_responses: Mapping[str, InputResponse] | None = None,
        request_state: str | None = None,
    ) -> None:
        self.request = request
        #: 2026-era rounds: the human's answers the client brings, and the round they answer.
        self.input_responses = input_responses
        self.request_state = request_state
        self.approval_answers: CallAnswers | None = None

    @property
    def manager(self) -> TunnelManager:
        manager = self.request.lifespan_context
        if not isinstance(manager, TunnelManager):  # pragma: no cover - wiring bug
            raise RuntimeError("the tunnel server was started without its lifespan")
        return manager

    @property
    def approvals(self) -> Approvals:
        return self.manager.approvals

    async def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """A `notifications/progress` for this call; nothing when the client did not ask."""
        await self.request.session.report_progress(progress, total, message)

    async def with_progress(self, what: str, work: Callable[[], Awaitable[T]]) -> T:
        return await _with_progress(self, what, work)


def _manager(ctx: ToolContext) -> TunnelManager:
    return ctx.manager


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool answers: one text for humans (and for clients that ignore structured
    content) and the result model's wire form, the structured content."""

    text: str
    structured_content: dict[str, Any] | None = None
    is_error: bool = False

    def wire(self) -> dict[str, Any]:
        """The answer in its wire form, as `tools/call` sends it: what the SDK makes of the equal
        `CallToolResult` (tests/tunnel_mcp/test_wire.py holds the two equal).

        Written directly: building that model and dumping it again cost more than the rest of a
        tunnel_status. Handed a mapping, the SDK copies its top level only (a model it would dump
        whole: a deep copy of a full listen page) before checking it against the protocol's
        types and serializing it."""
        out: dict[str, Any] = {
            "content": [{"type": "text", "text": self.text}],
            "isError": self.is_error,
            "resultType": "complete",
        }
        if self.structured_content is not None:
            out["structuredContent"] = self.structured_content
        return out


def _ok(model: BaseModel, text: str) -> ToolResult:
    return ToolResult(text, model.model_dump(mode="json", by_alias=True))


def _error(text: str) -> ToolResult:
    return ToolResult(text, is_error=True)


def _guarded(fn: ToolFunction) -> ToolFunction:
    """Turn a session-layer error into a tool error, and anything unexpected into a safe one."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> ToolResult:
        try:
            return await fn(*args, **kwargs)
        except InputRequired:
            raise  # not a failure: the round ends with a question for the human (Tool.call)
        except Exception as exc:
            user_facing = _user_facing(exc)
            if user_facing is not None:
                # These messages are written for users and never hold a secret.
                log.info("%s: %s", fn.__name__, user_facing)
                return _error(str(user_facing))
            # Unknown text could hold anything (even a link): keep it out of the result and out
            # of the log unless debugging was asked for.
            log.error("%s failed unexpectedly (%s); --log-level debug shows details", fn.__name__, type(exc).__name__)
            log.debug("%s traceback", fn.__name__, exc_info=True)
            return _error(
                f"{fn.__name__} failed with an internal error ({type(exc).__name__}). "
                "Call tunnel_status to see the tunnel's state; the server's log has details."
            )

    return wrapper


def _user_facing(exc: BaseException) -> Exception | None:
    """The error whose message is meant for the user, if `exc` is (or wraps) one.

    That is a `TunnelError`, or failing that an error raised by the trio drivers (cloudflared,
    DoH, transports), whose messages also say what to do and carry no secret. Nurseries wrap
    errors in exception groups, so look inside those.
    """
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_user_facing(e) for e in exc.exceptions]
        found = [leaf for leaf in leaves if leaf is not None]
        return next((e for e in found if isinstance(e, TunnelError)), found[0] if found else None)
    if isinstance(exc, TunnelError):
        return exc
    if isinstance(exc, Exception) and type(exc).__module__.startswith("tunnel_trio."):
        return exc
    return None


def _bad_arguments(tool: str, error: ValidationError, schema: dict[str, Any] | None) -> str:
    """What was wrong with a tool call's arguments, and how to call it right.

    Pydantic's own report quotes the rejected values: an agent that put a join link in the
    wrong field would see its secret echoed into the transcript and the client's logs. This
    names the fields and the rule each broke, never the values.
    """
    properties: dict[str, Any] = (schema or {}).get("properties", {})
    lines = [f"{tool}: invalid arguments; nothing was done."]
    for problem in error.errors(include_url=False, include_input=False, include_context=False):
        field_name = ".".join(str(part) for part in problem["loc"]) or "arguments"
        line = f"- {field_name}: {problem['msg']}."
        described = properties.get(str(problem["loc"][0]), {}) if problem["loc"] else {}
        if isinstance(described, dict) and described.get("description"):
            line += f" ({field_name}: {described['description']})"
        lines.append(line)
    required = set((schema or {}).get("required", []))
    accepted = ", ".join(f"{name}{' (required)' if name in required else ''}" for name in properties)
    lines.append(f"Call {tool} again with corrected arguments. It takes: {accepted or 'no arguments'}.")
    return "\n".join(lines)


# -- declaring tools ---------------------------------------------------------------------------


class _Arguments(BaseModel):
    # Unknown keys are ignored, as MCP clients add their own (and agents guess).
    model_config = ConfigDict(extra="ignore", field_title_generator=field_title)


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool: what `tools/list` publishes about it and how `tools/call` runs it."""

    name: str
    title: str
    description: str
    annotations: ToolAnnotations
    arguments: type[BaseModel]
    result: type[BaseModel]
    function: ToolFunction
    context_parameter: str
    input_schema: dict[str, Any] = field(init=False)
    output_schema: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_schema", self.arguments.model_json_schema())
        # The form a client checks cheaply (every structured result is checked against it).
        object.__setattr__(self, "output_schema", compact(self.result.model_json_schema()))

    def with_maximum(self, argument: str, maximum: int) -> Tool:
        """This tool with `argument` bounded by `maximum` (a limit known only at start-up)."""
        fields: dict[str, Any] = {}
        for name, info in self.arguments.model_fields.items():
            if name == argument:
                info = copy.copy(info)
                info.metadata = [m for m in info.metadata if not isinstance(m, annotated_types.Le)]
                info.metadata.append(annotated_types.Le(maximum))
            fields[name] = (info.annotation, info)
        arguments = create_model(self.arguments.__name__, __base__=_Arguments, **fields)
        return dataclasses.replace(self, arguments=arguments)

    def listing(self) -> ToolListing:
        return ToolListing(
            name=self.name,
            title=self.title,
            description=self.description,
            input_schema=self.input_schema,
            output_schema=self.output_schema,
            annotations=self.annotations,
        )

    async def call(
        self, request: ServerRequestContext[Any, Any], params: CallToolRequestParams
    ) -> dict[str, Any] | InputRequiredResult:
        """Run the tool: its answer in wire form (`ToolResult.wire`), or a question for the human."""
        try:
            parsed = self.arguments.model_validate(params.arguments or {})
        except ValidationError as exc:
            # Field names only: the rejected values are the caller's data.
            fields = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
            log.info("%s rejected arguments: %s", self.name, fields)
            return _error(_bad_arguments(self.name, exc, self.input_schema)).wire()
        values = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        values[self.context_parameter] = ToolContext(
            request, params.input_responses, params.request_state
        )
        try:
            return (await self.function(**values)).wire()
        except InputRequired as asking:
            return asking.result


def tool(
    *,
    name: str,
    title: str,
    read_only: bool | None = None,
    destructive: bool | None = None,
    idempotent: bool | None = None,
    open_world: bool | None = None,
) -> Callable[[ToolFunction], Tool]:
    """Declare `fn` as the tool `name` (see the module docstring).

    The hints become the tool's MCP annotations (None: not stated), titled like the tool.
    """
    annotations = ToolAnnotations(
        title=title,
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=open_world,
    )

    def declare(fn: ToolFunction) -> Tool:
        hints = typing.get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {}
        context_parameter = ""
        for parameter in inspect.signature(fn).parameters.values():
            annotation = hints[parameter.name]
            if annotation is ToolContext:
                context_parameter = parameter.name
                continue
            default = ... if parameter.default is inspect.Parameter.empty else parameter.default
            fields[parameter.name] = (annotation, default)
        if not context_parameter:
            raise TypeError(f"{fn.__name__} must take a ToolContext parameter")
        returned = typing.get_args(hints["return"])
        if len(returned) != 2 or returned[0] is not ToolResult:
            raise TypeError(f"{fn.__name__} must return Annotated[ToolResult, <result model>]")
        arguments = create_model(f"{name}Arguments", __base__=_Arguments, **fields)
        return Tool(
            name=name,
            title=title,
            description=inspect.cleandoc(fn.__doc__ or ""),
            annotations=annotations,
            arguments=arguments,
            result=returned[1],
            function=_guarded(fn),
            context_parameter=context_parameter,
        )

    return declare


async def _with_progress(ctx: ToolContext, what: str, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work`, reporting progress every few seconds meanwhile.

    Clients that reset their tool timeout on progress then wait out a slow start (cloudflared
    can take a while to become reachable) instead of giving up at 60 s.
    """
    outcome: list[T] = []
    failure: list[Exception] = []

    async def run(done: trio.CancelScope) -> None:
        try:
            outcome.append(await work())
        except Exception as exc:  # re-raised below, outside the nursery's exception group
            failure.append(exc)
        finally:
            done.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, nursery.cancel_scope)
        started = trio.current_time()
        while True:
            await trio.sleep(PROGRESS_EVERY)
            elapsed = trio.current_time() - started
            await ctx.report_progress(elapsed, None, f"{what} ({elapsed:.0f} s)")
    if failure:
        raise failure[0]
    return outcome[0]
