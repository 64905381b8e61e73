"""fusar-eval --benchmark PRESET: SARLANG-1M, GeoChat-Bench and EarthDial, read from replicas of their layouts on the
local Hub, scored by their authors' rules (each checked here against the rule computed by hand)."""

from __future__ import annotations

import io
import json
import zipfile

import evaluate
import pytest
from huggingface_hub import HfApi

import benchmark_replicas
from evaluation.scoring import METRICS_DIR
from test_benchmarks import checkpoints, fusar_eval  # noqa: F401  (the module's tiny FUSAR-GPT and its base)


def metric(name: str, configuration: str | None = None):
    return evaluate.load(str(METRICS_DIR / name), configuration)


def test_each_preset_metric_is_its_authors_rule_computed_by_hand():
    # SARLANG-1M VQA: the lower-cased reference inside the lower-cased prediction ("1" is in "10").
    scores = metric("answer_contained").compute(predictions=["There are 10 ships", "No", "YES."],
                                                references=["1", "yes", "Yes"])
    assert scores["accuracy"] == pytest.approx(2 / 3)
    # GeoChat: spaces and dots removed, lower case, equal.
    scores = metric("compact_match").compute(predictions=["Dense Residential.", "farm land", "Harbor", ""],
                                             references=["denseresidential", "farmland", "beach", "harbor"])
    assert (scores["accuracy"], scores["unparsable"]) == (0.5, 1)
    # SARLANG-1M captions: pycocoevalcap on the raw captions (case and punctuation kept), as the authors' script.
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    predictions, references = ["A ship, near the Pier.", "two ships"], ["a ship near the pier.", "Two ships moored"]
    scores = metric("sar_caption", "raw").compute(predictions=predictions, references=references)
    truths, answers = {i: [r] for i, r in enumerate(references)}, {i: [p] for i, p in enumerate(predictions)}
    assert scores["bleu1"] == pytest.approx(Bleu(4).compute_score(truths, answers, verbose=0)[0][0])
    assert scores["cider"] == pytest.approx(Cider().compute_score(truths, answers)[0])
    assert scores["bleu1"] < metric("sar_caption").compute(predictions=predictions, references=references)["bleu1"]
    # Region captions: ROUGE-1 / ROUGE-L F. "a ship" vs "a small ship": P 2/2, R 2/3, F 0.8; nothing vs "x": 0.
    scores = metric("region_caption").compute(predictions=["a ship", ""], references=["a small ship", "x"])
    assert scores["rouge1"] == pytest.approx(0.4) and scores["rouge_l"] == pytest.approx(0.4)
    # EarthDial boxes (0-100, angle in degrees), IoU >= 0.5, not one-to-one: 10x10 in 10x20: IoU 0.5, a hit; a square
    # turned 90 degrees is itself: a hit; a 20x10 box turned 90 degrees overlaps itself unturned by 100 / 300: a miss;
    # two predictions of one ship: two hits; a 400-digit coordinate or a 4-number list: counted, never a hit; a
    # list with a decimal point is not read; no list at all: unparsable.
    scores = metric("rotated_boxes").compute(
        predictions=["[[0, 0, 10, 10, 0]]", "ship at [[0,0,10,10,90]]", "[[0, 0, 20, 10, 90]]",
                     "[[0,0,10,10,0]][[0,0,10,10,0]]", "[[1" + "0" * 400 + ", 0, 1, 1, 0]][[5, 5, 9, 9]]",
                     "[[0.5, 0, 10, 10, 0]]", "no ships"],
        references=["[[0, 0, 10, 20, 0]]", "[[0, 0, 10, 10, 0]]", "[[0, 0, 20, 10, 0]]", "[[0, 0, 10, 10, 0]]",
                    "[[5, 5, 9, 9, 0]]", "[[0, 0, 10, 10, 0]]", "[[5, 5, 9, 9, 0]]"])
    assert scores == {"precision@0.5": pytest.approx(4 / 7), "unparsable": 2, "examples": 7}
    # The angle as EarthDial turns it: the centred corners, as row vectors, times the rotation matrix of +angle.
    import numpy as np
    from shapely.geometry import Polygon

    from fusar_metrics.rotated_boxes.rotated_boxes import polygon

    angle = np.deg2rad(20)
    corners = np.array([[-20, -5], [20, -5], [20, 5], [-20, 5]]) @ np.array([[np.cos(angle), -np.sin(angle)],
                                                                             [np.sin(angle), np.cos(angle)]])
    theirs = Polygon(corners + [20, 5])
    assert polygon([0, 0, 40, 10, 20]).symmetric_difference(theirs).area == pytest.approx(0, abs=1e-9)
    assert polygon([0, 0, 40, 10, 340]).symmetric_difference(theirs).area > 100

def benchmark_replicas_note() -> str:
    from evaluation.presets import PRESETS

    return PRESETS["sarlang-1m"][-1].without


def results(folder) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_sarlang_is_read_in_ranges_and_scored_with_the_authors_rules(checkpoints, local_hub, tmp_path):  # noqa: F811
    fusar, base = checkpoints
    commit = benchmark_replicas.sarlang(tmp_path / "sarlang")
    size = sum(p.stat().st_size for p in (tmp_path / "sarlang").iterdir())
    sent = local_hub.sent
    done = fusar_eval(fusar, "--benchmark", "sarlang-1m", "--limit", 2, "--base", base, "--max-new-tokens", 4,
                      "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr[-2000:]
    assert 0 < local_hub.sent - sent < size / 2, "a sample read the zips' directories and its members, not the zips"
    report = results(tmp_path / "out")
    assert report["config"]["benchmark"] | {"columns": 0} == {
        "name": "sarlang-1m", "repo": "YiminJimmy/SARLANG-1M", "revision": commit, "license": None, "images": None,
        "columns": 0, "notes": [benchmark_replicas_note()]}
    rows = report["predictions"]
    assert sorted(p["task"] for p in rows) == ["sarlang-1m/caption"] * 2 + ["sarlang-1m/caption_concise"] * 2 + \
        ["sarlang-1m/vqa"] * 2
    assert all(p["reference"].startswith("A SAR image of harbour") for p in rows if p["task"].endswith("caption"))
    assert all(p["reference"].startswith("A harbour with") for p in rows if p["task"].endswith("concise"))
    vqa = [p for p in rows if p["task"] == "sarlang-1m/vqa"]
    by_hand = sum(p["reference"].lower() in p["no anchors"].lower() for p in vqa) / len(vqa)
    assert report["metrics"]["no anchors"]["sarlang-1m/vqa"]["accuracy"] == by_hand
    assert {"bleu4", "rouge_l", "cider"} <= set(report["metrics"]["base model"]["sarlang-1m/caption"])
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| sarlang-1m/caption (cider" in table and "| sarlang-1m/vqa (accuracy" in table
    assert f"sarlang-1m: YiminJimmy/SARLANG-1M at {commit[:12]}, licence not stated; 6 examples (2 drawn per task " \
           "file with seed 0), without anchors." in table
    assert "- sarlang-1m/vqa: SARVQA2 only, which is not the paper's VQA figure (SARVQA1 + SARVQA2)" in table
    # With SARDet-100K's images given, SARVQA1 is asked too: the task's row is over both, each has its own row.
    images = benchmark_replicas.sardet_images(tmp_path / "sardet")
    done = fusar_eval(fusar, "--benchmark", "sarlang-1m/vqa", "--images", images, "--limit", 2, "--max-new-tokens", 4,
                      "--output", tmp_path / "both")
    assert done.returncode == 0, done.stderr[-2000:]
    report = results(tmp_path / "both")
    metrics = report["metrics"]["no anchors"]
    assert [name for name in metrics] == ["sarlang-1m/vqa", "sarlang-1m/vqa: SARVQA1", "sarlang-1m/vqa: SARVQA2"]
    assert [metrics[name]["examples"] for name in metrics] == [4, 2, 2]
    assert "over SARVQA1 + SARVQA2, as the paper's VQA figure" in (tmp_path / "both" / "results.md").read_text()


def replace_text_zip(vqa_csv: str) -> None:
    """A new commit of the SARLANG replica whose Text.zip holds only this VQA CSV."""
    changed = io.BytesIO()
    with zipfile.ZipFile(changed, "w") as archive:
        archive.writestr("Text/VQA/test/SARVQA2_test.csv", vqa_csv)
    HfApi().upload_file(path_or_fileobj=changed.getvalue(), path_in_repo="Text.zip", repo_id="YiminJimmy/SARLANG-1M",
                        repo_type="dataset")


def test_a_layout_change_is_one_line_and_the_old_revision_still_reads(checkpoints, local_hub, tmp_path):  # noqa: F811
    fusar, _ = checkpoints
    commit = benchmark_replicas.sarlang(tmp_path / "sarlang", images=4)
    replace_text_zip("Image Name,Question,Reply\nFrance_Nice_0.png,Why?,No\n")
    done = fusar_eval(fusar, "--benchmark", "sarlang-1m/vqa", "--output", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Text.zip/Text/VQA/test/SARVQA2_test.csv, record 0: no field 'Answer' (the sarlang-1m/vqa preset's " \
           "layout); it has ['Image Name', 'Question', 'Reply']" in done.stderr
    done = fusar_eval(fusar, "--benchmark", "sarlang-1m/caption", "--output", tmp_path / "out")
    assert done.returncode == 2 and "has no Text.zip/Text/Caption/test/Caption_test.csv" in done.stderr
    replace_text_zip("Image Name,Question,Answer\nGone.png,Why?,No\n")
    done = fusar_eval(fusar, "--benchmark", "sarlang-1m/vqa", "--output", tmp_path / "out")
    assert done.returncode == 2 and "no image SARimages_preprocessed/SARimages/Gone.png, loose or in a zip" in done.stderr
    done = fusar_eval(fusar, "--benchmark", "sarlang-1m/vqa", "--revision", commit, "--limit", 1, "--max-new-tokens", 2,
                      "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr[-2000:]
    assert results(tmp_path / "out")["config"]["benchmark"]["revision"] == commit
    done = fusar_eval(fusar, "--benchmark", "sarlang-1m/grounding", "--output", tmp_path / "out")
    assert done.returncode == 2 and "sarlang-1m has no task 'grounding'; it has sarlang-1m/caption, " \
                                    "sarlang-1m/caption_concise, sarlang-1m/vqa" in done.stderr


def test_geochat_bench_reads_its_images_and_rsvqa_answers_from_a_local_folder(checkpoints, local_hub, tmp_path):  # noqa: F811
    fusar, _ = checkpoints
    images = tmp_path / "images"
    benchmark_replicas.geochat(tmp_path / "geochat", images)
    done = fusar_eval(fusar, "--benchmark", "geochat-bench", "--output", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "--benchmark geochat-bench/aid: its images are not on the Hub; get AID" in done.stderr
    done = fusar_eval(fusar, "--benchmark", "geochat-bench", "--images", images, "--limit", 3, "--max-new-tokens", 3,
                      "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr[-2000:]
    report = results(tmp_path / "out")
    tasks = {p["task"] for p in report["predictions"]}
    assert tasks == {f"geochat-bench/{t}" for t in ("aid", "ucmerced", "lrben", "hrben", "region_captioning")}
    scenes = {p["reference"] for p in report["predictions"] if p["task"] in ("geochat-bench/aid", "geochat-bench/ucmerced")}
    assert scenes <= {s.lower() for s in benchmark_replicas.SCENES}  # from the question id, not "...gt"
    assert {p["reference"] for p in report["predictions"] if p["task"] == "geochat-bench/lrben"} <= {"yes", "no"}
    assert set(report["metrics"]["no anchors"]["geochat-bench/region_captioning"]) >= {"rouge1", "rouge_l"}
    # The scene question is GeoChat-Bench's `text` as it is (it holds its instruction), asked once.
    assert {p["question"] for p in report["predictions"] if p["task"] == "geochat-bench/aid"} == {
        json.loads((tmp_path / "geochat" / "aid.jsonl").read_text().splitlines()[0])["text"]}
    # RSVQA: each question type in its own row; LRBEN without count, HRBEN without count and area, as GeoChat's table.
    for task, types in (("lrben", {"presence", "comp", "rural_urban"}), ("hrben", {"presence", "comp"})):
        asked = {group for p in report["predictions"] if p["task"] == f"geochat-bench/{task}" for group in p["groups"]}
        assert asked and asked <= types
        assert {name for name in report["metrics"]["no anchors"] if name.startswith(f"geochat-bench/{task}:")} == {
            f"geochat-bench/{task}: {kind}" for kind in asked}
    table = (tmp_path / "out" / "results.md").read_text()
    assert "- geochat-bench/lrben: presence, comparison (comp) and rural/urban questions, as GeoChat's table; count " \
           "questions are left out (--all-question-types asks them)." in table
    assert report["config"]["benchmark"]["license"] == "cc-by-4.0"
    HfApi().upload_file(path_or_fileobj=b'{"question_id": "Farmland/1"}\n[1, 2]\n', path_in_repo="aid.jsonl",
                        repo_id="MBZUAI/GeoChat-Bench", repo_type="dataset")
    done = fusar_eval(fusar, "--benchmark", "geochat-bench/aid", "--images", images, "--output", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "aid.jsonl, line 2: not a JSON object" in done.stderr
    assert results(tmp_path / "out") == report  # the earlier results are untouched
    (images / "AID" / "copy").mkdir()  # a second aid_0 elsewhere: which one is meant is not guessed
    (images / "AID" / "Images" / "aid_0.jpg").link_to(images / "AID" / "copy" / "aid_0.jpg")
    HfApi().upload_file(path_or_fileobj=(tmp_path / "geochat" / "UCmerced.jsonl").read_bytes().replace(b"UCmerced_", b"aid_"),
                        path_in_repo="aid.jsonl", repo_id="MBZUAI/GeoChat-Bench", repo_type="dataset")
    done = fusar_eval(fusar, "--benchmark", "geochat-bench/aid", "--images", images, "--output", tmp_path / "out")
    assert done.returncode == 2 and "aid_0.png is " in done.stderr and "give a folder holding one benchmark's" in done.stderr
    done = fusar_eval(fusar, "--benchmark", "geochat-bench/lrben", "--images", images, "--all-question-types",
                      "--max-new-tokens", 3, "--output", tmp_path / "all")
    assert done.returncode == 0, done.stderr[-2000:]
    every = results(tmp_path / "all")
    assert len(every["predictions"]) == 11  # every active question, count ones too
    assert "every question type asked (--all-question-types), count too: the row without a type is not the " \
           "authors' figure" in (tmp_path / "all" / "results.md").read_text()
    for kind in ("presence", "comp", "rural_urban", "count"):  # GeoChat's compact rule, by hand, per type
        asked = [p for p in every["predictions"] if p["groups"] == [kind]]
        by_hand = sum(p["no anchors"].replace(" ", "").lower().replace(".", "") == p["reference"] for p in asked)
        assert every["metrics"]["no anchors"][f"geochat-bench/lrben: {kind}"]["accuracy"] == by_hand / len(asked)
    answers = images / "LR_split_test_answers.json"
    listed = json.loads(answers.read_text())["answers"]
    answers.write_text(json.dumps({"answers": listed + [{**listed[3], "answer": "no"}]}))  # question 3 answered twice
    done = fusar_eval(fusar, "--benchmark", "geochat-bench/lrben", "--images", images, "--output", tmp_path / "out")
    assert done.returncode == 2 and f"{answers}: the question_id 3 is given twice; which answer is meant is not " \
                                    "guessed" in done.stderr
    answers.write_text(json.dumps({"answers": listed}))
    lrben = (tmp_path / "geochat" / "lrben.jsonl").read_text()
    HfApi().upload_file(path_or_fileobj=(lrben + lrben.splitlines(keepends=True)[2]).encode(), path_in_repo="lrben.jsonl",
                        repo_id="MBZUAI/GeoChat-Bench", repo_type="dataset")  # question 2 asked twice
    done = fusar_eval(fusar, "--benchmark", "geochat-bench/lrben", "--images", images, "--output", tmp_path / "out")
    assert done.returncode == 2 and "lrben.jsonl asks the question_id 2 twice" in done.stderr
    HfApi().upload_file(path_or_fileobj=lrben.encode(), path_in_repo="lrben.jsonl", repo_id="MBZUAI/GeoChat-Bench",
                        repo_type="dataset")
    unmatched = [{**a, "question_id": f"q{a['question_id']}"} for a in json.loads(answers.read_text())["answers"]]
    answers.write_text(json.dumps({"answers": unmatched}))  # ids that match none
    done = fusar_eval(fusar, "--benchmark", "geochat-bench/lrben", "--images", images, "--output", tmp_path / "out")
    assert done.returncode == 2 and "lrben.jsonl has no records with an answer in LR_split_test_answers.json" in done.stderr


def test_earthdial_sar_subsets_stream_from_save_to_disk_folders(checkpoints, local_hub, tmp_path):  # noqa: F811
    fusar, _ = checkpoints
    benchmark_replicas.earthdial(tmp_path / "earthdial")
    done = fusar_eval(fusar, "--benchmark", "earthdial", "--limit", 3, "--max-new-tokens", 3, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr[-2000:]
    report = results(tmp_path / "out")
    metrics = report["metrics"]["no anchors"]
    ships = [p for p in report["predictions"] if p["task"] == "earthdial/ship_dataset_v0"]
    order = ("small", "medium", "large", "single", "multiple")  # as EarthDial's eval.py prints them
    groups = [group for group in order if any(group in p["groups"] for p in ships)]
    assert list(metrics) == ["earthdial/ship_dataset_v0"] + [f"earthdial/ship_dataset_v0: {g}" for g in groups] + [
        "earthdial/ship_region_captioning", "earthdial/srsdd"]
    assert metrics["earthdial/ship_dataset_v0"]["examples"] == 3 and "precision@0.5" in metrics["earthdial/ship_dataset_v0"]
    assert all(p["reference"].startswith("[[") for p in ships)
    assert all(p["groups"][1] == ("multiple" if p["reference"].count("[[") > 1 else "single") for p in ships)
    # EarthDial's detection_test.py prompt: its tags, a newline, "Give me the location of"; no <image> tag.
    assert {p["question"] for p in ships} == {"[refer] [s1_vh_1]  \n Give me the location of <ref>all ships</ref>"}
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| earthdial/srsdd (rouge_l" in table and "| earthdial/ship_region_captioning (rouge_l" in table
    assert "the row without a group pools them, this project's own aggregate, which EarthDial does not print" in table


def test_earthdial_size_groups_are_the_precisions_its_eval_py_prints():
    """EarthDial's rs_detection/eval.py, transcribed: per group (the example's size group; one reference box or
    several), right predicted boxes over predicted boxes. The same answers through the preset's groups."""
    from evaluation.presets import PRESETS
    from evaluation.scoring import task_metrics
    from fusar_metrics.rotated_boxes.rotated_boxes import boxes, polygon

    task = PRESETS["earthdial"][0]
    examples = [("small", "[[0, 0, 10, 10, 0]]", "[[0, 0, 10, 10, 0]][[50, 50, 60, 60, 0]]"),
                ("small", "[[0, 0, 10, 10, 0]][[20, 20, 30, 30, 0]]", "[[0, 0, 10, 10, 0]]"),
                ("large", "[[0, 0, 40, 40, 0]][[60, 60, 90, 90, 0]]", "[[0, 0, 40, 40, 0]]"),
                ("large", "[[60, 60, 90, 90, 0]]", "[[60, 60, 90, 90, 0]][[0, 0, 10, 10, 0]]"),
                ("medium", "[[5, 5, 25, 25, 0]]", "no ships")]
    hits, predicted = {}, {}
    for size, reference, answer in examples:  # their loop
        truth = [polygon(b) for b in boxes(reference)]
        for group in (size, "single" if len(truth) == 1 else "multiple"):
            predicted[group] = predicted.get(group, 0) + len(boxes(answer) or [])
            for box in boxes(answer) or []:
                shape = polygon(box)
                hits[group] = hits.get(group, 0) + any(shape.intersection(t).area / shape.union(t).area >= 0.5
                                                       for t in truth)
    theirs = {group: hits.get(group, 0) / predicted[group] if predicted[group] else 0.0 for group in predicted}
    rows = [{"task": task.name, "metric": task.metric, "messages": [{}, {"content": reference}],
             "groups": task.groups({"size_group": size, "groundtruth": reference})}
            for size, reference, _ in examples]
    ours = task_metrics(rows, [answer for *_, answer in examples])
    assert {name.split(": ")[1]: value["precision@0.5"] for name, value in ours.items() if ": " in name} == theirs
    assert theirs == {"small": 2 / 3, "multiple": 1, "single": 1 / 2, "large": 2 / 3, "medium": 0}


def test_a_zip_member_too_large_is_refused_from_the_zips_directory(checkpoints, local_hub, tmp_path):  # noqa: F811
    """200 MiB of zeros deflates to 200 KB: the size the zip's directory states is checked before a byte of it is
    inflated (zipfile inflates no more than that size, whatever the stream holds)."""
    fusar, _ = checkpoints
    benchmark_replicas.sarlang(tmp_path / "sarlang", images=2)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for n in range(2):
            archive.writestr(f"SARimages_preprocessed/SARimages/France_Nice_{n}.png", bytes(200 * 2**20))
    HfApi().upload_file(path_or_fileobj=bomb.getvalue(), path_in_repo="SARimages_preprocessed.zip",
                        repo_id="YiminJimmy/SARLANG-1M", repo_type="dataset")
    done = fusar_eval(fusar, "--benchmark", "sarlang-1m/caption", "--output", tmp_path / "out")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "SARimages_preprocessed.zip/SARimages_preprocessed/SARimages/France_Nice_0.png: 209715200 bytes, over the " \
           "134217728 bytes such a file may have here; not read" in done.stderr


def test_a_preset_reads_the_hub_even_beside_a_folder_of_its_repos_name(local_hub, tmp_path, monkeypatch):
    """A user who downloaded the repo with `--local-dir YiminJimmy/SARLANG-1M` still gets the preset's Hub reading."""
    from evaluation.sources import benchmark_source

    commit = benchmark_replicas.sarlang(tmp_path / "sarlang", images=2)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "YiminJimmy" / "SARLANG-1M").mkdir(parents=True)
    rows, info, *_ = benchmark_source("sarlang-1m/vqa", None, None, 1, 0, None)
    assert (info.repo, info.revision, len(rows)) == ("YiminJimmy/SARLANG-1M", commit, 1)
