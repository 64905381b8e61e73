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
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.io import MemoryFile

from command_line import HUB_ID

REPO = "Major-TOM/Core-S1RTC"
PATCH_PIXELS = 1068  # every Core-S1RTC patch: 1,068 x 1,068 px at 10 m
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
    """A file of the source: a local folder's file, else `hf://datasets/<repo>/<relative>`; a source that is neither
    a folder nor a Hub id (`<owner>/<name>`) is refused at once."""
    if Path(source).is_dir():
        return str(Path(source) / relative)
    if not HUB_ID.fullmatch(source) or Path(source).exists():
        raise ValueError(f"--source {source}: no such folder, and not a Hub dataset id (<owner>/<name>)")
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

            opened = open_parquet_file(location.removeprefix("hf://"), fs=HfFileSystem(), columns=METADATA_COLUMNS,
                                       engine="pyarrow")
        else:
            opened = open(location, "rb")
        with opened as file:
            parquet = pq.ParquetFile(file, pre_buffer=False)
            missing = [name for name in METADATA_COLUMNS if name not in parquet.schema_arrow.names]
            table = None if missing else parquet.read(columns=METADATA_COLUMNS, use_threads=False)
    except Exception as error:  # network, missing repo or file, not parquet
        raise ValueError(f"{location}: cannot read the Major-TOM metadata ({type(error).__name__}: {error}); "
                         f"expected a parquet file with columns {METADATA_COLUMNS}") from error
    if missing:
        raise ValueError(f"{location}: the Major-TOM metadata lacks the columns {missing}")
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
    """The patch's VV and VH GeoTIFFs from its row group. A patch that cannot be had (its file or row group absent,
    a 4xx answer, bytes that are not a patch's GeoTIFFs) is `CorruptPatch`: the harvest skips and lists it. Other
    failures (the network, a 5xx) raise ValueError naming the file: the shard fails, and a rerun tries it again."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fsspec.parquet import open_parquet_file

    path = file_of(patch.parquet_url, source)
    shown, fs = path, None
    if path.startswith("hf://"):
        from huggingface_hub import HfFileSystem

        fs, path = HfFileSystem(), path.removeprefix("hf://")
    where = f"{shown} row group {patch.parquet_row}"
    try:
        with open_parquet_file(path, fs=fs, columns=["product_id", "vv", "vh"], row_groups=[patch.parquet_row],
                               engine="pyarrow") as file:
            table = pq.ParquetFile(file, pre_buffer=False).read_row_group(patch.parquet_row, use_threads=False,
                                                                          columns=["product_id", "vv", "vh"])
    except (FileNotFoundError, PermissionError, IndexError, pa.ArrowInvalid) as error:  # (no such row group: Arrow's)
        raise CorruptPatch(f"{where}: cannot be read ({type(error).__name__}: {error})") from error
    except (OSError, ValueError) as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status is not None and 400 <= status < 500:
            raise CorruptPatch(f"{where}: the server answers HTTP {status}") from error
        raise ValueError(f"{where}: cannot read it ({type(error).__name__}: {error})") from error
    row = table.to_pylist()[0]
    if row["product_id"] != patch.product_id:
        raise CorruptPatch(f"{where} holds {row['product_id']}, the metadata says {patch.product_id}")
    bands = [geotiff(row[name], f"{patch.product_id} {name}") for name in ("vv", "vh")]
    (vv, crs, transform), (vh, crs_vh, transform_vh) = bands
    if crs != crs_vh or transform != transform_vh:
        raise CorruptPatch(f"{patch.product_id}: vv and vh are not on one grid")
    return PatchData(vv, vh, crs, transform)


class CorruptPatch(ValueError):
    """A patch whose bytes were fetched but are not what they should be: skipped and listed, never fatal."""


def geotiff(data: bytes | None, where: str):
    """One band's values, its CRS and transform. Its size is read from the header first: a file that claims more
    (60,000 x 60,000 px in 440 kB would decode to 13 GiB) or less than a patch is refused before any pixel."""
    if not data:
        raise CorruptPatch(f"{where}: empty")
    try:
        with MemoryFile(data) as memory, memory.open() as dataset:
            if (dataset.width, dataset.height) != (PATCH_PIXELS, PATCH_PIXELS):
                raise CorruptPatch(f"{where}: {dataset.width} x {dataset.height} px, a Major-TOM patch is "
                                   f"{PATCH_PIXELS} x {PATCH_PIXELS}")
            if dataset.crs is None:
                raise CorruptPatch(f"{where}: not georeferenced")
            values = dataset.read(1, out_dtype=np.float32)
            if dataset.nodata is not None:
                values[values == dataset.nodata] = np.nan
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
        across = west > east  # across the 180th meridian: from west to 180, and from -180 to east
        keep &= ((lons >= west) | (lons <= east) if across else (lons >= west) & (lons <= east))
        keep &= (lats >= south) & (lats <= north)
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
    """A GeoJSON (Multi)Polygon in lon/lat (a geometry, a Feature or a FeatureCollection of them), holes honoured,
    checked with shapely: anything else, or an invalid polygon, is one line naming the file and what is wrong."""

    def __init__(self, path):
        import shapely
        from shapely.geometry import shape
        from shapely.validation import explain_validity

        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable GeoJSON file ({error})") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a GeoJSON object (a Polygon, MultiPolygon, Feature or "
                             f"FeatureCollection), got a JSON {type(data).__name__}")
        if data.get("type") == "FeatureCollection":
            features = data.get("features")
            if not isinstance(features, list) or not features:
                raise ValueError(f"{path}: a FeatureCollection without features")
            geometries = [f.get("geometry") if isinstance(f, dict) else None for f in features]
        else:
            geometries = [data.get("geometry")] if data.get("type") == "Feature" else [data]
        polygons = []
        for number, geometry in enumerate(geometries):
            where = f"{path}: geometry {number}" if len(geometries) > 1 else f"{path}:"
            kind = geometry.get("type") if isinstance(geometry, dict) else None
            if kind not in ("Polygon", "MultiPolygon"):
                raise ValueError(f"{where} the region must be a Polygon or MultiPolygon, got {kind!r}")
            try:
                with warnings.catch_warnings():  # NaN coordinates: numpy's warning; explain_validity names them
                    warnings.simplefilter("ignore", RuntimeWarning)
                    polygon = shape(geometry)
            except Exception:  # shapely's and numpy's errors for ragged, nested wrongly or short rings
                raise ValueError(f"{where} its coordinates are not {kind} rings of [lon, lat] points") from None
            if polygon.is_empty or not polygon.is_valid:
                reason = "it is empty" if polygon.is_empty else explain_validity(polygon)
                raise ValueError(f"{where} not a valid {kind}: {reason}")
            west, south, east, north = polygon.bounds
            if not (-180 <= west and east <= 180 and -90 <= south and north <= 90):
                raise ValueError(f"{where} reaches beyond longitudes [-180, 180] or latitudes [-90, 90] (bounds "
                                 f"{west:g} {south:g} {east:g} {north:g}): a region is in lon/lat degrees")
            polygons.append(polygon)
        self.geometry = shapely.union_all(polygons)
        self.bounds = self.geometry.bounds

    def contains(self, lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
        import shapely

        return shapely.contains_xy(self.geometry, lons, lats)
