"""The vision tower at the speed of the hardware, checked for exactness on CPU: the varlen vision attention (its
fallback is transformers' sdpa, call for call) and the frozen-vision feature cache (the same losses)."""

import copy

import pytest
import torch

import train_sft
from conftest import BACKBONES, build, model_inputs, random_anchors, random_image
from modeling_fusar import FusarForConditionalGeneration
from modeling_fusar.vision_attention import VARLEN, varlen_attention
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.integrations.sdpa_attention import sdpa_attention_forward


def test_varlen_fallback_is_transformers_sdpa_exactly():
    torch.manual_seed(0)
    query, key, value = (torch.randn(1, 2, 37, 8) for _ in range(3))
    cu = torch.tensor([0, 5, 21, 37])
    got, _ = varlen_attention(None, query, key, value, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                              max_length_q=16, max_length_k=16)
    pieces = [torch.split(t, [5, 16, 16], dim=2) for t in (query, key, value)]
    expected = torch.cat([sdpa_attention_forward(None, q, k, v, None, scaling=0.3, is_causal=False)[0]
                          for q, k, v in zip(*pieces)], dim=1)
    assert got.shape == (1, 37, 2, 8) and torch.equal(got, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch's varlen flash attention needs a CUDA GPU")
def test_varlen_kernel_matches_sdpa_on_cuda():
    torch.manual_seed(0)
    query, key, value = (torch.randn(1, 4, 300, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cu = torch.tensor([0, 64, 200, 300], device="cuda")
    fast, _ = varlen_attention(None, query, key, value, scaling=0.125, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                               max_length_q=136, max_length_k=136)
    exact, _ = varlen_attention(None, query.float(), key.float(), value.float(), scaling=0.125, cu_seq_lens_q=cu,
                                cu_seq_lens_k=cu, max_length_q=136, max_length_k=136)
    torch.testing.assert_close(fast.float(), exact, atol=2e-2, rtol=2e-2)


def test_the_model_uses_it_where_the_vision_attention_takes_segments(tokenizers, monkeypatch):
    from processing import FusarProcessor

    torch.manual_seed(0)
    base, processor = BACKBONES["qwen2_5_vl"](tokenizers["qwen2_5_vl"])
    untouched = copy.deepcopy(base).eval()
    model = FusarForConditionalGeneration.from_base(base).eval()
    calls = []
    spy = lambda *args, **kwargs: calls.append(kwargs["cu_seq_lens_q"]) or varlen_attention(*args, **kwargs)  # noqa: E731
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, VARLEN, spy)
    inputs = model_inputs(FusarProcessor.from_base(processor), [random_image(0), random_image(1, 140, 84)])
    with torch.no_grad():  # two images of different sizes: many windows of several lengths
        assert torch.equal(model(**inputs).logits, untouched(**inputs).logits)
    layers = model.config.vision_config.depth
    assert len(calls) == layers and len(calls[0]) > 3  # one call per layer, over all the windows at once
    # At rest the config names the base's own implementation: copies, saves and new models never see VARLEN.
    assert model.config.vision_config._attn_implementation == "sdpa"
    FusarForConditionalGeneration.from_base(copy.deepcopy(model.config.base_config))
    calls.clear()
    kept = FusarForConditionalGeneration.from_base(copy.deepcopy(untouched), vision_attn_implementation="base").eval()
    with torch.no_grad():
        kept(**inputs)
    assert not calls
    llava, _ = build(tokenizers, "llava")  # CLIP's attention takes no segments: left as built
    assert not [m for m in llava.modules() if hasattr(m, "use_varlen")]
    with pytest.raises(ValueError, match="vision_attn_implementation must be 'varlen' or 'base'"):
        FusarForConditionalGeneration.from_base(copy.deepcopy(untouched), vision_attn_implementation="flash")


def losses(model, batches, epochs: int) -> list[float]:
    model.train()
    return [float(model(**batch).loss) for _ in range(epochs) for batch in batches]


@pytest.mark.parametrize("family", list(BACKBONES))
def test_the_feature_cache_gives_the_same_losses_and_encodes_each_image_once(tokenizers, family, tmp_path):
    model, processor = build(tokenizers, family, modulate=True)
    model.float()
    batches = []
    for start in (0, 2):
        images = [random_image(start + i, 112, 112) for i in range(2)]
        batch = model_inputs(processor, images, anchors=[random_anchors(start + i, 5) for i in range(2)])
        batch["labels"] = batch["input_ids"].clone()
        batches.append(batch)
    for parameter in model.parameters():  # the recipe: the image encoder frozen, the rest training
        parameter.requires_grad_(False)
    model.vlm.get_decoder().requires_grad_(True)
    expected = losses(model, batches, epochs=2)
    for budgets in ({}, {"memory_bytes": 0}):  # in memory; then all of it through the memory-mapped file
        cache = model.enable_vision_feature_cache(folder=tmp_path, **budgets)
        got = losses(model, batches, epochs=2)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert (cache.misses, cache.hits) == (4, 4)  # each image encoded once; epoch 2 entirely from the cache
        assert bool(cache.on_disk) == ("memory_bytes" in budgets)
        folder = cache.folder
        model.disable_vision_feature_cache()
        assert not folder.exists()  # nothing left for a later run to trust
    cache = model.enable_vision_feature_cache(folder=tmp_path)
    other = model_inputs(processor, [random_image(9, 112, 112)])  # another image: a miss, never a stale hit
    model(**batches[0]), model(**other)
    assert (cache.misses, cache.hits) == (3, 0)
    next(p for p in cache.parameters).requires_grad_(True)  # the encoder trains: the cache stands aside
    model(**batches[0])
    assert (cache.misses, cache.hits) == (3, 0)
    model.disable_vision_feature_cache()


def test_training_with_the_cache_ends_where_training_without_it_ends(tmp_path, monkeypatch):
    from dataset_scripts.simulate import simulate
    from test_training import FAST, parse

    data = simulate(tmp_path / "sim", scenes=8)
    made = []
    enable = FusarForConditionalGeneration.enable_vision_feature_cache
    monkeypatch.setattr(FusarForConditionalGeneration, "enable_vision_feature_cache",
                        lambda self, **budgets: made.append(enable(self, **budgets)) or made[-1])
    ends = {}
    for gigabytes in ("0", "1"):
        args, training_args, model_args = parse("--dataset_name", str(data), "--output_dir", str(tmp_path / gigabytes),
                                                *FAST, "--stage1_epochs", "2", "--vision_feature_cache_gb", gigabytes)
        dataset = train_sft.load_triplets(args.dataset_name)
        torch.manual_seed(0)
        model, processor = train_sft.load_model(args, dataset, model_args)
        trained, _, _ = train_sft.run_stage(1, model, processor, dataset, args, training_args, model_args)
        ends[gigabytes] = {name: p.detach().clone() for name, p in trained.named_parameters()}
        assert trained.vision_feature_cache is None  # closed with the stage
    [cache] = made  # only the run with a budget had one; its second epoch came from it
    assert cache.misses > 0 and cache.hits == cache.misses
    for name, value in ends["0"].items():
        torch.testing.assert_close(ends["1"][name], value, rtol=0, atol=1e-6)


def test_the_gpu_benchmark_runs_its_dry_mode():
    """bench_gpu.py measures on a GPU; `--dry` runs the same code at a tiny size on CPU, so that it stays runnable."""
    import subprocess
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    result = subprocess.run([sys.executable, "bench_gpu.py", "--dry"], cwd=folder, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("(a) all of it training", "varlen, with the feature cache", "(c) anchor module", "(d) greedy"):
        assert line in result.stdout
    assert "nan" not in result.stdout and "0.00 B parameters" not in result.stdout and " M parameters" in result.stdout


def test_a_cache_left_by_a_killed_process_is_removed_and_a_live_one_kept(tokenizers, tmp_path):
    """kill -9 skips every cleanup; the next run (a resume) removes the dead process's cache folder."""
    import os
    import socket
    import subprocess

    from modeling_fusar.vision_cache import PREFIX

    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f"{PREFIX}{dead.pid}@{socket.gethostname()}-abc"
    live = tmp_path / f"{PREFIX}{os.getppid()}@{socket.gethostname()}-def"
    for folder in (orphan, live):
        folder.mkdir()
        (folder / "features.bin").write_bytes(b"x")
    model, _ = build(tokenizers, "qwen2_5_vl")
    cache = model.enable_vision_feature_cache(folder=tmp_path)
    assert not orphan.exists() and live.exists() and cache.folder.exists()
    model.disable_vision_feature_cache()
    assert not cache.folder.exists()
