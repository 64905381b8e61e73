"""The base model's processor, reduced to what FUSAR-GPT reads: images and text."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import transformers
from transformers import ProcessorMixin


@functools.cache
def image_only(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """`processor_class` without its video slot, if it has one.

    transformers type-checks every sub-processor slot, and without torchvision it cannot even name the video
    processor's type, so Qwen2.5-VL's processor cannot be built at all there. SAR scenes are images: dropping the
    slot loses nothing and makes the processor work with or without torchvision.
    """
    if "video_processor" not in processor_class.get_attributes():
        return processor_class

    class ImageOnlyProcessor(processor_class):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            # The parent passes (image_processor, tokenizer, video_processor) to ProcessorMixin, which pairs them
            # with this class's two attributes and so ignores the missing video processor.
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = processor_class.__name__
    return ImageOnlyProcessor


def load_base_processor(path) -> ProcessorMixin:
    """A base model's processor from a local folder, built without a video slot (see `image_only`)."""
    config_file = Path(path) / "processor_config.json"
    if not config_file.is_file():
        raise ValueError(f"{path}: no processor_config.json; save the base model's processor there first")
    class_name = json.loads(config_file.read_text())["processor_class"]
    return image_only(getattr(transformers, class_name)).from_pretrained(path)
