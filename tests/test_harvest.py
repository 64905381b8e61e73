"""`fusar-data harvest` against replicas of its three sources (`harvest_replica.py`): Major-TOM on the local Hub,
WorldCover and AlphaEarth on a local range server; driven as a user's shell drives it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.warp import transform as transform_points

from conftest import SHARED_DATA
from dataset_scripts.alphaearth import AlphaEarthTiles, Footprint, sample_anchors
from dataset_scripts.facts import BINS, CLASSES, PRESENT_SHARE, load_templates, most_in, texts
from dataset_scripts.loading import load_triplet_dataset
from range_server import serve

FUSAR_DATA = str(Path(sys.executable).with_name("fusar-data"))
BBOX = ["-1.5", "37.5", "0.0", "38.5"]


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    if not (SHARED_DATA / "sen1floods11").is_dir() or not (SHARED_DATA / "aef_points").is_dir():
        pytest.skip(f"the harvest replicas are made from real data in {SHARED_DATA} (sen1floods11, aef_points), absent")
    import harvest_replica

    root = tmp_path_factory.mktemp("sources")
    return root, harvest_replica.build(root, SHARED_DATA)


@pytest.fixture
def sources(replica, local_hub):
    """The three sources served: Major-TOM/Core-S1RTC on the local Hub, the others over HTTP ranges."""
    from huggingface_hub import HfApi

    root, built = replica
    api = HfApi()
    api.create_repo("Major-TOM/Core-S1RTC", repo_type="dataset")
    api.upload_folder(folder_path=str(root / "majortom"), repo_id="Major-TOM/Core-S1RTC", repo_type="dataset")
    with serve(root) as server:
        yield {"root": root, "server": server, "built": built,
               "args": ["--worldcover", f"{server.url}/worldcover", "--alphaearth", f"{server.url}/alphaearth"]}


def local_args(root, cache):
    return ["--source", str(root / "majortom"), "--worldcover", str(root / "worldcover"), "--alphaearth",
            str(root / "alphaearth"), "--alphaearth-cache", str(cache)]


def harvest(*args, check=True, **kwargs):
    result = subprocess.run([FUSAR_DATA, "harvest", "--chip-size", "256", *args], capture_output=True, text=True,
                            timeout=600, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def rows_of(folder) -> dict:
    dataset = load_triplet_dataset(str(folder))
    return {split: sorted(part.to_list(), key=lambda r: r["id"]) for split, part in dataset.items()}


def test_a_harvest_from_the_hub_holds_exactly_what_direct_reads_give(sources, tmp_path):
    root = sources["root"]
    result = harvest(*sources["args"], "--alphaearth-cache", str(tmp_path / "cache"), "--bbox", *BBOX,
                     "--start", "2021-01-01", "--end", "2021-12-31", "--output", str(tmp_path / "real"))
    assert f"dataset written to {tmp_path / 'real'}" in result.stdout
    from harvest_replica import WORLDCOVER_TILE

    files = (root / "worldcover" / WORLDCOVER_TILE).stat().st_size + sum(p.stat().st_size for p in (root / "alphaearth").rglob("*.tiff"))
    assert sources["server"].total_sent() < 1.5 * files  # ranges, never a whole tile per chip (S3 answers a
    #                                                      request of several ranges with the whole file)
    rows = [row for part in rows_of(tmp_path / "real").values() for row in part]
    facts = {row["scene_id"]: json.loads(row["facts"]) for row in rows}
    products = {f["product_id"][-1] for f in facts.values()}
    assert products == {"A", "B"}  # C is corrupt (skipped, listed), D is 2019, E has 40% nodata
    card = (tmp_path / "real" / "README.md").read_text()
    assert "Skipped (listed, not fatal): **1**" in card and "9F1C" in card and "not a readable GeoTIFF" in card
    for licence in ("CC-BY-SA-4.0", "CC-BY-4.0", "Copernicus Sentinel", "produced by Google and Google DeepMind",
                    "ESA WorldCover"):
        assert licence in card
    assert "license: cc-by-sa-4.0" in card and "data/train-*.parquet" in card

    release, checked = AlphaEarthTiles(root / "alphaearth"), 0
    for row in {row["scene_id"]: row for row in rows}.values():
        fact = facts[row["scene_id"]]
        patch = next(p for p in sources["built"]["patches"] if p["product_id"] == fact["product_id"])
        assert "Major TOM" in row["source"] and fact["product_id"] in row["source"]
        row0, col0, size = fact["chip_window"]
        with rasterio.MemoryFile(patch["vv"]) as memory, memory.open() as vv:
            chip = Footprint(vv.crs, vv.transform @ Affine.translation(col0, row0), size, size)
        # anchors: a direct read of the release's tile on disk, where it covers the chip
        direct = sample_anchors(release, chip, [2021], grid_size=8)
        np.testing.assert_array_equal(np.asarray(row["anchor_values"], np.float32), direct.values)
        np.testing.assert_array_equal(np.asarray(row["anchor_mask"]), direct.mask)
        assert (fact["product_id"][-1] == "A") == direct.mask.all()  # the replica's tile lies under patch A only
        # facts: every chip pixel's centre looked up in the WorldCover tile file by hand
        classes = worldcover_under(root / "worldcover", chip)
        for name, share in fact["classes"].items():
            code = next(c for c, n in CLASSES.items() if n == name)
            assert abs(share - (classes == code).mean()) < 0.002, (name, share)
        checked += 1
        # texts: every answer follows from the stored facts
        for message, task in ((r["messages"], r["task"]) for r in rows if r["scene_id"] == row["scene_id"]):
            assert_follows_from_facts(message[0]["content"], message[1]["content"], task, fact)
    assert checked == 32
    check = subprocess.run([FUSAR_DATA, "check", str(tmp_path / "real")], capture_output=True, text=True, timeout=600)
    assert check.returncode == 0 and "no problems found" in check.stdout, check.stdout + check.stderr


def worldcover_under(folder: Path, chip: Footprint) -> np.ndarray:
    from harvest_replica import WORLDCOVER_TILE

    rows, cols = np.mgrid[0:chip.height, 0:chip.width] + 0.5
    xs, ys = chip.transform @ (cols.ravel(), rows.ravel())
    lons, lats = transform_points(chip.crs, "EPSG:4326", xs, ys)
    with rasterio.open(folder / WORLDCOVER_TILE) as tile:
        r, c = rasterio.transform.rowcol(tile.transform, lons, lats)
        window = rasterio.windows.Window(min(c), min(r), max(c) - min(c) + 1, max(r) - min(r) + 1)
        values = tile.read(1, window=window)
    return values[np.asarray(r) - min(r), np.asarray(c) - min(c)].reshape(chip.height, chip.width)


def assert_follows_from_facts(question: str, answer: str, task: str, facts: dict) -> None:
    shares = facts["classes"]
    if task == "landcover":
        assert answer == max(shares, key=shares.get)
    elif task == "caption":
        for name, share in shares.items():
            assert (f"{name} ({share:.0%})" in answer) == (share >= 0.05), (name, answer)
        assert facts["date"] in answer
    elif "Answer yes or no" in question:
        name = "permanent water bodies" if "water" in question else "built-up"
        assert answer == ("yes" if shares.get(name, 0) >= PRESENT_SHARE else "no")
    elif task == "localization":
        name = "permanent water bodies" if "water" in question else "built-up"
        assert answer == most_in(facts, name)
        assert sorted((c.get(name, 0), k) for k, c in facts["cells"].items())[-1][1] == answer
    else:
        name = question.split(" is ", 1)[1].split("?")[0]
        share = shares[name]
        assert answer == ("none" if not share else next(label for low, label in BINS if share >= low))


def test_a_killed_harvest_resumes_to_the_same_dataset_and_never_trusts_a_half_written_shard(replica, tmp_path):
    root, _ = replica
    args = [*local_args(root, tmp_path / "cache"), "--patches-per-shard", "1", "--start", "2021-01-01"]
    harvest(*args, "--output", str(tmp_path / "whole"))
    process = subprocess.Popen([FUSAR_DATA, "harvest", "--chip-size", "256", *args, "--output", str(tmp_path / "cut")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    marker = tmp_path / "cut" / ".harvest" / "shard-00000.json"
    deadline = time.time() + 300
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # killed after its first shard, before the card
    process.wait()
    assert marker.exists() and not (tmp_path / "cut" / "README.md").exists()
    # a shard that was being written when the run died: its file is there, its marker is not
    (tmp_path / "cut" / "data").mkdir(exist_ok=True)
    (tmp_path / "cut" / "data" / "train-00001.parquet").write_bytes(b"PAR1 half written")
    (tmp_path / "cut" / ".harvest" / "shard-00001.json").unlink(missing_ok=True)
    again = harvest(*args, "--output", str(tmp_path / "cut"))
    assert "resuming: " in again.stderr
    assert rows_of(tmp_path / "cut") == rows_of(tmp_path / "whole")
    rerun = harvest(*args, "--output", str(tmp_path / "cut"))  # a finished harvest run again: nothing redone
    assert "resuming: 3 of 3 shards already done" in rerun.stderr
    other = harvest(*args, "--max-chips", "3", "--output", str(tmp_path / "cut"), check=False)
    assert other.returncode == 2 and "holds a harvest with other options" in other.stderr
    assert rows_of(tmp_path / "cut") == rows_of(tmp_path / "whole")  # untouched


def test_the_ray_engine_writes_the_same_rows(replica, tmp_path):
    pytest.importorskip("ray", reason="--engine ray needs Ray (pip install 'fusar-gpt[ray]')")
    root, _ = replica
    args = [*local_args(root, tmp_path / "cache"), "--patches-per-shard", "1", "--start", "2021-01-01",
            "--max-chips", "20"]
    harvest(*args, "--output", str(tmp_path / "local"), "--num-proc", "2")
    harvest(*args, "--output", str(tmp_path / "ray"), "--engine", "ray", "--num-proc", "2")
    assert rows_of(tmp_path / "ray") == rows_of(tmp_path / "local")
    assert sum(len(part) for part in rows_of(tmp_path / "ray").values()) > 0


def test_a_harvest_straight_to_the_hub_loads_with_load_dataset(sources, tmp_path):
    import datasets

    harvest("--source", "Major-TOM/Core-S1RTC", *sources["args"], "--alphaearth-cache", str(tmp_path / "cache"),
            "--max-chips", "6", "--start", "2021-01-01", "--output", str(tmp_path / "here"))
    harvest("--source", "Major-TOM/Core-S1RTC", *sources["args"], "--alphaearth-cache", str(tmp_path / "cache"),
            "--max-chips", "6", "--start", "2021-01-01", "--output", "hf://datasets/user/sar-harvest")
    pulled = datasets.load_dataset("user/sar-harvest")
    here = rows_of(tmp_path / "here")
    assert {split: sorted(part.to_list(), key=lambda r: r["id"]) for split, part in pulled.items()} == here


def test_bad_input_is_one_clear_line_and_nothing_is_written(sources, tmp_path):
    common = ["--source", "Major-TOM/Core-S1RTC", *sources["args"], "--alphaearth-cache", str(tmp_path / "cache")]
    cases = [
        (["--bbox", "10", "50", "11", "51"], "no patches in Major-TOM/Core-S1RTC match: bbox"),
        (["--start", "2022-01-01", "--end", "2022-12-31"], "no patches in Major-TOM/Core-S1RTC match"),
        (["--start", "2021-06-01", "--end", "2021-01-01"], "--start 2021-06-01 is after --end 2021-01-01"),
        (["--start", "June"], "'June' is not a date YYYY-MM-DD"),
        (["--chip-size", "2000"], "--chip-size must be between 16 and 1068"),
        (["--source", "Major-TOM/Nothing-Here"], "cannot read the Major-TOM metadata"),
        (["--worldcover", "http://127.0.0.1:9", "--start", "2021-01-01"], "cannot read the WorldCover tile grid"),
    ]
    for number, (extra, message) in enumerate(cases):
        output = tmp_path / f"out{number}"
        result = harvest(*common, *extra, "--output", str(output), check=False)
        assert result.returncode == 2, (extra, result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr, (extra, result.stderr[-2000:])
        assert not (output / "README.md").exists() and not list(output.glob("data/*"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my own work")
    result = harvest(*common, "--output", str(tmp_path / "mine"), check=False)
    assert result.returncode == 2 and "holds files that are not a harvest's (notes.txt" in result.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "my own work"


def test_texts_come_only_from_facts_and_templates_can_be_replaced(tmp_path):
    facts = {"date": "2021-06-03", "mapped": 1.0,
             "classes": {"cropland": 0.7, "permanent water bodies": 0.2, "built-up": 0.005, "tree cover": 0.095},
             "cells": {cell: {} for cell in ("top-left", "top-center", "top-right", "middle-left", "center",
                                             "middle-right", "bottom-left", "bottom-center", "bottom-right")}}
    facts["cells"]["center"] = {"permanent water bodies": 0.9, "cropland": 0.1}
    facts["cells"]["top-left"] = {"cropland": 1.0}
    facts["cells"]["top-right"] = {"cropland": 1.0}  # a tie: no "most cropland in" claim
    made = {key: (task, question, answer) for key, task, question, answer in texts(facts)}
    caption = made["caption"][2]
    assert "mostly cropland (70%)" in caption and "most cropland" not in caption and "built-up (" not in caption
    assert "Built-up: no built-up area." in caption and "most permanent water bodies in the center" in caption
    assert made["dominant"][2] == "cropland" and made["fraction"][2] == "50-75%"
    assert made["water_present"][2] == "yes" and made["water_cell"][2] == "center"
    assert made["built_up_present"][2] == "no" and "built_up_cell" not in made
    assert texts({**facts, "mapped": 0.3}) == []  # mostly unmapped (the sea): no land-cover text at all
    (tmp_path / "t.json").write_text(json.dumps({"caption": "SAR, {date}: {terrain}."}))
    assert texts(facts, load_templates(tmp_path / "t.json"))[0][3] == "SAR, 2021-06-03: mostly cropland (70%), with " \
        "permanent water bodies (20%), tree cover (10%)."
    (tmp_path / "bad.json").write_text(json.dumps({"captions": "x"}))
    with pytest.raises(ValueError, match=r"bad.json: templates are strings under the keys"):
        load_templates(tmp_path / "bad.json")


def test_the_anchor_year_is_the_acquisition_year_else_the_nearest():
    from dataset_scripts.harvest import nearest_year

    assert nearest_year(2021, [2018, 2021, 2024]) == 2021 and nearest_year(2025, list(range(2018, 2025))) == 2024
    assert nearest_year(2016, [2018, 2019]) == 2018 and nearest_year(2020, []) is None


def test_a_geojson_region_with_a_hole(tmp_path):
    from dataset_scripts.majortom import Region

    ring = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    hole = [[4, 4], [6, 4], [6, 6], [4, 6], [4, 4]]
    (tmp_path / "r.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring, hole]}}]}))
    region = Region(tmp_path / "r.geojson")
    assert region.contains(np.array([1.0, 5.0, 11.0]), np.array([1.0, 5.0, 5.0])).tolist() == [True, False, False]
    (tmp_path / "p.geojson").write_text(json.dumps({"type": "Point", "coordinates": [0, 0]}))
    with pytest.raises(ValueError, match="p.geojson: the region must be a Polygon or MultiPolygon, got 'Point'"):
        Region(tmp_path / "p.geojson")


def test_texts_are_made_again_from_the_facts_and_a_rewrite_hook_keeps_the_template_caption(replica, tmp_path):
    root, _ = replica
    args = [*local_args(root, tmp_path / "cache"), "--start", "2021-01-01", "--max-chips", "4"]
    harvest(*args, "--output", str(tmp_path / "plain"))
    (tmp_path / "t.json").write_text(json.dumps({"caption": "Radar view of {date}; land: {terrain}.",
                                                 "presence_question": "Does the image show {name}? yes or no."}))
    result = subprocess.run([FUSAR_DATA, "retext", str(tmp_path / "plain"), "--templates", str(tmp_path / "t.json"),
                             "--output", str(tmp_path / "again")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = rows_of(tmp_path / "plain"), rows_of(tmp_path / "again")
    for split in before:
        for old, new in zip(before[split], after[split]):
            assert old["id"] == new["id"] and old["facts"] == new["facts"] and old["anchor_values"] == new["anchor_values"]
            question, answer = new["messages"][0]["content"], new["messages"][1]["content"]
            if new["task"] == "caption":
                assert answer.startswith(f"Radar view of {json.loads(new['facts'])['date']}; land: ")
            elif "yes or no" in question:
                assert question.startswith("Does the image show ") and answer == old["messages"][1]["content"]
            else:
                assert new["messages"] == old["messages"]
    assert "`t.json` (`fusar-data retext`)" in (tmp_path / "again" / "README.md").read_text()
    (tmp_path / "hooks.py").write_text("def shout(caption, facts):\n    return caption.upper()\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    harvest(*args, "--rewrite", "hooks:shout", "--output", str(tmp_path / "loud"), env=env)
    for plain, loud in zip(*(sum(rows_of(tmp_path / name).values(), []) for name in ("plain", "loud"))):
        if loud["task"] == "caption":
            assert loud["messages"][1]["content"] == plain["messages"][1]["content"].upper()
            assert json.loads(loud["facts"])["template_caption"] == plain["messages"][1]["content"]
        else:
            assert loud["messages"] == plain["messages"]
    missing = harvest(*args, "--rewrite", "hooks:nothing", "--output", str(tmp_path / "x"), check=False, env=env)
    assert missing.returncode == 2 and "--rewrite hooks:nothing: cannot import it" in missing.stderr
