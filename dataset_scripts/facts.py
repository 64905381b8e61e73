"""A harvested chip's facts, and every text about it generated from them: deterministic, auditable, re-generable.

Facts come from the WorldCover classes under the chip (`chip_facts`) and the acquisition; texts (`texts`) use only
facts, through templates (`TEMPLATES`, replaceable with a JSON file of the same keys), so a caption never says
what the map does not. The rules (`RULES`, which the dataset card repeats):

- only a chip WorldCover maps whole (99% of its pixels or more) gets texts, so that a share of its mapped pixels is
  a share of the image (an unmapped part, such as open sea beyond the tiles, would make "mostly" or "no water" false);
- a class is named in the terrain when it covers at least 5% of the image; "mostly" when it covers half;
- water (class 80) and built-up (class 50) are present when they cover at least 1%;
- the 3 x 3 grid is the localisation task's (cells of equal size); "the cell with the most X" is asked only when
  one cell holds strictly more X than any other;
- fractions are answered in bins: none, under 10%, 10-25%, 25-50%, 50-75%, over 75% (lower bound included).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .tasks import GRID_CELLS

RULES = __doc__.split("\n\n", 2)[2].strip()
from .worldcover import CLASSES

WATER, BUILT_UP = 80, 50
NAMED_SHARE, PRESENT_SHARE, MOSTLY_SHARE = 0.05, 0.01, 0.5
PHRASES = {WATER: "permanent water", BUILT_UP: "built-up area"}  # the two classes asked about, as a sentence says them
MIN_MAPPED = 0.99  # a chip with less of its area mapped gets no land-cover text
BINS = ((0.75, "over 75%"), (0.5, "50-75%"), (0.25, "25-50%"), (0.1, "10-25%"), (0.0, "under 10%"))
CELL_LIST = ", ".join(cell for row in GRID_CELLS for cell in row)

TEMPLATES = {
    "caption": "A Sentinel-1 SAR image acquired on {date}. Terrain: {terrain}. Distribution: {distribution}. "
               "Water: {water}. Built-up: {built_up}.",
    "dominant_question": "What is the dominant land cover in this SAR image? Answer with one of: {classes}.",
    "presence_question": "Is there {name} in this SAR image? Answer yes or no.",
    "cell_question": "In which cell of a 3x3 grid over the image is most of the {name}? Answer with one of: {cells}.",
    "fraction_question": "About how much of this SAR image is {name}? Answer with one of: none, under 10%, 10-25%, "
                         "25-50%, 50-75%, over 75%.",
}


def load_templates(path=None) -> dict:
    """The default templates, with those of a JSON file (same keys and placeholders) in their place."""
    if path is None:
        return dict(TEMPLATES)
    try:
        given = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file of templates ({error})") from error
    unknown = sorted(set(given) - set(TEMPLATES))
    if unknown or not all(isinstance(v, str) for v in given.values()):
        raise ValueError(f"{path}: templates are strings under the keys {sorted(TEMPLATES)}; got {unknown or 'non-strings'}")
    return {**TEMPLATES, **given}


def chip_facts(classes: np.ndarray) -> dict:
    """What the WorldCover classes [H, W] (0 = unmapped) say about a chip: shares of its mapped pixels, overall and
    per cell of the 3 x 3 grid."""
    mapped = classes != 0
    height, width = classes.shape
    cells = {}
    for r, row in enumerate(GRID_CELLS):
        for c, name in enumerate(row):
            part = classes[r * height // 3:(r + 1) * height // 3, c * width // 3:(c + 1) * width // 3]
            cells[name] = shares(part)
    return {"mapped": round(float(mapped.mean()), 4), "classes": shares(classes), "cells": cells}


def shares(classes: np.ndarray) -> dict[str, float]:
    values, counts = np.unique(classes[classes != 0], return_counts=True)
    total = counts.sum()
    return {CLASSES.get(int(v), f"class {int(v)}"): round(float(n / total), 4)
            for v, n in sorted(zip(values, counts), key=lambda vn: -vn[1])} if total else {}


def ranked(shares_: dict[str, float]) -> list[tuple[str, float]]:
    """Largest share first, ties by name: the same order however the facts were stored (JSON sorts keys)."""
    return sorted(shares_.items(), key=lambda item: (-item[1], item[0]))


def bin_of(share: float) -> str:
    return "none" if share == 0 else next(label for low, label in BINS if share >= low)


def most_in(facts: dict, name: str) -> str | None:
    """The one cell holding strictly the largest share of `name`, None on a tie or where there is none."""
    ranked = sorted(((cell.get(name, 0.0), key) for key, cell in facts["cells"].items()), reverse=True)
    return ranked[0][1] if ranked[0][0] > 0 and ranked[0][0] > ranked[1][0] else None


def texts(facts: dict, templates: dict = TEMPLATES) -> list[tuple[str, str, str, str]]:
    """(key, task, question, answer) for each text the facts support; `key` names the text within its chip."""
    shares_ = facts["classes"]
    if facts["mapped"] < MIN_MAPPED or not shares_:
        return []
    dominant = ranked(shares_)[0][0]
    out = [("caption", "caption", "Describe this SAR image.", caption(facts, templates)),
           ("dominant", "landcover", templates["dominant_question"].format(classes=", ".join(CLASSES.values())),
            dominant),
           ("fraction", "vqa", templates["fraction_question"].format(name=dominant), bin_of(shares_[dominant]))]
    for key, code in (("water", WATER), ("built_up", BUILT_UP)):
        name, phrase = CLASSES[code], PHRASES[code]
        present = shares_.get(name, 0.0) >= PRESENT_SHARE
        out.append((f"{key}_present", "vqa", templates["presence_question"].format(name=phrase),
                    "yes" if present else "no"))
        cell = most_in(facts, name)
        if present and cell:
            out.append((f"{key}_cell", "localization", templates["cell_question"].format(name=phrase, cells=CELL_LIST),
                        cell))
    return out


def caption(facts: dict, templates: dict) -> str:
    shares_ = facts["classes"]
    named = [(name, share) for name, share in ranked(shares_) if share >= NAMED_SHARE]
    first, share = named[0]
    terrain = ("mostly " if share >= MOSTLY_SHARE else "mainly ") + f"{first} ({share:.0%})"
    if len(named) > 1:
        terrain += ", with " + ", ".join(f"{n} ({s:.0%})" for n, s in named[1:])
    where = []
    for name, _ in named[:3]:
        cell = most_in(facts, name)
        if cell:
            where.append(f"most {name} in the {cell}")
    return templates["caption"].format(
        date=facts["date"], terrain=terrain, distribution="; ".join(where) or "evenly mixed across the image",
        water=presence_sentence(facts, WATER), built_up=presence_sentence(facts, BUILT_UP))


def presence_sentence(facts: dict, code: int) -> str:
    share = facts["classes"].get(CLASSES[code], 0.0)
    if share < PRESENT_SHARE:
        return f"no {PHRASES[code]}"
    cell = most_in(facts, CLASSES[code])
    return f"{PHRASES[code]} over {share:.0%} of the image" + (f", most in the {cell}" if cell else "")
