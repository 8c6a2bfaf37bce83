"""Figures, their summaries and the table: nothing here touches a socket or a clock."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank, so it is always a value that was seen."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(slots=True)
class Figure:
    """One measured quantity: its samples, how to show it, and what it is compared with.

    `samples` are per-operation values (latencies, bytes) or, for rates, one value per
    repetition; `p95` is shown only where a distribution means something (latencies).
    """

    key: str
    label: str
    unit: str  # "ms", "us", "msg/s", "KiB", ...
    samples: list[float]
    higher_is_better: bool = False
    show_p95: bool = True
    baseline: Figure | None = None
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95)

    @property
    def ratio(self) -> float:
        """This figure divided by its baseline's (both medians); NaN without a baseline."""
        if self.baseline is None or not self.baseline.median:
            return math.nan
        return self.median / self.baseline.median

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "label": self.label,
            "unit": self.unit,
            "n": len(self.samples),
            "median": self.median,
            "p95": self.p95 if self.show_p95 else None,
            "higher_is_better": self.higher_is_better,
            "note": self.note,
        }
        if self.baseline is not None:
            out["baseline"] = {
                "key": self.baseline.key,
                "label": self.baseline.label,
                "median": self.baseline.median,
                "p95": self.baseline.p95 if self.baseline.show_p95 else None,
                "n": len(self.baseline.samples),
            }
            out["ratio_to_baseline"] = self.ratio
        if self.extra:
            out["extra"] = dict(self.extra)
        return out


def _num(value: float) -> str:
    if value != value:  # NaN
        return "-"
    magnitude = abs(value)
    if magnitude >= 10_000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio(fig: Figure) -> str:
    r = fig.ratio
    if r != r:
        return "-"
    return f"{r:.2f}x" if r < 100 else f"{r:,.0f}x"


def render_table(figures: list[Figure]) -> str:
    """A fixed-width table: the tunnel figure, its baseline, and the ratio between them."""
    header = ["figure", "unit", "median", "p95", "n", "baseline median", "base p95", "ratio"]
    rows = [header]
    for fig in figures:
        base = fig.baseline
        rows.append(
            [
                fig.label,
                fig.unit,
                _num(fig.median),
                _num(fig.p95) if fig.show_p95 else "-",
                str(len(fig.samples)),
                _num(base.median) if base else "-",
                _num(base.p95) if base and base.show_p95 else "-",
                _ratio(fig),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
