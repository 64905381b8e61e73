# Copyright 2026 The fusar-gpt authors. Licensed under the Apache License, Version 2.0.
"""Each image's visual features, computed once per training run while the image encoder does not train.

In the paper's recipe the vision tower is frozen in both stages, so an image's features before the anchors modulate
them are the same in every epoch (stage 1: 30 of them). An entry is keyed by a hash of exactly what the encoder
reads for that image (its pixel values and per-image inputs such as `image_grid_thw`: bytes, shape and dtype) and of
the encoder itself (a fingerprint of its weights when the cache was made): another image, other preprocessing or
another base model cannot meet a stale entry. Entries stay in memory up to `memory_bytes`, then go to a
memory-mapped file up to `disk_bytes`, in a private temporary folder that `close()` removes; no run ever reads
another run's file, so a killed run leaves nothing that is later trusted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import torch


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach().contiguous().cpu()
    return tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


PREFIX = "fusar-vision-cache-"


def remove_orphans(folder: Path) -> None:
    """Cache folders of processes of this machine that no longer run: a `kill -9` skips every cleanup, and a resumed
    run must not leave its predecessor's file behind. Other processes' live caches are left alone."""
    host = socket.gethostname()
    for orphan in folder.glob(f"{PREFIX}*@{host}-*"):
        pid = orphan.name.removeprefix(PREFIX).split("@")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(orphan, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class VisionFeatureCache:
    def __init__(self, encoder_parameters, memory_bytes: int = 2 * 2**30, disk_bytes: int = 50 * 2**30, folder=None):
        self.parameters = list(encoder_parameters)
        self.memory_bytes, self.disk_bytes = memory_bytes, disk_bytes
        self.salt = self.fingerprint()
        self.in_memory: dict[str, torch.Tensor] = {}
        self.on_disk: dict[str, tuple[int, tuple[int, ...], torch.dtype]] = {}
        self.memory_used = self.disk_used = 0
        self.hits = self.misses = 0
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
        remove_orphans(Path(folder or tempfile.gettempdir()))
        self.folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}@{socket.gethostname()}-", dir=folder))
        self.disk_bytes = min(disk_bytes, shutil.disk_usage(self.folder).free // 2)  # never fill the disk
        self.file = open(self.folder / "features.bin", "w+b")

    def fingerprint(self) -> str:
        """The encoder's weights, in a few numbers per tensor (any training step changes them)."""
        with torch.no_grad():
            summary = [(tuple(p.shape), str(p.dtype), float(p.double().sum()), float(p.double().square().sum()))
                       for p in self.parameters]
        return hashlib.blake2b(repr(summary).encode(), digest_size=16).hexdigest()

    @property
    def active(self) -> bool:
        """Only while the encoder does not train: its features are then the same in every epoch."""
        return not any(p.requires_grad for p in self.parameters)

    def key(self, *tensors: torch.Tensor) -> str:
        digest = hashlib.blake2b(self.salt.encode(), digest_size=32)
        for tensor in tensors:
            digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor_bytes(tensor))
        return digest.hexdigest()

    def get(self, key: str, device: torch.device) -> torch.Tensor | None:
        if key in self.in_memory:
            found = self.in_memory[key]
        elif key in self.on_disk:
            offset, shape, dtype = self.on_disk[key]
            nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
            raw = np.memmap(self.file.name, dtype=np.uint8, mode="r", offset=offset, shape=(nbytes,))
            found = torch.from_numpy(np.array(raw)).view(dtype).reshape(shape)
        else:
            self.misses += 1
            return None
        self.hits += 1
        return found.to(device, non_blocking=True)

    def put(self, key: str, features: torch.Tensor) -> None:
        features = features.detach()
        size = features.numel() * features.element_size()
        if self.memory_used + size <= self.memory_bytes:
            self.in_memory[key] = features.to("cpu", copy=True)
            self.memory_used += size
        elif self.disk_used + size <= self.disk_bytes:
            try:
                self.file.seek(self.disk_used)
                self.file.write(tensor_bytes(features))
                self.file.flush()
            except OSError:  # the disk filled up after all: keep what is there, write no more
                self.disk_bytes = self.disk_used
                return
            self.on_disk[key] = (self.disk_used, tuple(features.shape), features.dtype)
            self.disk_used += size
        # beyond both budgets: not kept, computed again next time

    def close(self) -> None:
        self.file.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.in_memory.clear()
        self.on_disk.clear()


def split_images(pixel_values: torch.Tensor, image_inputs: dict) -> list[tuple[torch.Tensor, dict]]:
    """(pixels, inputs) per image of a batch: Qwen-style patch rows split by `image_grid_thw`, else one row per image;
    inputs with a row per image are split too, the others shared."""
    grid = image_inputs.get("image_grid_thw")
    count = len(grid) if grid is not None else pixel_values.shape[0]
    rows = grid.prod(-1).tolist() if grid is not None else [1] * count
    pixels = torch.split(pixel_values, rows, dim=0)
    per_image = {k for k, v in image_inputs.items() if isinstance(v, torch.Tensor) and v.ndim and len(v) == count}
    return [(pixels[i], {k: v[i : i + 1] if k in per_image else v for k, v in image_inputs.items()})
            for i in range(count)]


def join_images(images: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, dict]:
    """The inverse of `split_images` for some of a batch's images."""
    first = images[0][1]
    inputs = {k: torch.cat([i[k] for _, i in images]) if isinstance(v, torch.Tensor) and v.ndim else v
              for k, v in first.items()}
    return torch.cat([pixels for pixels, _ in images]), inputs
