"""Replicas of the public benchmarks' layouts on the local Hub: the same repos, file names, columns and formats as
the originals (SARLANG-1M: CSVs in Text.zip, images zipped; GeoChat-Bench: JSONL per task, images and RSVQA answers
elsewhere; EarthDial: `save_to_disk` folders), a handful of rows and tiny images."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import datasets
from huggingface_hub import HfApi

from conftest import random_image

SCENES = ["DenseResidential", "Farmland", "Harbor"]


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    random_image(seed, 112, 112).save(buffer, "PNG")
    return buffer.getvalue()


def upload(folder: Path, repo: str, card: str) -> str:
    (folder / "README.md").write_text(card)
    api = HfApi()
    api.create_repo(repo, repo_type="dataset")
    api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset")
    return api.dataset_info(repo).sha


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


SARDET_IMAGES = [f"{n:07d}.jpg" for n in (9787, 9788, 9790)]  # SARDet-100K's names, as SARLANG's README shows


def sarlang(folder: Path, images: int = 64) -> str:
    """YiminJimmy/SARLANG-1M: Text.zip (complex and concise captions, SARVQA1 and SARVQA2 as CSV; the caption header
    with its stray space) and SARimages_preprocessed.zip; every image is asked about and captioned. SARVQA1's images
    are SARDet-100K's, not in the repo (`sardet_images`)."""
    folder.mkdir(parents=True)
    names = [f"France_Nice_{n}.png" for n in range(images)]
    with zipfile.ZipFile(folder / "Text.zip", "w") as archive:
        archive.writestr("Text/Caption/test/Caption_test.csv", csv_text(
            ["Image Name", " Caption"], [[name, f"A SAR image of harbour {n} with {n % 5} ships moored at its piers."]
                                         for n, name in enumerate(names)]))
        archive.writestr("Text/Caption/test/Caption_test1.csv", csv_text(
            ["Image Name", " Caption"], [[name, f"A harbour with {n % 5} ships."] for n, name in enumerate(names)]))
        archive.writestr("Text/VQA/test/SARVQA2_test.csv", csv_text(
            ["Image Name", "Question", "Answer"], [[name, "How many ships are there?", str(n % 5)]
                                                   for n, name in enumerate(names)]))
        archive.writestr("Text/VQA/test/SARVQA1_test.csv", csv_text(
            ["Image Name", "Question", "Answer"], [[name, "Is there a ship in the image?", "yes"]
                                                   for name in SARDET_IMAGES]))
    with zipfile.ZipFile(folder / "SARimages_preprocessed.zip", "w") as archive:
        for n, name in enumerate(names):
            archive.writestr(f"SARimages_preprocessed/SARimages/{name}", png(n))
    return upload(folder, "YiminJimmy/SARLANG-1M", "# SARLANG-1M (test replica)\n")


def sardet_images(folder: Path) -> Path:
    """A user's folder of SARDet-100K's images (nested, as its archive is), for SARLANG-1M's SARVQA1."""
    (folder / "JPEGImages").mkdir(parents=True)
    for n, name in enumerate(SARDET_IMAGES):
        random_image(n, 56, 56).save(folder / "JPEGImages" / name)
    return folder


def geochat(folder: Path, images: Path) -> str:
    """MBZUAI/GeoChat-Bench: aid.jsonl, UCmerced.jsonl, lrben.jsonl, hrben.jsonl, region_captioning.jsonl; a local
    folder of their images (nested, as the originals' archives are) with RSVQA's answer files."""
    folder.mkdir(parents=True)
    (images / "AID" / "Images").mkdir(parents=True)
    lines = lambda records: "".join(json.dumps(r) + "\n" for r in records)  # noqa: E731
    # GeoChat-Bench's own text: the instruction, the classes as words, and its answer format, all in `text`.
    scene_text = ("Classify the given image in one of the following classes. Classes: dense residential, farmland, "
                  "harbor. \nAnswer in one word or a short phrase.")
    for name in ("aid", "UCmerced"):
        records = [{"question_id": f"{SCENES[n % 3]}/{name}_{n}.png", "image": f"{name}_{n}.png",
                    "text": scene_text, "ground_truth": f"{SCENES[n % 3]}gt"} for n in range(6)]
        (folder / f"{name}.jsonl").write_text(lines(records))
        for n in range(6):  # AID's files are .jpg where its JSONL says .png
            suffix = "jpg" if name == "aid" else "png"
            random_image(n, 56, 56).save(images / "AID" / "Images" / f"{name}_{n}.{suffix}")
    for name, answers_file, subfolder, types in (
            ("lrben", "LR_split_test_answers.json", "Images_LR", ["presence", "comp", "rural_urban", "count"]),
            ("hrben", "USGS_split_test_phili_answers.json", "Data", ["presence", "comp", "count", "area"])):
        # RSVQA names the images of both sets 0.tif, 1.tif ...: only their folders tell them apart. LRBEN's records
        # carry their question type (`category`); HRBEN's come from RSVQA's questions file, each question's `type`.
        question = "Is there a road?\nAnswer the question using a single word or phrase."
        records = [{"question_id": n, "image": f"{n % 6}.tif", "text": question} for n in range(12)]
        if name == "lrben":
            records = [{**record, "category": types[n % 4]} for n, record in enumerate(records)]
        else:
            questions = [{"id": n, "type": types[n % 4], "question": question, "img_id": n % 6, "active": True}
                         for n in range(12)]
            (images / answers_file.replace("_answers", "_questions")).write_text(json.dumps({"questions": questions}))
        (folder / f"{name}.jsonl").write_text(lines(records))
        answers = [{"id": n, "question_id": n, "answer": "yes" if n % 2 else "no", "active": n != 11} for n in range(12)]
        (images / answers_file).write_text(json.dumps({"answers": answers}))
        (images / subfolder).mkdir()
        for n in range(6):
            random_image(n, 56, 56).save(images / subfolder / f"{n}.tif")
    records = [{"question_id": n, "image_id": f"P{n:04d}", "question": "{<10><20><30><40>|<0>}",
                "ground_truth": f"a small white ship {n}", "type": "region"} for n in range(6)]
    (folder / "region_captioning.jsonl").write_text(lines(records))
    for n in range(6):
        random_image(n, 56, 56).save(images / f"P{n:04d}.png")
    return upload(folder, "MBZUAI/GeoChat-Bench", "---\nlicense: cc-by-4.0\n---\n# GeoChat-Bench (test replica)\n")


SIZE_GROUPS = ["small", "medium", "large"]


def earthdial(folder: Path) -> str:
    """akshaydudhane/EarthDial-Dataset: the SAR ship detection test set (each example with its `size_group`, one
    reference box or two), and the ship and SRSDD region-caption test sets, each a `save_to_disk` folder under
    Eardial_downstream_task_datasets/."""
    root = folder / "Eardial_downstream_task_datasets"
    features = datasets.Features({"jpg": datasets.Image(), "question": datasets.Value("string"),
                                  "groundtruth": datasets.Value("string"), "size_group": datasets.Value("string"),
                                  "__key__": datasets.Value("string")})
    detection = {"jpg": [random_image(n, 56, 56) for n in range(6)],
                 "question": [" [refer] [s1_vh_1] <image> \\n <ref>all ships</ref>"] * 6,  # as stored
                 "groundtruth": [f"[[{10 + n}, 20, {40 + n}, 50, 0]]" + ("[[60, 60, 70, 70, 0]]" if n % 2 else "")
                                 for n in range(6)],
                 "size_group": [SIZE_GROUPS[n % 3] for n in range(6)],
                 "__key__": [f"ship_{n}" for n in range(6)]}
    datasets.Dataset.from_dict(detection, features=features).save_to_disk(
        root / "Detection" / "ship_dataset_v0_test")
    ships = {**detection, "question": ["  [identify] [s1_vh_1] <image> \\n what object is in this location "
                                       "<box>[[33, 75, 42, 96, 0]]</box>"] * 6,  # as EarthDial's results file shows
             "groundtruth": [f"1 {SIZE_GROUPS[n % 3]} ship at the bottom" for n in range(6)]}
    datasets.Dataset.from_dict(ships, features=features).save_to_disk(
        root / "Region_captioning" / "ship_dataset_v0_test_region_captioning")  # the Hub's naming of these sets
    captions = {**detection, "question": ["[identify] [s1_vh_1] <image> \\n {<10><20><40><50>|<0>}"] * 6,
                "groundtruth": [f"a large cargo ship {n} at the pier" for n in range(6)]}
    datasets.Dataset.from_dict(captions, features=features).save_to_disk(
        root / "Region_captioning" / "SRSDD_V1_0_region_captioning_test")  # (or SRSDD_V1_0_test: both are read)
    return upload(folder, "akshaydudhane/EarthDial-Dataset", "---\nlicense: apache-2.0\n---\n# EarthDial (replica)\n")
