"""AlphaEarth anchors straight from the public release: the files under a footprint are found in the release's index
(no listing over the network), only their blocks under the anchors are read (GDAL range requests through rasterio),
and every block read is kept in a bounded on-disk cache, so that a build over many chips of one region reads each
block once.

    AlphaEarthCloud("https://data.source.coop/tge-labs/aef/v1/annual")   # the public mirror (index beside it)
    AlphaEarthCloud("s3://us-west-2.opendata.source.coop/tge-labs/aef/v1/annual", index="aef_index.parquet")
    AlphaEarthCloud("gs://alphaearth_foundations/satellite_embedding/v1/annual", index="aef_index.parquet")
    AlphaEarthCloud("/data/aef")                                         # a local copy with its index

The index (`aef_index.parquet`, GeoParquet, one row per file and year) is read for `path` (any form: only its last
three parts, `<year>/<zone>/<name>.tiff`, are used, joined to the source), `year` and the `wgs84_west/south/east/
north` bounds. Files may be top-down or bottom-up (the mirror's); both read the same.

Overviews: when anchors are far apart (a large scene), a point is read from the coarsest overview whose pixel is
no larger than half the spacing between anchors: each overview pixel is the mean of the full-resolution pixels
under it (renormalised in the release), i.e. the embedding of the area around the anchor, and one block of a coarse
level covers what would be hundreds of full-resolution blocks.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from .alphaearth import DIM, NODATA, dequantize


RETRY_CODES = (429, 500, 502, 503, 504)
# GDAL's own block cache defaults to 5% of the machine's memory in every process: a harvest worker reading the
# release's 64 MiB blocks grew to 1.9 GB on 24 GB (519 MiB at 64 MB). Blocks are kept in our cache on disk, so GDAL's
# needs only the blocks of a read in progress (and WorldCover's, shared by neighbouring chips). Yours, if set, wins.
os.environ.setdefault("GDAL_CACHEMAX", "128")


@dataclass
class HttpOptions:
    """How the network is used: per-request timeout, retries (GDAL doubles the delay after each), files read at once."""

    timeout: float = 30.0
    retries: int = 5
    retry_delay: float = 0.5
    parallel: int = 4

    def gdal(self) -> dict:
        return {"GDAL_HTTP_TIMEOUT": max(1, round(self.timeout)), "GDAL_HTTP_MAX_RETRY": self.retries,
                "GDAL_HTTP_RETRY_DELAY": self.retry_delay, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
                "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff", "GDAL_HTTP_RETRY_CODES": ",".join(map(str, RETRY_CODES)),
                # GDAL would remember a failed file for the life of the process; our block cache holds what was read.
                "CPL_VSIL_CURL_NON_CACHED": "/vsicurl/"}


class BlockCache:
    """Decoded blocks as `.npy` files under `folder`, at most `max_bytes` in all (the least recently used go first);
    each written to a temporary name of its own and renamed, so that a stop never leaves a half-written block to be
    trusted, and readers in several threads or processes never write over each other."""

    def __init__(self, folder, max_bytes: int):
        self.folder, self.max_bytes = Path(folder), max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self.used = sum(p.stat().st_size for p in self.folder.glob("*.npy"))
        self.lock = threading.Lock()

    def __getstate__(self):  # sent to the worker processes of a parallel build: a lock does not travel
        return {k: v for k, v in vars(self).items() if k != "lock"}

    def __setstate__(self, state):
        vars(self).update(state, lock=threading.Lock())

    def _write(self, path: Path, data: bytes | np.ndarray) -> None:
        """Written whole or not at all; a cache that cannot be written (full disk, read-only) is only slower. An
        array is streamed to the file as .npy, never copied in memory (a full-resolution block is 64 MiB)."""
        temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            if isinstance(data, np.ndarray):
                with open(temporary, "wb") as file:
                    np.save(file, data, allow_pickle=False)
            else:
                temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)

    def path(self, key: str, suffix: str = ".npy") -> Path:
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}{suffix}"

    def get_header(self, key: str) -> dict | None:
        try:
            return json.loads(self.path(key, ".json").read_text())
        except (OSError, ValueError):
            return None

    def put_header(self, key: str, header: dict) -> None:
        self._write(self.path(key, ".json"), json.dumps(header).encode())

    def get(self, key: str) -> np.ndarray | None:
        """The block, memory-mapped: the points read from it are the pages loaded, not its 64 MiB."""
        path = self.path(key)
        try:
            block = np.load(path, mmap_mode="r", allow_pickle=False)
            os.utime(path)  # recently used
        except (OSError, ValueError):  # absent, evicted meanwhile, or damaged outside our control: read again
            return None
        return block

    def put(self, key: str, block: np.ndarray) -> None:
        size = block.nbytes + 128  # .npy's header: 128 bytes for these shapes
        if size > self.max_bytes:
            return
        with self.lock:
            while self.used + size > self.max_bytes and self._evict_oldest():
                pass
            self.used += size
        self._write(self.path(key), np.ascontiguousarray(block))

    def _evict_oldest(self) -> bool:
        """Delete the least recently used block (another process may be deleting too); False when none is left."""
        blocks = []
        for path in self.folder.glob("*.npy"):
            with contextlib.suppress(FileNotFoundError):
                blocks.append((path.stat().st_mtime, path.stat().st_size, path))
        if not blocks:
            self.used = 0
            return False
        _, size, oldest = min(blocks)
        with contextlib.suppress(FileNotFoundError):
            oldest.unlink()
        self.used -= size
        return True


def gdal_path(location: str) -> str:
    """What rasterio opens for a release file: /vsicurl/ for http(s), /vsis3/ and /vsigs/ for object stores."""
    if location.startswith(("https://", "http://")):
        return "/vsicurl/" + location
    for scheme, prefix in (("s3://", "/vsis3/"), ("gs://", "/vsigs/")):
        if location.startswith(scheme):
            return prefix + location[len(scheme):]
    return location


def object_store(location: str) -> dict:
    """GDAL's settings for an object-store release. `s3://`: read unsigned unless the user has AWS credentials
    (Source Cooperative's bucket is public, and GDAL refuses /vsis3/ without credentials otherwise); their own
    `AWS_NO_SIGN_REQUEST` wins. `gs://`: Google's AlphaEarth bucket is requester-pays, so GDAL needs the project to
    bill (`GS_USER_PROJECT`, read from the environment) and Google credentials; without it, one line says so."""
    if location.startswith("s3://") and "AWS_NO_SIGN_REQUEST" not in os.environ and not aws_credentials():
        return {"AWS_NO_SIGN_REQUEST": "YES"}
    if location.startswith("gs://") and not os.environ.get("GS_USER_PROJECT"):
        raise ValueError(f"{location}: Google's AlphaEarth bucket is requester-pays: set GS_USER_PROJECT to the "
                         "Google Cloud project to bill, with Google credentials (GOOGLE_APPLICATION_CREDENTIALS), or "
                         "read the free mirror https://data.source.coop/tge-labs/aef/v1/annual")
    return {}


def aws_credentials() -> bool:
    """Whether GDAL would find AWS credentials: the environment, or the shared credentials or config file."""
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
        return True
    home = Path.home() / ".aws"
    files = (os.environ.get("AWS_SHARED_CREDENTIALS_FILE", home / "credentials"),
             os.environ.get("AWS_CONFIG_FILE", home / "config"))
    return any(Path(file).is_file() for file in files)


def download(url: str, http: HttpOptions) -> bytes:
    """A whole file, retried like GDAL retries the blocks: on 429 / 5xx and lost connections, the delay doubling."""
    for attempt in range(http.retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=http.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            if error.code not in RETRY_CODES or attempt == http.retries:
                raise
            error.close()
        except (OSError, HTTPException):  # refused, reset, timed out, cut short mid-body
            if attempt == http.retries:
                raise
        time.sleep(http.retry_delay * 2**attempt)
    raise AssertionError("unreachable")


def read_index(location: str, http: HttpOptions, cache: BlockCache) -> dict[str, np.ndarray]:
    """The index's columns this reader needs: relative path, year, and WGS84 bounds per file. A downloaded index is
    kept in the cache (delete the cache folder, or give `index=` a new name, for a newer release)."""
    import pyarrow.parquet as pq

    if location.startswith(("s3://", "gs://")):
        raise ValueError(f"{location}: give the index as a local file or an https URL (the mirror's is "
                         "https://data.source.coop/tge-labs/aef/v1/annual/aef_index.parquet)")
    try:
        if location.startswith(("http://", "https://")):
            kept = cache.path(location, ".parquet")
            if kept.is_file():
                table = pq.read_table(kept)
            else:
                data = download(location, http)
                table = pq.read_table(io.BytesIO(data))  # kept only once it parses (not a proxy's error page)
                cache._write(kept, data)
        else:
            table = pq.read_table(location)
    except Exception as error:  # network, missing, not parquet: the index is needed for anything
        raise ValueError(f"{location}: cannot read the AlphaEarth index ({type(error).__name__}: {error})") from error
    needed = ["path", "year", "wgs84_west", "wgs84_south", "wgs84_east", "wgs84_north"]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ValueError(f"{location}: the AlphaEarth index lacks columns {missing}")
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in needed}
    columns["path"] = np.array(["/".join(str(p).replace("\\", "/").split("/")[-3:]) for p in columns["path"]])
    return columns


class AlphaEarthCloud:
    """The release at `source` (https:// base URL, s3:// or gs:// prefix, or a local folder), files found through
    its index (default: `aef_index.parquet` under `source`), blocks cached under `cache_dir` (default:
    `~/.cache/fusar-gpt/alphaearth`, at most `cache_bytes`)."""

    def __init__(self, source: str, index: str | None = None, cache_dir=None, cache_bytes: int = 20 * 2**30,
                 http: HttpOptions | None = None):
        self.source = str(source).rstrip("/")
        self.http = http or HttpOptions()
        folder = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fusar-gpt" / "alphaearth"
        self.cache = BlockCache(folder, cache_bytes)
        self.headers: dict[str, dict] = {}  # read from the cache (or the file) once per process
        self.store = object_store(self.source)  # before anything is read: a gs:// source without billing is refused
        self.index_location = index or f"{self.source}/aef_index.parquet"
        self.index = read_index(self.index_location, self.http, self.cache)

    def __repr__(self) -> str:  # what a build's fingerprint records of its anchor source
        return f"AlphaEarthCloud({self.source!r}, index={self.index_location!r})"

    def years(self) -> list[int]:
        return sorted({int(y) for y in self.index["year"]})

    def read(self, year: int, crs: CRS, xs: np.ndarray, ys: np.ndarray, spacing_m: float | None = None) -> np.ndarray:
        """[P, 64] float32 vectors at the points (xs, ys in `crs`); NaN where no file of the index has data."""
        out = np.full((len(xs), DIM), np.nan, np.float32)
        lons, lats = (np.asarray(v) for v in transform_points(crs, "EPSG:4326", list(xs), list(ys)))
        rows = np.flatnonzero(self.index["year"] == year)
        jobs = []
        for row in rows:
            inside = ((lons >= self.index["wgs84_west"][row]) & (lons <= self.index["wgs84_east"][row])
                      & (lats >= self.index["wgs84_south"][row]) & (lats <= self.index["wgs84_north"][row]))
            if inside.any():
                jobs.append((self.index["path"][row], np.flatnonzero(inside)))
        with ThreadPoolExecutor(max(1, self.http.parallel)) as pool:  # GDAL reads release the GIL
            results = list(pool.map(lambda job: self._read_file(job[0], crs, xs[job[1]], ys[job[1]], spacing_m), jobs))
        for (_, index), vectors in zip(jobs, results):  # a point's first file with data wins (overlapping zones)
            fill = np.isnan(out[index]).all(-1) & np.isfinite(vectors).all(-1)
            out[index[fill]] = vectors[fill]
        return out

    def _read_file(self, relative: str, crs: CRS, xs, ys, spacing_m) -> np.ndarray:
        location = f"{self.source}/{relative}"
        try:
            # Per thread (GDAL's settings are thread-local). Each read here is one block: SINGLE_GET fetches exactly
            # its tiles' bytes, where /vsicurl/ would round every range to its 16 kB chunks and read ahead (~1.4x the
            # bytes for the release's one-tile-per-band files). Not for multi-block windows: there it sends one
            # request with several ranges, which S3 answers with the whole file (WorldCover's reads keep the default).
            with rasterio.Env(**self.http.gdal(), **self.store, GDAL_HTTP_MULTIRANGE="SINGLE_GET"):
                level = overview_level(self._header(location, None), spacing_m)
                return dequantize(self._points(location, level, crs, xs, ys))
        except rasterio.errors.RasterioError as error:
            detail = str(error.__cause__ or error)  # GDAL's own reason, not rasterio's "see previous exception"
            raise ValueError(f"{location}: cannot read this AlphaEarth file ({detail})") from error

    def _open(self, location: str, level: int | None):
        return rasterio.open(gdal_path(location), **({"overview_level": level} if level is not None else {}))

    def _header(self, location: str, level: int | None) -> dict:
        """What reading a level of a file needs from its header, from the cache when it was read before (a build
        whose blocks are all cached then fetches nothing at all)."""
        key = f"{location}@{level}"
        header = self.headers.get(key) or self.cache.get_header(key)
        if header is None:
            with self._open(location, level) as dataset:
                if dataset.count != DIM or dataset.dtypes[0] != "int8":
                    raise ValueError(f"{location}: official AlphaEarth files are {DIM}-band int8, this one is "
                                     f"{dataset.count}-band {dataset.dtypes[0]}")
                header = {"crs": dataset.crs.to_wkt(), "transform": list(dataset.transform)[:6],
                          "width": dataset.width, "height": dataset.height, "block": list(dataset.block_shapes[0]),
                          "overviews": dataset.overviews(1), "units": dataset.crs.linear_units_factor[1]}
            self.cache.put_header(key, header)
        self.headers[key] = header
        return header

    def _points(self, location: str, level: int | None, crs: CRS, xs, ys) -> np.ndarray:
        """[P, 64] int8 values at the points, each block under them read once (or taken from the cache)."""
        header = self._header(location, level)
        file_crs = CRS.from_wkt(header["crs"])
        if file_crs != crs:
            xs, ys = (np.asarray(v) for v in transform_points(crs, file_crs, list(xs), list(ys)))
        rows, cols = (np.asarray(v) for v in rasterio.transform.rowcol(Affine(*header["transform"]), xs, ys))
        values = np.full((len(xs), DIM), NODATA, np.int8)
        inside = (rows >= 0) & (rows < header["height"]) & (cols >= 0) & (cols < header["width"])
        block_rows, block_cols = header["block"]
        dataset = None
        try:
            for block in sorted({(r // block_rows, c // block_cols) for r, c in zip(rows[inside], cols[inside])}):
                window = Window(block[1] * block_cols, block[0] * block_rows, block_cols, block_rows)
                window = window.intersection(Window(0, 0, header["width"], header["height"]))
                key = f"{location}@{level}/{block[0]}/{block[1]}"
                data = self.cache.get(key)
                if data is None:
                    dataset = dataset or self._open(location, level)
                    data = dataset.read(window=window)  # [64, h, w]; a failed read raises, nothing is cached
                    self.cache.put(key, data)
                here = np.flatnonzero(inside & (rows // block_rows == block[0]) & (cols // block_cols == block[1]))
                values[here] = data[:, rows[here] - int(window.row_off), cols[here] - int(window.col_off)].T
        finally:
            if dataset is not None:
                dataset.close()
        return values


def overview_level(header: dict, spacing_m: float | None) -> int | None:
    """The coarsest overview whose pixel is at most half the anchor spacing (None: full resolution)."""
    if not spacing_m:
        return None
    pixel = abs(header["transform"][0]) * header["units"]
    level = None
    for number, factor in enumerate(header["overviews"]):
        if pixel * factor <= spacing_m / 2:
            level = number
    return level


def open_source(location: str, index: str | None = None, cache_dir=None):
    """The AlphaEarth source a user names: the release through its index (a URL, or a folder holding
    `aef_index.parquet` or given `index`), else a local folder of tiles read by listing it."""
    from .alphaearth import AlphaEarthTiles

    if location.startswith(("http://", "https://", "s3://", "gs://")) or index or \
            (Path(location) / "aef_index.parquet").is_file():
        return AlphaEarthCloud(location, index=index, cache_dir=cache_dir)
    return AlphaEarthTiles(location)
