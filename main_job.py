"""fusar-main: the project's main job on the embedded default, on a CPU, with nothing downloaded.

simulated dataset -> stage 1 -> stage 2 (FUSAR-GPT, and the same run without anchors) -> evaluation on the
held-out split (untrained vs trained vs trained without anchors; then fusar-eval's task metrics and ablations of
the checkpoint) -> results tables, the checkpoints and the reports.
"""

from __future__ import annotations

import shared_machine  # noqa: F401  (before torch: its OpenMP threads then sleep when they wait)
import hub_kernels  # noqa: F401  (before peft: bitsandbytes then looks up no Hub kernel unasked)

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed

from command_line import command, positive_int
from dataset_scripts.builder import split_of
from dataset_scripts.simulate import check_outputs as check_simulation_outputs
from dataset_scripts.simulate import scene_name, simulate
from evaluation.generation import generate_answers
from evaluation.run import evaluate_checkpoint
from evaluation.scoring import score
from output_folders import RUN_FILES, RUN_MARKERS, check_replaceable, foreign_entries
from train_sft import load_model, load_triplets, parse_arguments
from train_sft import main as train
from training.report import results_table, write_model_card

CONFIG = Path(__file__).with_name("configs") / "tiny_cpu.yaml"
MAIN_FILES = ("data/*", "data.raw/*", "data.partial/*", ".data.old-*", "data-scenes.txt", "fusar-tiny/*", "fusar-tiny-no-anchors/*",
              "eval/*", "results.json", "results.md")
SAR_TWINS = ("cropland", "grassland")  # the same backscatter: only the anchors tell them apart


def evaluate(model, processor, rows) -> dict[str, float]:
    answers = generate_answers(model, processor, rows, batch_size=32)
    results = {task: r["accuracy"] for task, r in score(rows, answers).items()}
    twins = [(row, answer) for row, answer in zip(rows, answers)
             if row["task"] == "landcover" and row["messages"][-1]["content"] in SAR_TWINS]
    if twins:
        results["landcover, anchor-dependent"] = score(*zip(*twins))["all"]["accuracy"]
    return results


@contextlib.contextmanager
def timed(seconds: dict, phase: str):
    """Adds the time the block took to `seconds[phase]` (the job prints where its time went)."""
    start = time.perf_counter()
    yield
    seconds[phase] = seconds.get(phase, 0) + time.perf_counter() - start


def check_outputs(output: Path, runs: dict[str, Path], scenes: int) -> None:
    """Everything the job would write, checked before it writes anything: a rerun replaces the job's own files only."""
    foreign = foreign_entries(output, MAIN_FILES) if output.is_dir() else []
    if foreign:
        raise ValueError(f"{output} holds files that fusar-main does not write ({', '.join(foreign[:5])}); choose "
                         "another --output")
    check_simulation_outputs(output / "data", overwrite=True)
    for folder in runs.values():
        check_replaceable(folder, overwrite=True, owned=RUN_FILES, tool="fusar-train", markers=RUN_MARKERS)
    if not any(split_of(scene_name(index)) == "test" for index in range(scenes)):
        smallest = next(n for n in range(scenes, 10 * scenes + 100) if split_of(scene_name(n - 1)) == "test")
        raise ValueError(f"--scenes {scenes}: too few for a held-out test split (scenes go to train / validation / "
                         f"test by a hash of their id); use --scenes {smallest} or more")


def run(argv=None) -> dict[str, dict[str, float]]:
    """The main job; returns the results table as {column: {task: accuracy}}."""
    parser = argparse.ArgumentParser(
        prog="fusar-main", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Any other option goes to fusar-train for both training runs, e.g. --stage2_epochs 2 "
               "(fusar-train --help lists them).")
    parser.add_argument("--output", default="outputs/main", help="folder for the data, checkpoints and report")
    parser.add_argument("--scenes", type=positive_int, default=300, help="simulated scenes (~5 rows each)")
    parser.add_argument("--config", default=str(CONFIG), help="training config (YAML)")
    args, overrides = parser.parse_known_args(argv)
    start, output = time.perf_counter(), Path(args.output)
    data = output / "data"
    runs = {"FUSAR-GPT": output / "fusar-tiny", "same run, no anchors": output / "fusar-tiny-no-anchors"}
    run_arguments = {name: parse_arguments([  # parsed first: a mistyped option stops the job before any work
        "--config", args.config, "--dataset_name", str(data), "--output_dir", str(folder),
        "--overwrite_output_dir", "true",  # a rerun of the main job retrains from scratch
        *overrides, *(["--use_anchors", "false"] if "no anchors" in name else [])]) for name, folder in runs.items()}
    check_outputs(output, runs, args.scenes)
    print(f"[1/4] simulated dataset ({args.scenes} scenes) -> {data}", flush=True)
    made_for = output / "data-scenes.txt"  # rebuild when asked for another number of scenes
    seconds = {}
    with timed(seconds, "data"):
        if not (data / "README.md").exists() or not made_for.exists() or made_for.read_text() != str(args.scenes):
            simulate(data, scenes=args.scenes, overwrite=True)
            made_for.write_text(str(args.scenes))
    rows = list(load_triplets(str(data))["test"])
    results = {}
    for number, (name, folder) in enumerate(runs.items()):
        print(f"[{2 + number}/4] training {name}: stage 1 (captions) then stage 2 (tasks) -> {folder}", flush=True)
        fusar_args, training_args, model_args = run_arguments[name]
        if number == 0:  # the same model before any training, built exactly as the run builds it
            with timed(seconds, "untrained model's answers"):
                set_seed(training_args.seed)
                untrained, processor = load_model(fusar_args, load_triplets(str(data)), model_args)
                results["untrained"] = evaluate(untrained, processor, rows)
        with timed(seconds, f"training {name}"):
            train(fusar_args, training_args, model_args)
        with timed(seconds, f"answers of {name}"):
            model = AutoModelForImageTextToText.from_pretrained(folder)
            results[name] = evaluate(model, AutoProcessor.from_pretrained(folder), rows)
        if "no anchors" not in name:
            checkpoint, checkpoint_args = folder, (fusar_args, training_args, model_args)

    print("[4/4] held-out evaluation (normalised exact match; caption rows are scored by BLEU/CIDEr in evaluate_bench)")
    report = results_table(results)
    record = json.loads((checkpoint / "fusar_run.json").read_text())
    write_model_card(checkpoint, *checkpoint_args, history=record["history"], results=results,
                     stage_tasks={int(stage): tasks for stage, tasks in record["stage_tasks"].items()})
    (output / "results.json").write_text(json.dumps(results, indent=2))
    (output / "results.md").write_text(report + "\n")
    print("\n" + report + "\n")
    learned = results["FUSAR-GPT"]["all"] > results["untrained"]["all"]
    key = "landcover, anchor-dependent"
    anchors_help = results["FUSAR-GPT"].get(key, 0) > results["same run, no anchors"].get(key, 0)
    print(f"trained beats untrained on the held-out split: {'yes' if learned else 'NO'}; with anchors beats without "
          f"on the anchor-dependent questions: {'yes' if anchors_help else 'NO'}")
    print("\nevaluate_bench on the checkpoint (task metrics; ablations of the same checkpoint):")
    with timed(seconds, "evaluate_bench"):
        evaluate_checkpoint(checkpoint, dataset=str(data), split="test", output=output / "eval",
                            stage1=str(checkpoint / "stage1-model"), update_card=True)
    print(f"checkpoint: {checkpoint} (loss curve, model card inside); reports: {output / 'results.md'}, "
          f"{output / 'eval'}")
    print(f"{time.perf_counter() - start:.0f} s in all: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return results


@command("fusar-main")
def main(argv=None):
    run(argv)


if __name__ == "__main__":
    sys.exit(main())
