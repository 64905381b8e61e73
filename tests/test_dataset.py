"""Building, simulating, checking and publishing the triplet dataset."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

import dataset_scripts.builder as builder
from conftest import shared_data
from dataset_scripts.builder import BuildConfig, build
from dataset_scripts.check import check
from dataset_scripts.cli import main
from dataset_scripts.inputs import from_jsonl, from_manifest, from_voc
from dataset_scripts.schema import FEATURES
from dataset_scripts.loading import load_triplet_dataset
from dataset_scripts.tasks import grid_cell


def rows_by_id(path):
    loaded = load_triplet_dataset(str(path))
    return {row["id"]: row for split in loaded.values() for row in split}


def test_voc_ship_chips_give_detection_and_counting_rows_with_their_boxes(tmp_path):
    folder = shared_data("sar_ship_chips")
    assert main(["build", "--voc", str(folder), "--tasks", "counting,detection,localization", "--source",
                 "SAR-Ship-Dataset (Wang et al. 2019), MIT", "--output", str(tmp_path / "ships")]) == 0
    rows = {(r["scene_id"], r["task"]): r for r in rows_by_id(tmp_path / "ships").values()}
    for xml in sorted(folder.glob("*.xml")):
        boxes = [[int(o.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
                 for o in ElementTree.parse(xml).getroot().iter("object")]
        count = rows[xml.stem, "counting"]
        assert count["messages"][1]["content"] == str(len(boxes)) and count["source"].startswith("SAR-Ship-Dataset")
        detection = json.loads(rows[xml.stem, "detection"]["messages"][1]["content"])
        width, height = count["image"].size
        clipped = [[min(x1, width - 1), min(y1, height - 1), min(x2, width - 1), min(y2, height - 1)] for x1, y1, x2, y2 in boxes]
        assert [d["bbox_2d"] for d in detection] == clipped and {d["label"] for d in detection} == {"ship"}
        assert [o["bbox"] for o in count["objects"]] == boxes
        assert count["anchor_values"] == [] and "no anchors" in count["source"]  # chips are not georeferenced
        if len(boxes) == 1:
            assert rows[xml.stem, "localization"]["messages"][1]["content"] == grid_cell(boxes[0], width, height)
    assert check(str(tmp_path / "ships")) == []


def test_grid_rule():
    assert grid_cell([0, 0, 10, 10], 90, 90) == "top-left"
    assert grid_cell([40, 40, 50, 50], 90, 90) == "center"
    assert grid_cell([50, 0, 70, 10], 90, 90) == "top-right"  # centre 60: on the border, goes right
    assert grid_cell([80, 80, 90, 90], 90, 90) == "bottom-right"


def write_manifest(tmp_path, rows=3):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 80), dtype=np.uint8)).save(tmp_path / "chip.png")
    features = rng.normal(size=(9, 64)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    np.savez(tmp_path / "chip.npz", features=features, positions=rng.uniform(size=(9, 2)).astype(np.float32))
    answers = ["3", "top-left", json.dumps([{"bbox_2d": [10, 20, 30, 40], "label": "ship"}])][:rows]
    (tmp_path / "manifest.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "image": "chip.png", "aef": "chip.npz", "question": f"question {i}",
                    "answer": answer, "coordinate_size": 504}) + "\n" for i, answer in enumerate(answers)))
    return features


def test_the_authors_manifest(tmp_path):
    features = write_manifest(tmp_path)
    assert main(["import-manifest", str(tmp_path / "manifest.jsonl"), "--output", str(tmp_path / "out")]) == 0
    rows = sorted(rows_by_id(tmp_path / "out").values(), key=lambda r: r["messages"][0]["content"])
    assert [r["task"] for r in rows] == ["counting", "localization", "detection"]
    assert all(r["image"].size == (504, 504) for r in rows)  # answers are in the resized image's coordinates
    np.testing.assert_array_equal(np.asarray(rows[0]["anchor_values"], np.float32)[:, 0], features)
    assert check(str(tmp_path / "out")) == []


def test_a_manifest_goes_to_the_split_the_user_names_and_says_where_rows_went(tmp_path):
    """Through the console script: a held-out manifest is all test rows (not hashed 80/10/10), land-cover questions
    are land cover, and the card names only the Hub task categories present."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(tmp_path / f"chip{i}.png")
        lines.append({"id": f"q{i}", "image": f"chip{i}.png", "question": "What is the main land cover type?",
                      "answer": ["forest", "water"][i % 2]})
    (tmp_path / "held-out.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = subprocess.run([str(Path(sys.executable).with_name("fusar-data")), "import-manifest",
                             str(tmp_path / "held-out.jsonl"), "--split", "test", "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "rows per split (as asked (--split)): test 12" in result.stdout
    dataset = load_triplet_dataset(str(tmp_path / "out"))
    assert list(dataset) == ["test"] and set(dataset["test"]["task"]) == {"landcover"}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "object-detection" not in card and "visual-question-answering" in card
    assert "Every row is in the `test` split" in card
    assert main(["import-manifest", str(tmp_path / "held-out.jsonl"), "--output", str(tmp_path / "hashed")]) == 0
    assert set(load_triplet_dataset(str(tmp_path / "hashed"))) > {"train"}


def test_the_authors_manifest_as_they_write_it(tmp_path):
    """Through the console script: a JSON list of rows, `.npy` anchors, detection answers in a code fence or `None`,
    boxes beyond the 504 px square (their own examples hold x = -35 and x2 = 529)."""
    import subprocess
    import sys
    from pathlib import Path

    from test_anchors import authors_npy_columns

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80), dtype=np.uint8)).save(tmp_path / "chip.png")
    np.save(tmp_path / "chip_aef.npy", authors_npy_columns(count=9))
    fenced = "```json\n" + json.dumps([{"bbox_2d": [-35, 10, 529, 80], "label": "ship"}]) + "\n```"
    boxes = [{"bbox_2d": [470, 0, 529, 40], "label": "ship"}]  # a JSON value, not text, in a JSON-list manifest
    rows = [{"id": f"q{i}", "image": "chip.png", "aef": "chip_aef.npy", "question": "Detect the ships.", "answer": answer,
             "coordinate_size": 504} for i, answer in enumerate([fenced, None, "2", boxes])]
    rows.append({**rows[2], "id": "q4", "question": "Is there a harbour?", "answer": "None"})  # None, not a detection
    (tmp_path / "manifest.json").write_text(json.dumps(rows))
    command = [str(Path(sys.executable).with_name("fusar-data")), "import-manifest", str(tmp_path / "manifest.json"),
               "--output", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {r["id"].rsplit("/", 1)[-1]: r for r in rows_by_id(tmp_path / "out").values()}
    tasks = sorted(r["task"] for r in imported.values())
    assert tasks == ["counting", "detection", "detection", "detection", "vqa"]
    detection = {r["messages"][1]["content"] for r in imported.values() if r["task"] == "detection"}
    assert detection == {fenced, "None", json.dumps(boxes)}
    assert all(len(r["anchor_values"]) == 9 for r in imported.values())
    assert check(str(tmp_path / "out")) == []


def test_two_folders_of_the_same_name_never_share_cached_rows(tmp_path):
    """datasets keys a local folder's cache by its name: training and evaluation must each see their own rows."""
    from evaluation.sources import load_rows
    import train_sft
    from dataset_scripts.simulate import simulate

    small, large = (simulate(tmp_path / size / "data", scenes=scenes) for size, scenes in (("a", 4), ("b", 12)))
    sizes = [len(train_sft.load_triplets(str(folder))["train"]) for folder in (small, large)]
    assert sizes == [len(load_triplet_dataset(str(folder))["train"]) for folder in (small, large)]
    assert sizes[0] < sizes[1]
    assert len(load_rows(str(large), "train", None, None)) == sizes[1]


def test_a_malformed_manifest_row_is_reported_by_line_and_skipped(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "image": "x.png"}\n')
    [scene] = from_manifest(tmp_path / "bad.jsonl")
    assert scene.image.endswith("bad.jsonl:1") and "not an authors' manifest row" in scene.problem


def test_simulated_default_is_deterministic_valid_and_needs_the_anchors(tmp_path):
    assert main(["simulate", "--scenes", "24", "--output", str(tmp_path / "a")]) == 0
    main(["simulate", "--scenes", "24", "--num-proc", "2", "--output", str(tmp_path / "b")])
    a, b = rows_by_id(tmp_path / "a"), rows_by_id(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k]["messages"] == b[k]["messages"] and a[k]["anchor_values"] == b[k]["anchor_values"] for k in a)
    assert check(str(tmp_path / "a")) == []
    card = (tmp_path / "a" / "README.md").read_text()
    assert "simulated" in card.lower() and "produced by Google and Google DeepMind" in card
    tasks = {row["task"] for row in a.values()}
    assert {"caption", "counting", "detection", "landcover"} <= tasks
    # The anchor-dependent questions: cropland and grassland look the same in the SAR image, not in the anchors.
    centre = [r for r in a.values() if r["task"] == "landcover" and "centre" in r["messages"][0]["content"]]
    assert {"cropland", "grassland"} & {r["messages"][1]["content"] for r in centre}
    assert all(np.asarray(r["anchor_mask"]).all() for r in a.values())


def test_a_build_killed_midway_resumes_to_the_same_dataset(tmp_path, monkeypatch):
    scenes = from_jsonl(write_scenes(tmp_path, 10))
    config = BuildConfig(shard_size=2)
    build(scenes, tmp_path / "whole", config)
    done = []
    real = builder._build_shard

    def dies_after_two(job):
        if len(done) == 2:
            raise KeyboardInterrupt("killed")
        done.append(job[0])
        return real(job)

    monkeypatch.setattr(builder, "_build_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        build(scenes, tmp_path / "resumed", config)
    assert not (tmp_path / "resumed").exists()  # nothing half-written looks like a dataset
    monkeypatch.setattr(builder, "_build_shard", lambda job: done.append(job[0]) or real(job))
    build(scenes, tmp_path / "resumed", config)
    assert sorted(done) == [0, 1, 2, 3, 4]  # the two finished shards were not redone
    whole, resumed = rows_by_id(tmp_path / "whole"), rows_by_id(tmp_path / "resumed")
    assert whole.keys() == resumed.keys()
    assert all(whole[k]["messages"] == resumed[k]["messages"] for k in whole)


def write_scenes(tmp_path, count, corrupt=()):
    rng = np.random.default_rng(1)
    lines = []
    for i in range(count):
        path = tmp_path / f"scene{i}.png"
        if i in corrupt:
            path.write_bytes(b"\x89PNG broken")
        else:
            Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
        lines.append({"image": path.name, "caption": f"scene {i}", "objects": [{"bbox": [5, 5, 15, 15], "category": "ship"}]})
    (tmp_path / "scenes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path / "scenes.jsonl"


def test_a_corrupt_input_is_reported_counted_and_skipped(tmp_path):
    build(from_jsonl(write_scenes(tmp_path, 6, corrupt={3})), tmp_path / "out")
    rows = rows_by_id(tmp_path / "out")
    assert {r["scene_id"] for r in rows.values()} == {f"scene{i}" for i in (0, 1, 2, 4, 5)}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "could not be read and were skipped: **1**" in card and "scene3.png" in card


def test_an_existing_dataset_is_not_overwritten_silently(tmp_path):
    scenes = from_jsonl(write_scenes(tmp_path, 2))
    build(scenes, tmp_path / "out")
    with pytest.raises(ValueError, match="exists and is not empty; choose another output folder or pass --overwrite"):
        build(scenes, tmp_path / "out")
    assert main(["build", "--jsonl", str(tmp_path / "scenes.jsonl"), "--output", str(tmp_path / "out")]) == 2


def test_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["build", "--jsonl", "x.jsonl", "--tasks", "counting,telepathy", "--output", str(tmp_path)])
    assert "unknown tasks ['telepathy']" in capsys.readouterr().err
    assert main(["build", "--output", str(tmp_path / "none")]) == 2
    assert "no scenes" in capsys.readouterr().err


def test_check_catches_each_kind_of_defect(tmp_path):
    build(from_jsonl(write_scenes(tmp_path, 4)), tmp_path / "good", BuildConfig(tasks=("caption", "detection")))
    rows = list(rows_by_id(tmp_path / "good").values())
    defects = {
        "anchor_positions: values outside [0, 1]": lambda r: r.update(anchor_values=[[[1.0] + [0.0] * 63]],
                                                                     anchor_positions=[[1.5, 0.2]], anchor_mask=[[True]],
                                                                     anchor_years=[2020]),
        "are not unit length": lambda r: r.update(anchor_values=[[[0.5] * 64]], anchor_positions=[[0.5, 0.5]],
                                                  anchor_mask=[[True]], anchor_years=[2020]),
        "anchor_values: per-anchor shapes": lambda r: r.update(anchor_values=[[[0.1] * 32]], anchor_positions=[[0.5, 0.5]],
                                                               anchor_mask=[[True]], anchor_years=[2020]),
        "is not inside the 40x40 image": lambda r: r.update(objects=[{"bbox": [30, 30, 50, 45], "category": "ship"}]),
        "does not parse": lambda r: r.update(task="detection", messages=[{"role": "user", "content": "q"},
                                                                         {"role": "assistant", "content": "two ships"}]),
        "roles are": lambda r: r.update(messages=[{"role": "assistant", "content": "a"}]),
        "is not one of": lambda r: r.update(task="telepathy"),
    }
    broken = []
    for number, (message, defect) in enumerate(defects.items()):
        row = dict(rows[number % len(rows)], id=f"defect-{number}", scene_id=f"defect-scene-{number}")
        defect(row)
        broken.append(row)
    duplicate = dict(rows[0])  # the same scene in another split, and an id used twice
    bad = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows + broken, features=FEATURES),
                                "test": datasets.Dataset.from_list([duplicate], features=FEATURES)})
    folder = tmp_path / "bad"
    for split, part in bad.items():
        part.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    problems = check(str(folder))
    for message in list(defects) + ["in several splits", "id: used by another row"]:
        assert any(message in p for p in problems), (message, problems)
    assert main(["check", str(folder)]) == 1 and main(["check", str(tmp_path / "good")]) == 0


def test_push_to_hub_then_load_dataset(local_hub, tmp_path):
    write_scenes(tmp_path, 3)
    assert main(["build", "--jsonl", str(tmp_path / "scenes.jsonl"), "--output", str(tmp_path / "out"),
                 "--push-to-hub", "user/sar-triplets"]) == 0
    local = rows_by_id(tmp_path / "out")
    hub = datasets.load_dataset("user/sar-triplets")
    assert hub["train"].features == FEATURES
    remote = {row["id"]: row for split in hub.values() for row in split}
    assert remote.keys() == local.keys()
    for key, row in remote.items():
        assert np.array_equal(np.asarray(row["image"]), np.asarray(local[key]["image"]))
        assert row["anchor_values"] == local[key]["anchor_values"] and row["objects"] == local[key]["objects"]
    assert check("user/sar-triplets") == []


def test_coco_input(tmp_path):
    folder = shared_data("sar_ship_chips")
    voc = from_voc(folder)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "ship"}]}
    for number, scene in enumerate(voc):
        coco["images"].append({"id": number, "file_name": scene.image.split("/")[-1]})
        coco["annotations"] += [{"image_id": number, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1]}
                                for x1, y1, x2, y2 in (o["bbox"] for o in scene.objects)]
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    from dataset_scripts.inputs import from_coco

    scenes = from_coco(tmp_path / "coco.json", image_root=folder)
    assert [(s.image, s.objects) for s in scenes] == [(v.image, v.objects) for v in voc]
    with pytest.raises(ValueError, match="coco.json: not a COCO detection file"):
        (tmp_path / "coco.json").write_text('{"images": []}')
        from_coco(tmp_path / "coco.json")


def test_a_chip_with_a_sidecar_footprint_gets_anchors(tmp_path):
    """A PNG chip placed by `<name>.footprint.json`, anchored from a float AlphaEarth export."""
    import rasterio
    from rasterio.transform import from_origin

    Image.fromarray(np.full((50, 50), 90, np.uint8)).save(tmp_path / "chip.png")
    (tmp_path / "chip.footprint.json").write_text(json.dumps({"crs": "EPSG:32631", "bounds": [500_000, 4_999_500, 500_500, 5_000_000]}))
    vector = np.zeros(64, np.float32)
    vector[5] = 1
    with rasterio.open(tmp_path / "aef.tif", "w", driver="GTiff", width=100, height=100, count=64, dtype="float32",
                       crs="EPSG:32631", transform=from_origin(499_800, 5_000_200, 10, 10)) as dataset:
        dataset.write(np.broadcast_to(vector[:, None, None], (64, 100, 100)))
    (tmp_path / "scenes.jsonl").write_text(json.dumps({"image": "chip.png", "caption": "calm sea"}) + "\n")
    assert main(["build", "--jsonl", str(tmp_path / "scenes.jsonl"), "--alphaearth-geotiff", str(tmp_path / "aef.tif"),
                 "--alphaearth-year", "2021", "--year", "2021", "--grid-size", "3", "--output", str(tmp_path / "out")]) == 0
    [row] = [r for r in rows_by_id(tmp_path / "out").values() if r["task"] == "caption"]
    assert np.asarray(row["anchor_mask"]).all() and np.asarray(row["anchor_values"])[:, 0, 5].tolist() == [1.0] * 9
    assert row["crs"] == "EPSG:32631" and row["resolution_m"] == 10 and row["anchor_years"] == [2021]
    assert 2.9 < row["footprint"][0] < 3.1  # UTM 31N's central meridian is 3 degrees east


def test_an_unfinished_build_is_not_finished_with_other_options(tmp_path, monkeypatch):
    scenes = from_jsonl(write_scenes(tmp_path, 6))

    def dies(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(builder, "_build_shard", dies)
    with pytest.raises(KeyboardInterrupt):
        build(scenes, tmp_path / "out", BuildConfig(shard_size=3))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unfinished build of other inputs or options"):
        build(scenes, tmp_path / "out", BuildConfig(shard_size=2))
    build(scenes, tmp_path / "out", BuildConfig(shard_size=3))
    assert check(str(tmp_path / "out")) == []
