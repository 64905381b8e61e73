"""Captions: BLEU-1..4, ROUGE-L and CIDEr-D with the COCO caption evaluation code (pycocoevalcap). Tokenisation:
lower case, every character other than a letter, digit or space replaced by a space, split on spaces. METEOR is
not computed (it needs a Java runtime). An empty caption is unparsable: scored as empty, and counted.

The configuration "raw" (`evaluate.load(path, "raw")`) is SARLANG-1M's scoring (the authors' Evaluate_caption.py):
the same scorers on the captions exactly as written, case, punctuation and spacing kept."""

import re

import datasets
import evaluate


def tokens(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", (text or "").lower()).split())


class SarCaption(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions: captions; references: one caption each",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        if not references:
            return {"examples": 0}
        # pycocoevalcap needs a token per caption: an empty prediction is scored as a single unknown token
        split = (lambda text: text or "") if self.config_name == "raw" else tokens
        results = {i: [split(p) or "<empty>"] for i, p in enumerate(predictions)}
        truths = {i: [split(r)] for i, r in enumerate(references)}
        bleu, _ = Bleu(4).compute_score(truths, results, verbose=0)
        rouge, _ = Rouge().compute_score(truths, results)
        cider, _ = Cider().compute_score(truths, results)
        return {**{f"bleu{n}": float(bleu[n - 1]) for n in range(1, 5)}, "rouge_l": float(rouge), "cider": float(cider),
                "unparsable": sum(not split(p).strip() for p in predictions), "examples": len(references)}
