"""Scene inputs from annotation formats: Pascal VOC XML, COCO JSON, JSONL (captions, questions, boxes), and the
authors' manifest. Each becomes a list of `SceneInput`: paths and labels only, read later by the builder."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .tasks import GRID_CELLS, parse_detection_answer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass
class SceneInput:
    scene_id: str
    image: str  # path of the SAR image (GeoTIFF, PNG, JPEG)
    objects: list[dict] = field(default_factory=list)  # {"bbox": [x1, y1, x2, y2] in image pixels, "category"}
    captions: list[str] = field(default_factory=list)
    questions: list[dict] = field(default_factory=list)  # {"question", "answer", "task"}
    year: int | None = None
    sensor: str = ""
    source: str = ""
    anchors: str | None = None  # a per-scene anchor file (the authors' .npz)
    image_size: tuple[int, int] | None = None  # (width, height) to resize the image to, answers being in it
    problem: str = ""  # why this input record cannot be used: the build skips it and reports it


def unusable(where: str, problem: str) -> SceneInput:
    """A placeholder for a malformed input record, so that one bad record is reported, not fatal to the batch."""
    return SceneInput(scene_id=f"unusable {where}", image=where, problem=problem)


def from_voc(folder, *, source: str = "", sensor: str = "") -> list[SceneInput]:
    """Pascal VOC: one XML per image (`filename`, `object/name`, `object/bndbox`), images beside the XML."""
    if not Path(folder).is_dir():
        raise ValueError(f"--voc {folder}: no such folder")
    scenes = []
    for xml in sorted(Path(folder).glob("*.xml")):
        try:
            root = ElementTree.parse(xml).getroot()
            objects = [{"bbox": [float(o.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")],
                        "category": o.find("name").text.strip().lower()} for o in root.iter("object")]
            filename = root.findtext("filename") or xml.with_suffix(".jpg").name
        except (ElementTree.ParseError, AttributeError, ValueError, TypeError) as error:
            scenes.append(unusable(str(xml), f"not a Pascal VOC annotation ({error})"))
            continue
        image = xml.with_name(Path(filename).name)
        if not image.exists():  # VOC files often name a file of the annotator's machine: look beside the XML
            image = next((xml.with_suffix(s) for s in IMAGE_SUFFIXES if xml.with_suffix(s).exists()), image)
        scenes.append(SceneInput(xml.stem, str(image), objects, source=source, sensor=sensor))
    return scenes


def from_coco(annotation_file, image_root=None, *, source: str = "", sensor: str = "") -> list[SceneInput]:
    """COCO detection JSON: `images`, `annotations` (bbox [x, y, w, h]), `categories`."""
    path = Path(annotation_file)
    try:
        coco = json.loads(path.read_text())
        categories = {c["id"]: c["name"] for c in coco["categories"]}
        boxes = defaultdict(list)
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            boxes[a["image_id"]].append({"bbox": [x, y, x + w, y + h], "category": categories[a["category_id"]]})
        root = Path(image_root) if image_root else path.parent
        return [SceneInput(Path(i["file_name"]).stem, str(root / i["file_name"]), boxes[i["id"]],
                           year=i.get("year"), source=source, sensor=sensor) for i in coco["images"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a COCO detection file ({error})") from error


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not {what}: it is not UTF-8 text") from None


def from_jsonl(path, *, source: str = "", sensor: str = "") -> list[SceneInput]:
    """One scene per line: `{"image": ..., "scene_id"?, "caption"?, "captions"?, "questions"?, "objects"?, "year"?,
    "sensor"?, "source"?}`; image paths relative to the file."""
    path = Path(path)
    scenes = []
    for number, line in enumerate(read_text(path, "a scenes JSONL file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            image = path.parent / record["image"]
            scenes.append(SceneInput(
                record.get("scene_id", image.stem), str(image), record.get("objects", []),
                record.get("captions", [record["caption"]] if "caption" in record else []),
                record.get("questions", []), record.get("year"), record.get("sensor", sensor),
                record.get("source", source)))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            scenes.append(unusable(f"{path}:{number}", f"not a scene record ({error!r})"))
    return scenes


def manifest_task(answer: str, question: str = "") -> str:
    """The task of an authors' manifest row: land cover when the question asks about land cover or land use, else
    from the shape of its answer (`None` / `null`, their "no targets", only for a question that asks to detect)."""
    text = answer.strip()
    if re.search(r"land[\s-]?(cover|use)", question, re.IGNORECASE):
        return "landcover"
    if text.lower() in ("none", "null") and not re.search(r"detect|bbox|bounding box", question, re.IGNORECASE):
        return "vqa"
    if text.isdigit():
        return "counting"
    if text in {cell for row in GRID_CELLS for cell in row}:
        return "localization"
    if parse_detection_answer(text) is not None:  # their JSON boxes, maybe fenced; None / null = no targets
        return "detection"
    return "vqa"


def manifest_rows(path: Path) -> list[tuple[str, object]]:
    """(where, row) for every row of the authors' manifest: JSONL, or one JSON list of rows."""
    text = read_text(path, "a manifest (JSONL or a JSON list of rows)")
    if text.lstrip().startswith("["):
        try:
            return [(f"{path}[{index}]", row) for index, row in enumerate(json.loads(text))]
        except ValueError as error:
            raise ValueError(f"{path}: not a JSON list of manifest rows ({error})") from error
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"{path}:{number}", json.loads(line)))
            except ValueError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from error
    return rows


def from_manifest(path, *, task: str | None = None, source: str = "", root=None) -> list[SceneInput]:
    """The authors' manifest: JSONL (or a JSON list) with `id, image, aef, question, answer, coordinate_size` (paths
    relative to the manifest, `aef` their .npz / .npy anchors, answers in the coordinates of the image resized to
    `coordinate_size`; detection answers as they write them, `None` for no targets).

    Paths must lie under `root` (default: the manifest's folder), so that a third party's manifest cannot pull other
    files of this machine into a dataset that may be published. A malformed row is reported and skipped."""
    path = Path(path)
    root = Path(root or path.parent).resolve()
    scenes: dict[str, SceneInput] = {}
    problems = []
    for where, record in manifest_rows(path):
        try:
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            image = confined(path.parent, record["image"], root, "image")
            anchors = confined(path.parent, record["aef"], root, "aef") if record.get("aef") else None
            size, question, answer = coordinate_size(record), record["question"], record["answer"]
            if not isinstance(question, str):
                raise ValueError(f"question must be text, got {question!r}")
            answer = answer if isinstance(answer, str) else "None" if answer is None else json.dumps(answer)  # JSON as text
            entry = {"question": question, "answer": answer, "task": task or manifest_task(answer, question),
                     "id": str(record["id"])}
            scene = scenes.setdefault(image, SceneInput(Path(image).stem, image, source=source, anchors=anchors,
                                                        image_size=size))
            scene.questions.append(entry)
        except (ValueError, KeyError, TypeError) as error:
            problems.append(unusable(where, "not an authors' manifest row (id, image, aef, question, answer, "
                                            f"coordinate_size): {error!r}"))
    return list(scenes.values()) + problems


def confined(folder: Path, value, root: Path, field: str) -> str:
    """`value`, a path relative to `folder`, resolved; a ValueError unless it is text and lies under `root`."""
    if not isinstance(value, str) or not value or Path(value).is_absolute():
        shown = "an absolute path" if isinstance(value, str) and value else repr(value)  # not echoed into a card
        raise ValueError(f"{field} must be a path relative to the manifest, got {shown}")
    resolved = (folder / value).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"{field} {value!r} lies outside the manifest's folder (or --root); paths must stay under it")
    return str(resolved)


def coordinate_size(record: dict) -> tuple[int, int] | None:
    """The square (or [width, height]) the row's answers are given in; None: the image's own size."""
    size = record.get("coordinate_size")
    if size is None:
        return None
    sides = [size, size] if not isinstance(size, (list, tuple)) else list(size)
    whole = [v for v in sides if isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()]
    if len(sides) != 2 or len(whole) != 2 or min(whole) <= 0:
        raise ValueError(f"coordinate_size must be a positive integer or [width, height], got {size!r}")
    return int(sides[0]), int(sides[1])
