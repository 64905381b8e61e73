"""fusar-serve soaked: well-behaved clients alone, then the same clients beside hostile ones, on one server.

Well-behaved: each sends one image (PNG data URL) with 64 anchors and waits for 8 greedy tokens, again and again.
Hostile, in turn: an image URL that trickles a byte every 0.3 s, eight PNGs whose headers claim 4000 x 4000 pixels,
an .npz of 1 MB that would load to 1 GiB, 5,000 anchors as JSON, a prompt past the model's context. Printed: the
well-behaved clients' requests, errors and p50 / p99 latency in each phase, the hostile requests' statuses, and the
server's resident memory at the start and end of each phase. Goal: p99 with the hostile clients within 2x of p99
without them; no well-behaved error; memory flat.

Run: python benchmarks/bench_serve_soak.py  (64 clients, 48 of them well-behaved, 90 s a phase; --quick: 3 s, 8 + 4)
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench_serve import body, build, free_port, requests


class Trickle(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(100000):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.3)

    def log_message(self, *args):
        pass


def hostile_bodies(trickle_url: str, made: list[dict]) -> list[dict]:
    png = io.BytesIO()
    Image.new("L", (1, 1)).save(png, "PNG")
    png = png.getvalue()
    header = b"IHDR" + (4000).to_bytes(4, "big") * 2 + png[24:29]
    claimed = png[:12] + header + zlib.crc32(header).to_bytes(4, "big") + png[33:]
    inflating = io.BytesIO()
    np.savez_compressed(inflating, features=np.zeros((2**22, 64), np.float32), positions=np.zeros((2**22, 2), np.float32))
    ordinary = body(made[0], anchors=False, max_tokens=8)
    part = ordinary["messages"][0]["content"][0]

    def image(url: str) -> dict:
        return {"type": "image_url", "image_url": {"url": url}}

    def with_anchors(anchors) -> dict:
        return {"messages": [{"role": "user", "content": [{**part, "anchors": anchors}, {"type": "text", "text": "hi"}]}]}

    return [
        {"messages": [{"role": "user", "content": [image(trickle_url), {"type": "text", "text": "hi"}]}]},
        {"messages": [{"role": "user", "content": [image("data:image/png;base64," + base64.b64encode(claimed).decode())] * 8}]},
        with_anchors({"npz": base64.b64encode(inflating.getvalue()).decode()}),
        with_anchors({"values": [[0.125] * 64] * 5000, "positions": [[0.5, 0.5]] * 5000}),
        {"messages": [{"role": "user", "content": "ship " * 5000}]},
    ]


def rss_mib(pid: int) -> float:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def phase(url: str, pid: int, good: list[dict], bad: list[dict], polite: int, hostile: int, seconds: float) -> dict:
    """`polite` + `hostile` client threads for `seconds`: what the polite ones saw, what the hostile ones got. The
    bodies are encoded once: an attacker's own CPU is not the server's, though here both share one machine."""
    good, bad = [json.dumps(b).encode() for b in good], [json.dumps(b).encode() for b in bad]
    latencies, errors, statuses, stop = [], [], collections.Counter(), time.monotonic() + seconds
    start_rss = rss_mib(pid)

    def client(bodies: list[dict], offset: int, polite_one: bool):
        with httpx.Client(timeout=300) as session:
            n = offset
            while time.monotonic() < stop:
                sent = time.perf_counter()
                response = session.post(f"{url}/v1/chat/completions", content=bodies[n % len(bodies)],
                                        headers={"content-type": "application/json"})
                n += 1
                if polite_one:
                    (latencies if response.status_code == 200 else errors).append(time.perf_counter() - sent)
                else:
                    statuses[response.status_code] += 1

    threads = [threading.Thread(target=client, args=(good, i, True)) for i in range(polite)]
    threads += [threading.Thread(target=client, args=(bad, i, False)) for i in range(hostile)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {"requests": len(latencies), "errors": len(errors), "p50": statistics.median(latencies),
            "p99": latencies[int(0.99 * (len(latencies) - 1))], "hostile": dict(statuses),
            "rss": (start_rss, rss_mib(pid))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s a phase, 8 well-behaved and 4 hostile clients")
    args = parser.parse_args()
    polite, hostile, seconds = (8, 4, 3.0) if args.quick else (48, 16, 90.0)
    trickle = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    trickle.daemon_threads = True
    threading.Thread(target=trickle.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint, *_ = build(Path(folder))
        made = requests(16)
        good = [body(request, anchors=True, max_tokens=8) for request in made]
        bad = hostile_bodies(f"http://127.0.0.1:{trickle.server_port}/slow.png", made)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "serving.cli", str(checkpoint), "--port", str(port),
                                   "--allow-private-media", "--media-deadline", "3"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            while not _healthy(url):
                if server.poll() is not None:
                    raise RuntimeError(server.stderr.read()[-2000:])
                time.sleep(0.3)
            phase(url, server.pid, good, bad, polite, 0, 1)  # warm-up
            alone = phase(url, server.pid, good, bad, polite, 0, seconds)
            beside = phase(url, server.pid, good, bad, polite, hostile, seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"{polite} well-behaved clients, {seconds:.0f} s a phase; then with {hostile} hostile clients beside them")
    print("| phase | requests | errors | p50 s | p99 s | hostile requests (status: count) | RSS MiB start -> end |")
    print("|---|---:|---:|---:|---:|---|---|")
    for name, figures in (("alone", alone), ("beside hostile clients", beside)):
        print(f"| {name} | {figures['requests']} | {figures['errors']} | {figures['p50']:.2f} | {figures['p99']:.2f} | "
              f"{figures['hostile'] or '-'} | {figures['rss'][0]:.0f} -> {figures['rss'][1]:.0f} |")
    print(f"p99 beside hostile clients / alone: {beside['p99'] / alone['p99']:.2f} (goal <= 2)")


def _healthy(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    return False


if __name__ == "__main__":
    main()
