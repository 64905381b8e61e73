"""Closed-set classification (a given box's class, a land-cover class): normalised exact-match accuracy (as
sar_exact_match), overall and per class (the reference's class). The class set is `classes=` if given, else the
classes that occur among the references; an answer outside it is unparsable (wrong, and counted)."""

import re
from collections import defaultdict

import datasets
import evaluate


def normalise(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", (text or "").lower())
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


class SarClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions, references: class names as text",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references, classes=None):
        hits, counts = defaultdict(int), defaultdict(int)
        for prediction, reference in zip(predictions, references):
            label = normalise(reference)
            counts[label] += 1
            hits[label] += normalise(prediction) == label
        total = sum(counts.values())
        known = {normalise(c) for c in classes} if classes is not None else set(counts)
        return {"accuracy": sum(hits.values()) / total if total else float("nan"),
                "per_class": {label: hits[label] / counts[label] for label in sorted(counts)},
                "unparsable": sum(normalise(p) not in known for p in predictions), "examples": total}
