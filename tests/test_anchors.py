"""Anchor sets from arrays, dicts, the authors' .npz files and dense fields; validation; batching."""

import numpy as np
import pytest
import torch

from conftest import build, random_anchors, random_image
from processing import as_anchor_set, collate_anchor_sets, sample_field


def test_the_authors_npz_format(tmp_path):
    features = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
    positions = np.random.default_rng(1).uniform(size=(16, 2)).astype(np.float32)
    np.savez(tmp_path / "sample.npz", features=features, positions=positions)
    anchors = as_anchor_set(tmp_path / "sample.npz", anchor_dim=64)
    assert anchors.values.shape == (16, 1, 64) and np.array_equal(anchors.values[:, 0], features)
    assert np.array_equal(anchors.positions, positions) and anchors.mask.all()


def test_npz_without_the_expected_keys(tmp_path):
    np.savez(tmp_path / "odd.npz", vectors=np.zeros((3, 64)))
    with pytest.raises(ValueError, match=r"odd.npz: an anchor .npz needs 'features' \(or 'values'\) and 'positions'"):
        as_anchor_set(tmp_path / "odd.npz", anchor_dim=64)
    np.savez(tmp_path / "strings.npz", features=np.full((3, 64), "x"), positions=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="strings.npz: anchor values and positions must be numbers"):
        as_anchor_set(tmp_path / "strings.npz", anchor_dim=64)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz: not an .npz or .npy anchor file"):
        as_anchor_set(tmp_path / "junk.npz", anchor_dim=64)


def test_nan_vectors_without_a_mask_are_nodata():
    values = np.random.default_rng(0).normal(size=(4, 2, 8)).astype(np.float32)
    values[1, 0] = np.nan
    anchors = as_anchor_set({"values": values, "positions": np.full((4, 2), 0.5), "years": [2020, 2021]}, anchor_dim=8)
    assert anchors.mask.tolist() == [[True, True], [False, True], [True, True], [True, True]]
    assert np.isfinite(anchors.values).all() and anchors.years == [2020, 2021]


@pytest.mark.parametrize(
    "source, message",
    [
        ({"values": np.zeros((3, 32)), "positions": np.zeros((3, 2))}, "have 32 dimensions, expected anchor_dim=64"),
        ({"values": np.zeros((3, 64)), "positions": np.full((3, 2), 1.2)}, r"position of anchor 0 is \[1.2"),
        ({"values": np.zeros((3, 64)), "positions": np.zeros((2, 2))}, "positions must be"),
        ({"values": np.full((3, 64), np.nan), "positions": np.zeros((3, 2)), "mask": np.ones(3, bool)}, "marked valid"),
        ({"features": np.zeros((3, 64))}, "needs 'values' \\(or 'features'\\) and 'positions'"),
        (np.zeros((5, 64)), "cannot read anchors"),
    ],
)
def test_bad_anchor_sets_name_the_problem(source, message):
    with pytest.raises(ValueError, match=message):
        as_anchor_set(source, anchor_dim=64, where="anchors[0]")


def test_dense_field_sampled_on_a_grid():
    field = np.arange(2 * 3 * 9 * 9, dtype=np.float32).reshape(2, 3, 9, 9)  # [T, D, H, W]
    field[1, :, 0, 0] = np.nan
    anchors = sample_field(field, anchor_dim=3, grid_size=3, years=[2023, 2024])
    assert anchors.values.shape == (9, 2, 3)
    np.testing.assert_allclose(anchors.positions[:3], [[1 / 6, 1 / 6], [1 / 6, 0.5], [1 / 6, 5 / 6]])
    # centre anchor (0.5, 0.5) -> field pixel (4, 4)
    assert np.array_equal(anchors.values[4, 0], field[0, :, 4, 4])
    assert anchors.mask[:, 0].all() and anchors.mask[:, 1].all()  # (0, 0) is not sampled with 3x3 centres
    with pytest.raises(ValueError, match="D=anchor_dim=64"):
        sample_field(field, anchor_dim=64)


def test_collate_pads_and_masks():
    sets = [as_anchor_set(random_anchors(0, 3), anchor_dim=64), as_anchor_set(None, anchor_dim=64),
            as_anchor_set({**random_anchors(1, 5, years=2), "years": [2020, 2024]}, anchor_dim=64)]
    batch = collate_anchor_sets(sets, acquisition_years=[2022, None, 2023])
    assert batch["anchor_values"].shape == (3, 5, 2, 64)
    assert batch["anchor_mask"].sum(dim=(1, 2)).tolist() == [3, 0, 10]
    assert batch["anchor_year_offsets"].tolist() == [[0, 0], [0, 0], [-3, 1]]


def test_processor_anchor_count_must_match_images(tokenizers):
    _, processor = build(tokenizers, "llava")
    with pytest.raises(ValueError, match="anchors for 2 images but 1 images"):
        processor(images=[random_image(0)], text=["<image>"], anchors=[None, None])


def test_processor_round_trip_keeps_its_options(tokenizers, tmp_path):
    from transformers import AutoProcessor

    _, processor = build(tokenizers, "qwen2_5_vl")
    processor.anchor_grid_size, processor.image_size = 4, 84
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert (loaded.anchor_grid_size, loaded.image_size, loaded.base_processor_class) == (4, 84, "Qwen2_5_VLProcessor")
    inputs = loaded(images=[random_image(0, 50, 70)], text=["<|vision_start|><|image_pad|><|vision_end|>"],
                    anchors=[np.zeros((64, 10, 10), np.float32)], return_tensors="pt")
    assert inputs["anchor_values"].shape == (1, 16, 1, 64)
    assert torch.equal(inputs["image_grid_thw"], torch.tensor([[1, 6, 6]]))  # resized to 84 x 84 first


def test_centre_cropping_processors_see_the_anchors_where_the_crop_puts_them(tokenizers):
    """LLaVA's CLIP processor resizes the short side and crops the centre: anchors must follow the crop."""
    _, processor = build(tokenizers, "llava")
    image = random_image(0, 56, 168)
    anchors = {"values": np.ones((3, 64), np.float32), "positions": np.array([[0.5, 0.0], [0.5, 0.5], [0.0, 0.5]])}
    inputs = processor(images=[image], text=["<image>"], anchors=[anchors], return_tensors="pt")
    assert inputs["anchor_mask"][0, :, 0].tolist() == [False, True, True]  # column 0 lies left of the crop
    torch.testing.assert_close(inputs["anchor_positions"][0, 1:], torch.tensor([[0.5, 0.5], [0.0, 0.5]]))
    square = processor.base_processor(images=[image.crop((56, 0, 112, 56))], text=["<image>"], return_tensors="pt")
    assert torch.equal(inputs["pixel_values"], square["pixel_values"])


def test_masked_anchors_may_hold_anything():
    values = np.ones((2, 64), np.float32)
    anchors = as_anchor_set({"values": values, "positions": np.array([[0.2, 0.3], [np.nan, 7.0]]),
                             "mask": np.array([True, False])}, anchor_dim=64)
    assert anchors.mask[:, 0].tolist() == [True, False] and np.isfinite(anchors.positions).all()


def authors_npy_columns(count=5, seed=0):
    """lon, lat, row, col, x, y and A00..A63 as the authors' data code writes them."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    x, y = rng.uniform(500_000, 500_500, count), rng.uniform(4_000_000, 4_000_300, count)
    rows, cols = rng.integers(0, 50, count), rng.integers(0, 50, count)
    return np.column_stack([rng.uniform(size=count), rng.uniform(size=count), rows, cols, x, y, vectors])


@pytest.mark.parametrize("layout", ["numeric", "structured"])
def test_the_authors_npy_format(tmp_path, layout):
    """Positions are the y and x columns min-max normalised over the file, as (row, col)."""
    table = authors_npy_columns()
    if layout == "structured":
        names = ["lon", "lat", "row", "col", "x", "y"] + [f"A{i:02d}" for i in range(64)]
        array = np.zeros(len(table), dtype=[(name, "f8" if i < 6 else "f4") for i, name in enumerate(names)])
        for i, name in enumerate(names):
            array[name] = table[:, i]
    else:
        array = table
    np.save(tmp_path / "sample.npy", array)
    anchors = as_anchor_set(tmp_path / "sample.npy", anchor_dim=64)
    y, x = table[:, 5], table[:, 4]
    expected = np.stack([(y - y.min()) / (y.max() - y.min()), (x - x.min()) / (x.max() - x.min())], -1)
    np.testing.assert_allclose(anchors.positions, expected, atol=1e-6)
    np.testing.assert_array_equal(anchors.values[:, 0], table[:, 6:].astype(np.float32))


def test_an_npy_without_x_y_is_placed_by_row_and_col(tmp_path):
    table = authors_npy_columns()
    table[:, 4:6] = np.nan
    np.save(tmp_path / "sample.npy", table)
    anchors = as_anchor_set(tmp_path / "sample.npy", anchor_dim=64)
    rows, cols = table[:, 2], table[:, 3]
    np.testing.assert_allclose(anchors.positions[:, 0], (rows - rows.min()) / (rows.max() - rows.min()), atol=1e-6)
    np.testing.assert_allclose(anchors.positions[:, 1], (cols - cols.min()) / (cols.max() - cols.min()), atol=1e-6)


def test_anchor_files_are_read_by_content_and_bad_ones_named(tmp_path):
    np.save(tmp_path / "really_npy.npz", authors_npy_columns())  # np.save appends .npy: rename to the wrong suffix
    (tmp_path / "really_npy.npz.npy").rename(tmp_path / "really_npy.npz")
    assert as_anchor_set(tmp_path / "really_npy.npz", anchor_dim=64).values.shape == (5, 1, 64)
    np.save(tmp_path / "short.npy", np.zeros((4, 10)))
    with pytest.raises(ValueError, match=r"short.npy: an anchor .npy must be .* numeric \[S, 70\] array"):
        as_anchor_set(tmp_path / "short.npy", anchor_dim=64)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="objects.npy: not a readable .npz or .npy"):  # never unpickled
        as_anchor_set(tmp_path / "objects.npy", anchor_dim=64)
