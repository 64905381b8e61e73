"""Normalised exact match for free questions and land-cover answers: lower case, punctuation and the articles
a / an / the removed, spaces collapsed. An empty answer is unparsable: wrong, and counted."""

import re

import datasets
import evaluate


def normalise(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", (text or "").lower())
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


class SarExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions, references: answers as text",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        hits = sum(normalise(p) == normalise(r) for p, r in zip(predictions, references))
        return {"accuracy": hits / len(references) if references else float("nan"),
                "unparsable": sum(not normalise(p) for p in predictions), "examples": len(references)}
