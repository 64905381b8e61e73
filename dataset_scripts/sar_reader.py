"""SAR scenes for the dataset: the 8-bit model image (the same function as at inference), where the scene lies,
and when it was taken.

- GeoTIFFs in any CRS: the footprint comes from the geotransform (reprojected to lon/lat with rasterio).
- Other images (PNG/JPEG chips) and GeoTIFFs without a CRS: a sidecar `<name>.footprint.json`
  (`{"crs": "EPSG:4326", "bounds": [left, bottom, right, top]}`) places them; without one they get no anchors.
- The acquisition year: the argument, else the GeoTIFF's date tags, else a YYYYMMDD date in the file name.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_bounds

from processing import load_sar_image

from .alphaearth import Footprint

DATE_TAGS = ("ACQUISITION_START_TIME", "ACQUISITION_DATE", "TIFFTAG_DATETIME", "DATE", "DATETIME")
DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{2})[-_:]?(0[1-9]|1[0-2])[-_:]?(0[1-9]|[12]\d|3[01])")
POLARISATIONS = ("HH", "HV", "VH", "VV")
GEOTIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class SarScene:
    image: Image.Image
    footprint: Footprint | None  # None: not georeferenced, no anchors
    lonlat: tuple[float, float, float, float]
    crs: str
    year: int | None
    resolution_m: float
    polarization: str


def read_sar_scene(path, *, year: int | None = None, bands=None, unit: str = "auto",
                   max_bytes: int | None = None) -> SarScene:
    """The scene at `path`; `max_bytes` bounds the memory of the conversion (see `processing.sar.check_image_memory`)."""
    path = Path(path)
    image = load_sar_image(path, bands=bands, unit=unit, max_bytes=max_bytes)
    footprint, tags, names = None, {}, []
    if path.suffix.lower() in GEOTIFF_SUFFIXES:
        with rasterio.open(path) as dataset:
            tags, names = dataset.tags(), [d for d in dataset.descriptions if d]
            if dataset.crs is not None:
                footprint = Footprint(dataset.crs, dataset.transform, dataset.height, dataset.width)
    if footprint is None:
        footprint = sidecar_footprint(path, image.height, image.width)
    try:
        lonlat = footprint.lonlat_bounds() if footprint else (math.nan,) * 4
    except ValueError as error:  # e.g. pixels of 1e12 m
        raise ValueError(f"{path}: {error}") from None
    return SarScene(
        image=image,
        footprint=footprint,
        lonlat=lonlat,
        crs=footprint.crs.to_string() if footprint else "",
        year=year if year is not None else acquisition_year(path, tags),
        resolution_m=resolution_m(footprint),
        polarization="+".join(n.upper() for n in names if n.upper() in POLARISATIONS) or polarisation_in_name(path),
    )


def sidecar_footprint(path: Path, height: int, width: int) -> Footprint | None:
    sidecar = path.with_name(path.stem + ".footprint.json")
    if not sidecar.is_file():
        return None
    try:
        info = json.loads(sidecar.read_text())
        left, bottom, right, top = (float(v) for v in info["bounds"])
        return Footprint(CRS.from_user_input(info["crs"]), from_bounds(left, bottom, right, top, width, height),
                         height, width)
    except (ValueError, KeyError, TypeError, rasterio.errors.CRSError) as error:
        raise ValueError(f"{sidecar}: expected {{\"crs\": ..., \"bounds\": [left, bottom, right, top]}} ({error})") from error


def acquisition_year(path: Path, tags: dict) -> int | None:
    for text in [tags[k] for k in DATE_TAGS if k in tags] + [path.name]:
        match = DATE_IN_NAME.search(str(text))
        if match:
            return int(match.group(1))
    return None


def resolution_m(footprint: Footprint | None) -> float:
    if footprint is None:
        return math.nan
    if footprint.crs.is_geographic:  # a degree of latitude is ~111.32 km everywhere
        return abs(footprint.transform.e) * 111_320
    return abs(footprint.transform.a) * footprint.crs.linear_units_factor[1]


def polarisation_in_name(path: Path) -> str:
    found = [p for p in POLARISATIONS if re.search(rf"(?i)(^|[_\-.]){p}([_\-.]|$)", path.stem)]
    return "+".join(found)
