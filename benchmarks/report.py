"""What every benchmark case returns (rows of a result beside its baseline) and how they print.

A :class:`Row` is one measurement: its value, the baseline measured in the same run (or a
published figure) and, where the issue sets one, the target and whether it was met. ``run.py``
prints all rows of all cases as one table; cases with more columns (the scale case) also print
their own detail table.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

__all__ = ["Row", "format_value", "machine", "median", "percentile", "print_table", "table"]


@attrs.define(kw_only=True)
class Row:
    """One measurement beside its baseline.

    ``unit`` says how ``value``/``baseline`` print: ``s`` (seconds, scaled to us/ms/s), ``MiB``,
    ``/s`` (a rate) or ``""`` (a plain number). ``met`` is None where there is no target
    (informative rows) or the measurement could not be made (``note`` says why).
    """

    case: str
    what: str
    value: float | None
    unit: str = "s"
    baseline_name: str = ""
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def verdict(self) -> str:
        if not self.target:
            return ""
        if self.met is None:
            return "not measured"
        return "met" if self.met else "MISSED"

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "ratio": self.ratio, "verdict": self.verdict}


def format_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.2f} us"
        if value < 1.0:
            return f"{value * 1e3:.2f} ms"
        if value < 600:
            return f"{value:.2f} s"
        return f"{value / 60:.1f} min"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    if unit == "/s":
        return f"{value:,.1f}/s" if value < 100 else f"{value:,.0f}/s"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A plain-text table, columns as wide as their widest cell; ``right``: right-aligned columns."""
    rows = [list(r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def print_table(rows: Sequence[Row]) -> None:
    """The suite's summary: every row with its baseline, ratio, target and verdict."""
    body = []
    for r in rows:
        baseline = ""
        if r.baseline is not None:
            baseline = f"{format_value(r.baseline, r.unit)} ({r.baseline_name})"
        elif r.baseline_name:
            baseline = r.baseline_name
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        verdict = r.verdict + (f" ({r.note})" if r.note else "")
        body.append([r.case, r.what, format_value(r.value, r.unit), baseline, ratio, r.target, verdict])
    print(table(["case", "measurement", "result", "baseline (same run unless marked)", "ratio", "target", "verdict"],
                body, right=(2, 4)))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def machine() -> str:
    """This machine in one line: CPUs, memory, OS and Python."""
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        mem = f", {kib / (1 << 20):.0f} GiB memory"
    except (OSError, ValueError, IndexError):
        pass
    os_name = platform.platform()
    try:
        with open("/etc/os-release") as f:
            info = dict(line.rstrip().split("=", 1) for line in f if "=" in line)
        os_name = info.get("PRETTY_NAME", os_name).strip('"')
    except OSError:
        pass
    load = ""
    try:
        load = ", load average %.2f %.2f %.2f at start" % os.getloadavg()
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs{mem}, {os_name}, Python {sys.version.split()[0]} "
            f"({platform.python_implementation()}){load}")
