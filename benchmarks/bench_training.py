"""Training speed and memory: FUSAR-GPT against the same run with the anchor module off, in one process tree.

Configs: the tiny CPU default (language model hidden 128 x 2 layers) and a mid-size one (hidden 512 x 4).
Each measurement runs in a fresh process, so its peak resident memory is its own.

Run: python benchmarks/bench_training.py  (simulates its dataset into outputs/simulated first when that is missing)
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

CONFIGS = {"tiny (128 x 2)": (128, 2), "mid (512 x 4)": (512, 4)}


def measure(dataset_path: str, hidden: int, layers: int, use_anchors: bool, steps: int, batch: int):
    import datasets
    import torch

    import train_sft

    torch.manual_seed(0)
    args = train_sft.FusarArguments(dataset_name=dataset_path, tiny_hidden_size=hidden, tiny_layers=layers,
                                    use_anchors=use_anchors)
    dataset = train_sft.load_triplets(dataset_path)
    model, processor = train_sft.load_model(args, dataset)
    model.train()
    collator = train_sft.FusarDataCollator(processor, use_anchors=use_anchors)
    rows = list(dataset["train"].select(range(batch * (steps + 2))))
    batches = [collator([dict(r) for r in rows[i * batch : (i + 1) * batch]]) for i in range(steps + 2)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for number, inputs in enumerate(batches):
        if number == 2:  # two warm-up steps
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    return steps * batch / seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="outputs/simulated")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if not Path(args.dataset).exists():
        from dataset_scripts.simulate import simulate

        print(f"{args.dataset} does not exist: simulating it first", flush=True)
        simulate(args.dataset)
    context = multiprocessing.get_context("spawn")
    for name, (hidden, layers) in CONFIGS.items():
        results = {}
        for use_anchors in (True, False):
            # A fresh process per measurement (its own peak memory); a failure there is raised here, never a hang.
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                results[use_anchors] = pool.submit(measure, args.dataset, hidden, layers, use_anchors, args.steps,
                                                   args.batch).result()
        (fast, fast_memory), (base, base_memory) = results[True], results[False]
        print(f"{name}: FUSAR-GPT {fast:6.1f} samples/s, peak {fast_memory:6.0f} MiB | anchor module off "
              f"{base:6.1f} samples/s, peak {base_memory:6.0f} MiB | speed ratio {fast / base:.3f}x, memory ratio "
              f"{fast_memory / base_memory:.3f}x")


if __name__ == "__main__":
    main()
