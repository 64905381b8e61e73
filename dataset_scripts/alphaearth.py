"""AlphaEarth Foundations embeddings (Google Satellite Embedding V1) read at anchor points.

Sources:
- `AlphaEarthTiles(root)`: the official int8 Cloud-Optimised GeoTIFF release,
  `<root>[/satellite_embedding/v1/annual]/<year>/<utm zone><N|S>/*.tiff`, 64 bands, local UTM CRS,
  -128 = nodata in all bands, de-quantised as `sign(v) * (|v| / 127.5) ** 2`; top-down or bottom-up
  geotransforms (a public mirror serves the latter).
- `AlphaEarthGeoTIFF(path, year)`: a float export from Earth Engine (bands A00..A63, any CRS).
(The authors' per-sample `.npz` files are read by `processing.anchors.as_anchor_set`.)

`sample_anchors(source, footprint, years)` places a grid of anchors over an image's footprint and reads
one vector per anchor and year, crossing tile and UTM-zone boundaries. Reads are windowed point reads:
the bytes read grow with the number of anchors, never with the size of a tile.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform as transform_points

from processing.anchors import AnchorSet, grid_positions

DIM = 64
NODATA = -128
ATTRIBUTION = "The AlphaEarth Foundations Satellite Embedding dataset is produced by Google and Google DeepMind."
LICENSE = "CC-BY-4.0"
ZONE_FOLDER = re.compile(r"^(\d{1,2})([NS])$")


def dequantize(values: np.ndarray) -> np.ndarray:
    """int8 release values -> float32 embeddings; NaN where the pixel is nodata (-128 in every band).

    values: [..., 64] int8 (bands last)."""
    values = np.asarray(values)
    if values.dtype != np.int8:
        raise ValueError(f"AlphaEarth release values are int8, got {values.dtype}")
    out = (np.sign(values) * (np.abs(values.astype(np.float64)) / 127.5) ** 2).astype(np.float32)
    out[(values == NODATA).all(-1)] = np.nan
    return out


def quantize(embeddings: np.ndarray) -> np.ndarray:
    """The inverse of `dequantize` (up to rounding): float [..., 64] -> int8, NaN -> -128 in all bands."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    invalid = ~np.isfinite(embeddings).all(-1)
    values = np.sign(embeddings) * np.round(np.sqrt(np.abs(np.nan_to_num(embeddings))) * 127.5)
    values = np.clip(values, -127, 127).astype(np.int8)
    values[invalid] = NODATA
    return values


@dataclass(frozen=True)
class Footprint:
    """Where an image lies: its pixel grid (`height` x `width`) placed by `transform` in `crs`."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    def points(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates (x, y in `crs`) of positions given as (row, col) fractions of the image: position 0 and 1
        are the centres of the first and last pixel. In float64: float32 map coordinates are off by up to 0.5 m in
        a UTM northing, enough to read the neighbouring 10 m pixel."""
        positions = np.asarray(positions, dtype=np.float64)
        rows = positions[:, 0] * (self.height - 1) + 0.5
        cols = positions[:, 1] * (self.width - 1) + 0.5
        xs, ys = self.transform @ (cols, rows)
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)

    def size_m(self) -> tuple[float, float]:
        """(width, height) on the ground in metres (geographic: a degree of latitude is ~111.32 km, of longitude that
        times the cosine of the latitude)."""
        width, height = self.width * abs(self.transform.a), self.height * abs(self.transform.e)
        if not self.crs.is_geographic:
            return width * self.crs.linear_units_factor[1], height * self.crs.linear_units_factor[1]
        latitude = np.radians(self.transform.f + self.transform.e * self.height / 2)
        return width * 111_320 * np.cos(latitude), height * 111_320

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """(lon_min, lat_min, lon_max, lat_max) of the image's outline."""
        edge = np.linspace(0, 1, 17)
        cols = np.concatenate([edge * self.width, np.full(17, self.width), edge * self.width, np.zeros(17)])
        rows = np.concatenate([np.zeros(17), edge * self.height, np.full(17, self.height), edge * self.height])
        xs, ys = self.transform @ (cols, rows)
        try:
            lons, lats = transform_points(self.crs, "EPSG:4326", list(xs), list(ys))
        except Exception as error:  # GDAL's errors (CPLE_*) have no public base class in rasterio
            raise ValueError(f"its georeference does not map to longitude and latitude ({error})") from None
        bounds = float(min(lons)), float(min(lats)), float(max(lons)), float(max(lats))
        if not np.all(np.isfinite(bounds)):
            raise ValueError(f"its georeference does not map to longitude and latitude (bounds {bounds})")
        return bounds


class AlphaEarthGeoTIFF:
    """One float GeoTIFF export (bands A00..A63, NaN or nodata where missing) for one year."""

    def __init__(self, path, year: int):
        self.path, self.year = Path(path), int(year)

    def __repr__(self) -> str:
        return f"AlphaEarthGeoTIFF({str(self.path)!r}, {self.year})"

    def years(self) -> list[int]:
        return [self.year]

    def read(self, year: int, crs: CRS, xs: np.ndarray, ys: np.ndarray, spacing_m: float | None = None) -> np.ndarray:
        if year != self.year:
            return np.full((len(xs), DIM), np.nan, np.float32)
        with _open(self.path) as dataset:
            if dataset.count != DIM:
                raise ValueError(f"{self.path}: an AlphaEarth export has {DIM} bands (A00..A63), this one {dataset.count}")
            return _read_points(dataset, crs, xs, ys).astype(np.float32)


class AlphaEarthTiles:
    """The official int8 release under `root`, any years and UTM zones it holds."""

    def __init__(self, root):
        self.root = Path(root)
        prefixed = self.root / "satellite_embedding" / "v1" / "annual"
        self.base = prefixed if prefixed.is_dir() else self.root
        if not self.base.is_dir():
            raise ValueError(f"{root}: not a folder of AlphaEarth tiles (<year>/<zone><N|S>/*.tiff)")

    def __repr__(self) -> str:
        return f"AlphaEarthTiles({str(self.root)!r})"

    def years(self) -> list[int]:
        return sorted(int(p.name) for p in self.base.iterdir() if p.is_dir() and p.name.isdigit())

    @functools.cache
    def tiles(self, year: int) -> list[tuple[Path, CRS, tuple]]:
        """(path, CRS, bounds) of every tile of `year`; headers only."""
        found = []
        for zone in sorted((self.base / str(year)).glob("*")):
            if ZONE_FOLDER.match(zone.name):
                for path in sorted(zone.glob("*.tif*")):
                    with _open(path) as dataset:
                        found.append((path, dataset.crs, tuple(dataset.bounds)))
        return found

    def read(self, year: int, crs: CRS, xs: np.ndarray, ys: np.ndarray, spacing_m: float | None = None) -> np.ndarray:
        """[P, 64] float32 vectors at the points (xs, ys in `crs`); NaN where no tile has data. (Full resolution
        whatever the anchors' spacing: `AlphaEarthCloud` reads overviews for wide spacings.)"""
        out = np.full((len(xs), DIM), np.nan, np.float32)
        todo = np.ones(len(xs), bool)
        for path, tile_crs, (left, bottom, right, top) in self.tiles(year):
            if not todo.any():
                break
            tx, ty = (np.asarray(v) for v in transform_points(crs, tile_crs, list(xs[todo]), list(ys[todo])))
            low, high = sorted((bottom, top))  # a bottom-up tile reports bottom > top
            inside = (tx >= left) & (tx < right) & (ty > low) & (ty <= high)
            if not inside.any():
                continue
            with _open(path) as dataset:
                if dataset.count != DIM or dataset.dtypes[0] != "int8":
                    raise ValueError(f"{path}: official AlphaEarth tiles are {DIM}-band int8, this one is "
                                     f"{dataset.count}-band {dataset.dtypes[0]}")
                values = _read_points(dataset, tile_crs, tx[inside], ty[inside])
            index = np.flatnonzero(todo)[inside]
            vectors = dequantize(values)
            found = np.isfinite(vectors).all(-1)  # nodata here may be data in an overlapping tile (next UTM zone)
            out[index[found]] = vectors[found]
            todo[index[found]] = False
        return out


def _open(path):
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioError as error:
        raise ValueError(f"{path}: not a readable GeoTIFF ({error})") from error


def _read_points(dataset, crs: CRS, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """[P, bands] values at the points, each read through a one-pixel window (never the whole raster); points
    outside the raster read as nodata (-128 for int8 tiles, NaN for float exports)."""
    if dataset.crs != crs:
        xs, ys = (np.asarray(v) for v in transform_points(crs, dataset.crs, list(xs), list(ys)))
    rows, cols = rasterio.transform.rowcol(dataset.transform, xs, ys)
    outside = (np.asarray(rows) < 0) | (np.asarray(rows) >= dataset.height) | (np.asarray(cols) < 0) | (np.asarray(cols) >= dataset.width)
    values = np.stack(list(dataset.sample(zip(xs, ys), masked=False)))
    if dataset.dtypes[0] == "int8":
        values[outside] = NODATA
        return values
    values = values.astype(np.float32)
    if dataset.nodata is not None and not np.isnan(dataset.nodata):
        values[(values == dataset.nodata).all(-1)] = np.nan
    values[outside] = np.nan
    return values


def sample_anchors(source, footprint: Footprint, years, grid_size: int = 8) -> AnchorSet:
    """Anchors on a `grid_size` x `grid_size` grid over `footprint`, one vector per year; masked where the source
    has no data (nodata pixels, points outside every tile, years it does not hold)."""
    years = [int(y) for y in ([years] if np.isscalar(years) else years)]
    positions = grid_positions(grid_size, dtype=np.float64)
    xs, ys = footprint.points(positions)
    spacing = min(footprint.size_m()) / grid_size  # the closer anchors decide how coarse a read may be
    values = np.stack([source.read(year, footprint.crs, xs, ys, spacing_m=spacing) for year in years], axis=1)
    mask = np.isfinite(values).all(-1)
    return AnchorSet(np.where(mask[..., None], values, 0).astype(np.float32), positions.astype(np.float32), mask, years)
