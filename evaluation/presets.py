"""The field's public benchmarks as `fusar-eval --benchmark` presets: where each task keeps its questions, answers
and images on the Hub, its prompt, and its authors' scoring.

    sarlang-1m              YiminJimmy/SARLANG-1M: SAR captions (complex and concise) and VQA (CSV files inside
                            Text.zip; SARVQA1's images are SARDet-100K's: --images DIR)
    geochat-bench           MBZUAI/GeoChat-Bench: optical scene classification, VQA, region captions (JSONL per
                            task; the images are not on the Hub: --images DIR)
    earthdial               akshaydudhane/EarthDial-Dataset: its SAR subsets (datasets `save_to_disk` folders)

`--benchmark sarlang-1m` runs every task of a preset, `--benchmark sarlang-1m/vqa` one. Only the annotation file
and the sampled examples' images are read: a zip on the Hub is read in ranges (its directory and the members
needed), never downloaded whole, and a member's size is read from the zip's directory before it is inflated.
A task's rows may fall in groups (a question type, a size group): each group is scored in a row of its own, as the
authors' tables are.
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import io
import json
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from evaluation.benchmarks import BenchmarkInfo, sample, sampled

HUB_BLOCK = 256 * 1024  # bytes read per request from a file on the Hub
IMAGE_BYTES = 128 * 2**20  # the largest image file read (the benchmarks' are under 1 MiB; a 30k x 30k PNG is not)
ANNOTATION_BYTES = 512 * 2**20  # the largest annotation file read whole (SARLANG-1M's VQA test CSV is ~10 MiB)


@dataclass(frozen=True)
class PresetTask:
    name: str  # the table's row
    repo: str
    annotations: str  # a CSV or JSONL file in the repo (`archive.zip/member` inside a zip), or an arrow folder
    image: str  # the field naming (or, in arrow, holding) the image
    answer: str | Callable[[dict], str]  # a field, or how the authors derive the reference from a record
    metric: str  # a module in metrics/, `module:configuration` for a configuration of one
    question: str | None = None
    prompt: str = "{question}"
    images: str | None = None  # the repo folder of the images, loose or inside a zip in the repo; None: --images
    images_from: str = ""  # where a user gets the images when they are not on the Hub
    answers_file: str | None = None  # RSVQA: the answers are in a file beside the images
    local_folder: str = ""  # the folder under --images that holds this task's images, when names repeat
    rewrites: tuple[tuple[str, str], ...] = ()  # what the authors' own script replaces in a question
    part: str = ""  # one file of a task read from several (SARVQA1 of SARLANG's VQA): its rows' group
    optional: bool = False  # asked only when its images are given (--images); else left out, and said so
    groups: Callable[[dict], list[str]] | None = None  # the groups a record's row is scored in besides the task
    group_order: tuple[str, ...] = ()  # the order of the groups' rows, as the authors print them
    left_out: tuple[str, ...] = ()  # groups the authors' table leaves out: not asked unless --all-question-types
    note: str = ""  # what a reader of the table must know, printed under it
    without: str = ""  # the note when an optional task is left out


RSVQA_TYPES = ("presence", "comp", "rural_urban", "count", "area")  # GeoChat's table's order, then the others


def _rsvqa_question(name: str, answers_file: str, images_folder: str, asked: str,
                    left_out: tuple[str, ...]) -> PresetTask:
    return PresetTask(f"geochat-bench/{name}", "MBZUAI/GeoChat-Bench", f"{name}.jsonl", "image", "answer",
                      "compact_match", question="text", answers_file=answers_file, local_folder=images_folder,
                      images_from=f"the RSVQA {name[:2].upper()} test set on Zenodo (records 6344334 / 6344367): "
                                  f"its images and {answers_file}",
                      groups=lambda record: [record["type"]], left_out=left_out, group_order=RSVQA_TYPES,
                      note=f"geochat-bench/{name}: {asked} questions, as GeoChat's table; {' and '.join(left_out)} "
                           "questions are left out (--all-question-types asks them). The row without a type is the "
                           "accuracy over all questions asked.")


def _scene(name: str, images_from: str) -> PresetTask:
    # GeoChat's scoring takes the class from the question id's folder (`DenseResidential/..`), not `ground_truth`;
    # its `text` already ends with the instruction ("... Answer in one word or a short phrase."): sent unchanged.
    return PresetTask(f"geochat-bench/{name.lower()}", "MBZUAI/GeoChat-Bench", f"{name}.jsonl", "image",
                      lambda record: record["question_id"].split("/")[0].lower(), "compact_match", question="text",
                      images_from=images_from)


def _ship_groups(record: dict) -> list[str]:
    """EarthDial's rs_detection/eval.py groups: the example's size group, and one box or several in the reference."""
    from fusar_metrics.rotated_boxes.rotated_boxes import boxes

    return [str(record["size_group"]), "single" if len(boxes(record["groundtruth"]) or []) == 1 else "multiple"]


SARLANG_IMAGES = "SARimages_preprocessed/SARimages"
PRESETS: dict[str, list[PresetTask]] = {
    "sarlang-1m": [
        PresetTask("sarlang-1m/caption", "YiminJimmy/SARLANG-1M", "Text.zip/Text/Caption/test/Caption_test.csv",
                   "Image Name", "Caption", "sar_caption:raw", prompt="Describe this SAR image in detail.",
                   images=SARLANG_IMAGES),
        PresetTask("sarlang-1m/caption_concise", "YiminJimmy/SARLANG-1M",
                   "Text.zip/Text/Caption/test/Caption_test1.csv", "Image Name", "Caption", "sar_caption:raw",
                   prompt="Describe this SAR image briefly.", images=SARLANG_IMAGES),
        PresetTask("sarlang-1m/vqa", "YiminJimmy/SARLANG-1M", "Text.zip/Text/VQA/test/SARVQA2_test.csv",
                   "Image Name", "Answer", "answer_contained", question="Question", images=SARLANG_IMAGES,
                   part="SARVQA2", group_order=("SARVQA1", "SARVQA2")),
        PresetTask("sarlang-1m/vqa", "YiminJimmy/SARLANG-1M", "Text.zip/Text/VQA/test/SARVQA1_test.csv",
                   "Image Name", "Answer", "answer_contained", question="Question", part="SARVQA1", optional=True,
                   images_from="SARDet-100K's images (github.com/zcablii/SARDet_100K), as SARLANG-1M's README says",
                   group_order=("SARVQA1", "SARVQA2"),
                   note="sarlang-1m/vqa: over SARVQA1 + SARVQA2, as the paper's VQA figure; each in its own row.",
                   without="sarlang-1m/vqa: SARVQA2 only, which is not the paper's VQA figure (SARVQA1 + SARVQA2); "
                           "SARVQA1 needs SARDet-100K's images: --images DIR."),
    ],
    "geochat-bench": [
        _scene("aid", "AID (captain-whu.github.io/AID)"),
        _scene("UCmerced", "UC Merced Land Use (weegee.vision.ucmerced.edu/datasets/landuse.html)"),
        _rsvqa_question("lrben", "LR_split_test_answers.json", "Images_LR",  # RSVQA's archives' folders
                        "presence, comparison (comp) and rural/urban", ("count",)),
        _rsvqa_question("hrben", "USGS_split_test_phili_answers.json", "Data", "presence and comparison (comp)",
                        ("count", "area")),
        PresetTask("geochat-bench/region_captioning", "MBZUAI/GeoChat-Bench", "region_captioning.jsonl",
                   "image_id", "ground_truth", "region_caption", question="question",
                   prompt="[identify] What is the object present at {question}",
                   images_from="GeoChat_Instruct's images (MBZUAI/GeoChat_Instruct)"),
    ],
    "earthdial": [
        PresetTask("earthdial/ship_dataset_v0", "akshaydudhane/EarthDial-Dataset",
                   "Eardial_downstream_task_datasets/Detection/ship_dataset_v0_test", "jpg", "groundtruth",
                   "rotated_boxes", question="question",  # as EarthDial's detection_test.py asks
                   rewrites=((" [refer] [s1_vh_1] <image> \\n ",
                              "[refer] [s1_vh_1] <image> \\n Give me the location of "),),
                   groups=_ship_groups, group_order=("small", "medium", "large", "single", "multiple"),
                   note="earthdial/ship_dataset_v0: the rows of each size group (small, medium, large, single, "
                        "multiple) are EarthDial's, as its rs_detection/eval.py prints them; the row without a group "
                        "pools them, this project's own aggregate, which EarthDial does not print."),
        # Region captioning test sets: `<name>_test` in EarthDial's docs, `<name>_..._region_captioning...` by the
        # Hub's shards; any one folder matching is read.
        PresetTask("earthdial/ship_region_captioning", "akshaydudhane/EarthDial-Dataset",
                   "Eardial_downstream_task_datasets/Region_captioning/ship_dataset_v0*test*", "jpg", "groundtruth",
                   "region_caption", question="question"),
        PresetTask("earthdial/srsdd", "akshaydudhane/EarthDial-Dataset",
                   "Eardial_downstream_task_datasets/Region_captioning/SRSDD_V1_0*test*", "jpg", "groundtruth",
                   "region_caption", question="question"),
    ],
}


def preset_tasks(name: str) -> list[PresetTask] | None:
    """The tasks `--benchmark name` names (`preset` or `preset/task`), or None when it is no preset."""
    preset, _, task = name.lower().partition("/")
    if preset not in PRESETS:
        return None
    tasks = [t for t in PRESETS[preset] if not task or t.name == f"{preset}/{task}"]
    if not tasks:
        raise ValueError(f"--benchmark {name}: {preset} has no task {task!r}; it has "
                         f"{', '.join(dict.fromkeys(t.name for t in PRESETS[preset]))}")
    return tasks


def asked_tasks(tasks: list[PresetTask], images: str | None, all_groups: bool = False) -> tuple[list, list[str]]:
    """The tasks that are asked, and the notes a reader of the table needs: what each says (or, with `all_groups`,
    that the groups the authors leave out were asked), and which optional tasks were left out for want of images."""
    asked = [task for task in tasks if images or not task.optional]
    notes = [f"{task.name}: every question type asked (--all-question-types), {' and '.join(task.left_out)} too: "
             "the row without a type is not the authors' figure." if task.left_out and all_groups else task.note
             for task in asked if task.note]
    return asked, list(dict.fromkeys(notes + [task.without for task in tasks if task not in asked]))


def preset_rows(task: PresetTask, info: BenchmarkInfo, limit: int | None = None, seed: int = 0,
                images: str | None = None, all_groups: bool = False) -> list[dict]:
    """`fusar-eval` rows of one task: all of them, or `limit` drawn with `seed`; only their images are read. Rows of
    the groups the authors leave out are not asked unless `all_groups`."""
    if not task.annotations.endswith((".csv", ".jsonl")):  # an arrow folder: streamed, images inside
        return _arrow_rows(task, info, limit, seed)
    if task.images is None and images is None:
        raise ValueError(f"--benchmark {task.name}: its images are not on the Hub; get {task.images_from} and give "
                         "their folder with --images DIR")
    records = _records(info, task)
    if task.answers_file:
        records = _with_rsvqa_answers(records, _local_file(images, task.answers_file) if images else None, task)
    if task.left_out and not all_groups:
        records = [record for record in records if not set(task.groups(record)) & set(task.left_out)]
    if not records:
        raise ValueError(f"--benchmark {task.name}: {info.repo}@{info.revision[:8]} {task.annotations} has no "
                         "records" + (f" with an answer in {task.answers_file}" if task.answers_file else ""))
    # A task whose images are on the Hub reads them there; --images is for those that are not.
    find = functools.partial(_repo_image, info, task.images) if task.images else \
        functools.partial(_folder_image, images, task.local_folder)
    return [_row(task, records[i], i, find) for i in sample(len(records), limit, seed)]


def _within(size: int, limit: int, where: str) -> None:
    """A file's size, as its directory or listing states it, checked before a byte of it is read or inflated."""
    if size > limit:
        raise ValueError(f"{where}: {size} bytes, over the {limit} bytes such a file may have here; not read")


def _folder_image(folder: str, under: str, name: str):
    path = _local_file(folder, name, under)

    def load():
        _within(path.stat().st_size, IMAGE_BYTES, str(path))
        return _loaded(path.read_bytes(), str(path))
    return load


@functools.lru_cache(maxsize=64)  # VQA asks several questions of one image, one after another
def _hub_image(info: BenchmarkInfo, path: str, member: str | None) -> Image.Image:
    if member is None:
        with _open(info, path, IMAGE_BYTES) as file:
            return _loaded(file.read(), f"{info.repo} {path}")
    with _open(info, f"{path}/{member}", IMAGE_BYTES) as file:
        return _loaded(file.read(), f"{info.repo} {path}/{member}")


def _row(task: PresetTask, record: dict, position: int, find_image) -> dict:
    where = f"{task.repo} {task.annotations}, record {position}"
    missing = [f for f in (task.image, task.question, task.answer) if isinstance(f, str) and f not in record]
    if missing:
        raise ValueError(f"{where}: no field {missing[0]!r} (the {task.name} preset's layout); it has {sorted(record)}")
    try:
        answer = task.answer(record) if callable(task.answer) else record[task.answer]
        groups = task.groups(record) if task.groups else [task.part] if task.part else []
    except (KeyError, AttributeError) as error:  # a derived reference (GeoChat's class from the question id)
        raise ValueError(f"{where}: no usable field {error} for the reference or its group (the {task.name} "
                         f"preset's layout); it has {sorted(record)}") from None
    question = task.prompt.format(question=record[task.question] if task.question else "")
    image = record[task.image]  # decoded (arrow), bytes, or a name: then a loader, read when its batch is built
    if not isinstance(image, Image.Image):
        image = _loaded(image["bytes"], where) if isinstance(image, dict) else find_image(str(image))
    return {"id": "/".join(filter(None, (task.name, task.part, str(position)))), "task": task.name,
            "metric": task.metric, "groups": groups, "group_order": task.group_order, "image": image, "year": None,
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": str(answer)}]}


def _open(info: BenchmarkInfo, path: str, limit: int | None = None):
    """A file of the repo, read lazily in ranges (HfFileSystem); `archive.zip/member` opens a member of a zip. Its
    size (the Hub's listing, the zip's directory) must be within `limit`; zipfile inflates no more than that size."""
    from huggingface_hub import HfFileSystem

    archive, dot_zip, member = path.partition(".zip/")
    if not dot_zip:  # blocks of 256 KiB, not fsspec's 5 MiB: one image is tens of KiB
        file = HfFileSystem().open(f"datasets/{info.repo}@{info.revision}/{path}", "rb", block_size=HUB_BLOCK)
        size = file.size
    else:
        size = _zip(info, archive + ".zip").getinfo(member).file_size
    if limit is not None:
        _within(size, limit, f"{info.repo}@{info.revision[:8]} {path}")
    return file if not dot_zip else _zip(info, archive + ".zip").open(member)


@functools.lru_cache(maxsize=16)
def _zip(info: BenchmarkInfo, path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(_open(info, path))  # reads the central directory only


def _records(info: BenchmarkInfo, task: PresetTask) -> list[dict]:
    from huggingface_hub.errors import EntryNotFoundError

    where = f"{info.repo}@{info.revision[:8]} {task.annotations}"
    try:
        with _open(info, task.annotations, ANNOTATION_BYTES) as file:
            text = io.TextIOWrapper(file, encoding="utf-8-sig", newline="")  # newline="": csv's own line ends
            if task.annotations.endswith(".csv"):
                return [_csv_record(record, where, number) for number, record in enumerate(csv.DictReader(text), 2)]
            return [_json_record(line, where, number) for number, line in enumerate(text, 1) if line.strip()]
    except (FileNotFoundError, KeyError, EntryNotFoundError):
        raise ValueError(f"--benchmark {task.name}: {info.repo}@{info.revision[:8]} has no {task.annotations} (the "
                         "preset's layout); read it with --image-column / --question-column / --answer-column "
                         "instead") from None
    except (zipfile.BadZipFile, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{where}: unreadable ({error})") from None


def _csv_record(record: dict, where: str, number: int) -> dict:
    if None in record or None in record.values():  # more fields than the header, or fewer
        raise ValueError(f"{where}, line {number}: not as many fields as the header has")
    return {key.strip(): value for key, value in record.items()}  # SARLANG's headers carry stray spaces (" Caption")


def _json_record(line: str, where: str, number: int) -> dict:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise ValueError(f"{where}, line {number}: not a JSON object")
    return record


def _with_rsvqa_answers(records: list[dict], answers_file: Path | None, task: PresetTask) -> list[dict]:
    """GeoChat's RSVQA questions joined with RSVQA's answers by question id (only active questions are scored), each
    with its question type: the record's `category`, else the `type` in RSVQA's questions file beside the answers."""
    if answers_file is None:
        raise ValueError(f"--benchmark {task.name}: give --images, the folder of {task.images_from}")
    answers = _rsvqa_list(answers_file, "answers", "answer")
    questions_file = answers_file.with_name(answers_file.name.replace("_answers", "_questions"))
    repeated = next((id_ for id_, n in Counter(r["question_id"] for r in records if "question_id" in r).items()
                     if n > 1), None)
    if repeated is not None:
        raise ValueError(f"--benchmark {task.name}: {task.annotations} asks the question_id {repeated!r} twice")
    types = {}
    if any("category" not in record for record in records):
        if not questions_file.is_file():
            raise ValueError(f"--benchmark {task.name}: {task.annotations} gives no question type ('category') and "
                             f"{questions_file} is not there (RSVQA's questions file: each question's 'type')")
        types = {key: value["type"] for key, value in _rsvqa_list(questions_file, "questions", "type", "id").items()}
    joined = [{**record, "answer": answers[record["question_id"]]["answer"],
               "type": record.get("category") or types.get(record["question_id"])}
              for record in records if record.get("question_id") in answers]
    untyped = next((record["question_id"] for record in joined if not record["type"]), None)
    if untyped is not None:
        raise ValueError(f"--benchmark {task.name}: the question_id {untyped!r} has no type (no 'category' in "
                         f"{task.annotations}, and none in {questions_file.name})")
    return joined


def _rsvqa_list(path: Path, key: str, field: str, identity: str = "question_id") -> dict:
    """An RSVQA file's active entries by id (`{key: [{identity, field, ...}]}`); an id given twice is refused."""
    try:
        entries = [entry for entry in json.loads(path.read_text())[key] if entry.get("active", True)]
        ids = [entry[identity] for entry in entries]
        if not all(field in entry for entry in entries):
            raise KeyError(field)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{path}: not RSVQA's {key} file (a JSON object whose {key!r} list holds {identity!r} and "
                         f"{field!r})") from None
    repeated = next((id_ for id_, count in Counter(ids).items() if count > 1), None)
    if repeated is not None:
        raise ValueError(f"{path}: the {identity} {repeated!r} is given twice; which {field} is meant is not guessed")
    return dict(zip(ids, entries))


def _repo_image(info: BenchmarkInfo, folder: str, name: str):
    """A loader of `folder/name` in the repo: a loose file, or a member of one of the repo's zips (read in ranges).
    That it exists is checked now, before anything is generated; it is read when its batch is built."""
    path = f"{folder}/{name}"
    files = _repo_files(info)
    if path in files:
        return functools.partial(_hub_image, info, path, None)
    for archive in sorted(f for f in files if f.endswith(".zip")):
        member = _zip_members(info, archive).get(path)
        if member:
            return functools.partial(_hub_image, info, archive, member)
    raise ValueError(f"{info.repo}@{info.revision[:8]}: no image {path}, loose or in a zip (the preset's layout); "
                     "give a folder of the images with --images DIR")


@functools.lru_cache(maxsize=16)
def _zip_members(info: BenchmarkInfo, archive: str) -> dict[str, str]:
    """A zip's members by every path they end with at a folder boundary: `a/b/c.png` answers `b/c.png` and `c.png`."""
    try:
        names = _zip(info, archive).namelist()
    except zipfile.BadZipFile:
        raise ValueError(f"{info.repo}@{info.revision[:8]} {archive}: not a zip archive") from None
    members = {}
    for name in sorted(names, key=len, reverse=True):  # the shortest path wins a suffix both end with
        parts = name.split("/")
        for start in range(len(parts)):
            members["/".join(parts[start:])] = name
    return members


@functools.lru_cache(maxsize=16)
def _repo_files(info: BenchmarkInfo) -> frozenset[str]:
    from huggingface_hub import HfApi

    return frozenset(HfApi().list_repo_files(info.repo, repo_type="dataset", revision=info.revision))


@functools.lru_cache(maxsize=4)
def _local_files(folder: str) -> dict[str, list[Path]]:
    """The files under `folder` (any depth: the benchmarks' archives nest them differently) by name and by stem."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--images {folder}: no such folder")
    index = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            for key in {path.name, path.stem}:
                index.setdefault(key, []).append(path)
    return index


def _local_file(folder: str, name: str, under: str = "") -> Path:
    """The file `name` under `folder`, by stem too (AID's JSONL says .png for its .jpg files; GeoChat's region ids
    have no extension). Of several, those in a folder named `under` (RSVQA's LR and HR images are both 0.tif ...);
    still several is an error, never a guess."""
    found = _local_files(folder).get(Path(name).name) or _local_files(folder).get(Path(name).stem) or []
    if len(found) > 1 and under:
        found = [path for path in found if under in path.parent.parts] or found
    if not found:
        raise ValueError(f"--images {folder}: no file {name}")
    if len(found) > 1:
        raise ValueError(f"--images {folder}: {name} is {found[0]} and {found[1]}; give a folder holding one "
                         "benchmark's images")
    return found[0]


def _loaded(data: bytes, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except OSError as error:
        raise ValueError(f"{where}: not an image ({error})") from None


def _arrow_rows(task: PresetTask, info: BenchmarkInfo, limit: int | None, seed: int) -> list[dict]:
    """An EarthDial `save_to_disk` folder, streamed: its arrow files are read only as far as the sample needs."""
    from datasets import load_dataset

    files = sorted(f for f in _repo_files(info) if fnmatch.fnmatch(f, task.annotations + "/*.arrow"))
    if not files:
        raise ValueError(f"--benchmark {task.name}: {info.repo}@{info.revision[:8]} has no arrow files under "
                         f"{task.annotations} (the preset's layout)")
    folders = sorted({str(Path(f).parent) for f in files})
    if len(folders) > 1:  # the pattern covers the docs' name and the Hub's; both at once would count rows twice
        raise ValueError(f"--benchmark {task.name}: {info.repo}@{info.revision[:8]} has {folders[0]} and "
                         f"{folders[1]}; the preset reads one, and which is meant is not guessed")
    urls = [f"hf://datasets/{info.repo}@{info.revision}/{f}" for f in files]
    stream = load_dataset("arrow", data_files=urls, split="train", streaming=True)
    examples = sampled(stream, limit, seed) if limit else stream
    rows = []
    for position, example in enumerate(examples):
        if task.question in example:  # EarthDial's prompts hold its image tag and escaped newlines
            question = example[task.question]
            for old, new in task.rewrites:
                question = question.replace(old, new)
            example[task.question] = question.replace("<image>", "").replace("\\n", "\n").strip()
        rows.append(_row(task, example, position, None))
    return rows
