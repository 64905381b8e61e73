"""An `image_url` of a request as the model's image, with the georeference and year its anchors need.

Accepted: a `data:` URL (base64), an http(s) URL (fetched as `fetch.py` allows), or a path (plain or `file://`)
under the folder the server was started with (`--image-root`), never anywhere else on its disk. GeoTIFFs keep their
georeference and date tags. The limits are the Space's: file size, pixel count (a decompression bomb stops at the
header), conversion memory.
"""

from __future__ import annotations

import base64
import binascii
import re
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import rasterio
from PIL import Image, UnidentifiedImageError

from dataset_scripts.sar_reader import SarScene, read_sar_scene

from .errors import RequestError
from .fetch import MediaPolicy, fetch

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
DATA_URL = re.compile(r"data:(?P<mime>[\w.+/-]*)(?:;[\w=.-]+)*?;base64,(?P<data>.*)", re.DOTALL)


@dataclass
class ImageLimits:
    file_bytes: int = 50 * 2**20  # one image, as the Space's upload limit
    pixels: int = 8192 * 8192  # width x height, checked from the header before any pixel is decoded
    request_pixels: int = 8192 * 8192  # all of a request's images together, checked before any is decoded
    conversion_bytes: int = 2**30  # working memory of one conversion (processing.sar.check_image_memory)


def is_remote(url) -> bool:
    return isinstance(url, str) and url.startswith(("http://", "https://"))


def fetch_image(url: str, where: str, limits: ImageLimits, media: MediaPolicy) -> bytes:
    """The bytes of an http(s) image, as `media` allows (400 refused or failed, 413 over the size limit)."""
    return fetch(url, where, media, limits.file_bytes, _too_large(where, limits))


def image_file(source: str | bytes, where: str, root: Path | None, limits: ImageLimits, folder: Path) -> Path:
    """The file to read for an image: a path under the root, or the bytes (of a data: URL, or fetched) written into
    `folder`, a private temporary one (the readers take files: rasterio for GeoTIFFs, by suffix)."""
    if isinstance(source, str) and source.startswith("data:"):
        source = _decode_data_url(source, where, limits)
    if isinstance(source, bytes):
        handle, name = tempfile.mkstemp(suffix=".tif" if source[:4] in TIFF_MAGIC else ".image", dir=folder)
        with open(handle, "wb") as file:
            file.write(source)
        return Path(name)
    if not isinstance(source, str) or not source or is_remote(source):
        raise RequestError(f"{where}: expected a data: URL, an http(s) URL or a path under the server's image root",
                           param=where)
    return _local_path(source, where, root)


def image_pixels(path: Path, where: str, limits: ImageLimits) -> int:
    """Width x height from the file's header, nothing decoded; 413 over one image's limits."""
    if path.stat().st_size > limits.file_bytes:
        raise _too_large(where, limits)
    pixels = _header_pixels(path, where)
    if pixels > limits.pixels:
        raise RequestError(f"{where}: {pixels} pixels, more than the server's limit of {limits.pixels}", status=413,
                           param=where, code="image_too_large")
    return pixels


def read_image(path: Path, where: str, limits: ImageLimits, shown: str) -> SarScene:
    """The scene in `path` (whose `image_pixels` were checked); errors name `shown` instead of the file."""
    try:
        return read_sar_scene(path, max_bytes=limits.conversion_bytes)
    except ValueError as error:  # the readers name the file: the client sees its own field instead
        raise RequestError(str(error).replace(str(path), shown), param=where) from None


def _decode_data_url(url: str, where: str, limits: ImageLimits) -> bytes:
    match = DATA_URL.fullmatch(url)
    if match is None:
        raise RequestError(f"{where}: a data: URL must be base64 (data:<type>;base64,<data>)", param=where)
    if len(match["data"]) * 3 // 4 > limits.file_bytes:
        raise _too_large(where, limits)
    try:
        return base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: the data: URL is not valid base64", param=where) from None


def _local_path(url: str, where: str, root: Path | None) -> Path:
    # file://name, file:///root/name (URLs, quoted), or a plain path
    relative = urllib.parse.unquote(url.removeprefix("file://")) if url.startswith("file://") else url
    if "\x00" in relative:
        raise RequestError(f"{where}: a path may not hold a NUL byte", param=where)
    path = (root / relative).resolve() if root is not None else None
    if path is None or not path.is_relative_to(root.resolve()) or not path.is_file():
        raise RequestError(f"{where}: not a data: or http(s) URL, and not a file under the server's image root "
                           "(paths are read only below the folder the server was started with, --image-root)",
                           param=where)
    if path.stat().st_size > 0:
        return path
    raise RequestError(f"{where}: the file is empty", param=where)


def _header_pixels(path: Path, where: str) -> int:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with rasterio.open(path) as dataset:
                return dataset.width * dataset.height
        with Image.open(path) as image:  # the header only
            return image.width * image.height
    except Image.DecompressionBombError:  # PIL's own limit, far above ours
        return 2**62
    except (OSError, UnidentifiedImageError, rasterio.errors.RasterioError):
        raise RequestError(f"{where}: not a readable image (PNG, JPEG, TIFF or GeoTIFF expected)", param=where) from None


def _too_large(where: str, limits: ImageLimits) -> RequestError:
    return RequestError(f"{where}: the image is larger than the server's limit of {limits.file_bytes // 2**20} MiB",
                        status=413, param=where, code="image_too_large")
