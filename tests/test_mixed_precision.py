"""Mixed precision: an fp32 model under bf16 / fp16 autocast (what `--bf16 true` does) and a model loaded in bf16."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from conftest import BACKBONES, build, model_inputs, random_anchors, random_image
from dataset_scripts.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]


def batch(processor):
    """Two images, one with two years of anchors and one without: the temporal fusion and the masking both run."""
    inputs = model_inputs(processor, [random_image(0), random_image(1)], anchors=[random_anchors(0, 5, years=2), None])
    inputs["anchor_year_offsets"] = torch.tensor([[0, -1], [0, 0]])
    return inputs


@pytest.mark.parametrize("family", list(BACKBONES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_an_fp32_model_under_autocast_trains_and_generates(tokenizers, family, dtype):
    model, processor = build(tokenizers, family, modulate=True)
    inputs = batch(processor)
    with torch.no_grad():
        reference = model(**inputs).logits
    model.train()
    with torch.autocast("cpu", dtype=dtype):
        output = model(**inputs, labels=inputs["input_ids"])
    output.loss.backward()
    grads = [p.grad for p in model.anchor_module.film.parameters()]
    assert torch.isfinite(output.loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    # The half-precision result is the fp32 one to half precision, not something else.
    torch.testing.assert_close(output.logits.float(), reference, atol=0.1, rtol=0.05)
    model.eval()
    with torch.autocast("cpu", dtype=dtype):
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family", list(BACKBONES))
def test_a_model_loaded_in_bf16_trains_and_generates(tokenizers, family, tmp_path):
    model, processor = build(tokenizers, family, modulate=True)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    inputs = batch(processor)
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    output = loaded.train()(**inputs, labels=inputs["input_ids"])
    output.loss.backward()
    assert torch.isfinite(output.loss) and torch.isfinite(loaded.anchor_module.film[0].weight.grad).all()
    generated = loaded.eval().generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("options", [["--bf16", "true", "--stage", "1"],
                                     ["--stage", "2", "--stage2_train_anchor_module", "true"]], ids=["bf16", "no-config"])
def test_fusar_train_without_a_config_runs_on_a_cpu(options, tmp_path):
    """The user's door, without --config: TRL's defaults (bf16) would stop on a machine without a GPU; fusar-train's
    defaults run on it, and `--bf16 true` is CPU autocast."""
    data = simulate(tmp_path / "data", scenes=8)
    command = [Path(sys.executable).with_name("fusar-train"), "--dataset_name", data, "--output_dir", tmp_path / "run",
               *options, "--max_steps", "2", "--per_device_train_batch_size", "2", "--tiny_hidden_size", "64"]
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert "deprecated" not in result.stderr
