"""Answers to evaluation rows: batched greedy generation (left padding, KV cache), the ablations' anchors, and the
prediction cache, split across the processes `accelerate launch` or `torchrun` started.

Data-parallel: the rows still to answer are cut into the batches one process would make, and process r answers
batches r, r + N, r + 2N ... . Each batch is then computed exactly as one process computes it, so greedy answers
equal a one-process run's with as many threads as each process has (torchrun gives each one thread unless
OMP_NUM_THREADS says otherwise; on CPUs another thread count may change the last bits, and then an answer). Each process appends to its own part of the cache;
the main process gathers every answer, folds the parts into one file and is the only one to write reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dataset_scripts.schema import row_anchors
from evaluation.benchmarks import as_image
from processing.anchors import collate_anchor_sets


def processes():
    """The processes a launcher started (this one alone without a launcher), as Accelerate sees them. Declared CPU
    processes where there is no accelerator: Accelerate then joins them in one gloo group instead of leaving each
    alone (it looks for a GPU group only)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.accelerator.is_available())


def variant_anchors(rows, variant: str, seed: int = 0) -> list | None:
    """The anchors each row gets in an ablation: as given, none, or another scene's (a fixed derangement of the
    scenes, so that no row keeps its own scene's anchors)."""
    if variant == "no anchors":
        return None
    anchors = [row_anchors(row) for row in rows]
    scenes = list(dict.fromkeys(row.get("scene_id", row["id"]) for row in rows))
    if variant == "shuffled anchors" and len(scenes) > 1:
        random.Random(seed).shuffle(scenes)
        donor_scene = {scene: scenes[(i + 1) % len(scenes)] for i, scene in enumerate(scenes)}
        first_row = {}
        for i, row in enumerate(rows):
            first_row.setdefault(row.get("scene_id", row["id"]), i)
        anchors = [anchors[first_row[donor_scene[row.get("scene_id", row["id"])]]] for row in rows]
    return anchors


@torch.no_grad()
def generate_answers(model, processor, rows, batch_size: int = 16, max_new_tokens: int = 48,
                     use_anchors: bool = True, progress: bool = True, anchors=None) -> list[str]:
    """Greedy answers (left padding, KV cache) to each row's user turn. `anchors` (one AnchorSet per row) replaces
    the rows' own; `use_anchors=False` gives none."""
    model.eval()
    padding_side, processor.tokenizer.padding_side = processor.tokenizer.padding_side, "left"  # restored below
    if use_anchors and anchors is None:
        anchors = [row_anchors(row, model.config.anchor_dim) for row in rows]
    # Rows of one task have answers of similar length: batched together, no batch waits long for one long answer.
    order = sorted(range(len(rows)), key=lambda i: rows[i].get("task", ""))
    rows = [rows[i] for i in order]
    anchors = None if anchors is None else [anchors[i] for i in order]
    answers = []
    for start in tqdm(range(0, len(rows), batch_size), desc="generating", disable=not progress):
        batch = rows[start : start + batch_size]
        prompts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["messages"][0]["content"]}]}],
            add_generation_prompt=True) for row in batch]
        inputs = processor(images=[as_image(row["image"]) for row in batch], text=prompts, padding=True,
                           return_tensors="pt")
        if use_anchors and anchors is not None:
            inputs.update(collate_anchor_sets(anchors[start : start + batch_size], [row["year"] for row in batch]))
        inputs = inputs.to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers += processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    processor.tokenizer.padding_side = padding_side
    in_order = [""] * len(answers)
    for position, index in enumerate(order):
        in_order[index] = answers[position].strip()
    return in_order


class PredictionCache:
    """`<variant>.jsonl`: a header line with the setting (model, data, generation), then one answer per line, each
    with a checksum of the setting, the row's id and the answer. A cache made with another setting is set aside,
    a line cut short by a stop or edited by hand is asked anew. Process r of several appends to
    `<variant>.part<r>.jsonl`; all parts are read back, so a killed run resumes with any number of processes."""

    FORMAT = 2  # answers with checksums (a cache from before them is asked anew)

    def __init__(self, path: Path, setting: dict):
        self.path, self.header = path, json.dumps({"setting": setting, "format": self.FORMAT}, sort_keys=True)

    def _check(self, row_id: str, prediction: str) -> str:
        return hashlib.sha256(json.dumps([self.header, row_id, prediction]).encode()).hexdigest()[:16]

    def line(self, row_id: str, prediction: str) -> str:
        return json.dumps({"id": row_id, "prediction": prediction, "check": self._check(row_id, prediction)}) + "\n"

    def parts(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.stem}.part*.jsonl"))

    def read(self) -> dict[str, str]:
        done, refused = {}, 0
        for file in [self.path, *self.parts()]:
            lines = file.read_text().splitlines() if file.exists() else []
            if not lines or lines[0] != self.header:
                continue
            for line in lines[1:]:
                try:
                    record = json.loads(line)
                    row_id, prediction = record["id"], record["prediction"]
                    if record["check"] == self._check(row_id, prediction):
                        done[row_id] = prediction
                        continue
                except (ValueError, KeyError, TypeError):
                    pass
                refused += 1
        if refused:
            print(f"{self.path}: {refused} cached answers are not as this run wrote them (cut short or edited): "
                  "asked anew", file=sys.stderr)
        return done

    def writer(self, rank: int, world: int):
        """The file this process appends to, started with the header when it is new or was made otherwise, and cut
        back to its last whole line (a stop may have left half of one, which the next line must not join)."""
        path = self.path if world == 1 else self.path.with_name(f"{self.path.stem}.part{rank}.jsonl")
        text = path.read_bytes() if path.exists() else b""
        if not text.startswith((self.header + "\n").encode()):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.header + "\n")
        elif not text.endswith(b"\n"):
            with path.open("r+b") as file:
                file.truncate(text.rindex(b"\n") + 1)
        return path.open("a")

    def write_all(self, ids: list[str], answers: dict[str, str]) -> None:
        """Every answer in one file (written beside and renamed: a stop never leaves it half written); parts go."""
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(self.header + "\n" + "".join(self.line(i, answers[i]) for i in ids))
        os.replace(partial, self.path)
        for part in self.parts():
            part.unlink()


def cached_answers(cache: PredictionCache, model, processor, rows, anchors, use_anchors: bool, batch_size: int,
                   max_new_tokens: int) -> list[str]:
    """Answers for every row: those in the cache, and the others generated batch by batch (this process's share of
    the batches when several run), each batch appended as it is done, so that a stop loses at most one batch."""
    from accelerate.utils import broadcast_object_list, gather_object

    state = processes()
    # The main process reads the cache (every process's part of it) and all split the same rows from what it found.
    done = broadcast_object_list([cache.read() if state.is_main_process else None])[0]
    todo = sorted((i for i, row in enumerate(rows) if row["id"] not in done), key=lambda i: rows[i]["task"])
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    mine, new, failure = batches[state.process_index :: state.num_processes], [], None
    with cache.writer(state.process_index, state.num_processes) as file:
        try:
            for chunk in tqdm(mine, desc=cache.path.stem, disable=not mine or not state.is_main_process):
                answers = generate_answers(model, processor, [rows[i] for i in chunk], batch_size, max_new_tokens,
                                           use_anchors, progress=False,
                                           anchors=None if anchors is None else [anchors[i] for i in chunk])
                for i, answer in zip(chunk, answers):
                    new.append((rows[i]["id"], answer))
                    file.write(cache.line(rows[i]["id"], answer))
                file.flush()
        except Exception as error:  # a bad image, no memory left: the others must hear of it, not wait for this one
            failure = error
    gathered = gather_object([(new, None if failure is None else f"{type(failure).__name__}: {failure}")])
    if failure is not None:
        raise failure
    stopped = next((error for _, error in gathered if error), None)
    if stopped:
        raise ValueError(f"another process stopped ({stopped}); the answers so far are kept in {cache.path.parent}")
    done.update(pair for answers, _ in gathered for pair in answers)
    if state.is_main_process and (state.num_processes > 1 or cache.parts()):
        cache.write_all([row["id"] for row in rows], done)
    state.wait_for_everyone()
    return [done[row["id"]] for row in rows]
