"""SAR images and geographic anchors in the form FUSAR-GPT reads them."""

from .anchors import AnchorSet, as_anchor_set, collate_anchor_sets, sample_field
from .processing_fusar import FusarProcessor
from .sar import load_sar_image, sar_to_uint8

__all__ = ["AnchorSet", "FusarProcessor", "as_anchor_set", "collate_anchor_sets", "load_sar_image", "sample_field",
           "sar_to_uint8"]
