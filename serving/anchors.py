"""Each image's anchors, three ways: given in the request, found by the server from the image's georeference and
year (the same sampling as `fusar-data anchors`, one source and block cache for all requests), or none.

An image part's `anchors` field (or the request's top-level `anchors` list, one entry per image in order, which the
openai client sends through `extra_body`):
    "none"                                                 no anchors: the model computes exactly its base
    {"npz": "<base64>"}                                    the .npz `fusar-data anchors` writes (or the authors' .npy)
    {"values": [[[...]]], "positions": [[r, c], ...],      values [S, D] or [S, T, D]; positions (row, col) in [0, 1];
     "mask": [[...]], "years": [...]}                      mask [S, T] and years [T] optional
Absent (or null): found from the georeference when the server has an AlphaEarth source, else none.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dataset_scripts.alphaearth import sample_anchors
from dataset_scripts.sar_reader import SarScene
from processing.anchors import AnchorSet, as_anchor_set, from_bytes

from .errors import RequestError

# Per image: more anchors than a 64 x 64 grid, more years than 64, or an .npz that loads to more than 64 MiB is
# refused before any array is built.
MAX_ANCHORS, MAX_YEARS, MAX_ANCHOR_BYTES = 4096, 64, 64 * 2**20

@dataclass
class ImageAnchors:
    anchors: AnchorSet | None
    source: str  # "request", "alphaearth" or "none"
    note: str | None = None

    def report(self, image: int) -> dict:
        """What the response says of this image's anchors (its `anchors` extension field)."""
        found = self.anchors is not None
        report = {"image": image, "source": self.source if found else "none",
                  "count": int(self.anchors.mask.any(-1).sum()) if found else 0,
                  "years": list(self.anchors.years or []) if found else []}
        return report | ({"note": self.note} if self.note else {})


def check_counts(spec: dict, where: str, anchor_dim: int) -> None:
    """Anchors as JSON lists, counted before numpy builds arrays of them (500,000 took 16 s and 1.6 GB)."""
    lists = [spec[key] for key in ("values", "positions", "mask") if key in spec]
    if any(not isinstance(items, list) or len(items) > MAX_ANCHORS for items in lists):
        raise ValueError(f"{where}: at most {MAX_ANCHORS} anchors per image, each field a list")
    if len(spec.get("years") or []) > MAX_YEARS or any(
            isinstance(row, list) and len(row) > MAX_YEARS for row in spec.get("mask", [])):
        raise ValueError(f"{where}: at most {MAX_YEARS} years of anchors")
    if not all(_bounded_row(row, anchor_dim) for row in spec["values"]):  # the dimensions are checked later
        raise ValueError(f"{where}: an anchor holds at most {anchor_dim} numbers a year and {MAX_YEARS} years")


def _bounded_row(row, anchor_dim: int) -> bool:
    if not isinstance(row, list) or not row or not isinstance(row[0], list):  # [D] (or not a list: numpy says)
        return not isinstance(row, list) or len(row) <= anchor_dim
    return len(row) <= MAX_YEARS and all(not isinstance(year, list) or len(year) <= anchor_dim for year in row)


def given_anchors(spec, where: str, anchor_dim: int) -> ImageAnchors | None:
    """The anchors a request gives for one image; None when it gives none (the server decides)."""
    if spec is None:
        return None
    if spec == "none":
        return ImageAnchors(None, "none", "the request asked for none")
    try:
        if isinstance(spec, dict) and set(spec) == {"npz"}:
            data = base64.b64decode(spec["npz"], validate=True)
            return ImageAnchors(from_bytes(data, anchor_dim=anchor_dim, where=where, max_bytes=MAX_ANCHOR_BYTES),
                                "request")
        if isinstance(spec, dict) and {"values", "positions"} <= set(spec) <= {"values", "positions", "mask", "years"}:
            check_counts(spec, where, anchor_dim)
            arrays = {key: np.asarray(value, dtype=bool if key == "mask" else None) for key, value in spec.items()}
            return ImageAnchors(as_anchor_set(arrays, anchor_dim=anchor_dim, where=where), "request")
    except (binascii.Error, TypeError, ValueError) as error:
        raise RequestError(f"{where}: {error}" if where not in str(error) else str(error), param=where) from None
    raise RequestError(f'{where}: expected "none", {{"npz": "<base64>"}} or {{"values": ..., "positions": ..., '
                       f'"mask"?, "years"?}}', param=where)


class AnchorFinder:
    """Anchors from the image's own georeference through one AlphaEarth source (an `open_source` result, or None
    for a server without one). A source that fails or does not answer within `timeout` seconds gives no anchors
    and says why: a request never waits longer, nor fails, for them."""

    def __init__(self, source=None, timeout: float = 10.0, grid_size: int = 8, workers: int = 4):
        self.source, self.timeout, self.grid_size = source, timeout, grid_size
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="anchors")  # the readers release the GIL

    async def find(self, scene: SarScene) -> ImageAnchors:
        if self.source is None:
            return ImageAnchors(None, "none", "the server has no AlphaEarth source (--alphaearth)")
        if scene.footprint is None:
            return ImageAnchors(None, "none", "the image is not georeferenced")
        if scene.year is None:
            return ImageAnchors(None, "none", "the image's acquisition year is unknown (no date tag)")
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.pool, sample_anchors, self.source, scene.footprint, scene.year, self.grid_size)
        try:
            anchors = await asyncio.wait_for(work, self.timeout)
        except asyncio.TimeoutError:
            return ImageAnchors(None, "none", f"the AlphaEarth source did not answer within {self.timeout:g} s")
        except Exception as error:  # network, unreadable tile: the answer comes without anchors, and says so
            return ImageAnchors(None, "none", f"the AlphaEarth source could not be read ({type(error).__name__})")
        if not anchors.mask.any():
            return ImageAnchors(None, "none", f"the AlphaEarth source has no data under the image for {scene.year}")
        return ImageAnchors(anchors, "alphaearth")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
