"""Instruction examples from a scene's annotations: caption, counting, 3x3 grid localisation, classification of
a given box, detection (Qwen-style JSON), and given free questions.

Grid localisation rule: the image is cut into a 3 x 3 grid of equal cells; an object lies in the cell that holds
its box centre (centres on a cell border go to the lower/right cell). Asked only for categories with exactly one
object in the scene, so the answer is unambiguous.
"""

from __future__ import annotations

import json
import math
import random
import string
from collections import Counter
from dataclasses import dataclass, field

GRID_CELLS = (("top-left", "top-center", "top-right"), ("middle-left", "center", "middle-right"),
              ("bottom-left", "bottom-center", "bottom-right"))
GRID_RULE = __doc__.split("\n\n")[1].replace("\n", " ").removeprefix("Grid localisation rule: ")


@dataclass
class Annotations:
    """What is known about one scene's content. Boxes are [x1, y1, x2, y2] in pixels of the model image."""

    width: int
    height: int
    objects: list[dict] = field(default_factory=list)  # {"bbox": [...], "category": str}
    captions: list[str] = field(default_factory=list)
    questions: list[dict] = field(default_factory=list)  # {"question", "answer", "task"}


def plural(category: str) -> str:
    return category if category.endswith(("s", "craft")) else category + "s"  # two aircraft, never "aircrafts"


def grid_cell(box, width: int, height: int) -> str:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    column = min(int(3 * cx / width), 2)
    row = min(int(3 * cy / height), 2)
    return GRID_CELLS[row][column]


def clip_box(box, width: int, height: int) -> list[int]:
    x1, y1, x2, y2 = box
    return [max(0, min(int(round(x1)), width - 1)), max(0, min(int(round(y1)), height - 1)),
            max(0, min(int(round(x2)), width - 1)), max(0, min(int(round(y2)), height - 1))]


def detection_answer(objects, width: int, height: int) -> str:
    return json.dumps([{"bbox_2d": clip_box(o["bbox"], width, height), "label": o["category"]} for o in objects])


def parse_detection_answer(text: str) -> list[dict] | None:
    """The boxes of a detection answer, written as ours or the authors' are: a JSON list of `{"bbox_2d": [x1, y1, x2,
    y2], "label": ...}`, maybe inside a code fence or other text, boxes maybe beyond the image; `None` or `null` for
    no targets. None when the answer does not parse (every box needs a label and four finite numbers)."""
    text = (text or "").strip()
    if text.startswith("```"):  # a fence and its language tag; string operations, never a backtracking regex
        text = text[3:].lstrip(string.ascii_letters).removesuffix("```").strip()
    if text.lower() in ("none", "null"):
        return []
    try:
        items, _ = json.JSONDecoder().raw_decode(text[text.index("["):])
        boxes = [{"bbox_2d": [float(v) for v in item["bbox_2d"]], "label": item["label"]} for item in items]
    except (ValueError, TypeError, KeyError, RecursionError, OverflowError):  # 400-digit numbers too
        return None
    if not all(isinstance(b["label"], str) and len(b["bbox_2d"]) == 4 and all(map(math.isfinite, b["bbox_2d"]))
               for b in boxes):
        return None
    return boxes


def composed_caption(annotations: Annotations) -> str | None:
    counts = Counter(o["category"] for o in annotations.objects)
    if not counts:
        return None
    parts = [f"{n} {category if n == 1 else plural(category)}" for category, n in sorted(counts.items())]
    return f"A SAR image showing {', '.join(parts)}."


def examples(annotations: Annotations, tasks, seed: str) -> list[tuple[str, str, str]]:
    """(task, question, answer) triples for the requested `tasks`; `seed` makes the choices per scene repeatable."""
    rng = random.Random(seed)
    out = []
    counts = Counter(o["category"] for o in annotations.objects)
    if "caption" in tasks:
        caption = rng.choice(annotations.captions) if annotations.captions else composed_caption(annotations)
        if caption:
            out.append(("caption", "Describe this SAR image.", caption))
    if "counting" in tasks:
        for category, n in sorted(counts.items()):
            out.append(("counting", f"How many {plural(category)} are in this SAR image? Answer with a number.", str(n)))
    if "localization" in tasks:
        for category, n in sorted(counts.items()):
            if n == 1:
                box = next(o["bbox"] for o in annotations.objects if o["category"] == category)
                cell = grid_cell(box, annotations.width, annotations.height)
                out.append(("localization", f"In which cell of a 3x3 grid over the image is the {category}? "
                            "Answer with one of: top-left, top-center, top-right, middle-left, center, "
                            "middle-right, bottom-left, bottom-center, bottom-right.", cell))
    if "classification" in tasks and annotations.objects:
        target = rng.choice(annotations.objects)
        box = clip_box(target["bbox"], annotations.width, annotations.height)
        out.append(("classification", f"What is the object in the box {box}? Answer with its category.",
                    target["category"]))
    if "detection" in tasks and annotations.objects:
        out.append(("detection", "Detect every object in this SAR image. Answer in JSON as "
                    '[{"bbox_2d": [x1, y1, x2, y2], "label": ...}] in pixels.',
                    detection_answer(annotations.objects, annotations.width, annotations.height)))
    for qa in annotations.questions:
        if qa.get("task", "vqa") in tasks:
            out.append((qa.get("task", "vqa"), qa["question"], str(qa["answer"])))
    return out
