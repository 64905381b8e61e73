"""Dataset pipeline speed, measured in one process.

(1) anchor sampling from a large int8 AlphaEarth tile: chips per second, and bytes read per chip against the
    tile's size (reads are windowed, so the ratio stays tiny);
(2) the same chips from the same tile served over HTTP (a local server with range requests, in its own process)
    through the release's index: chips per second and bytes fetched per chip, cold and warm block cache, with 1 and
    8 parallel readers;
(3) build throughput of the simulated dataset: scenes per second with 1 and 2 worker processes.

Run: python benchmarks/bench_dataset.py  (add --quick for a fast smoke run)
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

import dataset_scripts.alphaearth as alphaearth
from dataset_scripts.alphaearth import AlphaEarthTiles, Footprint, quantize, sample_anchors
from dataset_scripts.simulate import simulate


class CountingFile(io.FileIO):
    total = 0

    def read(self, size=-1):
        data = super().read(size)
        CountingFile.total += len(data)
        return data

    def readinto(self, buffer):
        count = super().readinto(buffer)
        CountingFile.total += count
        return count


def write_tile(path: Path, side: int) -> None:
    """A `side` x `side` 64-band int8 tile in UTM 31N, COG-like 256 x 256 blocks, written in strips of rows."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=64, dtype="int8", crs="EPSG:32631",
                       transform=from_origin(500_000, 5_000_000, 10, 10), nodata=-128, tiled=True,
                       blockxsize=256, blockysize=256) as dataset:
        vectors = rng.normal(size=(256, 64))
        codes = quantize(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        for top in range(0, side, 256):
            rows = min(256, side - top)
            block = codes[rng.integers(0, 256, (rows, side))].transpose(2, 0, 1)
            dataset.write(block, window=rasterio.windows.Window(0, top, side, rows))


def anchor_sampling(root: Path, side: int, chips: int) -> None:
    tile = next(root.rglob("*.tiff"))
    size = tile.stat().st_size
    rng = np.random.default_rng(1)
    source = AlphaEarthTiles(root)
    source.tiles(2024)  # headers once, as a long build would
    original = alphaearth._open
    alphaearth._open = lambda path: rasterio.open(path, opener=lambda p, mode="rb": CountingFile(p, mode))
    try:
        CountingFile.total = 0
        start = time.perf_counter()
        for _ in range(chips):  # 512 x 512 SAR pixels at 1 m: 51 x 51 AlphaEarth pixels
            x, y = 500_000 + rng.uniform(0, side * 10 - 520), 5_000_000 - rng.uniform(0, side * 10 - 520)
            footprint = Footprint(CRS.from_epsg(32631), from_origin(x, y, 1, 1), 512, 512)
            assert sample_anchors(source, footprint, 2024).mask.all()
        seconds = time.perf_counter() - start
    finally:
        alphaearth._open = original
    per_chip = CountingFile.total / chips
    print(f"(1) anchor sampling: {chips / seconds:7.1f} chips/s (8 x 8 anchors each) from a {side} x {side} x 64 tile "
          f"of {size / 2**20:.0f} MiB; {per_chip / 2**10:.0f} KiB read per chip = {per_chip / size:.2%} of the tile")


def cloud_sampling(root: Path, side: int, chips: int, cache: Path) -> None:
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq
    from rasterio.warp import transform_bounds

    from dataset_scripts.alphaearth_cloud import AlphaEarthCloud

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from range_server import serve

    west, south, east, north = transform_bounds("EPSG:32631", "EPSG:4326", 500_000, 5_000_000 - side * 10,
                                                500_000 + side * 10, 5_000_000)
    pq.write_table(pa.Table.from_pylist([{"fid": 0, "path": "2024/31N/tile.tiff", "year": 2024, "wgs84_west": west,
                                          "wgs84_south": south, "wgs84_east": east, "wgs84_north": north}]),
                   root / "aef_index.parquet")
    rng = np.random.default_rng(1)
    corners = [(500_000 + rng.uniform(0, side * 10 - 520), 5_000_000 - rng.uniform(0, side * 10 - 520))
               for _ in range(chips)]
    block = 256 * 256 * 64  # one uncompressed block of the tile, bytes
    with serve(root) as server:
        for readers in (1, 8):
            source = AlphaEarthCloud(server.url, cache_dir=cache / str(readers))
            for state in ("cold", "warm"):
                before, start = server.total_sent(), time.perf_counter()
                with ThreadPoolExecutor(readers) as pool:
                    list(pool.map(lambda corner: sample_anchors(
                        source, Footprint(CRS.from_epsg(32631), from_origin(*corner, 1, 1), 512, 512), 2024), corners))
                seconds, fetched = time.perf_counter() - start, (server.total_sent() - before) / chips
                print(f"(2) cloud, {readers} reader{'s' if readers > 1 else ''}, {state} cache: {chips / seconds:7.1f} "
                      f"chips/s, {fetched / 2**10:6.0f} KiB fetched per chip ({fetched / block:.2f} blocks)")


def build_throughput(scenes: int, folder: Path) -> None:
    rates = {}
    for workers in (1, 2):
        start = time.perf_counter()
        simulate(folder / f"sim-{workers}", scenes=scenes, num_proc=workers)
        rates[workers] = scenes / (time.perf_counter() - start)
    print(f"(3) simulated build: {rates[1]:.1f} scenes/s with 1 process, {rates[2]:.1f} with 2 "
          f"({rates[2] / rates[1]:.2f}x); about 5 rows per scene")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    side, chips, scenes = (1024, 20, 60) if args.quick else (2048, 200, 300)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "aef"
        write_tile(root / "2024" / "31N" / "tile.tiff", side)
        anchor_sampling(root, side, chips)
        cloud_sampling(root, side, chips, Path(folder) / "cache")
        build_throughput(scenes, Path(folder))


if __name__ == "__main__":
    main()
