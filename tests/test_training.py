"""train_sft.py, TRL-style: every parameter that should train changes, every frozen one does not."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText, AutoProcessor

import main_job
import train_sft
from dataset_scripts.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]

FAST = ["--per_device_train_batch_size", "4", "--bf16", "false",
        "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1", "--max_train_examples", "8",
        "--stage1_epochs", "1", "--stage2_epochs", "1", "--stage1_learning_rate", "0.01",
        "--stage2_learning_rate", "0.01", "--tiny_hidden_size", "64"]


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("data") / "sim", scenes=16)


def parse(*options):
    return train_sft.parse_arguments(list(options))


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before, model):
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}


def stage_run(simulated, tmp_path, stage, *extra):
    args, training_args, model_args = parse("--dataset_name", str(simulated), "--output_dir", str(tmp_path), *FAST, *extra)
    dataset = train_sft.load_triplets(args.dataset_name)
    torch.manual_seed(0)
    model, processor = train_sft.load_model(args, dataset, model_args)
    torch.nn.init.normal_(model.anchor_module.film[-1].weight, std=0.01)  # let gradients reach the first layer
    before = snapshot(model)
    trained, _, _ = train_sft.run_stage(stage, model, processor, dataset, args, training_args, model_args)
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


@pytest.mark.parametrize("peft", [[], ["--use_peft", "true", "--lora_r", "4"]], ids=["full", "lora"])
def test_the_vision_projector_trains_when_asked_and_the_tower_stays_frozen(simulated, tmp_path, peft):
    before, model = stage_run(simulated, tmp_path, 2, "--train_vision_projector", "true", *peft)
    visual = {n for n in changed(before, model) if ".visual." in n}
    assert visual == {n for n in before if ".visual.merger." in n}


def test_stage2_trains_lora_only_with_the_anchor_module_frozen(simulated, tmp_path):
    before, model = stage_run(simulated, tmp_path, 2, "--use_peft", "true", "--lora_r", "4")
    moved = changed(before, model)
    assert moved and all(".language_model." in n and "proj" in n for n in moved)


@pytest.mark.parametrize("peft", [[], ["--use_peft", "true", "--lora_r", "4"]], ids=["full", "lora"])
def test_stage2_can_train_the_anchor_module_for_a_dataset_without_captions(simulated, tmp_path, peft):
    before, model = stage_run(simulated, tmp_path, 2, "--stage2_train_anchor_module", "true",
                              "--stage2_tasks", "landcover", *peft)
    moved = changed(before, model)
    assert {n for n in before if n.startswith("anchor_module.film")} <= moved
    assert all(".language_model." in n or n.startswith(("anchor_module.", "vlm.lm_head")) for n in moved), moved


def test_the_anchor_module_learns_at_its_own_rate(simulated, tmp_path):
    args, training_args, model_args = parse("--dataset_name", str(simulated), "--output_dir", str(tmp_path), *FAST,
                                            "--anchor_learning_rate_scale", "10")
    dataset = train_sft.load_triplets(args.dataset_name)
    model, processor = train_sft.load_model(args, dataset, model_args)
    _, _, trainer = train_sft.run_stage(1, model, processor, dataset, args, training_args, model_args)
    anchor = {id(p) for n, p in model.named_parameters() if n.startswith("anchor_module.")}
    rates = {(id(p) in anchor, round(group["initial_lr"], 9)) for group in trainer.optimizer.param_groups
             for p in group["params"]}
    assert rates == {(False, 0.01), (True, 0.1)}


def test_a_new_anchor_module_takes_its_width_sigma_and_dropout_from_the_flags(simulated, tmp_path):
    options = ["--dataset_name", str(simulated), *FAST, "--stage", "1", "--anchor_hidden_size", "48",
               "--anchor_sigma", "1.5", "--anchor_dropout", "0.25"]
    output = train_sft.main(*parse(*options, "--output_dir", str(tmp_path / "new")))
    config = json.loads((output / "config.json").read_text())
    assert (config["anchor_hidden_size"], config["anchor_sigma"], config["anchor_dropout"]) == (48, 1.5, 0.25)
    # A checkpoint has its anchor module: a flag that could only change a new one is refused, not ignored.
    result = subprocess.run([sys.executable, str(ROOT / "train_sft.py"), *options, "--model_name_or_path", str(output),
                             "--output_dir", str(tmp_path / "again")], capture_output=True, text=True)
    assert result.returncode == 2 and "--anchor_sigma, --anchor_hidden_size apply only to a new one" in result.stderr
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("options, message", [
    (["--stage", "2"], "the anchors would do nothing: this run never trains the anchor module"),
    (["--stage1_tasks", "vqa"], "stage 1: the dataset has no vqa rows to train on (its tasks: caption, classification"),
    (["--stage2_tasks", "telepathy"], "--stage2_tasks: unknown tasks ['telepathy']"),
])
def test_a_plan_that_cannot_work_is_refused_before_training(simulated, tmp_path, options, message, capsys):
    code = train_sft.cli(["--dataset_name", str(simulated), "--output_dir", str(tmp_path / "out"), *FAST, *options])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out" / "stage1").exists() and not (tmp_path / "out" / "stage2").exists()


def test_both_stages_save_a_checkpoint_with_its_card(simulated, tmp_path):
    args, training_args, model_args = parse("--dataset_name", str(simulated), "--output_dir", str(tmp_path / "out"), *FAST)
    output = train_sft.main(args, training_args, model_args)
    model = AutoModelForImageTextToText.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    assert type(model).__name__ == "FusarForConditionalGeneration"
    from evaluation.generation import generate_answers
    import datasets

    rows = list(datasets.load_dataset(str(simulated), split="train").select(range(2)))
    assert len(generate_answers(model, processor, rows, max_new_tokens=4, progress=False)) == 2
    card = (output / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-text-to-text"
    assert "datasets" not in metadata and "fusar-gpt" in metadata["tags"]  # a local folder is no Hub id
    assert "`fusar-simulated-sar-triplets`: SAR image - text - AlphaEarth triplets" in card  # its dataset card's name
    assert str(simulated.parent) not in card
    assert "Stage 1 (knowledge injection; tasks: caption)" in card and "Stage 2 (task execution; tasks: " in card
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
    (["--anchor_learning_rate_scale", "0"], "--anchor_learning_rate_scale 0.0: expected a number > 0"),
    (["--anchor_dropout", "1"], "--anchor_dropout 1.0: expected a share in [0, 1)"),
    (["--anchor_sigma", "0"], "--anchor_sigma 0.0: expected a width > 0"),
    (["--anchor_hidden_size", "0"], "--anchor_hidden_size 0: expected a positive width"),
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


def test_a_base_model_folder_with_the_official_chat_template(simulated, tmp_path, tokenizers):
    """A Qwen2.5-VL folder whose chat template has no {% generation %} markers gets TRL's training template."""
    from conftest import build

    model, processor = build(tokenizers, "qwen2_5_vl")
    base = processor.base_processor
    base.chat_template = base.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    model.vlm.save_pretrained(tmp_path / "base")
    base.save_pretrained(tmp_path / "base")
    args, training_args, model_args = parse("--dataset_name", str(simulated), "--output_dir", str(tmp_path / "out"),
                                            "--model", str(tmp_path / "base"), "--stage", "2", *FAST)
    loaded, loaded_processor = train_sft.load_model(args, train_sft.load_triplets(args.dataset_name), model_args)
    assert "{% generation %}" in loaded_processor.chat_template
    trained, log, _ = train_sft.run_stage(2, loaded, loaded_processor, train_sft.load_triplets(args.dataset_name), args,
                                       training_args, model_args)
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert losses and all(loss == loss and loss > 0 for loss in losses)  # finite: assistant tokens were labelled


def launch(launcher: list[str], simulated, output: Path, *options, timeout=300):
    """`train_sft.py` stage 1 on 16 rows, batch 4 per process, started as a user's shell starts it."""
    command = [*launcher, str(ROOT / "train_sft.py"), "--dataset_name", str(simulated), "--output_dir", str(output),
               *FAST, "--max_train_examples", "16", "--stage", "1", *options]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def optimizer_steps(output: Path) -> int:
    return max(entry["step"] for entry in json.loads((output / "fusar_run.json").read_text())["history"])


@pytest.mark.parametrize("launcher", [
    [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"],
    [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
     str(ROOT / "configs" / "accelerate" / "cpu_ddp.yaml"), "--main_process_port", "29532"],
], ids=["torchrun", "accelerate-cpu_ddp"])
def test_two_cpu_processes_share_the_batches(launcher, simulated, tmp_path):
    """On a machine without a GPU, torchrun and the CPU accelerate config give one data-parallel group: 16 rows at
    batch 4 per process are 2 steps (one process alone: 4), and nothing warns that the processes train apart."""
    result = launch(launcher, simulated, tmp_path / "out")
    assert result.returncode == 0, result.stderr[-4000:]
    assert optimizer_steps(tmp_path / "out") == 2
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in result.stderr


def test_a_multi_process_launch_that_starts_one_process_stops(simulated, tmp_path):
    """accelerate's CPU launcher asked for 2 processes starts one (it needs mpirun for more): refused in one line."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    result = launch([accelerate, "launch", "--cpu", "--num_processes", "2"], simulated, tmp_path / "out")
    assert result.returncode != 0 and not (tmp_path / "out").exists()  # accelerate's wrapper adds its traceback
    assert "fusar-train: error: accelerate launch was asked for several processes but started one" in result.stderr


def test_a_single_process_launch_in_a_cluster_environment_is_not_refused(monkeypatch):
    """SLURM and Kubernetes jobs export MASTER_ADDR; accelerate sets ACCELERATE_USE_CPU=False for GPU runs."""
    from training.launch import check_data_parallel

    args = parse("--output_dir", "unused")[1]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    check_data_parallel(args)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # accelerate's CPU launcher asked for several processes
    with pytest.raises(ValueError, match="started one"):
        check_data_parallel(args)


def test_two_ddp_processes_end_with_identical_parameters(simulated, tmp_path):
    """torchrun with 2 CPU processes (gloo); each rank sees half of every batch and all must agree at the end."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path), "--dataset_name", str(simulated),
               "--output_dir", str(tmp_path / "out"), *FAST, "--max_train_examples", "16"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    worlds = [torch.load(tmp_path / f"world{rank}.pt")["world_size"] for rank in (0, 1)]
    assert worlds == [2, 2]  # really two processes in one group
    first, second = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert first["anchor_module.film.2.weight"].abs().sum() > 0  # it trained: that layer starts at zero


def test_a_run_killed_midway_resumes_to_the_same_result(simulated, tmp_path, monkeypatch, capsys):
    """Killed in stage 2 after its second checkpoint, the second cut short by a full disk; `--resume_from_checkpoint
    true` skips the finished stage 1, resumes stage 2 from its first checkpoint and ends where an uninterrupted run
    ends (to float tolerance)."""
    options = ["--dataset_name", str(simulated), *FAST, "--save_strategy", "steps", "--save_steps", "1",
               "--stage2_epochs", "2"]
    whole = train_sft.main(*parse(*options, "--output_dir", str(tmp_path / "whole")))

    class Killed(Exception):
        pass

    class DiesInStage2(train_sft.FusarSFTTrainer):
        def training_step(self, *args, **kwargs):
            if "stage2" in self.args.output_dir and self.state.global_step == 2:
                raise Killed
            return super().training_step(*args, **kwargs)

    monkeypatch.setattr(train_sft, "FusarSFTTrainer", DiesInStage2)
    with pytest.raises(Killed):
        train_sft.main(*parse(*options, "--output_dir", str(tmp_path / "resumed")))
    weights = tmp_path / "resumed" / "stage2" / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    monkeypatch.setattr(train_sft, "FusarSFTTrainer", train_sft.FusarSFTTrainer.__mro__[1])
    stages = []
    real = train_sft.run_stage
    monkeypatch.setattr(train_sft, "run_stage", lambda stage, *rest: stages.append(stage) or real(stage, *rest))
    resumed = train_sft.main(*parse(*options, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "true"))
    assert stages == [2] and "skipping" in capsys.readouterr().err
    history = json.loads((resumed / "fusar_run.json").read_text())["history"]
    assert {entry["stage"] for entry in history} == {1, 2}  # stage 1's losses survive the stop
    expected = AutoModelForImageTextToText.from_pretrained(whole).state_dict()
    got = AutoModelForImageTextToText.from_pretrained(resumed).state_dict()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("recipe", ["qwen2_5_vl_7b.yaml", "qwen2_5_vl_3b.yaml", "tiny_cpu.yaml"])
def test_recipe_configs_parse_with_the_papers_numbers(recipe):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / recipe
    args, training_args, model_args = parse("--config", str(path), "--bf16", "false")  # no bf16 on this CPU
    if recipe.startswith("qwen"):
        assert (model_args.lora_r, model_args.lora_alpha, model_args.use_peft) == (8, 32, True)
        assert (args.stage1_epochs, args.stage1_learning_rate, args.stage2_epochs, args.stage2_learning_rate) == (30, 1e-4, 5, 1e-5)
        assert training_args.warmup_steps == 0.05 and training_args.per_device_train_batch_size > 1
        assert training_args.max_length is None  # image tokens are never truncated


def test_push_to_hub_uploads_the_checkpoint_and_its_card(simulated, tmp_path, local_hub):
    from huggingface_hub import HfApi

    args, training_args, model_args = parse("--dataset_name", str(simulated), "--output_dir", str(tmp_path / "out"),
                                            *FAST, "--push_to_hub", "true", "--hub_model_id", "user/fusar-trained")
    train_sft.main(args, training_args, model_args)
    files = set(HfApi().list_repo_files("user/fusar-trained"))
    assert {"README.md", "model.safetensors", "modeling_fusar.py", "loss_curve.png", "fusar_run.json",
            "processor_config.json"} <= files and not any(f.startswith("stage") for f in files)
    loaded = AutoModelForImageTextToText.from_pretrained("user/fusar-trained")
    assert type(loaded).__name__ == "FusarForConditionalGeneration"


def test_lora_kept_as_an_adapter_names_its_base(simulated, tmp_path):
    from peft import PeftModel

    output = train_sft.main(*parse("--dataset_name", str(simulated), *FAST, "--output_dir", str(tmp_path / "out"),
                                   "--use_peft", "true", "--merge_lora", "false"))
    base = json.loads((output / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(output / "stage1-model")
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), output)
    assert type(model.get_base_model()).__name__ == "FusarForConditionalGeneration"


@pytest.mark.parametrize("name", ["multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp", "cpu_ddp"])
def test_accelerate_configs_load_and_gpu_ones_ask_for_the_process_count(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.num_processes == (2 if name == "cpu_ddp" else -1)  # never 8 processes on whatever machine


def test_a_gpu_config_without_a_process_count_stops_at_once():
    result = subprocess.run([str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                             str(ROOT / "configs" / "accelerate" / "multi_gpu.yaml"), str(ROOT / "train_sft.py"),
                             "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "pass in `--num_processes`" in result.stderr


def test_a_sharded_run_saves_through_the_trainer_and_hands_over_through_files(simulated, tmp_path, monkeypatch):
    """Under FSDP / ZeRO-3 (each process a shard of every weight): saves go through `Trainer.save_model` (which gathers
    the weights; the main process writes) and stage 2 starts from stage 1's saved files. Forced here on one CPU
    process, where the path must end exactly where the in-memory hand-over ends."""
    options = ["--dataset_name", str(simulated), *FAST]
    plain = train_sft.main(*parse(*options, "--output_dir", str(tmp_path / "plain")))
    saves = []
    save_model = train_sft.FusarSFTTrainer.save_model
    monkeypatch.setattr(train_sft.FusarSFTTrainer, "save_model",
                        lambda self, folder=None, *rest, **kw: saves.append(folder) or save_model(self, folder, *rest, **kw))
    monkeypatch.setattr(train_sft, "parameters_sharded", lambda: True)
    monkeypatch.setattr(train_sft.FusarForConditionalGeneration, "enable_vision_feature_cache",
                        lambda *a, **k: pytest.fail("no feature cache with sharded weights (collectives must pair up)"))
    sharded = train_sft.main(*parse(*options, "--output_dir", str(tmp_path / "sharded")))
    assert saves == [str(tmp_path / "sharded" / "stage1-model"), str(tmp_path / "sharded")]
    expected = AutoModelForImageTextToText.from_pretrained(plain).state_dict()
    got = AutoModelForImageTextToText.from_pretrained(sharded).state_dict()
    assert all(torch.equal(got[name], value) for name, value in expected.items())
    assert (sharded / "README.md").is_file() and (sharded / "stage1-model" / "history.json").is_file()
    code = train_sft.cli([*options, "--output_dir", str(tmp_path / "lora"), "--use_peft", "true"])
    assert code == 2 and not (tmp_path / "lora" / "stage1").exists()


def test_the_collator_gives_trls_batches_and_processes_each_example_once(simulated, monkeypatch):
    """Each example processed alone and padded gives exactly TRL's batch; a second epoch comes from the cache, and a
    budget too small for an example keeps nothing."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling as TrlCollator

    args, _, model_args = parse("--dataset_name", str(simulated), *FAST)
    dataset = train_sft.load_triplets(args.dataset_name)
    _, processor = train_sft.load_model(args, dataset, model_args)
    rows = [dict(row) for row in dataset["train"].select(range(6))]
    trl = TrlCollator(processor, assistant_only_loss=True)([{"image": r["image"], "messages": r["messages"]} for r in rows])
    calls = []
    process = TrlCollator.torch_call
    monkeypatch.setattr(TrlCollator, "torch_call", lambda self, examples: calls.append(len(examples)) or process(self, examples))
    ours = train_sft.FusarDataCollator(processor)
    for epoch in range(2):
        batch = ours([dict(row) for row in rows])
        assert set(trl) <= set(batch) and all(torch.equal(batch[key], trl[key]) for key in trl)
        assert batch["anchor_values"].shape[0] == len(rows)
    assert calls == [1] * len(rows)  # once per example, in the first epoch only
    none_kept = train_sft.FusarDataCollator(processor, cache_bytes=0)
    assert all(torch.equal(none_kept([dict(row) for row in rows])[key], trl[key]) for key in trl)
    assert not none_kept.cache
