"""Build the triplet dataset from scene inputs: streaming, sharded, resumable, split by scene.

Work happens in `<output>.partial/`: scenes are cut into shards of `shard_size`; each finished shard is one
parquet file (written to a temporary name, then renamed), so a build killed midway and run again redoes only
the unfinished shards and gives the same dataset. A scene whose files cannot be read is reported, counted in
the card and skipped. The dataset is assembled in `<output>.partial/dataset` and renamed to `<output>` only
when complete: nothing half-written is ever taken for a dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from PIL import Image
from tqdm.auto import tqdm

from output_folders import DATASET_FILES, check_replaceable, replace_folder
from processing.anchors import AnchorSet, as_anchor_set
from processing.sar import check_image_memory

from .alphaearth import DIM, sample_anchors
from .card import write_card
from .inputs import SceneInput
from .sar_reader import read_sar_scene
from .schema import FEATURES, SPLITS, TASKS
from .tasks import Annotations, examples


@dataclass
class BuildConfig:
    tasks: tuple[str, ...] = TASKS
    grid_size: int = 8  # anchors per side of the scene
    years_before: int = 0  # also anchor this many years before the acquisition year
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split: str = "hashed"  # every row into one split ("train", "validation", "test"), or hashed by scene
    shard_size: int = 64  # scenes per work shard
    rows_per_file: int = 5000  # rows per output parquet file
    name: str = "fusar-sar-triplets"
    license: str = "other"
    description: str = ""
    extra_card: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, low in (("grid_size", 1), ("years_before", 0), ("shard_size", 1), ("rows_per_file", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"BuildConfig.{name} must be an integer of at least {low}, got {value!r}")
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"BuildConfig.tasks: unknown tasks {sorted(unknown)}; choose from {', '.join(TASKS)}")
        if self.split not in ("hashed", *SPLITS):
            raise ValueError(f"BuildConfig.split must be 'hashed' or one of {SPLITS}, got {self.split!r}")
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1):
            raise ValueError(f"BuildConfig.split_fractions must be three non-negative shares summing to 1, got {fractions}")


def split_of(scene_id: str, fractions=(0.8, 0.1, 0.1)) -> str:
    """train / validation / test from a hash of the scene id: stable, and never two splits for one scene."""
    value = int(hashlib.sha1(scene_id.encode()).hexdigest()[:8], 16) / 2**32
    return SPLITS[0] if value < fractions[0] else SPLITS[1] if value < fractions[0] + fractions[1] else SPLITS[2]


def scene_rows(scene: SceneInput, config: BuildConfig, alphaearth=None) -> list[dict]:
    """The dataset rows of one scene."""
    if scene.problem:  # an input record that could not be read: skipped and reported like an unreadable image
        raise ValueError(scene.problem)
    sar = read_sar_scene(scene.image, year=scene.year)
    image = sar.image
    objects = [dict(o) for o in scene.objects]
    if scene.image_size is not None and image.size != tuple(scene.image_size):
        # Answers and boxes are given in the resized image; bicubic, as the authors resize.
        check_image_memory(f"{scene.image} resized to {scene.image_size}", *scene.image_size, 2 * 3 + 8)
        image = image.resize(tuple(scene.image_size), Image.Resampling.BICUBIC)
    anchors = scene_anchors(scene, sar, config, alphaearth)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # encoded once, shared by the scene's rows
    annotations = Annotations(image.width, image.height, objects, scene.captions, scene.questions)
    shared = {
        "scene_id": scene.scene_id,
        "image": {"bytes": buffer.getvalue(), "path": None},
        "anchor_values": anchors.values.tolist(),
        "anchor_positions": anchors.positions.tolist(),
        "anchor_mask": anchors.mask.tolist(),
        "anchor_years": anchors.years or [],  # empty: the anchors' years are not known
        "year": sar.year,
        "footprint": list(sar.lonlat),
        "crs": sar.crs,
        "sensor": scene.sensor,
        "polarization": sar.polarization,
        "resolution_m": sar.resolution_m,
        "objects": [{"bbox": [float(v) for v in o["bbox"]], "category": o["category"]} for o in objects],
        "source": scene.source + ("; no footprint or anchors: no anchors" if not anchors.values.shape[0] else
                                  "; no AlphaEarth data under the footprint" if not anchors.mask.any() else ""),
    }
    rows = []
    for number, (task, question, answer) in enumerate(examples(annotations, config.tasks, seed=scene.scene_id)):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"id": f"{scene.scene_id}-{task}-{number}", "task": task, "messages": messages, **shared})
    return rows


def scene_anchors(scene: SceneInput, sar, config: BuildConfig, alphaearth) -> AnchorSet:
    if scene.anchors is not None:
        return as_anchor_set(scene.anchors, anchor_dim=DIM, years=None if sar.year is None else [sar.year])
    if alphaearth is None or sar.footprint is None or sar.year is None:
        return as_anchor_set(None, anchor_dim=DIM)
    years = range(sar.year - config.years_before, sar.year + 1)
    return sample_anchors(alphaearth, sar.footprint, years, grid_size=config.grid_size)


def usable_rows(scenes: list[SceneInput], config: BuildConfig, alphaearth=None) -> tuple[list[dict], list[dict]]:
    """The rows of `scenes`, and `{scene_id, image, error}` for each scene that cannot be used: one bad input
    (unreadable, malformed, too large) never stops the batch."""
    rows, errors = [], []
    for scene in scenes:
        try:
            rows.extend(scene_rows(scene, config, alphaearth))
        except Exception as error:
            kind = "" if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: "
            local = str(Path(scene.image).parent) + os.sep  # the card may be published: no local folders in it
            errors.append({"scene_id": scene.scene_id, "image": Path(scene.image).name,
                           "error": kind + str(error).replace(local, "")})
    return rows, errors


def _build_shard(args) -> dict:
    """Rows of one shard to `<work>/shard-<n>.parquet`, and what it met to `<work>/shard-<n>.json`."""
    number, scenes, config, alphaearth, work = args
    rows, errors = usable_rows(scenes, config, alphaearth)
    target = work / f"shard-{number:05d}.parquet"
    temporary = work / f".shard-{number:05d}.parquet.tmp"
    columns = {name: [row[name] for row in rows] for name in FEATURES}  # (from_list cannot type an empty shard)
    datasets.Dataset.from_dict(columns, features=FEATURES).to_parquet(str(temporary))
    meta = {"scenes": len(scenes) - len(errors), "rows": len(rows), "errors": errors}
    (work / f"shard-{number:05d}.json").write_text(json.dumps(meta))
    os.replace(temporary, target)  # the parquet file appears last: its presence means the shard is done
    return meta


def run_each(function, jobs: list, num_proc: int, bar) -> None:
    """`function(job)` for every job, in `num_proc` worker processes (or here, for one process or one job), ticking
    `bar` as each finishes; the first failure is raised."""
    if num_proc > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(num_proc) as pool:
            for _ in pool.map(function, jobs):
                bar.update()
    else:
        for job in jobs:
            function(job)
            bar.update()


def check_same_build(work: Path, scenes: list[SceneInput], config: BuildConfig, alphaearth, overwrite: bool) -> None:
    """Finished shards are reused only by the build that made them: the same scenes, options and anchor source."""
    fingerprint = hashlib.sha1(json.dumps(
        {"scenes": [dataclasses.asdict(s) for s in scenes], "config": dataclasses.asdict(config),
         "alphaearth": repr(alphaearth) if alphaearth is not None else None}, sort_keys=True, default=str,
    ).encode()).hexdigest()
    record = work / "build.json"
    if record.exists() and json.loads(record.read_text())["fingerprint"] != fingerprint:
        if not overwrite:
            raise ValueError(f"{work} holds an unfinished build of other inputs or options; run that build again to "
                             "finish it, or pass --overwrite to discard it and start this one")
        shutil.rmtree(work)  # only finished shards of another build: work to redo, nothing of the user's
        work.mkdir(parents=True)
    record.write_text(json.dumps({"fingerprint": fingerprint}))


def build(scenes: list[SceneInput], output, config: BuildConfig | None = None, alphaearth=None,
          num_proc: int = 1, overwrite: bool = False) -> Path:
    """Build the dataset of `scenes` into `output` (parquet shards per split and a card); returns `output`."""
    config = config or BuildConfig()
    output = Path(output)
    check_replaceable(output, overwrite=overwrite, owned=DATASET_FILES, tool="fusar-data")
    scenes = sorted(scenes, key=lambda s: s.scene_id)
    if not scenes:
        raise ValueError("no scenes to build")
    if len({s.scene_id for s in scenes}) != len(scenes):
        duplicate = next(k for k, n in Counter(s.scene_id for s in scenes).items() if n > 1)
        raise ValueError(f"scene id {duplicate!r} appears more than once in the inputs")
    shards = [scenes[i : i + config.shard_size] for i in range(0, len(scenes), config.shard_size)]
    work = Path(str(output) + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    check_same_build(work, scenes, config, alphaearth, overwrite)
    todo = [(n, shard, config, alphaearth, work) for n, shard in enumerate(shards)
            if not (work / f"shard-{n:05d}.parquet").exists()]
    with tqdm(total=len(shards), initial=len(shards) - len(todo), desc="scenes -> rows (shards)", unit="shard") as bar:
        run_each(_build_shard, todo, num_proc, bar)
    metas = [json.loads((work / f"shard-{n:05d}.json").read_text()) for n in range(len(shards))]
    skipped = [e for meta in metas for e in meta["errors"]]
    if not sum(meta["rows"] for meta in metas):
        errors = [f"{e['image']}: {e['error']}" for e in skipped]
        shutil.rmtree(work)  # nothing worth resuming: a corrected rerun starts afresh
        raise ValueError(f"no rows: none of the {len(scenes)} scenes could be used ({len(errors)} could not be read; "
                         f"first: {'; '.join(errors[:3]) or 'none gave a row for the chosen tasks'})")
    if skipped:
        print(f"skipped {len(skipped)} of {len(scenes)} scenes that could not be used (listed in the dataset card); "
              f"first: {skipped[0]['image']}: {skipped[0]['error']}", file=sys.stderr)
    sizes = assemble(work, len(shards), config, metas)
    replace_folder(work / "dataset", output)
    how = "by a hash of the scene id" if config.split == "hashed" else "as asked (--split)"
    print(f"rows per split ({how}): " + ", ".join(f"{name} {count}" for name, count in sizes.items()))
    shutil.rmtree(work)
    return output


def assemble(work: Path, shard_count: int, config: BuildConfig, metas: list[dict]) -> dict[str, int]:
    """The shards as train / validation / test parquet files plus the dataset card, in `<work>/dataset`; returns the
    rows per split."""
    target = work / "dataset"
    if target.exists():
        shutil.rmtree(target)
    files = [str(work / f"shard-{n:05d}.parquet") for n in range(shard_count)]
    rows = datasets.Dataset.from_parquet(files, features=FEATURES, cache_dir=str(work / "cache"))
    def split(scene_id: str) -> str:
        return split_of(scene_id, config.split_fractions) if config.split == "hashed" else config.split

    splits = rows.map(lambda batch: {"split": [split(s) for s in batch["scene_id"]]}, batched=True,
                      desc="splitting by scene")
    parts = {}
    for split in SPLITS:
        part = splits.filter(lambda batch: [s == split for s in batch["split"]], batched=True,
                             desc=f"{split} rows").remove_columns("split")
        if not len(part):  # an empty split gets no file (load_dataset refuses empty ones)
            continue
        files = math.ceil(len(part) / config.rows_per_file)
        for index in range(files):
            path = target / "data" / f"{split}-{index:05d}-of-{files:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            part.shard(files, index, contiguous=True).to_parquet(str(path))
        parts[split] = part
    write_card(target / "README.md", parts, config, metas)
    return {name: len(part) for name, part in parts.items()}
