"""Does FUSAR-GPT use what its anchors know? Leave-one-region-out on the real AlphaEarth points of ../shared/data.

`aef_points/` holds 2,160 real AlphaEarth vectors with Sentinel-1 VV/VH backscatter and a Dynamic World label in
three regions. Each point becomes a 56 x 56 speckled (4-look) SAR patch of its VV/VH backscatter (an 8-bit quicklook
with a fixed dB scale, so the level survives) with its vector as the anchor, and a land-cover question. For each
region held out: the authors' manifest format -> `fusar-data import-manifest --split` -> `fusar-train` (the tiny CPU
model, the single-task route: both stages on land cover) -> `fusar-eval`, with and without anchors, beside
logistic-regression probes on the same split (anchor vector alone, SAR values alone, both).

Every score is the mean over training seeds (`--seeds`, default 0 1: one seed alone moves a region by up to 7
points), two trainings at a time (`--jobs`) sharing the cores.

Run: python benchmarks/bench_anchor_use.py            (full size; about 18 minutes on 2 cores)
     python benchmarks/bench_anchor_use.py --quick    (one region held out, 9 points per region, one epoch, one
                                                      seed: a smoke run of the same commands)
     python benchmarks/bench_anchor_use.py --with-anchors-only --train-option anchor_dropout=0.5   (an ablation)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("FUSAR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REGIONS = ("amazon_forest", "california_coast", "iowa_ag")
CLASSES = ("water", "trees", "grass", "flooded vegetation", "crops", "shrub and scrub", "built", "bare", "snow and ice")
QUESTION = "What is the land cover at the centre of this SAR image? Answer with one of: " + ", ".join(CLASSES) + "."
BIN = Path(sys.executable).parent
VECTOR = [f"A{i:02d}" for i in range(64)]  # the probes' columns in aef_points
SAR = ["S1_VV", "S1_VH", "S1_VV_div_VH"]


def read_points(per_region: int | None) -> dict[str, list[dict]]:
    points = {}
    for region in REGIONS:
        with open(SHARED / "aef_points" / f"{region}.csv") as file:
            rows = list(csv.DictReader(file))
        if per_region:  # the same classes in the same shares: every n-th of the label-sorted rows
            rows = sorted(rows, key=lambda r: int(r["dw_label"]))[::max(1, len(rows) // per_region)][:per_region]
        points[region] = rows
    return points


def quicklook(vv_db: float, vh_db: float, rng: np.random.Generator, size: int = 56) -> np.ndarray:
    """[size, size, 3] uint8: 4-look speckle on the point's intensities, then a fixed dB scale per channel (VV -30..0,
    VH -35..-5, VV/VH 0..15 dB), the same for every image, so the backscatter level is seen, not stretched away."""
    vv = 10 ** (vv_db / 10) * rng.gamma(4, 1 / 4, (size, size))
    vh = 10 ** (vh_db / 10) * rng.gamma(4, 1 / 4, (size, size))
    channels = [(10 * np.log10(vv), -30, 0), (10 * np.log10(vh), -35, -5), (10 * np.log10(vv / vh), 0, 15)]
    return np.stack([np.clip((db - low) / (high - low) * 255, 0, 255) for db, low, high in channels], -1).astype(np.uint8)


def write_manifest(folder: Path, points: list[dict], seed: int) -> Path:
    """The authors' manifest: one row per point, its patch and its anchor .npz (one vector at the centre)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.jsonl", "w") as manifest:
        for number, point in enumerate(points):
            name = f"{point['region']}_{number:04d}"
            Image.fromarray(quicklook(float(point["S1_VV"]), float(point["S1_VH"]), rng)).save(folder / f"{name}.png")
            vector = np.array([[float(point[f"A{i:02d}"]) for i in range(64)]], np.float32)
            np.savez(folder / f"{name}.npz", features=vector, positions=np.array([[0.5, 0.5]], np.float32))
            manifest.write(json.dumps({"id": name, "image": f"{name}.png", "aef": f"{name}.npz", "question": QUESTION,
                                       "answer": CLASSES[int(point["dw_label"])]}) + "\n")
    return folder / "manifest.jsonl"


def run(*command, env=None):
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command[:2]))} failed:\n{result.stderr[-3000:]}")
    return result


PENALTIES = (1e-3, 1e-2, 1e-1, 1.0)


def probe(train: list[dict], test: list[dict], columns: list[str]) -> float:
    """Held-out accuracy of a multinomial logistic regression on standardised `columns`, its L2 penalty chosen
    without the held-out region: the one that carries best from one training region to the other (both ways)."""
    regions = sorted({row["region"] for row in train})
    parts = {region: [row for row in train if row["region"] == region] for region in regions}

    def carried(penalty):
        return np.mean([fit_and_score(parts[a], parts[b], columns, penalty) for a in regions for b in regions if a != b])

    return fit_and_score(train, test, columns, max(PENALTIES, key=carried))


def fit_and_score(train: list[dict], test: list[dict], columns: list[str], penalty: float) -> float:
    import torch

    def matrix(rows):
        return torch.tensor([[float(r[c]) for c in columns] for r in rows], dtype=torch.float64)

    x, y = matrix(train), torch.tensor([int(r["dw_label"]) for r in train])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    x, test_x = (x - mean) / std, (matrix(test) - mean) / std
    weights = torch.zeros(x.shape[1], len(CLASSES), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(CLASSES), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=500, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weights + bias, y) + penalty * weights.pow(2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    predicted = (test_x @ weights + bias).argmax(1)
    return float((predicted == torch.tensor([int(r["dw_label"]) for r in test])).double().mean())


def landcover_accuracy(results: Path, variant: str) -> float:
    metrics = json.loads(results.read_text())["metrics"][variant]["landcover"]
    return float(metrics.get("accuracy", next(iter(metrics.values()))))


def train_once(fold: Path, name: str, anchors: str, options: list[str], setting: str, epochs: str, threads: str):
    """`fusar-train` (the tiny CPU config, the single-task route: both stages on land cover), then `fusar-eval`;
    skipped where `--work` holds this run's results with the same settings (a rerun after a stop redoes the rest)."""
    evaluation = fold / f"eval-{name}"
    if (evaluation / "results.json").is_file() and (evaluation / "settings.json").is_file() and \
            (evaluation / "settings.json").read_text() == setting:
        print(f"{fold.name}, {name}: reusing {evaluation} (same settings)", file=sys.stderr)
        return
    environment = {**os.environ, "OMP_NUM_THREADS": threads}
    run(BIN / "fusar-train", "--config", Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml",
        "--dataset_name", fold / "train", "--output_dir", fold / f"model-{name}", "--overwrite_output_dir", "true",
        "--stage1_tasks", "landcover", "--stage2_tasks", "landcover", "--stage1_epochs", epochs,
        "--stage2_epochs", epochs, "--use_anchors", anchors, *options, env=environment)
    run(BIN / "fusar-eval", fold / f"model-{name}", "--dataset", fold / "test", "--split", "test",
        "--output", evaluation, "--max-new-tokens", "8", "--batch-size", "32", env=environment)
    (evaluation / "settings.json").write_text(setting)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one held-out region, a few points, one epoch: a smoke run")
    parser.add_argument("--epochs", type=float, default=4.0, help="epochs of each stage (default 4)")
    parser.add_argument("--work", help="folder for the datasets and runs (default: a new temporary one)")
    parser.add_argument("--train-option", action="append", default=[], metavar="FLAG=VALUE",
                        help="extra fusar-train flags for the ablations, e.g. --train-option anchor_sigma=0.2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="training seeds; each score is their mean (default 0 1: one seed moves a region by up to "
                             "7 points)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once, the cores shared between them")
    parser.add_argument("--with-anchors-only", action="store_true",
                        help="train only the model with anchors (ablations of the anchor module: the run without "
                             "anchors is the baseline's)")
    args = parser.parse_args(argv)
    if not (SHARED / "aef_points").is_dir():
        print(f"skipped: the real AlphaEarth points are not at {SHARED / 'aef_points'} (set FUSAR_SHARED_DATA)")
        return 0
    if args.quick:
        args.seeds = args.seeds[:1]
    points = read_points(9 if args.quick else None)
    epochs = "1" if args.quick else str(args.epochs)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-anchor-use-"))
    extra = [part for option in args.train_option for part in (f"--{option.split('=', 1)[0]}", option.split("=", 1)[1])]
    folds = REGIONS[-1:] if args.quick else REGIONS
    runs = [("with", "true")] + ([] if args.with_anchors_only else [("without", "false")])
    train_points = {held_out: [p for region in REGIONS if region != held_out for p in points[region]] for held_out in folds}
    setting = json.dumps({"epochs": epochs, "train_options": extra, "points": len(train_points[folds[0]])})
    jobs = []
    for held_out in folds:
        fold = work / held_out
        for split, chosen in (("train", train_points[held_out]), ("test", points[held_out])):
            manifest = write_manifest(fold / f"{split}-raw", chosen, seed=0 if split == "train" else 1)
            run(BIN / "fusar-data", "import-manifest", manifest, "--task", "landcover", "--split", split,
                "--output", fold / split, "--overwrite")
        for seed in args.seeds:
            for name, anchors in runs:
                jobs.append((fold, f"{name}-seed{seed}", anchors, [*extra, "--seed", str(seed)], setting))
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    with ThreadPoolExecutor(args.jobs) as pool:  # each job a pair of subprocesses; the threads only wait
        list(pool.map(lambda job: train_once(*job, epochs, threads), jobs))

    table = []
    for held_out in folds:
        fold = work / held_out
        per_seed = []
        for seed in args.seeds:
            results = fold / f"eval-with-seed{seed}" / "results.json"
            scores = {variant: landcover_accuracy(results, variant) for variant in ("anchors", "no anchors",
                                                                                    "shuffled anchors")}
            if not args.with_anchors_only:
                scores["trained without anchors"] = landcover_accuracy(
                    fold / f"eval-without-seed{seed}" / "results.json", "no anchors")
            per_seed.append(scores)
        scores = {name: float(np.mean([s[name] for s in per_seed])) for name in per_seed[0]}
        for name, inputs in (("anchor vector", VECTOR), ("SAR values", SAR), ("both", VECTOR + SAR)):
            scores[f"probe: {name}"] = probe(train_points[held_out], points[held_out], inputs)
        table.append((held_out, scores))
        print(f"{held_out}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
              + "".join(f"; seed {seed}: anchors {s['anchors']:.3f}" for seed, s in zip(args.seeds, per_seed)), flush=True)
    columns = list(table[0][1])
    print("\n| held-out region | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for region, scores in table:
        print(f"| {region} | " + " | ".join(f"{scores[c]:.3f}" for c in columns) + " |")
    print("| mean | " + " | ".join(f"{np.mean([s[c] for _, s in table]):.3f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
