"""fusar-serve under load: requests/s, generated tokens/s and p50 / p95 latency at 1, 8 and 32 concurrent clients,

- FUSAR-GPT (every image with 64 explicit anchors, sent as an .npz) against the same server with its base model
  (no anchors): goal ratio >= 0.9;
- against a sequential `generate` loop over the same requests in this process: goal >= 4x at 32 clients, and
  >= 1.5x the 8 clients' figure; beside it, `generate` over 32 requests at a time (their images read beforehand):
  what batching alone can reach here.

The model: language model hidden 512 x 4 layers, vision hidden 256, 224 px images (64 visual tokens), random
weights with the anchor module untrained, so that FUSAR-GPT, its base and the loop generate the same tokens and
lengths (the anchor module still runs; tokens/s counts what was generated). Greedy, `max_tokens` 32. Both
servers run as subprocesses, measured in alternating rounds (the idle one waits on its socket), called by the
openai client from threads; the median of 3 rounds is reported.

Run: python benchmarks/bench_serve.py  (--quick for a smoke run)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from modeling_fusar import FusarForConditionalGeneration
from modeling_fusar.tiny import tiny_qwen2_5_vl, train_tokenizer
from processing import FusarProcessor

QUESTION = "Describe this SAR scene."


def build(folder: Path) -> tuple[Path, Path, FusarForConditionalGeneration, FusarProcessor]:
    torch.manual_seed(0)
    tokenizer = train_tokenizer(family="qwen2_5_vl")
    base, base_processor = tiny_qwen2_5_vl(tokenizer, hidden_size=512, layers=4, vision_hidden=256, vision_depth=2,
                                           min_pixels=224 * 224, max_pixels=224 * 224)
    model, processor = FusarForConditionalGeneration.from_base(base).eval(), FusarProcessor.from_base(base_processor)
    model.save_pretrained(folder / "fusar")
    processor.save_pretrained(folder / "fusar")
    base.save_pretrained(folder / "base")
    base_processor.save_pretrained(folder / "base")
    return folder / "fusar", folder / "base", model, processor


def requests(count: int) -> list[dict]:
    """Distinct images (PNG data URLs) with 64 anchors each (.npz, base64)."""
    rng = np.random.default_rng(0)
    made = []
    for _ in range(count):
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(png, "PNG")
        values = rng.normal(size=(64, 64)).astype(np.float32)
        npz = io.BytesIO()
        np.savez(npz, values=values / np.linalg.norm(values, axis=1, keepdims=True),
                 positions=rng.uniform(size=(64, 2)).astype(np.float32))
        made.append({"image": png.getvalue(), "npz": npz.getvalue()})
    return made


def body(request: dict, anchors: bool, max_tokens: int) -> dict:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(request["image"]).decode()}}
    if anchors:
        part["anchors"] = {"npz": base64.b64encode(request["npz"]).decode()}
    return {"messages": [{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}], "max_tokens": max_tokens}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(checkpoint: Path):
    """An openai client of a fusar-serve process serving `checkpoint`."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "serving.cli", str(checkpoint), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read()[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.3)
        from openai import OpenAI

        yield OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    finally:
        server.terminate()
        server.wait(timeout=30)


def served(client) -> tuple[int, int]:
    """The server's `generate` calls and the requests they answered so far (its /health)."""
    health = httpx.get(str(client.base_url).removesuffix("/v1/") + "/health", timeout=10).json()
    return health["batches"], health["requests"]


def measure(client, bodies: list[dict], clients: int) -> dict:
    """All `bodies` sent by `clients` threads at once: requests/s, tokens/s, latency percentiles, and the mean
    number of requests each `generate` call answered."""
    model = client.models.list().data[0].id
    batches, rows = served(client)

    def ask(request: dict) -> tuple[float, int]:
        start = time.perf_counter()
        reply = client.chat.completions.create(model=model, **request)
        return time.perf_counter() - start, reply.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(ask, bodies))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    batches_after, rows_after = served(client)
    return {"requests/s": len(bodies) / wall, "tokens/s": sum(r[1] for r in results) / wall,
            "p50 s": statistics.median(latencies), "p95 s": latencies[int(0.95 * (len(latencies) - 1))],
            "batch": (rows_after - rows) / max(batches_after - batches, 1)}


def median_figures(rounds: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def generate_loop(model, processor, made: list[dict], max_tokens: int, rows: int = 1) -> float:
    """Requests/s of `generate` over `rows` requests at a time, in order, in this process. One at a time is what a
    script does without a server; 32 at a time, read beforehand, is the most batching can give on this machine."""
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
                                         add_generation_prompt=True)

    def inputs(requests: list[dict]) -> dict:
        data = [np.load(io.BytesIO(request["npz"])) for request in requests]
        return processor(images=[Image.open(io.BytesIO(request["image"])) for request in requests],
                         text=[text] * len(requests), return_tensors="pt",
                         anchors=[{"values": d["values"], "positions": d["positions"]} for d in data])

    groups = [made[i : i + rows] for i in range(0, len(made), rows)]
    read = [inputs(group) for group in groups] if rows > 1 else None
    start = time.perf_counter()
    with torch.inference_mode():
        for i, group in enumerate(groups):
            model.generate(**(read[i] if read else inputs(group)), max_new_tokens=max_tokens, do_sample=False)
    return len(made) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 requests, 8 tokens, 1 and 8 clients, one round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per level and server (the median is reported)")
    args = parser.parse_args()
    count, max_tokens, levels = (8, 8, [1, 8]) if args.quick else (64, 32, [1, 8, 32])
    args.rounds = 1 if args.quick else args.rounds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # while a server runs, this process only sends requests and times them
    with tempfile.TemporaryDirectory() as folder:
        fusar, base, model, processor = build(Path(folder))
        made = requests(count)
        with_anchors = [body(r, True, max_tokens) for r in made]
        without = [body(r, False, max_tokens) for r in made]
        # Both servers up (the idle one waits on its socket); each level measured in alternating rounds, so that
        # the machine's drift hits both alike; the median round is reported.
        with running(fusar) as fusar_client, running(base) as base_client:
            servers = {"FUSAR-GPT": (fusar_client, with_anchors), "base": (base_client, without)}
            for client, bodies in servers.values():
                measure(client, bodies[:2], 1)  # warm-up
            rounds = {(name, clients): [] for name in servers for clients in levels}
            for clients in levels:
                for _ in range(args.rounds):
                    for name, (client, bodies) in servers.items():
                        rounds[name, clients].append(measure(client, bodies, clients))
        served = {name: {clients: median_figures(rounds[name, clients]) for clients in levels} for name in servers}
        torch.set_num_threads(threads)  # the loop gets the machine, as the servers did
        loop = generate_loop(model, processor, made, max_tokens)
        ceiling = generate_loop(model, processor, made, max_tokens, rows=max(levels))
    print(f"{count} requests, {max_tokens} tokens each; sequential generate loop: {loop:.2f} requests/s; generate "
          f"over {max(levels)} requests at a time, read beforehand (the ceiling): {ceiling:.2f} requests/s "
          f"({ceiling / loop:.2f}x the loop)\n")
    print("| clients | model | requests/s | tokens/s | p50 latency s | p95 latency s | mean batch | vs base | "
          "vs generate loop |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for clients in levels:
        for name, figures in served.items():
            f = figures[clients]
            ratio = f["requests/s"] / served["base"][clients]["requests/s"]
            print(f"| {clients} | {name} | {f['requests/s']:.2f} | {f['tokens/s']:.1f} | {f['p50 s']:.2f} | "
                  f"{f['p95 s']:.2f} | {f['batch']:.1f} | {ratio:.2f}x | {f['requests/s'] / loop:.2f}x |")


if __name__ == "__main__":
    main()
