"""EarthDial's detection and referring scoring: boxes are `[x1, y1, x2, y2, angle]` lists (0-100 normalised
coordinates, the angle in degrees, several boxes side by side: `[[..]][[..]]`); a box is rotated about its centre
and compared as a polygon. Precision at IoU 0.5 (a predicted box is right when it overlaps a reference box not yet
matched by at least 0.5) is EarthDial's figure; recall is given beside it. An answer with no box list is
unparsable: no boxes, and counted."""

import math
import re

import datasets
import evaluate

BOX = re.compile(r"\[\s*(-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?)*)\s*\]")


def boxes(text: str):
    """The polygons of the 5-number lists in `text` (lists of another length are ignored), or None when it has none
    (a 400-digit number is not a coordinate either)."""
    from shapely.affinity import rotate
    from shapely.geometry import box

    found = []
    for numbers in BOX.findall(text or ""):
        values = [float(v) for v in numbers.split(",")]
        if len(values) == 5 and all(math.isfinite(v) and abs(v) <= 1e6 for v in values):
            x1, y1, x2, y2, angle = values
            found.append(rotate(box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), angle))
    return found or None


def matched(predicted, reference, threshold: float = 0.5) -> int:
    """Predicted boxes that overlap a still unmatched reference box by `threshold` IoU, in the prediction's order."""
    free, hits = list(reference), 0
    for polygon in predicted:
        for candidate in free:
            union = polygon.union(candidate).area
            if union and polygon.intersection(candidate).area / union >= threshold:
                free.remove(candidate)
                hits += 1
                break
    return hits


class RotatedBoxes(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions, references: box lists as text",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        pairs = [(boxes(p), boxes(r) or []) for p, r in zip(predictions, references)]
        hits = sum(matched(p or [], r) for p, r in pairs)
        n_predicted, n_reference = sum(len(p or []) for p, _ in pairs), sum(len(r) for _, r in pairs)
        return {"precision@0.5": hits / n_predicted if n_predicted else 0.0,
                "recall@0.5": hits / n_reference if n_reference else 0.0,
                "unparsable": sum(p is None for p, _ in pairs), "examples": len(references)}
