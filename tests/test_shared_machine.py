"""shared_machine.py: every console script sets OpenMP's wait policy before torch loads OpenMP, sleeping threads on a
machine that other work already keeps busy, and a value the user set is kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

# The modules behind the console scripts (pyproject's [project.scripts]) but fusar-convert-official, which copies
# weights (its package, modeling_fusar, loads torch before any line of it runs).
ENTRY_MODULES = ["train_sft", "evaluate_bench", "main_job", "publish", "dataset_scripts.cli", "serving.cli"]
BEFORE_TORCH = """
import importlib.abc, sys
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and "shared_machine" not in sys.modules:
            raise SystemExit("torch was imported before shared_machine")
sys.meta_path.insert(0, Watch())
import {module}
print("ok")
"""


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_every_console_script_sets_the_policy_before_torch_loads(module):
    done = subprocess.run([sys.executable, "-c", BEFORE_TORCH.format(module=module)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.fixture
def busy_machine():
    """Other work keeping a core busy (one per core would starve the test itself)."""
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    yield
    competitor.kill()


def policy(env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", "import os, shared_machine; print(os.environ.get('OMP_WAIT_POLICY'))"],
                          capture_output=True, text=True, env=env, timeout=60)
    return done.stdout.strip()


def test_on_a_busy_machine_threads_sleep_and_a_users_choice_is_kept(busy_machine):
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    assert policy(env) == "PASSIVE"
    assert policy(env | {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_busy_cores_counts_the_other_work(busy_machine):
    import shared_machine

    assert shared_machine.busy_cores(0.3) >= shared_machine.BUSY_CORES
