"""The README's two set-up commands and .ci/run cannot drift apart."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def setup_commands() -> list[str]:
    """The fenced commands of the README's "Set up and run" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, flags=re.M | re.S)
    return [block.strip() for block in blocks]


def ci_test_command() -> str:
    ci = (ROOT / ".ci" / "run").read_text()
    [command] = re.findall(r'^TEST_COMMAND="([^"]+)"$', ci, flags=re.M)
    assert re.search(r'^exec \$TEST_COMMAND$', ci, flags=re.M), "`.ci/run` must run $TEST_COMMAND"
    return command


def test_readme_has_exactly_two_single_line_setup_commands() -> None:
    commands = setup_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), commands
    node, tests = commands
    assert node.startswith("bash scripts/bootstrap.sh && ") and "zstack" in node and "node start" in node
    assert tests.startswith("bash scripts/test.sh")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    assert ci_test_command() == setup_commands()[1]


def test_scripts_parse() -> None:
    for script in [ROOT / ".ci" / "run", *sorted((ROOT / "scripts").glob("*.sh"))]:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"
