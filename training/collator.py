"""The training collator: TRL's vision-language collator plus the anchor tensors, each example processed once per run.

TRL's collator renders the chat template, tokenizes, computes the assistant-token mask and preprocesses the images
for every batch of every epoch; on a small model that is a quarter of the training time. The result for one example
never changes, so each is processed alone the first time it is seen, kept (up to a memory budget) and padded into
later batches: the same tensors as processing the batch together, from the second epoch on at the cost of a copy.
"""

from __future__ import annotations

import torch
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from dataset_scripts.schema import row_anchors
from processing.anchors import collate_anchor_sets

PADDING = {"input_ids": None, "labels": -100}  # None: the tokenizer's pad token; any other sequence key pads with 0


class FusarDataCollator(DataCollatorForVisionLanguageModeling):
    """TRL's vision-language collator (chat template, image tokens, assistant-only labels) plus the anchor tensors.
    Processed examples are kept up to `cache_bytes` (0: none kept), by row id, scene and text: a dataset that reuses
    an id (`fusar-data check` reports it) never gets another row's tensors."""

    def __init__(self, processor, use_anchors: bool = True, cache_bytes: int = 2**30, assistant_only_loss: bool = True,
                 **kwargs):
        super().__init__(processor, assistant_only_loss=assistant_only_loss, **kwargs)
        self.use_anchors, self.cache_bytes = use_anchors, cache_bytes
        self.cache: dict[tuple, tuple[dict, object]] = {}
        self.cached_bytes = 0

    def torch_call(self, examples):
        parts = [self.processed(example) for example in examples]
        batch = pad_and_join([features for features, _ in parts], self.processor.tokenizer.pad_token_id)
        if self.use_anchors:
            batch.update(collate_anchor_sets([anchors for _, anchors in parts], [e.get("year") for e in examples]))
        return batch

    def processed(self, example) -> tuple[dict, object]:
        """(the example as a batch of one, its anchors), from the cache when it was seen before."""
        key = (example.get("id"), example.get("scene_id"), repr(example["messages"]))
        if key in self.cache:
            return self.cache[key]
        try:
            features = super().torch_call([{"image": example["image"], "messages": example["messages"]}])
        except ValueError as error:  # transformers' check that truncation kept every image token
            if self.max_length is None or "token count" not in str(error):
                raise
            raise ValueError(f"--max_length {self.max_length} cuts the image tokens of row {example.get('id')}: raise "
                             "it, or set it to null for no limit") from error
        entry = features, row_anchors(example)
        size = sum(value.nbytes for value in features.values() if isinstance(value, torch.Tensor))
        if key[0] is not None and self.cached_bytes + size <= self.cache_bytes:
            self.cache[key], self.cached_bytes = entry, self.cached_bytes + size
        return entry


def pad_and_join(parts: list[dict], pad_token_id: int) -> dict:
    """Batches of one example each -> one batch: sequences (shaped like `input_ids`) right-padded to the longest
    and stacked; everything else (pixel values, image grids, in whatever layout the backbone uses) concatenated."""
    length = max(part["input_ids"].shape[1] for part in parts)
    batch = {}
    for key in parts[0]:
        values = [part[key] for part in parts]
        if values[0].shape[:2] == parts[0]["input_ids"].shape[:2]:  # a sequence: [1, tokens]
            fill = PADDING.get(key, 0)
            fill = pad_token_id if fill is None else fill
            values = [torch.nn.functional.pad(value, (0, length - value.shape[1]), value=fill) for value in values]
        batch[key] = torch.cat(values)
    return batch
