"""Many requests on one model: the requests waiting when the model frees up are generated together, in one
`generate` call over a left-padded batch (their images, anchors and prompts collated), each row streamed and stopped
on its own (EOS, its own max_tokens, its stop strings, or its client leaving).

Why not transformers' continuous batching (`generate_batch`, `transformers serve`): its paged-attention path takes
token ids only (no pixel_values, no 3-D rope positions, no model kwargs such as anchors), and `transformers serve`
runs vision-language models one `generate` at a time. Here a batch forms between calls instead of between steps.

Multi-turn: each finished row's KV cache is kept (a small LRU); a later request whose prompt starts with a kept
conversation, its images included, continues from it and computes only its new tokens (reported in
`usage.prompt_tokens_details.cached_tokens`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

logger = logging.getLogger("fusar_serve")
TOKEN_ALIGNED = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")  # left-padded per row


@dataclass(frozen=True)
class Sampling:
    """What a batch must share: rows with other settings wait for a batch of their own."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Job:
    inputs: dict  # the processor's tensors for this request alone (batch of 1)
    sampling: Sampling
    max_tokens: int
    emit: Callable  # called from the engine's thread with ("delta", text) and ("done", finish_reason, usage) / ("error", message)
    stop: tuple[str, ...] = ()
    cancelled: bool = False  # the client left: the row stops at the next step
    cached_tokens: int = field(default=0, init=False)
    match: tuple | None = field(default=None, init=False)  # (kept conversation, tokens reused) when it continues one

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["attention_mask"].sum())

    @functools.cached_property
    def images(self) -> str:
        """What its image tokens stand for (`images_digest`); the server reads it first while the request is
        prepared, not on the engine's thread (hashing a batch's pixels there took ~2 ms a row, twice)."""
        return images_digest(self.inputs)


class Engine:
    """One worker thread owns the model; `submit` is safe from any thread."""

    def __init__(self, model, processor, max_batch_size: int = 32, cache_entries: int = 16, batch_wait: float = 0.1):
        self.model, self.processor = model, processor
        self.tokenizer = processor.tokenizer
        self.max_batch_size, self.batch_wait = max_batch_size, batch_wait
        self.preparing = 0  # requests received whose images and anchors are still being read (see `preparation`)
        self.preparing_lock = threading.Lock()
        self.kv_cache = ConversationCache(cache_entries)
        self.pending: queue.Queue[Job | None] = queue.Queue()
        self.held: list[Job] = []  # taken from the queue but not compatible with the batch being formed
        self.batches = self.rows = 0  # generate calls and the requests they answered (GET /health)
        self.worker = threading.Thread(target=self._run, name="fusar-engine", daemon=True)
        self.worker.start()

    @contextlib.contextmanager
    def preparation(self):
        """Around a request's reading (its images already fetched): a batch about to start waits for the requests
        being read, never for requests not yet sent nor for other servers, so that one lone request is never held
        back and a slow image URL holds up nobody else."""
        with self.preparing_lock:
            self.preparing += 1
        try:
            yield
        finally:
            with self.preparing_lock:
                self.preparing -= 1

    def submit(self, job: Job) -> None:
        self.pending.put(job)
        if not self.worker.is_alive():  # it stopped after the caller looked: nobody would answer the queue
            self._fail(self._drained())

    def _drained(self) -> list[Job]:
        jobs = []
        with contextlib.suppress(queue.Empty):
            while True:
                jobs.append(self.pending.get_nowait())
        return [job for job in jobs if job is not None]

    @staticmethod
    def _fail(jobs: list[Job]) -> None:
        for job in jobs:  # a stopped worker never leaves a request waiting
            job.emit(("error", "the model's worker has stopped; restart the server"))

    def close(self) -> None:
        self.pending.put(None)
        self.worker.join(timeout=30)

    def _next_batch(self) -> list[Job] | None:
        first = self.held.pop(0) if self.held else self.pending.get()
        if first is None:
            return None
        if self._continuation(first):
            return [first]  # a conversation's cache is one row's: it continues alone
        # Requests being read join this batch while they keep arriving: the wait ends `batch_wait` seconds after
        # the last arrival (32 requests sent at once take ~0.3 s to read on 2 cores; a fixed 0.1 s cut the first
        # batch to ~10 rows), when the batch is full, or after 10 x `batch_wait` in all.
        waiting_for, last = self.pending.qsize() + len(self.held) + 1, time.monotonic()
        latest = last + 10 * self.batch_wait
        while self.preparing and waiting_for < self.max_batch_size:
            if time.monotonic() >= min(last + self.batch_wait, latest):
                break
            time.sleep(0.002)
            if (arrived := self.pending.qsize() + len(self.held) + 1) > waiting_for:
                waiting_for, last = arrived, time.monotonic()
        batch, waiting = [first], []
        while len(batch) < self.max_batch_size:
            try:
                job = self.held.pop(0) if self.held else self.pending.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.pending.put(None)
                break
            (batch if job.sampling == first.sampling and not self._continuation(job) else waiting).append(job)
        self.held = waiting + self.held
        return batch

    def _continuation(self, job: Job) -> bool:
        job.match = self.kv_cache.match(job, self.model.config)
        return job.match is not None

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            held, self.held = self.held, []
            self._fail(held + self._drained())

    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [job for job in batch if not job.cancelled]
            if not batch:
                continue
            self.batches, self.rows = self.batches + 1, self.rows + len(batch)
            try:
                with torch.inference_mode():
                    self._generate(batch)
            except Exception as error:  # the batch's clients get an error; the server goes on
                logger.exception("generation failed")
                for job in batch:
                    job.emit(("error", f"generation failed ({type(error).__name__})"))

    def _generate(self, batch: list[Job]) -> None:
        model, sampling = self.model, batch[0].sampling
        if len(batch) == 1 and batch[0].match is not None:
            inputs, cache = self.kv_cache.continuation(batch[0], model)
        else:
            inputs, cache = collate([job.inputs for job in batch], self.tokenizer.pad_token_id), None
        inputs = {name: value.to(model.device) for name, value in inputs.items()}
        streamer = RowStreamer(batch, self.tokenizer, model.generation_config.eos_token_id)
        options = {"do_sample": sampling.do_sample}
        if sampling.do_sample:
            options |= {"temperature": sampling.temperature, "top_p": sampling.top_p}
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        output = model.generate(
            **inputs, **({"cache": cache} if cache is not None else {}), **options,
            max_new_tokens=max(job.max_tokens for job in batch), streamer=streamer,
            stopping_criteria=StoppingCriteriaList([RowsFinished(streamer)]), return_dict_in_generate=True,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        self.kv_cache.keep(batch, inputs, output, streamer)


def collate(rows: list[dict], pad_token_id: int) -> dict:
    """One batch from single-request processor outputs: token-aligned inputs left-padded, the rest (pixel values,
    image grids, anchor tensors) padded to a common shape with zeros (anchor masks False) and concatenated."""
    batch = {}
    for name in dict.fromkeys(name for row in rows for name in row):
        values = [row[name] for row in rows if name in row]
        if name in TOKEN_ALIGNED:
            length = max(value.shape[1] for value in values)
            fill = pad_token_id if name == "input_ids" else 0
            batch[name] = torch.cat([torch.nn.functional.pad(v, (length - v.shape[1], 0), value=fill) for v in values])
        else:
            shape = [max(sizes) for sizes in zip(*(value.shape[1:] for value in values))]
            padded = []
            for value in values:
                padding = [p for size, target in zip(reversed(value.shape[1:]), reversed(shape)) for p in (0, target - size)]
                padded.append(torch.nn.functional.pad(value, padding) if any(padding) else value)
            batch[name] = torch.cat(padded)
    return batch


class RowStreamer(BaseStreamer):
    """Splits each step's tokens into the batch's rows: text deltas to each row's client, and where each row ends."""

    def __init__(self, jobs: list[Job], tokenizer, eos_token_id):
        self.jobs, self.tokenizer = jobs, tokenizer
        self.eos = set([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id or [])
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.sent = [""] * len(jobs)
        self.finished: list[str | None] = [None] * len(jobs)
        self.generated = [0] * len(jobs)  # tokens each row generated, its EOS included
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.finished[row] is None:
                self._step(row, token)

    def _step(self, row: int, token: int) -> None:
        job = self.jobs[row]
        if job.cancelled:
            self.finished[row] = "cancelled"
            return
        if token in self.eos:
            self._finish(row, "stop", count=True)
            return
        self.tokens[row].append(token)
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        cut = min((text.find(s) for s in job.stop if s in text), default=-1)
        if cut >= 0:
            self._send(row, text[:cut])
            self._finish(row, "stop")
        elif len(self.tokens[row]) >= job.max_tokens:
            self._send(row, text)
            self._finish(row, "length")
        else:
            held = max((len(s) - 1 for s in job.stop), default=0)  # a stop string may be arriving
            self._send(row, text[: len(text) - held] if held else text.rstrip("\ufffd"))

    def _send(self, row: int, text: str) -> None:
        if len(text) > len(self.sent[row]) and text.startswith(self.sent[row]):
            self.jobs[row].emit(("delta", text[len(self.sent[row]):]))
            self.sent[row] = text

    def _finish(self, row: int, reason: str, count: bool = False) -> None:
        self.finished[row] = reason
        job = self.jobs[row]
        generated = self.generated[row] = len(self.tokens[row]) + count  # the EOS token is generated too
        usage = {"prompt_tokens": job.prompt_tokens, "completion_tokens": generated,
                 "total_tokens": job.prompt_tokens + generated,
                 "prompt_tokens_details": {"cached_tokens": job.cached_tokens}}
        job.emit(("done", reason, usage))

    def end(self) -> None:
        for row, reason in enumerate(self.finished):
            if reason is None:  # the batch's longest max_tokens ran out (or generate stopped): say so
                text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
                self._send(row, text)
                self._finish(row, "length")


class RowsFinished(StoppingCriteria):
    """Per row: done once its streamer row has finished, so that a batch ends when its last row does."""

    def __init__(self, streamer: RowStreamer):
        self.streamer = streamer

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor([reason is not None for reason in self.streamer.finished], device=input_ids.device)


class ConversationCache:
    """The KV cache of recently finished rows, keyed by the images and anchors they read (every image token has the
    same id) and the token ids they hold. A prompt with the same images and anchors that starts with a kept row's
    whole prompt continues from its cache: a next turn. (A prompt that merely shares a chat template's opening does
    not: it joins a batch.) Least recently used entries go first."""

    def __init__(self, entries: int):
        self.entries = entries
        # (images digest, token ids) -> (cache, prompt length)
        self.kept: OrderedDict[tuple[str, tuple[int, ...]], tuple[DynamicCache, int]] = OrderedDict()
        self.lock = threading.Lock()

    def match(self, job: Job, config) -> tuple[tuple, int] | None:
        """(key, tokens reused) of the kept conversation this prompt continues, the longest if several."""
        if not self.entries:
            return None
        ids, images = job.inputs["input_ids"][0].tolist(), job.images
        image_token = getattr(getattr(config, "base_config", config), "image_token_id", None)
        last_image = max((i for i, t in enumerate(ids) if t == image_token), default=-1)
        best = None
        with self.lock:
            for key, (_, prompt_length) in self.kept.items():
                if key[0] != images:
                    continue
                reused = min(_common_prefix(key[1], ids), len(ids) - 1)  # at least one token left to compute
                if reused >= prompt_length and reused > last_image and (best is None or reused > best[1]):
                    best = (key, reused)
        return best

    def continuation(self, job: Job, model) -> tuple[dict, DynamicCache]:
        """The job's inputs without its images (they are in the cache) and a copy of the kept cache cut to the
        shared prefix."""
        key, reused = job.match
        with self.lock:
            kept = self.kept[key][0]
            self.kept.move_to_end(key)
        cache = DynamicCache()
        for layer, kept_layer in enumerate(kept.layers):
            cache.update(kept_layer.keys[:, :, :reused].clone(), kept_layer.values[:, :, :reused].clone(), layer)
        job.cached_tokens = reused
        inputs = {name: value for name, value in job.inputs.items()
                  if name != "pixel_values" and not name.startswith("anchor_")}
        inner = getattr(model, "model", None)
        if hasattr(inner, "get_rope_index"):
            # Qwen-VL keeps the 3-D rope offset of the last prefill on the model, one per row of that batch; this
            # conversation's is set here (0 without images: a stale one of a batch of 2 failed the next turn).
            inner.rope_deltas = inner.get_rope_index(
                inputs["input_ids"], image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"],
                mm_token_type_ids=inputs.get("mm_token_type_ids"))[1] if "image_grid_thw" in inputs else \
                torch.zeros(1, 1, dtype=torch.long, device=inputs["input_ids"].device)
        return inputs, cache

    def keep(self, batch: list[Job], inputs: dict, output, streamer: RowStreamer) -> None:
        """Each finished row's cache (its prompt without padding, then the tokens it generated that were fed back)."""
        if not self.entries or output.cache is None:  # `cache`: transformers 5.24 renamed past_key_values
            return
        cache = output.cache
        prompt_length = inputs["input_ids"].shape[1]
        for row, job in list(enumerate(batch))[-self.entries:]:  # rows beyond the cache's size would be evicted
            if streamer.finished[row] in (None, "cancelled"):
                continue
            padding = int((inputs["attention_mask"][row] == 0).sum())
            end = prompt_length + streamer.generated[row] - 1  # the row's last token was never fed back
            key = (job.images, tuple(output.sequences[row, padding:end].tolist()))
            kept = DynamicCache()
            for layer, cache_layer in enumerate(cache.layers):
                kept.update(cache_layer.keys[row : row + 1, :, padding:end].clone(),
                            cache_layer.values[row : row + 1, :, padding:end].clone(), layer)
            with self.lock:
                self.kept[key] = (kept, prompt_length - padding)
                self.kept.move_to_end(key)
                while len(self.kept) > self.entries:
                    self.kept.popitem(last=False)


def images_digest(inputs: dict) -> str:
    """What a request's image tokens stand for: its pixel values, image grids and anchors."""
    digest = hashlib.sha256()
    for name in sorted(set(inputs) - set(TOKEN_ALIGNED)):
        digest.update(name.encode())
        digest.update(inputs[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _common_prefix(a, b) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length
