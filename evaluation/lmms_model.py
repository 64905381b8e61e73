"""FUSAR-GPT in lmms-eval, the common harness for vision-language models:

    lmms-eval --model fusar_gpt --model_args pretrained=CHECKPOINT[,alphaearth=URL_OR_DIR] --tasks TASKS
    accelerate launch --num_processes 8 -m lmms_eval --model fusar_gpt ...   (each process its share of the documents)

Registered through lmms-eval's `lmms_eval.models` entry point (`evaluation/lmms_registration.py`). Each document's
image gets the anchors its document carries: the triplet dataset's anchor columns (`anchor_values`, ...), or an
`anchors` field (an `.npz` / `.npy` file's path or bytes); else, for an image given as the path of a georeferenced
GeoTIFF, the anchors found under it through `alphaearth` (the same sampling as `fusar-data anchors`); else none,
where FUSAR-GPT computes exactly its base model. For the base itself, lmms-eval's own `qwen2_5_vl` is the reference.
"""

from __future__ import annotations

import torch
from lmms_eval import utils
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm.auto import tqdm

from dataset_scripts.schema import row_anchors
from processing.anchors import AnchorSet, as_anchor_set, collate_anchor_sets, from_bytes


class FusarGPT(lmms):
    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str = 8, dtype: str = "auto",
                 max_new_tokens: int | str = 128, alphaearth: str | None = None, grid_size: int | str = 8,
                 **unknown) -> None:
        super().__init__()
        if unknown:  # lmms-eval passes model_args through: a misspelt one must not be silently ignored
            raise ValueError(f"--model_args: fusar_gpt has no argument {', '.join(sorted(unknown))}; it takes "
                             "pretrained, device, batch_size, dtype, max_new_tokens, alphaearth, grid_size")
        from transformers import AutoModelForImageTextToText, AutoProcessor

        import modeling_fusar  # noqa: F401  (registers FUSAR-GPT with the Auto classes)

        if not str(batch_size).isdigit() or not str(max_new_tokens).isdigit():
            raise ValueError(f"batch_size={batch_size}, max_new_tokens={max_new_tokens}: fusar_gpt takes numbers")
        from accelerate import Accelerator

        # As lmms-eval's own models: the launcher's processes (one alone without a launcher), each on its own device;
        # lmms-eval gives process r the documents r, r + N, ... and gathers the answers.
        self.accelerator = Accelerator(cpu=not torch.accelerator.is_available())  # else CPU processes stay apart
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        if self._world_size > 1 or not device:  # lmms-eval's --device defaults to none; several share no device
            device = self.accelerator.device
        self.processor = AutoProcessor.from_pretrained(pretrained)
        self.model = AutoModelForImageTextToText.from_pretrained(pretrained, dtype=dtype).to(device).eval()
        self.anchor_dim = getattr(self.model.config, "anchor_dim", None)  # None: not FUSAR-GPT; no anchors
        self.batch_size, self.max_new_tokens, self.grid_size = int(batch_size), int(max_new_tokens), int(grid_size)
        self.alphaearth = None
        if alphaearth and self.anchor_dim:
            from dataset_scripts.alphaearth_cloud import open_source

            self.alphaearth = open_source(alphaearth)

    @property
    def device(self) -> torch.device:  # lmms-eval's evaluator places its gathering tensors here
        return self.model.device

    # -- what each document's image and anchors are

    def _document(self, doc_to_visual, doc_id, task, split) -> tuple[Image.Image, AnchorSet | None, int | None]:
        doc = self.task_dict[task][split][doc_id]
        visuals = [v for v in (doc_to_visual(doc) or []) if v is not None]
        if len(visuals) != 1:
            raise ValueError(f"{task} ({split}) document {doc_id}: {len(visuals)} images; fusar_gpt answers about one "
                             "image per document")
        image, anchors, year = visuals[0], None, doc.get("year")
        if isinstance(image, str):  # a file: a GeoTIFF brings its georeference and date
            from dataset_scripts.sar_reader import read_sar_scene

            scene = read_sar_scene(image)
            image, year = scene.image, year or scene.year
            if self.alphaearth is not None and scene.footprint is not None and year:
                from dataset_scripts.alphaearth import sample_anchors

                anchors = sample_anchors(self.alphaearth, scene.footprint, year, self.grid_size)
        if self.anchor_dim is None:
            return image.convert("RGB"), None, year
        where = f"{task} ({split}) document {doc_id}"
        if doc.get("anchor_values"):
            anchors = row_anchors(doc, self.anchor_dim)
        elif isinstance(doc.get("anchors"), (bytes, dict)):
            data = doc["anchors"]["bytes"] if isinstance(doc["anchors"], dict) else doc["anchors"]
            anchors = from_bytes(data, anchor_dim=self.anchor_dim, where=f"{where}, anchors")
        elif isinstance(doc.get("anchors"), str):
            anchors = as_anchor_set(doc["anchors"], anchor_dim=self.anchor_dim, where=f"{where}, anchors")
        return image.convert("RGB"), anchors or as_anchor_set(None, anchor_dim=self.anchor_dim), year

    def _inputs(self, texts: list[str], documents: list[tuple]):
        images, anchors, years = zip(*documents)
        inputs = self.processor(images=list(images), text=texts, padding=True, return_tensors="pt")
        if self.anchor_dim is not None:
            inputs.update(collate_anchor_sets(list(anchors), list(years)))
        return inputs.to(self.model.device)

    def _prompt(self, context: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": context.replace("<image>", "").strip()}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    # -- lmms-eval's interface

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        """Greedy answers, batched (left padding), cut at the task's `until` strings."""
        tokenizer = self.processor.tokenizer
        collator = utils.Collator([r.args for r in requests], lambda args: (-len(args[0]), args[0]), grouping=True)
        answers = []
        padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            for chunk in tqdm(collator.get_batched(n=self.batch_size), desc="fusar_gpt", disable=self.rank != 0):
                contexts, settings, doc_to_visual, doc_ids, tasks, splits = zip(*chunk)
                setting = dict(settings[0])
                if float(setting.get("temperature") or 0) > 0 or setting.get("do_sample"):
                    raise ValueError(f"{tasks[0]}: fusar_gpt answers greedily; the task asks for sampling "
                                     f"({setting})")
                documents = [self._document(*d) for d in zip(doc_to_visual, doc_ids, tasks, splits)]
                inputs = self._inputs([self._prompt(c) for c in contexts], documents)
                output = self.model.generate(**inputs, do_sample=False,
                                             max_new_tokens=int(setting.get("max_new_tokens", self.max_new_tokens)))
                until = setting.get("until") or []
                for context, text in zip(contexts, self.processor.batch_decode(
                        output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)):
                    for stop in [until] if isinstance(until, str) else until:
                        text = text.split(stop)[0] if stop else text
                    answers.append(text.strip())
                    self.cache_hook.add_partial("generate_until", (context, settings[0]), answers[-1])
        finally:
            tokenizer.padding_side = padding_side
        return collator.get_original(answers)

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """The log-probability of each continuation as the assistant's answer, and whether greedy decoding would
        have produced exactly it."""
        results = []
        for context, target, doc_to_visual, doc_id, task, split in tqdm([r.args for r in requests], desc="fusar_gpt",
                                                                        disable=self.rank != 0):
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            document = self._document(doc_to_visual, doc_id, task, split)
            prompt = self._prompt(context)
            inputs = self._inputs([prompt + continuation], [document])
            start = self._inputs([prompt], [document])["input_ids"].shape[1]
            logits = self.model(**inputs).logits[0, start - 1 : -1].float()
            wanted = inputs["input_ids"][0, start:]
            log_probs = torch.log_softmax(logits, -1).gather(-1, wanted[:, None]).sum()
            results.append((float(log_probs), bool((logits.argmax(-1) == wanted).all())))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("fusar_gpt does not run lmms-eval's multi-round tasks yet")
