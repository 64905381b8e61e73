"""EarthDial's detection and referring scoring (its `rs_detection/eval.py`), rule for rule:

- boxes are the bracketed lists of non-negative integers in the text, `[x1, y1, x2, y2, angle]` (0-100 coordinates,
  several side by side: `[[..]][[..]]`); a list with a sign or a decimal point is not read at all;
- a box is the rectangle turned by -angle degrees about its centre (EarthDial multiplies row vectors by the
  rotation matrix of +angle), compared as a polygon;
- a predicted box is right when its IoU with any reference box is at least 0.5 (not one-to-one: two predictions of
  one ship both count); a predicted list that is not 5 numbers is counted and never right;
- the figure is precision: right predicted boxes / predicted boxes (EarthDial prints it per size group; this is its
  total). An answer with no box list adds nothing, and is counted as unparsable.
"""

import re

import datasets
import evaluate

BOX = re.compile(r"\[\s*(\d+(?:,\s*\d+)*)\s*\]")
LARGEST = 10**6  # no coordinate of a 0-100 box is longer; a 400-digit one is junk, not a float overflow


def boxes(text: str) -> list[list[int]] | None:
    """The integer lists in `text`, or None when it has none."""
    found = [[int(v) for v in numbers.split(",")] for numbers in BOX.findall(text or "")]
    return found or None


def polygon(values: list[int]):
    """The rotated rectangle of a 5-number box, or None for another list (or a number beyond any box)."""
    from shapely.affinity import rotate
    from shapely.geometry import box

    if len(values) != 5 or max(values) > LARGEST:
        return None
    x1, y1, x2, y2, angle = values
    return rotate(box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), -angle)


def right(predicted: list[int], references: list) -> bool:
    shape = polygon(predicted)
    if shape is None:
        return False
    for reference in references:
        union = shape.union(reference).area
        if union and shape.intersection(reference).area / union >= 0.5:
            return True
    return False


class RotatedBoxes(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions, references: box lists as text",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        hits = predicted = unparsable = 0
        for prediction, reference in zip(predictions, references):
            answer = boxes(prediction)
            unparsable += answer is None
            targets = [shape for shape in map(polygon, boxes(reference) or []) if shape is not None]
            predicted += len(answer or [])
            hits += sum(right(values, targets) for values in answer or [])
        return {"precision@0.5": hits / predicted if predicted else 0.0, "unparsable": unparsable,
                "examples": len(references)}
