"""Training from a streamed dataset (`--dataset_streaming true`): a Hub dataset or local parquet shards read as they
are trained on, never whole on this disk.

Each process reads its own share (`datasets.distributed.split_dataset_by_node`: whole shards when their number
divides among the processes, else every N-th row), through a buffer shuffle that datasets reseeds every pass
(`set_epoch`). The Trainer's data loader reads `Passes`: one process's share pass after pass, without end, so every
batch is whole and a stage runs by steps. Each checkpoint records how many examples the loader handed out, with the
lengths of the passes they span (`stream_position_<rank>.json`, beside the Trainer's `rng_state_<rank>.pth`); a
resumed run starts at the next example. datasets' own `state_dict`
cannot give that: it loses the shuffle buffer (its docs), so the resumed stream would differ. Here the pass is read
again up to the position instead: no training, no collation, one pass of reading at most.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from datasets.distributed import split_dataset_by_node


def process_share(split: datasets.IterableDataset, tasks: tuple[str, ...], seed: int, buffer_size: int,
                  rank: int, world_size: int) -> datasets.IterableDataset:
    """The stage's rows of `split` that this process trains on, shuffled through a `buffer_size` buffer."""
    rows = split.filter(lambda task: task in tasks, input_columns="task")
    return split_dataset_by_node(rows.shuffle(seed=seed, buffer_size=buffer_size), rank=rank, world_size=world_size)


def tasks_found(split: datasets.IterableDataset, wanted: list[tuple[str, ...]]) -> set[str]:
    """The tasks of `split`'s rows read until each group of `wanted` has a row (all of it when one has none): one
    reader for every stage, since each reader a stream stops costs datasets' pause (README, Development)."""
    found: set[str] = set()
    for row in split.select_columns(["task"]):
        found.add(row["task"])
        if all(found & set(tasks) for tasks in wanted):
            break
    return found


@dataclass
class StreamPosition:
    """How far one process has read: `examples` taken since the start, and the lengths of the passes it spans, in the
    stream that `recipe` makes (dataset, tasks, seed, shuffle buffer: with others, the same count is other rows)."""

    examples: int = 0
    passes: list[int] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1
    recipe: dict = field(default_factory=dict)

    def locate(self) -> tuple[int, int]:
        """(pass, examples into it) of the next example."""
        remaining = self.examples
        for number, length in enumerate(self.passes):
            if remaining < length:
                return number, remaining
            remaining -= length
        return len(self.passes), remaining

    def save(self, checkpoint: str | Path) -> None:
        """Whole or not at all (`training/checkpoints.py` counts a checkpoint without it as cut short)."""
        path = Path(checkpoint, f"stream_position_{self.rank}.json")
        path.with_suffix(".part").write_text(json.dumps(asdict(self)))
        path.with_suffix(".part").replace(path)

    @classmethod
    def load(cls, checkpoint: str | Path, rank: int, world_size: int, recipe: dict | None = None) -> "StreamPosition":
        """This process's position in `checkpoint`; a ValueError when it is missing or from another process count
        (each process's share depends on how many there are)."""
        path = Path(checkpoint, f"stream_position_{rank}.json")
        try:
            position = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: no readable {path.name} for process {rank} "
                             f"(a streamed run's checkpoint records where each process was; {error})") from None
        counts = [position.examples, position.rank, position.world_size,
                  *(position.passes if isinstance(position.passes, list) else [None])]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts) or 0 in position.passes \
                or position.rank != rank or not isinstance(position.recipe, dict):
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: {path.name} holds {asdict(position)}; expected "
                             f"process {rank}'s counts of examples (whole numbers, passes above 0)")
        if position.world_size != world_size:
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: saved by {position.world_size} processes, resumed "
                             f"by {world_size}; a streamed run resumes with the same number of processes")
        changed = {key: (position.recipe.get(key), value) for key, value in (recipe or {}).items()
                   if position.recipe.get(key) != value}
        if changed:
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: the stream was read with "
                             + ", ".join(f"{key} {saved!r} (now {now!r})" for key, (saved, now) in changed.items())
                             + "; resume with the same, or start a new run")
        return position


class Passes(torch.utils.data.IterableDataset):
    """One process's share, pass after pass (each reshuffled), from `start`; `position()` is where the examples
    handed out so far end, for the checkpoint. Read by a data loader without workers, which takes exactly the examples
    of the batches it makes: so the position is right whatever the batch size, accumulation or resumes were."""

    def __init__(self, share: datasets.IterableDataset, start: StreamPosition):
        self.share, self.start = share, start
        self.lengths = list(start.passes)  # of the passes read so far
        self.taken = 0

    def __iter__(self):
        number, offset = self.start.locate()
        while True:
            self.share.set_epoch(number)
            rows = 0
            for rows, example in enumerate(self.share, 1):
                if rows > offset:  # before: read again up to where the checkpoint stopped
                    self.taken += 1
                    yield example
            if rows == 0:
                raise ValueError(f"process {self.start.rank} of {self.start.world_size} has no rows of this stage in "
                                 f"pass {number} (the shards it was dealt hold none; fewer rows than processes?)")
            if rows < offset:
                raise ValueError(f"the checkpoint's stream position ({offset} rows into pass {number}) is past the "
                                 f"end of that pass ({rows} rows): the dataset or the stage's options changed since")
            if number == len(self.lengths):
                self.lengths.append(rows)
            number, offset = number + 1, 0

    def position(self) -> StreamPosition:
        return StreamPosition(self.start.examples + self.taken, list(self.lengths), self.start.rank,
                              self.start.world_size, self.start.recipe)
