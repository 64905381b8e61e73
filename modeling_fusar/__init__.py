"""FUSAR-GPT for transformers. Importing this package registers `fusar_gpt` with the Auto classes."""

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from processing import FusarProcessor

from .configuration_fusar import FusarConfig
from .modeling_fusar import FusarForConditionalGeneration

AutoConfig.register(FusarConfig.model_type, FusarConfig, exist_ok=True)
AutoModelForImageTextToText.register(FusarConfig, FusarForConditionalGeneration, exist_ok=True)
AutoProcessor.register(FusarConfig, FusarProcessor, exist_ok=True)
# A saved checkpoint carries these files, so it also loads with trust_remote_code=True where this package is absent.
FusarConfig.register_for_auto_class()
FusarForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
FusarProcessor.register_for_auto_class()

__all__ = ["FusarConfig", "FusarForConditionalGeneration"]
