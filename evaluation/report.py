"""Turn evaluation results into what goes into a paper and onto the Hub: a Markdown table with deltas, bar plots,
detection overlays, and `model-index` entries in the checkpoint's model card."""

from __future__ import annotations

import json
from pathlib import Path

from dataset_scripts.tasks import parse_detection_answer
from evaluation.benchmarks import as_image

HEADLINE = {"counting": "accuracy", "localization": "acc@100", "classification": "accuracy", "detection": "f1@0.5",
            "caption": "cider", "vqa": "accuracy", "landcover": "accuracy"}
BENCHMARK_HEADLINES = ("accuracy", "cider", "precision@0.5", "rouge_l")  # a public benchmark's task: its figure


def headline(task: str, metrics: dict) -> tuple[str, float]:
    name = HEADLINE.get(task) or next((name for name in BENCHMARK_HEADLINES if name in metrics), "accuracy")
    return name, float(metrics.get(name, float("nan")))


def write_report(output: Path, rows, predictions: dict, results: dict, config: dict, card_of: Path | None) -> dict:
    """`results.md` (the table, and under it what a paper cites beside it), `results.json` (config, metrics, every
    example's question, reference and answers), the plots, and with `card_of` the checkpoint's model-index."""
    reference = next(iter(results))
    table = markdown_table(results, reference)
    benchmark = config.get("benchmark")
    if benchmark:
        limit, per_task = config["limit"], " per task file" if benchmark["columns"] is None else ""
        drawn = f"{limit} drawn{per_task} with seed {config['seed']}" if limit else "all"
        table += (f"\n\n{benchmark['name']}: {benchmark['repo']} at {benchmark['revision'][:12]}, licence "
                  f"{benchmark['license'] or 'not stated'}; {len(rows)} examples ({drawn}), without anchors.")
        table += "".join(f"\n- {note}" for note in benchmark["notes"])
    (output / "results.md").write_text(table + "\n")
    report = {"config": config, "metrics": results,
              "predictions": [{"id": row["id"], "task": row["task"], "question": row["messages"][0]["content"],
                               "reference": row["messages"][-1]["content"],
                               **({"groups": row["groups"]} if row.get("groups") else {}),
                               **{variant: answers[i] for variant, answers in predictions.items()}}
                              for i, row in enumerate(rows)]}
    (output / "results.json").write_text(json.dumps(report, indent=2, default=float))
    bar_plot(results, output / "tasks.png")
    detection_overlays(rows, predictions[reference], output / "detections.png")
    if card_of is not None:
        update_model_card(card_of, results[reference], config["manifest"] or config["dataset"], config["split"])
    print(table)
    return report


def markdown_table(results: dict[str, dict[str, dict]], reference: str) -> str:
    """One row per task and per group of a task (its headline metric), one column per variant, and each variant's
    delta to `reference`."""
    variants = list(results)
    tasks = list(dict.fromkeys(task for variant in results.values() for task in variant))
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
    """Bars per task and variant: the 0-1 scores (accuracies, F1) on one axis, unbounded ones (CIDEr) on their own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants, tasks = list(results), [t for t in dict.fromkeys(t for v in results.values() for t in v) if ": " not in t]
    names = {t: headline(t, results[variants[0]].get(t, {}))[0] for t in tasks}
    groups = [[t for t in tasks if names[t] != "cider"], [t for t in tasks if names[t] == "cider"]]
    groups = [group for group in groups if group]
    figure, axes_row = plt.subplots(1, len(groups), figsize=(max(6, 1.3 * len(tasks) + 1), 3.5), squeeze=False,
                                    gridspec_kw={"width_ratios": [len(group) for group in groups]})
    width = 0.8 / len(variants)
    for axes, group in zip(axes_row[0], groups):
        for number, variant in enumerate(variants):
            values = [headline(task, results[variant].get(task, {}))[1] for task in group]
            axes.bar(np.arange(len(group)) + number * width, values, width, label=variant)
        axes.set_xticks(np.arange(len(group)) + 0.4 - width / 2, [f"{t}\n({names[t]})" for t in group])
        unbounded = names[group[0]] == "cider"
        axes.set_ylabel("CIDEr" if unbounded else "score (0-1)")
        if not unbounded:
            axes.set_ylim(0, 1)
    axes_row[0][0].legend(fontsize=8)
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
    from matplotlib.lines import Line2D

    figure, axes = plt.subplots(1, len(examples), figsize=(3 * len(examples), 3.6), squeeze=False)
    for axis, (row, prediction) in zip(axes[0], examples):
        axis.imshow(as_image(row["image"]))
        for text, colour in ((row["messages"][-1]["content"], "lime"), (prediction, "red")):
            for box in parse_detection_answer(text) or []:
                x1, y1, x2, y2 = box["bbox_2d"]
                axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, linewidth=1.2))
        axis.set_title(row["id"][-24:], fontsize=7)
        axis.axis("off")
    figure.legend(handles=[Line2D([], [], color="lime", label="target"), Line2D([], [], color="red", label="prediction")],
                  loc="lower center", ncol=2, fontsize=8)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def update_model_card(checkpoint: Path, results: dict[str, dict], dataset_name: str, split: str) -> None:
    """Write each task's metrics as `model-index` entries into the checkpoint's README.md (kept otherwise): one
    result per task. The Hub's model-index tells results apart by task type and dataset (type, config, split), not
    by task name, so each task is the dataset's configuration of that name."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from training.report import dataset_name as card_name

    dataset_name = card_name(dataset_name)
    path = checkpoint / "README.md"
    card = ModelCard.load(path) if path.exists() else ModelCard(f"---\n{ModelCardData().to_yaml()}\n---\n# FUSAR-GPT\n")
    card.data.model_name = card.data.model_name or checkpoint.name
    card.data.eval_results = [
        EvalResult(task_type="image-text-to-text", task_name=f"SAR {task}", dataset_type=dataset_name,
                   dataset_name=dataset_name, dataset_config=task, dataset_split=split, metric_type=name,
                   metric_name=f"{task} {name}", metric_value=float(value))
        for task, metrics in results.items() for name, value in metrics.items()
        if isinstance(value, (int, float)) and name not in ("examples", "unparsable")
    ]
    card.save(path)
