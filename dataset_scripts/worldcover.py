"""ESA WorldCover 10 m land cover under a chip, read from the public Cloud-Optimised GeoTIFFs (no credentials).

Tiles are 3 x 3 degrees in EPSG:4326, named by their south-west corner:
`<base>/v200/2021/map/ESA_WorldCover_10m_2021_v200_N36W003_Map.tif` (2021; `v100/2020/...` for 2020). The grid
GeoJSON beside them lists the tiles that exist (the open sea has none). A chip's classes are its own pixel grid
resampled from the tiles (nearest neighbour, GDAL's warper reading only the blocks it needs), 0 where no tile covers.
"""

from __future__ import annotations

import json
import math
import urllib.error
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject

from .alphaearth import Footprint
from .alphaearth_cloud import HttpOptions, download, gdal_path

BASE_URL = "https://esa-worldcover.s3.eu-central-1.amazonaws.com"
LICENSE = "CC-BY-4.0"
CLASSES = {10: "tree cover", 20: "shrubland", 30: "grassland", 40: "cropland", 50: "built-up",
           60: "bare / sparse vegetation", 70: "snow and ice", 80: "permanent water bodies", 90: "herbaceous wetland",
           95: "mangroves", 100: "moss and lichen"}
NODATA = 0
VERSIONS = {2020: "v100", 2021: "v200"}
# The grid file: rslearn's name first (the bucket's own listing), then the other name public code uses.
GRID_NAMES = ("esa_worldcover_grid.geojson", "esa_worldcover_2021_grid.geojson")


def attribution(worldcover_map: str) -> str:
    """The official attribution of one map ("v100/2020" or "v200/2021"), as its product user manual words it."""
    year = worldcover_map.rsplit("/", 1)[-1]
    return (f"\u00a9 ESA WorldCover project {year} / Contains modified Copernicus Sentinel data ({year}) processed by "
            "ESA WorldCover consortium")


def map_year(year: int) -> int:
    """The WorldCover map nearest a year: 2020 for earlier years, 2021 for later ones."""
    return 2020 if year <= 2020 else 2021


def tile_name(year: int, lat_south: int, lon_west: int) -> str:
    version = VERSIONS[year]
    corner = f"{'N' if lat_south >= 0 else 'S'}{abs(lat_south):02d}{'E' if lon_west >= 0 else 'W'}{abs(lon_west):03d}"
    return f"{version}/{year}/map/ESA_WorldCover_10m_{year}_{version}_{corner}_Map.tif"


def tiles_under(bounds: tuple[float, float, float, float], year: int) -> list[tuple[str, str]]:
    """(corner code, relative path) of each 3-degree tile a lon/lat box touches."""
    west, south, east, north = bounds
    found = []
    for lat in range(3 * math.floor(south / 3), 3 * math.floor(north / 3) + 1, 3):
        for lon in range(3 * math.floor(west / 3), 3 * math.floor(east / 3) + 1, 3):
            path = tile_name(year, lat, lon)
            found.append((path.rsplit("_", 2)[1], path))
    return found


class WorldCover:
    """The WorldCover release at `base` (URL or local folder with the same layout)."""

    def __init__(self, base: str = BASE_URL, http: HttpOptions | None = None):
        self.base, self.http = str(base).rstrip("/"), http or HttpOptions()
        self.existing: set[str] | None = None
        self.datasets: dict[str, rasterio.io.DatasetReader] = {}

    def __repr__(self) -> str:
        return f"WorldCover({self.base!r})"

    def tiles(self) -> set[str]:
        """Corner codes (`ll_tile`) of the tiles the release's grid lists (read once per process; both maps have the
        same tiles)."""
        if self.existing is None:
            self.existing = {feature["properties"]["ll_tile"] for feature in self._grid()["features"]}
        return self.existing

    def _grid(self) -> dict:
        errors = []
        for name in GRID_NAMES:
            location = f"{self.base}/v200/2021/{name}"
            try:
                return json.loads(download(location, self.http) if "://" in location else Path(location).read_bytes())
            except FileNotFoundError as error:
                errors.append(error)
            except urllib.error.HTTPError as error:
                if error.code != 404:
                    raise ValueError(f"{location}: cannot read the WorldCover tile grid ({error})") from error
                errors.append(error)
            except Exception as error:  # network, not JSON: nothing can be placed without the grid
                raise ValueError(f"{location}: cannot read the WorldCover tile grid ({type(error).__name__}: {error})") from error
        raise ValueError(f"{self.base}/v200/2021/: no WorldCover tile grid ({' or '.join(GRID_NAMES)}): {errors[-1]}")

    def opened(self, location: str):
        """A tile kept open for the life of the worker: GDAL's block cache then serves the blocks that neighbouring
        chips share (each chip opening the tile anew fetched them again, ~2x the bytes)."""
        if location not in self.datasets:
            self.datasets[location] = rasterio.open(gdal_path(location))
        return self.datasets[location]

    def classes(self, footprint: Footprint, year: int) -> tuple[np.ndarray, str]:
        """[height, width] uint8 WorldCover classes on the chip's own pixel grid (0: no map there), and the map used
        (e.g. "v200/2021")."""
        year = map_year(year)
        out = np.full((footprint.height, footprint.width), NODATA, np.uint8)
        for corner, relative in tiles_under(footprint.lonlat_bounds(), year):
            if corner not in self.tiles():
                continue
            location = f"{self.base}/{relative}"
            part = np.full_like(out, NODATA)
            try:
                with rasterio.Env(**self.http.gdal()):
                    reproject(rasterio.band(self.opened(location), 1), part, src_nodata=NODATA, dst_nodata=NODATA,
                              dst_transform=footprint.transform, dst_crs=footprint.crs, resampling=Resampling.nearest)
            except rasterio.errors.RasterioError as error:
                raise ValueError(f"{location}: cannot read this WorldCover tile ({error.__cause__ or error})") from error
            out = np.where(out == NODATA, part, out)
        return out, f"{VERSIONS[year]}/{year}"
