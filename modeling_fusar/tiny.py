"""Tiny random backbones and an offline tokenizer, for tests and the CPU demo.

Nothing here downloads: the tokenizer is a byte-level BPE trained on the spot with the special tokens and
chat template of the backbone's family, and the models are built from configs with random weights.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from processing.base import image_only
from transformers import (
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
)

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]
LLAVA_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<image>"]

# Chat formats of the two families. `generation` marks what the assistant says (TRL's assistant-only loss).
# transformers renders with trim_blocks, so a newline right after a tag is written as {{ '\\n' }}.
_CONTENT = (
    "{% macro content(message, image) %}{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ image }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{% endmacro %}"
)
# Qwen2.5-VL's format, without its default system prompt.
QWEN_CHAT_TEMPLATE = _CONTENT + (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ content(message, '') }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ content(message, '<|vision_start|><|image_pad|><|vision_end|>') }}<|im_end|>{% endif %}{{ '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# LLaVA-1.5's "USER: <image>\n... ASSISTANT: ..." format.
LLAVA_CHAT_TEMPLATE = _CONTENT + (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}ASSISTANT: "
    "{% generation %}{{ content(message, '') }}</s>{% endgeneration %} "
    "{% else %}USER: {{ content(message, '<image>\n') }} {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

DEFAULT_CORPUS = (
    "Describe the SAR image. How many ships are there? Which cell of the 3x3 grid contains the aircraft? "
    "Classify the region in the box. Detect all ships and answer in JSON with bbox_2d and label. "
    "The scene shows water, forest, cropland, urban area, bare soil, wetland, a runway, ships and aircraft. "
    '[{"bbox_2d": [12, 40, 56, 98], "label": "ship"}] top-left top-center top-right middle-left center '
    "middle-right bottom-left bottom-center bottom-right 0 1 2 3 4 5 6 7 8 9 10 yes no"
)


def train_tokenizer(
    corpus: Iterable[str] = (DEFAULT_CORPUS,), family: str = "qwen2_5_vl", vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus` with `family`'s special tokens and chat template."""
    special = QWEN_SPECIAL_TOKENS if family == "qwen2_5_vl" else LLAVA_SPECIAL_TOKENS
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    if family == "qwen2_5_vl":
        return PreTrainedTokenizerFast(
            tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=QWEN_CHAT_TEMPLATE,
            extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=LLAVA_CHAT_TEMPLATE,
        extra_special_tokens={"image_token": "<image>"},
    )


def tiny_qwen2_5_vl(tokenizer, hidden_size: int = 64, layers: int = 2, vision_hidden: int = 32, vision_depth: int = 2,
                    min_pixels: int = 56 * 56, max_pixels: int = 224 * 224):
    """A random Qwen2.5-VL-shaped model and its processor."""
    ids = tokenizer.convert_tokens_to_ids
    heads = max(2, hidden_size // 32)
    head_dim = hidden_size // heads
    section = [head_dim // 8, head_dim // 8 + (head_dim // 2 - 3 * (head_dim // 8)) // 2]
    section.append(head_dim // 2 - sum(section))
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            max_position_embeddings=4096, bos_token_id=None, eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
            out_hidden_size=hidden_size, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
            window_size=56, fullatt_block_indexes=[vision_depth - 1],
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    processor = image_only(Qwen2_5_VLProcessor)(image_processor, tokenizer, chat_template=tokenizer.chat_template)
    return Qwen2_5_VLForConditionalGeneration(config), processor


def tiny_llava(tokenizer, hidden_size: int = 64, layers: int = 2, vision_hidden: int = 32, image_size: int = 56,
               patch_size: int = 14):
    """A random LLaVA-shaped model (CLIP tower, fixed patch grid) and its processor."""
    ids = tokenizer.convert_tokens_to_ids
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
            num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=patch_size,
            projection_dim=vision_hidden,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=layers, num_attention_heads=max(2, hidden_size // 32), num_key_value_heads=1,
            max_position_embeddings=4096, bos_token_id=ids("<s>"), eos_token_id=ids("</s>"),
            pad_token_id=ids("<pad>"),
        ),
        image_token_id=ids("<image>"), vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=tokenizer.chat_template,
    )
    return LlavaForConditionalGeneration(config), processor
