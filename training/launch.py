"""What the machine and the launcher give a run: defaults that run on the machine at hand, and a check that the
processes a launcher started really train together."""

from __future__ import annotations

import os

import torch

# Where launchers put the number of processes: torchrun, and MPI (accelerate's multi-CPU route through mpirun).
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def machine_defaults() -> dict:
    """SFTConfig defaults for this machine. TRL turns bf16 on, which transformers refuses on a machine without a GPU
    unless the run is declared a CPU run; declared so, processes started by torchrun also become one data-parallel
    (gloo) group instead of N separate trainings. Gradient checkpointing is off unless asked for (the GPU recipes
    ask): TRL's default spells it by the name transformers 5 deprecates, which warned on every run."""
    defaults = {"gradient_checkpointing": None}
    if not torch.accelerator.is_available():
        defaults.update(use_cpu=True, bf16=False, dataloader_pin_memory=False)  # pinning needs an accelerator
    return defaults


def check_data_parallel(training_args) -> None:
    """Several processes that would not share the batches, or a multi-process launch that started one: stop before
    any work, in one line, rather than train N copies into one folder."""
    from transformers.training_args import ParallelMode

    # accelerate's CPU launcher (ACCELERATE_USE_CPU true) sets MASTER_ADDR only when asked for several processes.
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and os.environ.get("MASTER_ADDR") \
            and not any(name in os.environ for name in WORLD_SIZE_VARIABLES):
        raise ValueError("accelerate launch was asked for several processes but started one (its CPU launcher starts "
                         "several only through mpirun); use configs/accelerate/cpu_ddp.yaml or "
                         "`torchrun --nproc_per_node N train_sft.py ...`")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and training_args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise ValueError(f"{world} processes were launched but would each train alone (no GPU for each, and "
                         "--use_cpu false); drop --use_cpu false, or launch one process")
