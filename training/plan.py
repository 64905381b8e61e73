"""The plan of the two stages, read by the training script, the model card and the checks: which stages run, which
tasks feed each, and whether the anchor module trains in it."""

from __future__ import annotations

from dataset_scripts.names import TASKS


def planned_stages(args) -> tuple[int, ...]:
    return (1, 2) if args.stage == "both" else (int(args.stage),)


def stage_tasks(stage: int, args) -> tuple[str, ...]:
    """Stage 1: `--stage1_tasks` (the paper: captions); stage 2: `--stage2_tasks`, by default every other task."""
    tasks = args.stage1_tasks if stage == 1 else args.stage2_tasks or [t for t in TASKS if t not in args.stage1_tasks]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"--stage{stage}_tasks: unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    return tuple(tasks)


def trains_anchor_module(stage: int, args) -> bool:
    """Stage 1 trains it (knowledge injection); stage 2 freezes it unless asked (the paper freezes it)."""
    return args.use_anchors and (stage == 1 or args.stage2_train_anchor_module)


def stage_steps(stage: int, args, training_args) -> int:
    """The stage's optimizer steps: `--stage{1,2}_max_steps`, else `--max_steps`; 0 or less: it runs by epochs."""
    own = getattr(args, f"stage{stage}_max_steps")
    return training_args.max_steps if own is None else own
