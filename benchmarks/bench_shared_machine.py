"""A machine shared with other work: `fusar-train` stage 1 of the tiny config alone and beside one busy process
(`python -c "while True: pass"`), with the project's default (`shared_machine.py`: on a machine already busy, OpenMP
threads sleep when they wait) and with libgomp's own default (threads spin a while first), all in one run. Goal:
beside one busy process, at most 2x the time alone, and the run alone no slower than with libgomp's default.

Run: python benchmarks/bench_shared_machine.py [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_eval_parallel import ROOT, timed  # this folder: a command timed as a user's shell runs it

# fusar-train as its console script runs it, but with shared_machine's default left out: libgomp's own behaviour.
LIBGOMP_DEFAULT = ("import sys, types; sys.modules['shared_machine'] = types.ModuleType('shared_machine'); "
                   "import train_sft; sys.exit(train_sft.cli(sys.argv[1:]))")


def train(data: Path, output: Path, steps: int, ours: bool) -> float:
    command = [str(Path(sys.executable).with_name("fusar-train"))] if ours else [sys.executable, "-c", LIBGOMP_DEFAULT]
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    return timed([*command, "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "--dataset_name", str(data),
                  "--output_dir", str(output), "--stage", "1", "--max_steps", str(steps)], env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    from dataset_scripts.simulate import simulate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = simulate(tmp / "data", scenes=16)
        train(data, tmp / "warm-up", 10, ours=True)  # the dataset's cache and the OS's file cache, for every run
        times = {}
        for busy in (False, True):
            competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            time.sleep(1)  # running, as work already on the machine is
            try:
                for ours in (True, False):
                    times[busy, ours] = train(data, tmp / f"run-{busy}-{ours}", args.steps, ours)
            finally:
                if competitor:
                    competitor.kill()
        print(f"{args.steps} stage-1 steps of configs/tiny_cpu.yaml, {os.cpu_count()} cores, start-up included:")
        print("| OpenMP threads that wait | alone | beside one busy process | ratio |\n|---|---:|---:|---:|")
        for ours, name in ((True, "the project's default (sleep, on a busy machine)"),
                           (False, "libgomp's default (spin first)")):
            alone, beside = times[False, ours], times[True, ours]
            print(f"| {name} | {alone:.1f} s | {beside:.1f} s | {beside / alone:.2f}x |")


if __name__ == "__main__":
    main()
