"""The one guard on destructive writes: a tool replaces a folder only when asked to, and only when everything in it
is something that tool writes. A folder holding the inputs, a thesis or another tool's files is never deleted.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import uuid
from pathlib import Path

# Patterns of relative paths; a folder's path ends with "/".
DATASET_FILES = ("README.md", ".gitattributes", "data/", "data/*.parquet")
RUN_FILES = (  # what fusar-train writes: checkpoints, weights, code, processor, card, plots, run record
    "stage1/*", "stage2/*", "stage1-model/*", "runs/*",
    "*.json", "*.safetensors", "*.bin", "*.py", "*.jinja", "*.txt", "*.model", "*.png", "README.md", ".gitattributes",
)
RUN_MARKERS = ("fusar_run.json", "stage1", "stage2", "stage1-model")  # a model folder alone is not a run


def foreign_entries(folder: Path, owned: tuple[str, ...]) -> list[str]:
    """Paths under `folder` (relative, '/'-separated, a folder's ending with '/') that match none of the `owned`
    patterns (fnmatch: `*` matches across '/'). Foreign folders are not looked into."""
    foreign = []
    for root, folders, files in os.walk(folder):
        entries = [(name, "/") for name in folders] + [(name, "") for name in files]
        for name, end in entries:
            relative = (Path(root) / name).relative_to(folder).as_posix() + end
            if not any(fnmatch.fnmatchcase(relative, pattern) for pattern in owned):
                foreign.append(relative)
        folders[:] = [f for f in folders if (Path(root) / f).relative_to(folder).as_posix() + "/" not in foreign]
    return sorted(foreign)


def check_replaceable(folder, *, overwrite: bool, owned: tuple[str, ...], tool: str, flag: str = "--overwrite",
                      markers: tuple[str, ...] = (), inputs=()) -> bool:
    """Whether `folder` holds something to replace (False: absent or empty). Raises ValueError, naming the folder and
    what is in the way, unless `overwrite` is given, every entry is one that `tool` writes (`owned` patterns), one of
    `markers` (if any) is there, and none of the `inputs` paths is the folder, inside it or around it."""
    folder = Path(folder)
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder; choose another output folder")
    if not any(path.is_file() for path in folder.rglob("*")):  # nothing but empty folders: nothing to lose
        return False
    if not overwrite:
        raise ValueError(f"{folder} exists and is not empty; choose another output folder or pass {flag} to replace it")
    for path in map(Path, inputs):
        if path.exists() and (path.resolve().is_relative_to(folder.resolve())
                              or folder.resolve().is_relative_to(path.resolve())):
            raise ValueError(f"will not replace {folder}: it holds this run's input {path}; choose another output folder")
    if markers and not any((folder / marker).exists() for marker in markers):
        raise ValueError(f"will not replace {folder}: it is not a folder {tool} wrote (none of {', '.join(markers)} is "
                         "there); choose another output folder")
    foreign = foreign_entries(folder, owned)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"will not replace {folder}: it holds files that {tool} does not write ({shown}); "
                         "choose another output folder")
    return True


def replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder `new` at `target`. An old `target` is moved aside to a name of its own first and
    deleted last: a stop at any moment leaves the new folder, or the old one at one of those two places; nothing
    that was there before this call is deleted but the old `target`."""
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
    if target.exists():
        os.replace(target, aside)
    os.replace(new, target)
    if aside.exists():
        shutil.rmtree(aside)
