"""Run one training stage under torchrun and write this rank's parameters (what the DDP test compares)."""

import os
import sys

import torch

import train_sft

if __name__ == "__main__":
    output, *options = sys.argv[1:]
    args, training_args, model_args = train_sft.parse_arguments(options)
    dataset = train_sft.load_triplets(args.dataset_name)
    torch.manual_seed(0)
    model, processor = train_sft.load_model(args, dataset, model_args)
    trained, _, _ = train_sft.run_stage(1, model, processor, dataset, args, training_args, model_args)
    rank = int(os.environ.get("RANK", 0))
    torch.save({k: v.detach().cpu() for k, v in trained.state_dict().items()}, f"{output}/rank{rank}.pt")
    torch.save({"world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1},
               f"{output}/world{rank}.pt")
