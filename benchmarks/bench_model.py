"""FUSAR-GPT's cost over its base model, measured in one process on the same inputs.

(a) a training step (forward, backward, AdamW) at language model hidden 512 x 4 layers, vision hidden 256,
    224 px images, batch 4, 64 anchors per image: FUSAR-GPT / base, target <= 1.10x;
(b) the anchor module's forward + backward at batch 8: a per-image loop like the authors' code / ours,
    target >= 3x;
(c) greedy generation tokens/s: FUSAR-GPT / base, target >= 0.95x.

Run: python benchmarks/bench_model.py  (add --quick for a fast smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from modeling_fusar import FusarForConditionalGeneration
from modeling_fusar.visual_grids import VisualGrid
from modeling_fusar.tiny import tiny_qwen2_5_vl, train_tokenizer
from processing import FusarProcessor


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median seconds of each function, run alternately so that machine noise hits all of them alike (on a GPU,
    each timing waits for the GPU to finish), after `warmup` untimed calls of each."""
    synchronise = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronise()
            start = time.perf_counter()
            fn()
            synchronise()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def batch(processor, size: int, pixels: int, anchors: int):
    rng = np.random.default_rng(0)
    images = [rng.gamma(1.0, 1.0, (1, pixels, pixels)) for _ in range(size)]
    fields = [rng.normal(size=(64, 32, 32)).astype(np.float32) for _ in range(size)]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the scene."}]},
         {"role": "assistant", "content": "Water on the left, fields on the right, two ships near the coast."}])
    processor.anchor_grid_size = int(anchors**0.5)
    inputs = processor(images=images, text=[prompt] * size, anchors=fields, padding=True, return_tensors="pt")
    inputs["labels"] = inputs["input_ids"].clone()
    return inputs


def training_step_ratio(model, inputs, repeats):
    base_inputs = {k: v for k, v in inputs.items() if not k.startswith("anchor_")}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step(m, i):
        def run():
            optimizer.zero_grad(set_to_none=True)
            m(**i).loss.backward()
            optimizer.step()
        return run

    model.train()
    times = interleaved({"fusar": step(model, inputs), "base": step(model.vlm, base_inputs)}, repeats)
    return times["fusar"] / times["base"], times


def authors_loop(tlm, features, grids, values, positions, valid):
    """The released code's shape: one image at a time, fields on the pre-merge grid, then resized."""
    out = []
    for image, (tokens, grid) in enumerate(zip(features, grids)):
        gamma, beta = tlm.film(values[image]).chunk(2, dim=-1)
        device = tokens.device
        cells = torch.cartesian_prod(torch.arange(grid.patch_rows, device=device),
                                     torch.arange(grid.patch_cols, device=device)).to(tokens.dtype)
        anchors = positions[image] * torch.tensor([grid.patch_rows - 1, grid.patch_cols - 1], device=device)
        w = torch.exp(-((anchors[:, None] - cells[None]) ** 2).sum(-1) / (2 * tlm.sigma**2))
        w = w / (w.sum(0, keepdim=True) + 1e-6) * valid[image][:, None]
        w = w / (w.sum(0, keepdim=True) + 1e-6)
        fields = []
        for parameter in (gamma, beta):
            field = (w.T @ parameter).T.reshape(1, -1, grid.patch_rows, grid.patch_cols)
            field = F.interpolate(field, size=(grid.token_rows, grid.token_cols), mode="bilinear", align_corners=False)
            fields.append(field[0].flatten(1).T)
        out.append(tokens * (1 + fields[0]) + fields[1])
    return out


def anchor_module_ratio(model, repeats, batch_size=8, anchors=64):
    tlm, hidden = model.anchor_module, model.config.hidden_size
    torch.nn.init.normal_(tlm.film[-1].weight, std=0.02)
    grid = VisualGrid(36, 36, 2)  # the paper's 504 px images on Qwen2.5-VL
    generator = torch.Generator().manual_seed(0)
    place = {"device": tlm.film[-1].weight.device, "dtype": tlm.film[-1].weight.dtype}
    features = torch.randn(batch_size, grid.num_tokens, hidden, generator=generator).to(**place).requires_grad_()
    values = F.normalize(torch.randn(batch_size, anchors, 1, 64, generator=generator), dim=-1).to(**place)
    positions = torch.rand(batch_size, anchors, 2, generator=generator).to(**place)
    mask = torch.ones(batch_size, anchors, 1, dtype=torch.bool, device=place["device"])

    def ours():
        torch.stack(tlm(list(features), [grid] * batch_size, values, positions, mask)).sum().backward()

    def loop():
        torch.stack(authors_loop(tlm, list(features), [grid] * batch_size, values[:, :, 0], positions,
                                 mask[:, :, 0].to(place["dtype"]))).sum().backward()

    times = interleaved({"ours": ours, "loop": loop}, repeats)
    return times["loop"] / times["ours"], times


def generation_ratio(model, inputs, new_tokens, repeats):
    model.eval()
    prompt = {k: v for k, v in inputs.items() if k != "labels"}
    base_prompt = {k: v for k, v in prompt.items() if not k.startswith("anchor_")}
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    with torch.no_grad():
        times = interleaved({"fusar": lambda: model.generate(**prompt, **options),
                             "base": lambda: model.vlm.generate(**base_prompt, **options)}, repeats)
    return times["base"] / times["fusar"], times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, smaller model: a smoke run")
    args = parser.parse_args()
    torch.manual_seed(0)
    hidden, layers, repeats = (128, 2, 3) if args.quick else (512, 4, 15)
    base, base_processor = tiny_qwen2_5_vl(train_tokenizer(), hidden_size=hidden, layers=layers, vision_hidden=256,
                                           vision_depth=4, min_pixels=224 * 224, max_pixels=224 * 224)
    model = FusarForConditionalGeneration.from_base(base)
    torch.nn.init.normal_(model.anchor_module.film[-1].weight, std=0.02)
    processor = FusarProcessor.from_base(base_processor)
    inputs = batch(processor, size=4, pixels=224, anchors=64)
    print(f"model: language model hidden {hidden} x {layers} layers, vision hidden 256, 224 px, batch 4, "
          f"64 anchors/image, torch {torch.__version__}, {torch.get_num_threads()} threads")

    ratio, t = training_step_ratio(model, inputs, repeats)
    print(f"(a) training step   FUSAR {t['fusar'] * 1e3:7.1f} ms  base {t['base'] * 1e3:7.1f} ms  "
          f"overhead {ratio:.3f}x  (target <= 1.10x)")
    ratio, t = anchor_module_ratio(model, repeats)
    print(f"(b) anchor module   ours  {t['ours'] * 1e3:7.1f} ms  loop {t['loop'] * 1e3:7.1f} ms  "
          f"speed-up {ratio:.2f}x  (target >= 3x)")
    ratio, t = generation_ratio(model, inputs, new_tokens=16 if args.quick else 32, repeats=max(3, repeats // 3))
    print(f"(c) greedy generate FUSAR {t['fusar'] * 1e3:7.1f} ms  base {t['base'] * 1e3:7.1f} ms  "
          f"tokens/s ratio {ratio:.3f}x  (target >= 0.95x)")


if __name__ == "__main__":
    main()
