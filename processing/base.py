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


def load_base_processor(name_or_path, **hub_options) -> ProcessorMixin:
    """A base model's processor from a local folder or a Hub id, built without a video slot (see `image_only`).

    Any layout transformers writes or the Hub holds: the class is named by `processor_config.json`, else by the
    image processor's `preprocessor_config.json` (a Qwen2.5-VL snapshot as published: its processor is spread over
    preprocessor_config.json, chat_template.json and the tokenizer files), else found from `config.json`'s model type.
    `hub_options` (revision, token, cache_dir, ...) go to the Hub."""
    class_name = processor_class_name(str(name_or_path), **hub_options)
    if class_name == "FusarProcessor":
        raise ValueError(f"{name_or_path} is a FUSAR-GPT checkpoint already: load its processor with "
                         "AutoProcessor.from_pretrained; from_base takes the base model's")
    if not hasattr(transformers, class_name):
        raise ValueError(f"{name_or_path}: processor class {class_name!r} is not in this transformers")
    return image_only(getattr(transformers, class_name)).from_pretrained(name_or_path, **hub_options)


def processor_class_name(name_or_path: str, **hub_options) -> str:
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.utils import cached_file

    def read(filename: str) -> dict:
        path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False, **hub_options)
        return json.loads(Path(path).read_text()) if path else {}

    for filename in ("processor_config.json", "preprocessor_config.json"):
        if named := read(filename).get("processor_class"):
            return named
    model_type = read("config.json").get("model_type")
    if model_type in PROCESSOR_MAPPING_NAMES:
        return PROCESSOR_MAPPING_NAMES[model_type]
    raise ValueError(f"{name_or_path}: cannot tell its processor: no processor_class in processor_config.json or "
                     f"preprocessor_config.json, and model type {model_type!r} has no processor in transformers")
