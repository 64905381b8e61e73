"""FUSAR-GPT training on a GPU: where the step time goes, and what the varlen vision attention and the frozen-vision
feature cache buy, measured in one process on one random Qwen2.5-VL-shaped model.

The model: text 1536 x 28 layers (Qwen2.5-1.5B's shape), the full 32-layer 1280-wide Qwen2.5-VL vision tower,
2.44 B parameters, bf16, batch 8 x 504 px (~435 tokens per row), fused AdamW. Printed, each ratio measured
alternately in one process after warm-up, in both orders:
(a) all of it training: FUSAR / base step time;
(b) the recipe (vision frozen; language model and anchor module training, fully and with LoRA): sdpa vs varlen
    vision attention, and without vs with the feature cache (epoch 2 onwards, the cache already filled);
    step time, tokens/s, MFU (of the dense bf16 peak of known GPUs), peak memory;
(c) the anchor module: batched vs a per-image loop like the authors' code;
(d) greedy generation tokens/s: FUSAR / base.

Run: python benchmarks/bench_gpu.py            (one H100 / H200: under 5 minutes with the model build)
     python benchmarks/bench_gpu.py --dry      (the same code at a tiny size on CPU: a smoke run)
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from bench_model import anchor_module_ratio, batch, generation_ratio, interleaved
from modeling_fusar import FusarForConditionalGeneration
from modeling_fusar.tiny import train_tokenizer
from modeling_fusar.vision_attention import use_vision_attention
from processing import FusarProcessor
from processing.base import image_only

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, SXM where there are two


def build(dry: bool, device: str, dtype: torch.dtype):
    """(FUSAR-GPT around a random Qwen2.5-VL-shaped base, its processor)."""
    tokenizer = train_tokenizer(vocab_size=512)
    ids = tokenizer.convert_tokens_to_ids
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1) if dry else \
        dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
             num_key_value_heads=2)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=[1]) if dry else \
        dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, fullatt_block_indexes=[7, 15, 23, 31])
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    section = [head_dim // 8, head_dim // 8 + (head_dim // 2 - 3 * (head_dim // 8)) // 2]
    config = Qwen2_5_VLConfig(
        text_config=dict(**text, vocab_size=151936 if not dry else len(tokenizer), max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [*section, head_dim // 2 - sum(section)]},
                         bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(**vision, out_hidden_size=text["hidden_size"], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    config._attn_implementation = "sdpa"
    with torch.device(device):
        base = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model = FusarForConditionalGeneration.from_base(base)
    torch.nn.init.normal_(model.anchor_module.film[-1].weight, std=0.02)
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

    pixels = 504 * 504
    base_processor = image_only(Qwen2_5_VLProcessor)(
        Qwen2VLImageProcessorPil(size={"shortest_edge": pixels, "longest_edge": pixels}), tokenizer,
        chat_template=tokenizer.chat_template)
    return model, FusarProcessor.from_base(base_processor)


@contextmanager
def vision_attention(model, name: str):
    """The vision attention as transformers' sdpa ("sdpa") or through PyTorch's varlen flash attention ("varlen")."""
    use_vision_attention(model.vlm, name == "varlen")
    try:
        yield
    finally:
        use_vision_attention(model.vlm, model.config.vision_attn_implementation == "varlen")


def both_orders(fns: dict, repeats: int, warmup: int) -> dict:
    """Median seconds of each function, measured alternately, once in each order; the mean of the two medians."""
    first = interleaved(fns, repeats, warmup)
    second = interleaved(dict(reversed(list(fns.items()))), repeats, warmup)
    return {name: (first[name] + second[name]) / 2 for name in fns}


def trainer_step(model, inputs, parameters):
    optimizer = torch.optim.AdamW(parameters, lr=1e-6, fused=torch.cuda.is_available())

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        optimizer.step()
    return step


def peak_memory(fn) -> float | None:
    """GiB the step allocated at its peak on the GPU; None on a CPU (the --dry run), which keeps no such count."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated() / 2**30


def model_flops(model, inputs, vision_trains: bool) -> float:
    """6 x parameters x tokens for what trains (forward + backward), 2 x for what only runs forward."""
    vision = sum(p.numel() for p in model.vlm.model.visual.parameters())
    language = sum(p.numel() for p in model.vlm.parameters()) - vision
    patches, tokens = inputs["pixel_values"].shape[0], inputs["input_ids"].numel()
    return 6 * language * tokens + (6 if vision_trains else 2) * vision * patches


def report(name, seconds, model, inputs, vision_trains, memory):
    tokens = inputs["input_ids"].numel()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in device), None)
    mfu = f"{model_flops(model, inputs, vision_trains) / seconds / (peak * 1e12):5.1%}" if peak else "  n/a"
    peak_text = f"{memory:5.1f} GiB" if memory is not None else "  n/a (CPU)"
    print(f"  {name:<44} {seconds * 1e3:8.1f} ms  {tokens / seconds:9.0f} tokens/s  MFU {mfu}  peak {peak_text}")


def freeze_vision(model, lora: bool):
    """The recipe: the vision tower frozen; the language model (fully, or LoRA) and the anchor module training."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.anchor_module.requires_grad_(True)
    if lora:
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=model.lora_target_modules,
                                                modules_to_save=["anchor_module"]))
    model.vlm.get_decoder().requires_grad_(True)
    model.vlm.get_output_embeddings().requires_grad_(True)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="a tiny model on CPU: the same code, as a smoke run")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.dry else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    repeats, warmup = (1, 0) if args.dry else (5, 2)  # dry: each step once, a smoke run (CPU figures mean nothing)
    torch.manual_seed(0)
    start = time.perf_counter()
    model, processor = build(args.dry, device, dtype)
    inputs = batch(processor, size=8 if not args.dry else 2, pixels=504 if not args.dry else 112, anchors=64)
    inputs = inputs.to(device)
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    base_inputs = {k: v for k, v in inputs.items() if not k.startswith("anchor_")}
    count = sum(p.numel() for p in model.parameters())
    print(f"{count / 1e9:.2f} B" if count >= 1e8 else f"{count / 1e6:.2f} M", end=" ")
    print(f"parameters on {device} "
          f"({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), {dtype}, batch "
          f"{inputs['input_ids'].shape[0]} x {inputs['input_ids'].shape[1]} tokens, torch {torch.__version__}; "
          f"built in {time.perf_counter() - start:.0f} s")

    model.train()
    print("(a) all of it training")
    with vision_attention(model, "sdpa"):
        parameters = list(model.parameters())
        t = both_orders({"FUSAR": trainer_step(model, inputs, parameters),
                         "base": trainer_step(model.vlm, base_inputs, list(model.vlm.parameters()))}, repeats, warmup)
        memory = peak_memory(trainer_step(model, inputs, parameters))
    report("FUSAR-GPT, sdpa vision attention", t["FUSAR"], model, inputs, True, memory)
    report("base, sdpa vision attention", t["base"], model, inputs, True, memory)
    print(f"  FUSAR / base: {t['FUSAR'] / t['base']:.3f}")

    for lora in (False, True):
        trained = freeze_vision(model, lora)
        fusar = trained.get_base_model() if lora else trained
        parameters = [p for p in trained.parameters() if p.requires_grad]
        print(f"(b) the recipe: vision frozen, language model {'LoRA r8' if lora else 'fully'} + anchor module")
        cache = fusar.enable_vision_feature_cache()
        step = trainer_step(trained, inputs, parameters)
        step()  # epoch 1: fills the cache
        variants = {}
        for attention in ("sdpa", "varlen"):
            for cached in (False, True):
                def run(attention=attention, cached=cached):
                    fusar.vision_feature_cache = cache if cached else None
                    with vision_attention(fusar, attention):
                        step()
                variants[f"{attention}, {'with' if cached else 'without'} the feature cache"] = run
        t = both_orders(variants, repeats, warmup)
        for name, seconds in t.items():
            report(name, seconds, fusar, inputs, False, peak_memory(variants[name]))
        base_time = t["sdpa, without the feature cache"]
        print(f"  speed-up over sdpa without the cache: " + ", ".join(
            f"{name}: {base_time / seconds:.2f}x" for name, seconds in t.items() if seconds != base_time))
        fusar.vision_feature_cache = cache
        fusar.disable_vision_feature_cache()
        if lora:
            model = trained.unload()

    ratio, t = anchor_module_ratio(model, repeats)
    print(f"(c) anchor module: batched {t['ours'] * 1e3:.1f} ms, per-image loop {t['loop'] * 1e3:.1f} ms: "
          f"{ratio:.2f}x")
    ratio, t = generation_ratio(model, inputs, new_tokens=4 if args.dry else 32, repeats=repeats)
    print(f"(d) greedy generation tokens/s FUSAR / base: {ratio:.3f} ({t['fusar'] * 1e3:.0f} / {t['base'] * 1e3:.0f} ms)")
    print(f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
