"""The embedded default: a deterministic simulated SAR triplet dataset ("simulated" in its name and card).

Each scene is a speckled dual-pol (VV, VH) C-band SAR image of two or three land-cover regions whose mean
backscatter follows typical Sentinel-1 values per class (approximate figures, see LAND_COVER), with ships on
water and aircraft beside runways, their boxes, a UTM footprint and a year. The AlphaEarth-like field is one unit
vector per land-cover class plus a little noise, written as real int8 tiles in the official release layout, so the
builder reads the anchors through the same reader as real data. Cropland and grassland share their backscatter
statistics but not their embeddings: questions about them need the anchors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from output_folders import DATASET_FILES, check_replaceable

from .alphaearth import DIM, AlphaEarthTiles, quantize
from .builder import BuildConfig, build
from .inputs import from_jsonl
from .tasks import plural

# Typical C-band sigma0 in dB (VV, VH): approximate values as reported for Sentinel-1 over these covers.
LAND_COVER = {
    "water": (-22.0, -28.0),
    "forest": (-7.5, -13.0),
    "cropland": (-11.0, -18.0),
    "grassland": (-11.0, -18.0),  # the same as cropland: the SAR image alone cannot tell them apart
    "urban": (-4.0, -10.0),
    "bare soil": (-16.0, -24.0),
}
SIZE = 96  # SAR pixels per side
PIXEL_M = 2.5  # SAR resolution; an AlphaEarth pixel (10 m) covers 4 x 4 of them
AEF_PIXELS = SIZE // 4
SLOTS = 8  # scenes per side of one AlphaEarth tile
YEARS = tuple(range(2018, 2025))
ZONES = (31, 32)
LICENSE = "cc-by-4.0"
NAME = "fusar-simulated-sar-triplets"
RAW_MARKER = "simulation.json"
RAW_FILES = (RAW_MARKER, "scenes.jsonl", "sar/", "sar/*.tif", "alphaearth/", "alphaearth/*")


def class_vectors(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(LAND_COVER), DIM))
    return dict(zip(LAND_COVER, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)))


def land_cover_map(rng) -> tuple[np.ndarray, list[str]]:
    """[AEF_PIXELS, AEF_PIXELS] class indexes of two or three regions split by straight lines, and their names."""
    names = list(rng.choice(list(LAND_COVER), size=rng.integers(2, 4), replace=False))
    rows, cols = np.mgrid[0:AEF_PIXELS, 0:AEF_PIXELS] / (AEF_PIXELS - 1)
    labels = np.zeros((AEF_PIXELS, AEF_PIXELS), int)
    for index in range(1, len(names)):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.25, 0.25)
        labels[(rows - 0.5) * np.cos(angle) + (cols - 0.5) * np.sin(angle) > offset * index] = index
    return labels, [str(n) for n in names]


def add_targets(db: np.ndarray, cover: np.ndarray, names: list[str], rng) -> list[dict]:
    """Bright ships on water and aircraft beside a dark runway on bare soil or urban land, in place; their boxes."""
    objects = []
    sar_cover = np.kron(cover, np.ones((4, 4), int))
    for category, host, count, shape in (("ship", "water", rng.integers(1, 6), (3, 9)),
                                        ("aircraft", "bare soil", rng.integers(1, 4), (7, 7))):
        where = np.argwhere(sar_cover == names.index(host)) if host in names else []
        if len(where) < 50:
            continue
        if category == "aircraft":  # a runway: a dark strip through the host region
            runway = np.zeros_like(sar_cover, bool)
            row = int(np.median(where[:, 0]))
            runway[max(row - 2, 0) : row + 2] = True
            db[:, runway & (sar_cover == names.index(host))] = -25
        for _ in range(count):
            y, x = where[rng.integers(len(where))]
            h, w = shape if rng.random() < 0.5 else shape[::-1]
            y0, x0 = int(np.clip(y - h // 2, 0, SIZE - h)), int(np.clip(x - w // 2, 0, SIZE - w))
            if any(y0 < o["bbox"][3] + 2 and o["bbox"][1] - 2 < y0 + h and x0 < o["bbox"][2] + 2 and o["bbox"][0] - 2 < x0 + w
                   for o in objects):
                continue  # keep targets apart
            patch = np.zeros((h, w), bool)
            if category == "aircraft":  # fuselage and wings
                patch[:, w // 2] = patch[h // 2, :] = True
            else:
                patch[:] = True
            db[:, y0 : y0 + h, x0 : x0 + w][:, patch] = rng.uniform(0, 8)
            objects.append({"bbox": [x0, y0, x0 + w, y0 + h], "category": category})
    return objects


def simulate_scene(index: int, seed: int):
    """(dB image [2, SIZE, SIZE], land-cover map, class names, objects, looks) of scene `index`."""
    rng = np.random.default_rng([seed, index])
    cover, names = land_cover_map(rng)
    sar_cover = np.kron(cover, np.ones((4, 4), int))
    mean = np.array([LAND_COVER[n] for n in names])[sar_cover].transpose(2, 0, 1)  # [2, H, W]
    db = mean + rng.normal(0, 0.7, (1, SIZE, SIZE))  # a little texture within a cover
    objects = add_targets(db, cover, names, rng)
    looks = int(rng.choice([1, 4]))
    speckle = rng.gamma(looks, 1 / looks, db.shape)
    return (10 * np.log10(10 ** (db / 10) * speckle)).astype(np.float32), cover, names, objects, looks


def describe(cover: np.ndarray, names: list[str], objects: list[dict]) -> tuple[str, list[dict]]:
    """A caption and the land-cover questions of a scene."""
    shares = np.bincount(cover.ravel(), minlength=len(names)) / cover.size
    covers = [names[i] for i in np.argsort(-shares)]
    caption = f"A SAR scene of {', '.join(covers[:-1])} and {covers[-1]}" if len(covers) > 1 else f"A SAR scene of {covers[0]}"
    counts = {c: sum(o["category"] == c for o in objects) for c in ("ship", "aircraft")}
    targets = [f"{n} {c if n == 1 else plural(c)}" for c, n in counts.items() if n]
    caption += (f" with {' and '.join(targets)}." if targets else ".")
    centre = names[cover[AEF_PIXELS // 2, AEF_PIXELS // 2]]
    questions = [
        {"task": "landcover", "question": "What land cover is at the centre of this scene? Answer with one of: "
         + ", ".join(LAND_COVER) + ".", "answer": centre},
        {"task": "landcover", "question": "Which land cover takes up most of this scene?", "answer": covers[0]},
    ]
    return caption, questions


def scene_name(index: int) -> str:
    return f"sim-{index:05d}"


def raw_folder(output) -> Path:
    """Where `simulate` writes the raw inputs it builds `output` from: the sibling `<output>.raw`."""
    return Path(str(output) + ".raw")


def check_outputs(output, overwrite: bool = False) -> None:
    """Before anything is written: `output` may be replaced (empty, absent, or a dataset with `overwrite`), and its
    `.raw` sibling is absent, empty or one that `simulate` wrote (its marker there, nothing else); the raw inputs are
    regenerated on every run, so a folder of simulate's own is rewritten without asking."""
    check_replaceable(output, overwrite=overwrite, owned=DATASET_FILES, tool="fusar-data")
    raw = raw_folder(output)
    # Written before the marker existed: beside the simulated dataset it was built into (its card says so).
    card = Path(output) / "README.md"
    older = card.is_file() and f"pretty_name: {NAME}" in card.read_text(errors="replace")
    check_replaceable(raw, overwrite=True, owned=RAW_FILES, tool="fusar-data simulate",
                      markers=() if older else (RAW_MARKER,))


def simulate(output, scenes: int = 300, seed: int = 0, num_proc: int = 1, overwrite: bool = False) -> Path:
    """Write the raw inputs (SAR GeoTIFFs, AlphaEarth tiles, annotations) under `<output>.raw`, then build."""
    output, raw = Path(output), raw_folder(output)
    check_outputs(output, overwrite)
    if raw.exists():
        shutil.rmtree(raw)  # simulate's own (checked): no file of an older run may mix with this one's
    raw.mkdir(parents=True)
    (raw / RAW_MARKER).write_text(json.dumps({"scenes": scenes, "seed": seed, "written by": "fusar-data simulate"}))
    vectors = class_vectors()
    rng = np.random.default_rng(seed)
    records, tiles = [], {}
    for index in range(scenes):
        db, cover, names, objects, looks = simulate_scene(index, seed)
        year, zone = YEARS[index % len(YEARS)], ZONES[(index // len(YEARS)) % len(ZONES)]
        slot = index // (len(YEARS) * len(ZONES))
        tile_index, (slot_row, slot_col) = slot // SLOTS**2, divmod(slot % SLOTS**2, SLOTS)
        tile_x, tile_y = 500_000 + tile_index * SLOTS * AEF_PIXELS * 10, 5_000_000
        x0, y0 = tile_x + slot_col * AEF_PIXELS * 10, tile_y - slot_row * AEF_PIXELS * 10
        crs = f"EPSG:{32600 + zone}"
        name = scene_name(index)
        path = raw / "sar" / f"{name}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=2, dtype="float32", crs=crs,
                           transform=from_origin(x0, y0, PIXEL_M, PIXEL_M)) as dataset:
            dataset.write(db)
            dataset.descriptions = ("VV", "VH")
            dataset.update_tags(ACQUISITION_START_TIME=f"{year}-06-15T10:00:00")
        field = np.stack([vectors[names[c]] for c in cover.ravel()]).reshape(AEF_PIXELS, AEF_PIXELS, DIM)
        field = field + rng.normal(0, 0.05, field.shape)
        field /= np.linalg.norm(field, axis=-1, keepdims=True)
        key = (year, zone, tile_index)
        tile = tiles.setdefault(key, np.full((SLOTS * AEF_PIXELS, SLOTS * AEF_PIXELS, DIM), -128, np.int8))
        tile[slot_row * AEF_PIXELS : (slot_row + 1) * AEF_PIXELS, slot_col * AEF_PIXELS : (slot_col + 1) * AEF_PIXELS] = quantize(field)
        caption, questions = describe(cover, names, objects)
        records.append({"image": f"sar/{name}.tif", "scene_id": name, "objects": objects, "caption": caption,
                        "questions": questions, "sensor": f"simulated C-band SAR ({looks}-look)",
                        "source": f"simulated by fusar-data simulate (seed {seed}); {LICENSE}"})
    for (year, zone, tile_index), values in tiles.items():
        folder = raw / "alphaearth" / "satellite_embedding" / "v1" / "annual" / str(year) / f"{zone}N"
        folder.mkdir(parents=True, exist_ok=True)
        with rasterio.open(folder / f"sim-{tile_index:04d}-0000.tiff", "w", driver="GTiff", width=values.shape[1],
                           height=values.shape[0], count=DIM, dtype="int8", crs=f"EPSG:{32600 + zone}", nodata=-128,
                           transform=from_origin(500_000 + tile_index * SLOTS * AEF_PIXELS * 10, 5_000_000, 10, 10),
                           tiled=True, blockxsize=64, blockysize=64) as dataset:
            dataset.write(values.transpose(2, 0, 1))
    annotations = raw / "scenes.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = BuildConfig(name=NAME, license=LICENSE, description=(
        "**Simulated** SAR image - text - AlphaEarth-like triplets, generated by `fusar-data simulate` for tests and "
        "the CPU demo of FUSAR-GPT. " + __doc__.split("\n\n")[1].replace("\n", " ")))
    return build(from_jsonl(annotations), output, config, AlphaEarthTiles(raw / "alphaearth"), num_proc=num_proc,
                 overwrite=overwrite)
