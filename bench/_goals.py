"""Issue 11's table: each goal beside the figure of this run that it is judged on.

Library-level goals are ratios against the bare baseline of the same run (the machine is
noisy); MCP-level goals are absolute. Nothing here asserts anything: a goal is reported as
met or not, next to the TypeScript original's figure on this machine for reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from _stats import Figure


@dataclass(frozen=True)
class Goal:
    row: str
    key: str
    typescript: str
    #: "ratio" (figure median / baseline median) or "abs" (figure median, its unit).
    measure: str
    limit: float
    at_least: bool = False
    #: For start-up: also met within `floor_slack` ms of the baseline (the import floor).
    floor_slack: float | None = None


GOALS = [
    Goal("join, library level", "join.empty", "2.6 ms", "ratio", 1.3),
    Goal("say -> own ack, 32 B", "say_ack.32", "370 us", "ratio", 1.0),
    Goal("pipelined member -> member, 32 B", "pipe.member.32", "2,781 msg/s", "ratio", 1.3, at_least=True),
    Goal("pipelined, 1 KiB", "pipe.member.1024", "1,856 msg/s", "ratio", 1.0, at_least=True),
    Goal("fan-out host -> 15 members, 32 B", "fanout.32", "5,333 deliv/s", "ratio", 1.5, at_least=True),
    Goal("MCP: process start -> initialize", "startup.initialize", "0.62 s", "abs", 800, floor_slack=100),
    Goal("MCP: tunnel_join, first in a fresh process", "startup.first_join", "38 ms", "abs", 30),
    Goal("MCP: tunnel_join, steady state", "mcp.join", "38 ms", "abs", 30),
    Goal("MCP: host say -> guest's pending listen", "mcp.say_listen", "5.2 ms", "abs", 4),
    Goal("MCP: tunnel_status", "mcp.status", "1.8 ms", "abs", 1.5),
]


def judge(goal: Goal, fig: Figure | None) -> dict[str, object]:
    """One row: what was measured, the goal, and whether it is met."""
    row: dict[str, object] = {"row": goal.row, "key": goal.key, "typescript": goal.typescript}
    if fig is None:
        return {**row, "measured": None, "goal": _goal_text(goal, None), "met": None}
    value = fig.ratio if goal.measure == "ratio" else fig.median
    met = value >= goal.limit if goal.at_least else value <= goal.limit
    if goal.floor_slack is not None and fig.baseline is not None:
        met = met or fig.median <= fig.baseline.median + goal.floor_slack
    if math.isnan(value):
        met = False
    return {
        **row,
        "median": fig.median,
        "unit": fig.unit,
        "baseline_median": fig.baseline.median if fig.baseline else None,
        "ratio": fig.ratio,
        "measured": value,
        "goal": _goal_text(goal, fig),
        "met": met,
    }


def _goal_text(goal: Goal, fig: Figure | None) -> str:
    sign = ">=" if goal.at_least else "<="
    if goal.measure == "ratio":
        return f"{sign} {goal.limit:g}x bare"
    unit = fig.unit if fig else ""
    text = f"{sign} {goal.limit:g} {unit}".rstrip()
    if goal.floor_slack is not None:
        text += f", or import floor + {goal.floor_slack:g} {unit}".rstrip()
    return text


def rows(figures: list[Figure]) -> list[dict[str, object]]:
    by_key = {f.key: f for f in figures}
    return [judge(goal, by_key.get(goal.key)) for goal in GOALS]


def render(judged: list[dict[str, object]]) -> str:
    def num(value: object) -> str:
        if not isinstance(value, float | int) or value != value:
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"

    header = ["issue 11 row", "TypeScript", "ours (median)", "bare baseline", "ratio", "goal", "met"]
    table = [header]
    for r in judged:
        median = f"{num(r.get('median'))} {r.get('unit', '')}".strip() if r.get("measured") is not None else "missing"
        ratio = r.get("ratio")
        table.append([
            str(r["row"]),
            str(r["typescript"]),
            median,
            num(r.get("baseline_median")),
            f"{ratio:.2f}x" if isinstance(ratio, float) and ratio == ratio else "-",
            str(r["goal"]),
            {True: "yes", False: "NO", None: "-"}[r["met"]],  # type: ignore[index]
        ])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    out = []
    for n, line in enumerate(table):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
