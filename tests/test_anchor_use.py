"""benchmarks/bench_anchor_use.py: its quick size through the project's own commands (the suite keeps it runnable;
the figures come from its full size)."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_anchor_use.py"


def test_the_quick_benchmark_runs_every_command_and_prints_the_table(tmp_path):
    if not (SHARED_DATA / "aef_points").is_dir():
        pytest.skip(f"the real AlphaEarth points are not at {SHARED_DATA / 'aef_points'}")
    result = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--work", str(tmp_path)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    header = next(line for line in result.stdout.splitlines() if line.startswith("| held-out region"))
    assert header.count("|") == 9 and "trained without anchors" in header and "probe: anchor vector" in header
    row = next(line for line in result.stdout.splitlines() if line.startswith("| iowa_ag"))
    scores = [float(cell) for cell in row.strip("| ").split(" | ")[1:]]
    assert len(scores) == 7 and all(0 <= score <= 1 for score in scores)
    for folder in ("train", "test", "model-with-seed0", "model-without-seed0", "eval-with-seed0", "eval-without-seed0"):
        assert (tmp_path / "iowa_ag" / folder).is_dir()  # each command left what it makes
    # A rerun of the same --work (after a stop) trains nothing again and prints the same table.
    again = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--work", str(tmp_path)], capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and again.stderr.count("reusing") == 2
    assert again.stdout.split("| held-out region")[1] == result.stdout.split("| held-out region")[1]


def test_without_the_shared_data_it_says_why(tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARK), "--quick"], capture_output=True, text=True, timeout=120,
                            env={"FUSAR_SHARED_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and "skipped: the real AlphaEarth points are not at" in result.stdout
