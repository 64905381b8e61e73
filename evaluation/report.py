"""Turn evaluation results into what goes into a paper and onto the Hub: a Markdown table with deltas, bar plots,
detection overlays, and `model-index` entries in the checkpoint's model card."""

from __future__ import annotations

from pathlib import Path

from dataset_scripts.tasks import parse_detection_answer

HEADLINE = {"counting": "accuracy", "localization": "acc@100", "classification": "accuracy", "detection": "f1@0.5",
            "caption": "cider", "vqa": "accuracy", "landcover": "accuracy"}


def headline(task: str, metrics: dict) -> tuple[str, float]:
    name = HEADLINE.get(task, "accuracy")
    return name, float(metrics.get(name, float("nan")))


def markdown_table(results: dict[str, dict[str, dict]], reference: str) -> str:
    """One row per task (its headline metric), one column per variant, and each variant's delta to `reference`."""
    variants = list(results)
    tasks = sorted({task for variant in results.values() for task in variant})
    lines = ["| task (metric) | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    for task in tasks:
        name, base = headline(task, results[reference].get(task, {}))
        cells = []
        for variant in variants:
            _, value = headline(task, results[variant].get(task, {}))
            delta = "" if variant == reference else f" ({value - base:+.3f})"
            cells.append(f"{value:.3f}{delta}")
        unparsable = results[reference].get(task, {}).get("unparsable", 0)
        note = f", {unparsable} unparsable" if unparsable else ""
        lines.append(f"| {task} ({name}{note}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants, tasks = list(results), sorted({t for v in results.values() for t in v})
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(tasks)), 3.5))
    width = 0.8 / len(variants)
    for number, variant in enumerate(variants):
        values = [headline(task, results[variant].get(task, {}))[1] for task in tasks]
        axes.bar(np.arange(len(tasks)) + number * width, values, width, label=variant)
    axes.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, [f"{t}\n({HEADLINE.get(t, 'accuracy')})" for t in tasks])
    axes.set_ylabel("score")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def detection_overlays(rows, predictions, path: Path, count: int = 4) -> None:
    """A few detection examples: target boxes in green, predicted in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    examples = [(r, p) for r, p in zip(rows, predictions) if r["task"] == "detection"][:count]
    if not examples:
        return
    figure, axes = plt.subplots(1, len(examples), figsize=(3 * len(examples), 3.2), squeeze=False)
    for axis, (row, prediction) in zip(axes[0], examples):
        axis.imshow(row["image"])
        for text, colour in ((row["messages"][-1]["content"], "lime"), (prediction, "red")):
            for box in parse_detection_answer(text) or []:
                x1, y1, x2, y2 = box["bbox_2d"]
                axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, linewidth=1.2))
        axis.set_title(row["id"][-24:], fontsize=7)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def update_model_card(checkpoint: Path, results: dict[str, dict], dataset_name: str, split: str) -> None:
    """Write each task's metrics as `model-index` entries into the checkpoint's README.md (kept otherwise)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from training.report import public_name

    dataset_name = public_name(dataset_name)
    path = checkpoint / "README.md"
    card = ModelCard.load(path) if path.exists() else ModelCard(f"---\n{ModelCardData().to_yaml()}\n---\n# FUSAR-GPT\n")
    card.data.model_name = card.data.model_name or checkpoint.name
    card.data.eval_results = [
        EvalResult(task_type="image-text-to-text", task_name=f"SAR {task}", dataset_type=dataset_name,
                   dataset_name=dataset_name, dataset_split=split, metric_type=name, metric_name=f"{task} {name}",
                   metric_value=float(value))
        for task, metrics in results.items() for name, value in metrics.items()
        if isinstance(value, (int, float)) and name not in ("examples", "unparsable")
    ]
    card.save(path)
