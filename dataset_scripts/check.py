"""Validate a triplet dataset (a local folder or a Hub id) against the schema, row by row."""

from __future__ import annotations

from collections import defaultdict

import datasets
import numpy as np

from .alphaearth import DIM
from .schema import FEATURES, OPTIONAL_FEATURES, TASKS
from .loading import load_triplet_dataset
from .tasks import parse_detection_answer

NORM_TOLERANCE = 0.02  # AlphaEarth vectors are unit length to +-0.002; int8 rounding of our own tiles adds a little


def row_problems(row: dict) -> list[str]:
    """What is wrong with one row, in words naming the field."""
    problems = []
    if row["task"] not in TASKS:
        problems.append(f"task: {row['task']!r} is not one of {TASKS}")
    roles = [m["role"] for m in row["messages"]]
    if roles != ["user", "assistant"]:
        problems.append(f"messages: roles are {roles}, expected ['user', 'assistant']")
    values = row["anchor_values"]
    count, years = len(values), len(row["anchor_years"]) or (len(values[0]) if values else 0)
    if count:
        shapes = {np.shape(v) for v in values}
        if shapes != {(years, DIM)}:
            problems.append(f"anchor_values: per-anchor shapes {sorted(shapes)}, expected ({years}, {DIM}) "
                            "(years from anchor_years, else from the first anchor)")
        positions = np.asarray(row["anchor_positions"], dtype=float)
        if positions.shape != (count, 2):
            problems.append(f"anchor_positions: shape {positions.shape}, expected ({count}, 2)")
        elif not ((positions >= 0) & (positions <= 1)).all():
            problems.append(f"anchor_positions: values outside [0, 1] (min {positions.min():.3f}, max {positions.max():.3f})")
        mask = np.asarray(row["anchor_mask"], dtype=bool)
        if mask.shape != (count, years):
            problems.append(f"anchor_mask: shape {mask.shape}, expected ({count}, {years})")
        elif shapes == {(years, DIM)}:
            norms = np.linalg.norm(np.asarray(values, dtype=float)[mask], axis=-1)
            off = np.abs(norms - 1) > NORM_TOLERANCE
            if off.any():
                problems.append(f"anchor_values: {off.sum()} valid vectors are not unit length (e.g. norm {norms[off][0]:.3f})")
    width, height = row["image"].size
    for number, obj in enumerate(row["objects"]):
        x1, y1, x2, y2 = obj["bbox"]
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            problems.append(f"objects[{number}].bbox: {obj['bbox']} is not inside the {width}x{height} image")
    if row["task"] == "detection":
        problems += detection_problems(row["messages"][-1]["content"], width, height)
    return problems


def detection_problems(answer: str, width: int, height: int) -> list[str]:
    """A detection answer must parse, and each box must be ordered and overlap the image (the authors' boxes may
    reach beyond it: x = -35 and x2 = 529 at 504 px are in their own examples)."""
    boxes = parse_detection_answer(answer)
    if boxes is None:
        return [f"messages: the detection answer does not parse as [{{\"bbox_2d\": [x1, y1, x2, y2], \"label\": ...}}]: "
                f"{answer[:80]!r}"]
    for box in boxes:
        x1, y1, x2, y2 = box["bbox_2d"]
        if not (x1 <= x2 and y1 <= y2 and x1 < width and x2 >= 0 and y1 < height and y2 >= 0):
            return [f"messages: detection box {box['bbox_2d']} is not an ordered box overlapping the {width}x{height} image"]
    return []


def check(path_or_repo: str) -> list[str]:
    """Every problem found, one line each: `<split>[<row>] <id>: <problem>`."""
    return _check(load_triplet_dataset(path_or_repo))


def _check(dataset: datasets.DatasetDict) -> list[str]:
    problems, scenes, ids = [], defaultdict(set), set()
    for split, part in dataset.items():
        differ = sorted(k for k in FEATURES if part.features.get(k) != FEATURES[k]) + sorted(
            k for k in part.features if k not in FEATURES and part.features[k] != OPTIONAL_FEATURES.get(k))
        if differ:
            problems.append(f"{split}: features differ from the schema in {differ}")
            continue
        for number, row in enumerate(part):
            scenes[row["scene_id"]].add(split)
            if row["id"] in ids:
                problems.append(f"{split}[{number}] {row['id']}: id: used by another row")
            ids.add(row["id"])
            problems += [f"{split}[{number}] {row['id']}: {p}" for p in row_problems(row)]
    problems += [f"scene {scene}: in several splits {sorted(splits)}" for scene, splits in scenes.items() if len(splits) > 1]
    return problems
