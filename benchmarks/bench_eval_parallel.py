"""Data-parallel evaluation: `fusar-eval` as one process against two (`torchrun --nproc_per_node 2`), the same tiny
FUSAR-GPT and simulated rows, timed from the shell as a user runs them (start-up included). On a machine with N GPUs
the processes are one per GPU; here they share the CPU cores, one thread each, so two baselines are timed: one
process on all cores, and one process of one thread (the same arithmetic as each of the two: their predictions must
be equal).

Run: python benchmarks/bench_eval_parallel.py [--rows 96] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    import modeling_fusar  # noqa: F401
    from dataset_scripts.simulate import simulate
    from modeling_fusar import FusarForConditionalGeneration
    from modeling_fusar.tiny import tiny_qwen2_5_vl, train_tokenizer
    from processing import FusarProcessor

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, base_processor = tiny_qwen2_5_vl(train_tokenizer(family="qwen2_5_vl"))
        FusarForConditionalGeneration.from_base(base).save_pretrained(tmp / "fusar")
        FusarProcessor.from_base(base_processor).save_pretrained(tmp / "fusar")
        data = simulate(tmp / "data", scenes=max(8, args.rows // 2))  # ~3.5 train rows per scene
        options = [str(tmp / "fusar"), "--dataset", str(data), "--split", "train", "--limit", str(args.rows),
                   "--max-new-tokens", str(args.max_new_tokens)]
        env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
        fusar_eval = str(Path(sys.executable).with_name("fusar-eval"))
        one = timed([fusar_eval, *options, "--output", str(tmp / "one")], env)
        one_thread = timed([fusar_eval, *options, "--output", str(tmp / "one_thread")], env | {"OMP_NUM_THREADS": "1"})
        two = timed([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
                     "-m", "evaluate_bench", *options, "--output", str(tmp / "two")], env)  # 1 thread each
        reports = [json.loads((tmp / name / "results.json").read_text())["predictions"] for name in ("one_thread", "two")]
        same = "equal" if reports[0] == reports[1] else "DIFFERENT"
        print(f"{args.rows} rows x 3 variants, {args.max_new_tokens} new tokens, {os.cpu_count()} cores: 1 process "
              f"{one:.1f} s (all cores), 1 process of 1 thread {one_thread:.1f} s, 2 processes of 1 thread {two:.1f} s: "
              f"{one / two:.2f}x over the first, {one_thread / two:.2f}x over the second; predictions {same} "
              "(2 processes against 1 of 1 thread)")


if __name__ == "__main__":
    main()
