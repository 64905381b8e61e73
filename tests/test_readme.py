"""The README's Python blocks, run as written, in order, in one namespace (one user's session), in a folder holding
the files they name, against the local Hub serving a replica of Qwen/Qwen2.5-VL-7B-Instruct (`hub_layouts.py`)."""

import re
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from hub_layouts import published  # noqa: F401  (a fixture)

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_every_python_block_of_the_readme_runs(published, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    with rasterio.open("scene.tif", "w", driver="GTiff", width=96, height=80, count=2, dtype="float32",
                       crs="EPSG:32631", transform=from_origin(500000, 5000000, 10, 10)) as scene:
        scene.write(rng.gamma(1, 0.1, (2, 80, 96)).astype(np.float32))  # VV, VH intensity
    features = rng.normal(size=(9, 64)).astype(np.float32)
    np.savez("scene_aef.npz", features=features / np.linalg.norm(features, axis=1, keepdims=True),
             positions=rng.uniform(size=(9, 2)).astype(np.float32))
    blocks = python_blocks()
    assert len(blocks) >= 2
    session = {}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md python block {number}", "exec"), session)
    assert isinstance(session["answer"], str) and Path("fusar-gpt-sar", "config.json").is_file()
    assert capsys.readouterr().out.strip() == session["result"][0]["generated_text"].strip()
