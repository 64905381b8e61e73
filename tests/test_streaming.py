"""fusar-train --dataset_streaming: a Hub dataset read as it trains, each process its own shards, and a killed run that
resumes at the example where it stopped."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

import train_sft

from dataset_scripts.simulate import simulate
from training.streaming import Passes, StreamPosition, process_share

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS, SHARDS, BATCH = 12, 4, 2  # per pass, each of 2 processes reads 2 shards of 3 rows: 3 steps of 2 rows
TINY = ["--stage", "1", "--per_device_train_batch_size", str(BATCH), "--report_to", "none", "--logging_steps", "1",
        "--tiny_hidden_size", "64", "--stage1_learning_rate", "0.01", "--lr_scheduler_type", "constant",
        "--dataset_shuffle_buffer", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return simulate(tmp_path_factory.mktemp("data") / "sim", scenes=16)


@pytest.fixture(scope="module")
def captions(data) -> datasets.DatasetDict:
    train = datasets.load_dataset(str(data), split="train").filter(lambda task: task == "caption", input_columns="task")
    return datasets.DatasetDict({"train": train.select(range(CAPTIONS))})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_two_processes(output: Path, record: Path, *options, stop: int = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(ROOT / "tests" / "stream_worker.py"), str(record), str(stop), "--output_dir", str(output), *TINY,
               *options]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def batches(record: Path, rank: int) -> list[list[str]]:
    return [json.loads(line) for line in Path(f"{record}.rank{rank}").read_text().splitlines()]


def test_a_streamed_hub_dataset_is_read_once_per_pass_across_processes_and_resumes_at_the_same_example(
        captions, local_hub, tmp_path):
    """Killed right after its step-4 checkpoint (one step into the second pass) and resumed: each process trains the
    batches an uninterrupted run would (datasets' own order of its share in each pass), and in each pass the two
    processes read disjoint rows that together are every row once."""
    captions.push_to_hub("user/sar-stream", num_shards={"train": SHARDS})
    flags = ["--dataset_name", "user/sar-stream", "--dataset_streaming", "true", "--max_steps", "6",
             "--save_strategy", "steps", "--save_steps", "4"]
    killed = train_two_processes(tmp_path / "run", tmp_path / "killed-ids", *flags, stop=4)
    assert killed.returncode != 0 and (tmp_path / "run" / "stage1" / "checkpoint-4" / "trainer_state.json").exists(), \
        killed.stderr[-4000:]
    position = json.loads((tmp_path / "run" / "stage1" / "checkpoint-4" / "stream_position_1.json").read_text())
    assert position == {"examples": 8, "passes": [6], "rank": 1, "world_size": 2, "recipe": {
        "dataset_name": "user/sar-stream", "tasks": ["caption"], "seed": 42, "dataset_shuffle_buffer": 4}}
    resumed = train_two_processes(tmp_path / "run", tmp_path / "resumed-ids", *flags, "--resume_from_checkpoint",
                                  "true")
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    stream = datasets.load_dataset("user/sar-stream", split="train", streaming=True)
    for rank in (0, 1):
        trained = batches(tmp_path / "killed-ids", rank) + batches(tmp_path / "resumed-ids", rank)
        share = process_share(stream, ("caption",), 42, 4, rank, 2)  # fusar-train's seed and --dataset_shuffle_buffer
        uninterrupted = []
        for number in (0, 1):
            share.set_epoch(number)
            uninterrupted += [row["id"] for row in share]
        assert trained == [uninterrupted[i:i + BATCH] for i in range(0, 12, BATCH)]
    passes = [{rank: [row for batch in (batches(tmp_path / "killed-ids", rank) + batches(tmp_path / "resumed-ids",
                                                                                        rank))[steps] for row in batch]
               for rank in (0, 1)} for steps in (slice(0, 3), slice(3, 6))]
    for rows in passes:
        assert not set(rows[0]) & set(rows[1])  # each process its own rows...
        assert sorted(rows[0] + rows[1]) == sorted(captions["train"]["id"])  # ...and together every row once
    losses = [e["loss"] for e in json.loads((tmp_path / "run" / "fusar_run.json").read_text())["history"] if "loss" in e]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_local_parquet_shards_stream_through_both_stages_in_one_process(data, tmp_path):
    """The shell's view: `fusar-train --dataset_streaming true` on a dataset folder, each stage its own steps
    (--max_steps, --stage2_max_steps), validated on the validation split; a checkpoint records where the stream was."""
    command = [str(Path(sys.executable).with_name("fusar-train")), "--dataset_name", str(data), "--dataset_streaming",
               "true", "--max_steps", "2", "--output_dir", str(tmp_path / "out"), *TINY[2:], "--stage", "both",
               "--stage2_learning_rate", "0.01", "--stage2_max_steps", "1", "--eval_strategy", "steps", "--eval_steps", "1",
               "--save_strategy", "steps", "--save_steps", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-4000:]
    history = json.loads((tmp_path / "out" / "fusar_run.json").read_text())["history"]
    assert [max(e["step"] for e in history if e["stage"] == stage) for stage in (1, 2)] == [2, 1]
    assert any("eval_loss" in entry for entry in history)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "): 2 optimizer steps, lr" in card and "): 1 optimizer step, lr" in card
    position = json.loads((tmp_path / "out" / "stage1" / "checkpoint-2" / "stream_position_0.json").read_text())
    assert position["examples"] == 2 * BATCH and position["world_size"] == 1


def test_each_pass_is_reshuffled_and_a_position_resumes_at_its_example():
    """Passes reads datasets' own pass `e` (`set_epoch(e)`) after pass e - 1, and from a saved position on."""
    share = datasets.Dataset.from_dict({"a": list(range(40))}).to_iterable_dataset(num_shards=4).shuffle(seed=0,
                                                                                                          buffer_size=8)
    own_passes = []
    for number in range(3):
        share.set_epoch(number)
        own_passes.append([row["a"] for row in share])
    assert own_passes[0] != own_passes[1] != own_passes[2]
    stream = Passes(share, StreamPosition())
    rows = iter(stream)
    read = [next(rows)["a"] for _ in range(50)]
    position = stream.position()  # ten rows into the second pass
    assert position.locate() == (1, 10) and position.passes == [40]
    read += [next(rows)["a"] for _ in range(70)]
    assert read == own_passes[0] + own_passes[1] + own_passes[2]
    resumed = Passes(share, position)
    assert [row["a"] for row, _ in zip(resumed, range(70))] == read[50:]
    with pytest.raises(ValueError, match="past the end of that pass"):  # a position the dataset cannot hold
        next(iter(Passes(share, StreamPosition(examples=45, passes=[]))))


@pytest.mark.parametrize("saved, message", [
    (None, "no readable stream_position_0.json for process 0"),
    ("{not json", "no readable stream_position_0.json"),
    ({"examples": -4, "passes": [], "rank": 0, "world_size": 1}, "expected process 0's counts of examples"),
    ({"examples": "8", "passes": [6], "rank": 0, "world_size": 1}, "expected process 0's counts of examples"),
    ({"examples": 8, "passes": [0], "rank": 0, "world_size": 1}, "passes above 0"),
    ({"examples": 8, "passes": [6], "rank": 1, "world_size": 1}, "expected process 0's"),
    ({"examples": 8, "passes": [6], "rank": 0, "world_size": 2}, "saved by 2 processes, resumed by 1"),
    ({"examples": 8, "passes": [6], "rank": 0, "world_size": 1, "extra": 1}, "no readable stream_position_0.json"),
    ({"examples": 8, "passes": 6, "rank": 0, "world_size": 1}, "expected process 0's counts of examples"),
    ({"examples": 8, "passes": [6], "rank": 0, "world_size": 1.0}, "expected process 0's counts of examples"),
    ({"examples": 8, "passes": [6], "rank": 0, "world_size": 1, "recipe": 5}, "expected process 0's counts"),
    ({"examples": 8, "passes": [6], "rank": 0, "world_size": 1, "recipe": {"seed": 42, "tasks": ["caption"]}},
     "the stream was read with seed 42 (now 7); resume with the same, or start a new run"),
])
def test_a_missing_edited_or_foreign_stream_position_is_refused_in_one_line(saved, message, tmp_path):
    if saved is not None:
        (tmp_path / "stream_position_0.json").write_text(saved if isinstance(saved, str) else json.dumps(saved))
    with pytest.raises(ValueError, match=re.escape(message)):
        StreamPosition.load(tmp_path, rank=0, world_size=1, recipe={"seed": 7, "tasks": ["caption"]})


def test_a_streamed_dataset_without_the_triplet_columns_is_refused_before_training(tmp_path):
    datasets.Dataset.from_dict({"text": ["a", "b"]}).to_parquet(str(tmp_path / "plain" / "data" / "train-0.parquet"))
    with pytest.raises(ValueError, match=r"not a triplet dataset, columns \['anchor_mask'"):
        train_sft.load_triplets(str(tmp_path / "plain"), streaming=True)


def test_a_checkpoint_without_every_process_s_stream_position_is_skipped_for_the_one_before(tmp_path, capsys):
    """A kill between one process's position and another's (no barrier between them in the Trainer's save)."""
    from training.checkpoints import latest_whole_checkpoint

    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        for rank in (0, 1):
            StreamPosition(examples=step * 2, passes=[], rank=rank, world_size=2).save(folder)
    (tmp_path / "checkpoint-4" / "stream_position_1.json").unlink()
    assert latest_whole_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert "stream_position_1.json missing" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/*.part"))  # each position written whole, then renamed


def test_a_stage_stopped_after_its_last_checkpoint_is_not_trained_one_step_more(data, tmp_path):
    """Killed between the stage's last checkpoint and its end, then resumed: the Trainer alone would train step
    max_steps + 1 (a stream has no length, so it starts another epoch)."""
    options = ["--dataset_name", str(data), "--dataset_streaming", "true", "--max_steps", "2", "--save_strategy",
               "steps", "--save_steps", "2", "--output_dir", str(tmp_path / "out"), *TINY]
    assert train_sft.cli(options) == 0
    trained = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert train_sft.cli([*options, "--resume_from_checkpoint", "true"]) == 0
    history = json.loads((tmp_path / "out" / "fusar_run.json").read_text())["history"]
    assert max(entry["step"] for entry in history) == 2 and not (tmp_path / "out" / "stage1" / "checkpoint-3").exists()
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == trained  # the checkpoint's weights, as they were


def test_a_stage_without_rows_in_the_stream_is_refused_before_any_folder_exists(data, tmp_path, capsys):
    status = train_sft.cli(["--dataset_name", str(data), "--dataset_streaming", "true", "--max_steps", "1",
                            "--stage2_tasks", "vqa", "--output_dir", str(tmp_path / "out"), *TINY[2:]])
    assert status == 2 and "stage 2: the dataset has no vqa rows to train on (its tasks: caption, classification, " \
                           "counting, detection, landcover, localization)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
