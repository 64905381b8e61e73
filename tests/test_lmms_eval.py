"""`lmms-eval --model fusar_gpt`: lmms-eval's own command line, with FUSAR-GPT registered through the entry point,
runs a small task served from the local Hub; each document's anchors reach the model, documents without any get the
base model's answer. A multiple-choice task's requests go through `loglikelihood` (in process: lmms-eval 0.7.3's
evaluator turns every log-likelihood result into a string, for every model, so its command line cannot run one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import datasets
import pytest
from huggingface_hub import HfApi

from conftest import build, random_anchors, random_image
from evaluation.generation import generate_answers
from processing.anchors import as_anchor_set
from test_serve import release, scene  # noqa: F401  (an AlphaEarth release replica and a dated GeoTIFF over it)

pytest.importorskip("lmms_eval", reason="lmms-eval is installed by the README's test command (with --no-deps)")
REPO = "sar-lab/lmms-sar-mini"
TASKS = """\
task: {name}
dataset_path: sar-lab/lmms-sar-mini
test_split: test
doc_to_visual: image
doc_to_text: "{{{{question}}}}"
"""
GENERATE = TASKS.format(name="sar_vqa_mini") + """\
output_type: generate_until
doc_to_target: answer
generation_kwargs: {max_new_tokens: 6, temperature: 0, do_sample: false}
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}
"""
CHOICE = TASKS.format(name="sar_yes_no_mini") + """\
output_type: multiple_choice
doc_to_choice: ["yes", "no"]
doc_to_target: "{{answer}}"
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
"""


@pytest.fixture
def task_on_the_hub(local_hub, tmp_path):
    """Six documents in the triplet dataset's anchor columns: the even ones carry anchors, the odd ones none."""
    rows = []
    for n in range(6):
        anchors = random_anchors(n, 16) if n % 2 == 0 else None
        rows.append({"image": random_image(n, 56, 56), "question": f"Is there a ship in scene {n}?",
                     "answer": "yes" if n % 3 else "no", "year": 2021,
                     "anchor_values": anchors["values"].tolist() if anchors else [],
                     "anchor_positions": anchors["positions"].tolist() if anchors else [],
                     "anchor_mask": [[True]] * 16 if anchors else [], "anchor_years": [2021] if anchors else []})
    folder = tmp_path / "repo" / "data"
    folder.mkdir(parents=True)
    datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_parquet(folder / "test-00000.parquet")
    HfApi().create_repo(REPO, repo_type="dataset")
    HfApi().upload_folder(folder_path=str(tmp_path / "repo"), repo_id=REPO, repo_type="dataset")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "sar_vqa_mini.yaml").write_text(GENERATE)
    (tasks / "sar_yes_no_mini.yaml").write_text(CHOICE)
    return rows, tasks


def samples(folder, task: str) -> list[dict]:
    [path] = folder.rglob(f"*samples_{task}.jsonl")
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])


ACCELERATE = [shutil.which("accelerate") or "accelerate", "launch", "--config_file",
              str(Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu_ddp.yaml"),
              "--main_process_port", "29544", "-m", "lmms_eval"]


@pytest.mark.parametrize("launcher", [["lmms-eval"], ACCELERATE], ids=["one-process", "accelerate-2-processes"])
def test_lmms_eval_runs_fusar_gpt_with_each_documents_anchors(task_on_the_hub, tokenizers, tmp_path, launcher):
    """Alone, or as two processes that each answer their share of the documents (each document exactly once)."""
    rows, tasks = task_on_the_hub
    model, processor = build(tokenizers, "qwen2_5_vl", modulate=True)
    model.save_pretrained(tmp_path / "fusar")
    processor.save_pretrained(tmp_path / "fusar")
    done = subprocess.run(
        [*launcher, "--model", "fusar_gpt", "--model_args", f"pretrained={tmp_path / 'fusar'}",
         "--tasks", "sar_vqa_mini", "--include_path", str(tasks), "--batch_size", "4",
         "--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert [s["doc_id"] for s in samples(tmp_path / "out", "sar_vqa_mini")] == list(range(6))
    loads = done.stderr.count("Loading weights: 100%")  # transformers' bar, once in each process
    assert loads == (2 if launcher == ACCELERATE else 1), done.stderr[-3000:]
    answers = [s["filtered_resps"] for s in samples(tmp_path / "out", "sar_vqa_mini")]
    anchors = [as_anchor_set({"values": r["anchor_values"], "positions": r["anchor_positions"],
                              "mask": r["anchor_mask"], "years": r["anchor_years"]}, anchor_dim=64)
               if r["anchor_values"] else as_anchor_set(None, anchor_dim=64) for r in rows]
    inputs = [{"image": r["image"], "year": r["year"], "task": "vqa",
               "messages": [{"role": "user", "content": r["question"]}]} for r in rows]
    with_anchors = generate_answers(model, processor, inputs, max_new_tokens=6, progress=False, anchors=anchors)
    without = generate_answers(model, processor, inputs, max_new_tokens=6, use_anchors=False, progress=False)
    assert answers == with_anchors
    assert answers[1::2] == without[1::2]  # no anchors: the base model's answers
    assert answers[::2] != without[::2], "the anchors changed nothing: the test could not tell them apart"
    results = json.loads(next((tmp_path / "out").rglob("*results.json")).read_text())["results"]
    assert results["sar_vqa_mini"]["exact_match,none"] == sum(a == r["answer"] for a, r in zip(answers, rows)) / 6


def test_a_multiple_choice_task_is_scored_by_log_likelihood_with_the_anchors(task_on_the_hub, tokenizers, tmp_path):
    from lmms_eval.tasks import TaskManager, get_task_dict

    from evaluation.lmms_model import FusarGPT

    rows, tasks = task_on_the_hub
    model, processor = build(tokenizers, "qwen2_5_vl", modulate=True)
    model.save_pretrained(tmp_path / "fusar")
    processor.save_pretrained(tmp_path / "fusar")
    task = get_task_dict(["sar_yes_no_mini"], TaskManager(include_path=str(tasks)))["sar_yes_no_mini"]
    task.build_all_requests(rank=0, world_size=1)
    harness = FusarGPT(pretrained=str(tmp_path / "fusar"), batch_size=2)
    harness.task_dict["sar_yes_no_mini"] = task.dataset
    requests = sorted(task.instances, key=lambda r: (r.doc_id, r.idx))
    results = harness.loglikelihood(requests)
    assert len(results) == 12  # two choices per document
    # The judge: transformers' own loss of the choice's tokens, with the document's anchors.
    context, choice, _, doc_id, _, _ = requests[0].args
    prompt = harness._prompt(context)
    inputs = harness._inputs([prompt + choice], [harness._document(*requests[0].args[2:])])
    labels = inputs["input_ids"].clone()
    labels[:, : harness._inputs([prompt], [harness._document(*requests[0].args[2:])])["input_ids"].shape[1]] = -100
    loss = harness.model(**inputs, labels=labels).loss
    assert results[0][0] == pytest.approx(-float(loss) * int((labels != -100).sum()), rel=1e-4)
    plain = harness.model(**{k: v for k, v in inputs.items() if not k.startswith("anchor")}, labels=labels).loss
    assert float(plain) != pytest.approx(float(loss), rel=1e-4), "doc 0 carries anchors: they must count"
    for doc_id in range(6):
        scores = task.process_results(task.dataset["test"][doc_id], results[2 * doc_id : 2 * doc_id + 2])
        assert scores["acc"] in (0, 1, 0.0, 1.0)


def test_a_georeferenced_geotiff_gets_the_anchors_found_under_it(release, scene, tokenizers, tmp_path):  # noqa: F811
    from dataset_scripts.alphaearth import sample_anchors
    from dataset_scripts.alphaearth_cloud import open_source
    from dataset_scripts.sar_reader import read_sar_scene
    from evaluation.lmms_model import FusarGPT

    model, processor = build(tokenizers, "qwen2_5_vl")
    model.save_pretrained(tmp_path / "fusar")
    processor.save_pretrained(tmp_path / "fusar")
    documents = {"geo": {"test": [{"image": str(scene)}, {"image": random_image(0, 56, 56)}]}}
    with_source = FusarGPT(pretrained=str(tmp_path / "fusar"), alphaearth=str(release))
    with_source.task_dict = documents
    image, anchors, year = with_source._document(lambda doc: [doc["image"]], 0, "geo", "test")
    footprint = read_sar_scene(scene).footprint
    expected = sample_anchors(open_source(str(release)), footprint, 2021, 8)
    assert year == 2021 and anchors.mask.any() and anchors.values == pytest.approx(expected.values)
    assert not with_source._document(lambda doc: [doc["image"]], 1, "geo", "test")[1].mask.any()  # no georeference
    without = FusarGPT(pretrained=str(tmp_path / "fusar"))
    without.task_dict = documents
    assert not without._document(lambda doc: [doc["image"]], 0, "geo", "test")[1].mask.any()
    with pytest.raises(ValueError, match="fusar_gpt has no argument max_tokens; it takes pretrained"):
        FusarGPT(pretrained=str(tmp_path / "fusar"), max_tokens=3)
