"""SARLANG-1M's VQA scoring (the authors' Evaluate_VQA.py) without its optional LLM judge: an answer is right when
the lower-cased reference occurs in the lower-cased prediction (so "1" is found in "10", as theirs is). Their judge
re-scores only the misses whose reference is not yes, no or a number from 0 to 99, so this accuracy is a lower bound
of the judged one (equal to it on those questions)."""

import datasets
import evaluate


class AnswerContained(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions, references: answers as text",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        hits = sum(r.lower() in (p or "").lower() for p, r in zip(predictions, references))
        return {"accuracy": hits / len(references) if references else float("nan"),
                "unparsable": sum(not (p or "").strip() for p in predictions), "examples": len(references)}
