"""3x3 grid localisation. Cells: top-left, top-center, top-right, middle-left, center, middle-right, bottom-left,
bottom-center, bottom-right, written as a row then a column ("top left", "middle center", "centre left", "top middle"
...: "middle" / "center" / "centre" name the middle row or column) or "center" / "centre" / "middle" alone for the
middle cell. An answer names one or more cells, in order; the reference names the target cells.
- Acc@100: the set of predicted cells equals the set of target cells.
- Acc@50: the Jaccard overlap of the two sets is at least 0.5.
- Top-1: the first predicted cell is a target cell.
An answer naming no cell is unparsable: wrong on all three, and counted."""

import re

import datasets
import evaluate

CELL = re.compile(r"\b(top|middle|center|centre|bottom)[\s-]+(left|middle|center|centre|right)\b"
                  r"|\b(center|centre|middle)\b")
MIDDLE = ("middle", "center", "centre")


def cells(text: str) -> list[str]:
    found = []
    for match in CELL.finditer((text or "").lower()):
        row, column = ("middle", "center") if match.group(3) else match.group(1, 2)
        row, column = "middle" if row in MIDDLE else row, "center" if column in MIDDLE else column
        cell = "center" if (row, column) == ("middle", "center") else f"{row}-{column}"
        if cell not in found:
            found.append(cell)
    return found


class SarGrid(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions, references: cell names as text",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        exact = half = top1 = unparsable = 0
        for prediction, reference in zip(predictions, references):
            predicted, target = cells(prediction), set(cells(reference))
            if not predicted:
                unparsable += 1
                continue
            overlap = len(set(predicted) & target) / len(set(predicted) | target)
            exact += set(predicted) == target
            half += overlap >= 0.5
            top1 += predicted[0] in target
        total = len(references) or float("nan")
        return {"acc@100": exact / total, "acc@50": half / total, "top1": top1 / total, "unparsable": unparsable,
                "examples": len(references)}
