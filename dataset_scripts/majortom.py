"""Sentinel-1 RTC patches from Major-TOM (`Major-TOM/Core-S1RTC` on the Hub, CC-BY-SA-4.0), read patch by patch.

The `metadata.parquet` file has one row per patch (`grid_cell`, `product_id`, `timestamp`, `centre_lat`,
`centre_lon`, `nodata`, `parquet_url`, `parquet_row`); each patch is one row group of an `images/*.parquet` file,
whose `vv` and `vh` cells are whole GeoTIFFs (linear power, float32, the cell's UTM CRS). A patch is read by range
requests for its row group's two columns (fsspec's parquet reader over `HfFileSystem`, so `HF_ENDPOINT` and the
token apply), never the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.io import MemoryFile

REPO = "Major-TOM/Core-S1RTC"
LICENSE = "CC-BY-SA-4.0"
ATTRIBUTION = "Major TOM Core-S1RTC (ESA Phi-lab, CC-BY-SA-4.0); contains modified Copernicus Sentinel-1 data"
METADATA_COLUMNS = ["grid_cell", "product_id", "timestamp", "centre_lat", "centre_lon", "nodata", "parquet_url",
                    "parquet_row"]
RESOLVE_URL = re.compile(r"^https?://[^/]+/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
# Sentinel-1 product names: S1A_IW_GRDH_1SDV_<start>_<stop>_<absolute orbit>_<datatake>_<id>
PRODUCT_NAME = re.compile(r"^(?P<platform>S1[A-D])_\w\w_\w{4}_\w{4}_\d{8}T\d{6}_\d{8}T\d{6}_(?P<orbit>\d{6})_")


@dataclass(frozen=True)
class Patch:
    """One metadata row: what a worker needs to fetch and describe the patch."""

    grid_cell: str
    product_id: str
    timestamp: str  # ISO 8601
    centre_lat: float
    centre_lon: float
    nodata: float
    parquet_url: str
    parquet_row: int

    @property
    def date(self) -> str:
        return self.timestamp[:10]

    @property
    def year(self) -> int:
        return int(self.timestamp[:4])

    def orbit(self) -> dict:
        """Platform and absolute orbit from the product name, where it is a standard Sentinel-1 name."""
        match = PRODUCT_NAME.match(self.product_id)
        return {"platform": match["platform"], "absolute_orbit": int(match["orbit"])} if match else {}


def parse_timestamp(value, where: str) -> str:
    """ISO 8601 from the forms the metadata may hold: a datetime, `2021-06-03 10:20:30`, `20210603T102030`."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(timespec="seconds")
    text = str(value).strip()
    for parse in (datetime.fromisoformat, lambda t: datetime.strptime(t, "%Y%m%dT%H%M%S")):
        try:
            return parse(text.replace("Z", "")).replace(tzinfo=None).isoformat(timespec="seconds")
        except ValueError:
            continue
    raise ValueError(f"{where}: timestamp {text!r} is not a date (expected ISO 8601 or YYYYMMDDTHHMMSS)")


def source_path(source: str, relative: str) -> str:
    """A file of the source: a local folder's file, else `hf://datasets/<repo>/<relative>`."""
    if Path(source).is_dir():
        return str(Path(source) / relative)
    return f"hf://datasets/{source}/{relative}"


def file_of(url: str, source: str) -> str:
    """Where to read a patch's parquet file: a Hub `resolve` URL becomes an `hf://` path (the client's endpoint and
    token apply); with a local source the file is the one of the same relative path under it."""
    match = RESOLVE_URL.match(url)
    if match is None:
        raise ValueError(f"metadata parquet_url {url!r}: expected https://<hub>/datasets/<repo>/resolve/<rev>/<path>")
    if Path(source).is_dir():
        return str(Path(source) / match["path"])
    return f"hf://datasets/{match['repo']}@{match['revision']}/{match['path']}"


def read_metadata(source: str) -> list[Patch]:
    """Every patch the source's `metadata.parquet` lists (only the columns needed are read)."""
    import pyarrow.parquet as pq

    location = source_path(source, "metadata.parquet")
    try:
        if location.startswith("hf://"):  # only the needed columns' byte ranges are fetched
            from fsspec.parquet import open_parquet_file
            from huggingface_hub import HfFileSystem

            with open_parquet_file(location.removeprefix("hf://"), fs=HfFileSystem(), columns=METADATA_COLUMNS,
                                   engine="pyarrow") as file:
                table = pq.ParquetFile(file, pre_buffer=False).read(columns=METADATA_COLUMNS, use_threads=False)
        else:
            table = pq.read_table(location, columns=METADATA_COLUMNS)
    except Exception as error:  # network, missing repo or file, not parquet, missing columns
        raise ValueError(f"{location}: cannot read the Major-TOM metadata ({type(error).__name__}: {error}); "
                         f"expected columns {METADATA_COLUMNS}") from error
    rows = table.to_pylist()
    return [Patch(**{**row, "timestamp": parse_timestamp(row["timestamp"], f"{location} row {n}"),
                     "parquet_row": int(row["parquet_row"]), "nodata": float(row["nodata"] or 0)})
            for n, row in enumerate(rows)]


@dataclass
class PatchData:
    vv: np.ndarray  # [H, W] float32 linear power, NaN where the file says nodata
    vh: np.ndarray
    crs: rasterio.crs.CRS
    transform: rasterio.Affine


def read_patch(patch: Patch, source: str) -> PatchData:
    """The patch's VV and VH GeoTIFFs from its row group. Network failures raise OSError / ValueError naming the
    file; a row group that holds no readable GeoTIFF is `CorruptPatch` (the build skips it and lists it)."""
    import pyarrow.parquet as pq
    from fsspec.parquet import open_parquet_file

    path = file_of(patch.parquet_url, source)
    fs = None
    if path.startswith("hf://"):
        from huggingface_hub import HfFileSystem

        fs, path = HfFileSystem(), path.removeprefix("hf://")
    try:
        with open_parquet_file(path, fs=fs, columns=["product_id", "vv", "vh"], row_groups=[patch.parquet_row],
                               engine="pyarrow") as file:
            table = pq.ParquetFile(file, pre_buffer=False).read_row_group(patch.parquet_row, use_threads=False,
                                                                          columns=["product_id", "vv", "vh"])
    except (OSError, ValueError, IndexError) as error:
        raise ValueError(f"{patch.parquet_url} row group {patch.parquet_row}: cannot read it "
                         f"({type(error).__name__}: {error})") from error
    row = table.to_pylist()[0]
    if row["product_id"] != patch.product_id:
        raise CorruptPatch(f"row group {patch.parquet_row} of {patch.parquet_url} holds {row['product_id']}, the "
                           f"metadata says {patch.product_id}")
    bands = [geotiff(row[name], f"{patch.product_id} {name}") for name in ("vv", "vh")]
    (vv, crs, transform), (vh, crs_vh, transform_vh) = bands
    if vv.shape != vh.shape or crs != crs_vh or transform != transform_vh:
        raise CorruptPatch(f"{patch.product_id}: vv and vh are not on one grid")
    return PatchData(vv, vh, crs, transform)


class CorruptPatch(ValueError):
    """A patch whose bytes were fetched but are not what they should be: skipped and listed, never fatal."""


def geotiff(data: bytes | None, where: str):
    if not data:
        raise CorruptPatch(f"{where}: empty")
    try:
        with MemoryFile(data) as memory, memory.open() as dataset:
            values = dataset.read(1).astype(np.float32)
            if dataset.nodata is not None:
                values[values == dataset.nodata] = np.nan
            if dataset.crs is None:
                raise CorruptPatch(f"{where}: not georeferenced")
            return values, dataset.crs, dataset.transform
    except rasterio.errors.RasterioError as error:
        raise CorruptPatch(f"{where}: not a readable GeoTIFF ({error})") from error


def select(patches: list[Patch], bbox=None, polygon=None, start: str | None = None, end: str | None = None,
           max_nodata: float = 1.0) -> list[Patch]:
    """The patches whose centre lies in the region and whose date lies in [start, end] (ISO dates, inclusive), with
    at most `max_nodata` of nodata; in a stable spread order (a hash of grid cell and product), so that a limit takes
    patches from across the region, the same ones on every run."""
    import hashlib

    lats = np.array([p.centre_lat for p in patches], dtype=np.float64)
    lons = np.array([p.centre_lon for p in patches], dtype=np.float64)
    keep = np.ones(len(patches), bool)
    if bbox is not None:
        west, south, east, north = bbox
        keep &= (lons >= west) & (lons <= east) & (lats >= south) & (lats <= north)
    if polygon is not None:
        keep &= polygon.contains(lons, lats)
    dates = np.array([p.date for p in patches])
    if start:
        keep &= dates >= start
    if end:
        keep &= dates <= end
    keep &= np.array([p.nodata <= max_nodata for p in patches], bool)
    chosen = [p for p, k in zip(patches, keep) if k]
    return sorted(chosen, key=lambda p: hashlib.sha1(f"{p.grid_cell}/{p.product_id}".encode()).hexdigest())


class Region:
    """A GeoJSON (Multi)Polygon in lon/lat, holes honoured: `contains(lons, lats)` (matplotlib's point-in-path)."""

    def __init__(self, path):
        from matplotlib.path import Path as Outline

        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable GeoJSON file ({error})") from error
        geometries = [f["geometry"] for f in data["features"]] if data.get("type") == "FeatureCollection" else \
            [data["geometry"]] if data.get("type") == "Feature" else [data]
        self.polygons = []
        for geometry in geometries:
            kind = (geometry or {}).get("type")
            if kind not in ("Polygon", "MultiPolygon"):
                raise ValueError(f"{path}: the region must be a Polygon or MultiPolygon, got {kind!r}")
            for rings in [geometry["coordinates"]] if kind == "Polygon" else geometry["coordinates"]:
                self.polygons.append([Outline(np.asarray(ring, dtype=np.float64)[:, :2]) for ring in rings])
        self.bounds = tuple(f(np.concatenate([r.vertices for p in self.polygons for r in p])[:, i])
                            for f, i in ((np.min, 0), (np.min, 1), (np.max, 0), (np.max, 1)))

    def contains(self, lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
        points = np.stack([lons, lats], -1)
        inside = np.zeros(len(points), bool)
        for exterior, *holes in self.polygons:
            here = exterior.contains_points(points)
            for hole in holes:
                here &= ~hole.contains_points(points)
            inside |= here
        return inside
