"""Replicas of the three public sources `fusar-data harvest` reads, in their real layouts, from real data:

- Major-TOM Core-S1RTC: `metadata.parquet` and `images/part_00000.parquet` (one row group per patch, `vv` / `vh` as
  whole GeoTIFFs in linear power, float32, UTM). The backscatter is the real Sentinel-1 VV/VH of the shared
  Sen1Floods11 chip (Spain), put on a 1,068 px UTM 30N grid at 10 m (mirrored beyond its 5 km) and converted
  from dB; patch B is the same scene placed one grid cell east.
- ESA WorldCover 2021 and 2020: the 3-degree tile `N36W003` (EPSG:4326, 1/12000 degree, tiled, sparse: only the blocks under
  the patches are written) and the tile grid. Classes under the patches come from the same chip's real labels
  (hand-labelled water) and its Sentinel-2 NDVI.
- AlphaEarth: an int8 64-band tile under patch A and the release index; each pixel holds a real AlphaEarth vector
  (shared `aef_points`) of the Dynamic World class matching its WorldCover class.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.warp import reproject, transform as transform_points, transform_bounds
from rasterio.windows import Window

from dataset_scripts.alphaearth import quantize

PATCH, PIXEL, UTM = 1068, 10.0, CRS.from_epsg(32630)
HUB_URL = "https://huggingface.co/datasets/Major-TOM/Core-S1RTC/resolve/main/images/part_00000.parquet"
WORLDCOVER_TILE = "v200/2021/map/ESA_WorldCover_10m_2021_v200_N36W003_Map.tif"
# WorldCover class -> Dynamic World label of the AlphaEarth points (water, trees, grass, flooded_vegetation, crops,
# shrub_and_scrub, built, bare)
DYNAMIC_WORLD = {80: 0, 10: 1, 30: 2, 90: 3, 40: 4, 20: 5, 50: 6, 60: 7}


def scene_on_utm_grid(shared: Path):
    """(VV dB, VH dB, classes) of the real chip on a 1,068 px UTM grid at 10 m, and the grid's top-left corner."""
    folder = shared / "sen1floods11"
    with rasterio.open(folder / "Spain_7370579_S1Hand.tif") as s1, \
            rasterio.open(folder / "Spain_7370579_LabelHand.tif") as label, \
            rasterio.open(folder / "Spain_7370579_S2Hand.tif") as s2:
        west, south, east, north = s1.bounds
        (x,), (y,) = transform_points("EPSG:4326", UTM, [(west + east) / 2], [(south + north) / 2])
        left, top = round(x / PIXEL) * PIXEL - 190 * PIXEL, round(y / PIXEL) * PIXEL + 190 * PIXEL
        size = 380  # inside the real data (4 x 5 km), then mirrored to the patch
        grid = from_origin(left, top, PIXEL, PIXEL)
        out = np.full((5, size, size), np.nan, np.float32)
        for index, (dataset, band) in enumerate(((s1, 1), (s1, 2), (label, 1), (s2, 4), (s2, 8))):
            reproject(rasterio.band(dataset, band), out[index], dst_transform=grid, dst_crs=UTM,
                      resampling=Resampling.nearest, dst_nodata=np.nan)
    vv, vh, water, red, nir = out
    ndvi = (nir - red) / np.maximum(nir + red, 1)
    classes = np.select([water == 1, ndvi > 0.5, ndvi > 0.3, ndvi > 0.15, ndvi > 0.08], [80, 10, 40, 30, 60], 50)
    pad = ((0, PATCH - size), (0, PATCH - size))
    mirrored = [np.pad(a, pad, mode="symmetric") for a in (vv, vh, classes.astype(np.uint8))]
    return (*mirrored, left, top)


def geotiff_bytes(power: np.ndarray, left: float, top: float) -> bytes:
    with MemoryFile() as memory:
        with memory.open(driver="GTiff", width=PATCH, height=PATCH, count=1, dtype="float32", crs=UTM,
                         transform=from_origin(left, top, PIXEL, PIXEL), compress="deflate", predictor=3,
                         nodata=0.0) as dataset:
            dataset.write(power[None])
        return memory.read()


def write_majortom(root: Path, patches: list[dict]) -> None:
    """`patches`: {grid_cell, product_id, timestamp, vv, vh (bytes), centre_lat, centre_lon, nodata}."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = pa.Table.from_pylist([{"product_id": p["product_id"], "grid_cell": p["grid_cell"],
                                    "product_datetime": p["timestamp"], "thumbnail": {"bytes": b"", "path": None},
                                    "vv": p["vv"], "vh": p["vh"]} for p in patches])
    pq.write_table(images, root / "images" / "part_00000.parquet", row_group_size=1)
    metadata = [{"grid_cell": p["grid_cell"], "grid_row_u": 0, "grid_col_r": 0, "product_id": p["product_id"],
                 "timestamp": p["timestamp"], "centre_lat": p["centre_lat"], "centre_lon": p["centre_lon"],
                 "crs": "EPSG:32630", "nodata": p["nodata"], "parquet_url": HUB_URL, "parquet_row": row}
                for row, p in enumerate(patches)]
    pq.write_table(pa.Table.from_pylist(metadata), root / "metadata.parquet")


def write_worldcover(root: Path, patches: list[tuple[np.ndarray, float, float]]) -> Path:
    """The N36W003 tile with the classes of each (classes, left, top) patch, and the grid listing it."""
    path = root / WORLDCOVER_TILE
    path.parent.mkdir(parents=True, exist_ok=True)
    degree = 1 / 12000
    transform = from_origin(-3, 39, degree, degree)
    with rasterio.open(path, "w", driver="GTiff", width=36000, height=36000, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=transform, tiled=True, blockxsize=1024, blockysize=1024,
                       compress="deflate", nodata=0, sparse_ok=True) as dataset:
        for classes, left, top in patches:
            west, south, east, north = transform_bounds(UTM, "EPSG:4326", left, top - PATCH * PIXEL,
                                                        left + PATCH * PIXEL, top)
            window = dataset.window(west, south, east, north).round_offsets().round_lengths()
            part = np.zeros((int(window.height), int(window.width)), np.uint8)
            reproject(classes, part, src_transform=from_origin(left, top, PIXEL, PIXEL), src_crs=UTM,
                      dst_transform=dataset.window_transform(window), dst_crs="EPSG:4326",
                      resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
            dataset.write(part[None], window=window)
    grid = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"ll_tile": "N36W003"},
         "geometry": {"type": "Polygon", "coordinates": [[[-3, 36], [0, 36], [0, 39], [-3, 39], [-3, 36]]]}}]}
    (root / "v200" / "2021" / "esa_worldcover_2021_grid.geojson").write_text(json.dumps(grid))
    earlier = root / WORLDCOVER_TILE.replace("v200", "v100").replace("2021", "2020")  # the 2020 map: same classes here
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_bytes(path.read_bytes())
    return path


def write_alphaearth(root: Path, classes: np.ndarray, left: float, top: float, shared: Path, year: int = 2021,
                     release_geometry: bool = False) -> None:
    """The tile under patch A. `release_geometry`: as the public release's files are, 8192 x 8192 px in 1024-px blocks,
    one plane per band, overviews down to one pixel, with patch A 2048 px in from its corner (the rest nodata, not
    written: a sparse file); else a small tile of the patch alone (256-px blocks, pixel-interleaved)."""
    import csv

    vectors = {label: [] for label in range(9)}
    for name in ("amazon_forest", "california_coast", "iowa_ag"):
        with open(shared / "aef_points" / f"{name}.csv") as file:
            for row in csv.DictReader(file):
                vectors[int(row["dw_label"])].append([float(row[f"A{i:02d}"]) for i in range(64)])
    table = {code: np.asarray(vectors[label], np.float32) for code, label in DYNAMIC_WORLD.items()}
    rows, cols = np.indices(classes.shape)
    pick = (rows // 8 * 7919 + cols // 8) % 50  # a vector per 80 m block: texture, not one value per class
    values = np.zeros((*classes.shape, 64), np.float32)
    for code, options in table.items():
        here = classes == code
        values[here] = options[pick[here] % len(options)]
    path = root / str(year) / "30N" / "tile.tiff"
    path.parent.mkdir(parents=True, exist_ok=True)
    side, block, offset = (8192, 1024, 2048) if release_geometry else (PATCH, 256, 0)
    left, top = left - offset * PIXEL, top + offset * PIXEL
    layout = {"interleave": "band", "sparse_ok": True} if release_geometry else {}
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=64, dtype="int8", crs=UTM,
                       transform=from_origin(left, top, PIXEL, PIXEL), tiled=True, blockxsize=block, blockysize=block,
                       compress="deflate", nodata=-128, **layout) as dataset:
        dataset.write(np.moveaxis(quantize(values), -1, 0), window=Window(offset, offset, PATCH, PATCH))
        if release_geometry:
            dataset.build_overviews([2**level for level in range(1, 14)], Resampling.average)
    west, south, east, north = transform_bounds(UTM, "EPSG:4326", left, top - side * PIXEL, left + side * PIXEL, top)
    ring = [(west, south), (east, south), (east, north), (west, north), (west, south)]
    wkb = struct.pack("<BIII", 1, 3, 1, len(ring)) + b"".join(struct.pack("<dd", *p) for p in ring)
    pq.write_table(pa.Table.from_pylist([{"path": f"s3://bucket/aef/v1/annual/{year}/30N/tile.tiff", "year": year,
                                          "wgs84_west": west, "wgs84_south": south, "wgs84_east": east,
                                          "wgs84_north": north, "geometry": wkb}]), root / "aef_index.parquet")


def build(root: Path, shared: Path, repeats: int = 0, release_geometry: bool = False) -> dict:
    """All three replicas under `root` (majortom/, worldcover/, alphaearth/); returns what the tests compare with.
    `repeats` adds that many later acquisitions of patches A and B (for benchmarks); `release_geometry` writes the
    AlphaEarth tile as the release's files are (see `write_alphaearth`)."""
    vv_db, vh_db, classes, left, top = scene_on_utm_grid(shared)
    power = [np.where(np.isfinite(db), 10 ** (db / 10), 0).astype(np.float32) for db in (vv_db, vh_db)]
    shift = PATCH * PIXEL  # patch B: the next grid cell east
    corrupt = dict(vv=b"II*\x00 not a geotiff", vh=b"II*\x00 not a geotiff")
    specs = [("A", left, top, "2021-06-03 06:20:15", 0.0, {}), ("B", left + shift, top, "2021-06-15 18:05:01", 0.0, {}),
             ("C", left + 2 * shift, top, "2021-07-01 06:20:15", 0.0, corrupt),  # a row group that is not GeoTIFFs
             ("D", left, top, "2019-05-02 06:20:15", 0.0, {}),  # another year, same place
             ("E", left + shift, top, "2021-08-01 06:20:15", 0.4, {})]  # 40% nodata in the metadata
    for number in range(repeats):
        specs += [(f"A{number}", left, top, f"2021-09-{number % 28 + 1:02d} 06:20:15", 0.0, {}),
                  (f"B{number}", left + shift, top, f"2021-10-{number % 28 + 1:02d} 18:05:01", 0.0, {})]
    patches = []
    for name, x, y, timestamp, nodata, override in specs:
        (lon,), (lat,) = transform_points(UTM, "EPSG:4326", [x + shift / 2], [y - shift / 2])
        date = timestamp[:10].replace("-", "")
        patches.append({"grid_cell": f"420U_{490 + round((x - left) / shift)}L",
                        "product_id": f"S1A_IW_GRDH_1SDV_{date}T062015_{date}T062040_{38000 + len(patches):06d}_04B2C3_9F1{name}",
                        "timestamp": timestamp, "centre_lat": lat, "centre_lon": lon, "nodata": nodata,
                        "vv": geotiff_bytes(power[0], x, y), "vh": geotiff_bytes(power[1], x, y), **override})
    write_majortom(root / "majortom", patches)
    write_worldcover(root / "worldcover", [(classes, left, top), (classes, left + shift, top)])
    write_alphaearth(root / "alphaearth", classes, left, top, shared, release_geometry=release_geometry)
    return {"patches": patches, "left": left, "top": top, "classes": classes}
