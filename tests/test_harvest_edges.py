"""`fusar-data harvest` at the edges, driven through the shell: one bad patch or chip never stops a harvest, every
source is checked before anything is written, and bad regions, bounding boxes and sources are one line each."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from test_harvest import BBOX, harvest, replica, sources  # noqa: F401  (the replica and sources fixtures)


def copied(replica, tmp_path):  # noqa: F811
    """The three local sources, copied so that a test may damage them."""
    root, built = replica
    for name in ("majortom", "worldcover", "alphaearth"):
        shutil.copytree(root / name, tmp_path / name)
    return tmp_path, built


def local(root, *extra, source="majortom", worldcover="worldcover", cache="cache", bbox=BBOX) -> list[str]:
    return ["--source", str(root / source), "--worldcover", str(root / worldcover), "--alphaearth",
            str(root / "alphaearth"), "--alphaearth-cache", str(root / cache), "--bbox", *bbox, *extra]


def band(width: int, height: int, left: float, top: float, sparse: bool = False) -> bytes:
    """A float32 UTM GeoTIFF of that size; `sparse`: its header says so, but no block is written (a few kB)."""
    with MemoryFile() as memory:
        with memory.open(driver="GTiff", width=width, height=height, count=1, dtype="float32", crs="EPSG:32630",
                         transform=from_origin(left, top, 10, 10), tiled=True, blockxsize=1024, blockysize=1024,
                         compress="deflate", sparse_ok=sparse) as dataset:
            if not sparse:
                dataset.write(np.ones((1, height, width), np.float32))
        return memory.read()


def add_bad_patches(root, built) -> dict:
    """Three more patches where A lies, each bad its own way; returns product id -> the reason the card must give."""
    left, top = built["left"], built["top"]
    template = built["patches"][0]
    bad = {"9F1F": (band(300, 300, left, top), "300 x 300 px, a Major-TOM patch is 1068 x 1068"),
           "9F1G": (band(60000, 60000, left, top, sparse=True), "60000 x 60000 px"),
           "9F1H": (None, "row group 99: cannot be read (ArrowInvalid")}
    patches = list(built["patches"])
    reasons = {}
    for suffix, (data, reason) in bad.items():
        product = template["product_id"][:-4] + suffix
        patches.append({**template, "product_id": product, "vv": data or template["vv"], "vh": data or template["vh"]})
        reasons[product] = reason
    images = pa.Table.from_pylist([{"product_id": p["product_id"], "vv": p["vv"], "vh": p["vh"]} for p in patches])
    pq.write_table(images, root / "majortom" / "images" / "part_00000.parquet", row_group_size=1)
    metadata = pq.read_table(root / "majortom" / "metadata.parquet").to_pylist()
    for row, patch in enumerate(patches[len(metadata):], start=len(metadata)):
        metadata.append({**metadata[0], "product_id": patch["product_id"],
                         "parquet_row": 99 if patch["product_id"].endswith("9F1H") else row})
    pq.write_table(pa.Table.from_pylist(metadata), root / "majortom" / "metadata.parquet")
    return reasons


def test_one_bad_patch_or_chip_never_stops_a_harvest(replica, tmp_path):  # noqa: F811
    root, built = copied(replica, tmp_path)
    reasons = add_bad_patches(root, built)
    # The 2020 WorldCover map, which patch D (2019) reads, damaged: D's chips are skipped, naming the tile.
    next((root / "worldcover" / "v100").rglob("*.tif")).write_bytes(b"II*\x00 not a tile")
    reasons[built["patches"][3]["product_id"]] = "land cover: "
    result = harvest(*local(root, "--max-skipped", "0.9", "--output", str(root / "out")))
    card = (root / "out" / "README.md").read_text()
    for product, reason in reasons.items():
        assert f"`{product}`" in card and reason in card.split(product, 1)[1].split("\n", 1)[0], (product, card)
    assert "skipped 80 of 112 chips (71%): 4 whole patches, 16 single chips" in result.stderr, result.stderr[-2000:]
    rows = [json.loads(r) for part in (root / "out" / "data").glob("*.parquet")
            for r in pq.read_table(part, columns=["facts"]).column("facts").to_pylist()]
    assert {r["product_id"][-4:] for r in rows} == {"9F1A", "9F1B"}  # every good chip, and only those
    assert len({(r["product_id"], r["chip"]) for r in rows}) == 32

    # Past --max-skipped (0.5 by default): the run stops with the summary; what it wrote stays, no card.
    stopped = harvest(*local(root, "--output", str(root / "stopped")), check=False)
    assert stopped.returncode == 2 and "skipped 80 of 112 chips (71%)" in stopped.stderr
    assert "more than --max-skipped 0.5" in stopped.stderr.strip().splitlines()[-1]
    assert list((root / "stopped" / "data").glob("*.parquet")) and not (root / "stopped" / "README.md").exists()


def test_sources_are_checked_before_anything_is_written_and_their_locations_define_no_row(
        replica, tmp_path):  # noqa: F811
    root, _ = copied(replica, tmp_path)
    shutil.move(root / "worldcover", root / "worldcover-fixed")
    (root / "worldcover").mkdir()  # a WorldCover without its grid: found before the plan is written
    result = harvest(*local(root, "--max-chips", "4", "--output", str(root / "out")), check=False)
    assert result.returncode == 2 and "no WorldCover tile grid" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (root / "out").exists()
    harvest(*local(root, "--max-chips", "4", "--output", str(root / "out"), worldcover="worldcover-fixed"))
    resumed = harvest(*local(root, "--max-chips", "4", "--output", str(root / "out"), worldcover="worldcover-fixed",
                             cache="another-cache"))  # a cache folder changes no row
    assert "resuming: 1 of 1 shards already done" in resumed.stderr


@pytest.mark.parametrize("region, message", [
    ([[0, 0], [1, 1]], "expected a GeoJSON object (a Polygon, MultiPolygon, Feature or FeatureCollection), got a "
                       "JSON list"),
    ({"type": "FeatureCollection"}, "a FeatureCollection without features"),
    ({"type": "Polygon", "coordinates": [[]]}, "not a valid Polygon: it is empty"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1], [1, 1], [0, 0]]]}, "coordinates are not Polygon rings"),
    ({"type": "Polygon", "coordinates": [[[0, 37], [1, 38], [1, 37], [0, 38], [0, 37]]]},
     "not a valid Polygon: Self-intersection[0.5 37.5]"),
    ({"type": "Polygon", "coordinates": [[[0, 37], [float("nan"), 38], [1, 37], [0, 37]]]},
     "not a valid Polygon: Invalid Coordinate[nan 38]"),
    ({"type": "Polygon", "coordinates": [[[0, 37], [500, 38], [1, 37], [0, 37]]]},
     "reaches beyond longitudes [-180, 180] or latitudes [-90, 90] (bounds 0 37 500 38)"),
])
def test_a_bad_region_file_is_one_line_naming_it_and_what_is_wrong(tmp_path, region, message):
    path = tmp_path / "region.geojson"
    path.write_text(json.dumps(region))
    result = harvest("--region", str(path), "--source", str(tmp_path / "no-source"), "--output", str(tmp_path / "out"),
                     check=False)
    assert result.returncode == 2 and result.stderr.startswith(f"fusar-data: error: {path}:"), result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_bounding_boxes_and_sources_that_are_wrong_are_one_line(replica, tmp_path):  # noqa: F811
    root, _ = copied(replica, tmp_path)
    metadata = pq.read_table(root / "majortom" / "metadata.parquet")
    shutil.copytree(root / "majortom", root / "columns")
    pq.write_table(metadata.drop(["parquet_row"]), root / "columns" / "metadata.parquet")
    cases = [
        ({"bbox": ["0", "38.5", "1", "37.5"]}, "SOUTH <= NORTH"),
        ({"bbox": ["-200", "37.5", "0", "38.5"]}, "longitudes in [-180, 180]"),
        ({"source": "missing"}, f"--source {root / 'missing'}: no such folder, and not a Hub dataset id"),
        ({"source": "columns"}, "the Major-TOM metadata lacks the columns ['parquet_row']"),
    ]
    for options, message in cases:
        result = harvest(*local(root, "--output", str(root / "out"), **options), check=False)
        assert result.returncode == 2 and message in result.stderr, (options, result.stderr[-2000:])
        assert len(result.stderr.strip().splitlines()) == 1 and not (root / "out").exists()
    # WEST > EAST: a box across the 180th meridian, said in one line; the replica's patches (~1 degree W) are in it.
    result = harvest(*local(root, "--max-chips", "1", "--output", str(root / "across"),
                            bbox=["170", "37.5", "0", "38.5"]))
    assert "read as a box across the 180th meridian" in result.stderr and (root / "across" / "README.md").exists()


def test_a_harvest_to_the_hub_makes_one_commit_a_shard_and_waits_out_rate_limits(sources, local_hub, tmp_path):
    """The local Hub answers the first two commits 429 (with Retry-After, as the Hub does): the harvest waits and goes
    on. Each shard is one commit (its data and marker together), where each file was one before."""
    local_hub.refuse_commits = 2
    result = harvest("--source", "Major-TOM/Core-S1RTC", *sources["args"], "--alphaearth-cache", str(tmp_path / "c"),
                     "--max-chips", "40", "--patches-per-shard", "1", "--start", "2021-01-01",
                     "--output", "hf://datasets/user/rated")
    assert result.stderr.count("the Hub is rate-limiting commits: trying again in 1 s") == 2, result.stderr[-2000:]
    repo = local_hub.repos[("dataset", "user/rated")]
    head = repo.commits[repo.branches["main"]]
    shards = [name for name in head.files if name.startswith(".harvest/shard-")]
    assert len(shards) == 3 and "README.md" in head.files
    assert len(repo.commits) == 1 + 1 + len(shards) + 1  # the repo's first, the plan, one per shard, the card
    assert sum(" 429 " in line for line in local_hub.log) == 2
