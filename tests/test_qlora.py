"""QLoRA through `fusar-train`, on CPU (bitsandbytes >= 0.47 runs 4-bit there): which modules end up 4-bit, both
stages run, and the saved model is the full-precision base plus the trained LoRA, never merged into 4-bit weights."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

import train_sft
from dataset_scripts.simulate import simulate

FUSAR_TRAIN = str(Path(sys.executable).with_name("fusar-train"))
QUICK = ["--per_device_train_batch_size", "4", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1",
         "--max_train_examples", "8", "--stage1_epochs", "1", "--stage2_epochs", "1", "--stage1_learning_rate", "0.01",
         "--stage2_learning_rate", "0.01"]


def four_bit_on_cpu() -> str | None:
    """Why this machine cannot run 4-bit layers, or None when it can."""
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 32, compute_dtype=torch.float32, quant_type="nf4")
        layer.load_state_dict(torch.nn.Linear(64, 32).state_dict())
        layer.to("cpu")(torch.randn(2, 64))  # moving it quantises the weight
    except Exception as error:  # not installed, or no CPU kernels here
        return f"bitsandbytes cannot run 4-bit layers on this CPU ({type(error).__name__}: {error}); bench_gpu.py covers QLoRA on a GPU"
    return None


@pytest.fixture(scope="module")
def base_and_data(tmp_path_factory):
    if reason := four_bit_on_cpu():
        pytest.skip(reason)
    from modeling_fusar.tiny import DEFAULT_CORPUS, tiny_qwen2_5_vl, train_tokenizer

    root = tmp_path_factory.mktemp("qlora")
    data = simulate(root / "data", scenes=12)
    torch.manual_seed(0)
    base, processor = tiny_qwen2_5_vl(train_tokenizer([DEFAULT_CORPUS], vocab_size=1024), hidden_size=64, layers=2)
    base.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    return root / "base", data


@pytest.mark.parametrize("bits", [4, 8])
def test_only_the_language_model_is_quantised_and_a_bare_name_would_keep_nothing_out(base_and_data, bits):
    import bitsandbytes as bnb
    from transformers import AutoConfig, BitsAndBytesConfig

    base, data = base_and_data
    args, _, model_args = train_sft.parse_arguments(["--model_name_or_path", str(base), f"--load_in_{bits}bit", "true",
                                                     "--use_peft", "true", "--output_dir", "unused"])
    model = train_sft.load_weights(str(base), args, model_args, quantized=True)
    layer = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    quantised = [name for name, module in model.named_modules() if isinstance(module, layer)]
    decoder = next(name for name, module in model.named_modules() if module is model.vlm.get_decoder())
    assert quantised and all(name.startswith(decoder + ".") for name in quantised)  # the language model's layers only
    assert model.vlm.lm_head.weight.dtype == torch.float32 and model.anchor_module.film[-1].weight.dtype == torch.float32
    assert train_sft.full_precision_modules(AutoConfig.from_pretrained(base)) == ["model.visual", "lm_head"]
    bare = AutoModelForImageTextToText.from_pretrained(base, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, llm_int8_skip_modules=["visual"]))  # the trap: matched from the start of the full name
    assert any(isinstance(m, bnb.nn.Linear4bit) for n, m in bare.named_modules() if ".visual." in n)


def test_a_qlora_run_of_both_stages_saves_full_precision_base_plus_lora(base_and_data, tmp_path):
    import bitsandbytes as bnb

    base, data = base_and_data
    output = tmp_path / "qlora"
    result = subprocess.run([FUSAR_TRAIN, "--model_name_or_path", str(base), "--dataset_name", str(data),
                             "--output_dir", str(output), "--load_in_4bit", "true", "--use_peft", "true",
                             "--lora_r", "4", "--lora_alpha", "8", *QUICK], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    model = AutoModelForImageTextToText.from_pretrained(output)  # loads as an ordinary FUSAR-GPT checkpoint
    assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())
    assert model.anchor_module.film[-1].weight.abs().sum() > 0  # stage 1 trained the anchor module
    card = (output / "README.md").read_text()
    assert "4-bit NF4" in card and "LoRA r=4" in card and "full precision" in card
    run = json.loads((output / "fusar_run.json").read_text())
    assert run["model"]["load_in_4bit"] is True

    # the merge: stage 1's full-precision weights + stage 2's LoRA, equal to merging the kept adapter by hand
    kept = tmp_path / "adapter"
    again = subprocess.run([FUSAR_TRAIN, "--model_name_or_path", str(output / "stage1-model"), "--dataset_name",
                            str(data), "--output_dir", str(kept), "--load_in_4bit", "true", "--use_peft", "true",
                            "--lora_r", "4", "--lora_alpha", "8", "--stage", "2", "--merge_lora", "false",
                            "--seed", "0", *QUICK], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    merged = subprocess.run([FUSAR_TRAIN, "--model_name_or_path", str(output / "stage1-model"), "--dataset_name",
                             str(data), "--output_dir", str(tmp_path / "merged"), "--load_in_4bit", "true",
                             "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--stage", "2", "--seed", "0",
                             *QUICK], capture_output=True, text=True, timeout=600)
    assert merged.returncode == 0, merged.stderr[-3000:]
    from peft import PeftModel

    by_hand = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(output / "stage1-model"),
                                        kept).merge_and_unload()
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    stage1 = AutoModelForImageTextToText.from_pretrained(output / "stage1-model")
    moved = 0
    for (name, expected), got, start in zip(by_hand.state_dict().items(), saved.state_dict().values(),
                                            stage1.state_dict().values()):
        torch.testing.assert_close(got, expected, atol=1e-2, rtol=1e-2, msg=name)  # bf16-level tolerance
        moved += not torch.equal(got, start)
    assert moved  # the LoRA update reached the saved weights (not rounded away in 4 bits)


def test_quantisation_that_cannot_apply_is_refused_before_any_work(base_and_data, tmp_path):
    base, data = base_and_data
    for options, message in (
            (["--load_in_4bit", "true"], "--load_in_4bit: quantised weights are not trained directly; add --use_peft true"),
            (["--load_in_4bit", "true", "--use_peft", "true", "--model_name_or_path", "tiny"],
             "the tiny model is built in memory"),
            (["--load_in_4bit", "true", "--load_in_8bit", "true", "--use_peft", "true"],
             "8 bit and 4 bit precision at the same time")):  # TRL's ModelConfig says this one
        argv = ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(tmp_path / "x"),
                *QUICK, *options]
        with pytest.raises(ValueError, match=message):
            train_sft.main(*train_sft.parse_arguments(argv))
        assert not (tmp_path / "x").exists()


def test_the_memory_benchmark_runs_its_dry_mode(base_and_data):
    """bench_memory.py fills the README's memory table on a GPU; `--dry` runs one cell's commands on CPU."""
    result = subprocess.run([sys.executable, "benchmarks/bench_memory.py", "--dry", "--recipes", "qlora", "--stages",
                             "2", "--batches", "4"], cwd=Path(train_sft.__file__).parent, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| QLoRA (`--load_in_4bit true --use_peft true`) | n/a (CPU) |" in result.stdout


def connections_while(command: list[str], env: dict) -> tuple[int, subprocess.CompletedProcess]:
    """(How many connections `command` opened to the Hub it was given, its result): HF_ENDPOINT is a socket that
    counts who knocks and hangs up on them."""
    knocks = []
    with socket.create_server(("127.0.0.1", 0)) as hub:
        def count():
            with contextlib.suppress(OSError):  # closed when the command is done
                while True:
                    hub.accept()[0].close()
                    knocks.append(1)

        threading.Thread(target=count, daemon=True).start()
        result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{hub.getsockname()[1]}"})
    return len(knocks), result


def test_no_hub_kernel_is_looked_up_unless_the_user_asks():
    """bitsandbytes looks a CPU kernel up on the Hub when peft imports it (hub_kernels.py): `fusar-train --help`,
    which imports peft, opens no connection and prints no kernel warning; FUSAR_HUB_KERNELS=1 lets the lookup out."""
    pytest.importorskip("bitsandbytes", reason="the qlora extra is not installed")
    env = {name: value for name, value in os.environ.items() if name not in ("HF_HUB_OFFLINE", "FUSAR_HUB_KERNELS")}
    knocks, result = connections_while([FUSAR_TRAIN, "--help"], env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert knocks == 0 and "kernel" not in result.stderr, result.stderr[-2000:]
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes looks the kernel up only on CPUs with AVX512-BF16; this one has none")
    knocks, result = connections_while([FUSAR_TRAIN, "--help"], {**env, "FUSAR_HUB_KERNELS": "1"})
    assert result.returncode == 0 and knocks > 0, result.stderr[-2000:]
    assert "kernels-community/quantization-bitsandbytes" in result.stderr
