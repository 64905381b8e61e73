"""fusar-convert-official: the authors' artefacts (LoRA adapter, vec64_film.pt, tlm_config.json) -> a checkpoint."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import build, model_inputs, random_anchors, random_image
from modeling_fusar.convert_official import main
from modeling_fusar.visual_grids import visual_grids
from test_anchor_modulation import reference_tlm


@pytest.fixture
def released(tokenizers, tmp_path):
    """A tiny stand-in for the authors' release: base model folder, LoRA adapter, TLM folder."""
    model, processor = build(tokenizers, "qwen2_5_vl")
    base = model.vlm
    base.save_pretrained(tmp_path / "base")
    processor.base_processor.save_pretrained(tmp_path / "base")
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    hidden = base.config.text_config.hidden_size
    film = nn.Sequential(nn.Linear(64, max(128, 4 * hidden)), nn.SiLU(), nn.Linear(max(128, 4 * hidden), 2 * hidden))
    (tmp_path / "tlm").mkdir()
    torch.save({"film_mlp": film.state_dict()}, tmp_path / "tlm" / "vec64_film.pt")
    config = {"format": "vec64_film", "sigma": 2.0, "hidden_mult": 4, "image_size": 112, "vec_dim": 64}
    (tmp_path / "tlm" / "tlm_config.json").write_text(json.dumps(config))
    return tmp_path, film


def test_the_converted_checkpoint_computes_what_the_authors_code_computes(released):
    folder, film = released
    main(["--base", str(folder / "base"), "--tlm", str(folder / "tlm"), "--adapter", str(folder / "adapter"),
          "--output", str(folder / "out")])
    model = AutoModelForImageTextToText.from_pretrained(folder / "out").eval()
    processor = AutoProcessor.from_pretrained(folder / "out")
    assert processor.image_size == 112 and model.config.anchor_sigma == 2.0
    inputs = model_inputs(processor, [random_image(0, 150, 90)], anchors=[random_anchors(0, 12)])

    # Their computation: base + merged LoRA, TLM on the merger's output tokens (reference written in the tests).
    reference = AutoModelForImageTextToText.from_pretrained(folder / "base")
    from peft import PeftModel

    reference = PeftModel.from_pretrained(reference, folder / "adapter").merge_and_unload().eval()
    with torch.no_grad():
        features = reference.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
        grid = visual_grids(reference.config, inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])[0]
        features.pooler_output = [reference_tlm(
            features.pooler_output[0], inputs["anchor_positions"][0], inputs["anchor_values"][0, :, 0],
            inputs["anchor_mask"][0, :, 0].float(), film, grid.patch_rows, grid.patch_cols, grid.merge)]
        plain = {k: v for k, v in inputs.items() if k not in ("pixel_values",) and not k.startswith("anchor_")}
        expected = reference(**plain, mm_encoder_outputs={"image": features}).logits
        torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


def test_an_adapter_in_the_pre_4_52_qwen_layout_is_mapped(released):
    """The authors trained with an older transformers, whose Qwen2.5-VL keys lack `language_model`."""
    folder, _ = released
    weights = load_file(folder / "adapter" / "adapter_model.safetensors")
    old = {k.replace("model.language_model.layers", "model.layers"): v for k, v in weights.items()}
    assert old.keys() != weights.keys()
    save_file(old, folder / "adapter" / "adapter_model.safetensors")
    main(["--base", str(folder / "base"), "--tlm", str(folder / "tlm"), "--adapter", str(folder / "adapter"),
          "--output", str(folder / "old")])
    save_file(weights, folder / "adapter" / "adapter_model.safetensors")
    main(["--base", str(folder / "base"), "--tlm", str(folder / "tlm"), "--adapter", str(folder / "adapter"),
          "--output", str(folder / "new")])
    old_model = AutoModelForImageTextToText.from_pretrained(folder / "old").state_dict()
    new_model = AutoModelForImageTextToText.from_pretrained(folder / "new").state_dict()
    differ = [k for k in new_model if not torch.equal(old_model[k], new_model[k])]
    assert all(k.startswith("anchor_module.temporal.") for k in differ)  # fresh (unused with one year), not released


def test_an_adapter_for_another_model_is_refused(released):
    folder, _ = released
    weights = load_file(folder / "adapter" / "adapter_model.safetensors")
    save_file({k.replace("self_attn", "attention"): v for k, v in weights.items()}, folder / "adapter" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="the adapter does not fit the base model"):
        main(["--base", str(folder / "base"), "--tlm", str(folder / "tlm"), "--adapter", str(folder / "adapter"),
              "--output", str(folder / "out")])


def test_an_unknown_tlm_format_is_refused(released):
    folder, _ = released
    (folder / "tlm" / "tlm_config.json").write_text(json.dumps({"format": "cross_attention_v2", "sigma": 2}))
    with pytest.raises(ValueError, match="tlm_config.json: unknown format 'cross_attention_v2'"):
        main(["--base", str(folder / "base"), "--tlm", str(folder / "tlm"), "--output", str(folder / "out")])


def test_film_weights_that_do_not_fit_the_base_are_refused(released):
    folder, _ = released
    torch.save({"film_mlp": nn.Sequential(nn.Linear(64, 8), nn.SiLU(), nn.Linear(8, 4)).state_dict()},
               folder / "tlm" / "vec64_film.pt")
    with pytest.raises(ValueError, match="vec64_film.pt: film_mlp has shapes"):
        main(["--base", str(folder / "base"), "--tlm", str(folder / "tlm"), "--output", str(folder / "out")])
    assert not (folder / "out").exists()
