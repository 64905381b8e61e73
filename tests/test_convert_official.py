"""fusar-convert-official on the authors' artefacts as their code writes them, driven as a console script.

Their release: a TLM folder (`vec64_film.pt` = `{"film_mlp": state_dict}`, `tlm_config.json` with format
`tlm_original_train_patch_resize_v1`), or a legacy TLM folder without the config; a PEFT LoRA adapter whose keys are
in the pre-4.52 Qwen2.5-VL layout and whose stage-1 version also holds LoRA on the vision tower.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import PROMPT, build
from modeling_fusar.visual_grids import visual_grids
from test_anchor_modulation import reference_tlm

CONVERTER = str(Path(sys.executable).with_name("fusar-convert-official"))
# sigma 3, not FusarConfig's default 2: a converter that ignored it would fail the logits comparison.
TLM_CONFIG = {"format": "tlm_original_train_patch_resize_v1", "sigma": 3.0, "hidden_mult": 4, "image_size": 112,
              "vec_dim": 64}


def legacy_layout(key: str) -> str:
    """A PEFT key as written with transformers < 4.52 (`model.layers`, `visual`)."""
    return key.replace("model.language_model.layers", "model.layers").replace("base_model.model.model.visual.",
                                                                                 "base_model.model.visual.")


@pytest.fixture
def release(tokenizers, tmp_path):
    """A tiny stand-in for the authors' release: base folder, adapter (today's layout, for the reference, and theirs),
    TLM folder, an image file and an anchor file."""
    model, processor = build(tokenizers, "qwen2_5_vl")
    base = model.vlm
    base.save_pretrained(tmp_path / "base")
    processor.base_processor.save_pretrained(tmp_path / "base")
    # LoRA on the language model's attention and on the vision tower's (their legacy stage-1 adapters hold both).
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "qkv"],
                                           init_lora_weights=False))
    assert any(".visual." in name for name, _ in lora.named_parameters() if "lora_" in name)
    lora.save_pretrained(tmp_path / "adapter-today")
    theirs = tmp_path / "adapter"
    theirs.mkdir()
    weights = load_file(tmp_path / "adapter-today" / "adapter_model.safetensors")
    save_file({legacy_layout(k): v for k, v in weights.items()}, theirs / "adapter_model.safetensors")
    config = json.loads((tmp_path / "adapter-today" / "adapter_config.json").read_text())
    # Their target_modules name the old layout; the converter must go by the weights.
    config["target_modules"] = r"^(model\.layers\.\d+\.self_attn\.(q_proj|v_proj)|visual\.blocks\.\d+\.attn\.qkv)$"
    (theirs / "adapter_config.json").write_text(json.dumps(config))
    lora.unload()

    hidden = base.config.text_config.hidden_size
    film = nn.Sequential(nn.Linear(64, max(128, 4 * hidden)), nn.SiLU(), nn.Linear(max(128, 4 * hidden), 2 * hidden))
    (tmp_path / "tlm").mkdir()
    torch.save({"film_mlp": film.state_dict()}, tmp_path / "tlm" / "vec64_film.pt")
    (tmp_path / "tlm" / "tlm_config.json").write_text(json.dumps(TLM_CONFIG))

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 150), dtype=np.uint8)).save(tmp_path / "chip.png")  # not square
    features = rng.normal(size=(12, 64)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    np.savez(tmp_path / "chip_aef.npz", features=features, positions=rng.random((12, 2)).astype(np.float32))
    return tmp_path, film


def convert(*options):
    return subprocess.run([CONVERTER, *map(str, options)], capture_output=True, text=True, timeout=300)


def their_logits(folder: Path, film: nn.Module, image_size: int, sigma: float) -> torch.Tensor:
    """Their computation, written independently of the converter: the image resized to the square `image_size`
    (bicubic), Qwen's processor, the base with the LoRA merged, TLM on the merger's output tokens."""
    from processing.base import load_base_processor

    qwen = load_base_processor(folder / "base")
    image = Image.open(folder / "chip.png").convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
    text = qwen.apply_chat_template(PROMPT, add_generation_prompt=True)
    inputs = qwen(images=[image], text=[text], return_tensors="pt")
    npz = np.load(folder / "chip_aef.npz")
    vectors, positions = torch.from_numpy(npz["features"]), torch.from_numpy(npz["positions"])
    model = AutoModelForImageTextToText.from_pretrained(folder / "base")
    model = PeftModel.from_pretrained(model, folder / "adapter-today").merge_and_unload().eval()
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
        grid = visual_grids(model.config, inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])[0]
        features.pooler_output = [reference_tlm(features.pooler_output[0], positions, vectors, torch.ones(len(vectors)),
                                                film, grid.patch_rows, grid.patch_cols, grid.merge, sigma=sigma)]
        plain = {k: v for k, v in inputs.items() if k != "pixel_values"}
        return model(**plain, mm_encoder_outputs={"image": features}).logits


def our_logits(folder: Path, checkpoint: Path) -> torch.Tensor:
    """The user's path: the converted checkpoint through the Auto classes, from the image file and anchor file."""
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True)
    inputs = processor(images=[str(folder / "chip.png")], text=[text], anchors=[str(folder / "chip_aef.npz")],
                       return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def test_their_release_converts_to_a_checkpoint_that_computes_what_their_code_computes(release):
    folder, film = release
    result = convert("--base", folder / "base", "--tlm", folder / "tlm", "--adapter", folder / "adapter",
                     "--output", folder / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert AutoProcessor.from_pretrained(folder / "out").image_size == 112
    torch.testing.assert_close(our_logits(folder, folder / "out"), their_logits(folder, film, 112, 3.0),
                               atol=1e-5, rtol=1e-5)


def test_a_legacy_tlm_folder_needs_its_training_sigma(release):
    folder, film = release
    (folder / "tlm" / "tlm_config.json").unlink()
    refused = convert("--base", folder / "base", "--tlm", folder / "tlm", "--output", folder / "out")
    assert refused.returncode == 2 and "--legacy-sigma" in refused.stderr and "Traceback" not in refused.stderr
    assert not (folder / "out").exists()
    result = convert("--base", folder / "base", "--tlm", folder / "tlm", "--adapter", folder / "adapter",
                     "--legacy-sigma", "2.5", "--output", folder / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((folder / "out" / "config.json").read_text())
    assert config["anchor_sigma"] == 2.5 and AutoProcessor.from_pretrained(folder / "out").image_size == 504
    torch.testing.assert_close(our_logits(folder, folder / "out"), their_logits(folder, film, 504, 2.5),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"format": "vec64_film"}, "unknown format 'vec64_film'"),
    ({"vec_dim": 128}, "vec_dim is 128, expected 64"),
    ({"image_size": 500}, "image_size is 500, expected a positive multiple of 28"),
    ({"sigma": -1}, "sigma is -1, expected a positive number"),
    ({"sigma": True}, "sigma is True, expected a positive number"),
])
def test_tlm_configs_their_loader_refuses_are_refused(release, change, message):
    folder, _ = release
    (folder / "tlm" / "tlm_config.json").write_text(json.dumps({**TLM_CONFIG, **change}))
    result = convert("--base", folder / "base", "--tlm", folder / "tlm", "--output", folder / "out")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (folder / "out").exists()


def test_an_adapter_for_another_model_is_refused(release):
    folder, _ = release
    weights = load_file(folder / "adapter" / "adapter_model.safetensors")
    save_file({k.replace("self_attn", "attention"): v for k, v in weights.items()},
              folder / "adapter" / "adapter_model.safetensors")
    result = convert("--base", folder / "base", "--tlm", folder / "tlm", "--adapter", folder / "adapter",
                     "--output", folder / "out")
    assert result.returncode == 2 and "the adapter does not fit the base model" in result.stderr
    assert not (folder / "out").exists()


@pytest.mark.parametrize("content, message", [
    ({"film_mlp": nn.Sequential(nn.Linear(64, 8), nn.SiLU(), nn.Linear(8, 4)).state_dict()}, "film_mlp has shapes"),
    ({"film_mlp": [torch.zeros(2)]}, "expected a torch file holding {'film_mlp': state_dict}"),
    (torch.zeros(3), "expected a torch file holding {'film_mlp': state_dict}"),
])
def test_film_weights_that_do_not_fit_the_base_are_refused(release, content, message):
    folder, _ = release
    torch.save(content, folder / "tlm" / "vec64_film.pt")
    result = convert("--base", folder / "base", "--tlm", folder / "tlm", "--output", folder / "out")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (folder / "out").exists()
