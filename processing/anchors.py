"""Anchor sets: per image, positions in the image and one embedding vector per year; padded into a batch.

Accepted per image (`as_anchor_set`): an `AnchorSet`; a dict with `values` (or the authors' `features`),
`positions` and optional `mask` / `years`; a `(values, positions)` pair; the path of an `.npz` holding the
same keys (the authors' files: `features` [S, 64], `positions` [S, 2] as (row, col) in [0, 1]) or of the authors'
`.npy` (columns `lon, lat, row, col, x, y, A00..A63`, see `_from_npy`); a dense
embedding field [D, H, W] or [T, D, H, W] covering the image, sampled on a regular grid; or None (no anchors).
Values are [S, D] for one year or [S, T, D]. NaN vectors without a mask are taken as nodata (masked).
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class AnchorSet:
    values: np.ndarray  # [S, T, D] float32
    positions: np.ndarray  # [S, 2] float32, (row, col) in [0, 1]
    mask: np.ndarray  # [S, T] bool: which (anchor, year) entries exist
    years: list[int] | None = field(default=None)  # calendar year of each of the T entries, if known

    @property
    def num_years(self) -> int:
        return self.values.shape[1]

    def cropped(self, top: int, left: int, size: tuple[int, int], image_size: tuple[int, int]) -> "AnchorSet":
        """The same anchors on a crop (`size` = height, width at `top`, `left`) of an image of `image_size` pixels;
        anchors that fall outside the crop are masked."""
        pixels = self.positions * (np.array(image_size) - 1)
        inside = (pixels - (top, left)) / np.maximum(np.array(size) - 1, 1)
        kept = ((inside >= 0) & (inside <= 1)).all(-1)
        positions = np.where(kept[:, None], inside, 0).astype(np.float32)
        return AnchorSet(self.values * kept[:, None, None], positions, self.mask & kept[:, None], self.years)


def as_anchor_set(source, *, anchor_dim: int, grid_size: int = 8, years=None, where: str = "anchors") -> AnchorSet:
    """Read and validate one image's anchors; `where` names the input in error messages."""
    if source is None:
        return AnchorSet(np.zeros((0, 1, anchor_dim), np.float32), np.zeros((0, 2), np.float32), np.zeros((0, 1), bool))
    if isinstance(source, AnchorSet):
        return _validated(source.values, source.positions, source.mask, source.years, anchor_dim, where)
    if isinstance(source, (str, os.PathLike)):
        return _from_file(Path(source), anchor_dim, years)
    if isinstance(source, dict):
        values = source.get("values", source.get("features"))
        if values is None or "positions" not in source:
            raise ValueError(f"{where}: a dict of anchors needs 'values' (or 'features') and 'positions', "
                             f"got keys {sorted(source)}")
        return _validated(values, source["positions"], source.get("mask"), source.get("years", years), anchor_dim, where)
    if isinstance(source, tuple) and len(source) == 2:
        return _validated(source[0], source[1], None, years, anchor_dim, where)
    array = np.asarray(source.detach().cpu() if hasattr(source, "detach") else source)  # a torch tensor
    if array.ndim in (3, 4):
        return sample_field(array, anchor_dim=anchor_dim, grid_size=grid_size, years=years, where=where)
    raise ValueError(f"{where}: cannot read anchors from {type(source).__name__} of shape {getattr(array, 'shape', None)}")


def _from_file(path: Path, anchor_dim: int, years) -> AnchorSet:
    return from_bytes(path.read_bytes(), anchor_dim=anchor_dim, years=years, where=str(path))


def from_bytes(data: bytes, *, anchor_dim: int, years=None, where: str = "anchors",
               max_bytes: int | None = None) -> AnchorSet:
    """The content of an `.npz` or `.npy` anchor file, told apart by content (never by name), never unpickled.
    `max_bytes` bounds what loading may allocate, read from the zip's directory and the arrays' headers first."""
    if not data.startswith(b"PK") and not data.startswith(b"\x93NUMPY"):  # np.load takes anything else for a pickle
        raise ValueError(f"{where}: not an .npz or .npy anchor file (numpy's zip or array format); expected an .npz "
                         "with 'features' and 'positions', or the authors' .npy")
    try:
        too_large = max_bytes is not None and _loaded_bytes(data) > max_bytes
        if not too_large:
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
            arrays = loaded if isinstance(loaded, np.ndarray) else _npz_arrays(loaded)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{where}: not a readable .npz or .npy anchor file ({error})") from error
    if too_large:
        raise ValueError(f"{where}: loaded, the anchor file would take more than the limit of {max_bytes} bytes")
    if isinstance(arrays, np.ndarray):
        return _from_npy(arrays, where, anchor_dim)
    if "positions" not in arrays or not {"features", "values"} & set(arrays):
        raise ValueError(f"{where}: an anchor .npz needs 'features' (or 'values') and 'positions', has {sorted(arrays)}")
    values = arrays.get("values", arrays.get("features"))
    file_years = arrays["years"].tolist() if "years" in arrays else years
    return _validated(values, arrays["positions"], arrays.get("mask"), file_years, anchor_dim, where)


def _loaded_bytes(data: bytes) -> int:
    """What `np.load` would allocate, from the zip's directory and each array's header: nothing is inflated."""
    if not data.startswith(b"PK"):
        return _array_bytes(io.BytesIO(data))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        total = 0
        for member in archive.infolist():
            with archive.open(member) as array:  # the declared size bounds what reading the member can inflate
                total += max(member.file_size, _array_bytes(array))
        return total


def _array_bytes(file) -> int:
    version = np.lib.format.read_magic(file)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(file)
    return int(np.prod(shape, dtype=np.float64)) * dtype.itemsize


def _npz_arrays(npz) -> dict[str, np.ndarray]:
    with npz:
        return {key: npz[key] for key in npz.files}


# The authors' .npy anchor files: these columns, then the vector (A00..A63): a structured array with these field
# names, or a numeric [S, 6 + D] array in this order.
NPY_COLUMNS = ("lon", "lat", "row", "col", "x", "y")


def _from_npy(array: np.ndarray, path: str, anchor_dim: int) -> AnchorSet:
    """As the authors' data code reads it: positions (row, col) are the y and x columns (else row and col), each
    min-max normalised over the file to [0, 1] (a column with one value sits at 0.5)."""
    bands = [f"A{i:02d}" for i in range(anchor_dim)]
    if array.dtype.names and array.ndim == 1:
        missing = [name for name in bands if name not in array.dtype.names]
        if missing:
            raise ValueError(f"{path}: a structured anchor .npy needs fields {bands[0]}..{bands[-1]}; lacks {missing[:4]}")
        values = np.stack([array[name] for name in bands], -1).astype(np.float32)
        columns = {name: array[name].astype(np.float64) for name in NPY_COLUMNS if name in array.dtype.names}
    elif array.ndim == 2 and array.shape[1] == len(NPY_COLUMNS) + anchor_dim and array.dtype.kind in "fiu":
        values = array[:, len(NPY_COLUMNS):].astype(np.float32)
        columns = {name: array[:, i].astype(np.float64) for i, name in enumerate(NPY_COLUMNS)}
    else:
        raise ValueError(f"{path}: an anchor .npy must be a structured array with fields {', '.join(NPY_COLUMNS)}, "
                         f"{bands[0]}..{bands[-1]} or a numeric [S, {len(NPY_COLUMNS) + anchor_dim}] array in that "
                         f"order; got {array.dtype} {array.shape}")
    for row, col in (("y", "x"), ("row", "col")):
        if row in columns and col in columns and np.isfinite(columns[row]).all() and np.isfinite(columns[col]).all():
            positions = np.stack([_min_max(columns[row]), _min_max(columns[col])], -1)
            return _validated(values, positions, None, None, anchor_dim, str(path))
    raise ValueError(f"{path}: no finite y, x (or row, col) columns to place the anchors; has {sorted(columns)}")


def _min_max(column: np.ndarray) -> np.ndarray:
    if column.size == 0 or column.max() == column.min():
        return np.full(column.shape, 0.5)
    return (column - column.min()) / (column.max() - column.min())


def _validated(values, positions, mask, years, anchor_dim: int, where: str) -> AnchorSet:
    try:
        values, positions = np.asarray(values, dtype=np.float32), np.asarray(positions, dtype=np.float32)
    except (TypeError, ValueError) as error:  # strings, objects: say which input
        raise ValueError(f"{where}: anchor values and positions must be numbers ({error})") from error
    if values.ndim == 2:  # one year
        values = values[:, None]
    if mask is not None and np.ndim(mask) == 1:
        mask = np.asarray(mask)[:, None]
    if values.ndim != 3:
        raise ValueError(f"{where}: anchor values must be [S, D] or [S, T, D], got shape {values.shape}")
    if values.shape[-1] != anchor_dim:
        raise ValueError(f"{where}: anchor vectors have {values.shape[-1]} dimensions, expected anchor_dim={anchor_dim}")
    if positions.shape != (values.shape[0], 2):
        raise ValueError(f"{where}: positions must be [S, 2] = {(values.shape[0], 2)}, got {positions.shape}")
    finite = np.isfinite(values).all(-1)
    if mask is None:
        mask = finite  # NaN vectors are nodata
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != values.shape[:2]:
            raise ValueError(f"{where}: mask must be [S, T] = {values.shape[:2]}, got {mask.shape}")
        if (mask & ~finite).any():
            bad = np.argwhere(mask & ~finite)[0].tolist()
            raise ValueError(f"{where}: anchor [anchor, year]={bad} has NaN or infinite values but is marked valid")
    used = mask.any(-1)
    outside = used & ~((positions >= 0) & (positions <= 1)).all(-1)  # NaN fails too
    if outside.any():
        bad = int(np.argmax(outside))
        raise ValueError(f"{where}: position of anchor {bad} is {positions[bad].tolist()}; positions are (row, col) "
                         "fractions of the image in [0, 1]")
    if years is not None and len(years) != values.shape[1]:
        raise ValueError(f"{where}: {len(years)} years given for {values.shape[1]} years of anchor values")
    return AnchorSet(np.where(mask[..., None], values, 0).astype(np.float32), np.where(used[:, None], positions, 0),
                     mask, None if years is None else [int(y) for y in years])


def grid_positions(grid_size: int, dtype=np.float32) -> np.ndarray:
    """(row, col) fractions of a `grid_size` x `grid_size` grid of cell centres, row-major."""
    if not isinstance(grid_size, int) or isinstance(grid_size, bool) or grid_size < 1:
        raise ValueError(f"grid_size must be a positive integer, got {grid_size!r}")
    centres = (np.arange(grid_size) + 0.5) / grid_size
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], -1).astype(dtype)


def sample_field(field: np.ndarray, *, anchor_dim: int, grid_size: int = 8, years=None, where="field") -> AnchorSet:
    """Anchors on a `grid_size x grid_size` grid of cell centres over a dense field [D, H, W] or [T, D, H, W]
    that covers the image; each anchor takes the nearest field pixel (NaN pixels become masked)."""
    field = np.asarray(field, dtype=np.float32)
    if field.ndim == 3:
        field = field[None]
    if field.ndim != 4 or field.shape[1] != anchor_dim or 0 in field.shape:
        raise ValueError(f"{where}: a dense anchor field must be [D, H, W] or [T, D, H, W] with D=anchor_dim="
                         f"{anchor_dim} and no empty axis, got shape {field.shape}")
    positions = grid_positions(grid_size)
    height, width = field.shape[-2:]
    pixel_rows = np.round(positions[:, 0] * (height - 1)).astype(int)
    pixel_cols = np.round(positions[:, 1] * (width - 1)).astype(int)
    values = field[:, :, pixel_rows, pixel_cols].transpose(2, 0, 1)  # [S, T, D]
    return _validated(values, positions, None, years, anchor_dim, where)


def collate_anchor_sets(sets: list[AnchorSet], acquisition_years=None) -> dict[str, "torch.Tensor"]:
    """Pad anchor sets into the model's batch tensors: anchor_values [B, S, T, D], anchor_positions [B, S, 2],
    anchor_mask [B, S, T] and, where years and acquisition years are known, anchor_year_offsets [B, T]."""
    import torch  # here, not at the top: reading anchors (fusar-data) needs no torch

    batch = len(sets)
    anchors = max([s.values.shape[0] for s in sets] + [1])
    years = max(s.num_years for s in sets)
    dim = sets[0].values.shape[-1]
    values = torch.zeros(batch, anchors, years, dim)
    positions = torch.zeros(batch, anchors, 2)
    mask = torch.zeros(batch, anchors, years, dtype=torch.bool)
    offsets = torch.zeros(batch, years, dtype=torch.long)
    for i, s in enumerate(sets):
        count, span = s.values.shape[:2]
        values[i, :count, :span] = torch.from_numpy(s.values)
        positions[i, :count] = torch.from_numpy(s.positions)
        mask[i, :count, :span] = torch.from_numpy(s.mask)
        if s.years is not None and acquisition_years is not None and acquisition_years[i] is not None:
            offsets[i, :span] = torch.tensor(s.years) - int(acquisition_years[i])
    batch_tensors = {"anchor_values": values, "anchor_positions": positions, "anchor_mask": mask}
    if acquisition_years is not None:
        batch_tensors["anchor_year_offsets"] = offsets
    return batch_tensors
