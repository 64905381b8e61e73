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


def from_voc(folder, *, source: str = "", sensor: str = "") -> list[SceneInput]:
    """Pascal VOC: one XML per image (`filename`, `object/name`, `object/bndbox`), images beside the XML."""
    scenes = []
    for xml in sorted(Path(folder).glob("*.xml")):
        try:
            root = ElementTree.parse(xml).getroot()
            objects = [{"bbox": [float(o.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")],
                        "category": o.find("name").text.strip().lower()} for o in root.iter("object")]
            filename = root.findtext("filename") or xml.with_suffix(".jpg").name
        except (ElementTree.ParseError, AttributeError, ValueError) as error:
            raise ValueError(f"{xml}: not a Pascal VOC annotation ({error})") from error
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


def from_jsonl(path, *, source: str = "", sensor: str = "") -> list[SceneInput]:
    """One scene per line: `{"image": ..., "scene_id"?, "caption"?, "captions"?, "questions"?, "objects"?, "year"?,
    "sensor"?, "source"?}`; image paths relative to the file."""
    path = Path(path)
    scenes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
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
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a scene record ({error})") from error
    return scenes


def manifest_task(answer: str, question: str = "") -> str:
    """The task of an authors' manifest row, from the shape of its answer (`None` / `null`, their "no targets", only
    for a question that asks to detect)."""
    text = answer.strip()
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
    text = path.read_text()
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


def from_manifest(path, *, task: str | None = None, source: str = "") -> list[SceneInput]:
    """The authors' manifest: JSONL (or a JSON list) with `id, image, aef, question, answer, coordinate_size` (paths
    relative to the manifest, `aef` their .npz / .npy anchors, answers in the coordinates of the image resized to
    `coordinate_size`; detection answers as they write them, `None` for no targets)."""
    path = Path(path)
    scenes: dict[str, SceneInput] = {}
    for where, record in manifest_rows(path):
        try:
            size = record.get("coordinate_size")
            size = None if size is None else (int(size), int(size)) if isinstance(size, (int, float)) else tuple(size)
            image = path.parent / record["image"]
            scene = scenes.setdefault(str(image), SceneInput(
                image.stem, str(image), source=source, anchors=str(path.parent / record["aef"]) if record.get("aef") else None,
                image_size=size))
            answer = record["answer"]  # JSON values (their box lists, null) as JSON text
            answer = answer if isinstance(answer, str) else "None" if answer is None else json.dumps(answer)
            scene.questions.append({"question": record["question"], "answer": answer,
                                    "task": task or manifest_task(answer, str(record["question"])),
                                    "id": str(record["id"])})
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{where}: not an authors' manifest row "
                             f"(id, image, aef, question, answer, coordinate_size) ({error!r})") from error
    return list(scenes.values())
