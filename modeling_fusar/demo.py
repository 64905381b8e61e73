"""fusar-demo: FUSAR-GPT end to end on the CPU, with nothing downloaded.

Builds a tiny random Qwen2.5-VL-shaped FUSAR-GPT with an offline tokenizer, turns a simulated speckled
SAR scene (in dB) and an AlphaEarth-like embedding field into model inputs, generates with and without
the anchors, saves the checkpoint, loads it back through the Auto classes and a pipeline, and checks
that the answers agree. The weights are random: the answers are noise until the model is trained.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from processing import FusarProcessor

from . import FusarForConditionalGeneration
from .tiny import tiny_qwen2_5_vl, train_tokenizer

QUESTION = "What covers the centre of the scene?"


def simulated_scene(seed: int = 0, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A two-class SAR scene in dB (water left, land right, single-look speckle) and a 64-d unit-vector field
    over it, one embedding per class, like AlphaEarth's."""
    rng = np.random.default_rng(seed)
    land = np.arange(size)[None, :] >= size // 2
    mean_db = np.where(land, -8.0, -20.0)  # typical C-band VV backscatter of fields and calm water
    intensity = 10 ** (mean_db / 10) * rng.gamma(1.0, 1.0, (size, size))
    classes = rng.normal(size=(2, 64))
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    field = classes[land.astype(int)].transpose(2, 0, 1)  # [64, H, W]
    return 10 * np.log10(intensity)[None], field.astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="outputs/demo", help="where the checkpoint is written")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)

    print("1/4 building a tiny FUSAR-GPT around a random Qwen2.5-VL-shaped backbone (offline tokenizer)")
    base, base_processor = tiny_qwen2_5_vl(train_tokenizer())
    model = FusarForConditionalGeneration.from_base(base).eval()
    torch.nn.init.normal_(model.anchor_module.film[-1].weight, std=0.2)  # as if trained: anchors now matter
    processor = FusarProcessor.from_base(base_processor)

    print("2/4 SAR scene in dB -> 8-bit image; embedding field -> 8 x 8 anchors")
    scene_db, field = simulated_scene()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}], add_generation_prompt=True
    )
    inputs = processor(images=[scene_db], text=[prompt], anchors=[field], return_tensors="pt")
    print(f"    inputs: { {k: tuple(v.shape) for k, v in inputs.items()} }")

    options = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    answer = model.generate(**inputs, **options)[:, inputs["input_ids"].shape[1]:]
    without = {k: v for k, v in inputs.items() if not k.startswith("anchor_")}
    plain = model.generate(**without, **options)[:, inputs["input_ids"].shape[1]:]
    print(f"3/4 with anchors:    {processor.batch_decode(answer, skip_special_tokens=True)[0]!r}")
    print(f"    without anchors: {processor.batch_decode(plain, skip_special_tokens=True)[0]!r}")

    output = Path(args.output)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    loaded = AutoModelForImageTextToText.from_pretrained(output).eval()
    pipe = pipeline("image-text-to-text", model=loaded, processor=AutoProcessor.from_pretrained(output))
    anchors = {k: v for k, v in inputs.items() if k.startswith("anchor_")}
    chat = [{"role": "user", "content": [{"type": "image", "image": processor.model_image(scene_db)},
                                         {"type": "text", "text": QUESTION}]}]
    piped = pipe(text=chat, return_full_text=False, generate_kwargs={**options, **anchors})[0]["generated_text"]
    same = piped == processor.batch_decode(answer, skip_special_tokens=True)[0]
    print(f"4/4 checkpoint in {output}: reloaded through AutoModelForImageTextToText + pipeline, same answer: {same}")
    print(f"done in {time.perf_counter() - start:.1f} s (random weights: train with the SFT stages for real answers)")
    if not same:
        raise SystemExit("the reloaded checkpoint answered differently")


if __name__ == "__main__":
    main()
