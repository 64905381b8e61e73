"""FUSAR-GPT: a base image-text-to-text model whose visual tokens are modulated by geographic anchors.

The base model is kept whole (`self.vlm`); FUSAR-GPT only changes what its visual module emits. Both
`forward` and `generate` encode the images once with the base model's `get_image_features`, modulate
the features with the anchors, and hand them back to the base model as `mm_encoder_outputs`: the
library's own protocol for pre-encoded images, so no hooks and no hidden state.
"""

import copy
import inspect
import os
import re
from typing import Unpack

import torch
from torch import nn
from transformers import AutoModelForImageTextToText, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import TransformersKwargs
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .anchor_modulation import AnchorModulation, check_anchor_inputs
from .configuration_fusar import FusarConfig
from .vision_attention import use_vision_attention
from .vision_cache import VisionFeatureCache, join_images, split_images
from .visual_grids import visual_grids

ANCHOR_INPUTS = ("anchor_values", "anchor_positions", "anchor_mask", "anchor_year_offsets")


class FusarPreTrainedModel(PreTrainedModel):
    config: FusarConfig
    config_class = FusarConfig
    # The attribute holding the base model: the loader bridges base and FUSAR-GPT checkpoints through it.
    base_model_prefix = "vlm"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class FusarForConditionalGeneration(FusarPreTrainedModel, GenerationMixin):
    def __init__(self, config: FusarConfig, vlm: PreTrainedModel | None = None):
        super().__init__(config)
        self.vlm = vlm if vlm is not None else AutoModelForImageTextToText.from_config(config.base_config)
        config.base_config = self.vlm.config  # one object, so the two can never disagree
        self.anchor_module = AnchorModulation(
            anchor_dim=config.anchor_dim,
            hidden_size=config.hidden_size,
            mlp_hidden_size=config.anchor_hidden_size,
            sigma=config.anchor_sigma,
            max_year_offset=config.anchor_max_year_offset,
        )
        self.post_init()
        self.generation_config = self.vlm.generation_config
        use_vision_attention(self.vlm, config.vision_attn_implementation == "varlen")  # see vision_attention.py
        self.vision_feature_cache: VisionFeatureCache | None = None  # training only: enable_vision_feature_cache()

    def _init_weights(self, module):
        super()._init_weights(module)
        # A fresh FUSAR-GPT is exactly its base model: gamma = beta = 0 until training moves them. (Matched on the
        # layer itself: transformers skips modules without direct parameters when initialising custom code.)
        if module is self.anchor_module.film[-1]:
            init.zeros_(module.weight)
            init.zeros_(module.bias)

    @classmethod
    def from_base(cls, base, **anchor_options) -> "FusarForConditionalGeneration":
        """FUSAR-GPT around `base`: a model instance, its config, or a local path / Hub id of one.

        `anchor_options` are `FusarConfig` fields (anchor_dim, anchor_sigma, anchor_hidden_size, ...); a path
        or id may also take `from_pretrained` options such as `dtype`. The result computes exactly what `base`
        computes until its anchor module is trained.
        """
        own_fields = FusarConfig.__dataclass_fields__.keys() - PreTrainedConfig.__dataclass_fields__.keys()
        config_fields = {k: anchor_options.pop(k) for k in list(anchor_options) if k in own_fields}
        if isinstance(base, (str, os.PathLike)):
            base = AutoModelForImageTextToText.from_pretrained(base, **anchor_options)
        elif anchor_options:
            raise TypeError(f"unknown FUSAR-GPT options {sorted(anchor_options)}; FusarConfig fields are expected")
        if isinstance(base, PreTrainedConfig):
            base = AutoModelForImageTextToText.from_config(base)
        if isinstance(base, cls) or isinstance(getattr(base, "config", None), FusarConfig):
            raise ValueError("from_base was given a FUSAR-GPT model, which has its anchor module already: load a "
                             "checkpoint with AutoModelForImageTextToText.from_pretrained, and give from_base the base")
        # Built on a copy: building a config resets its sub-configs' attention implementation, which must not reach
        # `base`. (`__init__` then shares base.config itself.)
        model = cls(FusarConfig(base_config=copy.deepcopy(base.config), **config_fields), vlm=base)
        model.anchor_module.to(device=base.device, dtype=base.dtype)
        return model

    def save_pretrained(self, *args, save_original_format: bool = False, **kwargs):
        # transformers writes a base model's weights under its legacy key names by default (Qwen2.5-VL: `model.layers`
        # for `model.language_model.layers`); loaders that read the file directly, like Trainer's
        # resume_from_checkpoint, then find nothing. FUSAR-GPT checkpoints have no legacy layout: keep today's names.
        return super().save_pretrained(*args, save_original_format=save_original_format, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.vlm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.vlm.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module):
        self.vlm.set_output_embeddings(value)

    @property
    def model(self) -> nn.Module:
        """The base model's inner model (Qwen2.5-VL's `Qwen2_5_VLModel`), where transformers' code and tests look for
        `get_rope_index` and other helpers of a `...ForConditionalGeneration`. Not a submodule of its own: the weights
        stay under `vlm.`."""
        return self.vlm.model

    @property
    def lora_target_modules(self) -> str:
        """A PEFT `target_modules` regex for every linear layer of the language model, and nothing else."""
        language_model = self.vlm.get_decoder()
        prefix = next(name for name, module in self.named_modules() if module is language_model)
        leaves = sorted({name.rsplit(".", 1)[-1] for name, m in language_model.named_modules() if isinstance(m, nn.Linear)})
        return rf"{re.escape(prefix)}\..*\.({'|'.join(leaves)})"

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        anchor_values: torch.Tensor | None = None,
        anchor_positions: torch.Tensor | None = None,
        anchor_mask: torch.Tensor | None = None,
        anchor_year_offsets: torch.Tensor | None = None,
        **image_inputs,
    ):
        """The base model's image features (one `[tokens, C]` tensor per image in `.pooler_output`), modulated by
        the anchors. Images without anchors, or whose anchors are all masked, come out unchanged."""
        grids = visual_grids(self.config.base_config, pixel_values, **image_inputs)  # also checks the inputs
        outputs = self._encoder_features(pixel_values, image_inputs)
        features = list(outputs.pooler_output)
        for image, (feature, grid) in enumerate(zip(features, grids, strict=True)):
            if feature.shape[0] != grid.num_tokens:
                raise ValueError(f"image {image}: the visual module gave {feature.shape[0]} tokens, but its grid "
                                 f"{grid} has {grid.num_tokens}")
        if anchor_values is not None:
            values, positions, mask = check_anchor_inputs(anchor_values, anchor_positions, anchor_mask,
                                                          self.config.anchor_dim, len(features), anchor_year_offsets)
            if self.training and self.config.anchor_dropout > 0:  # whole images lose their anchors (FusarConfig)
                kept = torch.rand(len(features), device=mask.device) >= self.config.anchor_dropout
                mask = mask & kept[:, None, None]
            outputs.pooler_output = self.anchor_module(features, grids, values, positions, mask, anchor_year_offsets)
        elif anchor_positions is not None or anchor_mask is not None:
            raise ValueError("anchor_positions / anchor_mask were given without anchor_values")
        return outputs

    def _encoder_features(self, pixel_values: torch.Tensor, image_inputs: dict):
        """The base model's image features; from `vision_feature_cache` (see vision_cache.py) when one is set and
        the image encoder does not train."""
        cache = self.vision_feature_cache
        if cache is None or not cache.active:
            return self.vlm.get_image_features(pixel_values, return_dict=True, **image_inputs)
        images = split_images(pixel_values, image_inputs)
        keys = [cache.key(pixels, *(v for v in inputs.values() if isinstance(v, torch.Tensor)))
                for pixels, inputs in images]
        features = [cache.get(key, pixel_values.device) for key in keys]
        missing = [i for i, feature in enumerate(features) if feature is None]
        if missing:
            pixels, inputs = join_images([images[i] for i in missing])
            fresh = self.vlm.get_image_features(pixels, return_dict=True, **inputs).pooler_output
            for i, feature in zip(missing, fresh, strict=True):
                features[i] = feature
                cache.put(keys[i], feature)
        return BaseModelOutputWithPooling(pooler_output=features)

    def enable_vision_feature_cache(self, **budgets) -> VisionFeatureCache:
        """Cache each image's encoder features while the image encoder (all but the language model and its head)
        does not train; `budgets`: `memory_bytes`, `disk_bytes`, `folder`. `disable_vision_feature_cache()` ends it."""
        language = {id(p) for module in (self.vlm.get_decoder(), self.vlm.get_output_embeddings())
                    for p in module.parameters()}
        encoder = [p for p in self.vlm.parameters() if id(p) not in language]
        self.disable_vision_feature_cache()
        self.vision_feature_cache = VisionFeatureCache(encoder, **budgets)
        return self.vision_feature_cache

    def disable_vision_feature_cache(self) -> None:
        if self.vision_feature_cache is not None:
            self.vision_feature_cache.close()
        self.vision_feature_cache = None

    def _encode_images(self, input_ids, pixel_values, anchors: dict, model_inputs: dict) -> dict:
        """`mm_encoder_outputs` for the base model: the images encoded once, with their anchors applied."""
        image_inputs = {k: model_inputs[k] for k in self._image_input_names if model_inputs.get(k) is not None}
        if input_ids is not None:  # checked before anything is encoded (and before the anchors are matched to images)
            image_tokens = int((input_ids == self.config.base_config.image_token_id).sum())
            feature_tokens = sum(grid.num_tokens for grid in visual_grids(self.config.base_config, pixel_values,
                                                                          **image_inputs))
            if image_tokens != feature_tokens:
                # transformers' own words first (its tests and callers match them), then what to do
                raise ValueError(f"Image features and image tokens do not match, tokens: {image_tokens}, features: "
                                 f"{feature_tokens}: input_ids hold {image_tokens} image tokens but the images give "
                                 f"{feature_tokens} visual features; build the inputs with the model's processor")
        return {"image": self.get_image_features(pixel_values, **anchors, **image_inputs, return_dict=True)}

    @property
    def _image_input_names(self) -> list[str]:
        """Inputs besides `pixel_values` that the base model's image encoder reads (e.g. `image_grid_thw`)."""
        parameters = inspect.signature(self.vlm.get_image_features).parameters
        return [name for name in parameters if name not in ("pixel_values", "kwargs")]

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        anchor_values: torch.Tensor | None = None,
        anchor_positions: torch.Tensor | None = None,
        anchor_mask: torch.Tensor | None = None,
        anchor_year_offsets: torch.Tensor | None = None,
        mm_encoder_outputs: dict | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        r"""
        The base model's inputs (named here so that code reading the signature finds them; a backbone's other inputs,
        e.g. LLaVA's `image_sizes`, pass through `kwargs`), plus:

        anchor_values (`torch.FloatTensor` of shape `(num_images, anchors, years, anchor_dim)`, *optional*):
            Embedding vectors (AlphaEarth: 64-d, unit length) of each image's anchors, per year.
        anchor_positions (`torch.FloatTensor` of shape `(num_images, anchors, 2)`, *optional*):
            (row, col) of each anchor as a fraction of the image: 0 is the first row/column, 1 the last.
        anchor_mask (`torch.BoolTensor` of shape `(num_images, anchors, years)`, *optional*):
            Which (anchor, year) entries exist; padding and nodata are False. Defaults to all True.
        anchor_year_offsets (`torch.LongTensor` of shape `(num_images, years)`, *optional*):
            Each year's offset from the image's acquisition year. Defaults to 0.
        """
        # Passed on only when given: another backbone's forward may not take `image_grid_thw`, and a caller's legacy
        # `past_key_values` (in kwargs) must reach the base model's own renaming to `cache` unopposed.
        optional = {"cache": cache, "use_cache": use_cache, "image_grid_thw": image_grid_thw}
        kwargs.update({name: value for name, value in optional.items() if value is not None})
        if pixel_values is not None:
            if mm_encoder_outputs is not None:
                raise ValueError("Pass either pixel_values or mm_encoder_outputs, not both")
            anchors = dict(anchor_values=anchor_values, anchor_positions=anchor_positions, anchor_mask=anchor_mask,
                           anchor_year_offsets=anchor_year_offsets)
            mm_encoder_outputs = self._encode_images(input_ids, pixel_values, anchors, kwargs)
        elif anchor_values is not None and not _continues_cache(kwargs):
            raise ValueError("anchor_values need pixel_values: anchors modulate an image's tokens as it is encoded "
                             "(pre-encoded mm_encoder_outputs are used as given)")
        return self.vlm(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            labels=labels, logits_to_keep=logits_to_keep, mm_encoder_outputs=mm_encoder_outputs, return_dict=True,
            **kwargs,
        )

    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")  # the base's own rename, warned at the caller's line
    @torch.no_grad()
    def generate(self, inputs=None, generation_config=None, **kwargs):
        """The base model's `generate`, with the images encoded once per call and modulated by the anchors."""
        anchors = {name: kwargs.pop(name, None) for name in ANCHOR_INPUTS}
        pixel_values = kwargs.pop("pixel_values", None)
        if pixel_values is not None:
            input_ids = kwargs.get("input_ids", inputs)
            kwargs["mm_encoder_outputs"] = self._encode_images(input_ids, pixel_values, anchors, kwargs)
        elif anchors["anchor_values"] is not None and not _continues_cache(kwargs):
            raise ValueError("anchor_values need pixel_values: anchors modulate an image's tokens as it is encoded")
        # The wrapper's generation config (the one checkpoints and users set) with this call's settings applied.
        generation_config = copy.deepcopy(generation_config or self.generation_config)
        model_kwargs = generation_config.update(**kwargs)
        return self.vlm.generate(inputs, generation_config=generation_config, **model_kwargs)


def _continues_cache(kwargs: dict) -> bool:
    """Whether a call continues from a filled KV cache: its images are in the cache already, encoded with their
    anchors, so anchors given again (as a multi-turn caller or transformers' generation tests do) have nothing to
    modulate and are not needed."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return cache is not None and cache.get_seq_length() > 0
