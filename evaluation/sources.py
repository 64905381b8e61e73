"""The rows an evaluation answers: a triplet dataset split (folder or Hub id), the authors' manifest, or a public
benchmark (a preset, or any image-question-answer dataset read through a column mapping), sampled with a seed."""

from __future__ import annotations

import hashlib
import io
import json
import sys

from PIL import Image

from evaluation.benchmarks import benchmark_info, benchmark_rows, sample
from evaluation.presets import asked_tasks, preset_rows, preset_tasks

# What fusar-eval reads of a triplet row (the rest of the schema is the dataset's own business).
TRIPLET_COLUMNS = ("id", "task", "image", "messages", "year", "anchor_values", "anchor_positions", "anchor_mask",
                   "anchor_years")


def load_rows(dataset: str | None, split: str, manifest: str | None, limit: int | None, seed: int = 0) -> list[dict]:
    """Rows of a triplet dataset split (folder or Hub id), or of the authors' manifest (built in memory; rows that
    cannot be used are reported and skipped); `limit` rows sampled with `seed`."""
    if manifest:
        from dataset_scripts.builder import BuildConfig, usable_rows
        from dataset_scripts.inputs import from_manifest

        rows, skipped = usable_rows(from_manifest(manifest), BuildConfig())
        if skipped:
            print(f"skipped {len(skipped)} scenes of {manifest} that could not be used; first: "
                  f"{skipped[0]['image']}: {skipped[0]['error']}", file=sys.stderr)
        rows = [rows[i] for i in sample(len(rows), limit, seed)]
        for row in rows:
            row["image"] = Image.open(io.BytesIO(row["image"]["bytes"]))
        return rows
    from dataset_scripts.loading import load_triplet_dataset

    splits = load_triplet_dataset(dataset)
    if split not in splits:
        raise ValueError(f"{dataset} has no {split!r} split; it has {', '.join(splits)} (choose one with --split)")
    part = splits[split]
    missing = [column for column in TRIPLET_COLUMNS if column not in part.column_names]
    if missing:
        raise ValueError(f"--dataset {dataset}: not a triplet dataset (no column {', '.join(missing)}; it has "
                         f"{', '.join(part.column_names)}); an image-question-answer dataset is read with --benchmark "
                         f"{dataset} --image-column ... --question-column ... --answer-column ...")
    return list(part.select(sample(len(part), limit, seed)))


def benchmark_source(benchmark: str, mapping, revision, limit, seed, images, all_groups: bool = False):
    """(rows, BenchmarkInfo, split, the mapping read through, notes) of a public benchmark: a Hub dataset or local
    folder read through `mapping`, or a preset's tasks (which read their own columns: no mapping). `notes` are what
    a reader of the table must know (a task left out, an aggregate that is this project's own)."""
    tasks = preset_tasks(benchmark)
    if not tasks:
        info = benchmark_info(benchmark, revision)
        return benchmark_rows(info, mapping, limit, seed), info, mapping.split, mapping, []
    info = benchmark_info(tasks[0].repo, revision, local=False)  # one Hub repo for a preset's tasks, whatever
    # folder of that name the working directory holds (`hf download ... --local-dir MBZUAI/GeoChat-Bench`)
    asked, notes = asked_tasks(tasks, images, all_groups)
    rows = [row for task in asked for row in preset_rows(task, info, limit, seed, images, all_groups)]
    return rows, info, "test", None, notes


def benchmark_setting(rows, mapping, limit, seed, images) -> dict:
    """What a benchmark's prediction cache is keyed by besides the model and the commit: the sample, where the images
    come from, and every row's question (a new prompt, column or preset version is asked anew)."""
    questions = json.dumps([(row["id"], row["messages"][0]["content"]) for row in rows])
    columns = {key: value for key, value in vars(mapping).items() if key != "metric"} if mapping else None
    return {"sample": [limit, seed], "images": images, "columns": columns,
            "questions": hashlib.sha1(questions.encode()).hexdigest()}
