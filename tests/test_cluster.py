"""Training on several machines without a cluster: two torchrun agents on this machine as two nodes, and the SLURM
script's launch commands, checked by accelerate's own parser and run for real on CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_streaming import free_port
from test_training import FAST, ROOT, optimizer_steps, simulated  # noqa: F401  (a fixture)

SBATCH = ROOT / "configs" / "slurm" / "train.sbatch"
BIN = Path(sys.executable).parent


def training(output: Path, data: Path) -> list[str]:
    return ["--dataset_name", str(data), "--output_dir", str(output), *FAST, "--max_train_examples", "16",
            "--stage", "1"]


def test_two_torchrun_agents_as_two_nodes_train_one_data_parallel_run(simulated, tmp_path):
    """`--nnodes 2 --node_rank 0/1`, rendezvous on 127.0.0.1, one process each: 16 rows at batch 4 per process are
    2 optimizer steps (one process alone: 4)."""
    env, port = dict(os.environ, OMP_NUM_THREADS="1"), free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               str(ROOT / "train_sft.py"), *training(tmp_path / "out", simulated)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for rank in (0, 1)]
    results = [(node.wait(timeout=600), node.communicate()[1]) for node in nodes]
    assert [status for status, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert optimizer_steps(tmp_path / "out") == 2


def fake_cluster(folder: Path, accelerate: str | None = None) -> dict:
    """SLURM's commands on one machine: `scontrol show hostnames` names the nodes, `srun` runs its command once per
    node, all at once, each with its SLURM_NODEID. `accelerate`, when given, stands in for the real one."""
    folder.mkdir()
    (folder / "scontrol").write_text("#!/bin/bash\nprintf '127.0.0.1\\nnode-2\\n'\n")
    (folder / "srun").write_text(
        "#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"
        "for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node \"$@\" & done\n"
        "status=0; for job in $(jobs -p); do wait $job || status=$?; done; exit $status\n")
    if accelerate:
        (folder / "accelerate").write_text(accelerate)
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return dict(os.environ, PATH=f"{folder}:{BIN}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node-[1-2]",
                SLURM_NNODES="2", SLURM_JOB_ID="1", OMP_NUM_THREADS="1")


def sbatch(env: dict, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SBATCH), *arguments], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)


def test_the_slurm_recipe_is_two_nodes_of_eight_gpus():
    header = {line.split()[1].split("=")[0]: line.split()[1].split("=")[1]
              for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH")}
    assert header["--nodes"] == "2" and header["--gpus-per-node"] == "8" and header["--ntasks-per-node"] == "1"
    from accelerate.commands.config.config_args import load_config_from_file

    configs = {name: load_config_from_file(str(ROOT / "configs" / "accelerate" / f"two_nodes_{name}.yaml"))
               for name in ("zero2", "fsdp")}
    for config in configs.values():
        assert (config.num_machines, config.num_processes, config.rdzv_backend) == (2, 16, "static")
    assert configs["zero2"].deepspeed_config["zero_stage"] == 2
    assert configs["zero2"].deepspeed_config["deepspeed_multinode_launcher"] == "standard"  # torchrun, no pdsh
    assert configs["fsdp"].fsdp_config["fsdp_version"] == 2


@pytest.mark.parametrize("config", [None, "configs/accelerate/two_nodes_fsdp.yaml"], ids=["zero2", "fsdp"])
def test_the_slurm_script_gives_each_node_its_rank_and_the_rendezvous(config, tmp_path):
    """Each node's `accelerate launch` command, read by accelerate's own parser: the config, 2 machines, this node's
    rank, 16 processes, node 0 as the static rendezvous, and fusar-train's arguments unchanged."""
    record = tmp_path / "launch"
    recorder = f"#!/bin/bash\nprintf '%s\\0' \"$@\" > {record}.$SLURM_NODEID\n"
    env = fake_cluster(tmp_path / "bin", recorder)
    env.update(SLURM_CPUS_PER_TASK="64", SLURM_GPUS_ON_NODE="8")  # what sbatch sets from the header
    (tmp_path / "bin" / "srun").write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/srun-options\n"
                                           + (tmp_path / "bin" / "srun").read_text().split("\n", 1)[1])
    if config:
        env["ACCELERATE_CONFIG"] = config
    done = sbatch(env, "--config", "configs/qwen2_5_vl_7b.yaml", "--output_dir", "runs/a folder with spaces")
    assert done.returncode == 0, done.stderr
    from accelerate.commands.launch import launch_command_parser

    for node in (0, 1):
        argv = Path(f"{record}.{node}").read_bytes().decode().split("\0")[:-1]
        assert argv[0] == "launch"
        args = launch_command_parser().parse_args(argv[1:])
        assert args.config_file == (config or "configs/accelerate/two_nodes_zero2.yaml")
        assert (args.num_machines, args.machine_rank, args.num_processes) == (2, node, 16)
        assert (args.main_process_ip, args.main_process_port, args.rdzv_backend) == ("127.0.0.1", 29500, "static")
        assert args.module and args.training_script == "train_sft"
        assert args.training_script_args == ["--config", "configs/qwen2_5_vl_7b.yaml", "--output_dir",
                                             "runs/a folder with spaces"]
    assert (tmp_path / "srun-options").read_text().startswith("--kill-on-bad-exit=1 --cpus-per-task=64 bash")


def test_the_slurm_script_trains_on_two_nodes_of_this_machine(simulated, tmp_path):
    """The same script with the real accelerate, the CPU config and one process per node: one data-parallel run
    over both "nodes" (half the optimizer steps of one process)."""
    env = fake_cluster(tmp_path / "bin")
    env.update(ACCELERATE_CONFIG="configs/accelerate/cpu_ddp.yaml", GPUS_PER_NODE="1", MAIN_PROCESS_PORT=str(free_port()))
    done = sbatch(env, *training(tmp_path / "out", simulated))
    assert done.returncode == 0, done.stderr[-4000:]
    assert optimizer_steps(tmp_path / "out") == 2
