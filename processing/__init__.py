"""SAR images and geographic anchors in the form FUSAR-GPT reads them.

Names are imported on first use: the data tools (`processing.sar`, `processing.anchors`) need neither torch nor
transformers, which take seconds to import."""

import importlib

_WHERE = {"AnchorSet": "anchors", "as_anchor_set": "anchors", "collate_anchor_sets": "anchors", "sample_field": "anchors",
          "FusarProcessor": "processing_fusar", "load_sar_image": "sar", "sar_to_uint8": "sar"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'processing' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
