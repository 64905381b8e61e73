"""fusar-eval --benchmark: a public image-question-answer dataset on the (local) Hub, read through a column mapping,
streamed, scored without anchors beside the base model; the console script driven as a user's shell does."""

from __future__ import annotations

import json
import shutil
import subprocess

import datasets
import pytest
from huggingface_hub import HfApi

from conftest import build, random_image

REPO = "sar-lab/sar-vqa-mini"
SHARDS, ROWS_PER_SHARD = 4, 32
CARD = "---\nlicense: cc-by-4.0\n---\n# A small SAR VQA benchmark (test replica)\n"


@pytest.fixture(scope="module")
def checkpoints(tokenizers, tmp_path_factory):
    model, processor = build(tokenizers, "qwen2_5_vl")
    folder = tmp_path_factory.mktemp("bench")
    model.save_pretrained(folder / "fusar")
    processor.save_pretrained(folder / "fusar")
    model.vlm.save_pretrained(folder / "base")
    return folder / "fusar", folder / "base"


@pytest.fixture
def hub_benchmark(local_hub, tmp_path):
    """The repo (README with a licence, the test split as parquet shards of images, questions and answers): its
    commit and the bytes of its shards."""
    folder = tmp_path / "repo"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text(CARD)
    for shard in range(SHARDS):
        numbers = range(shard * ROWS_PER_SHARD, (shard + 1) * ROWS_PER_SHARD)
        part = datasets.Dataset.from_dict({
            "picture": [random_image(n, 56, 56) for n in numbers],
            "query": [f"How many ships are in image {n}?" for n in numbers],
            "reference": [str(n % 4) for n in numbers],
        }).cast_column("picture", datasets.Image())
        part.to_parquet(folder / "data" / f"test-{shard:05d}-of-{SHARDS:05d}.parquet")
    api = HfApi()
    api.create_repo(REPO, repo_type="dataset")
    api.upload_folder(folder_path=str(folder), repo_id=REPO, repo_type="dataset")
    return api.dataset_info(REPO).sha, sum(p.stat().st_size for p in (folder / "data").iterdir())


def fusar_eval(*args):
    return subprocess.run([shutil.which("fusar-eval"), *map(str, args)], capture_output=True, text=True, timeout=600)


MAPPING = ("--image-column", "picture", "--question-column", "query", "--answer-column", "reference")


def test_a_streamed_sample_is_scored_for_the_checkpoint_and_its_base_with_the_revision_and_licence(
        hub_benchmark, checkpoints, local_hub, tmp_path):
    fusar, base = checkpoints
    sent = local_hub.sent
    done = fusar_eval(fusar, "--benchmark", REPO, *MAPPING, "--limit", 3, "--base", base, "--max-new-tokens", 4,
                      "--output", tmp_path / "out")
    fetched = local_hub.sent - sent
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["config"]["benchmark"] == {"name": REPO, "repo": REPO, "revision": hub_benchmark[0],
                                             "license": "cc-by-4.0", "images": None, "columns": {
                                                 "image": "picture", "answer": "reference", "question": "query",
                                                 "prompt": "Describe this image.", "metric": "exact_match",
                                                 "split": "test", "config": None}, "notes": []}
    assert len(report["predictions"]) == 3 and {p["task"] for p in report["predictions"]} == {"vqa"}
    references = {p["reference"] for p in report["predictions"]}
    assert references <= {"0", "1", "2", "3"}
    assert set(report["metrics"]) == {"no anchors", "base model"}
    # An untrained FUSAR-GPT is its base model: the same answers, whatever they are.
    assert all(p["no anchors"] == p["base model"] for p in report["predictions"])
    assert "| vqa (accuracy" in (tmp_path / "out" / "results.md").read_text()
    # A sample reads a bounded part of the split (the shuffle buffer's rows, and each shard's footer), not all of it.
    assert 0 < fetched < hub_benchmark[1] / 2, (fetched, hub_benchmark[1])


def test_a_rerun_reuses_the_predictions_and_another_seed_draws_other_rows(hub_benchmark, checkpoints, tmp_path):
    fusar, _ = checkpoints
    run = lambda seed: fusar_eval(fusar, "--benchmark", REPO, *MAPPING, "--limit", 3, "--seed", seed,  # noqa: E731
                                  "--max-new-tokens", 4, "--output", tmp_path / "out")
    assert run(0).returncode == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())["predictions"]
    assert run(0).returncode == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["predictions"] == first
    assert run(1).returncode == 0
    other = json.loads((tmp_path / "out" / "results.json").read_text())["predictions"]
    assert [p["reference"] for p in other] != [p["reference"] for p in first] or \
        [p["id"] for p in other] != [p["id"] for p in first]
    # Another rule (SARLANG's): the same predictions, scored anew under their own task name.
    assert fusar_eval(fusar, "--benchmark", REPO, *MAPPING, "--limit", 3, "--seed", 1, "--metric", "answer_contained",
                      "--max-new-tokens", 4, "--output", tmp_path / "out").returncode == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(report["metrics"]["no anchors"]) == {"answer_contained"}
    assert report["metrics"]["no anchors"]["answer_contained"]["accuracy"] == sum(
        p["reference"].lower() in p["no anchors"].lower() for p in report["predictions"]) / 3


def test_a_layout_that_does_not_match_names_the_missing_column_in_one_line(hub_benchmark, checkpoints, tmp_path):
    fusar, _ = checkpoints
    done = fusar_eval(fusar, "--benchmark", REPO, "--image-column", "picture", "--question-column", "question",
                      "--answer-column", "reference", "--output", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "no column 'question' (--question-column); it has ['picture', 'query', 'reference']" in done.stderr
    assert not (tmp_path / "out" / "results.json").exists()
    done = fusar_eval(fusar, "--benchmark", "sar-lab/no-such-benchmark", *MAPPING, "--output", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "--benchmark sar-lab/no-such-benchmark: no such dataset on http://127.0.0.1:" in done.stderr


def test_an_unreachable_hub_or_an_unknown_metric_is_one_line(checkpoints, tmp_path, monkeypatch):
    fusar, _ = checkpoints
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    done = fusar_eval(fusar, "--benchmark", REPO, *MAPPING, "--output", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cannot reach the Hub" in done.stderr
    done = fusar_eval(fusar, "--benchmark", REPO, *MAPPING, "--metric", "bleu")
    assert done.returncode == 2 and "invalid choice: 'bleu'" in done.stderr


def test_a_flag_that_would_be_ignored_is_refused(checkpoints, tmp_path):
    fusar, _ = checkpoints
    done = fusar_eval(fusar, "--benchmark", "sarlang-1m", "--metric", "caption", "--split", "train")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "--metric, --split: not used here (--benchmark sarlang-1m is a preset: it reads its own files and scores " \
           "by its authors' rules)" in done.stderr
    done = fusar_eval(fusar, "--dataset", tmp_path, "--images", tmp_path, "--question-column", "q")
    assert done.returncode == 2 and "--question-column, --images: not used here (it is for --benchmark)" in done.stderr
    done = fusar_eval(fusar, "--benchmark", REPO, *MAPPING, "--prompt", "Why?")
    assert done.returncode == 2 and "--prompt: not used here (every row asks its --question-column)" in done.stderr
    done = fusar_eval(fusar, "--benchmark", REPO, *MAPPING, "--stage1", fusar)
    assert done.returncode == 2 and f"--benchmark {REPO}: --stage1 is for a triplet dataset with anchors" in done.stderr


def test_a_sample_of_a_split_in_one_file_draws_from_all_of_it(local_hub, tmp_path):
    from evaluation.benchmarks import ColumnMapping, benchmark_info, benchmark_rows

    folder = tmp_path / "one-file" / "data"
    folder.mkdir(parents=True)
    table = datasets.Dataset.from_dict({"image": [random_image(0, 8, 8)] * 400, "answer": [str(n) for n in range(400)]})
    table.cast_column("image", datasets.Image()).to_parquet(folder / "test-00000-of-00001.parquet", batch_size=20)
    HfApi().create_repo("sar-lab/one-file", repo_type="dataset")
    HfApi().upload_folder(folder_path=str(folder.parent), repo_id="sar-lab/one-file", repo_type="dataset")
    drawn = benchmark_rows(benchmark_info("sar-lab/one-file"), ColumnMapping("image", "answer"), limit=2, seed=0)
    # 20 row groups in a seeded order: the 16 examples drawn from are not simply the file's first 16.
    assert any(int(row["messages"][1]["content"]) >= 16 for row in drawn)


def local_benchmark(folder, rows: int = 6) -> datasets.Dataset:
    return datasets.Dataset.from_dict({
        "picture": [random_image(n, 56, 56) for n in range(rows)],
        "query": [f"How many ships are in image {n}?" for n in range(rows)],
        "reference": [str(n % 4) for n in range(rows)]}).cast_column("picture", datasets.Image())


def test_a_local_folder_is_a_benchmark_and_a_plain_dataset_is_not_a_triplet_dataset(checkpoints, tmp_path):
    """`--benchmark FOLDER` reads parquet files or a `save_to_disk` folder through the columns, as a Hub dataset; the
    same folder given as `--dataset` (the triplet schema) is one line saying which flag reads it."""
    fusar, _ = checkpoints
    (tmp_path / "parquet" / "data").mkdir(parents=True)
    local_benchmark(tmp_path).to_parquet(tmp_path / "parquet" / "data" / "test-00000-of-00001.parquet")
    datasets.DatasetDict({"test": local_benchmark(tmp_path)}).save_to_disk(tmp_path / "saved")
    reports = []
    for folder in (tmp_path / "parquet", tmp_path / "saved"):
        done = fusar_eval(fusar, "--benchmark", folder, *MAPPING, "--limit", 4, "--max-new-tokens", 2,
                          "--output", tmp_path / folder.name / "out")
        assert done.returncode == 0, done.stderr[-2000:]
        reports.append(json.loads((tmp_path / folder.name / "out" / "results.json").read_text()))
        assert reports[-1]["config"]["benchmark"]["repo"] == str(folder)
    assert all(len(report["predictions"]) == 4 for report in reports)
    assert all(p["reference"] == str(int(p["question"].split()[-1][:-1]) % 4) for r in reports for p in r["predictions"])
    done = fusar_eval(fusar, "--benchmark", tmp_path / "saved", *MAPPING, "--revision", "main", "--output", tmp_path / "x")
    assert done.returncode == 2 and "--revision main: not used here (" in done.stderr
    done = fusar_eval(fusar, "--dataset", tmp_path / "parquet", "--output", tmp_path / "x")
    error = done.stderr.strip().splitlines()[-1]  # after datasets' own "Generating test split" bars
    assert done.returncode == 2 and error.startswith("fusar-eval: error: "), done.stderr
    assert f"--dataset {tmp_path / 'parquet'}: not a triplet dataset (no column id, task, image, messages, " in error
    assert f"read with --benchmark {tmp_path / 'parquet'} --image-column" in done.stderr
    assert not (tmp_path / "x").exists()
    done = fusar_eval(fusar, "--benchmark", fusar, *MAPPING, "--output", tmp_path / "x")  # a model folder: its JSON
    assert done.returncode == 2 and f"--benchmark {fusar}: not a dataset split that can be read here (" in done.stderr


def test_preset_flags_that_no_task_would_use_are_refused(capsys, tmp_path):
    import evaluate_bench

    for argv, message in (
            (["--benchmark", "sarlang-1m/caption", "--images", str(tmp_path)],
             "--images: not used here (every image of --benchmark sarlang-1m/caption is read from the Hub)"),
            (["--benchmark", "earthdial", "--all-question-types"],
             "--all-question-types: not used here (--benchmark earthdial leaves no question type out)")):
        assert evaluate_bench.main([str(tmp_path), *argv, "--output", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
