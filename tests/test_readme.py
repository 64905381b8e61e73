"""The README's Python blocks, each run as a reader copies it: on its own, in a fresh interpreter, in order, in a
folder holding the files they name, against the local Hub serving a replica of Qwen/Qwen2.5-VL-7B-Instruct
(`hub_layouts.py`; the clients in the child processes find it through the environment the fixture sets)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from hub_layouts import published  # noqa: F401  (a fixture)

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.MULTILINE | re.DOTALL)


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
        result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                                timeout=600, env=os.environ)
        assert result.returncode == 0, f"README.md python block {number}:\n{result.stderr[-3000:]}"
        assert "Warning" not in result.stderr and "[transformers]" not in result.stderr, f"README.md python block {number} warns:\n{result.stderr[-3000:]}"
        assert result.stdout.strip(), f"README.md python block {number} printed nothing"
    assert Path(tmp_path, "fusar-gpt-sar", "config.json").is_file()
