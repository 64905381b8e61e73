"""AlphaEarth from the cloud release, against servers on 127.0.0.1 serving tiles written here in the release's layout
(top-down and bottom-up, int8, 64 bands, tiled, with overviews) and its index GeoParquet."""

import struct
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine, from_origin
from rasterio.warp import transform_bounds

from dataset_scripts.alphaearth import AlphaEarthTiles, Footprint, sample_anchors
from dataset_scripts.alphaearth_cloud import AlphaEarthCloud, HttpOptions
from range_server import serve

SIDE, PIXEL, BLOCK = 512, 10.0, 128
UTM = CRS.from_epsg(32631)
TOP, LEFT = 5_000_000.0, 500_000.0


def polygon_wkb(west, south, east, north) -> bytes:
    ring = [(west, south), (east, south), (east, north), (west, north), (west, south)]
    return struct.pack("<BIII", 1, 3, 1, len(ring)) + b"".join(struct.pack("<dd", *p) for p in ring)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Two 512 x 512 tiles of 2021 side by side (the right one bottom-up, as the mirror's files are) and the index."""
    root = tmp_path_factory.mktemp("aef")
    rng = np.random.default_rng(0)
    rows = []
    for number, bottom_up in enumerate((False, True)):
        left = LEFT + number * SIDE * PIXEL
        values = rng.integers(-127, 128, (64, SIDE, SIDE)).astype(np.int8)
        values[:, :40, :40] = -128  # a nodata corner
        transform = from_origin(left, TOP, PIXEL, PIXEL)
        if bottom_up:
            values, transform = values[:, ::-1, :], Affine(PIXEL, 0, left, 0, PIXEL, TOP - SIDE * PIXEL)
        path = root / "2021" / "31N" / f"tile{number}.tiff"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=64, dtype="int8", crs=UTM,
                           transform=transform, tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate",
                           nodata=-128) as dataset:
            dataset.write(np.ascontiguousarray(values))
            dataset.build_overviews([2, 4, 8, 16], Resampling.average)
        west, south, east, north = transform_bounds(UTM, "EPSG:4326", left, TOP - SIDE * PIXEL, left + SIDE * PIXEL, TOP)
        rows.append({"fid": number, "path": f"s3://us-west-2.opendata.source.coop/tge-labs/aef/v1/annual/2021/31N/"
                     f"tile{number}.tiff", "year": 2021, "wgs84_west": west, "wgs84_south": south, "wgs84_east": east,
                     "wgs84_north": north, "geometry": polygon_wkb(west, south, east, north), "crs": "EPSG:32631"})
    pq.write_table(pa.Table.from_pylist(rows), root / "aef_index.parquet")
    return root


def footprint(left, top, size_m, pixels=64):
    return Footprint(UTM, from_origin(left, top, size_m / pixels, size_m / pixels), pixels, pixels)


def cloud(server, tmp_path, **options):
    return AlphaEarthCloud(server.url, cache_dir=tmp_path / "cache", http=HttpOptions(retry_delay=0.05), **options)


def test_anchors_through_http_equal_anchors_from_the_same_files_on_disk(release, tmp_path):
    across = footprint(LEFT + 5020, TOP - 1000, 200)  # over both tiles, both orientations; full resolution
    with serve(release) as server:
        got = sample_anchors(cloud(server, tmp_path), across, [2021, 2022], grid_size=6)
    expected = sample_anchors(AlphaEarthTiles(release), across, [2021, 2022], grid_size=6)
    np.testing.assert_array_equal(got.mask, expected.mask)
    np.testing.assert_array_equal(got.values, expected.values)
    assert got.mask[:, 0].all() and not got.mask[:, 1].any()  # 2022 is not in the index: masked, not an error


def test_bytes_fetched_grow_with_the_footprint_not_the_tile(release, tmp_path):
    tile = (release / "2021" / "31N" / "tile0.tiff").stat().st_size
    fetched = []
    with serve(release) as server:
        for size, grid in ((200, 8), (2500, 128)):  # one block, then most of the tile's (anchors < 20 m apart: full
            before = server.total_sent()                # resolution, no overview)
            sample_anchors(cloud(server, tmp_path / str(size)), footprint(LEFT + 100, TOP - 100, size), 2021,
                           grid_size=grid)
            fetched.append(server.total_sent() - before)
        assert fetched[0] < tile / 10 and fetched[0] < fetched[1]
        before, requests = server.total_sent(), server.requests()  # a second build of the region: all from the cache
        sample_anchors(cloud(server, tmp_path / "2500"), footprint(LEFT + 100, TOP - 100, 2500), 2021, grid_size=128)
        assert server.total_sent() == before and server.requests() == requests


def test_a_large_footprint_reads_an_overview_not_the_full_resolution_blocks(release, tmp_path):
    scene = footprint(LEFT, TOP, 5000)  # 5 km, 4 x 4 anchors 1.25 km apart: the 16x overview (160 m pixels)
    with serve(release) as server:
        got = sample_anchors(cloud(server, tmp_path), scene, 2021, grid_size=4)
        coarse = server.total_sent()
    with rasterio.open(release / "2021" / "31N" / "tile0.tiff", overview_level=3) as overview:
        assert overview.res == (160.0, 160.0)
        xs, ys = scene.points(got.positions)
        expected = np.stack(list(overview.sample(zip(xs, ys))))
    from dataset_scripts.alphaearth import dequantize

    np.testing.assert_array_equal(got.values[:, 0][got.mask[:, 0]], dequantize(expected)[got.mask[:, 0]])
    assert coarse < (release / "2021" / "31N" / "tile0.tiff").stat().st_size / 20


def test_a_flaky_server_is_retried_to_the_same_anchors(release, tmp_path):
    chip = footprint(LEFT + 300, TOP - 300, 150)  # anchors < 20 m apart: full resolution
    expected = sample_anchors(AlphaEarthTiles(release), chip, 2021)
    with serve(release) as server:
        server.set(fail_every=3)  # every third request answered 503
        got = sample_anchors(cloud(server, tmp_path, index=str(release / "aef_index.parquet")), chip, 2021)
    np.testing.assert_array_equal(got.values, expected.values)


def test_a_503_on_the_index_is_retried(release, tmp_path):
    with serve(release) as server:
        server.total_sent()  # (not counted as a request) ...
        server.set(fail_every=2)
        urllib.request.urlopen(f"{server.url}/aef_index.parquet").read()  # request 1 answered; the index is request 2
        source = cloud(server, tmp_path)  # its first try is answered 503, the retry is not
    assert source.years() == [2021]


def test_a_download_cut_short_is_retried():
    """The index is one plain GET: a connection closed mid-body (IncompleteRead) is retried, not fatal."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dataset_scripts.alphaearth_cloud import download

    body, calls = b"x" * 1000, []

    class CutOnce(BaseHTTPRequestHandler):
        def do_GET(self):
            calls.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if len(calls) > 1 else body[:100])  # the first answer stops after 100 bytes

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), CutOnce)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert download(f"http://127.0.0.1:{server.server_port}/index", HttpOptions(retry_delay=0.01)) == body
    finally:
        server.shutdown()
    assert len(calls) == 2


def test_anchor_pixels_are_exact_where_float32_map_coordinates_are_not(tmp_path):
    """Southern UTM northings near 10,000 km: float32 holds them to 1 m, so a float32 computation reads the
    neighbouring 10 m pixel for some anchors. Every anchor must read the pixel an exact (float64) rowcol names."""
    crs, top, left, side = CRS.from_epsg(32733), 9_990_000.0, 600_000.0, 256
    codes = np.random.default_rng(5).integers(-127, 128, (64, side, side)).astype(np.int8)
    path = tmp_path / "2021" / "33S" / "tile.tiff"
    path.parent.mkdir(parents=True)
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=64, dtype="int8", crs=crs,
                       transform=from_origin(left, top, PIXEL, PIXEL), tiled=True, blockxsize=128, blockysize=128) as d:
        d.write(codes)
    tiles, rng, checked = AlphaEarthTiles(tmp_path), np.random.default_rng(6), 0
    from dataset_scripts.alphaearth import dequantize

    for _ in range(40):  # chips of 1068 px at 2.3 m offset by odd amounts, as a harvest cuts them
        chip = Footprint(crs, from_origin(left + rng.uniform(0, 50), top - rng.uniform(0, 50), 2.3, 2.3), 1068, 1068)
        anchors = sample_anchors(tiles, chip, 2021, grid_size=8)
        rows = anchors.positions[:, 0].astype(np.float64) * 1067 + 0.5
        cols = anchors.positions[:, 1].astype(np.float64) * 1067 + 0.5
        xs = chip.transform.c + cols * chip.transform.a
        ys = chip.transform.f + rows * chip.transform.e
        r, c = np.floor((top - ys) / PIXEL).astype(int), np.floor((xs - left) / PIXEL).astype(int)
        np.testing.assert_array_equal(anchors.values[:, 0], dequantize(codes[:, r, c].T))
        checked += len(r)
    assert checked == 40 * 64


def test_only_the_blocks_under_the_anchors_are_fetched_from_separate_plane_files(tmp_path):
    """The release's files hold one tile per band (separate planes), ZSTD: GDAL's default /vsicurl/ reads would
    round each tile's range up to 16 kB chunks and read ahead."""
    side, block = 512, 256
    path = tmp_path / "2021" / "31N" / "planes.tiff"
    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(7)
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=64, dtype="int8", crs=UTM,
                       transform=from_origin(LEFT, TOP, PIXEL, PIXEL), tiled=True, blockxsize=block, blockysize=block,
                       compress="zstd", interleave="band") as dataset:
        dataset.write(rng.integers(-20, 20, (64, side, side)).astype(np.int8))
    west, south, east, north = transform_bounds(UTM, "EPSG:4326", LEFT, TOP - side * PIXEL, LEFT + side * PIXEL, TOP)
    pq.write_table(pa.Table.from_pylist([{"path": "2021/31N/planes.tiff", "year": 2021, "wgs84_west": west,
                                          "wgs84_south": south, "wgs84_east": east, "wgs84_north": north}]),
                   tmp_path / "aef_index.parquet")
    chip = footprint(LEFT + 300 * PIXEL, TOP - 300 * PIXEL, 400)  # inside block (1, 1)
    with rasterio.open(path) as dataset:
        needed = sum(dataset.block_size(band, 1, 1) for band in range(1, 65))
    with serve(tmp_path) as server:
        source = cloud(server, tmp_path / "cache", index=str(tmp_path / "aef_index.parquet"))
        before = server.total_sent()
        anchors = sample_anchors(source, chip, 2021, grid_size=4)
        fetched = server.total_sent() - before
    assert anchors.mask.all()
    assert needed <= fetched < 1.05 * needed + 64 * 1024, (fetched, needed)  # the blocks, plus the header


def test_failures_are_clear_and_nothing_half_read_is_kept(release, tmp_path):
    chip = footprint(LEFT + 300, TOP - 300, 150)  # anchors < 20 m apart: full resolution
    with serve(release) as server:
        source = cloud(server, tmp_path)
        server.set(mode="truncate")
        with pytest.raises(ValueError, match="tile0.tiff: cannot read this AlphaEarth file"):
            sample_anchors(source, chip, 2021)
        assert not list((tmp_path / "cache").glob("*.npy"))  # no block from a cut response
        server.set(mode="range")
        missing = release / "2021" / "31N" / "tile0.tiff"
        hidden = missing.with_suffix(".hidden")
        missing.rename(hidden)  # an index row whose file is gone (404)
        try:
            with pytest.raises(ValueError, match="tile0.tiff: cannot read this AlphaEarth file"):
                sample_anchors(cloud(server, tmp_path / "other"), chip, 2021)
        finally:
            hidden.rename(missing)
        outside = sample_anchors(source, footprint(LEFT - 90_000, TOP, 1000), 2021)  # under no tile
        assert not outside.mask.any()
        server.set(mode="ignore-range")  # a 3.5 GB file is never downloaded whole for 50 x 50 pixels
        with pytest.raises(ValueError, match="tile0.tiff: cannot read this AlphaEarth file"):
            sample_anchors(cloud(server, tmp_path / "third"), chip, 2021)
    with pytest.raises(ValueError, match="cannot read the AlphaEarth index"):
        AlphaEarthCloud("http://127.0.0.1:9", cache_dir=tmp_path / "c", http=HttpOptions(timeout=2))


def sar_chip(path, left, top, size_m, pixels=32):
    with rasterio.open(path, "w", driver="GTiff", width=pixels, height=pixels, count=1, dtype="float32", crs=UTM,
                       transform=from_origin(left, top, size_m / pixels, size_m / pixels)) as dataset:
        dataset.write(np.random.default_rng(1).gamma(1, 0.1, (1, pixels, pixels)).astype(np.float32))
        dataset.update_tags(ACQUISITION_START_TIME="2021-06-01T10:00:00")


def test_the_commands_take_the_cloud_source(release, tmp_path, capsys):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from dataset_scripts.cli import main as fusar_data
    from dataset_scripts.loading import load_triplet_dataset
    from processing.anchors import as_anchor_set

    sar_chip(tmp_path / "chip.tif", LEFT + 300, TOP - 300, 150)
    sar_chip(tmp_path / "nowhere.tif", LEFT - 90_000, TOP, 150)
    expected = sample_anchors(AlphaEarthTiles(release), Footprint(UTM, from_origin(LEFT + 300, TOP - 300, 150 / 32,
                                                                                   150 / 32), 32, 32), 2021)
    with serve(release) as server:
        result = subprocess.run([str(Path(sys.executable).with_name("fusar-data")), "anchors", str(tmp_path / "chip.tif"),
                                 "--source", server.url, "--alphaearth-cache", str(tmp_path / "cache"), "--output",
                                 str(tmp_path / "chip.npz")], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        no_model_stack = subprocess.run([sys.executable, "-c", "import sys; from dataset_scripts.cli import main; "
                                         f"main(['anchors', {str(tmp_path / 'chip.tif')!r}, '--source', {server.url!r}, "
                                         f"'--alphaearth-cache', {str(tmp_path / 'cache')!r}, '--output', "
                                         f"{str(tmp_path / 'again.npz')!r}]); print('torch' in sys.modules, "
                                         "'transformers' in sys.modules)"], capture_output=True, text=True, timeout=600)
        assert no_model_stack.stdout.strip().endswith("False False"), no_model_stack.stderr  # seconds of imports saved
        found = int(expected.mask.any(-1).sum())  # the tile's nodata corner covers some of the chip
        assert 0 < found < 64 and f"{found} of 64 anchors with AlphaEarth data, years [2021]" in result.stdout
        anchors = as_anchor_set(tmp_path / "chip.npz", anchor_dim=64)  # what the processor and the Space read
        np.testing.assert_array_equal(anchors.values, expected.values)
        (tmp_path / "scenes.jsonl").write_text("".join(json.dumps({"image": name, "caption": "a scene"}) + "\n"
                                                       for name in ("chip.tif", "nowhere.tif")))
        code = fusar_data(["build", "--jsonl", str(tmp_path / "scenes.jsonl"), "--alphaearth", server.url,
                           "--alphaearth-cache", str(tmp_path / "cache"), "--tasks", "caption", "--split", "train",
                           "--output", str(tmp_path / "data")])
    assert code == 0
    rows = {row["scene_id"]: row for row in load_triplet_dataset(str(tmp_path / "data"))["train"]}
    assert any(any(m) for m in rows["chip"]["anchor_mask"]) and not any(any(m) for m in rows["nowhere"]["anchor_mask"])
    assert "no AlphaEarth data under the footprint" in rows["nowhere"]["source"]  # said, not an error


def test_many_readers_share_one_cache_and_it_stays_within_its_budget(release, tmp_path):
    """Eight threads over the same blocks (a build with parallel readers), then a cache too small for all of them."""
    from concurrent.futures import ThreadPoolExecutor

    chips = [footprint(LEFT + 100 + 37 * i, TOP - 100, 150) for i in range(16)]
    expected = [sample_anchors(AlphaEarthTiles(release), chip, 2021).values for chip in chips]
    with serve(release) as server:
        source = cloud(server, tmp_path)
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda chip: sample_anchors(source, chip, 2021).values, chips))
        assert all(np.array_equal(a, b) for a, b in zip(got, expected))
        assert not list((tmp_path / "cache").glob("*.tmp"))
        import pickle

        copy = pickle.loads(pickle.dumps(source))  # as a parallel build sends it to its worker processes
        assert np.array_equal(sample_anchors(copy, chips[0], 2021).values, expected[0])
        small = cloud(server, tmp_path / "small", cache_bytes=3 * 2**20)  # about three blocks
        for _ in range(2):  # the second pass evicts what the first kept
            sample_anchors(small, footprint(LEFT + 100, TOP - 100, 2500), 2021, grid_size=128)
        assert sum(p.stat().st_size for p in (tmp_path / "small" / "cache").glob("*.npy")) <= 3 * 2**20


def test_a_corrupt_block_or_a_lost_network_is_a_clear_error_per_chip(release, tmp_path):
    import shutil

    chip = footprint(LEFT + 300, TOP - 300, 150)
    damaged = tmp_path / "damaged"
    shutil.copytree(release, damaged)
    tile = damaged / "2021" / "31N" / "tile0.tiff"
    data = bytearray(tile.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 4096] = bytes(4096)  # zeros in the middle of the compressed blocks
    tile.write_bytes(bytes(data))
    with serve(damaged) as server:
        source = cloud(server, tmp_path / "a")
        failures = 0
        for row in range(4):  # one chip in each of the tile's 4 x 4 blocks: some land on the damaged one
            for col in range(4):
                try:
                    sample_anchors(source, footprint(LEFT + 500 + col * 1280, TOP - 500 - row * 1280, 150), 2021)
                except ValueError as error:
                    assert "tile0.tiff: cannot read this AlphaEarth file" in str(error)
                    failures += 1
        assert failures
    with serve(release) as server:
        source = cloud(server, tmp_path / "b")  # the index is read (and kept); then the network goes
    with pytest.raises(ValueError, match="tile0.tiff: cannot read this AlphaEarth file"):
        sample_anchors(source, chip, 2021)


def test_an_s3_release_is_read_unsigned_and_a_gs_one_needs_its_billing_project(release, tmp_path):
    """GDAL's own /vsis3/ reader against the range server as a path-style S3 endpoint on 127.0.0.1, with no AWS
    credentials: read unsigned, as Source Cooperative's public bucket must be (GDAL refused to read without
    credentials before), giving the anchors of the files on disk. A gs:// release without GS_USER_PROJECT (Google's
    bucket is requester-pays) is one line saying what is needed."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from processing.anchors import as_anchor_set

    shutil.copytree(release, tmp_path / "bucket" / "aef")
    sar_chip(tmp_path / "chip.tif", LEFT + 300, TOP - 300, 150)
    expected = sample_anchors(AlphaEarthTiles(release), Footprint(UTM, from_origin(LEFT + 300, TOP - 300, 150 / 32,
                                                                                   150 / 32), 32, 32), 2021)
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "GS_"))}
    env |= {"HOME": str(tmp_path / "home"), "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}

    def anchors(source: str, **more) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).with_name("fusar-data")), "anchors", str(tmp_path / "chip.tif"),
                               "--source", source, "--alphaearth-index", str(release / "aef_index.parquet"),
                               "--alphaearth-cache", str(tmp_path / "cache"), "--output", str(tmp_path / "chip.npz")],
                              capture_output=True, text=True, timeout=600, env=env | more)

    with serve(tmp_path) as server:
        result = anchors("s3://bucket/aef", AWS_S3_ENDPOINT=server.url.removeprefix("http://"))
        assert result.returncode == 0 and server.requests() > 0, result.stderr[-2000:]
    np.testing.assert_array_equal(as_anchor_set(tmp_path / "chip.npz", anchor_dim=64).values, expected.values)
    refused = anchors("gs://alphaearth_foundations/satellite_embedding/v1/annual")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "requester-pays: set GS_USER_PROJECT" in refused.stderr


def test_a_full_resolution_block_is_cached_and_read_back_without_copies_in_memory(tmp_path):
    """The release's blocks are 1024 x 1024 px of 64 bands: 64 MiB decoded. Putting one in the cache streams it to
    disk (three copies in memory before: the .npy in a buffer, then its bytes); reading the points of a chip from it
    loads their pages, not the block."""
    import tracemalloc

    from dataset_scripts.alphaearth_cloud import BlockCache

    block = np.random.default_rng(0).integers(-127, 128, (64, 1024, 1024), dtype=np.int8)
    cache = BlockCache(tmp_path, max_bytes=2**30)
    tracemalloc.start()
    cache.put("block", block)
    after_put = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    rows, cols = np.arange(0, 1024, 128), np.arange(5, 1024, 128)
    points = cache.get("block")[:, rows, cols]
    after_get = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(points, block[:, rows, cols])
    assert after_put < 2**20 and after_get < 2**20, (after_put, after_get)  # under 1 MiB each, for a 64 MiB block
    assert cache.used == sum(p.stat().st_size for p in tmp_path.glob("*.npy"))


def test_gdals_block_cache_is_bounded_unless_the_user_sets_it():
    """GDAL's default is 5% of the machine's memory per process (a harvest worker reached 1.9 GB on 24 GB; 742 MiB
    with this bound, bench_harvest.py); the user's own GDAL_CACHEMAX is kept."""
    import os
    import subprocess
    import sys

    show = "import dataset_scripts.alphaearth_cloud, os; print(os.environ['GDAL_CACHEMAX'])"
    env = {name: value for name, value in os.environ.items() if name != "GDAL_CACHEMAX"}
    assert subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, env=env).stdout == "128\n"
    assert subprocess.run([sys.executable, "-c", show], capture_output=True, text=True,
                          env=env | {"GDAL_CACHEMAX": "512"}).stdout == "512\n"
