"""The dataset card: README.md with the Hub's YAML metadata, the schema, statistics, provenance and licences."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import yaml

from .alphaearth import ATTRIBUTION, LICENSE as ALPHAEARTH_LICENSE
from .schema import FIELD_DOCS, SCHEMA_VERSION
from .tasks import GRID_RULE


def anchor_coverage(part) -> float:
    """Share of (anchor, year) entries that hold a vector."""
    column = part.data.column("anchor_mask")
    flat = pc.list_flatten(pc.list_flatten(column))
    return float(pc.mean(flat).as_py() or 0.0) if len(flat) else 0.0


# The Hub's task categories each of our tasks belongs to (besides image-text-to-text, which all do).
HUB_CATEGORIES = {"caption": "image-to-text", "detection": "object-detection", "counting": "visual-question-answering",
                  "localization": "visual-question-answering", "classification": "visual-question-answering",
                  "vqa": "visual-question-answering", "landcover": "visual-question-answering"}


def write_card(path: Path, parts: dict, config, metas: list[dict]) -> None:
    errors = [e for meta in metas for e in meta["errors"]]
    present = {task for part in parts.values() for task in set(part["task"])}
    metadata = {
        "pretty_name": config.name,
        "license": config.license,
        "task_categories": ["image-text-to-text", *sorted({HUB_CATEGORIES[t] for t in present if t in HUB_CATEGORIES})],
        "tags": ["sar", "synthetic-aperture-radar", "remote-sensing", "alphaearth", "earth-observation", "fusar-gpt"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in parts]}],
        **config.extra_card,
    }
    lines = [f"# {config.name}", "", config.description or "SAR image - text - AlphaEarth triplets for FUSAR-GPT.", ""]
    lines += ["## Statistics", "", "| split | rows | scenes | anchor entries with a vector |", "|---|---|---|---|"]
    tasks = Counter()
    for split, part in parts.items():
        tasks.update({f"{split}/{task}": n for task, n in Counter(part["task"]).items()})
        lines.append(f"| {split} | {len(part)} | {len(set(part['scene_id']))} | {anchor_coverage(part):.1%} |")
    lines += ["", "| task | " + " | ".join(parts) + " |", "|---|" + "---|" * len(parts)]
    for task in sorted({key.split("/")[1] for key in tasks}):
        lines.append(f"| {task} | " + " | ".join(str(tasks[f"{s}/{task}"]) for s in parts) + " |")
    lines += ["", f"Input scenes that could not be read and were skipped: **{len(errors)}**."]
    lines += [f"- `{e['image']}`: {e['error']}" for e in errors[:20]]
    if len(errors) > 20:
        lines.append(f"- ... and {len(errors) - 20} more")
    lines += ["", f"## Schema (version {SCHEMA_VERSION})", "", "| field | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {doc} |" for name, doc in FIELD_DOCS.items()]
    lines += ["", "Splits are drawn by a hash of `scene_id`: no scene is in two splits." if config.split == "hashed" else
              f"Every row is in the `{config.split}` split, as the builder asked.", "",
              "## Tasks", "", f"Grid localisation: {GRID_RULE}", "",
              "Detection answers are JSON lists `[{\"bbox_2d\": [x1, y1, x2, y2], \"label\": ...}]` in pixels of the "
              "stored image, clipped to it.", "",
              "## Provenance and licences", ""]
    lines += [f"- {source}" for source in sorted({s.split(';')[0] for p in parts.values() for s in set(p['source'])} - {""})]
    lines += [f"- Anchors: AlphaEarth Foundations Satellite Embedding V1 ({ALPHAEARTH_LICENSE}). {ATTRIBUTION}", ""]
    path.write_text("---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n\n" + "\n".join(lines) + "\n")
