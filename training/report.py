"""What a training run leaves beside its checkpoint: the loss curve (PNG) and the model card (README.md)."""

from __future__ import annotations

from pathlib import Path

import yaml

from dataset_scripts.alphaearth import ATTRIBUTION, LICENSE as ALPHAEARTH_LICENSE

from .plan import planned_stages, stage_steps, trains_anchor_module


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
    offset = 0  # stage 2's steps continue stage 1's on the x axis
    for stage in sorted({entry["stage"] for entry in history}):
        entries = [entry for entry in history if entry["stage"] == stage]
        for key, style, label in (("loss", ".-", "training"), ("eval_loss", "o--", "validation")):
            points = [(entry["step"], entry[key]) for entry in entries if key in entry]
            if points:
                axes.plot([offset + s for s, _ in points], [v for _, v in points], style, label=f"stage {stage}, {label}")
        offset += max((entry["step"] for entry in entries), default=0)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title("FUSAR-GPT SFT")
    if axes.get_legend_handles_labels()[0]:  # nothing logged (a run shorter than --logging_steps): no empty legend
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def public_name(source: str) -> str:
    """A model or dataset as a card that may be published names it: a Hub id as it is, a local folder by its name
    only (a path on this machine means nothing elsewhere, and tells what it should not)."""
    return Path(source).name if Path(source).exists() else source


def card_metadata(source: str) -> dict:
    """The YAML metadata of a local folder's card (README.md); {} for a Hub id or a folder without one."""
    path = Path(source) / "README.md"
    if not path.is_file():
        return {}
    from huggingface_hub import RepoCard

    return RepoCard.load(path).data.to_dict()


def dataset_name(source: str) -> str:
    """A dataset as a card names it: a Hub id as it is; a local folder by its own card's name, else its folder name."""
    return card_metadata(source).get("pretty_name") or public_name(source)


def model_licence(args, model: str) -> str:
    """The weights' licence: the base model's (its card), or for the tiny model built here the training data's; else
    `other` (the card's Licences section says what applies)."""
    if model == "tiny":
        return card_metadata(args.dataset_name).get("license", "other")
    return card_metadata(model).get("license", "other")


def write_model_card(output: Path, args, training_args, model_args, history: list[dict], results: dict | None = None,
                     stage_tasks: dict | None = None):
    """README.md with the Hub's metadata (library, pipeline, base model, datasets, tags, licence), the recipe (each
    stage's `stage_tasks`: the tasks it trained on) and, when given, evaluation results
    (`{column: {task: accuracy}}`)."""
    model = model_args.model_name_or_path
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "license": model_licence(args, model),
        "tags": ["fusar-gpt", "sar", "synthetic-aperture-radar", "remote-sensing", "alphaearth", "trl", "sft"],
    }
    if not Path(args.dataset_name).exists():  # Hub ids only: the Hub links these
        metadata["datasets"] = [args.dataset_name]
    if model != "tiny" and not Path(model).exists():
        metadata["base_model"] = model
    stages = planned_stages(args)
    lora = (f"LoRA r={model_args.lora_r}, alpha={model_args.lora_alpha} on every linear layer of the language model"
            if model_args.use_peft else "the whole language model (no PEFT)")
    anchors_train = {stage: trains_anchor_module(stage, args) for stage in (1, 2)}
    trains = {1: ["the anchor module"] * anchors_train[1] + [lora] * args.stage1_train_language_model,
              2: ["the anchor module"] * anchors_train[2] + [lora]}
    final_loss = [entry["loss"] for entry in history if "loss" in entry]
    tiny = model == "tiny"
    repo = training_args.hub_model_id or f"./{output.name}"  # fusar-publish writes the repository it uploads to
    data_licence = card_metadata(args.dataset_name).get("license", "see its dataset card")
    lines = [
        "# FUSAR-GPT", "",
        "A vision-language model for Synthetic Aperture Radar (SAR) images whose visual tokens are modulated by "
        "AlphaEarth satellite embeddings (*anchors*: a 64-d vector at a position in the image, per year) through "
        "Token-wise Linear Modulation, as in FUSAR-GPT (arXiv 2602.19190).", "",
        "## Usage", "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{repo}", trust_remote_code=True)',
        f'processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)',
        'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many ships are there?"}]}]',
        'inputs = processor(images=["scene.tif"], text=[processor.apply_chat_template(messages, add_generation_prompt=True)],',
        '                   anchors=["scene_aef.npz"], return_tensors="pt")  # anchors: the authors\' .npz, a dict, or None',
        "output = model.generate(**inputs, max_new_tokens=64)",
        'print(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])',
        "```", "",
        "Images may be GeoTIFFs or arrays in dB, amplitude, intensity or complex values, or 8-bit quicklooks; the "
        "processor turns them into the 8-bit image the model saw in training. GeoTIFF inputs need `rasterio` "
        "(`pip install rasterio`); PNG and JPEG do not.", "",
        "## Training data", "",
        f"`{dataset_name(args.dataset_name)}`: SAR image - text - AlphaEarth triplets (see its dataset card)"
        + (", simulated: speckled scenes with an AlphaEarth-like field, not real SAR." if tiny else "."),
        f"Anchors {'used' if args.use_anchors else 'NOT used (an ablation run)'}.", "",
        "## Recipe", "",
        f"- Base: `{public_name(model)}`" + (" (a tiny random Qwen2.5-VL-shaped model built offline)" if tiny else ""),
        f"- Stages run: {' then '.join(map(str, stages))}",
    ]
    if model_args.load_in_4bit or model_args.load_in_8bit:  # QLoRA: say what was quantised and what was not
        bits = f"4-bit {model_args.bnb_4bit_quant_type.upper()}" if model_args.load_in_4bit else "8-bit"
        lines.append(f"- Quantised training (QLoRA): the base's language model loaded in {bits}"
                     + (" with nested quantisation" if model_args.use_bnb_nested_quant else "")
                     + "; the vision tower, the LM head and the anchor module kept in full precision; each stage's "
                     f"LoRA (r={model_args.lora_r}) merged into the full-precision weights (the base reloaded in "
                     f"{model_args.dtype}), never into the quantised ones")
    for stage, name, epochs, rate in ((1, "knowledge injection", args.stage1_epochs, args.stage1_learning_rate),
                                      (2, "task execution", args.stage2_epochs, args.stage2_learning_rate)):
        if stage in stages:
            frozen = "" if anchors_train[stage] or not args.use_anchors else "; anchor module frozen"
            steps = stage_steps(stage, args, training_args)
            length = f"{steps} optimizer step{'s' * (steps != 1)}" if steps > 0 else f"{epochs} epochs"
            lines.append(f"- Stage {stage} ({name}; tasks: {', '.join((stage_tasks or {}).get(stage, []))}): {length}, "
                         f"lr {rate}, trains {' and '.join(trains[stage])}{frozen}")
    lines += [
        f"- Batch {training_args.per_device_train_batch_size} per device x {training_args.gradient_accumulation_steps} "
        f"accumulation, warm-up {training_args.warmup_steps}, {getattr(training_args.lr_scheduler_type, 'value', training_args.lr_scheduler_type)} schedule, seed "
        f"{training_args.seed}, bf16 {training_args.bf16}",
        f"- Final training loss: {final_loss[-1]:.4f}" if final_loss else "- No training loss logged",
        "", "![loss curve](loss_curve.png)", "",
        "## Limitations", "",
        "- A demonstration model: tiny, trained for minutes on simulated data. Its answers mean nothing for real "
        "scenes." if tiny else "- Trained and evaluated on the data above only; other sensors, resolutions, "
        "polarisations and regions may behave differently.",
        "- Anchors exist only for georeferenced scenes inside AlphaEarth's coverage (annual, 2017 onwards); without "
        "them the model sees the image alone.",
        "- Counts, boxes and grid cells are generated text: check them before use.", "",
        "## Licences", "",
        f"- Weights: `{metadata['license']}`" + ("" if tiny else f" (the base model `{public_name(model)}`'s; "
                                                  "see its card)"),
        f"- Training data: {data_licence}",
        f"- AlphaEarth anchors: {ALPHAEARTH_LICENSE}", "",
        "## Citation", "",
        "FUSAR-GPT: arXiv 2602.19190 (CVPR 2026). Anchors: " + ATTRIBUTION + f" ({ALPHAEARTH_LICENSE})", "",
        "```bibtex",
        "@misc{fusargpt2026,",
        "  title = {FUSAR-GPT},",
        "  note = {CVPR 2026; see arXiv:2602.19190 for the authors},",
        "  eprint = {2602.19190},",
        "  archivePrefix = {arXiv},",
        "  year = {2026}",
        "}",
        "```", "",
    ]
    if results:
        lines += ["## Evaluation", "", results_table(results), ""]
    (output / "README.md").write_text("---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n\n" + "\n".join(lines))
