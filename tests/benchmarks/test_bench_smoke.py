"""The benchmark suite still runs: ``benchmarks/run.py --quick --case bus`` prints its table.

Not a timed test: the figures are not checked, only that the harness works end to end (a
node starts, the bus case measures, every row has a result, a baseline and a ratio), so the
suite does not rot between the runs that fill BENCHMARKS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def test_quick_bus_case_prints_a_table_of_results_beside_baselines() -> None:
    result = subprocess.run([sys.executable, str(RUN), "--quick", "--case", "bus"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("case ") and "baseline" in line)
    assert set(lines[header + 1].replace(" ", "")) == {"-"}
    rows = [line for line in lines[header + 2:] if line.startswith("bus ")]
    assert len(rows) == 4, result.stdout
    for row in rows:
        assert "x " in row or row.rstrip().endswith("x"), row  # a ratio was computed
        assert "(case failed)" not in row
    assert "CloudBus.call, handler suspends once" in result.stdout
    assert "raw pluggy" in result.stdout
    assert any(line.startswith("4 rows in ") for line in lines)
