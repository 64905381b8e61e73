"""The README's path from the public archives to a published model (On GPUs), run on CPU: its command lines exactly
as the README gives them, its five settings at a tiny scale, against the harvest replicas and the local Hub."""

import json
import os
import re
import subprocess
from pathlib import Path

import datasets
from huggingface_hub import HfApi, ModelCard

from test_cluster import fake_cluster
from test_streaming import free_port
from test_harvest import replica, sources  # noqa: F401  (fixtures)
from test_training import ROOT

SETTINGS = ("HUB_USER", "HARVEST", "TRAIN", "EVAL", "EVAL_LAUNCH")


def readme_path() -> tuple[list[str], str]:
    """(the settings lines, the commands) of the README's path block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"\*\*The path, from the public archives.*?```bash\n(.*?)```", text, re.S)[1]
    lines = block.splitlines()
    return lines[:len(SETTINGS)], "\n".join(lines[len(SETTINGS):])


def test_the_readme_path_from_a_hub_harvest_to_a_published_model_runs_at_tiny_scale(sources, tmp_path):
    settings, commands = readme_path()
    assert [line.split("=")[0] for line in settings] == list(SETTINGS)
    tiny = {
        "HUB_USER": "user",
        "HARVEST": " ".join(["--source Major-TOM/Core-S1RTC", *sources["args"], "--alphaearth-cache",
                             str(tmp_path / "aef-cache"), "--chip-size 256 --max-chips 12 --start 2021-01-01 --split train"]),
        "TRAIN": "--config configs/tiny_cpu.yaml --max_steps 2 --per_device_train_batch_size 2 --tiny_hidden_size 64",
        "EVAL": "--split train --limit 8 --batch-size 4 --max-new-tokens 8",  # the replicas: two grid cells
        "EVAL_LAUNCH": f"--config_file configs/accelerate/cpu_ddp.yaml --num_processes 2 --main_process_port {free_port()}",
    }
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")
    env = fake_cluster(tmp_path / "bin")
    (tmp_path / "bin" / "sbatch").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec bash "$@"\n')
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    env.update(ACCELERATE_CONFIG="configs/accelerate/cpu_ddp.yaml", GPUS_PER_NODE="1", MAIN_PROCESS_PORT=str(free_port()))
    script = "".join(f"{name}={json.dumps(value)}\n" for name, value in tiny.items()) + commands
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env, cwd=work,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]

    harvested = datasets.load_dataset("user/sar-triplets")
    assert list(harvested) == ["train"] and len(set(harvested["train"]["scene_id"])) == 12  # chips
    run = json.loads((work / "runs" / "fusar-7b" / "fusar_run.json").read_text())
    assert run["fusar"]["dataset_streaming"] and run["fusar"]["dataset_name"] == "user/sar-triplets"
    assert run["world_size"] == 2  # one process on each of the two "nodes", training together
    assert {stage: max(e["step"] for e in run["history"] if e["stage"] == stage) for stage in (1, 2)} == {1: 2, 2: 2}
    results = json.loads((work / "runs" / "fusar-7b-eval" / "results.json").read_text())
    card = ModelCard.load("user/fusar-7b")  # published, with the evaluation's results in it
    assert card.data.to_dict()["model-index"][0]["results"] and results
    assert HfApi().file_exists("user/fusar-7b", "model.safetensors")
    assert HfApi().space_info("user/fusar-gpt-demo").id == "user/fusar-gpt-demo"
    served = HfApi().hf_hub_download("user/fusar-gpt-demo", "checkpoint.txt", repo_type="space")
    assert Path(served).read_text().strip() == "user/fusar-7b"  # the Space serves the published model
