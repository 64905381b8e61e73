"""A public benchmark as rows for `fusar-eval`: any image-question-answer or image-caption dataset on the Hub or in a
local folder (parquet, CSV, JSON, an image folder, or a `save_to_disk` folder), through a column mapping; a Hub
dataset is streamed (a `--limit` sample reads a bounded part of it, never the whole dataset).

Its images carry no georeference and no anchors, so FUSAR-GPT answers them without anchors (exactly its base model
until trained): the comparison with `--base` shows what training changed.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from command_line import local_or_hub_id
from dataset_scripts.loading import folder_identity

# --metric -> (the task name the table shows, the metric module in metrics/[:configuration]); the last five are the
# public benchmarks' own rules (evaluation/presets.py)
METRICS = {"exact_match": ("vqa", "sar_exact_match"), "caption": ("caption", "sar_caption"),
           "classification": ("classification", "sar_classification"), "counting": ("counting", "sar_counting"),
           "detection": ("detection", "sar_detection"), "grid": ("localization", "sar_grid"),
           "caption_raw": ("caption_raw", "sar_caption:raw"), "answer_contained": ("answer_contained", "answer_contained"),
           "compact_match": ("compact_match", "compact_match"), "region_caption": ("region_caption", "region_caption"),
           "rotated_boxes": ("rotated_boxes", "rotated_boxes")}
SAMPLE_POOL = 8  # examples read per example drawn by a --limit sample
DEFAULT_PROMPT = "Describe this image."


@dataclass(frozen=True)
class ColumnMapping:
    """Where a benchmark keeps each part of an example. Without a question column every row asks `prompt`."""

    image: str
    answer: str
    question: str | None = None
    prompt: str = DEFAULT_PROMPT
    metric: str = "exact_match"
    split: str = "test"
    config: str | None = None


@dataclass(frozen=True)
class BenchmarkInfo:
    repo: str  # a Hub id, or a local folder's absolute path
    revision: str  # the commit read (a local folder: a digest of its files): what the cache and the report record
    license: str | None

    @property
    def local(self) -> bool:
        return Path(self.repo).is_dir()


def benchmark_info(repo: str, revision: str | None = None, local: bool = True) -> BenchmarkInfo:
    """The benchmark's commit and licence: a Hub dataset's, or (with `local`) a local folder's of that name."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    folder = Path(repo).expanduser()
    if local and folder.is_dir():
        if revision:
            raise ValueError(f"--revision {revision}: not used here ({repo} is a local folder, which has no revisions)")
        card = folder / "README.md"
        licence = _card_license(card) if card.is_file() else None
        return BenchmarkInfo(str(folder.resolve()), folder_identity(folder), licence)
    local_or_hub_id(repo, "--benchmark")

    try:
        info = HfApi().dataset_info(repo, revision=revision)
    except RevisionNotFoundError:
        raise ValueError(f"--revision {revision}: {repo} has no such revision") from None
    except RepositoryNotFoundError:
        raise ValueError(f"--benchmark {repo}: no such dataset on {constants.ENDPOINT} (or it is private: log in with "
                         "`hf auth login`)") from None
    return BenchmarkInfo(repo, info.sha, _license(repo, info))


def _license(repo: str, info) -> str | None:
    """The licence in the dataset card's metadata (the Hub's summary of it, else the card itself), if any."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    if info.card_data is not None and info.card_data.get("license"):
        return info.card_data.get("license")
    try:
        card = hf_hub_download(repo, "README.md", repo_type="dataset", revision=info.sha)
    except EntryNotFoundError:  # no card
        return None
    return _card_license(Path(card))


def _card_license(card: Path) -> str | None:
    from huggingface_hub import metadata_load

    return (metadata_load(card) or {}).get("license")  # (DatasetCard.load warns about a card without metadata)


def benchmark_rows(info: BenchmarkInfo, mapping: ColumnMapping, limit: int | None = None, seed: int = 0) -> list[dict]:
    """The rows `fusar-eval` scores: all of the split, or `limit` of them drawn with `seed` (see `sampled`)."""
    from datasets import Dataset, load_dataset
    from datasets import Image as Image_

    if mapping.metric not in METRICS:
        raise ValueError(f"--metric {mapping.metric}: no such metric; expected one of {sorted(METRICS)}")
    if info.local and _saved_to_disk(Path(info.repo)):
        stream = _readable(info, lambda: _saved_split(Path(info.repo), mapping.split))
    else:
        stream = _readable(info, lambda: load_dataset(info.repo, mapping.config, split=mapping.split, streaming=True,
                                                      revision=None if info.local else info.revision))
    columns = list(stream.features) if stream.features else list(next(iter(stream), {}))
    if not columns:
        raise ValueError(f"{info.repo} ({mapping.split} split): no examples")
    wanted = {"--image-column": mapping.image, "--answer-column": mapping.answer, "--question-column": mapping.question}
    for flag, column in wanted.items():
        if column is not None and column not in columns:
            raise ValueError(f"{info.repo} ({mapping.split} split): no column {column!r} ({flag}); it has {columns}")
    if stream.features and isinstance(stream.features[mapping.image], Image_):
        # Kept as bytes, opened lazily (header only): a split's decoded pixels would not fit in memory.
        stream = stream.cast_column(mapping.image, Image_(decode=False))
    if isinstance(stream, Dataset):  # on disk, read at random: the sample is drawn from all of it
        examples = stream.select(sample(len(stream), limit, seed))
    else:
        examples = sampled(stream, limit, seed) if limit else stream
    task, metric = METRICS[mapping.metric]
    return [benchmark_row(info, mapping, task, position, example) | {"metric": metric}
            for position, example in enumerate(examples)]


def sample(count: int, limit: int | None, seed: int) -> list[int]:
    """`limit` of `count` row indexes drawn with `seed`, in order (all of them without a limit): the first N rows of
    a dataset are often one task or one class."""
    if not limit or limit >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), limit))


def sampled(stream, limit: int, seed: int) -> list[dict]:
    """`limit` examples drawn with `seed` from the first `SAMPLE_POOL` x `limit` examples of the stream's shards
    (files, or their parquet row groups) taken in a seeded random order: the shards past those are never opened.
    (datasets' own `shuffle(buffer_size=...)` opens every shard of the split.)"""
    if stream.num_shards == 1:  # one file is still many shards, its parquet row groups (reshard opens every file)
        stream = stream.reshard()
    generator = random.Random(seed)
    pool = []
    for shard in generator.sample(range(stream.num_shards), stream.num_shards):
        for example in stream.shard(num_shards=stream.num_shards, index=shard):
            pool.append(example)
            if len(pool) == SAMPLE_POOL * limit:
                return generator.sample(pool, limit)
    return generator.sample(pool, min(limit, len(pool)))


def benchmark_row(info: BenchmarkInfo, mapping: ColumnMapping, task: str, position: int, example: dict) -> dict:
    where = f"{info.repo} ({mapping.split} split), row {position}"
    question = mapping.prompt if mapping.question is None else example[mapping.question]
    answer = example[mapping.answer]
    if isinstance(answer, list) and answer and all(isinstance(a, str) for a in answer):
        answer = answer[0]  # several reference captions: the first (our caption metric takes one per example)
    if not isinstance(question, str) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"{where}: the question and answer columns must hold text, got {type(question).__name__} "
                         f"and {type(answer).__name__}")
    return {"id": f"{mapping.split}/{position}", "task": task, "image": _image(example[mapping.image], info, where),
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": str(answer)}],
            "year": None}


def as_image(image) -> Image.Image:
    """A row's image: a preset's rows hold loaders, read when their batch is built (a benchmark's split decoded at
    once would not fit in memory); a column-mapped dataset's, images opened lazily."""
    return image() if callable(image) else image


def _image(value, info: BenchmarkInfo, where: str) -> Image.Image:
    """An image column's value: a decoded image, `{"bytes", "path"}`, or the path of a file in the repository."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"]))
    path = value.get("path") if isinstance(value, dict) else value
    if isinstance(path, str) and path and info.local:
        return Image.open(Path(info.repo) / path)
    if isinstance(path, str) and path:
        from huggingface_hub import hf_hub_download

        return Image.open(hf_hub_download(info.repo, path, repo_type="dataset", revision=info.revision))
    raise ValueError(f"{where}: the image column holds {type(value).__name__}, not an image, image bytes or a path")


def _readable(info: BenchmarkInfo, read):
    """`read()`; what datasets cannot read (a model folder, a broken `save_to_disk`, a missing split) is one line."""
    from datasets.exceptions import DatasetsError

    try:
        return read()
    except (DatasetsError, FileNotFoundError, ValueError) as error:
        raise ValueError(f"--benchmark {info.repo}: not a dataset split that can be read here ({error})") from None


def _saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _saved_split(folder: Path, split: str):
    """One split of a `save_to_disk` folder (a DatasetDict's split, or the one Dataset saved there)."""
    from datasets import DatasetDict, load_from_disk

    saved = load_from_disk(str(folder))
    if not isinstance(saved, DatasetDict):
        return saved
    if split not in saved:
        raise ValueError(f"{folder} has no {split!r} split; it has {', '.join(saved)} (choose one with --split)")
    return saved[split]
