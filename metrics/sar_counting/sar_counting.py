"""Counting: exact-integer accuracy and mean absolute error. The first integer in an answer is its count; an answer
without one, or whose first integer has more than 15 digits (no count; it would overflow the error), is unparsable:
wrong for accuracy, left out of the error, and counted."""

import re

import datasets
import evaluate

INTEGER = re.compile(r"-?\d+")
MAX_DIGITS = 15


class SarCounting(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions, references: answers as text",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        hits, errors, unparsable = 0, [], 0
        for prediction, reference in zip(predictions, references):
            found, target = INTEGER.search(prediction or ""), int(INTEGER.search(reference).group())
            if found is None or len(found.group().lstrip("-")) > MAX_DIGITS:
                unparsable += 1
                continue
            hits += int(found.group()) == target
            errors.append(abs(int(found.group()) - target))
        total = len(references)
        return {"accuracy": hits / total if total else float("nan"),
                "mae": sum(errors) / len(errors) if errors else float("nan"),
                "unparsable": unparsable, "examples": total}
