"""The GPU memory the 7B recipe needs, measured through fusar-train itself: the whole language model, LoRA and QLoRA;
stage 1 and stage 2; batch 1 and 4; 504 px images.

A random model of Qwen2.5-VL-7B-Instruct's shape (8.29 B parameters; nothing is downloaded) is saved once with a
504 px processor, a small simulated dataset is built, and each configuration runs `fusar-train --config
configs/qwen2_5_vl_7b.yaml ... --max_steps 3` in its own process (a clean peak), which prints
`torch.cuda.max_memory_allocated`. Stage 2 runs alone without anchors (a fresh anchor module has no effect; its
memory is a few MB). Prints the README's table.

Run: python benchmarks/bench_memory.py          (one GPU; 80 GB for the whole-model rows, which `--recipes lora
                                                 qlora` leaves out; about 10 minutes on an H100 / H200)
     python benchmarks/bench_memory.py --dry    (a tiny model on CPU: the same commands, memory n/a; `--recipes`,
                                                 `--stages`, `--batches` pick cells)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {  # short name: (row name, options)
    "whole": ("whole language model (AdamW)", ["--use_peft", "false"]),
    "lora": ("LoRA (`configs/qwen2_5_vl_7b.yaml`)", ["--use_peft", "true"]),
    "qlora": ("QLoRA (`--load_in_4bit true --use_peft true`)", ["--use_peft", "true", "--load_in_4bit", "true"]),
}
STAGES = {1: ["--stage", "1"], 2: ["--stage", "2", "--use_anchors", "false"]}
MEASURE = "import sys, torch, train_sft; train_sft.cli(sys.argv[1:]); " \
          "print('PEAK', torch.cuda.max_memory_allocated() if torch.cuda.is_available() else -1)"


def save_base(folder: Path, dry: bool) -> Path:
    """A random Qwen2.5-VL of the 7B's shape (or a tiny one) in bf16, with a 504 px processor."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, \
        Qwen2VLImageProcessorPil

    from modeling_fusar.tiny import tiny_qwen2_5_vl, train_tokenizer
    from processing.base import image_only

    tokenizer = train_tokenizer(vocab_size=512)
    if dry:
        model, _ = tiny_qwen2_5_vl(tokenizer, hidden_size=64, layers=2)
    else:
        ids = tokenizer.convert_tokens_to_ids
        config = Qwen2_5_VLConfig(  # Qwen2.5-VL-7B-Instruct's config.json, its vocabulary included
            text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                             num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                             bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>")),
            vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                               fullatt_block_indexes=[7, 15, 23, 31]),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
        with torch.device("cuda"):
            model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    pixels = 504 * 504
    processor = image_only(Qwen2_5_VLProcessor)(
        Qwen2VLImageProcessorPil(size={"shortest_edge": pixels, "longest_edge": pixels}), tokenizer,
        chat_template=tokenizer.chat_template)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="a tiny model on CPU: the same commands, as a smoke run")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES),
                        help="rows to measure (leave out `whole` on GPUs under 80 GB)")
    parser.add_argument("--stages", nargs="+", type=int, choices=[1, 2], default=[1, 2])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    args = parser.parse_args()
    from dataset_scripts.simulate import simulate

    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    base = save_base(work / "base", args.dry)
    data = simulate(work / "data", scenes=12)
    rows = {}
    for recipe, options in (RECIPES[name] for name in args.recipes):
        for stage, stage_options in ((stage, STAGES[stage]) for stage in args.stages):
            for batch in args.batches:
                command = [sys.executable, "-c", MEASURE, "--config", str(ROOT / "configs" / "qwen2_5_vl_7b.yaml"),
                           "--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir",
                           str(work / "run"), "--overwrite_output_dir", "true", "--max_steps", "3",
                           "--save_strategy", "no", "--per_device_train_batch_size", str(batch),
                           "--gradient_accumulation_steps", "1", *options, *stage_options]
                if args.dry:
                    command += ["--bf16", "false", "--dtype", "float32"]
                result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                if result.returncode != 0:
                    print(f"{recipe}, stage {stage}, batch {batch}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
                    return 1
                peak = int(result.stdout.split("PEAK")[-1])
                rows.setdefault(recipe, []).append("n/a (CPU)" if peak < 0 else f"{peak / 2**30:.1f} GiB")
    columns = [f"stage {stage}, batch {batch}" for stage in args.stages for batch in args.batches]
    print("| 7B recipe, one GPU, 504 px | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for recipe, cells in rows.items():
        print(f"| {recipe} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
