"""The README's Python blocks, each run as a reader copies it: on its own, in a fresh interpreter, in order, in a
folder holding the files they name, against the local Hub serving a replica of Qwen/Qwen2.5-VL-7B-Instruct
(`hub_layouts.py`; the clients in the child processes find it through the environment the fixture sets)."""

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import rasterio
from rasterio.transform import from_origin

from hub_layouts import published  # noqa: F401  (a fixture)

README = Path(__file__).resolve().parents[1] / "README.md"
SERVER_URL = "http://127.0.0.1:8000/v1"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def healthy(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code == 200
    return False


@contextlib.contextmanager
def fusar_serve_for(block: str, folder: Path):
    """A block that calls the server the README starts gets it, as the README starts it, on the checkpoint an
    earlier block saved."""
    if SERVER_URL not in block:
        yield
        return
    server = subprocess.Popen(["fusar-serve", "fusar-gpt-sar", "--port", "8000"], cwd=folder, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.time() + 300
        while not healthy(SERVER_URL.replace("/v1", "/health")):
            assert server.poll() is None, f"fusar-serve exited: {server.stderr.read()[-2000:]}"
            assert time.time() < deadline, "fusar-serve did not answer within 300 s"
            time.sleep(0.2)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_python_block_of_the_readme_runs_on_its_own(published, tmp_path):
    rng = np.random.default_rng(0)
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", width=96, height=80, count=2, dtype="float32",
                       crs="EPSG:32631", transform=from_origin(500000, 5000000, 10, 10)) as scene:
        scene.write(rng.gamma(1, 0.1, (2, 80, 96)).astype(np.float32))  # VV, VH intensity
    features = rng.normal(size=(9, 64)).astype(np.float32)
    np.savez(tmp_path / "scene_aef.npz", features=features / np.linalg.norm(features, axis=1, keepdims=True),
             positions=rng.uniform(size=(9, 2)).astype(np.float32))
    blocks = python_blocks()
    assert len(blocks) >= 2
    for number, block in enumerate(blocks, 1):
        with fusar_serve_for(block, tmp_path):
            result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                                    timeout=600, env=os.environ)
        assert result.returncode == 0, f"README.md python block {number}:\n{result.stderr[-3000:]}"
        assert "Warning" not in result.stderr and "[transformers]" not in result.stderr, f"README.md python block {number} warns:\n{result.stderr[-3000:]}"
        assert result.stdout.strip(), f"README.md python block {number} printed nothing"
    assert Path(tmp_path, "fusar-gpt-sar", "config.json").is_file()
