"""The README's example table for `fusar-eval --benchmark PRESET`: a tiny random FUSAR-GPT and its base on replicas of
the SARLANG-1M, GeoChat-Bench and EarthDial layouts (`tests/benchmark_replicas.py`, a few rows each, in the real
files' forms) served by the tests' local Hub. Each preset prints the rows its authors' scripts print (LRBEN and
HRBEN per question type, EarthDial's detection per size group, SARLANG's VQA per subset) and the notes that say
which rows are this project's aggregates. The figures show the table's shape, not a result: real benchmark files and weights
cannot be fetched on the machines this project is built on. Without anchors an untrained FUSAR-GPT is exactly its
base, so the two columns agree.

Run: python benchmarks/preset_replicas.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from hub_server import serve  # noqa: E402  (stdlib only: the clients are imported once the Hub's address is known)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp) / "hub") as hub:
        tmp = Path(tmp)
        os.environ.update({"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "home"), "HF_TOKEN": "hf_local_replica",
                           "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"})
        import benchmark_replicas
        from conftest import build
        from modeling_fusar.tiny import train_tokenizer

        model, processor = build({"qwen2_5_vl": train_tokenizer(family="qwen2_5_vl")}, "qwen2_5_vl")
        model.save_pretrained(tmp / "fusar")
        processor.save_pretrained(tmp / "fusar")
        model.vlm.save_pretrained(tmp / "base")
        benchmark_replicas.sarlang(tmp / "sarlang")
        sardet = benchmark_replicas.sardet_images(tmp / "sardet")  # SARVQA1's images, as a user adds them
        benchmark_replicas.geochat(tmp / "geochat", tmp / "images")
        benchmark_replicas.earthdial(tmp / "earthdial")
        for preset, extra in (("sarlang-1m", ["--images", sardet]), ("geochat-bench", ["--images", tmp / "images"]),
                              ("earthdial", [])):
            done = subprocess.run([shutil.which("fusar-eval"), tmp / "fusar", "--benchmark", preset, "--base",
                                   tmp / "base", "--limit", "4", "--max-new-tokens", "16", "--output", tmp / preset,
                                   *extra], capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr)
            print(f"\n{preset} (replica, 4 rows per task)\n" + (tmp / preset / "results.md").read_text())


if __name__ == "__main__":
    main()
