"""One evaluation, from a checkpoint and its rows to the report: the rows (`sources`), each variant's answers
(`generation`, split across the processes a launcher started), their scores (`scoring`) and what a paper cites
(`report`), written by the main process alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from command_line import local_or_hub_id
from evaluation.generation import PredictionCache, cached_answers, processes, variant_anchors
from evaluation.scoring import check_metrics, task_metrics
from evaluation.sources import benchmark_setting, benchmark_source, load_rows


def loaded(load, source):
    """`load(source)`, any failure of a corrupt or foreign model folder becoming one clear ValueError."""
    try:
        return load(source)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, SafetensorError... for these
        raise ValueError(f"{source}: cannot load it as a model ({type(error).__name__}: {error})") from error


def check_same_base(base_model, model, base: str) -> None:
    """The base is run with the checkpoint's processor: it must be the model the checkpoint was trained from, or at
    least share its family and vocabulary (else its answers are decoded with another tokenizer's ids)."""
    def describe(config):
        return config.base_config.model_type, config.get_text_config().vocab_size

    if describe(base_model.config) != describe(model.config):
        (family, vocabulary), (ours, our_vocabulary) = describe(base_model.config), describe(model.config)
        raise ValueError(f"--base {base}: not this checkpoint's base ({family} with a vocabulary of {vocabulary} tokens; "
                         f"the checkpoint was trained from a {ours} with {our_vocabulary}); give the model it was "
                         "trained from")


def weights_identity(source, model) -> str:
    """What the prediction cache is keyed by, besides the path: a local folder's files (name, size, modification
    time; the model card excepted, which evaluation itself updates), so that a model retrained into the same folder
    never meets the old model's answers; a Hub model's commit."""
    folder = Path(source)
    if folder.is_dir():
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
                       if p.is_file() and p.name != "README.md")
        return hashlib.sha1(json.dumps(files).encode()).hexdigest()
    return f"{source}@{getattr(model.config, '_commit_hash', None)}"


def evaluate_checkpoint(checkpoint, dataset=None, split="test", manifest=None, output="outputs/eval", base=None,
                        stage1=None, batch_size: int = 8, max_new_tokens: int = 128, limit=None,
                        variants=("anchors", "no anchors", "shuffled anchors"), update_card: bool = False,
                        seed: int = 0, benchmark: str | None = None, mapping=None, revision: str | None = None,
                        images: str | None = None, all_question_types: bool = False) -> dict | None:
    """`benchmark` (a preset of `evaluation.presets`, or a Hub dataset id or local folder read through `mapping`, an
    `evaluation.benchmarks.ColumnMapping`) replaces `dataset` / `manifest`: its images have no anchors, so the
    checkpoint is scored without them. `images`: a local folder of a preset's images, where the Hub has none.
    Under `accelerate launch` or `torchrun`, each process answers its share; the report (returned on the main process,
    None on the others) equals a one-process run's."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_fusar  # noqa: F401
    from evaluation.report import write_report

    state = processes()  # the launcher's processes (gloo on CPUs), or this one alone
    output, checkpoint, images = Path(output), Path(checkpoint), str(images) if images else None
    for flag, folder in (("checkpoint", checkpoint), ("--stage1", stage1)):
        if folder is not None and not Path(folder).is_dir():
            raise ValueError(f"{flag} {folder}: no such checkpoint folder")
    if base:
        local_or_hub_id(base, "--base")
    info, notes = None, []
    if benchmark:
        if stage1 or update_card:  # a stage-1 model reads anchors; a card's results are the held-out split's
            raise ValueError(f"--benchmark {benchmark}: {'--stage1' if stage1 else '--card'} is for a triplet "
                             "dataset with anchors, not a public benchmark")
        rows, info, split, mapping, notes = benchmark_source(benchmark, mapping, revision, limit, seed, images,
                                                             all_question_types)
        variants, dataset = ("no anchors",), f"{benchmark}@{info.revision}"
    else:
        rows = load_rows(dataset, split, manifest, limit, seed)
    if not rows:
        raise ValueError(f"no rows to evaluate in {manifest or dataset} ({split})")
    check_metrics(rows, f"{manifest or dataset} ({split})")
    processor = loaded(AutoProcessor.from_pretrained, checkpoint)
    models = {"checkpoint": loaded(AutoModelForImageTextToText.from_pretrained, checkpoint)}
    plan = [(variant, "checkpoint", variant != "no anchors") for variant in variants]
    if base:
        from modeling_fusar import FusarForConditionalGeneration

        models["base"] = loaded(FusarForConditionalGeneration.from_base, base)
        check_same_base(models["base"], models["checkpoint"], base)  # exactly the base: no modulation yet
        plan.append(("base model", "base", False))
    if stage1:
        models["stage1"] = loaded(AutoModelForImageTextToText.from_pretrained, stage1)
        plan.append(("stage 1 only", "stage1", True))
    for model in models.values():
        model.to(state.device)  # this process's GPU, or the CPU
    sources = {"checkpoint": checkpoint, "base": base, "stage1": stage1}
    predictions = {}
    for variant, model_name, use_anchors in plan:
        anchors = variant_anchors(rows, variant) if use_anchors else None
        setting = {"model": str(sources[model_name]), "weights": weights_identity(sources[model_name], models[model_name]),
                   "data": str(manifest or dataset), "split": split, "rows": len(rows), "max_new_tokens": max_new_tokens,
                   **(benchmark_setting(rows, mapping, limit, seed, images) if info else {})}
        cache = PredictionCache(output / "predictions" / f"{variant.replace(' ', '_')}.jsonl", setting)
        predictions[variant] = cached_answers(cache, models[model_name], processor, rows, anchors, use_anchors,
                                              batch_size, max_new_tokens)
    if not state.is_main_process:
        return None
    results = {variant: task_metrics(rows, answers) for variant, answers in predictions.items()}
    config = {"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "manifest": manifest, "base": base,
              "stage1": stage1, "batch_size": batch_size, "max_new_tokens": max_new_tokens, "examples": len(rows),
              "limit": limit, "seed": seed}
    if info:
        config["benchmark"] = {"name": benchmark, "repo": info.repo, "revision": info.revision,
                               "license": info.license, "images": images, "columns": vars(mapping) if mapping else None,
                               "notes": notes}
    return write_report(output, rows, predictions, results, config, checkpoint if update_card else None)
