"""How answers are scored: each task's metric module (the local `evaluate` modules in `metrics/`), over the task's
rows and over each group a preset names (a question type, a size group), and the plain exact match of the main job."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

METRICS_DIR = Path(str(resources.files("fusar_metrics")))  # metrics/ in a checkout, installed with the package
TASK_METRICS = {"counting": "sar_counting", "localization": "sar_grid", "classification": "sar_classification",
                "detection": "sar_detection", "caption": "sar_caption", "vqa": "sar_exact_match",
                "landcover": "sar_classification"}


def normalise(text: str) -> str:
    """Lower case, no surrounding punctuation or articles, single spaces: 'The Cropland.' -> 'cropland'."""
    text = re.sub(r"[^\w\s\[\]{}\":,.-]", " ", text.lower()).strip(" .")
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


def score(rows, answers) -> dict[str, dict]:
    """Normalised exact-match accuracy and example count per task, and over all rows."""
    hits, counts = {}, {}
    for row, answer in zip(rows, answers):
        correct = normalise(answer) == normalise(row["messages"][-1]["content"])
        for key in (row["task"], "all"):
            hits[key] = hits.get(key, 0) + correct
            counts[key] = counts.get(key, 0) + 1
    return {task: {"accuracy": hits[task] / counts[task], "examples": counts[task]} for task in counts}


def check_metrics(rows, source: str) -> None:
    """Every task must have a metric, before hours of generation rather than after."""
    unscored = sorted({row["task"] for row in rows if not row.get("metric") and row["task"] not in TASK_METRICS})
    if unscored:
        raise ValueError(f"{source}: no metric for the task {', '.join(map(repr, unscored))}; the metrics cover "
                         f"{', '.join(sorted(TASK_METRICS))}")


def group_name(task: str, group: str) -> str:
    """The table's row of one group of a task's rows: 'geochat-bench/lrben: presence'."""
    return f"{task}: {group}"


def task_metrics(rows, answers) -> dict[str, dict]:
    """Each task's metric module (a preset's row names its own, `module[:configuration]`) over its rows, then over
    each of its groups (a row's `groups`), in the row's `group_order`, else in the order the rows name them."""
    import evaluate

    results = {}
    for task in sorted({row["task"] for row in rows}):
        pairs = [(row, answer) for row, answer in zip(rows, answers) if row["task"] == task]
        module, _, configuration = (pairs[0][0].get("metric") or TASK_METRICS[task]).partition(":")
        metric = evaluate.load(str(METRICS_DIR / module), configuration or None)
        seen = list(dict.fromkeys(group for row, _ in pairs for group in row.get("groups", ())))
        order = list(pairs[0][0].get("group_order", ())) + seen  # the authors' order, then as the rows name them
        groups = sorted(seen, key=order.index)
        for name, chosen in [(task, pairs)] + [(group_name(task, g), [p for p in pairs if g in p[0]["groups"]])
                                               for g in groups]:
            results[name] = metric.compute(predictions=[answer for _, answer in chosen],
                                           references=[row["messages"][-1]["content"] for row, _ in chosen])
    return results
