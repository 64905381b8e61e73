"""Detection: precision, recall and F1 at IoU 0.25 and 0.5 over all boxes, matching greedily one-to-one within
each class (highest IoU first). Answers are JSON lists `[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]` (a JSON
block inside other text is found); an answer that does not parse counts as no detections, and is counted."""

import json
import math
import string

import datasets
import evaluate

THRESHOLDS = (0.25, 0.5)


def boxes(text: str):
    """[(label, (x1, y1, x2, y2))] from the first JSON list in the text (a code fence around it is fine), [] for the
    authors' "None" / "null" (no targets), or None when there is no valid list (every box needs a label and exactly
    four finite numbers). Boxes may reach beyond the image, as the authors' references do."""
    text = (text or "").strip()
    if text.startswith("```"):  # a fence and its language tag
        text = text[3:].lstrip(string.ascii_letters).removesuffix("```").strip()
    if text.lower() in ("none", "null"):
        return []
    try:
        items, _ = json.JSONDecoder().raw_decode(text[text.index("["):])
        parsed = [(str(i["label"]).strip().lower(), tuple(float(v) for v in i["bbox_2d"])) for i in items]
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError):  # 400-digit numbers too
        return None
    if not all(len(box) == 4 and all(math.isfinite(v) for v in box) for _, box in parsed):
        return None
    return parsed


def iou(a, b) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    area = lambda box: max(box[2] - box[0], 0) * max(box[3] - box[1], 0)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def matches(predicted, target, threshold: float) -> int:
    """True positives: greedy one-to-one matching per class, pairs taken by decreasing IoU."""
    pairs = sorted(((iou(p, t), i, j) for i, (pl, p) in enumerate(predicted) for j, (tl, t) in enumerate(target)
                    if pl == tl), reverse=True)
    used_p, used_t, hits = set(), set(), 0
    for overlap, i, j in pairs:
        if overlap >= threshold and i not in used_p and j not in used_t:
            used_p.add(i), used_t.add(j)
            hits += 1
    return hits


class SarDetection(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions, references: JSON box lists as text",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        results, unparsable = {}, 0
        parsed = []
        for prediction, reference in zip(predictions, references):
            predicted = boxes(prediction)
            unparsable += predicted is None
            parsed.append((predicted or [], boxes(reference) or []))
        for threshold in THRESHOLDS:
            tp = sum(matches(p, t, threshold) for p, t in parsed)
            n_pred, n_true = sum(len(p) for p, _ in parsed), sum(len(t) for _, t in parsed)
            precision = tp / n_pred if n_pred else 0.0
            recall = tp / n_true if n_true else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            results.update({f"precision@{threshold}": precision, f"recall@{threshold}": recall, f"f1@{threshold}": f1})
        return {**results, "unparsable": unparsable, "examples": len(references)}
