"""The anchor module against an independent implementation of the authors' reference (their released code)."""

import pytest
import torch
import torch.nn.functional as F

from modeling_fusar.anchor_modulation import AnchorModulation, check_anchor_inputs
from modeling_fusar.visual_grids import VisualGrid


def reference_tlm(tokens, positions, vectors, valid, film_mlp, patch_rows, patch_cols, merge, sigma=2.0):
    """The authors' computation for one image, written out step by step as their code computes it."""
    gamma, beta = film_mlp(vectors).chunk(2, dim=-1)  # [S, C] each
    cells = torch.cartesian_prod(torch.arange(patch_rows), torch.arange(patch_cols)).float()  # (i, j), row-major
    anchors = positions * torch.tensor([patch_rows - 1, patch_cols - 1], dtype=torch.float32)
    weights = torch.exp(-((anchors[:, None] - cells[None]) ** 2).sum(-1) / (2 * sigma**2))  # [S, cells]
    weights = weights / (weights.sum(0, keepdim=True) + 1e-6)
    weights = weights * valid[:, None]
    weights = weights / (weights.sum(0, keepdim=True) + 1e-6)
    fields = []
    for parameter in (gamma, beta):
        field = (weights.T @ parameter).T.reshape(1, -1, patch_rows, patch_cols)
        field = F.interpolate(field, size=(patch_rows // merge, patch_cols // merge), mode="bilinear", align_corners=False)
        fields.append(field[0].flatten(1).T)
    return tokens * (1 + fields[0]) + fields[1]


def module(hidden=16, anchor_dim=8, seed=0):
    torch.manual_seed(seed)
    return AnchorModulation(anchor_dim, hidden, mlp_hidden_size=32, sigma=2.0, max_year_offset=5).eval()


def anchors(images, count, years=1, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(images, count, years, dim, generator=g), dim=-1),
            torch.rand(images, count, 2, generator=g), torch.ones(images, count, years, dtype=torch.bool))


@pytest.mark.parametrize("grid", [VisualGrid(8, 8, 2), VisualGrid(6, 10, 2), VisualGrid(5, 7, 1)])
def test_one_year_matches_the_reference(grid):
    tlm = module()
    values, positions, mask = anchors(2, 5)
    features = [torch.randn(grid.num_tokens, 16) for _ in range(2)]
    with torch.no_grad():
        ours = tlm(features, [grid, grid], values, positions, mask)
        for image in range(2):
            expected = reference_tlm(features[image], positions[image], values[image, :, 0], mask[image, :, 0].float(),
                                     tlm.film, grid.patch_rows, grid.patch_cols, grid.merge)
            torch.testing.assert_close(ours[image], expected, atol=1e-6, rtol=1e-5)


def test_masked_anchors_count_as_absent_so_padding_changes_nothing():
    tlm, grid = module(), VisualGrid(8, 8, 2)
    values, positions, mask = anchors(1, 6)
    tokens = [torch.randn(grid.num_tokens, 16)]
    mask[0, 3:] = False
    with torch.no_grad():
        padded = tlm(tokens, [grid], values, positions, mask)[0]
        dropped = tlm(tokens, [grid], values[:, :3], positions[:, :3], mask[:, :3])[0]
    torch.testing.assert_close(padded, dropped, atol=1e-6, rtol=1e-5)


def test_images_without_valid_anchors_are_left_exactly_unchanged():
    tlm, grid = module(), VisualGrid(8, 8, 2)
    torch.nn.init.normal_(tlm.film[-1].weight)
    values, positions, mask = anchors(3, 4)
    mask[1] = False
    features = [torch.randn(grid.num_tokens, 16) for _ in range(3)]
    with torch.no_grad():
        out = tlm(features, [grid] * 3, values, positions, mask)
    assert torch.equal(out[1], features[1])
    assert not torch.allclose(out[0], features[0])


def test_leading_tokens_are_not_modulated():
    tlm, grid = module(), VisualGrid(4, 4, 1, leading_tokens=1)
    torch.nn.init.normal_(tlm.film[-1].weight)
    values, positions, mask = anchors(1, 3)
    tokens = torch.randn(grid.num_tokens, 16)
    with torch.no_grad():
        out = tlm([tokens], [grid], values, positions, mask)[0]
        expected = reference_tlm(tokens[1:], positions[0], values[0, :, 0], mask[0, :, 0].float(), tlm.film, 4, 4, 1)
    assert torch.equal(out[0], tokens[0])
    torch.testing.assert_close(out[1:], expected, atol=1e-6, rtol=1e-5)


def test_one_valid_year_among_several_is_that_year():
    tlm, grid = module(), VisualGrid(8, 8, 2)
    torch.nn.init.normal_(tlm.film[-1].weight)
    values, positions, _ = anchors(1, 4, years=3)
    mask = torch.zeros(1, 4, 3, dtype=torch.bool)
    mask[0, :, 1] = True
    values[0, :, 0] = float("nan")  # a masked year may hold anything
    checked, positions, mask = check_anchor_inputs(values, positions, mask, 8, num_images=1)
    tokens = [torch.randn(grid.num_tokens, 16)]
    with torch.no_grad():
        several = tlm(tokens, [grid], checked, positions, mask, torch.tensor([[-2, 0, 3]]))[0]
        single = tlm(tokens, [grid], values[:, :, 1:2], positions, mask[:, :, 1:2])[0]
    assert torch.isfinite(several).all()
    torch.testing.assert_close(several, single, atol=1e-6, rtol=1e-5)


def test_year_attention_depends_on_the_year_offsets():
    tlm = module()
    values, _, mask = anchors(1, 4, years=3)
    torch.nn.init.normal_(tlm.temporal.year_offset_embedding.weight)
    with torch.no_grad():
        near = tlm.temporal(values, mask, torch.tensor([[0, 1, 2]]))
        far = tlm.temporal(values, mask, torch.tensor([[0, -4, 5]]))
    assert not torch.allclose(near, far)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v, p, m: (v[..., :4], p, m), "expected anchor_dim=8"),
        (lambda v, p, m: (v, p + 1.5, m), "positions are .* in \\[0, 1\\]"),
        (lambda v, p, m: (v.index_put_((torch.tensor(0), torch.tensor(1)), torch.tensor(float("nan"))), p, m), "NaN or infinite"),
        (lambda v, p, m: (v.index_put_((torch.tensor(0), torch.tensor(2)), torch.tensor(float("inf"))), p, m), "NaN or infinite"),
        (lambda v, p, m: (v[:1], p[:1], m[:1]), "anchors for 1 images but the batch has 2"),
        (lambda v, p, m: (v, p[:, :2], m), "anchor_positions must have shape"),
        (lambda v, p, m: (v, p, m[..., :0]), "anchor_mask must have shape"),
    ],
)
def test_bad_anchor_inputs_are_refused_clearly(change, message):
    values, positions, mask = change(*anchors(2, 4))
    with pytest.raises(ValueError, match=message):
        check_anchor_inputs(values, positions, mask, anchor_dim=8, num_images=2)


@pytest.mark.parametrize("offsets", [torch.zeros(2, 4, 1, dtype=torch.long), torch.zeros(2, 1), torch.zeros(3, 1, dtype=torch.long)])
def test_year_offsets_must_be_integers_per_image_and_year(offsets):
    with pytest.raises(ValueError, match=r"anchor_year_offsets must be integers of shape \(2, 1\)"):
        check_anchor_inputs(*anchors(2, 4), anchor_dim=8, num_images=2, year_offsets=offsets)
