"""One table for every benchmark: what was measured, our figure, the baseline measured beside it in
the same run, their ratio, and the target."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass


@dataclass
class Row:
    what: str
    ours: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None  # None: nothing to judge (a figure to report)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(rows: list[Row]) -> str:
    header = ("what", "ours", "baseline (same run)", "ratio", "target", "met")
    cells = [header] + [
        (r.what, r.ours, r.baseline, r.ratio, r.target, {True: "yes", False: "NO", None: "-"}[r.met]) for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)
