"""The triplet dataset's schema (README, The triplet dataset): one row = one instruction example about one SAR scene."""

from __future__ import annotations

from datasets import Features, Image, List, Value

from processing.anchors import as_anchor_set

from .alphaearth import DIM
from .names import SPLITS, TASKS

SCHEMA_VERSION = "1.0"

FEATURES = Features({
    "id": Value("string"),
    "scene_id": Value("string"),
    "task": Value("string"),
    "image": Image(),
    "messages": List({"role": Value("string"), "content": Value("string")}),
    "anchor_values": List(List(List(Value("float32")))),  # [S][T][D]
    "anchor_positions": List(List(Value("float32"))),  # [S][2] (row, col) in [0, 1]
    "anchor_mask": List(List(Value("bool"))),  # [S][T]
    "anchor_years": List(Value("int32")),  # [T]
    "year": Value("int32"),  # acquisition year, None if unknown
    "footprint": List(Value("float64")),  # lon_min, lat_min, lon_max, lat_max; NaN if unknown
    "crs": Value("string"),
    "sensor": Value("string"),
    "polarization": Value("string"),
    "resolution_m": Value("float32"),
    "objects": List({"bbox": List(Value("float32")), "category": Value("string")}),  # [x1, y1, x2, y2] pixels
    "source": Value("string"),  # provenance and licence
})

# Columns a dataset may add: harvested chips keep the facts their texts were made from.
OPTIONAL_FEATURES = {"facts": Value("string")}

FIELD_DOCS = {
    "id": "unique row id (`<scene_id>-<task>-<n>`)",
    "scene_id": "the scene the row is about; splits never share a scene",
    "task": f"one of {', '.join(TASKS)}",
    "image": "the SAR scene as the model sees it: 8-bit RGB from `processing.load_sar_image`",
    "messages": "the user turn then the assistant turn, text only (the processor places the image)",
    "anchor_values": "[S][T][64] AlphaEarth vectors per anchor and year (zeros where masked)",
    "anchor_positions": "[S][2] anchor (row, col) as fractions of the image, 0 = first, 1 = last pixel",
    "anchor_mask": "[S][T] whether the vector exists (False: nodata, outside the tiles, or year missing)",
    "anchor_years": "[T] the calendar year of each anchor year slot (empty if unknown)",
    "year": "acquisition year (null if unknown)",
    "footprint": "lon_min, lat_min, lon_max, lat_max of the scene (NaN if not georeferenced)",
    "crs": "CRS of the source raster (empty if not georeferenced)",
    "sensor": "e.g. Sentinel-1, Gaofen-3",
    "polarization": "e.g. VV, VV+VH, HH",
    "resolution_m": "ground pixel size in metres (NaN if unknown)",
    "objects": "boxes [x1, y1, x2, y2] in pixels of `image`, with their category",
    "source": "provenance and licence of the scene, its labels and its anchors",
}


def row_anchors(row: dict, anchor_dim: int = DIM):
    """A row's anchor columns as the AnchorSet the processor and the model read (empty when the row has none)."""
    if not row["anchor_values"]:
        return as_anchor_set(None, anchor_dim=anchor_dim)
    return as_anchor_set({"values": row["anchor_values"], "positions": row["anchor_positions"],
                          "mask": row["anchor_mask"], "years": row["anchor_years"] or None}, anchor_dim=anchor_dim)
