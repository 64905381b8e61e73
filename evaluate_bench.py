"""fusar-eval: measure a FUSAR-GPT checkpoint on SAR tasks, with ablations, and write a report for a paper.

    fusar-eval outputs/main/fusar-tiny --dataset outputs/main/data --output outputs/eval
    fusar-eval CHECKPOINT --manifest authors/manifest.jsonl --base Qwen/Qwen2.5-VL-7B-Instruct --stage1 STAGE1_CKPT
    fusar-eval CHECKPOINT --benchmark sarlang-1m --base Qwen/Qwen2.5-VL-7B-Instruct     (a public benchmark)

Batched greedy generation (left padding, KV cache); predictions are cached per example in
`<output>/predictions/<variant>.jsonl`, so an interrupted evaluation resumes where it stopped. Metrics are the local
`evaluate` modules in `metrics/` (counting, grid, classification, detection, caption, exact match). Variants:
anchors as given; anchors removed; anchors shuffled across scenes; the base model without the anchor module
(`--base`); the stage-1 checkpoint (`--stage1`).
"""

from __future__ import annotations

import hub_kernels  # noqa: F401  (before peft: bitsandbytes then looks up no Hub kernel unasked)

import argparse
import hashlib
import io
import json
import random
import re
import sys
from importlib import resources
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from command_line import command, local_or_hub_id, positive_int
from dataset_scripts.schema import row_anchors
from evaluation.benchmarks import (DEFAULT_PROMPT, METRICS, ColumnMapping, as_image, benchmark_info, benchmark_rows,
                                   sample)
from evaluation.presets import preset_rows, preset_tasks
from processing.anchors import collate_anchor_sets

METRICS_DIR = Path(str(resources.files("fusar_metrics")))  # metrics/ in a checkout, installed with the package
TASK_METRICS = {"counting": "sar_counting", "localization": "sar_grid", "classification": "sar_classification",
                "detection": "sar_detection", "caption": "sar_caption", "vqa": "sar_exact_match",
                "landcover": "sar_classification"}


def normalise(text: str) -> str:
    """Lower case, no surrounding punctuation or articles, single spaces: 'The Cropland.' -> 'cropland'."""
    text = re.sub(r"[^\w\s\[\]{}\":,.-]", " ", text.lower()).strip(" .")
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


def variant_anchors(rows, variant: str, seed: int = 0) -> list | None:
    """The anchors each row gets in an ablation: as given, none, or another scene's (a fixed derangement of the
    scenes, so that no row keeps its own scene's anchors)."""
    if variant == "no anchors":
        return None
    anchors = [row_anchors(row) for row in rows]
    scenes = list(dict.fromkeys(row.get("scene_id", row["id"]) for row in rows))
    if variant == "shuffled anchors" and len(scenes) > 1:
        random.Random(seed).shuffle(scenes)
        donor_scene = {scene: scenes[(i + 1) % len(scenes)] for i, scene in enumerate(scenes)}
        first_row = {}
        for i, row in enumerate(rows):
            first_row.setdefault(row.get("scene_id", row["id"]), i)
        anchors = [anchors[first_row[donor_scene[row.get("scene_id", row["id"])]]] for row in rows]
    return anchors


@torch.no_grad()
def generate_answers(model, processor, rows, batch_size: int = 16, max_new_tokens: int = 48,
                     use_anchors: bool = True, progress: bool = True, anchors=None) -> list[str]:
    """Greedy answers (left padding, KV cache) to each row's user turn. `anchors` (one AnchorSet per row) replaces
    the rows' own; `use_anchors=False` gives none."""
    model.eval()
    padding_side, processor.tokenizer.padding_side = processor.tokenizer.padding_side, "left"  # restored below
    if use_anchors and anchors is None:
        anchors = [row_anchors(row, model.config.anchor_dim) for row in rows]
    # Rows of one task have answers of similar length: batched together, no batch waits long for one long answer.
    order = sorted(range(len(rows)), key=lambda i: rows[i].get("task", ""))
    rows = [rows[i] for i in order]
    anchors = None if anchors is None else [anchors[i] for i in order]
    answers = []
    for start in tqdm(range(0, len(rows), batch_size), desc="generating", disable=not progress):
        batch = rows[start : start + batch_size]
        prompts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["messages"][0]["content"]}]}],
            add_generation_prompt=True) for row in batch]
        inputs = processor(images=[as_image(row["image"]) for row in batch], text=prompts, padding=True,
                           return_tensors="pt")
        if use_anchors and anchors is not None:
            inputs.update(collate_anchor_sets(anchors[start : start + batch_size], [row["year"] for row in batch]))
        inputs = inputs.to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers += processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    processor.tokenizer.padding_side = padding_side
    in_order = [""] * len(answers)
    for position, index in enumerate(order):
        in_order[index] = answers[position].strip()
    return in_order


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


def task_metrics(rows, answers) -> dict[str, dict]:
    """Each task's metric module over its rows (a benchmark preset's row names its own, `module[:configuration]`)."""
    import evaluate

    results = {}
    for task in sorted({row["task"] for row in rows}):
        pairs = [(a, r["messages"][-1]["content"]) for r, a in zip(rows, answers) if r["task"] == task]
        chosen = next(r for r in rows if r["task"] == task).get("metric") or TASK_METRICS[task]
        module, _, configuration = chosen.partition(":")
        metric = evaluate.load(str(METRICS_DIR / module), configuration or None)
        results[task] = metric.compute(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])
    return results


def cached_answers(path: Path, model, processor, rows, anchors, use_anchors: bool, batch_size: int,
                   max_new_tokens: int, setting: dict) -> list[str]:
    """Answers for every row, reusing those already in `path` and appending new ones batch by batch, so that a
    stopped run loses at most one batch. The file's first line records `setting` (model, data, generation); a cache
    made with another setting is discarded, and a line cut short by a stop is ignored."""
    done, lines = {}, path.read_text().splitlines() if path.exists() else []
    if lines and lines[0] == json.dumps({"setting": setting}, sort_keys=True):
        for line in lines[1:]:
            try:
                record = json.loads(line)
                if isinstance(record["prediction"], str):  # anything else was not written by us: generate anew
                    done[record["id"]] = record["prediction"]
            except (ValueError, KeyError, TypeError):
                continue
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"setting": setting}, sort_keys=True) + "\n")
    todo = sorted((i for i, row in enumerate(rows) if row["id"] not in done), key=lambda i: rows[i]["task"])
    with path.open("a") as file:
        for start in tqdm(range(0, len(todo), batch_size), desc=path.stem, disable=not todo):
            chunk = todo[start : start + batch_size]
            answers = generate_answers(model, processor, [rows[i] for i in chunk], batch_size, max_new_tokens,
                                       use_anchors, progress=False,
                                       anchors=None if anchors is None else [anchors[i] for i in chunk])
            for i, answer in zip(chunk, answers):
                done[rows[i]["id"]] = answer
                file.write(json.dumps({"id": rows[i]["id"], "prediction": answer}) + "\n")
            file.flush()
    return [done[row["id"]] for row in rows]


def loaded(load, source):
    """`load(source)`, any failure of a corrupt or foreign model folder becoming one clear ValueError."""
    try:
        return load(source)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, SafetensorError... for these
        raise ValueError(f"{source}: cannot load it as a model ({type(error).__name__}: {error})") from error


def benchmark_source(benchmark: str, mapping, revision, limit, seed, images):
    """(rows, BenchmarkInfo, split, the mapping read through) of a public benchmark: a Hub dataset read through
    `mapping`, or a preset's tasks (which read their own columns: no mapping)."""
    tasks = preset_tasks(benchmark)
    if not tasks:
        info = benchmark_info(benchmark, revision)
        return benchmark_rows(info, mapping, limit, seed), info, mapping.split, mapping
    info = benchmark_info(tasks[0].repo, revision)  # a preset's tasks share one repo
    return [row for task in tasks for row in preset_rows(task, info, limit, seed, images)], info, "test", None


def benchmark_setting(rows, mapping, limit, seed, images) -> dict:
    """What a benchmark's prediction cache is keyed by besides the model and the commit: the sample, where the images
    come from, and every row's question (a new prompt, column or preset version is asked anew)."""
    questions = json.dumps([(row["id"], row["messages"][0]["content"]) for row in rows])
    columns = {key: value for key, value in vars(mapping).items() if key != "metric"} if mapping else None
    return {"sample": [limit, seed], "images": images, "columns": columns,
            "questions": hashlib.sha1(questions.encode()).hexdigest()}


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
    return list(part.select(sample(len(part), limit, seed)))


def evaluate_checkpoint(checkpoint, dataset=None, split="test", manifest=None, output="outputs/eval", base=None,
                        stage1=None, batch_size: int = 8, max_new_tokens: int = 128, limit=None,
                        variants=("anchors", "no anchors", "shuffled anchors"), update_card: bool = False,
                        seed: int = 0, benchmark: str | None = None, mapping=None, revision: str | None = None,
                        images: str | None = None) -> dict:
    """`benchmark` (a preset of `evaluation.presets`, or a Hub dataset id read through `mapping`, an
    `evaluation.benchmarks.ColumnMapping`) replaces `dataset` / `manifest`: its images have no anchors, so the
    checkpoint is scored without them. `images`: a local folder of a preset's images, where the Hub has none."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_fusar  # noqa: F401
    from evaluation.report import bar_plot, detection_overlays, markdown_table, update_model_card

    output, checkpoint, images = Path(output), Path(checkpoint), str(images) if images else None
    for flag, folder in (("checkpoint", checkpoint), ("--stage1", stage1)):
        if folder is not None and not Path(folder).is_dir():
            raise ValueError(f"{flag} {folder}: no such checkpoint folder")
    if base:
        local_or_hub_id(base, "--base")
    info = None
    if benchmark:
        if stage1 or update_card:  # a stage-1 model reads anchors; a card's results are the held-out split's
            raise ValueError(f"--benchmark {benchmark}: {'--stage1' if stage1 else '--card'} is for a triplet "
                             "dataset with anchors, not a public benchmark")
        rows, info, split, mapping = benchmark_source(benchmark, mapping, revision, limit, seed, images)
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
    sources = {"checkpoint": checkpoint, "base": base, "stage1": stage1}
    results, predictions = {}, {}
    for variant, model_name, use_anchors in plan:
        anchors = variant_anchors(rows, variant) if use_anchors else None
        setting = {"model": str(sources[model_name]), "weights": weights_identity(sources[model_name], models[model_name]),
                   "data": str(manifest or dataset), "split": split, "rows": len(rows), "max_new_tokens": max_new_tokens,
                   **(benchmark_setting(rows, mapping, limit, seed, images) if info else {})}
        predictions[variant] = cached_answers(output / "predictions" / f"{variant.replace(' ', '_')}.jsonl",
                                              models[model_name], processor, rows, anchors, use_anchors, batch_size,
                                              max_new_tokens, setting)
        results[variant] = task_metrics(rows, predictions[variant])
    reference = plan[0][0]
    table = markdown_table(results, reference)
    if info:  # what a paper cites beside the table
        drawn = f"{limit} drawn{' per task' if mapping is None else ''} with seed {seed}" if limit else "all"
        table += (f"\n\n{benchmark}: {info.repo} at {info.revision[:12]}, licence {info.license or 'not stated'}; "
                  f"{len(rows)} examples ({drawn}), without anchors.")
    (output / "results.md").write_text(table + "\n")
    report = {"config": {"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "manifest": manifest,
                         "base": base, "stage1": stage1, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                         "examples": len(rows), "limit": limit, "seed": seed,
                         **({"benchmark": {"name": benchmark, "repo": info.repo, "revision": info.revision,
                                           "license": info.license, "images": images,
                                           "columns": vars(mapping) if mapping else None}}
                            if info else {})},
              "metrics": results,
              "predictions": [{"id": row["id"], "task": row["task"], "question": row["messages"][0]["content"],
                               "reference": row["messages"][-1]["content"],
                               **{variant: predictions[variant][i] for variant in predictions}}
                              for i, row in enumerate(rows)]}
    (output / "results.json").write_text(json.dumps(report, indent=2, default=float))
    bar_plot(results, output / "tasks.png")
    detection_overlays(rows, predictions[reference], output / "detections.png")
    if update_card:
        update_model_card(checkpoint, results[reference], manifest or dataset, split)
    print(table)
    return report


COLUMN_FLAGS = ("image_column", "question_column", "answer_column", "prompt", "metric", "config")


def refuse_flags_that_do_not_apply(args) -> None:
    """A flag that would be ignored is a mistake to report, not to guess around."""
    def given(names):
        return ["--" + name.replace("_", "-") for name in names if getattr(args, name) is not None]

    if args.benchmark and preset_tasks(args.benchmark):
        wrong, why = given(COLUMN_FLAGS + ("split",)), f"--benchmark {args.benchmark} is a preset: it reads its " \
                                                       "own files and scores by its authors' rules"
    elif args.benchmark:
        wrong, why = given(("images",)), "--images is for a preset's images"
        if args.question_column and args.prompt:
            wrong, why = ["--prompt"], "every row asks its --question-column"
    else:
        wrong, why = given(COLUMN_FLAGS + ("images", "revision")), "it is for --benchmark"
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: not used here ({why})")


@command("fusar-eval")
def main(argv=None):
    parser = argparse.ArgumentParser(prog="fusar-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="FUSAR-GPT checkpoint folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="triplet dataset folder or Hub id")
    source.add_argument("--manifest", help="the authors' manifest (JSONL or a JSON list) with .npz / .npy anchors")
    source.add_argument("--benchmark", help="a public benchmark, scored without anchors: a preset (sarlang-1m, "
                                            "geochat-bench, earthdial, or one task of one: sarlang-1m/vqa) or any Hub "
                                            "dataset id, read through the columns below")
    parser.add_argument("--split", help="the split to evaluate (default: test)")
    columns = parser.add_argument_group("--benchmark USER/REPO: its columns (a preset knows its own)")
    columns.add_argument("--image-column", help="default: image")
    columns.add_argument("--question-column", help="the question (default: every row asks --prompt)")
    columns.add_argument("--answer-column", help="the reference answer or caption (default: answer)")
    columns.add_argument("--prompt", help=f"the question when there is no column (default: {DEFAULT_PROMPT!r})")
    columns.add_argument("--metric", choices=sorted(METRICS), help="how answers are scored (default: exact_match)")
    columns.add_argument("--config", help="the dataset's configuration (subset), if it has several")
    benchmarks = parser.add_argument_group("--benchmark")
    benchmarks.add_argument("--images", help="a local folder of a preset's images where the Hub has none "
                                             "(GeoChat-Bench)")
    benchmarks.add_argument("--revision", help="the benchmark's revision (default: its main branch; the commit read "
                                               "is recorded)")
    parser.add_argument("--output", default="outputs/eval", help="folder for results.json, results.md, plots, cache")
    parser.add_argument("--base", help="also evaluate this base model without the anchor module")
    parser.add_argument("--stage1", help="also evaluate this stage-1 checkpoint")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--limit", type=positive_int, help="evaluate N rows drawn at random (with --seed); of a "
                                                           "preset, N per task")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit draw")
    parser.add_argument("--card", action="store_true", help="write the results into the checkpoint's model card "
                                                            "(model-index); evaluate the whole held-out split for that")
    args = parser.parse_args(argv)
    refuse_flags_that_do_not_apply(args)
    mapping = ColumnMapping(args.image_column or "image", args.answer_column or "answer", args.question_column,
                            args.prompt or DEFAULT_PROMPT, args.metric or "exact_match", args.split or "test",
                            args.config)
    evaluate_checkpoint(args.checkpoint, args.dataset, args.split or "test", args.manifest, args.output, args.base,
                        args.stage1, args.batch_size, args.max_new_tokens, args.limit, update_card=args.card,
                        seed=args.seed, benchmark=args.benchmark, mapping=mapping, revision=args.revision,
                        images=args.images)


if __name__ == "__main__":
    raise SystemExit(main())
