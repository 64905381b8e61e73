"""One function turns any SAR input into the 8-bit RGB image the model sees, at build time and at inference.

- 8-bit quicklooks (PNG/JPEG, 1 or 3 channels, or uint8 arrays) pass through; one channel is repeated, other
  8-bit modes (palette, CMYK, ...) are converted to RGB. 16-bit and float images hold radar values.
- GeoTIFFs (read with rasterio) and arrays in dB, amplitude, intensity or complex values are converted to
  dB, each channel clipped to its own robust range (2nd-98th percentile of the valid pixels) and scaled
  to 0-255. Nodata and NaN pixels are left out of the range and come out black.
- Channels, by number of polarisations (`polarizations` names them; band descriptions are read from a
  GeoTIFF): 1 -> grey (P, P, P); 2 (co, cross: VV+VH or HH+HV) -> (co, cross, co/cross ratio in dB);
  3 -> as given; 4 (HH, HV, VH, VV) -> (HH, mean of HV and VH, VV), or Pauli (|HH-VV|, 2|HV|, |HH+VV|)
  for complex data.
"""

from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

UNITS = ("auto", "db", "amplitude", "intensity", "complex")
MAX_IMAGE_BYTES = 4 * 2**30  # default memory budget of one conversion; FUSAR_MAX_IMAGE_BYTES overrides it
QUAD_ORDER = ("HH", "HV", "VH", "VV")
CLIP_PERCENTILES = (2.0, 98.0)
GEOTIFF_SUFFIXES = (".tif", ".tiff")
RADAR_PIL_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16-bit and float PIL images hold radar values


def load_sar_image(source, *, bands=None, unit: str = "auto", polarizations=None, nodata=None,
                   max_bytes: int | None = None) -> Image.Image:
    """The 8-bit RGB image the model sees, from a file path, a PIL image or an array [H, W] / [H, W, C] / [C, H, W]
    (channels last for uint8, first for radar values; a 2-D array is one channel).

    `bands` picks GeoTIFF bands by 1-based index or by description (e.g. ["VV", "VH"]). A file's size is checked
    from its header, before any pixel is decoded, against `max_bytes` of working memory (see `check_image_memory`).
    """
    if isinstance(source, Image.Image):
        check_image_memory("the given PIL image", *source.size, _pil_bytes_per_pixel(source), max_bytes)
        return _from_pil(source, "the given PIL image", unit)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix.lower() in GEOTIFF_SUFFIXES:
            data, names, file_nodata = read_geotiff_bands(path, bands, max_bytes=max_bytes)
            if data.dtype == np.uint8 and unit == "auto":
                return _quicklook(np.moveaxis(data, 0, -1), str(path))
            return Image.fromarray(_where(path, sar_to_uint8, data, unit=unit, polarizations=polarizations or names,
                                          nodata=nodata if nodata is not None else file_nodata))
        if bands is not None:
            raise ValueError(f"{path}: bands= picks bands of a GeoTIFF; this is not one (.tif / .tiff)")
        try:
            with Image.open(path) as image:  # lazy: the header only, until load()
                check_image_memory(str(path), *image.size, _pil_bytes_per_pixel(image), max_bytes)
                warn_if_camera_photo(image, str(path))
                image.load()
                return _from_pil(image, str(path), unit)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise ValueError(f"{path}: not a readable image file ({error})") from error
    array = np.asarray(source)
    if array.dtype == np.uint8 and unit == "auto":
        return _quicklook(array, "the given uint8 array")
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 3:
        check_image_memory("the given array", array.shape[2], array.shape[1],
                           radar_bytes_per_pixel(array.shape[0], array.dtype.itemsize), max_bytes)
    return Image.fromarray(sar_to_uint8(array, unit=unit, polarizations=polarizations, nodata=nodata))


CAMERA_EXIF_TAGS = (271, 272)  # Make, Model: written by cameras and phones, never by SAR processors


def warn_if_camera_photo(image: Image.Image, where: str) -> None:
    """A photograph is converted and answered like any 8-bit quicklook; say so when the file names its camera."""
    camera = " ".join(str(image.getexif().get(tag, "")) for tag in CAMERA_EXIF_TAGS).strip()
    if camera:
        warnings.warn(f"{where}: a photograph taken with {camera}, not a radar image; the model was trained on SAR and "
                      "its answers about a photo mean nothing", stacklevel=3)


def radar_bytes_per_pixel(bands: int, value_bytes: int) -> int:
    """An upper estimate of the memory one pixel takes while radar values become the 8-bit image: the values, a
    validity mask and three float64 working copies per band, then the three output channels' float64 copies."""
    return bands * (value_bytes + 1 + 3 * 8) + 3 * 2 * 8 + 16


def check_image_memory(where: str, width: int, height: int, bytes_per_pixel: int, max_bytes: int | None = None) -> None:
    """Refuse an image whose conversion would need more than `max_bytes` (default FUSAR_MAX_IMAGE_BYTES, else 4 GiB)."""
    limit = max_bytes if max_bytes is not None else int(os.environ.get("FUSAR_MAX_IMAGE_BYTES", MAX_IMAGE_BYTES))
    needed = width * height * bytes_per_pixel
    if needed > limit:
        raise ValueError(f"{where}: {width} x {height} pixels would need about {needed / 2**30:.2f} GiB to convert, "
                         f"more than the limit of {limit / 2**30:.2f} GiB; crop or downsample it first, or raise "
                         "FUSAR_MAX_IMAGE_BYTES")


def _pil_bytes_per_pixel(image: Image.Image) -> int:
    bands = len(image.getbands())
    if image.mode in RADAR_PIL_MODES:
        return radar_bytes_per_pixel(bands, 4)
    return 2 * bands + 6  # the decoded image, its RGB copy and the array view


def _where(path, function, *args, **kwargs):
    """`function(*args, **kwargs)` with the file named in its ValueErrors."""
    try:
        return function(*args, **kwargs)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def read_geotiff_bands(path, bands=None, max_bytes: int | None = None):
    """(data [C, H, W], band names or None, nodata) read with rasterio; clear errors for bad files and bands; the
    size checked from the header first."""
    import rasterio

    try:
        with rasterio.open(path) as dataset:
            descriptions = [d.upper() if d else None for d in dataset.descriptions]
            indexes = _band_indexes(path, bands, descriptions, dataset.count)
            value_bytes = max(read_dtype(dataset.dtypes[i - 1]).itemsize for i in indexes)
            check_image_memory(str(path), dataset.width, dataset.height, radar_bytes_per_pixel(len(indexes), value_bytes),
                               max_bytes)
            data = dataset.read(indexes)
            names = [descriptions[i - 1] for i in indexes]
            return data, (names if all(names) else None), dataset.nodata
    except rasterio.errors.RasterioError as error:
        raise ValueError(f"{path}: not a readable GeoTIFF ({error})") from error


def read_dtype(name: str) -> np.dtype:
    """The numpy type rasterio reads a band of GDAL type `name` into: CInt16 (how Sentinel-1 SLC measurements are
    stored) has no numpy twin and is read as complex64."""
    return np.dtype("complex64" if name == "complex_int16" else name)


def _band_indexes(path, bands, descriptions, count) -> list[int]:
    if bands is None:
        return list(range(1, count + 1))
    indexes = []
    for band in [bands] if isinstance(bands, (str, int)) else bands:
        if isinstance(band, str):
            if band.upper() not in descriptions:
                raise ValueError(f"{path}: no band named {band!r}; its bands are {descriptions}")
            indexes.append(descriptions.index(band.upper()) + 1)
        elif not isinstance(band, numbers.Integral) or isinstance(band, bool):
            raise ValueError(f"{path}: bands are named or numbered from 1, got {band!r}")
        elif not 1 <= band <= count:
            raise ValueError(f"{path}: band {band} does not exist; it has bands 1..{count}")
        else:
            indexes.append(int(band))
    return indexes


def _from_pil(image: Image.Image, where: str, unit: str) -> Image.Image:
    """8-bit PIL modes are quicklooks (palette, CMYK, ... converted to RGB); 16-bit and float ones hold radar values."""
    if image.mode in RADAR_PIL_MODES:
        return Image.fromarray(_where(where, sar_to_uint8, np.asarray(image, dtype=np.float64)[None], unit=unit))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return _quicklook(np.asarray(image), where)


def _quicklook(array: np.ndarray, where: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise ValueError(f"{where}: an 8-bit quicklook was expected, got {array.dtype}; pass unit= for radar values")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{where}: expected an image with 1 or 3 channels, got shape {array.shape}")
    if array.shape[-1] == 4:  # RGBA quicklook: drop alpha
        array = array[..., :3]
    return Image.fromarray(np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array, mode="RGB")


def sar_to_uint8(data: np.ndarray, *, unit: str = "auto", polarizations=None, nodata=None) -> np.ndarray:
    """[C, H, W] radar values -> [H, W, 3] uint8, as described in this module's docstring.

    unit: "db", "amplitude", "intensity", "complex" or "auto" (complex dtype -> complex, a negative median -> dB,
    otherwise intensity; amplitude and intensity give the same image after the per-channel stretch).
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"SAR data must be [channels, height, width], got shape {data.shape}")
    invalid = ~np.isfinite(data) if not np.iscomplexobj(data) else ~np.isfinite(data.real) | ~np.isfinite(data.imag)
    if nodata is not None and not np.isnan(nodata):
        invalid |= data == nodata
    if invalid.all():
        raise ValueError("no valid pixel: every value is NaN, infinite or nodata")
    if unit == "auto":
        # dB data is mostly negative (sigma0 < 1); linear data may hold a few negative pixels after noise removal.
        unit = "complex" if np.iscomplexobj(data) else "db" if np.median(data[~invalid]) < 0 else "intensity"
    names = [p.upper() for p in polarizations] if polarizations is not None else None
    if names is not None and len(names) != data.shape[0]:
        raise ValueError(f"{len(names)} polarisations named ({names}) for {data.shape[0]} channels")
    if unit == "complex" and data.shape[0] == 4:
        data, invalid = _pauli(data, names), invalid.any(0, keepdims=True).repeat(3, 0)
        unit = "amplitude"
    db = _to_db(np.where(invalid, np.nan, data), unit)
    channels = _polarisation_channels(db, names)
    valid = np.isfinite(channels)
    if not valid.any():
        raise ValueError(f"no valid pixel: every value is zero or negative in {unit} units")
    out = np.zeros(channels.shape[1:] + (3,), dtype=np.uint8)
    for c in range(3):
        values = channels[c][valid[c]]
        if values.size == 0:
            continue
        low, high = np.percentile(values, CLIP_PERCENTILES)
        scaled = (channels[c] - low) / max(high - low, 1e-6)
        out[..., c] = np.where(valid[c], np.round(np.clip(scaled, 0, 1) * 255), 0).astype(np.uint8)
    return out


def _to_db(data: np.ndarray, unit: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        if unit == "db":
            return data.astype(np.float64)
        if unit == "complex":
            data = np.abs(data) ** 2
            unit = "intensity"
        power = data.astype(np.float64)
        db = (20 if unit == "amplitude" else 10) * np.log10(power)
    return np.where(power > 0, db, np.nan)  # zero or negative (below the noise floor): no valid dB value


def _polarisation_channels(db: np.ndarray, names) -> np.ndarray:
    count = db.shape[0]
    if count == 1:
        return np.repeat(db, 3, axis=0)
    if count == 2:
        if names is not None and names[0] in ("VH", "HV"):  # put the co-polarised channel first
            db = db[::-1]
        return np.stack([db[0], db[1], db[0] - db[1]])
    if count == 3:
        return db
    if count == 4:
        hh, hv, vh, vv = (db[i] for i in _quad_order(names))
        return np.stack([hh, (hv + vh) / 2, vv])
    raise ValueError(f"expected 1 to 4 polarisation channels, got {count}")


def _pauli(data: np.ndarray, names) -> np.ndarray:
    hh, hv, vh, vv = (data[i] for i in _quad_order(names))
    return np.stack([np.abs(hh - vv), np.abs(hv + vh), np.abs(hh + vv)])


def _quad_order(names) -> list[int]:
    """Channel indexes of HH, HV, VH, VV: by name when named, else as given."""
    return [names.index(p) for p in QUAD_ORDER] if names is not None and set(names) == set(QUAD_ORDER) else [0, 1, 2, 3]
