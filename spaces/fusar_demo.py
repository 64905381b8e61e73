"""What the Space does, without the page: read an uploaded SAR image and anchors safely, ask FUSAR-GPT, draw its
boxes, and map where the anchors modulate the image."""

from __future__ import annotations

import functools
import io
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from command_line import local_or_hub_id
from dataset_scripts.tasks import parse_detection_answer

MAX_UPLOAD_BYTES = 50 * 2**20
MAX_PIXELS = 8192 * 8192  # decompression bombs stop here
MAX_IMAGE_BYTES = 2**30  # working memory of one image's conversion, from its header: a few at once fit a Space
HEAT_SCALE = 1.0  # the heat map's fixed top: mean |gamma| + |beta| of 1 doubles or erases a token's features
TASKS = {
    "Describe the scene": "Describe this SAR image.",
    "Count ships": "How many ships are in this SAR image? Answer with a number.",
    "Detect objects": 'Detect every object in this SAR image. Answer in JSON as [{"bbox_2d": [x1, y1, x2, y2], "label": ...}] in pixels.',
    "Land cover at the centre": "What land cover is at the centre of this scene? Answer with one of: water, forest, "
                                "cropland, grassland, urban, bare soil.",
}
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class UserError(ValueError):
    """A problem with what the user gave; shown in the page as it is."""


MAIN_JOB_CHECKPOINT = "outputs/main/fusar-tiny"


def default_checkpoint() -> str:
    """The model this Space serves: `FUSAR_CHECKPOINT`, else the Hub id fusar-publish wrote beside this file
    (`checkpoint.txt`), else the main job's checkpoint: under the current folder, else in the checkout that holds
    this file (so that `python <clone>/spaces/app.py` finds it from any folder)."""
    written = Path(__file__).with_name("checkpoint.txt")
    if os.environ.get("FUSAR_CHECKPOINT"):
        return os.environ["FUSAR_CHECKPOINT"]
    if written.is_file():
        return written.read_text().strip()
    here, checkout = Path(MAIN_JOB_CHECKPOINT), Path(__file__).resolve().parents[1] / MAIN_JOB_CHECKPOINT
    return str(here if here.is_dir() else checkout)


DEFAULT_CHECKPOINT = default_checkpoint()


def checkpoint_note(checkpoint: str) -> str:
    """The first limitation in the checkpoint's model card (e.g. that the demo model is tiny and trained on
    simulated data), or nothing."""
    try:
        card = Path(checkpoint) / "README.md"
        if not card.is_file():
            from huggingface_hub import hf_hub_download

            card = Path(hf_hub_download(checkpoint, "README.md"))
        limitations = card.read_text().split("## Limitations", 1)[1]
        return next(line[2:].strip() for line in limitations.splitlines() if line.startswith("- "))
    except Exception:  # no card, no section, no network: the page simply says nothing more
        return ""


@functools.lru_cache(maxsize=1)  # one model in memory
def load_checkpoint(checkpoint: str = DEFAULT_CHECKPOINT):
    import modeling_fusar  # noqa: F401
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        local_or_hub_id(checkpoint, "checkpoint")  # the commands' rule: a folder here, or `user/name` on the Hub
    except ValueError:
        raise UserError(f"No checkpoint at {checkpoint}: run `fusar-main` first, or pass a checkpoint path or Hub id.") from None
    try:
        return AutoModelForImageTextToText.from_pretrained(checkpoint).eval(), AutoProcessor.from_pretrained(checkpoint)
    except OSError as error:
        raise UserError(f"Cannot load the checkpoint {checkpoint}: {type(error).__name__}") from error


def checked_file(path) -> Path:
    path = Path(path)
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise UserError(f"{path.name} is larger than {MAX_UPLOAD_BYTES // 2**20} MiB.")
    return path


def read_image(path):
    """The model's 8-bit image and, for a georeferenced GeoTIFF, its footprint and year. The memory its conversion
    needs is checked from the file's header, before any pixel is decoded."""
    from dataset_scripts.sar_reader import read_sar_scene

    path = checked_file(path)
    try:
        return read_sar_scene(path, max_bytes=MAX_IMAGE_BYTES)
    except ValueError as error:
        raise UserError(str(error).replace(str(path), path.name)) from error


def read_anchors(scene, npz=None, tiles=None):
    """Anchors from an uploaded .npz or .npy (the authors' formats), or sampled from a folder of AlphaEarth tiles under a georeferenced scene."""
    from dataset_scripts.alphaearth import AlphaEarthTiles, sample_anchors
    from processing.anchors import as_anchor_set

    if npz:
        try:
            return as_anchor_set(checked_file(npz), anchor_dim=64)
        except ValueError as error:
            raise UserError(f"The anchor file is not usable: {str(error).replace(str(npz), Path(npz).name)}") from error
    if tiles == "release":  # the server's AlphaEarth release (a URL or folder the server names, never the visitor)
        from dataset_scripts.alphaearth_cloud import open_source

        if not os.environ.get("FUSAR_ALPHAEARTH_SOURCE"):
            raise UserError("This server names no AlphaEarth release (FUSAR_ALPHAEARTH_SOURCE).")
        if scene.footprint is None or scene.year is None:
            raise UserError("Anchors from the release need a georeferenced GeoTIFF with a known acquisition year.")
        try:
            source = open_source(os.environ["FUSAR_ALPHAEARTH_SOURCE"], os.environ.get("FUSAR_ALPHAEARTH_INDEX"))
            return sample_anchors(source, scene.footprint, scene.year)
        except ValueError as error:
            raise UserError("The AlphaEarth release could not be read for this scene.") from error
    if tiles:
        root = os.environ.get("FUSAR_TILES_ROOT")
        folder = Path(root or "/nonexistent", tiles).resolve()
        if not root or not folder.is_relative_to(Path(root).resolve()) or not folder.is_dir():
            raise UserError("AlphaEarth tiles are read only from folders under the server's FUSAR_TILES_ROOT; "
                            "give a folder name relative to it.")
        if scene.footprint is None or scene.year is None:
            raise UserError("Anchors from tiles need a georeferenced GeoTIFF with a known acquisition year.")
        try:
            return sample_anchors(AlphaEarthTiles(folder), scene.footprint, scene.year)
        except ValueError as error:
            raise UserError("The AlphaEarth folder holds a file that is not a readable tile.") from error
    return None


def ask(model, processor, image: Image.Image, anchors, question: str, max_new_tokens: int = 96) -> str:
    """The model's greedy answer, through the same generation code as fusar-eval."""
    from evaluation.generation import generate_answers

    row = {"image": image, "messages": [{"role": "user", "content": question}], "year": None}
    return generate_answers(model, processor, [row], max_new_tokens=max_new_tokens, use_anchors=anchors is not None,
                            progress=False, anchors=None if anchors is None else [anchors])[0]


def draw_boxes(image: Image.Image, answer: str) -> Image.Image:
    """The image with the boxes of a detection answer drawn on it (unchanged when the answer has none)."""
    from PIL import ImageDraw

    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    for box in parse_detection_answer(answer) or []:  # an answer that does not parse draws nothing
        x1, y1, x2, y2 = box["bbox_2d"]
        if x2 < x1 or y2 < y1:  # model output: a reversed box is skipped, not an error
            continue
        draw.rectangle([x1, y1, x2, y2], outline=(255, 40, 40), width=2)
        draw.text((x1 + 2, y1 + 1), box["label"], fill=(255, 40, 40))
    return canvas


@torch.no_grad()
def modulation_map(model, processor, image: Image.Image, anchors) -> Image.Image | None:
    """A heat map over the image of how strongly the anchors modulate each visual token (mean |gamma| + |beta|, on a
    fixed scale with its colour bar, so that two images compare); None without anchors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modeling_fusar.anchor_modulation import check_anchor_inputs
    from modeling_fusar.visual_grids import visual_grids
    from processing.anchors import collate_anchor_sets

    if anchors is None or not anchors.mask.any():
        return None
    pixels = processor.image_processor(images=[processor.model_image(image)], return_tensors="pt")
    grid = visual_grids(model.config.base_config, **pixels)[0]
    tensors = collate_anchor_sets([anchors])
    values, positions, mask = check_anchor_inputs(tensors["anchor_values"], tensors["anchor_positions"],
                                                  tensors["anchor_mask"], model.config.anchor_dim, 1)
    film, valid = model.anchor_module.film_parameters(values, mask, None)
    weights = model.anchor_module.token_weights(grid, positions, valid)  # [1, S, tokens]
    strength = (weights.transpose(1, 2) @ film.float()).abs().mean(-1)[0]
    field = strength.reshape(grid.token_rows, grid.token_cols).numpy()
    seen = processor.model_image(image)
    figure, axes = plt.subplots(figsize=(5, 4.2))
    axes.imshow(seen)
    shown = axes.imshow(field, cmap="inferno", alpha=0.55, vmin=0, vmax=HEAT_SCALE, interpolation="bilinear",
                        extent=(0, seen.width, seen.height, 0))
    figure.colorbar(shown, ax=axes, extend="max", label="anchor modulation: mean |γ| + |β| per token (0 = unchanged)")
    axes.axis("off")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return Image.open(buffer).convert("RGB")


def run(checkpoint: str, image_file, npz_file, tiles_dir: str, task: str, question: str):
    """(answer, image with boxes, modulation map, message) for the page; problems become a message, never a trace."""
    try:
        if not image_file:
            raise UserError("Upload a SAR image (PNG, JPEG or GeoTIFF).")
        model, processor = load_checkpoint(checkpoint)
        scene = read_image(image_file)
        anchors = read_anchors(scene, npz_file, tiles_dir.strip() or None if tiles_dir else None)
        text = (question or "").strip() or TASKS.get(task, TASKS["Describe the scene"])
        answer = ask(model, processor, scene.image, anchors, text)
        notes = [f"Answered with {int(anchors.mask.any(-1).sum())} anchors." if anchors is not None else
                 "Answered without anchors: there is no modulation to show (give an anchor file or a tiles folder)."]
        if re.search(r"detect|bounding box|bbox", text, re.IGNORECASE) and parse_detection_answer(answer) is None:
            notes.append('The answer holds no boxes in the asked form ([{"bbox_2d": [x1, y1, x2, y2], "label": ...}]), '
                         "so none are drawn.")
        # Boxes are in the coordinates of the image the model saw (a converted authors' model: their square).
        seen = processor.model_image(scene.image)
        return answer, draw_boxes(seen, answer), modulation_map(model, processor, scene.image, anchors), " ".join(notes)
    except UserError as error:
        return "", None, None, str(error)
    except Exception as error:  # the page shows the kind of failure only: no trace, path or secret
        return "", None, None, f"Something went wrong ({type(error).__name__})."

