"""Tiny random backbones built in memory, real sample data found beside the repository, nothing downloaded."""

from __future__ import annotations

import hub_kernels  # noqa: F401  (the test processes too look up no Hub kernel: see hub_kernels.py)

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import modeling_fusar  # noqa: F401  (registers the Auto classes)
from modeling_fusar import FusarForConditionalGeneration
from modeling_fusar.tiny import tiny_llava, tiny_qwen2_5_vl, train_tokenizer
from processing import FusarProcessor
from hub_fixture import local_hub  # noqa: F401  (a fixture for every test module)

# The console scripts beside this interpreter come first, as in the activated environment the README's shell commands
# assume (`.venv/bin/python -m pytest` without activating it would otherwise run none, or other ones).
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

SHARED_DATA = Path(os.environ.get("FUSAR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BACKBONES = {"qwen2_5_vl": tiny_qwen2_5_vl, "llava": tiny_llava}
PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many ships are there?"}]}]


def shared_data(*parts) -> Path:
    """A file of ../shared/data, or a skip saying why it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample data not found at {path} (set FUSAR_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def tokenizers():
    return {family: train_tokenizer(family=family) for family in BACKBONES}


def build(tokenizers, family: str, seed: int = 0, modulate: bool = False):
    """(FUSAR-GPT around a random tiny `family` backbone, its FusarProcessor). With `modulate`, the anchor MLP's
    last layer is randomised so that the anchors actually change the tokens (it starts at zero)."""
    torch.manual_seed(seed)
    base, base_processor = BACKBONES[family](tokenizers[family])
    model = FusarForConditionalGeneration.from_base(base).eval()
    if modulate:
        torch.nn.init.normal_(model.anchor_module.film[-1].weight, std=0.3)
        torch.nn.init.normal_(model.anchor_module.film[-1].bias, std=0.3)
    return model, FusarProcessor.from_base(base_processor)


def random_image(seed: int, height: int = 112, width: int = 112) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def random_anchors(seed: int, count: int, years: int = 1, dim: int = 64):
    generator = torch.Generator().manual_seed(seed)
    values = torch.nn.functional.normalize(torch.randn(count, years, dim, generator=generator), dim=-1)
    return {"values": values.numpy(), "positions": torch.rand(count, 2, generator=generator).numpy()}


def model_inputs(processor, images, anchors=None, prompt=PROMPT, **kwargs):
    text = processor.apply_chat_template(prompt, add_generation_prompt=True)
    return processor(images=images, text=[text] * len(images), anchors=anchors, padding=True, return_tensors="pt",
                     **kwargs)
