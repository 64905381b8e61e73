"""Replicas of real Hub repositories' file layouts, with tiny weights: the same file names and keys as the real thing.

`qwen2_5_vl_snapshot` is Qwen/Qwen2.5-VL-7B-Instruct as published (checked against its file list and config keys):
config.json (text fields at the top level, `rope_scaling` mrope, `vision_config`), generation_config.json,
preprocessor_config.json (the only place the processor class is named), chat_template.json, tokenizer.json,
tokenizer_config.json, vocab.json, merges.txt, and sharded safetensors with an index under the legacy key names
(`model.layers.*`, `visual.*`, `lm_head`). No processor_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeling_fusar.tiny import tiny_qwen2_5_vl

# Qwen2.5-VL's own chat template, as in its chat_template.json (no `{% generation %}` markers).
OFFICIAL_QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == "
    "'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


def qwen2_5_vl_snapshot(folder: Path, tokenizer, seed: int = 0):
    """Write a tiny Qwen2.5-VL in the 7B-Instruct repository's layout to `folder`; returns the model."""
    import torch

    torch.manual_seed(seed)
    model, processor = tiny_qwen2_5_vl(tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, max_shard_size="100KB")  # legacy key names, sharded, with an index
    nested = json.loads((folder / "config.json").read_text())
    text = nested.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = {**nested, **{k: v for k, v in text.items() if k not in ("model_type", "layer_types")},
            "rope_theta": rope["rope_theta"], "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
            "torch_dtype": nested.pop("dtype", "float32")}
    flat.pop("dtype", None)
    (folder / "config.json").write_text(json.dumps(flat, indent=2))
    ids = tokenizer.convert_tokens_to_ids
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids("<|endoftext|>"), "pad_token_id": ids("<|endoftext|>"), "do_sample": True,
        "eos_token_id": [ids("<|im_end|>"), ids("<|endoftext|>")], "repetition_penalty": 1.05, "temperature": 0.1,
        "top_p": 0.001, "top_k": 1, "transformers_version": "4.49.0"}, indent=2))
    image = processor.image_processor
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": image.size["shortest_edge"], "max_pixels": image.size["longest_edge"], "patch_size": 14,
        "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor"}, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": OFFICIAL_QWEN2_5_VL_TEMPLATE}, indent=2))
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer.backend_tokenizer.model.save(str(folder))  # vocab.json, merges.txt
    added = {str(ids(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                           "special": True} for t in tokenizer.all_special_tokens}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                                      "<|image_pad|>", "<|video_pad|>"],
        "bos_token": None, "chat_template": OFFICIAL_QWEN2_5_VL_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}, indent=2))
    for stray in ("chat_template.jinja",):  # written by today's save_pretrained, absent from the repository
        (folder / stray).unlink(missing_ok=True)
    return model


QWEN_REPO = "Qwen/Qwen2.5-VL-7B-Instruct"


@pytest.fixture
def published(local_hub, tokenizers, tmp_path):
    """(the base model, its replica folder) with the replica uploaded to the local Hub as QWEN_REPO."""
    from huggingface_hub import HfApi

    folder = tmp_path / "Qwen2.5-VL-7B-Instruct"
    base = qwen2_5_vl_snapshot(folder, tokenizers["qwen2_5_vl"])
    assert SNAPSHOT_FILES <= {p.name for p in folder.iterdir()} and not (folder / "processor_config.json").exists()
    HfApi().create_repo(QWEN_REPO)
    HfApi().upload_folder(folder_path=str(folder), repo_id=QWEN_REPO)
    return base.eval(), folder


SNAPSHOT_FILES = {"config.json", "generation_config.json", "preprocessor_config.json", "chat_template.json",
                  "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "model.safetensors.index.json"}
