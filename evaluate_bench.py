"""fusar-eval: measure a FUSAR-GPT checkpoint on SAR tasks, with ablations, and write a report for a paper.

    fusar-eval outputs/main/fusar-tiny --dataset outputs/main/data --output outputs/eval
    fusar-eval CHECKPOINT --manifest authors/manifest.jsonl --base Qwen/Qwen2.5-VL-7B-Instruct --stage1 STAGE1_CKPT
    fusar-eval CHECKPOINT --benchmark sarlang-1m --base Qwen/Qwen2.5-VL-7B-Instruct     (a public benchmark)
    accelerate launch --num_processes 8 -m evaluate_bench CHECKPOINT --benchmark sarlang-1m   (one per GPU)

The command line only: the work is in `evaluation/` (`run.py` from rows to report; `sources`, `generation`,
`scoring`, `report`). Batched greedy generation (left padding, KV cache), split across the processes a launcher
started; predictions are cached per example in `<output>/predictions/<variant>.jsonl`, so an interrupted
evaluation resumes where it stopped. Variants: anchors as given; anchors removed; anchors shuffled across scenes;
the base model without the anchor module (`--base`); the stage-1 checkpoint (`--stage1`).
"""

from __future__ import annotations

import shared_machine  # noqa: F401  (before torch: its OpenMP threads then sleep when they wait)
import hub_kernels  # noqa: F401  (before peft: bitsandbytes then looks up no Hub kernel unasked)

import argparse

from command_line import command, positive_int
from evaluation.benchmarks import DEFAULT_PROMPT, METRICS, ColumnMapping
from evaluation.presets import preset_tasks
from evaluation.run import evaluate_checkpoint

COLUMN_FLAGS = ("image_column", "question_column", "answer_column", "prompt", "metric", "config")


def refuse_flags_that_do_not_apply(args) -> None:
    """A flag that would be ignored is a mistake to report, not to guess around."""
    def given(names):
        return ["--" + name.replace("_", "-") for name in names if getattr(args, name) not in (None, False)]

    presets = ("images", "all_question_types")
    tasks = preset_tasks(args.benchmark) if args.benchmark else None
    if tasks:
        wrong, why = given(COLUMN_FLAGS + ("split",)), f"--benchmark {args.benchmark} is a preset: it reads its " \
                                                       "own files and scores by its authors' rules"
        if not wrong and args.images and all(task.images for task in tasks):
            wrong, why = ["--images"], f"every image of --benchmark {args.benchmark} is read from the Hub"
        if not wrong and args.all_question_types and not any(task.left_out for task in tasks):
            wrong, why = ["--all-question-types"], f"--benchmark {args.benchmark} leaves no question type out"
    elif args.benchmark:
        wrong, why = given(presets), "it is for a preset"
        if args.question_column and args.prompt:
            wrong, why = ["--prompt"], "every row asks its --question-column"
    else:
        wrong, why = given(COLUMN_FLAGS + presets + ("revision",)), "it is for --benchmark"
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
                                            "geochat-bench, earthdial, or one task of one: sarlang-1m/vqa), or any "
                                            "Hub dataset id or local dataset folder, read through the columns below")
    parser.add_argument("--split", help="the split to evaluate (default: test)")
    columns = parser.add_argument_group("--benchmark USER/REPO or FOLDER: its columns (a preset knows its own)")
    columns.add_argument("--image-column", help="default: image")
    columns.add_argument("--question-column", help="the question (default: every row asks --prompt)")
    columns.add_argument("--answer-column", help="the reference answer or caption (default: answer)")
    columns.add_argument("--prompt", help=f"the question when there is no column (default: {DEFAULT_PROMPT!r})")
    columns.add_argument("--metric", choices=sorted(METRICS), help="how answers are scored (default: exact_match)")
    columns.add_argument("--config", help="the dataset's configuration (subset), if it has several")
    benchmarks = parser.add_argument_group("--benchmark")
    benchmarks.add_argument("--images", help="a local folder of a preset's images where the Hub has none "
                                             "(GeoChat-Bench; SARDet-100K's for SARLANG-1M's SARVQA1)")
    benchmarks.add_argument("--all-question-types", action="store_true",
                            help="also ask the question types the authors' table leaves out (LRBEN's count; "
                                 "HRBEN's count and area), each in its own row")
    benchmarks.add_argument("--revision", help="the benchmark's revision (default: its main branch; the commit read "
                                               "is recorded)")
    parser.add_argument("--output", default="outputs/eval", help="folder for results.json, results.md, plots, cache")
    parser.add_argument("--base", help="also evaluate this base model without the anchor module")
    parser.add_argument("--stage1", help="also evaluate this stage-1 checkpoint")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--limit", type=positive_int, help="evaluate N rows drawn at random (with --seed); of a "
                                                           "preset, N per task file (SARLANG's VQA: N of each subset)")
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
                        images=args.images, all_question_types=args.all_question_types)


if __name__ == "__main__":
    raise SystemExit(main())
