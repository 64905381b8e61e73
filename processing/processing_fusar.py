"""FusarProcessor: the base model's processor, plus SAR normalisation of the images and the anchor tensors."""

from __future__ import annotations

import inspect
import os

import numpy as np
import transformers
from PIL import Image
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .anchors import as_anchor_set, collate_anchor_sets
from .base import image_only, load_base_processor
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
    def from_base(cls, base_processor: ProcessorMixin | str | os.PathLike, **options) -> "FusarProcessor":
        """Wrap a base model's processor, or load it first from a folder or Hub id in any layout (a Hub snapshot of
        Qwen2.5-VL included; see `processing.base.load_base_processor`); `options` are `anchor_dim`,
        `anchor_grid_size` and `image_size`."""
        if isinstance(base_processor, (str, os.PathLike)):
            base_processor = load_base_processor(base_processor)
        attributes = set(base_processor.get_attributes()) | {"self", "chat_template", "kwargs", "args"}
        own = inspect.signature(type(base_processor).__init__).parameters
        kwargs = {name: getattr(base_processor, name) for name in own if name not in attributes and hasattr(base_processor, name)}
        return cls(base_processor.image_processor, base_processor.tokenizer, chat_template=base_processor.chat_template,
                   base_processor_class=type(base_processor).__name__, base_processor_kwargs=kwargs, **options)

    def __call__(self, images=None, text=None, anchors=None, acquisition_years=None, sar_options=None,
                 **kwargs) -> BatchFeature:
        """Tokenise `text` and preprocess `images` with the base processor.

        images: any SAR input `processing.sar.load_sar_image` reads (`sar_options` are its keyword arguments:
            unit, bands, polarizations, nodata), or nested lists of them as the base processor takes.
        anchors: one entry (or None) per image, anything `processing.anchors.as_anchor_set` reads; adds the anchor
            tensors. `acquisition_years` (one per image) turn the anchors' years into `anchor_year_offsets`.
        """
        crops = []  # per image in order: (top, left, size, image size) of the central square, or None
        if images is not None:
            images = _map_images(images, lambda image: self._model_image(image, sar_options or {}, crops))
        inputs = self.base_processor(images=images, text=text, **kwargs)
        if anchors is not None:
            anchors = list(anchors) if isinstance(anchors, (list, tuple)) else [anchors]
            if len(anchors) != len(crops):
                raise ValueError(f"got anchors for {len(anchors)} images but {len(crops)} images; give one anchor "
                                 "entry (or None) per image")
            sets = [as_anchor_set(a, anchor_dim=self.anchor_dim, grid_size=self.anchor_grid_size, where=f"anchors[{i}]")
                    for i, a in enumerate(anchors)]
            sets = [s if crop is None else s.cropped(*crop) for s, crop in zip(sets, crops)]
            inputs.update(collate_anchor_sets(sets, acquisition_years))
        return inputs

    def model_image(self, image, **sar_options) -> Image.Image:
        """The 8-bit RGB image the model sees for any SAR input, at the processor's `image_size` if it has one."""
        image = load_sar_image(image, **sar_options)
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return image

    def _model_image(self, image, sar_options: dict, crops: list) -> Image.Image:
        """`model_image`, cut to its central square first when the base processor would crop that anyway (CLIP-style
        resize-then-centre-crop): doing it here tells the anchors where the image went."""
        image = self.model_image(image, **sar_options)
        if not getattr(self.image_processor, "do_center_crop", False) or image.width == image.height:
            crops.append(None)
            return image
        side = min(image.size)
        top, left = (image.height - side) // 2, (image.width - side) // 2
        crops.append((top, left, (side, side), (image.height, image.width)))
        return image.crop((left, top, left + side, top + side))

    def post_process_image_text_to_text(self, *args, **kwargs):
        return self.base_processor.post_process_image_text_to_text(*args, **kwargs)

    @property
    def model_input_names(self):
        return self.base_processor.model_input_names + ANCHOR_INPUT_NAMES


def _map_images(images, function):
    """`function` over one image or (nested) lists of them, keeping the nesting the base processor reads."""
    if isinstance(images, (list, tuple)):
        return [_map_images(image, function) for image in images]
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:  # a batch of quicklooks
        return [function(image) for image in images]
    return function(images)
