"""What a training run leaves beside its checkpoint: the loss curve (PNG) and the model card (README.md)."""

from __future__ import annotations

from pathlib import Path

import yaml


def results_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table of {column: {task: score}}: one row per task ("all" last), one column per run."""
    columns = list(results)
    tasks = sorted({task for column in results.values() for task in column}, key=lambda t: (t == "all", t))
    lines = ["| task | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {task} | " + " | ".join(f"{results[c].get(task, float('nan')):.3f}" for c in columns) + " |"
              for task in tasks]
    return "\n".join(lines)


def write_loss_curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    step = 0
    for stage in sorted({entry["stage"] for entry in history}):
        points = [(entry["step"], entry["loss"]) for entry in history if entry["stage"] == stage and "loss" in entry]
        if points:
            axes.plot([step + s for s, _ in points], [loss for _, loss in points], marker=".", label=f"stage {stage}")
            step += points[-1][0]
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.set_title("FUSAR-GPT SFT")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def public_name(source: str) -> str:
    """A model or dataset as a card that may be published names it: a Hub id as it is, a local folder by its name
    only (a path on this machine means nothing elsewhere, and tells what it should not)."""
    return Path(source).name if Path(source).exists() else source


def write_model_card(output: Path, args, training_args, model_args, history: list[dict], results: dict | None = None):
    """README.md with the Hub's metadata (library, pipeline, base model, datasets, tags, licence), the recipe and,
    when given, evaluation results (`{column: {task: accuracy}}`)."""
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "license": "apache-2.0",
        "tags": ["fusar-gpt", "sar", "synthetic-aperture-radar", "remote-sensing", "alphaearth", "trl", "sft"],
    }
    if not Path(args.dataset_name).exists():  # Hub ids only: the Hub links these
        metadata["datasets"] = [args.dataset_name]
    if args.model != "tiny" and not Path(args.model).exists():
        metadata["base_model"] = args.model
    stages = "both" if args.stage == "both" else f"stage {args.stage} only"
    lora = (f"LoRA r={model_args.lora_r}, alpha={model_args.lora_alpha} on every linear layer of the language model"
            if model_args.use_peft else "the whole language model (no PEFT)")
    final_loss = [entry["loss"] for entry in history if "loss" in entry]
    lines = [
        "# FUSAR-GPT", "",
        "A SAR vision-language model whose visual tokens are modulated by AlphaEarth anchors (Token-wise Linear "
        "Modulation). Load it with `AutoModelForImageTextToText.from_pretrained(..., trust_remote_code=True)`, or with "
        "the `fusar-gpt` package imported.", "",
        "## Recipe", "",
        f"- Base: `{public_name(args.model)}`{' (a tiny random Qwen2.5-VL-shaped model built offline)' if args.model == 'tiny' else ''}",
        f"- Data: `{public_name(args.dataset_name)}`; anchors {'used' if args.use_anchors else 'NOT used (ablation)'}",
        f"- Stages run: {stages}",
        f"- Stage 1 (knowledge injection, captions): {args.stage1_epochs} epochs, lr {args.stage1_learning_rate}, trains "
        f"the anchor module{' and ' + lora if args.stage1_train_language_model else ''}",
        f"- Stage 2 (task execution): {args.stage2_epochs} epochs, lr {args.stage2_learning_rate}, trains {lora}; "
        "anchor module frozen",
        f"- Batch {training_args.per_device_train_batch_size} per device x {training_args.gradient_accumulation_steps} "
        f"accumulation, warm-up {training_args.warmup_steps}, {training_args.lr_scheduler_type} schedule, seed "
        f"{training_args.seed}, bf16 {training_args.bf16}",
        f"- Final training loss: {final_loss[-1]:.4f}" if final_loss else "- No training loss logged",
        "", "![loss curve](loss_curve.png)", "",
    ]
    if results:
        lines += ["## Evaluation", "", results_table(results), ""]
    (output / "README.md").write_text("---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n\n" + "\n".join(lines))
