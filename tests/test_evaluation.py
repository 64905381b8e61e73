"""fusar-eval's evaluation (evaluation/): every metric on hand-computed cases, the inputs, resumption, ablations, end to end."""

import json

import evaluate
import numpy as np
import pytest

import train_sft
from evaluation import generation
from evaluation.generation import variant_anchors
from evaluation.run import evaluate_checkpoint
from evaluation.scoring import METRICS_DIR, check_metrics
from evaluation.sources import load_rows


def metric(name):
    return evaluate.load(str(METRICS_DIR / name))


def box(x1, y1, x2, y2, label="ship"):
    return {"bbox_2d": [x1, y1, x2, y2], "label": label}


def test_counting():
    result = metric("sar_counting").compute(predictions=["3", "There are 5 ships.", "many", "", "0"],
                                            references=["3", "4", "2", "1", "0"])
    assert result == {"accuracy": 2 / 5, "mae": (0 + 1 + 0) / 3, "unparsable": 2, "examples": 5}


def test_grid():
    result = metric("sar_grid").compute(
        predictions=["top-left", "Center and top left", "bottom-right", "no idea", "middle right"],
        references=["top-left", "center", "top-left", "center", "middle-right"])
    assert result["acc@100"] == 2 / 5  # rows 1 and 5
    assert result["acc@50"] == 3 / 5  # row 2: {center, top-left} vs {center} has Jaccard 0.5
    assert result["top1"] == 3 / 5 and result["unparsable"] == 1


@pytest.mark.parametrize("written, cell", [
    ("middle center", "center"), ("Middle-centre", "center"), ("centre", "center"), ("middle", "center"),
    ("center left", "middle-left"), ("top middle", "top-center"), ("Bottom centre.", "bottom-center"),
])
def test_every_way_of_naming_a_cell_is_that_cell(written, cell):
    result = metric("sar_grid").compute(predictions=[written], references=[cell])
    assert result["acc@100"] == 1 and result["unparsable"] == 0


def test_classification_per_class():
    result = metric("sar_classification").compute(predictions=["Ship.", "aircraft", "the aircraft", ""],
                                                  references=["ship", "ship", "aircraft", "aircraft"])
    assert result["accuracy"] == 0.5 and result["per_class"] == {"ship": 0.5, "aircraft": 0.5}
    assert result["unparsable"] == 1
    outside = metric("sar_classification").compute(predictions=["ship", "submarine", "forest"],
                                                   references=["ship", "ship", "aircraft"])
    assert outside["unparsable"] == 2  # not one of the classes: unparsable, not merely wrong
    given = metric("sar_classification").compute(predictions=["forest"], references=["ship"], classes=["ship", "forest"])
    assert given["unparsable"] == 0 and given["accuracy"] == 0


def test_detection_matching_and_edge_cases():
    target = json.dumps([box(0, 0, 10, 10), box(20, 20, 30, 30), box(50, 50, 60, 60, "aircraft")])
    prediction = json.dumps([box(0, 0, 10, 10), box(0, 0, 10, 10),  # a duplicate: only one may match
                             box(22, 22, 32, 32),  # IoU 64/136 = 0.47: a hit at 0.25, a miss at 0.5
                             box(50, 50, 60, 60, "ship")])  # right place, wrong class
    result = metric("sar_detection").compute(
        predictions=[prediction, "I see two ships", "", "[]", f"Here: {json.dumps([box(-5, -5, 1000, 1000)])}"],
        references=[target, target, json.dumps([box(1, 1, 5, 5)]), "[]", json.dumps([box(0, 0, 8, 8)])])
    # predictions: 4 + 0 + 0 + 0 + 1 = 5; targets: 3 + 3 + 1 + 0 + 1 = 8
    assert result["precision@0.25"] == 2 / 5 and result["recall@0.25"] == 2 / 8
    assert result["precision@0.5"] == 1 / 5 and result["recall@0.5"] == 1 / 8
    assert result["f1@0.5"] == pytest.approx(2 * (1 / 5) * (1 / 8) / (1 / 5 + 1 / 8))
    assert result["unparsable"] == 2  # the junk text and the empty answer; "[]" parses as no detections


def test_detection_with_no_targets_and_no_predictions():
    result = metric("sar_detection").compute(predictions=["[]"], references=["[]"])
    assert result["f1@0.5"] == 0.0 and result["precision@0.5"] == 0.0 and result["unparsable"] == 0


def test_detection_answers_as_the_authors_write_them():
    """A code fence, None / null for no targets, boxes beyond the 504 px image (x = -35, x2 = 529 in their data)."""
    fenced = "```json\n" + json.dumps([box(-35, 10, 60, 80)]) + "\n```"
    result = metric("sar_detection").compute(
        predictions=[fenced, "None", "null", json.dumps([box(470, 0, 529, 40)])],
        references=[json.dumps([box(-35, 10, 60, 80)]), "None", "None", "```json\n" + json.dumps([box(470, 0, 529, 40)]) + "\n```"])
    assert result["unparsable"] == 0
    assert result["precision@0.5"] == result["recall@0.5"] == 1.0
    # The dataset tools' parser reads answers the same way; an unclosed fence of blanks is just unparsable.
    from dataset_scripts.tasks import parse_detection_answer

    for answer in (fenced, "None", "```JSON\nnull\n```", "```" + " " * 4000 + "x" + " " * 4000 + "``"):
        assert (parse_detection_answer(answer) is None) == (metric("sar_detection").compute(
            predictions=[answer], references=["None"])["unparsable"] == 1)


def test_captions_and_exact_match():
    perfect = metric("sar_caption").compute(predictions=["A SAR scene of water, with 3 ships."] * 2,
                                            references=["a sar scene of water with 3 ships"] * 2)
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["rouge_l"] == pytest.approx(1.0)
    poor = metric("sar_caption").compute(predictions=["", "forest"], references=["water with ships", "urban area"])
    assert poor["bleu1"] < 0.01 and poor["cider"] == 0 and poor["unparsable"] == 1
    exact = metric("sar_exact_match").compute(predictions=["The Cropland.", "", "grass land"],
                                              references=["cropland", "forest", "grassland"])
    assert exact == {"accuracy": 1 / 3, "unparsable": 1, "examples": 3}


def rows(count):
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        values = rng.normal(size=(2, 1, 64))
        out.append({"id": f"r{i}", "anchor_values": values.tolist(), "anchor_positions": [[0.2, 0.3], [0.7, 0.8]],
                    "anchor_mask": [[True], [True]], "anchor_years": [2020], "year": 2020})
    return out


def test_ablations_change_the_models_inputs():
    examples = rows(5)
    given = variant_anchors(examples, "anchors")
    shuffled = variant_anchors(examples, "shuffled anchors")
    assert variant_anchors(examples, "no anchors") is None
    assert all(np.allclose(a.values[:, 0], np.asarray(r["anchor_values"])[:, 0]) for a, r in zip(given, examples))
    assert all(not np.array_equal(s.values, g.values) for s, g in zip(shuffled, given))  # nobody keeps its own
    assert sorted(s.values.sum() for s in shuffled) == pytest.approx(sorted(g.values.sum() for g in given))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from dataset_scripts.simulate import simulate
    from test_training import FAST, parse

    folder = tmp_path_factory.mktemp("eval")
    data = simulate(folder / "data", scenes=16)
    output = train_sft.main(*parse("--dataset_name", str(data), "--output_dir", str(folder / "model"), *FAST))
    return data, output


def test_end_to_end_with_resumption(trained, tmp_path, monkeypatch):
    data, checkpoint = trained
    report = evaluate_checkpoint(checkpoint, dataset=str(data), split="train", output=tmp_path,
                                                stage1=str(checkpoint / "stage1-model"), limit=12, max_new_tokens=8,
                                                update_card=True)
    assert set(report["metrics"]) == {"anchors", "no anchors", "shuffled anchors", "stage 1 only"}
    assert len(report["predictions"]) == 12 and (tmp_path / "tasks.png").is_file()
    assert "| task (metric) |" in (tmp_path / "results.md").read_text()
    card = (checkpoint / "README.md").read_text()
    assert "model-index" in card and "Stage 1 (knowledge injection" in card  # results added, recipe kept
    from huggingface_hub import ModelCard

    results = ModelCard.load(checkpoint / "README.md").data.to_dict()["model-index"][0]["results"]
    tasks = sorted(report["metrics"]["anchors"])
    assert [r["task"]["name"] for r in results] == [f"SAR {task}" for task in tasks]  # one result per task
    assert all({m["name"].split()[0] for m in r["metrics"]} == {task} for r, task in zip(results, tasks))
    # Resumption: drop the last half of one cache, as if stopped; only those rows are generated again.
    cache = tmp_path / "predictions" / "anchors.jsonl"
    kept = {p["id"] for p in report["predictions"][:6]}
    header, *lines = cache.read_text().splitlines()
    kept_lines = [line for line in lines if json.loads(line)["id"] in kept]
    cache.write_text("\n".join([header, *kept_lines]) + '\n{"id": "cut sho')  # and a line the stop cut short
    generated = []
    real = generation.generate_answers
    monkeypatch.setattr(generation, "generate_answers", lambda m, p, batch, *a, **k: generated.extend(batch) or real(m, p, batch, *a, **k))
    again = evaluate_checkpoint(checkpoint, dataset=str(data), split="train", output=tmp_path, limit=12,
                                               max_new_tokens=8, update_card=False)
    assert sorted(row["id"] for row in generated) == sorted(p["id"] for p in report["predictions"][6:])
    assert [p["anchors"] for p in again["predictions"]] == [p["anchors"] for p in report["predictions"]]


def test_the_authors_manifest_as_input(trained, tmp_path):
    from test_dataset import write_manifest

    _, checkpoint = trained
    write_manifest(tmp_path)
    report = evaluate_checkpoint(checkpoint, manifest=str(tmp_path / "manifest.jsonl"),
                                                output=tmp_path / "out", max_new_tokens=4, update_card=False,
                                                variants=("anchors",))
    assert {p["task"] for p in report["predictions"]} == {"counting", "localization", "detection"}


def test_a_cache_from_another_setting_is_not_reused(trained, tmp_path):
    data, checkpoint = trained
    options = dict(dataset=str(data), split="train", output=tmp_path, limit=4, update_card=False, variants=("anchors",))
    evaluate_checkpoint(checkpoint, max_new_tokens=2, **options)
    cache = tmp_path / "predictions" / "anchors.jsonl"
    first = cache.read_text()
    evaluate_checkpoint(checkpoint, max_new_tokens=5, **options)
    assert '"max_new_tokens": 5' in cache.read_text().splitlines()[0] and cache.read_text() != first


def test_shuffled_anchors_never_give_a_row_its_own_scenes():
    examples = rows(6)
    for i, row in enumerate(examples):
        row["scene_id"] = f"s{i // 2}"  # two rows per scene, as in real datasets
    own = variant_anchors(examples, "anchors")
    shuffled = variant_anchors(examples, "shuffled anchors")
    for i, row in enumerate(examples):
        same_scene = [j for j, other in enumerate(examples) if other["scene_id"] == row["scene_id"]]
        assert all(not np.array_equal(shuffled[i].values, own[j].values) for j in same_scene)


def test_malformed_boxes_are_unparsable_not_a_crash():
    result = metric("sar_detection").compute(
        predictions=['[{"bbox_2d": [1, 2, 3], "label": "ship"}]', '[{"bbox_2d": [0, 0, 9, 9], "label": "ship"}] and [x]'],
        references=[json.dumps([box(0, 0, 9, 9)])] * 2)
    assert result["unparsable"] == 1 and result["recall@0.5"] == 0.5


def test_limit_draws_rows_with_a_seed_and_a_missing_split_names_the_others(trained):
    data = str(trained[0])
    ids = lambda rows: [row["id"] for row in rows]  # noqa: E731
    drawn = load_rows(data, "train", None, 8, seed=0)
    assert ids(drawn) == ids(load_rows(data, "train", None, 8, seed=0))  # repeatable
    assert ids(drawn) != ids(load_rows(data, "train", None, 8, seed=1))
    assert ids(drawn) != ids(load_rows(data, "train", None, None)[:8])  # not simply the first rows
    assert len({row["task"] for row in drawn}) > 1
    with pytest.raises(ValueError, match="has no 'holdout' split; it has train, validation, test"):
        load_rows(data, "holdout", None, None)


def test_a_task_without_a_metric_is_refused_before_anything_is_generated():
    rows = [{"task": "counting"}, {"task": "segmentation"}, {"task": "sarlang-1m/vqa", "metric": "answer_contained"}]
    with pytest.raises(ValueError, match="data/x \\(test\\): no metric for the task 'segmentation'; the metrics cover "
                                         "caption, classification"):
        check_metrics(rows, "data/x (test)")
    check_metrics(rows[::2], "data/x (test)")
