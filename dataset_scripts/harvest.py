"""`fusar-data harvest`: real SAR image-text-AlphaEarth triplets from public archives, on one machine or a Ray cluster.

Major-TOM Core-S1RTC patches (1,068 px at 10 m) are selected from its metadata by region, dates and nodata, read by
their row groups only, and cut into chips; each chip gets its AlphaEarth anchors (the acquisition year, else the
nearest the release holds) and the ESA WorldCover classes under it, from which its facts and texts are made
(`facts.py`). Output (a folder, or a Hub dataset repo as `hf://datasets/<user>/<name>`):

    data/<split>-<shard>.parquet   rows of one shard per split (the project's schema plus `facts`, JSON)
    .harvest/plan.json             what is being built; a rerun with other options is refused
    .harvest/shard-<n>.json        written after the shard's data: its counts and skipped patches and chips
    README.md                      the dataset card, written when every shard is done

A shard is done when its marker exists: a killed run, run again, redoes only the others (a half-written shard is
redone whole). Local files are written under a temporary name and renamed; on the Hub, a shard's files and marker
are one commit (retried while the Hub answers 429).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from rasterio.transform import Affine

from .alphaearth import ATTRIBUTION as ALPHAEARTH_ATTRIBUTION, DIM, LICENSE as ALPHAEARTH_LICENSE, Footprint, \
    sample_anchors
from .builder import run_each, split_of
from .facts import TEMPLATES, chip_facts, texts
from .harvest_output import Output, check_plan
from .majortom import ATTRIBUTION as MAJORTOM_ATTRIBUTION, LICENSE as MAJORTOM_LICENSE, PATCH_PIXELS, REPO, \
    CorruptPatch, Patch, read_patch
from .names import SPLITS
from .worldcover import BASE_URL, LICENSE as WORLDCOVER_LICENSE, WorldCover, attribution as worldcover_attribution

# Where the sources are read from, not what they hold: a fixed URL, a mirror or another cache folder resumes a harvest.
LOCATIONS = ("source", "worldcover", "alphaearth", "alphaearth_index", "alphaearth_cache")


@dataclass
class HarvestConfig:
    source: str = REPO  # Major-TOM Core-S1RTC: Hub id or a local folder of the same layout
    worldcover: str = BASE_URL
    alphaearth: str | None = None  # the release (URL or folder with its index); None: no anchors
    alphaearth_index: str | None = None
    alphaearth_cache: str | None = None
    chip_size: int = 504  # the 7B recipe's image side: 2 x 2 chips per patch
    grid_size: int = 8
    max_nodata: float = 0.0
    split: str = "hashed"  # by a hash of the grid cell (a place is in one split), or every row in one split
    templates: dict = field(default_factory=lambda: dict(TEMPLATES))
    rewrite: str | None = None  # "module:function" (caption, facts) -> caption, e.g. a local language model; off
    name: str = "fusar-harvested-sar-triplets"

    def __post_init__(self):
        if not 16 <= self.chip_size <= PATCH_PIXELS:
            raise ValueError(f"--chip-size must be between 16 and {PATCH_PIXELS} pixels, got {self.chip_size}")
        if not 0 <= self.max_nodata <= 1:
            raise ValueError(f"--max-nodata is a fraction in [0, 1], got {self.max_nodata}")
        if self.split not in ("hashed", *SPLITS):
            raise ValueError(f"--split must be 'hashed' or one of {SPLITS}, got {self.split!r}")


def chip_windows(chip_size: int) -> list[tuple[int, int]]:
    """(row, col) offsets of the chips of a patch: as many whole chips as fit, centred."""
    count = PATCH_PIXELS // chip_size
    margin = (PATCH_PIXELS - count * chip_size) // 2
    return [(margin + r * chip_size, margin + c * chip_size) for r in range(count) for c in range(count)]


def plan_chips(patches: list[Patch], config: HarvestConfig, max_chips: int | None) -> list[tuple[Patch, list[int]]]:
    """(patch, chip numbers) to harvest: whole patches in order, the last one cut to `max_chips`."""
    per_patch = len(chip_windows(config.chip_size))
    plan, left = [], max_chips if max_chips is not None else math.inf
    for patch in patches:
        if left <= 0:
            break
        take = int(min(per_patch, left))
        plan.append((patch, list(range(take))))
        left -= take
    return plan


# ---------------------------------------------------------------------------------------------------------- shards

@dataclass
class ShardJob:
    number: int
    patches: list[tuple[Patch, list[int]]]
    config: HarvestConfig
    output: str


def harvest_shard(job: ShardJob) -> dict:
    """Rows of one shard's patches to `data/<split>-<shard>.parquet`, then its marker. The same function runs in a
    local process or as a Ray task."""
    import datasets

    from .schema import FEATURES, OPTIONAL_FEATURES

    output = Output(job.output)
    config = job.config
    for split in SPLITS:  # a run killed while writing this shard may have left some of its files: all are redone
        if output.exists(f"data/{split}-{job.number:05d}.parquet"):
            output.fs.rm(output.path(f"data/{split}-{job.number:05d}.parquet"))
    sources = Sources(config)
    rows, skipped = [], []
    for patch, chips in job.patches:
        try:
            data = read_patch(patch, config.source)
        except CorruptPatch as error:
            skipped.append({"patch": patch.product_id, "chips": len(chips), "error": str(error)})
            continue
        for number in chips:
            try:
                rows += chip_rows(patch, data, number, config, sources)
            except ChipSkipped as error:
                skipped.append({"patch": patch.product_id, "chip": number, "error": str(error)})
    features = datasets.Features({**FEATURES, **OPTIONAL_FEATURES})
    counts, files = {}, {}
    by_split = {split: [r for r in rows if r["_split"] == split] for split in SPLITS}
    for split, part in by_split.items():
        if not part:
            continue
        columns = {name: [row[name] for row in part] for name in features}  # (not _split)
        buffer = io.BytesIO()
        datasets.Dataset.from_dict(columns, features=features).to_parquet(buffer)
        files[f"data/{split}-{job.number:05d}.parquet"] = buffer.getvalue()
        counts[split] = {"rows": len(part), "chips": len({r["scene_id"] for r in part}),
                         "tasks": dict(Counter(r["task"] for r in part)),
                         "dominant": dict(Counter(r["messages"][1]["content"] for r in part if r["task"] == "landcover"))}
    marker = {"shard": job.number, "splits": counts, "skipped": skipped,
              "chips": sum(len(chips) for _, chips in job.patches),
              "worldcover_maps": sorted({json.loads(r["facts"])["worldcover"] for r in rows})}
    files[f".harvest/shard-{job.number:05d}.json"] = json.dumps(marker).encode()  # last: the shard is done
    output.write_all(files)
    return marker


class ChipSkipped(ValueError):
    """A chip that cannot make rows (too much nodata, no land cover under it, a source file under it that cannot be
    read): listed, not fatal."""


class Sources:
    """The anchor and land-cover sources of one worker, opened once."""

    def __init__(self, config: HarvestConfig):
        from .alphaearth_cloud import open_source

        self.worldcover = WorldCover(config.worldcover)
        self.alphaearth = open_source(config.alphaearth, config.alphaearth_index, config.alphaearth_cache) \
            if config.alphaearth else None
        self.years = self.alphaearth.years() if self.alphaearth else []
        self.rewrite = rewrite_hook(config.rewrite) if config.rewrite else None


def chip_rows(patch: Patch, data, number: int, config: HarvestConfig, sources: Sources) -> list[dict]:
    from processing.sar import load_sar_image

    row0, col0 = chip_windows(config.chip_size)[number]
    window = np.s_[row0:row0 + config.chip_size, col0:col0 + config.chip_size]
    vv, vh = data.vv[window], data.vh[window]
    nodata = float((~(np.isfinite(vv) & np.isfinite(vh) & (vv > 0) & (vh > 0))).mean())
    if nodata > config.max_nodata:
        raise ChipSkipped(f"{nodata:.2%} nodata (more than --max-nodata {config.max_nodata:g})")
    footprint = Footprint(data.crs, data.transform @ Affine.translation(col0, row0), config.chip_size, config.chip_size)
    try:
        classes, worldcover_map = sources.worldcover.classes(footprint, patch.year)
    except ValueError as error:  # the file that failed is named; a source failing everywhere passes --max-skipped
        raise ChipSkipped(f"land cover: {error}") from error
    facts = {"date": patch.date, "grid_cell": patch.grid_cell, "product_id": patch.product_id, **patch.orbit(),
             "chip": number, "chip_window": [row0, col0, config.chip_size], "nodata": round(nodata, 4),
             "worldcover": worldcover_map, **chip_facts(classes)}
    try:
        anchors, anchor_source = chip_anchors(footprint, patch.year, config, sources)
    except ValueError as error:
        raise ChipSkipped(f"anchors: {error}") from error
    facts.update(anchor_source)
    made = texts(facts, config.templates)
    if not made:
        raise ChipSkipped(f"only {facts['mapped']:.1%} of it is mapped by WorldCover (open sea or outside the map); "
                          "texts are made for whole chips only")
    if sources.rewrite:
        made = rewritten(made, facts, sources.rewrite)
    try:
        image = load_sar_image(np.stack([np.nan_to_num(vv), np.nan_to_num(vh)]), unit="intensity",
                               polarizations=["VV", "VH"], nodata=0)
    except ValueError as error:  # e.g. no valid pixel at all
        raise ChipSkipped(f"SAR image: {error}") from error
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    scene_id = f"{patch.grid_cell}_{patch.date.replace('-', '')}_{hashlib.sha1(patch.product_id.encode()).hexdigest()[:6]}_{number}"
    shared = {
        "scene_id": scene_id, "image": {"bytes": buffer.getvalue(), "path": None},
        "anchor_values": anchors.values.tolist(), "anchor_positions": anchors.positions.tolist(),
        "anchor_mask": anchors.mask.tolist(), "anchor_years": anchors.years or [], "year": patch.year,
        "footprint": list(footprint.lonlat_bounds()), "crs": data.crs.to_string(), "sensor": "Sentinel-1",
        "polarization": "VV+VH", "resolution_m": float(abs(footprint.transform.a)), "objects": [],
        "source": provenance(patch, worldcover_map, anchors), "facts": json.dumps(facts, sort_keys=True),
        "_split": split_of(patch.grid_cell) if config.split == "hashed" else config.split,
    }
    return [{"id": f"{scene_id}-{task}-{key}", "task": task,
             "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **shared}
            for key, task, question, answer in made]


def rewrite_hook(hook: str):
    """The user's `module:function` (caption, facts) -> caption."""
    import importlib

    module, _, name = hook.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"--rewrite {hook}: cannot import it ({error}); give module:function") from error


def rewritten(made: list[tuple], facts: dict, function) -> list[tuple]:
    """The caption passed through the user's hook; the template's caption stays in the facts, for audit."""
    out = []
    for key, task, question, answer in made:
        if key == "caption":
            facts["template_caption"] = answer
            answer = str(function(answer, dict(facts)))
        out.append((key, task, question, answer))
    return out


def nearest_year(year: int, available: list[int]) -> int | None:
    """The year itself if available, else the nearest (the earlier on a tie); None if there are none."""
    return min(available, key=lambda y: (abs(y - year), y)) if available else None


def chip_anchors(footprint: Footprint, year: int, config: HarvestConfig, sources: Sources):
    from processing.anchors import as_anchor_set

    anchor_year = nearest_year(year, sources.years)
    if anchor_year is None:
        return as_anchor_set(None, anchor_dim=DIM), {"alphaearth_year": None}
    anchors = sample_anchors(sources.alphaearth, footprint, [anchor_year], grid_size=config.grid_size)
    return anchors, {"alphaearth_year": anchor_year, "alphaearth_year_offset": anchor_year - year}


def provenance(patch: Patch, worldcover_map: str, anchors) -> str:
    text = (f"SAR: {patch.product_id} ({patch.grid_cell}) from {MAJORTOM_ATTRIBUTION}. Land cover: ESA WorldCover "
            f"{worldcover_map} ({WORLDCOVER_LICENSE}; {worldcover_attribution(worldcover_map)}).")
    if anchors.years:
        text += f" Anchors: AlphaEarth {anchors.years[0]} ({ALPHAEARTH_LICENSE}; {ALPHAEARTH_ATTRIBUTION})"
    return text


# ---------------------------------------------------------------------------------------------------------- driver

def harvest(patches: list[Patch], output_location: str, config: HarvestConfig, *, max_chips: int | None = None,
            patches_per_shard: int = 4, engine: str = "local", num_proc: int = 1, ray_address: str | None = None,
            overwrite: bool = False, region: str = "", max_skipped: float = 0.5) -> dict:
    """Harvest the chips of `patches` (already selected) into the output; returns the totals per split. Every source
    is opened and checked before anything is written. Patches and chips that cannot be made are skipped and listed;
    if they are more than `max_skipped` of the chips planned, the run stops with their summary (the shards written
    stay; no card is written)."""
    plan = plan_chips(patches, config, max_chips)
    if not plan:
        raise ValueError("no patches to harvest: the region, dates and --max-nodata select none")
    sources = Sources(config)
    sources.worldcover.tiles()  # the grid: a wrong URL is one line here, not a failure inside the first shard
    shards = [plan[i:i + patches_per_shard] for i in range(0, len(plan), patches_per_shard)]
    identity = {name: value for name, value in dataclasses.asdict(config).items() if name not in LOCATIONS}
    record = {"config": identity, "alphaearth_years": sources.years, "region": region, "shards": patches_per_shard,
              "plan": [[dataclasses.asdict(p), chips] for p, chips in plan]}
    output = Output(output_location)
    check_plan(output, record, overwrite)
    done = {n for n in range(len(shards)) if output.exists(f".harvest/shard-{n:05d}.json")}
    jobs = [ShardJob(n, shard, config, output_location) for n, shard in enumerate(shards) if n not in done]
    if done:
        print(f"resuming: {len(done)} of {len(shards)} shards already done", file=sys.stderr)
    run_jobs(jobs, engine, num_proc, ray_address)
    markers = [json.loads(output.read(f".harvest/shard-{n:05d}.json")) for n in range(len(shards))]
    totals = {split: sum(m["splits"].get(split, {}).get("rows", 0) for m in markers) for split in SPLITS}
    planned = sum(len(chips) for _, chips in plan)
    summary = skipped_summary(markers, planned)
    if not sum(totals.values()):
        raise ValueError(f"no rows: {summary}")
    if skipped_chips(markers) > max_skipped * planned:
        raise ValueError(f"{summary}; more than --max-skipped {max_skipped:g}. The shards written are kept: fix the "
                         "cause and run again with --overwrite, or allow more with --max-skipped")
    print(summary, file=sys.stderr)
    output.write("README.md", card(markers, config, region, len(plan)).encode())
    return totals


def skipped_chips(markers: list[dict]) -> int:
    return sum(s.get("chips", 1) for m in markers for s in m["skipped"])


def skipped_summary(markers: list[dict], planned: int) -> str:
    """One line: how many patches and chips were skipped, of how many, and the first reason."""
    entries = [s for m in markers for s in m["skipped"]]
    patches = sum("chip" not in s for s in entries)
    chips = skipped_chips(markers)
    line = (f"skipped {chips} of {planned} chips ({chips / max(planned, 1):.0%}): {patches} whole patches, "
            f"{len(entries) - patches} single chips")
    return line + (f"; first: {entries[0]['patch']}: {entries[0]['error']}" if entries else "")


def run_jobs(jobs: list[ShardJob], engine: str, num_proc: int, ray_address: str | None) -> None:
    """Each shard once, in this process, local processes, or Ray tasks (a running cluster at `ray_address`, else a
    local instance). A failed shard fails the run after the others finish; its rerun redoes only what is missing."""
    from tqdm.auto import tqdm

    with tqdm(total=len(jobs), desc="harvest (shards)", unit="shard") as bar:
        if engine == "ray":
            import ray

            if not ray.is_initialized():
                ray.init(address=ray_address, num_cpus=None if ray_address else num_proc, log_to_driver=False)
            task = ray.remote(max_retries=2)(harvest_shard)
            pending = [task.remote(job) for job in jobs]
            errors = []
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                try:
                    ray.get(ready[0])
                except ray.exceptions.RayTaskError as error:
                    errors.append(error.cause if error.cause is not None else error)
                bar.update()
            if errors:
                raise errors[0]
        else:
            run_each(harvest_shard, jobs, num_proc, bar)


def card(markers: list[dict], config: HarvestConfig, region: str, patches: int) -> str:
    import yaml

    from .card import HUB_CATEGORIES
    from .facts import RULES

    splits = [s for s in SPLITS if any(m["splits"].get(s) for m in markers)]
    total = {s: Counter() for s in splits}
    tasks, dominant = Counter(), Counter()
    for marker in markers:
        for split, counts in marker["splits"].items():
            total[split].update({"rows": counts["rows"], "chips": counts["chips"]})
            tasks.update({(split, t): n for t, n in counts["tasks"].items()})
            dominant.update(counts["dominant"])
    skipped = [s for m in markers for s in m["skipped"]]
    maps = sorted({name for m in markers for name in m.get("worldcover_maps", [])})
    metadata = {
        "pretty_name": config.name, "license": "cc-by-sa-4.0",
        "task_categories": ["image-text-to-text", *sorted({HUB_CATEGORIES[t] for _, t in tasks})],
        "tags": ["sar", "synthetic-aperture-radar", "sentinel-1", "remote-sensing", "alphaearth", "worldcover",
                 "fusar-gpt"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}],
    }
    lines = [f"# {config.name}", "", "Real Sentinel-1 SAR chips with texts made from ESA WorldCover facts and "
             "AlphaEarth anchors, harvested with `fusar-data harvest`.", "",
             f"Region: {region or 'all patches of the source'}; {patches} Major-TOM patches cut into "
             f"{config.chip_size} px chips (10 m), {config.grid_size} x {config.grid_size} anchors per chip.", "",
             "## Counts", "", "| split | chips | rows |", "|---|---|---|"]
    lines += [f"| {s} | {total[s]['chips']} | {total[s]['rows']} |" for s in splits]
    lines += ["", "| task | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    lines += [f"| {t} | " + " | ".join(str(tasks[(s, t)]) for s in splits) + " |" for t in sorted({t for _, t in tasks})]
    lines += ["", "| dominant land cover | chips |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in dominant.most_common()]
    lines += ["", f"Skipped (listed, not fatal): **{len(skipped)}**; "
              f"{skipped_summary(markers, sum(m.get('chips', 0) for m in markers))}."]
    lines += [f"- `{s['patch']}`" + (f" chip {s['chip']}" if "chip" in s else "") + f": {s['error']}"
              for s in skipped[:100]]
    if len(skipped) > 100:
        lines.append(f"- ... {len(skipped) - 100} more, each in its shard's `.harvest/shard-<n>.json`")
    lines += ["", "## How the text was made", "",
              "Every text is generated from the chip's facts (the `facts` column, JSON: WorldCover class shares "
              "overall and per cell of the 3 x 3 grid, acquisition date, product, orbit where the product name gives "
              "it, the AlphaEarth year and its offset from the acquisition year), with these rules:", "",
              RULES, "",
              "Splits are drawn by a hash of the Major-TOM grid cell (a place is never in two splits)."
              if config.split == "hashed" else f"Every row is in the `{config.split}` split.", "",
              "## Provenance and licences", "",
              f"- SAR: {MAJORTOM_ATTRIBUTION} ({MAJORTOM_LICENSE}); Copernicus Sentinel data terms apply "
              "(free, full and open access; modified Copernicus Sentinel data must be acknowledged).",
              f"- Land cover: ESA WorldCover 10 m ({WORLDCOVER_LICENSE}). "
              + " ".join(f"{worldcover_attribution(name)}." for name in maps),
              f"- Anchors: AlphaEarth Foundations Satellite Embedding V1 ({ALPHAEARTH_LICENSE}). {ALPHAEARTH_ATTRIBUTION}",
              "- This dataset: CC-BY-SA-4.0 (share-alike, from Major-TOM). Each row's `source` names its own inputs.", ""]
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n\n" + "\n".join(lines) + "\n"
