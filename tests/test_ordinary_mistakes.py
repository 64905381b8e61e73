"""A new user's ordinary mistakes, through the installed commands as a shell runs them: each is refused at once in one
line (exit 2), before anything is written, and nothing already on disk changes."""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import build as build_model
from dataset_scripts.simulate import simulate
from processing.anchors import as_anchor_set

SCRIPTS = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def script(name, *args, cwd=None, timeout=600):
    result = subprocess.run([str(SCRIPTS / name), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return result.returncode, result.stderr


ENTRY_POINTS = {"fusar-data": "dataset_scripts.cli:main", "fusar-train": "train_sft:cli",
                "fusar-eval": "evaluate_bench:main", "fusar-main": "main_job:main"}


def run(capsys, name, *args):
    """The console script's own function (what its `sys.exit` wraps), in this process: the cases beyond the first of
    each command, which `script` runs as a shell does."""
    module, function = ENTRY_POINTS[name].split(":")
    code = getattr(importlib.import_module(module), function)([str(a) for a in args])
    return code, capsys.readouterr().err


def refused(result, prog, message):
    code, err = result
    assert code == 2, err
    assert "Traceback" not in err and f"{prog}: error: " in err and message in err, err


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_simulate_checks_both_of_its_folders_before_writing_either(tmp_path, capsys):
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "notes.txt").write_text("mine")
    (tmp_path / "u.raw").mkdir()
    (tmp_path / "u.raw" / "scenes.jsonl").write_text("my own scenes\n")
    before = tree(tmp_path)
    refused(script("fusar-data", "simulate", "--scenes", "2", "--output", tmp_path / "u"), "fusar-data",
            "exists and is not empty")
    (tmp_path / "u" / "notes.txt").unlink()  # the dataset folder is free now; the .raw sibling is still the user's
    refused(run(capsys, "fusar-data", "simulate", "--scenes", "2", "--output", tmp_path / "u"), "fusar-data",
            "u.raw: it is not a folder fusar-data simulate wrote")
    assert tree(tmp_path) == {k: v for k, v in before.items() if k != "u/notes.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u", "u.raw"]  # no .partial either


def test_simulate_rewrites_its_own_raw_inputs_on_a_rerun(tmp_path, capsys):
    output = tmp_path / "sim"
    assert run(capsys, "fusar-data", "simulate", "--scenes", "2", "--output", output)[0] == 0
    first = tree(tmp_path / "sim.raw")
    assert "simulation.json" in first and "scenes.jsonl" in first
    code, err = run(capsys, "fusar-data", "simulate", "--scenes", "2", "--output", output, "--overwrite")
    assert code == 0, err
    assert tree(tmp_path / "sim.raw") == first
    (tmp_path / "sim.raw" / "simulation.json").unlink()  # as an older fusar-data wrote it, beside its dataset
    code, err = run(capsys, "fusar-data", "simulate", "--scenes", "2", "--output", output, "--overwrite")
    assert code == 0, err
    assert tree(tmp_path / "sim.raw") == first


def test_a_users_own_data_laid_out_like_simulates_is_never_replaced(tmp_path, capsys):
    raw = tmp_path / "mine.raw"
    for name in ("scenes.jsonl", "sar/a.tif", "alphaearth/2020/t.tif"):
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_text("the user's own")
    before = tree(tmp_path)
    refused(run(capsys, "fusar-data", "simulate", "--scenes", "2", "--output", tmp_path / "mine"), "fusar-data",
            "mine.raw: it is not a folder fusar-data simulate wrote")
    assert tree(tmp_path) == before


def test_fusar_main_checks_every_output_before_any_work(tmp_path, capsys):
    (tmp_path / "mainx" / "data").mkdir(parents=True)
    (tmp_path / "mainx" / "data" / "mine.csv").write_text("a,b\n")
    refused(script("fusar-main", "--output", tmp_path / "mainx"), "fusar-main", "mine.csv")
    assert tree(tmp_path) == {"mainx/data/mine.csv": b"a,b\n"}  # no mainx/data.raw
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("\\begin{document}")
    refused(run(capsys, "fusar-main", "--output", tmp_path / "other"), "fusar-main", "thesis.tex")
    # No abbreviation: --scene goes to fusar-train, which does not know it (and is parsed before any work).
    refused(run(capsys, "fusar-main", "--output", tmp_path / "small", "--scene", "5"), "fusar-main", "'--scene'")
    refused(run(capsys, "fusar-main", "--output", tmp_path / "small", "--scenes", "5"), "fusar-main",
            "too few for a held-out test split")
    assert not (tmp_path / "small").exists()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("data") / "sim", scenes=24)


TRAIN = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--tiny_hidden_size", "64", "--stage", "1"]


def test_a_mistyped_path_is_no_such_folder_at_once(tmp_path, data, capsys, monkeypatch):
    """Not `user/name` and nowhere on disk: one line at once, no Hub retries (the Hub is out of reach here)."""
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    refused(script("fusar-data", "check", "nope_folder", cwd=tmp_path), "fusar-data", "nope_folder: no such file or folder")
    (tmp_path / "ck").mkdir()
    for command in (["fusar-train", "--dataset_name", "nope_data", "--output_dir", "out"],
                    ["fusar-train", "--dataset_name", "./nope/data", "--output_dir", "out"],
                    ["fusar-train", "--dataset_name", data, "--model", "./nope_model", "--output_dir", "out", *TRAIN],
                    ["fusar-eval", "ck", "--dataset", "nope_data", "--output", "out"],
                    ["fusar-eval", "ck", "--dataset", data, "--base", "nope_base", "--output", "out"]):
        refused(run(capsys, *command), command[0], "no such file or folder")
    assert time.perf_counter() - started < 60 and not (tmp_path / "out").exists()


def test_a_model_folder_is_not_a_dataset(tmp_path, tokenizers, capsys):
    model, processor = build_model(tokenizers, "qwen2_5_vl")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")  # JSON files of several shapes, as in a checkpoint
    refused(run(capsys, "fusar-data", "check", tmp_path / "model"), "fusar-data", "not a dataset that can be loaded")


def test_numbers_and_integrations_are_refused_before_any_folder_is_made(tmp_path, data, capsys):
    refused(script("fusar-train", "--dataset_name", data, "--output_dir", tmp_path / "t7", *TRAIN,
                   "--per_device_train_batch_size", "0"), "fusar-train", "--per_device_train_batch_size 0")
    for options, message in ((["--stage1_learning_rate", "-1"], "--stage1_learning_rate -1.0"),
                             (["--report_to", "a_logger_nobody_has"], "a_logger_nobody_has")):
        code, err = run(capsys, "fusar-train", "--dataset_name", data, "--output_dir", tmp_path / "t7", *TRAIN, *options)
        assert code == 2 and message in err, err
    if importlib.util.find_spec("tensorboard") is None:
        refused(run(capsys, "fusar-train", "--dataset_name", data, "--output_dir", tmp_path / "t7", *TRAIN,
                    "--report_to", "tensorboard"), "fusar-train", "--report_to tensorboard: not installed here")
    assert not (tmp_path / "t7").exists()  # the corrected command then finds no leftover in its way
    assert run(capsys, "fusar-train", "--dataset_name", data, "--output_dir", tmp_path / "t7", *TRAIN)[0] == 0
    # A typo beside --overwrite_output_dir is refused before the old run is cleared.
    refused(run(capsys, "fusar-train", "--dataset_name", "nope_data", "--output_dir", tmp_path / "t7", *TRAIN,
                "--overwrite_output_dir", "true"), "fusar-train", "no such file or folder")
    assert (tmp_path / "t7" / "fusar_run.json").is_file()


def test_a_base_of_another_vocabulary_is_refused_for_the_base_column(tmp_path, data, tokenizers, capsys):
    code, err = run(capsys, "fusar-train", "--dataset_name", data, "--output_dir", tmp_path / "ck", *TRAIN)
    assert code == 0, err
    other = build_model(tokenizers, "qwen2_5_vl")[0].vlm
    other.save_pretrained(tmp_path / "other-base")
    refused(run(capsys, "fusar-eval", tmp_path / "ck", "--dataset", data, "--split", "test", "--base",
                tmp_path / "other-base", "--output", tmp_path / "eval", "--limit", "2"),
            "fusar-eval", "not this checkpoint's base")


def test_an_adapter_kept_beside_its_run_loads_from_any_folder(tmp_path, data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, "fusar-train", "--dataset_name", data, "--output_dir", "runs/lora", "--use_peft", "true",
                    "--merge_lora", "false", *TRAIN[:-2], "--stage", "both", "--stage2_epochs", "1")
    assert code == 0, err
    adapter = json.loads((tmp_path / "runs" / "lora" / "adapter_config.json").read_text())
    assert Path(adapter["base_model_name_or_path"]).is_absolute()
    load = ("import modeling_fusar, sys; from peft import PeftConfig, PeftModel; "
            "from transformers import AutoModelForImageTextToText as Auto; "
            "base = Auto.from_pretrained(PeftConfig.from_pretrained(sys.argv[1]).base_model_name_or_path); "
            "print(type(PeftModel.from_pretrained(base, sys.argv[1]).get_base_model()).__name__)")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-c", load, str(tmp_path / "runs" / "lora")], capture_output=True,
                            text=True, cwd=elsewhere, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0 and "FusarForConditionalGeneration" in result.stdout, result.stderr[-3000:]


def test_unclear_messages_are_clear(tmp_path, data, capsys):
    np.savez(tmp_path / "x.npz", values=np.zeros((2, 64)))
    refused(script("fusar-data", "import-manifest", tmp_path / "x.npz", "--output", tmp_path / "m"), "fusar-data",
            "not a manifest (JSONL or a JSON list of rows): it is not UTF-8 text")
    (tmp_path / "empty.jsonl").write_text("")
    refused(run(capsys, "fusar-data", "build", "--jsonl", tmp_path / "empty.jsonl", "--output", tmp_path / "b"),
            "fusar-data", "empty.jsonl: each is empty")
    scene = sorted((Path(str(data) + ".raw") / "sar").glob("*.tif"))[0]
    source = Path(str(data) + ".raw") / "alphaearth"
    (tmp_path / "folder").mkdir()
    refused(run(capsys, "fusar-data", "anchors", scene, "--source", source, "--output", tmp_path / "folder"),
            "fusar-data", "a folder; give the .npz file to write")
    refused(run(capsys, "fusar-data", "anchors", scene, "--source", source, "--output",
                tmp_path / "nodir" / "sub" / "a.npz"), "fusar-data", "no such folder")
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == []
    (tmp_path / "text.npz").write_text("these are not anchors")
    with pytest.raises(ValueError, match="not an .npz or .npy anchor file") as error:
        as_anchor_set(tmp_path / "text.npz", anchor_dim=64)  # what the Space reads an uploaded file with
    assert "pickle" not in str(error.value)


def test_training_reports_validation_loss_per_stage(tmp_path, data, capsys):
    code, err = run(capsys, "fusar-train", "--dataset_name", data, "--output_dir", tmp_path / "run", "--stage", "both",
                       "--max_steps", "2", "--per_device_train_batch_size", "2", "--tiny_hidden_size", "64",
                       "--eval_strategy", "steps", "--eval_steps", "1", "--per_device_eval_batch_size", "4",
                       "--save_strategy", "no")
    assert code == 0, err
    history = json.loads((tmp_path / "run" / "fusar_run.json").read_text())["history"]
    assert {entry["stage"] for entry in history if "eval_loss" in entry} == {1, 2}
    assert not (tmp_path / "run" / "stage1").exists() and not (tmp_path / "run" / "stage2").exists()


def test_the_training_benchmark_stops_when_its_worker_fails(tmp_path):
    (tmp_path / "not-a-dataset.txt").write_text("no rows here")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_training.py"), "--dataset",
                             str(tmp_path / "not-a-dataset.txt"), "--steps", "1"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode != 0 and "not-a-dataset.txt" in result.stderr


def test_the_space_finds_the_main_jobs_checkpoint_from_any_folder(tmp_path):
    """`python <clone>/spaces/app.py` started elsewhere serves the clone's outputs/main/fusar-tiny, or says to run
    fusar-main; never takes the relative path for a Hub id."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import fusar_demo; print(fusar_demo.DEFAULT_CHECKPOINT)\n"
              "try:\n    fusar_demo.load_checkpoint('/nowhere/fusar-tiny')\n"
              "except fusar_demo.UserError as error:\n    print(error)")
    env = {k: v for k, v in os.environ.items() if k != "FUSAR_CHECKPOINT"}
    result = subprocess.run([sys.executable, "-c", script, str(ROOT / "spaces")], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=300)
    served, message = result.stdout.strip().splitlines()[-2:]
    assert served == str(ROOT / "outputs" / "main" / "fusar-tiny"), result.stderr[-2000:]
    assert message.startswith("No checkpoint at /nowhere/fusar-tiny: run `fusar-main` first")


def test_the_model_card_says_what_was_trained_on_what_under_which_licence(tmp_path, data, capsys):
    """The dataset has no vqa rows: the recipe does not list them. Stage checkpoints carry no TRL card."""
    code, err = run(capsys, "fusar-train", "--dataset_name", data, "--output_dir", tmp_path / "run", "--stage", "both",
                       "--max_steps", "1", "--per_device_train_batch_size", "2", "--tiny_hidden_size", "64",
                       "--lr_scheduler_type", "cosine", "--save_strategy", "steps", "--save_steps", "1")
    assert code == 0, err
    card = (tmp_path / "run" / "README.md").read_text()
    assert "cosine schedule" in card and "SchedulerType" not in card
    assert 'from_pretrained("./run"' in card and "license: cc-by-4.0" in card and "rasterio" in card
    stage2 = next(line for line in card.splitlines() if line.startswith("- Stage 2"))
    assert "counting" in stage2 and "vqa" not in stage2
    assert list((tmp_path / "run").glob("stage*/checkpoint-*")) and not list((tmp_path / "run").glob("stage*/**/README.md"))
    code, err = run(capsys, "fusar-eval", tmp_path / "run", "--dataset", data, "--output", tmp_path / "eval", "--limit",
                       "4", "--card", "--max-new-tokens", "4")
    assert code == 0, err
    card = (tmp_path / "run" / "README.md").read_text()
    assert "name: fusar-simulated-sar-triplets" in card and "name: sim\n" not in card
