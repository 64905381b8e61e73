"""Region captions as GeoChat-Bench and EarthDial score them: ROUGE-1 and ROUGE-L F-measures (Google's rouge-score,
Porter stemmer), averaged over examples. Their METEOR is not computed: NLTK's METEOR needs the WordNet corpus, a
download on first use."""

import datasets
import evaluate


class RegionCaption(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions: captions; references: one caption each",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        from rouge_score.rouge_scorer import RougeScorer

        if not references:
            return {"examples": 0}
        scorer = RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
        scores = [scorer.score(r, p or "") for p, r in zip(predictions, references)]
        return {"rouge1": sum(s["rouge1"].fmeasure for s in scores) / len(scores),
                "rouge_l": sum(s["rougeL"].fmeasure for s in scores) / len(scores),
                "unparsable": sum(not (p or "").strip() for p in predictions), "examples": len(references)}
