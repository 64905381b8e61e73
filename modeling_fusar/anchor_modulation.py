"""Spatiotemporal anchors and Token-wise Linear Modulation (TLM): FUSAR-GPT's one addition to a VLM.

Each anchor (a position in the image and an embedding vector per year) becomes FiLM parameters
(gamma, beta) through an MLP; a Gaussian kernel spreads them over the visual patch grid; each visual
token x becomes `x * (1 + G) + B`. With one year per anchor this is exactly the authors' released
computation (their released code; README, The anchor module), vectorised over anchors and over images that share a grid.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .visual_grids import VisualGrid

# The authors' epsilon in both normalisations of the anchor weights.
WEIGHT_EPS = 1e-6


def check_anchor_inputs(values, positions, mask, anchor_dim: int, num_images: int, year_offsets=None):
    """Validate the anchor tensors and return values, positions and mask with masked-out entries zeroed.

    values [B, S, T, D] float, positions [B, S, 2] (row, col) in [0, 1], mask [B, S, T] bool (default: all
    True), year_offsets [B, T] integer or None. Masked-out entries may hold anything, NaN included: they never
    reach the model.
    """
    if values.dim() != 4:
        raise ValueError(f"anchor_values must be [images, anchors, years, anchor_dim], got shape {tuple(values.shape)}")
    images, anchors, years, dim = values.shape
    if dim != anchor_dim:
        raise ValueError(f"anchor_values has last dimension {dim}, expected anchor_dim={anchor_dim} (FusarConfig)")
    if images != num_images:
        raise ValueError(f"anchor_values holds anchors for {images} images but the batch has {num_images} images")
    if positions is None or tuple(positions.shape) != (images, anchors, 2):
        got = None if positions is None else tuple(positions.shape)
        raise ValueError(f"anchor_positions must have shape {(images, anchors, 2)} to match anchor_values, got {got}")
    if mask is None:
        mask = torch.ones(values.shape[:3], dtype=torch.bool, device=values.device)
    elif tuple(mask.shape) != (images, anchors, years):
        raise ValueError(f"anchor_mask must have shape {(images, anchors, years)} to match anchor_values, got "
                         f"{tuple(mask.shape)}")
    mask = mask.bool()
    if year_offsets is not None and (tuple(year_offsets.shape) != (images, years) or year_offsets.is_floating_point()):
        raise ValueError(f"anchor_year_offsets must be integers of shape {(images, years)} (years after acquisition "
                         f"per image and year), got {year_offsets.dtype} {tuple(year_offsets.shape)}")
    if not torch.isfinite(values[mask]).all():
        bad = (~torch.isfinite(values) & mask[..., None]).nonzero()[0].tolist()
        raise ValueError(f"anchor_values has a NaN or infinite value at [image, anchor, year, dim]={bad}, "
                         "where anchor_mask marks it valid; mask it out or fix the input")
    used = mask.any(-1)
    used_positions = positions[used]
    if not ((used_positions >= 0) & (used_positions <= 1)).all():
        bad = (used[..., None] & ~((positions >= 0) & (positions <= 1))).nonzero()[0].tolist()
        raise ValueError(f"anchor_positions at [image, anchor, axis]={bad} is {positions[tuple(bad)].item()}; "
                         "positions are (row, col) fractions of the image in [0, 1]")
    values = torch.where(mask[..., None], values, torch.zeros((), dtype=values.dtype, device=values.device))
    positions = torch.where(used[..., None], positions, torch.zeros((), dtype=positions.dtype, device=positions.device))
    return values, positions, mask


class TemporalAnchorFusion(nn.Module):
    """Attention over an anchor's valid years, each scored from its vector and its offset from the acquisition
    year. One valid year gets weight exactly 1, so a one-year anchor passes through unchanged."""

    def __init__(self, anchor_dim: int, max_year_offset: int):
        super().__init__()
        self.max_year_offset = max_year_offset
        self.year_offset_embedding = nn.Embedding(2 * max_year_offset + 1, anchor_dim)
        # No bias on the last layer: softmax ignores a shift shared by all years.
        self.score = nn.Sequential(nn.Linear(anchor_dim, anchor_dim), nn.Tanh(), nn.Linear(anchor_dim, 1, bias=False))

    def forward(self, values: torch.Tensor, mask: torch.Tensor, year_offsets: torch.Tensor | None) -> torch.Tensor:
        """values [N, S, T, D], mask [N, S, T], year_offsets [N, T] (years after acquisition) -> [N, S, D]."""
        if year_offsets is None:
            year_offsets = torch.zeros(values.shape[0], values.shape[2], dtype=torch.long, device=values.device)
        offsets = year_offsets.long().clamp(-self.max_year_offset, self.max_year_offset) + self.max_year_offset
        keys = values + self.year_offset_embedding(offsets)[:, None]
        # Scores in float32, whatever autocast made of the Linear layers (bf16 / fp16): the masking fill is float32's
        # minimum, and a softmax over years is cheap enough to do exactly.
        scores = self.score(keys).squeeze(-1).float().masked_fill(~mask, torch.finfo(torch.float32).min)
        # An anchor without any valid year gets all-zero weights (and is ignored downstream), never NaN.
        weights = (scores.softmax(-1) * mask).to(values.dtype)
        return (weights[..., None] * values).sum(-2)


class AnchorModulation(nn.Module):
    """Turns anchors into per-token FiLM fields and applies them to the visual module's output tokens."""

    def __init__(self, anchor_dim: int, hidden_size: int, mlp_hidden_size: int, sigma: float, max_year_offset: int):
        super().__init__()
        self.sigma = sigma
        self.temporal = TemporalAnchorFusion(anchor_dim, max_year_offset)
        # Same layout as the authors' `film_mlp` (keys 0.* and 2.*), so their weights load as they are.
        self.film = nn.Sequential(nn.Linear(anchor_dim, mlp_hidden_size), nn.SiLU(), nn.Linear(mlp_hidden_size, 2 * hidden_size))

    def film_parameters(self, values, mask, year_offsets):
        """[N, S, T, D] anchors -> [N, S, 2C] (gamma | beta) per anchor and [N, S] anchor validity."""
        dtype = self.film[0].weight.dtype
        fused = self.temporal(values.to(dtype), mask, year_offsets)
        return self.film(fused), mask.any(-1)

    def token_weights(self, grid: VisualGrid, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Weight of each anchor on each visual token: [n, S, 2] positions -> [n, S, token_rows * token_cols].

        Gaussian weights on the pre-merge patch grid, normalised over the valid anchors twice as the authors do,
        then resized bilinearly to the token grid (resizing the weights equals resizing the fields: it is linear).
        Masked anchors count in neither normalisation, so padding an image's anchors changes nothing.
        """
        rows = torch.arange(grid.patch_rows, device=positions.device, dtype=torch.float32)
        cols = torch.arange(grid.patch_cols, device=positions.device, dtype=torch.float32)
        anchor_rows = positions[..., 0].float() * (grid.patch_rows - 1)
        anchor_cols = positions[..., 1].float() * (grid.patch_cols - 1)
        squared_distance = (rows[:, None] - anchor_rows[..., None, None]) ** 2 + (cols - anchor_cols[..., None, None]) ** 2
        weights = torch.exp(-squared_distance / (2 * self.sigma**2)) * valid[..., None, None]
        weights = weights / (weights.sum(1, keepdim=True) + WEIGHT_EPS)
        weights = weights / (weights.sum(1, keepdim=True) + WEIGHT_EPS)
        if grid.merge != 1:
            weights = F.interpolate(weights, size=(grid.token_rows, grid.token_cols), mode="bilinear", align_corners=False)
        return weights.flatten(2)

    def forward(
        self,
        features: Sequence[torch.Tensor],
        grids: Sequence[VisualGrid],
        values: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        year_offsets: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Modulate each image's `[tokens, C]` features; inputs as returned by `check_anchor_inputs`."""
        film, valid = self.film_parameters(values, mask, year_offsets)
        images_by_grid = defaultdict(list)
        for image, grid in enumerate(grids):
            images_by_grid[grid].append(image)
        modulated = list(features)
        for grid, images in images_by_grid.items():
            index = torch.tensor(images, device=film.device)
            weights = self.token_weights(grid, positions[index], valid[index])
            gamma, beta = (weights.transpose(1, 2) @ film[index].float()).chunk(2, dim=-1)
            tokens = torch.stack([features[image][grid.leading_tokens :] for image in images])
            tokens = tokens * (1 + gamma.to(tokens)) + beta.to(tokens)
            for row, image in enumerate(images):
                lead = features[image][: grid.leading_tokens]
                modulated[image] = torch.cat([lead, tokens[row]]) if grid.leading_tokens else tokens[row]
        return modulated
