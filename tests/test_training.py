"""train_sft.py, TRL-style: every parameter that should train changes, every frozen one does not."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText, AutoProcessor

import main_job
import train_sft
from dataset_scripts.simulate import simulate

FAST = ["--per_device_train_batch_size", "4", "--bf16", "false", "--gradient_checkpointing", "false",
        "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1", "--max_train_examples", "8",
        "--stage1_epochs", "1", "--stage2_epochs", "1", "--stage1_learning_rate", "0.01",
        "--stage2_learning_rate", "0.01", "--tiny_hidden_size", "64"]


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("data") / "sim", scenes=16)


def parse(*options):
    return train_sft.TrlParser((train_sft.FusarArguments, train_sft.SFTConfig, train_sft.ModelConfig)).parse_args_and_config(
        args=list(options))


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before, model):
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}


def stage_run(simulated, tmp_path, stage, *extra):
    args, training_args, model_args = parse("--dataset_name", str(simulated), "--output_dir", str(tmp_path), *FAST, *extra)
    dataset = train_sft.load_triplets(args.dataset_name)
    torch.manual_seed(0)
    model, processor = train_sft.load_model(args, dataset)
    torch.nn.init.normal_(model.anchor_module.film[-1].weight, std=0.01)  # let gradients reach the first layer
    before = snapshot(model)
    trained, _ = train_sft.run_stage(stage, model, processor, dataset, args, training_args, model_args)
    return before, trained


def test_stage1_trains_the_anchor_module_and_the_language_model(simulated, tmp_path):
    before, model = stage_run(simulated, tmp_path, 1)
    moved = changed(before, model)
    assert {n for n in before if n.startswith("anchor_module.film")} <= moved
    assert any(".language_model." in n for n in moved)
    assert not {n for n in moved if ".visual." in n}  # the vision tower stays frozen


def test_stage1_anchor_module_only(simulated, tmp_path):
    before, model = stage_run(simulated, tmp_path, 1, "--stage1_train_language_model", "false")
    assert {n for n in changed(before, model)} <= {n for n in before if n.startswith("anchor_module.")}
    assert {n for n in before if n.startswith("anchor_module.film")} <= changed(before, model)


def test_stage1_with_lora_trains_lora_and_the_anchor_module(simulated, tmp_path):
    before, model = stage_run(simulated, tmp_path, 1, "--use_peft", "true", "--lora_r", "4")
    moved = changed(before, model)  # LoRA is merged: it shows as changed language-model weights
    assert {n for n in before if n.startswith("anchor_module.film")} <= moved
    assert any(".language_model." in n for n in moved)
    assert all(".language_model." in n or n.startswith("anchor_module.") for n in moved)


def test_stage2_trains_lora_only_with_the_anchor_module_frozen(simulated, tmp_path):
    before, model = stage_run(simulated, tmp_path, 2, "--use_peft", "true", "--lora_r", "4")
    moved = changed(before, model)
    assert moved and all(".language_model." in n and "proj" in n for n in moved)


def test_both_stages_save_a_checkpoint_with_its_card(simulated, tmp_path):
    args, training_args, model_args = parse("--dataset_name", str(simulated), "--output_dir", str(tmp_path / "out"), *FAST)
    output = train_sft.main(args, training_args, model_args)
    model = AutoModelForImageTextToText.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    assert type(model).__name__ == "FusarForConditionalGeneration"
    from evaluate_bench import generate_answers
    import datasets

    rows = list(datasets.load_dataset(str(simulated), split="train").select(range(2)))
    assert len(generate_answers(model, processor, rows, max_new_tokens=4, progress=False)) == 2
    card = (output / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-text-to-text"
    assert metadata["datasets"] == [str(simulated)] and "fusar-gpt" in metadata["tags"]
    assert "Stage 1 (knowledge injection" in card and "Stage 2 (task execution)" in card
    run = json.loads((output / "fusar_run.json").read_text())
    assert {entry["stage"] for entry in run["history"]} == {1, 2} and (output / "loss_curve.png").stat().st_size > 1000


def test_stage2_starts_from_stage1(simulated, tmp_path, monkeypatch):
    args, training_args, model_args = parse("--dataset_name", str(simulated), "--output_dir", str(tmp_path), *FAST)
    seen = []
    real = train_sft.run_stage

    def recording(stage, model, *rest):
        seen.append((stage, {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("anchor_module.film")}))
        result = real(stage, model, *rest)
        seen.append((f"after {stage}", {n: p.detach().clone() for n, p in result[0].named_parameters() if n.startswith("anchor_module.film")}))
        return result

    monkeypatch.setattr(train_sft, "run_stage", recording)
    train_sft.main(args, training_args, model_args)
    (_, start1), (_, end1), (_, start2), (_, end2) = seen
    assert all(torch.equal(end1[n], start2[n]) for n in end1) and not all(torch.equal(start1[n], end1[n]) for n in end1)
    assert all(torch.equal(start2[n], end2[n]) for n in end2)  # frozen in stage 2


@pytest.mark.parametrize("options, message", [
    (["--dataset_name", "/nonexistent/folder"], "cannot load it as a dataset"),
    (["--stage", "3"], "invalid choice"),
])
def test_bad_flags_fail_before_training(tmp_path, options, message, capsys):
    with pytest.raises((ValueError, SystemExit)) as error:
        args = parse("--output_dir", str(tmp_path), *FAST, *options)
        train_sft.main(*args)
    assert message in str(error.value) + capsys.readouterr().err


def test_empty_or_schema_less_datasets_are_refused(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["a", "b"]}).to_parquet(str(tmp_path / "plain" / "data" / "train-0.parquet"))
    with pytest.raises(ValueError, match=r"not a triplet dataset, columns \['anchor_mask'"):
        train_sft.load_triplets(str(tmp_path / "plain"))


def test_the_main_job_runs_end_to_end(tmp_path):
    """A few steps only: whether the tiny model learns is what the full main job measures and prints."""
    results = main_job.run(["--output", str(tmp_path), "--scenes", "16", *FAST])
    assert set(results) == {"untrained", "FUSAR-GPT", "same run, no anchors"}
    assert (tmp_path / "results.md").is_file() and (tmp_path / "fusar-tiny" / "README.md").read_text().count("## Evaluation") == 1
