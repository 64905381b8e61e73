"""Loading a triplet dataset (a local folder or a Hub id) without ever getting another dataset's cached rows.

`datasets.load_dataset(folder)` keys its cache by the folder's name and a hash that does not cover the files'
contents: after one folder called `data` was loaded, another `data` (another path, other rows) comes back as the
first one's cached rows. A local folder therefore gets a cache of its own, keyed by its path and the size and time
of every file in it; Hub ids keep datasets' own cache, keyed by repository and revision.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets

from command_line import local_or_hub_id


def folder_identity(folder: Path) -> str:
    """A digest of a local folder: its path, and the name, size and time of every file in it."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    identity = [str(folder.resolve())] + [(str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns)
                                          for path in files]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def local_cache_dir(name: str) -> str | None:
    """The cache folder for a local dataset folder, None for a Hub id."""
    folder = Path(name)
    if not folder.is_dir():
        return None
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "fusar-gpt-local" / folder_identity(folder))


def load_triplet_dataset(name: str, split: str | None = None, streaming: bool = False):
    """`datasets.load_dataset(name, split=split)`, from a cache that belongs to exactly this folder's files (streamed:
    read as iterated, nothing cached). A name that is neither a folder nor a Hub id, or a folder datasets cannot read
    (a model, say), is a ValueError."""
    local_or_hub_id(name, "dataset")
    try:
        return datasets.load_dataset(name, split=split, streaming=streaming, cache_dir=local_cache_dir(name))
    except datasets.exceptions.DatasetsError as error:  # generation, missing data files, casts, ...
        raise ValueError(f"{name}: not a dataset that can be loaded ({type(error).__name__}: {error})") from error
