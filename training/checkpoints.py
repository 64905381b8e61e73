"""Where a run resumes: a checkpoint is used only when it is whole, and an explicit one only when it belongs to the run.

The Trainer writes a checkpoint's weights, optimizer and RNG state first and `trainer_state.json` last; a stop (or a
full disk) can still leave a file cut short. A checkpoint counts as whole when its state parses, every safetensors
file's header covers the file, and every torch file's zip directory is readable (it sits at the end of the file).
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def problem_with(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from, or None when it is whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no readable trainer_state.json (written last: the save did not finish)"
    if (checkpoint / "stream_position_0.json").is_file():  # a streamed run: every process's position, or none
        try:
            world_size = int(json.loads((checkpoint / "stream_position_0.json").read_text())["world_size"])
        except (OSError, ValueError, KeyError, TypeError):
            return "stream_position_0.json is unreadable"
        missing = [f"stream_position_{rank}.json" for rank in range(world_size)
                   if not (checkpoint / f"stream_position_{rank}.json").is_file()]
        if missing:
            return f"{', '.join(missing)} missing (another process stopped before saving where it was)"
    from safetensors import SafetensorError, safe_open

    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):  # DeepSpeed / FSDP keep shards in subfolders
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt"):
                    pass
            elif path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
                return f"{path.relative_to(checkpoint)} is cut short or corrupt"
        except (SafetensorError, OSError) as error:
            return f"{path.relative_to(checkpoint)} is cut short or corrupt ({error})"
    return None


def latest_whole_checkpoint(stage_dir: Path) -> str | None:
    """The newest whole `checkpoint-N` in `stage_dir`; newer broken ones are skipped, with a warning."""
    found = sorted((int(m[1]), p) for p in stage_dir.glob("checkpoint-*") if (m := CHECKPOINT.match(p.name)) and p.is_dir())
    for _, checkpoint in reversed(found):
        problem = problem_with(checkpoint)
        if problem is None:
            return str(checkpoint)
        print(f"fusar-train: skipping {checkpoint}: {problem}", file=sys.stderr)
    return None


def check_explicit_checkpoint(value: str, output_dir: Path, stage: str) -> None:
    """A ValueError unless `value` is a whole checkpoint of this run (`<output_dir>/stage1|stage2/checkpoint-N`) that
    the requested `stage` ("1", "2" or "both") can resume from."""
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    stages = {f"stage{n}": n for n in ("1", "2")}
    parent = path.resolve().parent
    owner = next((n for name, n in stages.items() if parent == (output_dir / name).resolve()), None)
    if owner is None or not CHECKPOINT.match(path.name):
        raise ValueError(f"--resume_from_checkpoint {value}: not a checkpoint of this run; expected "
                         f"{output_dir}/stage1/checkpoint-N or {output_dir}/stage2/checkpoint-N (or 'true' for the latest)")
    if stage not in ("both", owner):
        raise ValueError(f"--resume_from_checkpoint {value} is a stage-{owner} checkpoint, but --stage is {stage}")
    if owner == "2" and stage == "both" and not (output_dir / "stage1-model" / "history.json").exists():
        raise ValueError(f"--resume_from_checkpoint {value}: stage 1 of this run did not finish "
                         f"({output_dir}/stage1-model is incomplete)")
    problem = problem_with(path)
    if problem:
        raise ValueError(f"--resume_from_checkpoint {value}: {problem}")
