"""The benchmark suite: every case beside its baseline, measured in the same run.

    python benchmarks/run.py [--quick] [--case NAME ...] [--json FILE]
                             [--scale-mode MODE ...] [--scale-budget SECONDS]

Cases (``--case``, repeatable; default all):

* ``bus``: ``CloudBus.call`` beside a bare asyncio queue+future round trip; the typed hook
  facade beside raw pluggy (the measurements of ``benchmarks/bus.py``).
* ``startup``: ``zstack node start`` (four service plugins, SQLite) to its ready line, fresh and
  warm, beside ``python -c "import zstack_core"``.
* ``scale``: N concurrent ``CreateVmInstance`` on the libvirt test driver, in-process (all N at
  once, or 100 callers) and over HTTP (100 client threads, job polls held by the node), beside
  ZStack's published figures; ``--scale-mode`` picks the ways in (``http/polled``, not run by
  default: HTTP with polls every 0.1 s, the baseline for held polls), ``--scale-budget`` bounds
  each run.
* ``kvm``: VMs created through the node on a real libvirtd (``qemu:///system``) beside raw
  libvirt-python define+start of the same domain XML.
* ``query``: ``QueryVmInstance`` over 100,000 rows beside the same query in peewee.

``--quick`` runs each case small (a smoke run: seconds, not minutes). The summary table has one
row per measurement: result, baseline, ratio, target and whether it was met. Nothing here is a
test: figures depend on the machine, and targets are reported, never asserted. ``--check``
exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Row, machine, print_table  # noqa: E402

CASES = ("bus", "startup", "scale", "kvm", "query")


def bus_case(quick: bool) -> list[Row]:
    """The rows of ``benchmarks/bus.py``, measured with its own timers on one event loop."""
    import bus
    from zstack_core import ManagementNode

    n, repeat = (5_000, 3) if quick else (30_000, 5)

    async def measure() -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="zstack-bench-bus-") as data_dir:
            plugins = [bus.BenchPlugin(), *(bus.hook_plugin(i) for i in range(4))]
            node = ManagementNode(plugins=plugins, load_entry_points=False, data_dir=data_dir)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                await node.start()
            try:
                return {
                    "bare": await bus.best_of(bus.bare_round_trip, n, repeat),
                    "eager": await bus.best_of(bus.bus_call(node, bus.PingMsg), n, repeat),
                    "suspending": await bus.best_of(bus.bus_call(node, bus.PingSuspendingMsg), n, repeat),
                    "concurrent": await bus.best_of(bus.bus_call_concurrent(node, bus.PingSuspendingMsg, 100),
                                                    n, repeat),
                    "pluggy": await bus.best_of(bus.raw_pluggy(node), n, repeat),
                    "facade": await bus.best_of(bus.facade(node), n, repeat),
                }
            finally:
                await node.stop()

    m = asyncio.run(measure())
    bare_name = "bare asyncio queue+future round trip"
    target = f"<= {bus.TARGET_RATIO:g}x, >= {bus.TARGET_RATE // 1000}k calls/s"

    def call_row(what: str, seconds: float) -> Row:
        ratio = seconds / m["bare"]
        return Row(case="bus", what=what, value=seconds, baseline_name=bare_name, baseline=m["bare"],
                   target=target, met=ratio <= bus.TARGET_RATIO and 1 / seconds >= bus.TARGET_RATE,
                   note=f"{1 / seconds:,.0f} calls/s")

    return [
        call_row("CloudBus.call, handler returns at once", m["eager"]),
        call_row("CloudBus.call, handler suspends once", m["suspending"]),
        call_row("CloudBus.call, suspending handler, 100 callers", m["concurrent"]),
        Row(case="bus", what="Hooks facade, 4 implementations", value=m["facade"],
            baseline_name="raw pluggy hook call, 4 impls", baseline=m["pluggy"]),
    ]


def startup_case(quick: bool) -> list[Row]:
    import startup

    return startup.run(quick)


def scale_case(quick: bool, budget: float, modes: list[str] | None) -> list[Row]:
    import scale

    return scale.run(quick, budget, tuple(modes or scale.MODES))


def kvm_case(quick: bool) -> list[Row]:
    import kvm

    return kvm.run(quick)


def query_case(quick: bool) -> list[Row]:
    import query

    return query.run(quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each case small: a smoke run")
    parser.add_argument("--case", action="append", choices=CASES, help="run only this case (repeatable)")
    parser.add_argument("--json", type=Path, help="also write every row to this JSON file")
    parser.add_argument("--scale-budget", type=float, default=1800.0,
                        help="seconds one scale run (one N, one mode) may take before it is stopped (default 1800)")
    parser.add_argument("--scale-mode", action="append",
                        choices=("in-process", "in-process/100", "http", "http/polled"),
                        help="run only this way into the node in the scale case (repeatable; default all)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    runners: dict[str, Callable[[], list[Row]]] = {
        "bus": lambda: bus_case(args.quick),
        "startup": lambda: startup_case(args.quick),
        "scale": lambda: scale_case(args.quick, args.scale_budget, args.scale_mode),
        "kvm": lambda: kvm_case(args.quick),
        "query": lambda: query_case(args.quick),
    }
    about = f"zstack-py benchmarks{' (--quick)' if args.quick else ''} on {machine()}"
    print(about, flush=True)
    rows: list[Row] = []
    started = time.perf_counter()
    for name in args.case or CASES:
        print(f"== {name}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            rows += runners[name]()
        except Exception as exc:  # noqa: BLE001 - one broken case does not hide the others
            rows.append(Row(case=name, what="(case failed)", value=None, note=f"{type(exc).__name__}: {exc}"))
        print(f"== {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    print()
    print_table(rows)
    print()
    import os

    print(f"{len(rows)} rows in {time.perf_counter() - started:.0f} s "
          f"(load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}); "
          f"targets met: {sum(r.met is True for r in rows)}, missed: {sum(r.met is False for r in rows)}")
    if args.json:
        args.json.write_text(json.dumps({"machine": about, "rows": [r.to_dict() for r in rows]}, indent=2))
    return 1 if args.check and any(r.met is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
