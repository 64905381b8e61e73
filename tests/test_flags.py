"""Every flag `fusar-train --help` shows (TRL's SFTConfig and ModelConfig) works or is refused in one line: the
tables of `training/flags.py` walked against TRL's own fields, each refusal tried, the honoured ones checked."""

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments
from trl import ModelConfig, SFTConfig

import train_sft
from dataset_scripts.simulate import simulate
from training.flags import HONOURED, REFUSED, check_flags

FUSAR_TRAIN = str(Path(sys.executable).with_name("fusar-train"))
TRAINER_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
TRL_FIELDS = {f.name for f in dataclasses.fields(SFTConfig)} - TRAINER_FIELDS | {f.name for f in dataclasses.fields(ModelConfig)}
# A value other than the default, for each refused flag, as a user would type it.
EXAMPLES = {"model_init_kwargs": '{"low_cpu_mem_usage": true}', "trust_remote_code": "true",
            "router_aux_loss_coef": "0.01", "dataset_text_field": "caption", "dataset_kwargs": '{"a": 1}',
            "dataset_num_proc": "2", "eos_token": "<|end|>", "pad_token": "<|pad|>", "truncation_mode": "keep_end",
            "shuffle_dataset": "true", "packing": "true", "packing_strategy": "wrapped", "padding_free": "true",
            "eval_packing": "true", "completion_only_loss": "true", "lora_target_parameters": "experts.weight",
            "lora_task_type": "SEQ_CLS", "num_train_epochs": "7", "learning_rate": "0.5",
            "remove_unused_columns": "true", "use_liger_kernel": "true", "do_predict": "true"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("flags") / "sim", scenes=8)


def test_every_flag_trl_adds_is_placed_once():
    assert TRL_FIELDS <= set(HONOURED) | set(REFUSED), sorted(TRL_FIELDS - set(HONOURED) - set(REFUSED))
    assert not set(HONOURED) & set(REFUSED)
    assert set(HONOURED) | set(REFUSED) <= TRL_FIELDS | TRAINER_FIELDS  # nothing listed that TRL does not offer
    assert set(EXAMPLES) == set(REFUSED)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_each_refused_flag_stops_with_one_line(name):
    with pytest.raises(ValueError, match=rf"^--{name}: not supported by fusar-train \(.+\)$"):
        train_sft.parse_arguments([f"--{name}", EXAMPLES[name], "--output_dir", "o"])


@pytest.mark.parametrize("name, value", [("packing", True), ("num_train_epochs", 7.0), ("lora_task_type", "SEQ_CLS"),
                                         ("use_liger_kernel", True)])
def test_a_refused_value_set_in_code_is_refused_by_main_too(name, value):
    """`train_sft.main` takes dataclasses built in code as well (main_job does): their values are checked."""
    _, training_args, model_args = train_sft.parse_arguments(["--output_dir", "o"])
    setattr(training_args if hasattr(training_args, name) else model_args, name, value)
    with pytest.raises(ValueError, match=rf"^--{name} {value}: not supported by fusar-train"):
        check_flags(training_args, model_args)


def test_a_refused_flag_typed_at_its_default_is_refused_too(tmp_path):
    """`--num_train_epochs 3` is TRL's default value: compared by value it would pass, and be ignored."""
    with pytest.raises(ValueError, match=r"^--num_train_epochs: not supported by fusar-train \(each stage has its own"):
        train_sft.parse_arguments(["--num_train_epochs", "3", "--output_dir", "o"])
    (tmp_path / "c.yaml").write_text("learning_rate: 2.0e-5\noutput_dir: o\n")  # TRL's default, in a config
    with pytest.raises(ValueError, match=r"^--learning_rate: not supported by fusar-train"):
        train_sft.parse_arguments(["--config", str(tmp_path / "c.yaml")])


def test_the_shipped_configs_use_no_refused_flag():
    for config in sorted((Path(train_sft.__file__).parent / "configs").glob("*.yaml")):
        check_flags(*train_sft.parse_arguments(["--config", str(config)])[1:])


def test_through_the_shell_a_refused_flag_and_trls_model_flag(data, tmp_path):
    refused = subprocess.run([FUSAR_TRAIN, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
                              "--packing", "true"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "fusar-train: error: --packing: not supported by fusar-train (one sequence per image" in refused.stderr
    missing = subprocess.run([FUSAR_TRAIN, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
                              "--model_name_or_path", "/nonexistent/model", "--max_steps", "1", "--stage", "1"],
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "/nonexistent/model: no such file or folder" in missing.stderr, missing.stderr
    assert not (tmp_path / "out").exists()


def test_model_is_an_alias_of_model_name_or_path(tmp_path):
    (tmp_path / "c.yaml").write_text("model: some/base\noutput_dir: o\n")  # an older config's key
    for argv in (["--model", "a/b"], ["--model_name_or_path", "a/b"], ["--config", str(tmp_path / "c.yaml")]):
        model_args = train_sft.parse_arguments([*argv, "--output_dir", "o"])[2]
        assert model_args.model_name_or_path == ("some/base" if "--config" in argv else "a/b")
    (tmp_path / "both.yaml").write_text("model: a/b\nmodel_name_or_path: c/d\n")
    with pytest.raises(ValueError, match="gives both model and model_name_or_path"):
        train_sft.parse_arguments(["--config", str(tmp_path / "both.yaml")])


def test_lora_flags_reach_the_lora_config(data):
    args, _, model_args = train_sft.parse_arguments(
        ["--use_peft", "true", "--lora_r", "3", "--lora_alpha", "6", "--lora_dropout", "0.2", "--use_rslora", "true",
         "--use_dora", "true", "--lora_target_modules", "q_proj", "v_proj", "--lora_modules_to_save", "vlm.lm_head",
         "--tiny_hidden_size", "64", "--output_dir", "o"])
    model, _ = train_sft.load_model(args, train_sft.load_triplets(str(data)), model_args)
    config = train_sft.peft_config(model, 1, args, model_args)
    assert (config.r, config.lora_alpha, config.lora_dropout, config.use_rslora, config.use_dora) == (3, 6, 0.2, True, True)
    assert config.target_modules == {"q_proj", "v_proj"} and config.modules_to_save == ["anchor_module", "vlm.lm_head"]
    assert train_sft.peft_config(model, 2, args, model_args).modules_to_save == ["vlm.lm_head"]  # anchor module frozen


def test_sequence_flags_reach_the_collator_and_the_template_flag_the_processor(data, tmp_path):
    rows = train_sft.load_triplets(str(data))
    args, training_args, model_args = train_sft.parse_arguments(["--tiny_hidden_size", "64", "--output_dir", "o"])
    model, processor = train_sft.load_model(args, rows, model_args)
    row = next(r for r in rows["train"] if r["task"] == "caption")
    answer_only = train_sft.collator(processor, args, training_args)([row])
    every_token = train_sft.collator(processor, args, train_sft.parse_arguments(
        ["--assistant_only_loss", "false", "--output_dir", "o"])[1])([row])
    assert 0 < (answer_only["labels"] != -100).sum() < (every_token["labels"] != -100).sum()
    length = answer_only["input_ids"].shape[1]
    cut = train_sft.collator(processor, args, train_sft.parse_arguments(
        ["--max_length", str(length - 3), "--output_dir", "o"])[1])([row])
    assert cut["input_ids"].shape[1] == length - 3
    torch.testing.assert_close(cut["input_ids"][0], answer_only["input_ids"][0, :length - 3])
    with pytest.raises(ValueError, match=rf"--max_length 8 cuts the image tokens of row {row['id']}: raise it"):
        train_sft.collator(processor, args, train_sft.parse_arguments(["--max_length", "8", "--output_dir", "o"])[1])([row])
    padded = train_sft.collator(processor, args, train_sft.parse_arguments(
        ["--pad_to_multiple_of", "64", "--output_dir", "o"])[1])([row])
    assert padded["input_ids"].shape[1] % 64 == 0
    (tmp_path / "t.jinja").write_text(processor.chat_template + "{# mine #}")
    _, mine = train_sft.load_model(args, rows, model_args, chat_template_path=str(tmp_path / "t.jinja"))
    assert mine.chat_template.endswith("{# mine #}")
    plain = processor.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    (tmp_path / "plain.jinja").write_text(plain)  # without markers no answer token would be labelled
    _, training_args, model_args = train_sft.parse_arguments(["--chat_template_path", str(tmp_path / "plain.jinja"),
                                                              "--output_dir", "o"])
    with pytest.raises(ValueError, match=r"plain.jinja: no \{% generation %\} markers"):
        check_flags(training_args, model_args)
    check_flags(*train_sft.parse_arguments(["--chat_template_path", str(tmp_path / "plain.jinja"),
                                            "--assistant_only_loss", "false", "--output_dir", "o"])[1:])


def test_both_spellings_of_checkpointing_turn_it_on():
    """transformers 5 renamed gradient checkpointing; a user of either name gets it (the old one warns)."""
    for flag in ("--activation_checkpointing", "--gradient_checkpointing"):
        assert train_sft.parse_arguments([flag, "true", "--output_dir", "o"])[1].activation_checkpointing is True
    assert not train_sft.parse_arguments(["--output_dir", "o"])[1].activation_checkpointing  # off unless asked


def test_merge_lora_false_keeps_the_adapter_of_a_stage_1_only_run(data, tmp_path, recwarn):
    output = tmp_path / "run"
    train_sft.main(*train_sft.parse_arguments([
        "--dataset_name", str(data), "--output_dir", str(output), "--stage", "1", "--use_peft", "true",
        "--merge_lora", "false", "--max_steps", "1", "--per_device_train_batch_size", "2", "--save_strategy", "no",
        "--report_to", "none", "--tiny_hidden_size", "64"]))
    assert (output / "adapter_config.json").is_file()  # the last stage's LoRA kept, as asked
    # The tiny base was built in memory: the adapter names no base, so PEFT never asks the Hub about one.
    assert json.loads((output / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    assert not [str(warning.message) for warning in recwarn if "Unable to fetch remote file" in str(warning.message)]


@pytest.mark.parametrize("flags, message", [
    (["--fsdp", "full_shard"], "--fsdp: FSDP shards the model across processes and this run is one; launch several"),
    (["--use_peft", "true", "--lora_r", "0"], "--lora_r 0: expected a LoRA rank of 1 or more"),
    (["--use_peft", "true", "--lora_dropout", "1.5"], "--lora_dropout 1.5: expected a share in [0, 1)"),
    (["--push_to_hub", "true", "--hub_model_id", "bad/name/x"], "--hub_model_id bad/name/x: expected name or user/name"),
    (["--torch_compile", "true"], "--torch_compile true: not supported yet: the compiled model fails"),
    (["--gradient_checkpointing", "true"], "--gradient_checkpointing true and --activation_checkpointing False: two "
                                           "names of one setting that disagree"),
    (["--dataset_streaming", "true", "--max_steps", "-1"], "--dataset_streaming true: a stream has no length to count "
                                                           "epochs in; give --max_steps N"),
    (["--dataset_streaming", "true", "--max_train_examples", "4"], "--max_train_examples: applies to a dataset read "
                                                                   "whole; a streamed stage runs --max_steps"),
    (["--dataset_streaming", "true", "--dataloader_num_workers", "2"], "--dataloader_num_workers 2: a streamed dataset "
                                                                       "is read in each training process"),
])
def test_a_flag_that_cannot_run_is_refused_before_any_folder_exists(flags, message, data, tmp_path, capsys):
    """Each of these used to be refused (or fail) only once the output folder and stage1/ existed."""
    (tmp_path / "config.yaml").write_text("activation_checkpointing: false\n")  # a config that says the opposite
    config = ["--config", str(tmp_path / "config.yaml")] if "--gradient_checkpointing" in flags else []
    status = train_sft.cli([*config, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
                            "--max_steps", "1", *flags])
    assert status == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_flag_whose_package_is_missing_names_the_extra(data, tmp_path):
    if importlib.util.find_spec("deepspeed"):
        pytest.skip("DeepSpeed is installed here: its absence cannot be seen")
    done = subprocess.run([FUSAR_TRAIN, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
                           "--deepspeed", "configs/zero2.json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert 'deepspeed is not installed here; pip install "fusar-gpt[deepspeed]"' in done.stderr
    assert not (tmp_path / "out").exists()
