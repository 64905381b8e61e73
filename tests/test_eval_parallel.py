"""fusar-eval on several processes (torchrun, accelerate launch; gloo on this machine's CPUs): each process answers
its share of the batches, the main process writes one report equal to a one-process run's, and a killed run
resumes from the processes' caches."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import build

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")  # every run the same arithmetic: greedy answers then agree exactly


def torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "evaluate_bench"]


def accelerate(port: int) -> list[str]:
    return [shutil.which("accelerate"), "launch", "--config_file", str(ROOT / "configs" / "accelerate" / "cpu_ddp.yaml"),
            "--main_process_port", str(port), "--no_python", "fusar-eval"]


@pytest.fixture(scope="module")
def evaluation(tokenizers, tmp_path_factory):
    """A tiny FUSAR-GPT, a simulated triplet dataset, and the options of one evaluation of it."""
    from dataset_scripts.simulate import simulate

    folder = tmp_path_factory.mktemp("parallel")
    model, processor = build(tokenizers, "qwen2_5_vl", modulate=True)
    model.save_pretrained(folder / "fusar")
    processor.save_pretrained(folder / "fusar")
    data = simulate(folder / "data", scenes=8)
    return folder, [str(folder / "fusar"), "--dataset", str(data), "--split", "train", "--limit", "12",
                    "--batch-size", "2", "--max-new-tokens", "4"]


def run(launcher: list[str], options: list[str], output: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, *options, "--output", str(output)], capture_output=True, text=True,
                          env=ONE_THREAD, cwd=ROOT, timeout=600, **kwargs)


def report(output: Path) -> dict:
    return json.loads((output / "results.json").read_text())


@pytest.mark.parametrize("launcher", [torchrun(29541), accelerate(29542)], ids=["torchrun", "accelerate"])
def test_two_processes_write_the_report_of_one(evaluation, launcher, tmp_path):
    folder, options = evaluation
    alone = folder / "alone"
    if not alone.exists():
        done = run([shutil.which("fusar-eval")], options, alone)
        assert done.returncode == 0, done.stderr[-3000:]
    done = run(launcher, options, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert report(tmp_path / "out") == report(alone)  # predictions, metrics, config: all of it
    assert (tmp_path / "out" / "results.md").read_text() == (alone / "results.md").read_text()
    caches = sorted((tmp_path / "out" / "predictions").iterdir())
    assert [cache.name for cache in caches] == ["anchors.jsonl", "no_anchors.jsonl", "shuffled_anchors.jsonl"]
    assert all(len(cache.read_text().splitlines()) == 1 + 12 for cache in caches)  # the parts folded into one


def answers_in(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()[1:]] if path.exists() else []


def test_a_killed_run_resumes_from_each_processes_cache(evaluation, tmp_path):
    """Stopped while both processes are answering, each process's part holds its own batches (none answered
    twice); the run started again (with another number of processes too) asks only the rest, and ends where an
    uninterrupted run ends."""
    folder, options = evaluation
    options = [*options[:-4], "--batch-size", "1", "--max-new-tokens", "16"]
    output = tmp_path / "out"
    process = subprocess.Popen([*torchrun(29543), *options, "--output", str(output)], env=ONE_THREAD, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    variants = [output / "predictions" / variant for variant in ("anchors", "no_anchors", "shuffled_anchors")]
    deadline, answering = time.time() + 300, []
    while not answering:  # a variant whose two parts both hold answers
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be stopped"
        answering = [v for v in variants if all(len(answers_in(v.with_name(f"{v.name}.part{r}.jsonl"))) >= 2
                                                for r in (0, 1))]
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    parts = [answering[0].with_name(f"{answering[0].name}.part{rank}.jsonl") for rank in (0, 1)]
    first, second = (answers_in(part) for part in parts)
    assert first and second and not set(first) & set(second)
    done = run([shutil.which("fusar-eval")], options, output)  # one process takes over the two processes' work
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(part.exists() for part in parts)
    whole = run([shutil.which("fusar-eval")], options, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert report(output)["predictions"] == report(tmp_path / "whole")["predictions"]


def test_an_answer_edited_in_the_cache_is_asked_anew(evaluation, tmp_path):
    folder, options = evaluation
    done = run([shutil.which("fusar-eval")], [*options[:-2], "--max-new-tokens", "2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    cache = tmp_path / "predictions" / "anchors.jsonl"
    header, first, *rest = cache.read_text().splitlines()
    edited = json.loads(first) | {"prediction": "a perfect answer"}
    cache.write_text("\n".join([header, json.dumps(edited), *rest]) + "\n")
    done = run([shutil.which("fusar-eval")], [*options[:-2], "--max-new-tokens", "2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{cache}: 1 cached answers are not as this run wrote them (cut short or edited): asked anew" in done.stderr
    assert "a perfect answer" not in json.dumps(report(tmp_path)["predictions"])


def test_a_process_that_fails_stops_the_others_instead_of_leaving_them_waiting(evaluation, tmp_path):
    """A truncated image in the second process's share: that process stops with its error, and the first, instead of
    waiting for it at the gathering, stops saying another process did."""
    import datasets

    from conftest import random_image

    folder, options = evaluation
    images = []
    for n in range(4):
        buffer = __import__("io").BytesIO()
        random_image(n, 56, 56).save(buffer, "PNG")
        images.append({"bytes": buffer.getvalue()[: 200 if n == 3 else None], "path": None})
    datasets.Dataset.from_dict({"image": images, "question": ["Any ships?"] * 4, "answer": ["no"] * 4}).cast_column(
        "image", datasets.Image()).save_to_disk(tmp_path / "bench")
    done = run(torchrun(29545), [options[0], "--benchmark", str(tmp_path / "bench"), "--question-column", "question",
                                 "--batch-size", "1", "--max-new-tokens", "2"], tmp_path / "out")
    assert done.returncode != 0
    assert "fusar-eval: error: another process stopped (" in done.stderr, done.stderr[-3000:]
    assert len(answers_in(tmp_path / "out" / "predictions" / "no_anchors.part0.jsonl")) == 2  # kept for a rerun
