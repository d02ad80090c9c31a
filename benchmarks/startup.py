"""Case 2: ``zstack node start`` with the four service plugins on SQLite, to "ready".

Measured from just before the process is spawned to the moment its "management node ready" line
arrives on stdout (the node has started every service and serves its HTTP API), then the node
is stopped. "fresh": a new data directory each run (schema created, admin account made);
"warm": a second start on the data directory of a fresh run. Beside it, in the same run:
``python -c "import zstack_core"`` and ``python -c pass`` (the interpreter alone). Medians of
several runs, after one unmeasured start that leaves Python's bytecode caches as an installed
node would have them (``PYTHONDONTWRITEBYTECODE`` is dropped for these processes), and with them
``zstack_core``'s cache of the methods attrs generates (``zstack_core/_attrs_cache.py``), written
by the first start under the same rules. Target: ready in under 0.5 s.

Two informative rows give the CPU time each node had used by its ready line (from /proc): on a
machine shared with other work the wall time grows with the load, the CPU time much less.

When the target is missed, the case also prints the slowest imports of the node's packages
(``python -X importtime``): the first place to look.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Row, median, table  # noqa: E402
from scale import ADMIN_PASSWORD, clean_env, zstack_command  # noqa: E402

TARGET_S = 0.5
MODULES = ("zstack_core.cli", "zstack_core.cli_client", "zstack_kvm.plugin", "zstack_storage.plugin",
           "zstack_network.plugin", "zstack_core.http")
"""What ``zstack node start`` imports, in its order: the CLI (its parser also loads the client
commands), each service's plugin module (the entry points), then the HTTP API (app and server)."""


def time_command(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, env=clean_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) the process has used so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CPU_AT_READY: list[float] = []
"""CPU seconds each measured node had used when its ready line came (``time_node_start``):
unlike the wall time, hardly changed by what else the machine runs."""


def time_node_start(data_dir: Path) -> float:
    """Seconds from spawning ``zstack node start`` to its ready line; the node is then stopped.
    The CPU time the node had used by then goes to :data:`CPU_AT_READY`."""
    env = clean_env() | {"PYTHONUNBUFFERED": "1", "ZSTACK_ADMIN_PASSWORD": ADMIN_PASSWORD}
    t = time.perf_counter()
    proc = subprocess.Popen([*zstack_command(), "--data-dir", str(data_dir), "node", "start",
                             "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    ready = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "management node ready" in line:
                ready = time.perf_counter() - t
                cpu = _cpu_seconds(proc.pid)
                if cpu is not None:
                    CPU_AT_READY.append(cpu)
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if ready is None:
        raise RuntimeError(f"zstack node start exited {proc.returncode} without becoming ready")
    return ready


def slowest_imports(limit: int = 12) -> list[tuple[float, float, str]]:
    """(cumulative s, self s, module) of the slowest imports of what the node imports."""
    code = "; ".join(f"import {m}" for m in MODULES)
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=clean_env(),
                         capture_output=True, text=True, check=True).stderr
    rows = []
    for line in out.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        self_us, cumulative_us, name = fields
        rows.append((int(cumulative_us) / 1e6, int(self_us) / 1e6, name.strip()))
    rows.sort(reverse=True)
    return rows[:limit]


def run(quick: bool) -> list[Row]:
    runs = 3 if quick else 7
    python = sys.executable
    base = Path(tempfile.mkdtemp(prefix="zstack-bench-start-"))
    fresh: list[float] = []
    warm: list[float] = []
    cpu_fresh: list[float] = []
    cpu_warm: list[float] = []
    try:
        time_node_start(base / "warm-up")  # the first spawn pays for cold file caches
        for i in range(runs):
            data_dir = base / f"node{i}"
            CPU_AT_READY.clear()
            fresh.append(time_node_start(data_dir))
            cpu_fresh += CPU_AT_READY
            CPU_AT_READY.clear()
            warm.append(time_node_start(data_dir))
            cpu_warm += CPU_AT_READY
        imports = [time_command([python, "-c", "import zstack_core"]) for _ in range(runs)]
        bare = [time_command([python, "-c", "pass"]) for _ in range(runs)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    imp, nothing = median(imports), median(bare)
    rows = [
        Row(case="startup", what=f"zstack node start, fresh data dir (median of {runs})", value=median(fresh),
            baseline_name='python -c "import zstack_core"', baseline=imp, target=f"< {TARGET_S:g} s",
            met=median(fresh) < TARGET_S),
        Row(case="startup", what=f"zstack node start, warm: second start (median of {runs})", value=median(warm),
            baseline_name='python -c "import zstack_core"', baseline=imp, target=f"< {TARGET_S:g} s",
            met=median(warm) < TARGET_S),
        Row(case="startup", what='python -c "import zstack_core"', value=imp,
            baseline_name="python -c pass", baseline=nothing),
    ]
    if cpu_fresh and cpu_warm:
        # Informative: the node's own CPU time by its ready line (all threads, /proc, 10 ms
        # ticks). On a loaded machine the wall time above grows with the load; this much less.
        rows += [Row(case="startup", what=f"CPU time of the node to ready, fresh (median of {len(cpu_fresh)})",
                     value=median(cpu_fresh)),
                 Row(case="startup", what=f"CPU time of the node to ready, warm (median of {len(cpu_warm)})",
                     value=median(cpu_warm))]
    print(f"startup: fresh {', '.join(f'{t:.3f}' for t in fresh)} s; warm {', '.join(f'{t:.3f}' for t in warm)} s; "
          f"import zstack_core {', '.join(f'{t:.3f}' for t in imports)} s; python -c pass {nothing:.3f} s; "
          f"CPU to ready fresh {', '.join(f'{t:.2f}' for t in cpu_fresh)} s, "
          f"warm {', '.join(f'{t:.2f}' for t in cpu_warm)} s", file=sys.stderr)
    if not all(r.met for r in rows if r.target):
        print()
        print("Start-up missed its target; the slowest imports (python -X importtime, one run):")
        print(table(["cumulative", "self", "module"],
                    [[f"{c * 1e3:.0f} ms", f"{s * 1e3:.0f} ms", m] for c, s, m in slowest_imports()], right=(0, 1)))
        print()
    return rows


if __name__ == "__main__":
    os.environ.pop("ZSTACK_NODE_DATA_DIR", None)
    for r in run("--quick" in sys.argv):
        print(r)
