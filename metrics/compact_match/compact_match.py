"""GeoChat-Bench's scoring of scene classification and VQA (GeoChat's evaluation scripts): the prediction with its
spaces and dots removed, lower-cased, must equal the lower-cased reference ("Dense Residential." ==
"denseresidential")."""

import datasets
import evaluate


def compact(text: str) -> str:
    return (text or "").replace(" ", "").lower().replace(".", "")


class CompactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions, references: answers as text",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        hits = sum(compact(p) == r.lower() for p, r in zip(predictions, references))
        return {"accuracy": hits / len(references) if references else float("nan"),
                "unparsable": sum(not compact(p) for p in predictions), "examples": len(references)}
