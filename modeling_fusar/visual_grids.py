"""Where each backbone puts an image's visual tokens: the one thing FUSAR-GPT must know about a backbone.

The anchors are spread over an image's pre-merge patch grid, then resized to the grid of the tokens the
visual module emits (its `get_image_features(...).pooler_output`, one `[tokens, hidden]` tensor per image,
in raster order). To support another backbone, describe its grid with a function and add it to
`VISUAL_GRIDS` under the backbone's `model_type`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VisualGrid:
    """One image's visual tokens: `leading_tokens` left alone (e.g. a CLS token), then a raster over the
    `patch_rows x patch_cols` patch grid merged `merge x merge` into one token each."""

    patch_rows: int
    patch_cols: int
    merge: int = 1
    leading_tokens: int = 0

    @property
    def token_rows(self) -> int:
        return self.patch_rows // self.merge

    @property
    def token_cols(self) -> int:
        return self.patch_cols // self.merge

    @property
    def num_tokens(self) -> int:
        return self.leading_tokens + self.token_rows * self.token_cols


def qwen_vl_grids(config, pixel_values, image_grid_thw=None, **_) -> list[VisualGrid]:
    """Qwen2-VL / Qwen2.5-VL: native resolution, `image_grid_thw` rows of (frames, patch rows, patch cols)."""
    if image_grid_thw is None:
        raise ValueError("Qwen-VL backbones need `image_grid_thw` (from their processor) beside `pixel_values`.")
    merge = config.vision_config.spatial_merge_size
    grids = []
    for frames, rows, cols in image_grid_thw.tolist():
        if frames != 1:
            raise ValueError(f"image_grid_thw has {frames} frames for one image; FUSAR-GPT reads still images only")
        grids.append(VisualGrid(rows, cols, merge))
    return grids


def llava_grids(config, pixel_values, **_) -> list[VisualGrid]:
    """LLaVA: a fixed square patch grid, with the CLS token kept in front under the "full" feature strategy."""
    patch = config.vision_config.patch_size
    rows, cols = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    leading = 1 if config.vision_feature_select_strategy == "full" else 0
    return [VisualGrid(rows, cols, 1, leading)] * pixel_values.shape[0]


VISUAL_GRIDS = {"qwen2_vl": qwen_vl_grids, "qwen2_5_vl": qwen_vl_grids, "llava": llava_grids}


def visual_grids(config, pixel_values, **image_inputs) -> list[VisualGrid]:
    """The visual token grid of every image in a batch, for the base model described by `config`."""
    describe = VISUAL_GRIDS.get(config.model_type)
    if describe is None:
        raise ValueError(
            f"FUSAR-GPT does not know the visual token grid of base model_type={config.model_type!r}; "
            f"known: {sorted(VISUAL_GRIDS)}. Add a grid function to modeling_fusar/visual_grids.py."
        )
    return describe(config, pixel_values, **image_inputs)
