"""A real base model as the Hub serves it: a replica of Qwen/Qwen2.5-VL-7B-Instruct's repository (its file names and
keys, tiny weights; `hub_layouts.py`) on the local Hub server, loaded the ways a user loads it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import snapshot_download

from conftest import PROMPT, random_image
from hub_layouts import QWEN_REPO as REPO, published  # noqa: F401  (a fixture)
from modeling_fusar import FusarForConditionalGeneration
from processing import FusarProcessor


def test_a_hub_snapshot_loads_into_fusar_gpt_by_id_and_by_folder(published):
    base, folder = published
    for source in (REPO, snapshot_download(REPO), str(folder)):
        processor = FusarProcessor.from_base(source)
        model = FusarForConditionalGeneration.from_base(source).eval()
        text = processor.apply_chat_template(PROMPT, add_generation_prompt=True)
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.")  # the repository's own template
        inputs = processor(images=[random_image(0)], text=[text], return_tensors="pt")
        with torch.no_grad():  # a fresh FUSAR-GPT computes exactly what the published base computes
            torch.testing.assert_close(model(**inputs).logits, base(**inputs).logits, rtol=0, atol=0)


def test_from_base_refuses_a_fusar_gpt_checkpoint(published, tmp_path):
    _, folder = published
    FusarForConditionalGeneration.from_base(str(folder)).save_pretrained(tmp_path / "fusar")
    FusarProcessor.from_base(str(folder)).save_pretrained(tmp_path / "fusar")
    with pytest.raises(ValueError, match="FUSAR-GPT model, which has its anchor module already"):
        FusarForConditionalGeneration.from_base(str(tmp_path / "fusar"))
    with pytest.raises(ValueError, match="is a FUSAR-GPT checkpoint already"):
        FusarProcessor.from_base(str(tmp_path / "fusar"))


def test_fusar_train_takes_the_hub_id(published, tmp_path):
    """The user's door: `fusar-train --model Qwen/Qwen2.5-VL-7B-Instruct` (here the local Hub's replica)."""
    from dataset_scripts.simulate import simulate
    from test_training import FAST

    data = simulate(tmp_path / "sim", scenes=8)
    command = [Path(sys.executable).with_name("fusar-train"), "--model", REPO, "--dataset_name", data,
               "--output_dir", tmp_path / "run", *FAST, "--max_train_examples", "4"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    card = (tmp_path / "run" / "README.md").read_text()
    assert f"base_model: {REPO}" in card
    assert FusarProcessor.from_pretrained(tmp_path / "run").base_processor_class == "Qwen2_5_VLProcessor"
