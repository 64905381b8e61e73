"""Evaluation throughput: examples per second at batch 8 against batch 1, same checkpoint, same rows, one process.

Run: python benchmarks/bench_eval.py CHECKPOINT DATASET  (defaults: the main job's outputs/main/fusar-tiny and data)
"""

from __future__ import annotations

import argparse
import time

from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling_fusar  # noqa: F401
from dataset_scripts.loading import load_triplet_dataset
from evaluation.generation import generate_answers


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default="outputs/main/fusar-tiny")
    parser.add_argument("dataset", nargs="?", default="outputs/main/data")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    model = AutoModelForImageTextToText.from_pretrained(args.checkpoint)
    processor = AutoProcessor.from_pretrained(args.checkpoint)
    rows = list(load_triplet_dataset(args.dataset, split="test").select(range(args.rows)))
    generate_answers(model, processor, rows[:8], batch_size=8, progress=False)  # warm-up
    rates = {}
    for batch_size in (1, 8):
        start = time.perf_counter()
        generate_answers(model, processor, rows, batch_size=batch_size, max_new_tokens=args.max_new_tokens,
                         progress=False)
        rates[batch_size] = len(rows) / (time.perf_counter() - start)
    print(f"batch 1: {rates[1]:.1f} examples/s; batch 8: {rates[8]:.1f} examples/s; speed-up {rates[8] / rates[1]:.2f}x "
          "(target >= 2.5x)")


if __name__ == "__main__":
    main()
