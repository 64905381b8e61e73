"""Hostile and faulty input, tried as a careless or hostile user would: every command answers a mistake with one line
and exit status 2, loses nothing already on disk, and one bad input never stops a batch.

Each console script is run once as the installed command (`subprocess`), the way a shell runs it; the other cases
call the same decorated `main(argv)` in-process (the console script is that function, `sys.exit` around it)."""

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

import evaluate_bench
from evaluation.scoring import METRICS_DIR
from dataset_scripts.tasks import parse_detection_answer
import main_job
import publish
import train_sft
from conftest import build as build_model
from dataset_scripts.builder import BuildConfig
from dataset_scripts.cli import main as fusar_data
from dataset_scripts.simulate import simulate
from processing import load_sar_image
from processing.anchors import as_anchor_set
from training.checkpoints import latest_whole_checkpoint

SCRIPTS = Path(sys.executable).parent


def script(name, *args, env=None):
    """Run an installed console script as a shell would."""
    return subprocess.run([str(SCRIPTS / name), *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def refused(code_and_err, prog, message):
    """Exit status 2, one `prog: error:` line naming the problem, no traceback."""
    code, err = code_and_err
    assert code == 2, err
    assert "Traceback" not in err and f"{prog}: error: " in err and message in err, err


def in_process(main, capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def chips(folder: Path, count: int, nan: set = frozenset()) -> Path:
    """`count` float GeoTIFF chips (those in `nan` all NaN) and a scenes JSONL beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        data = np.full((1, 32, 32), np.nan, np.float32) if i in nan else rng.gamma(1, 0.1, (1, 32, 32)).astype(np.float32)
        with rasterio.open(folder / f"chip{i}.tif", "w", driver="GTiff", width=32, height=32, count=1, dtype="float32",
                           crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as dataset:
            dataset.write(data)
        lines.append({"image": f"chip{i}.tif", "caption": f"chip {i}", "objects": [{"bbox": [2, 2, 9, 9], "category": "ship"}]})
    (folder / "scenes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder / "scenes.jsonl"


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# Data loss: one guard on every destructive write


def test_a_build_never_deletes_its_inputs_or_a_folder_it_did_not_write(tmp_path):
    scenes = chips(tmp_path / "in", 3)
    before = snapshot(tmp_path / "in")
    result = script("fusar-data", "build", "--jsonl", scenes, "--output", tmp_path / "in", "--overwrite")
    refused((result.returncode, result.stderr), "fusar-data", "holds files that fusar-data does not write")
    assert "scenes.jsonl" in result.stderr and snapshot(tmp_path / "in") == before
    assert not (tmp_path / "in.partial").exists()
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("three years of work")
    result = script("fusar-data", "build", "--jsonl", scenes, "--output", tmp_path / "thesis", "--overwrite")
    assert result.returncode == 2 and "thesis.tex" in result.stderr
    assert (tmp_path / "thesis" / "thesis.tex").read_text() == "three years of work"


def test_a_dataset_it_wrote_is_replaced_only_with_overwrite(tmp_path, capsys):
    scenes = chips(tmp_path / "in", 3)
    assert in_process(fusar_data, capsys, "build", "--jsonl", scenes, "--output", tmp_path / "out")[0] == 0
    refused(in_process(fusar_data, capsys, "build", "--jsonl", scenes, "--output", tmp_path / "out"), "fusar-data",
            "pass --overwrite to replace it")
    (tmp_path / "out.old").mkdir()  # the user's own folder of that name is not the tool's to delete
    (tmp_path / "out.old" / "notes.txt").write_text("mine")
    code, _ = in_process(fusar_data, capsys, "build", "--jsonl", scenes, "--output", tmp_path / "out", "--overwrite",
                         "--grid-size", "2")
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "data"]
    assert (tmp_path / "out.old" / "notes.txt").read_text() == "mine" and not (tmp_path / "out.partial").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.old")]


def test_a_training_run_is_never_overwritten_or_mixed_with_an_old_one(tmp_path, capsys):
    data = simulate(tmp_path / "data", scenes=8)  # inputs are checked first; the folder checks below come next
    run = tmp_path / "run"
    (run / "stage1-model").mkdir(parents=True)
    (run / "fusar_run.json").write_text("{}")
    (run / "stage1-model" / "config.json").write_text("{}")
    before = snapshot(run)
    result = script("fusar-train", "--dataset_name", data, "--output_dir", run, "--bf16", "false")
    refused((result.returncode, result.stderr), "fusar-train", "--overwrite_output_dir true")
    assert snapshot(run) == before
    (run / "notes.txt").mkdir()  # not something fusar-train writes (a folder where it writes only files)
    refused(in_process(train_sft.cli, capsys, "--dataset_name", data, "--output_dir", run, "--bf16",
                       "false", "--overwrite_output_dir", "true"), "fusar-train", "notes.txt/")
    assert snapshot(run) == before
    shutil.rmtree(run / "notes.txt")
    # A folder of model files is not a run (no fusar_run.json, no stage folders), and a run's input is never deleted.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    refused(in_process(train_sft.cli, capsys, "--dataset_name", data, "--output_dir", model, "--bf16",
                       "false", "--overwrite_output_dir", "true"), "fusar-train", "it is not a folder fusar-train wrote")
    refused(in_process(train_sft.cli, capsys, "--model", run, "--dataset_name", data, "--output_dir",
                       run, "--bf16", "false", "--overwrite_output_dir", "true"), "fusar-train", "this run's input")
    assert (model / "model.safetensors").exists() and snapshot(run) == before
    # Allowed to replace it: the old run (its stage-1 model too) is gone before the new run starts.
    code, err = in_process(train_sft.cli, capsys, "--dataset_name", data, "--output_dir", run, "--overwrite_output_dir",
                           "true", "--stage", "1", "--max_steps", "1", "--tiny_hidden_size", "64", "--save_strategy", "no")
    assert code == 0, err
    assert (run / "fusar_run.json").read_text() != "{}" and not (run / "stage1-model").exists()


def test_resuming_names_a_checkpoint_of_this_run_or_fails(tmp_path, capsys):
    data = simulate(tmp_path / "data", scenes=8)
    run = tmp_path / "run"
    (run / "stage2" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "elsewhere" / "checkpoint-4").mkdir(parents=True)
    options = ["--dataset_name", data, "--output_dir", run, "--bf16", "false"]
    refused(in_process(train_sft.cli, capsys, *options, "--resume_from_checkpoint", run / "stage2" / "checkpint-4"),
            "fusar-train", "no such checkpoint folder")
    refused(in_process(train_sft.cli, capsys, *options, "--resume_from_checkpoint", tmp_path / "elsewhere" / "checkpoint-4"),
            "fusar-train", "not a checkpoint of this run")
    refused(in_process(train_sft.cli, capsys, *options, "--stage", "1", "--resume_from_checkpoint",
                       run / "stage2" / "checkpoint-4"), "fusar-train", "is a stage-2 checkpoint, but --stage is 1")
    refused(in_process(train_sft.cli, capsys, *options, "--resume_from_checkpoint", run / "stage2" / "checkpoint-4"),
            "fusar-train", "stage 1 of this run did not finish")


def test_a_cut_short_checkpoint_is_skipped_for_the_one_before(tmp_path, capsys):
    from safetensors.numpy import save_file

    for step in (1, 2, 3):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_file({"w": np.ones(1000, np.float32)}, str(folder / "model.safetensors"))
        (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-3" / "trainer_state.json").unlink()  # the save never finished
    weights = (tmp_path / "checkpoint-2" / "model.safetensors").read_bytes()
    (tmp_path / "checkpoint-2" / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # a full disk
    assert latest_whole_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")
    err = capsys.readouterr().err
    assert "skipping" in err and "checkpoint-3" in err and "model.safetensors is cut short" in err
    shard = tmp_path / "checkpoint-1" / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.parent.mkdir()
    shard.write_bytes(b"PK\x03\x04 cut short")  # DeepSpeed's optimizer shards live one folder down
    assert latest_whole_checkpoint(tmp_path) is None
    assert "global_step1/zero_pp_rank_0_mp_rank_00_optim_states.pt is cut short" in capsys.readouterr().err


# Silent wrong results


def test_an_image_without_a_valid_pixel_is_an_error_and_a_build_skips_it(tmp_path, capsys):
    scenes = chips(tmp_path / "in", 3, nan={1})
    with pytest.raises(ValueError, match="chip1.tif: no valid pixel"):
        load_sar_image(tmp_path / "in" / "chip1.tif")
    code, err = in_process(fusar_data, capsys, "build", "--jsonl", scenes, "--output", tmp_path / "out")
    assert code == 0 and "skipped 1 of 3 scenes" in err and "chip1.tif: no valid pixel" in err
    card = (tmp_path / "out" / "README.md").read_text()
    assert "skipped: **1**" in card and str(tmp_path) not in card  # no local absolute paths in a publishable card
    everything_bad = chips(tmp_path / "bad", 2, nan={0, 1})
    refused(in_process(fusar_data, capsys, "build", "--jsonl", everything_bad, "--output", tmp_path / "none"),
            "fusar-data", "no rows: none of the 2 scenes could be used")
    assert not (tmp_path / "none").exists() and not (tmp_path / "none.partial").exists()


@pytest.mark.parametrize("argv, message", [
    (["build", "--jsonl", "x.jsonl", "--output", "o", "--grid-size", "-3"], "--grid-size: expected an integer of at least 1"),
    (["build", "--jsonl", "x.jsonl", "--output", "o", "--shard-size", "0"], "--shard-size: expected an integer of at least 1"),
    (["simulate", "--output", "o", "--num-proc", "zero"], "--num-proc: expected an integer, got 'zero'"),
])
def test_out_of_range_numbers_are_refused_before_any_work(tmp_path, argv, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        fusar_data(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no .partial folder left to block the corrected rerun


def test_the_python_api_checks_what_the_flags_check(tmp_path):
    with pytest.raises(ValueError, match="BuildConfig.grid_size must be an integer of at least 1, got 0"):
        BuildConfig(grid_size=0)
    with pytest.raises(ValueError, match="BuildConfig.years_before"):
        BuildConfig(years_before=-1)
    chip = tmp_path / "in" / "chip0.tif"
    chips(tmp_path / "in", 1)
    with pytest.raises(ValueError, match=r"bands are named or numbered from 1, got 1.7"):
        load_sar_image(chip, bands=[1.7])
    with pytest.raises(ValueError, match=r"bands are named or numbered from 1, got True"):
        load_sar_image(chip, bands=[True])
    Image.new("L", (8, 8)).save(tmp_path / "chip.png")
    with pytest.raises(ValueError, match="chip.png: bands= picks bands of a GeoTIFF"):
        load_sar_image(tmp_path / "chip.png", bands=[1])
    with pytest.raises(ValueError, match=r"no empty axis, got shape \(1, 64, 0, 5\)"):
        as_anchor_set(np.zeros((64, 0, 5)), anchor_dim=64)
    np.save(tmp_path / "anchors.npy", np.zeros((4, 64), np.float32))
    os.replace(tmp_path / "anchors.npy", tmp_path / "anchors.npz")  # a .npy under an .npz name
    with pytest.raises(ValueError, match="anchors.npz: an anchor .npy must be"):
        as_anchor_set(tmp_path / "anchors.npz", anchor_dim=64)


# Resource exhaustion: sizes checked from the header, in the one image-loading function


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims `width` x `height` grey pixels, with no pixel data: a few dozen bytes."""
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_huge_images_are_refused_from_their_header(tmp_path, monkeypatch):
    sparse = tmp_path / "sparse.tif"
    with rasterio.open(sparse, "w", driver="GTiff", width=60000, height=60000, count=1, dtype="float32", tiled=True,
                       sparse_ok=True, compress="deflate"):
        pass  # no block written: a small file claiming 3.6 gigapixels
    with pytest.raises(ValueError, match=r"sparse.tif: 60000 x 60000 pixels would need about 311.81 GiB"):
        load_sar_image(sparse)
    png_header_only(tmp_path / "bomb.png", 100000, 100000)
    with pytest.raises(ValueError, match="bomb.png: not a readable image file"):
        load_sar_image(tmp_path / "bomb.png")
    Image.new("L", (300, 200)).save(tmp_path / "ok.png")
    monkeypatch.setenv("FUSAR_MAX_IMAGE_BYTES", "100000")  # the limit is the user's to set
    with pytest.raises(ValueError, match=r"ok.png: 300 x 200 pixels would need about .* FUSAR_MAX_IMAGE_BYTES"):
        load_sar_image(tmp_path / "ok.png")
    monkeypatch.delenv("FUSAR_MAX_IMAGE_BYTES")
    assert load_sar_image(tmp_path / "ok.png").size == (300, 200)


def test_one_bad_input_never_stops_a_batch(tmp_path, capsys):
    """A pixel bomb, malformed and enormous coordinate sizes, a path outside the manifest's folder: each row is
    reported and skipped; the good row is built."""
    folder = tmp_path / "release"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / "good.png")
    png_header_only(folder / "bomb.png", 100000, 100000)
    for name in ("abc", "short", "huge"):
        shutil.copy(folder / "good.png", folder / f"{name}.png")
    (tmp_path / "secret.png").write_bytes((folder / "good.png").read_bytes())
    rows = [("good.png", 64), ("bomb.png", 64), ("abc.png", "abc"), ("short.png", [64]), ("huge.png", 120000),
            ("../secret.png", 64), (str(tmp_path / "secret.png"), 64)]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(
        {"id": f"q{i}", "image": image, "question": "How many ships?", "answer": "2", "coordinate_size": size}) + "\n"
        for i, (image, size) in enumerate(rows)))
    code, err = in_process(fusar_data, capsys, "import-manifest", folder / "manifest.jsonl", "--output", tmp_path / "out")
    assert code == 0 and "skipped 6 of 7 scenes" in err
    card = (tmp_path / "out" / "README.md").read_text()
    for reason in ("bomb.png: not a readable image file", "coordinate_size must be a positive integer or [width, height], "
                   "got 'abc'", "got [64]", "120000 x 120000 pixels would need about", "image '../secret.png' lies outside the manifest's folder",
                   "image must be a path relative to the manifest, got an absolute path"):
        assert reason in card, reason
    assert str(tmp_path) not in card
    from dataset_scripts.loading import load_triplet_dataset

    built = load_triplet_dataset(str(tmp_path / "out"))
    assert {row["scene_id"] for split in built.values() for row in split} == {"good"}
    # The user may widen the confinement on purpose.
    code, _ = in_process(fusar_data, capsys, "import-manifest", folder / "manifest.jsonl", "--output", tmp_path / "wide",
                         "--root", tmp_path)
    assert code == 0
    built = load_triplet_dataset(str(tmp_path / "wide"))
    assert {row["scene_id"] for split in built.values() for row in split} == {"good", "secret"}


def test_junk_model_output_never_stops_the_metrics():
    import evaluate

    junk = ["9" * 400, "[" * 3000, "]" * 10, "-" * 50, "nan", "inf", "1e999", "\x00\ud7ff", "", " " * 10000,
            '[{"bbox_2d": [1e308, 1e308, -1e308, 1e999], "label": "ship"}]', '[{"bbox_2d": [5, 5, 1, 1], "label": 3}]',
            '[{"bbox_2d": [' + "9" * 400 + ', 1, 2, 3], "label": "ship"}]',  # an int too large for a float
            "{" * 3000, "middle center" * 500]
    for name in sorted(p.name for p in METRICS_DIR.glob("sar_*")):
        metric = evaluate.load(str(METRICS_DIR / name))
        reference = {"sar_counting": "3", "sar_detection": '[{"bbox_2d": [1, 1, 5, 5], "label": "ship"}]',
                     "sar_grid": "top-left"}.get(name, "ship")
        result = metric.compute(predictions=junk, references=[reference] * len(junk))
        assert result["examples"] == len(junk), name
    counting = evaluate.load(str(METRICS_DIR / "sar_counting"))
    assert counting.compute(predictions=["9" * 400, "3"], references=["3", "3"])["unparsable"] == 1
    huge = '[{"bbox_2d": [' + "9" * 400 + ', 1, 2, 3], "label": "ship"}]'
    detection = evaluate.load(str(METRICS_DIR / "sar_detection"))
    assert detection.compute(predictions=[huge], references=[huge.replace("9" * 400, "0")])["unparsable"] == 1
    assert parse_detection_answer(huge) is None  # the Space draws no boxes, and says the answer has none


# The evaluation cache follows the weights, not the path


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory, tokenizers):
    from dataset_scripts.simulate import simulate

    folder = tmp_path_factory.mktemp("hostile-eval")
    data = simulate(folder / "data", scenes=8)
    model, processor = build_model(tokenizers, "qwen2_5_vl", seed=0, modulate=True)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    return folder, data, tokenizers


def predictions(output: Path, variant="anchors"):
    return [json.loads(line) for line in (output / "predictions" / f"{variant}.jsonl").read_text().splitlines()[1:]]


def test_a_model_retrained_into_the_same_folder_never_meets_the_old_answers(eval_setup, capsys):
    folder, data, tokenizers = eval_setup
    checkpoint = folder / "retrained"
    shutil.copytree(folder / "model", checkpoint)
    options = ["--dataset", data, "--split", "train", "--limit", "6", "--max-new-tokens", "4"]
    assert in_process(evaluate_bench.main, capsys, checkpoint, *options, "--output", folder / "eval")[0] == 0
    old = predictions(folder / "eval")
    other, _ = build_model(tokenizers, "qwen2_5_vl", seed=5, modulate=True)
    other.save_pretrained(checkpoint)  # "retrained" into the same folder
    assert in_process(evaluate_bench.main, capsys, checkpoint, *options, "--output", folder / "eval")[0] == 0
    assert in_process(evaluate_bench.main, capsys, checkpoint, *options, "--output", folder / "fresh")[0] == 0
    assert predictions(folder / "eval") == predictions(folder / "fresh") != old
    # A cache line whose prediction is not text is generated again, not a crash.
    cache = folder / "eval" / "predictions" / "anchors.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:1] + [json.dumps({"id": json.loads(lines[1])["id"], "prediction": 7})] + lines[2:]) + "\n")
    assert in_process(evaluate_bench.main, capsys, checkpoint, *options, "--output", folder / "eval")[0] == 0
    report = lambda output: json.loads((output / "results.json").read_text())["predictions"]  # noqa: E731
    assert report(folder / "eval") == report(folder / "fresh")


def test_fusar_eval_refuses_bad_checkpoints_and_numbers(eval_setup, tmp_path, capsys):
    folder, data, _ = eval_setup
    result = script("fusar-eval", tmp_path / "no-such-model", "--dataset", data, "--output", tmp_path / "e")
    refused((result.returncode, result.stderr), "fusar-eval", "no-such-model: no such checkpoint folder")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(folder / "model", corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    refused(in_process(evaluate_bench.main, capsys, corrupt, "--dataset", data, "--split", "train", "--output",
                       tmp_path / "e"), "fusar-eval", "cannot load it as a model")
    for flag in ("--batch-size", "--limit", "--max-new-tokens"):
        with pytest.raises(SystemExit) as stop:
            evaluate_bench.main([str(folder / "model"), "--dataset", str(data), flag, "0"])
        assert stop.value.code == 2 and f"{flag}: expected an integer of at least 1, got 0" in capsys.readouterr().err


# Clear errors from every other command


def test_the_other_commands_answer_in_one_line(eval_setup, tmp_path, capsys):
    folder, _, _ = eval_setup
    (tmp_path / "tlm").mkdir()  # their legacy folder: the film weights alone, a pickle here
    (tmp_path / "tlm" / "vec64_film.pt").write_bytes(pickle.dumps({"film_mlp": "os.system('echo owned')"}))
    result = script("fusar-convert-official", "--base", folder / "model", "--tlm", tmp_path / "tlm", "--legacy-sigma",
                    "2", "--output", tmp_path / "converted")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "vec64_film.pt" in result.stderr, result.stderr
    assert not (tmp_path / "converted").exists()

    offline = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_unused", "HF_HUB_DISABLE_TELEMETRY": "1"}
    result = script("fusar-publish", "--namespace", "me", "--model", folder / "model", env=offline)
    refused((result.returncode, result.stderr), "fusar-publish", "cannot reach the Hub or server")
    refused(in_process(publish.main, capsys, "--namespace", "me", "--model", tmp_path / "missing"), "fusar-publish",
            "missing: not a folder with config.json")

    refused(in_process(fusar_data, capsys, "import-manifest", tmp_path / "missing.jsonl", "--output", tmp_path / "o"),
            "fusar-data", "missing.jsonl: no such file or folder")
    refused(in_process(fusar_data, capsys, "build", "--voc", tmp_path / "missing", "--output", tmp_path / "o"),
            "fusar-data", "--voc")
    os.environ.update(offline)
    try:
        scenes = chips(tmp_path / "in", 2)
        code, err = in_process(fusar_data, capsys, "build", "--jsonl", scenes, "--output", tmp_path / "pushed",
                               "--push-to-hub", "me/data")
    finally:
        for key in offline:
            os.environ.pop(key)
    refused((code, err), "fusar-data", "cannot reach the Hub or server")
    assert (tmp_path / "pushed" / "README.md").exists()  # the dataset stays on disk

    with pytest.raises(SystemExit) as stop:
        main_job.main(["--scenes", "0"])
    assert stop.value.code == 2 and "--scenes: expected an integer of at least 1" in capsys.readouterr().err


def test_a_bug_is_one_line_too_and_fusar_traceback_shows_it(monkeypatch, capsys):
    from command_line import command

    @command("fusar-x")
    def broken(argv=None):
        return {}["missing"]

    assert broken() == 1
    err = capsys.readouterr().err
    assert "fusar-x: internal error (KeyError: 'missing')" in err and "FUSAR_TRACEBACK=1" in err
    monkeypatch.setenv("FUSAR_TRACEBACK", "1")
    with pytest.raises(KeyError):
        broken()
