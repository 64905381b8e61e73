# Copyright 2026 The fusar-gpt authors. Licensed under the Apache License, Version 2.0.
"""FUSAR-GPT configuration: a base image-text-to-text config plus the anchor module's fields."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class FusarConfig(PreTrainedConfig):
    r"""
    base_config (`dict` or `PreTrainedConfig`):
        The configuration of the base image-text-to-text model (Qwen2.5-VL in the paper).
    anchor_dim (`int`, defaults to 64):
        Length of one anchor vector: 64 for AlphaEarth, 128 for TESSERA.
    anchor_sigma (`float`, defaults to 2.0):
        Width of the Gaussian that spreads an anchor over the visual patch grid, in patches.
    anchor_hidden_size (`int`, *optional*):
        Width of the anchor MLP. Defaults to the authors' `max(128, 4 * C)`, C the language model's hidden size.
    anchor_max_year_offset (`int`, defaults to 10):
        Offsets between an anchor's year and the acquisition year are clipped to +-this many years before the
        temporal attention embeds them.
    anchor_dropout (`float`, defaults to 0.0):
        In training only, the probability that an image's anchors are all left out (the image then passes exactly as
        the base computes it), so that the model keeps learning from the backscatter alone and still answers images
        that come without anchors. 0 is the authors' recipe.
    vision_attn_implementation (`str`, defaults to `"varlen"`):
        The base's vision attention over its windows: `"varlen"` (one variable-length flash attention call on CUDA,
        exactly transformers' sdpa elsewhere; see `vision_attention.py`) or `"base"` (as the base model was built).
    """

    model_type = "fusar_gpt"
    sub_configs_defaults = {"base_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_5_vl")}

    base_config: dict | PreTrainedConfig | None = None
    anchor_dim: int = 64
    anchor_sigma: float = 2.0
    anchor_hidden_size: int | None = None
    anchor_max_year_offset: int = 10
    anchor_dropout: float = 0.0
    vision_attn_implementation: str = "varlen"
    # The base model ties its own embeddings (its config says whether); this wrapper has none of its own.
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.anchor_hidden_size is None:
            self.anchor_hidden_size = max(128, 4 * self.base_config.get_text_config().hidden_size)
        for name in ("anchor_dim", "anchor_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"FusarConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.vision_attn_implementation not in ("varlen", "base"):
            raise ValueError("FusarConfig.vision_attn_implementation must be 'varlen' or 'base', got "
                             f"{self.vision_attn_implementation!r}")
        if not 0 <= self.anchor_dropout < 1:
            raise ValueError(f"FusarConfig.anchor_dropout must be in [0, 1), got {self.anchor_dropout}")
        if not self.anchor_sigma > 0:
            raise ValueError(f"FusarConfig.anchor_sigma must be > 0 (grid units), got {self.anchor_sigma}")

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # A base model's own config (`FusarForConditionalGeneration.from_pretrained` on a Qwen2.5-VL folder): FUSAR-GPT
        # around that base, whose weights the loader then finds under `vlm.` (the model's base_model_prefix).
        if config_dict.get("model_type", cls.model_type) != cls.model_type:
            config_dict = {"base_config": config_dict}
        return super().from_dict(config_dict, **kwargs)

    # Where transformers looks for a composite model's parts (`get_text_config()`, the common tests, generation, PEFT,
    # TRL): the base model's own sub-configs, the same objects, so library code never needs to know the wrapper exists.
    # Set one (`config.text_config = ...`, or `from_pretrained(..., text_config={"vocab_size": 20})`) and it is set in
    # the base's config, which is what is saved.
    @property
    def text_config(self) -> PreTrainedConfig:
        return self.base_config.get_text_config()

    @text_config.setter
    def text_config(self, value: PreTrainedConfig | dict):
        text = self.base_config.get_text_config()
        name = next((key for key in self.base_config.sub_configs if getattr(self.base_config, key, None) is text),
                    "text_config")
        self._set_base_part(name, value)

    @property
    def vision_config(self) -> PreTrainedConfig | None:
        return getattr(self.base_config, "vision_config", None)

    @vision_config.setter
    def vision_config(self, value: PreTrainedConfig | dict):
        self._set_base_part("vision_config", value)

    def _set_base_part(self, name: str, value: PreTrainedConfig | dict):
        current = getattr(self.base_config, name, None)
        if isinstance(value, dict):  # as transformers' composite configs take a sub-config: its class, these fields
            if not isinstance(current, PreTrainedConfig):
                raise ValueError(f"FusarConfig.{name}: the base ({self.base_config.model_type}) has no {name} to "
                                 "build from a dict; pass a config object")
            value = type(current)(**value)
        if not isinstance(value, PreTrainedConfig):
            raise ValueError(f"FusarConfig.{name} must be a config or a dict of its fields, got {type(value).__name__}")
        setattr(self.base_config, name, value)

    @property
    def hidden_size(self) -> int:
        """Width of the visual tokens the anchors modulate: the language model's hidden size."""
        return self.text_config.hidden_size
