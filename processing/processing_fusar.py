"""FusarProcessor: the base model's processor, plus SAR normalisation of the images and the anchor tensors."""

from __future__ import annotations

import inspect

import numpy as np
import transformers
from PIL import Image
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .anchors import as_anchor_set, collate_anchor_sets
from .base import image_only
from .sar import load_sar_image

ANCHOR_INPUT_NAMES = ["anchor_values", "anchor_positions", "anchor_mask", "anchor_year_offsets"]


class FusarProcessor(ProcessorMixin):
    r"""
    Composes the base model's processor (tokenizer, image processor, chat template, image-token expansion)
    with SAR normalisation (`processing.sar.load_sar_image`) and anchor batching (`processing.anchors`).

    Args:
        image_processor, tokenizer, chat_template: the base processor's parts.
        base_processor_class (`str`): the transformers class of the base processor, e.g. "Qwen2_5_VLProcessor".
        base_processor_kwargs (`dict`): its other constructor arguments (e.g. LLaVA's `patch_size`).
        anchor_dim (`int`): length of an anchor vector (64 for AlphaEarth).
        anchor_grid_size (`int`): anchors per side when a dense embedding field is sampled.
        image_size (`int`, *optional*): resize every image to this square size first (the authors used 504),
            so that pixel coordinates in answers refer to it. None keeps each image's own size.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        base_processor_class: str = "Qwen2_5_VLProcessor",
        base_processor_kwargs: dict | None = None,
        anchor_dim: int = 64,
        anchor_grid_size: int = 8,
        image_size: int | None = None,
        **kwargs,
    ):
        self.base_processor_class = base_processor_class
        self.base_processor_kwargs = dict(base_processor_kwargs or {})
        self.anchor_dim = anchor_dim
        self.anchor_grid_size = anchor_grid_size
        self.image_size = image_size
        base_class = image_only(getattr(transformers, base_processor_class))
        self.base_processor = base_class(image_processor, tokenizer, chat_template=chat_template,
                                         **self.base_processor_kwargs)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_base(cls, base_processor: ProcessorMixin, **options) -> "FusarProcessor":
        """Wrap a base model's processor; `options` are `anchor_dim`, `anchor_grid_size` and `image_size`."""
        attributes = set(base_processor.get_attributes()) | {"self", "chat_template", "kwargs", "args"}
        own = inspect.signature(type(base_processor).__init__).parameters
        kwargs = {name: getattr(base_processor, name) for name in own if name not in attributes and hasattr(base_processor, name)}
        return cls(base_processor.image_processor, base_processor.tokenizer, chat_template=base_processor.chat_template,
                   base_processor_class=type(base_processor).__name__, base_processor_kwargs=kwargs, **options)

    def __call__(self, images=None, text=None, anchors=None, acquisition_years=None, **kwargs) -> BatchFeature:
        """Tokenise `text` and preprocess `images` (any SAR input `load_sar_image` reads) with the base processor;
        with `anchors` (one entry per image, see `processing.anchors.as_anchor_set`), add the anchor tensors."""
        images = None if images is None else self._model_images(images)
        inputs = self.base_processor(images=images, text=text, **kwargs)
        if anchors is not None:
            anchors = list(anchors) if isinstance(anchors, (list, tuple)) else [anchors]
            count = len(list(_flat(images)))
            if len(anchors) != count:
                raise ValueError(f"got anchors for {len(anchors)} images but {count} images; give one anchor entry "
                                 "(or None) per image")
            sets = [as_anchor_set(a, anchor_dim=self.anchor_dim, grid_size=self.anchor_grid_size, where=f"anchors[{i}]")
                    for i, a in enumerate(anchors)]
            inputs.update(collate_anchor_sets(sets, acquisition_years))
        return inputs

    def _model_images(self, images):
        """`model_image` over one image or (nested) lists of them, keeping the nesting the base processor reads."""
        if isinstance(images, (list, tuple)):
            return [self._model_images(image) for image in images]
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:  # a batch of quicklooks
            return [self.model_image(image) for image in images]
        return self.model_image(images)

    def model_image(self, image) -> Image.Image:
        """The 8-bit RGB image the model sees for any SAR input, at the processor's `image_size` if it has one."""
        image = load_sar_image(image)
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return image

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def post_process_image_text_to_text(self, *args, **kwargs):
        return self.base_processor.post_process_image_text_to_text(*args, **kwargs)

    @property
    def model_input_names(self):
        return self.base_processor.model_input_names + ANCHOR_INPUT_NAMES


def _flat(images):
    for image in images if isinstance(images, list) else [images]:
        yield from _flat(image) if isinstance(image, list) else [image]
