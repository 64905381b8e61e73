"""Evaluate a FUSAR-GPT checkpoint on a triplet dataset split: batched greedy generation, accuracy per task.

This first version measures normalised exact match per task (what the training job needs to show that a model
learned); task-specific metrics, ablations and reports build on `generate_answers` and `score`.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from processing.anchors import as_anchor_set, collate_anchor_sets

ANCHOR_DIM = 64


def normalise(text: str) -> str:
    """Lower case, no surrounding punctuation or articles, single spaces: 'The Cropland.' -> 'cropland'."""
    text = re.sub(r"[^\w\s\[\]{}\":,.-]", " ", text.lower()).strip(" .")
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


def row_anchors(row: dict, anchor_dim: int = ANCHOR_DIM):
    """A dataset row's anchors as an AnchorSet (an empty one when the row has none)."""
    if not row["anchor_values"]:
        return as_anchor_set(None, anchor_dim=anchor_dim)
    return as_anchor_set({"values": row["anchor_values"], "positions": row["anchor_positions"],
                          "mask": row["anchor_mask"], "years": row["anchor_years"] or None}, anchor_dim=anchor_dim)


@torch.no_grad()
def generate_answers(model, processor, rows, batch_size: int = 16, max_new_tokens: int = 48,
                     use_anchors: bool = True, progress: bool = True) -> list[str]:
    """Greedy answers (left padding, KV cache) to each row's user turn, with or without its anchors."""
    model.eval()
    processor.tokenizer.padding_side = "left"
    answers = []
    batches = range(0, len(rows), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress):
        batch = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        prompts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["messages"][0]["content"]}]}],
            add_generation_prompt=True) for row in batch]
        inputs = processor(images=[row["image"] for row in batch], text=prompts, padding=True, return_tensors="pt")
        if use_anchors:
            inputs.update(collate_anchor_sets([row_anchors(row, model.config.anchor_dim) for row in batch],
                                              [row["year"] for row in batch]))
        inputs = inputs.to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers += processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [answer.strip() for answer in answers]


def score(rows, answers) -> dict[str, dict]:
    """Normalised exact-match accuracy and example count per task, and over all rows."""
    hits, counts = defaultdict(int), defaultdict(int)
    for row, answer in zip(rows, answers):
        correct = normalise(answer) == normalise(row["messages"][-1]["content"])
        for key in (row["task"], "all"):
            hits[key] += correct
            counts[key] += 1
    return {task: {"accuracy": hits[task] / counts[task], "examples": counts[task]} for task in counts}
