"""Checkpoints: save/load through the Auto classes, and trust_remote_code loading where the package is absent."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import BACKBONES, PROMPT, build, model_inputs, random_anchors, random_image
from modeling_fusar import FusarForConditionalGeneration

pytestmark = pytest.mark.parametrize("family", list(BACKBONES))


def test_save_and_load_through_the_auto_classes(tokenizers, family, tmp_path):
    model, processor = build(tokenizers, family, modulate=True)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "FusarForConditionalGeneration"
    assert type(loaded_processor).__name__ == "FusarProcessor"
    assert loaded.config.anchor_hidden_size == model.config.anchor_hidden_size
    inputs = model_inputs(processor, [random_image(0)], anchors=[random_anchors(0, 6)])
    again = model_inputs(loaded_processor, [random_image(0)], anchors=[random_anchors(0, 6)])
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**again).logits, model(**inputs).logits, atol=0, rtol=0)


REMOTE_LOAD = textwrap.dedent(
    """
    import importlib.abc, sys
    import torch

    class NoPackage(importlib.abc.MetaPathFinder):
        # The checkpoint's own files must be enough: importing the installed package is an error here.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_fusar", "processing"):
                raise ImportError(f"{name} must not be imported when loading with trust_remote_code")

    sys.meta_path.insert(0, NoPackage())
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    checkpoint, inputs_file, logits_file = sys.argv[1:]
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    inputs = torch.load(inputs_file, weights_only=False)
    image, text, anchors = inputs.pop("image"), inputs.pop("text"), inputs.pop("anchors")
    again = processor(images=[Image.fromarray(image)], text=[text], anchors=[anchors], return_tensors="pt")
    assert all(torch.equal(again[k], inputs[k]) for k in inputs), "the remote processor built other inputs"
    with torch.no_grad():
        torch.save(model(**inputs).logits, logits_file)
    print(type(model).__module__)
    """
)


def test_trust_remote_code_loads_in_a_process_without_the_package(tokenizers, family, tmp_path):
    model, processor = build(tokenizers, family, modulate=True)
    model.save_pretrained(tmp_path / "checkpoint")
    processor.save_pretrained(tmp_path / "checkpoint")
    image, anchors = random_image(0), random_anchors(0, 6)
    inputs = dict(model_inputs(processor, [image], anchors=[anchors]))
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True)
    torch.save({**inputs, "image": np.asarray(image), "text": text, "anchors": anchors}, tmp_path / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(REMOTE_LOAD)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "checkpoint"), str(tmp_path / "inputs.pt"), str(tmp_path / "logits.pt")],
        capture_output=True, text=True, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout  # the copied files, not the installed package
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=0, rtol=0)
    assert "processing_fusar.py" in {p.name for p in (tmp_path / "checkpoint").iterdir()}


def test_from_base_takes_a_model_a_config_or_a_folder(tokenizers, family, tmp_path):
    model, _ = build(tokenizers, family)
    model.vlm.save_pretrained(tmp_path / "base")
    from_folder = FusarForConditionalGeneration.from_base(tmp_path / "base", anchor_dim=128, dtype=torch.bfloat16)
    assert from_folder.config.anchor_dim == 128 and from_folder.dtype == torch.bfloat16
    assert from_folder.anchor_module.film[0].weight.dtype == torch.bfloat16
    loaded = from_folder.vlm.state_dict()
    assert all(torch.equal(loaded[k], v.to(torch.bfloat16)) for k, v in model.vlm.state_dict().items())
    from_config = FusarForConditionalGeneration.from_base(model.vlm.config, anchor_sigma=3.0)
    assert from_config.config.anchor_sigma == 3.0 and from_config.config.base_config.model_type == family
    with pytest.raises(TypeError, match="unknown FUSAR-GPT options"):
        FusarForConditionalGeneration.from_base(model.vlm, anchor_sigmaa=3.0)
