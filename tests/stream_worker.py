"""fusar-train under a launcher, writing the row ids of every batch each process trains on to `<record>.rank<R>`,
and stopping right after the checkpoint of step `stop` is whole (0: never): what tests/test_streaming.py compares."""

import json
import os
import sys

import torch
from transformers import TrainerCallback

import train_sft
from training.collator import FusarDataCollator

record, stop, *argv = sys.argv[1:]
collate = FusarDataCollator.torch_call


def recorded(self, examples):
    with open(f"{record}.rank{os.environ.get('RANK', '0')}", "a") as file:
        file.write(json.dumps([example["id"] for example in examples]) + "\n")
    return collate(self, examples)


class StopAfterSaving(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):  # on each process once its part of the checkpoint is saved
        if state.global_step == int(stop):
            if torch.distributed.is_initialized():  # the main process writes trainer_state.json last: the others
                torch.distributed.barrier()  # wait for it, or their exit would have the launcher kill it first
            os._exit(3)  # as a kill would: no clean-up


class Trainer(train_sft.FusarSFTTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(StopAfterSaving())


FusarDataCollator.torch_call = recorded
train_sft.FusarSFTTrainer = Trainer
raise SystemExit(train_sft.cli(argv))
