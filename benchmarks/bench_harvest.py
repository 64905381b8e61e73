"""`fusar-data harvest` throughput against local replicas of its sources, measured in one process.

The replicas (`tests/harvest_replica.py`, made from the real data in ../shared/data): Major-TOM Core-S1RTC on a local
Hub (`tests/hub_server.py`, in this process), WorldCover and AlphaEarth on a local range server (its own process);
the AlphaEarth file has the release's geometry (8192 px, 1024-px blocks, one plane per band, 13 overviews).
For 1 and 2 local processes and for Ray (a local instance with 2 CPUs), each from a cold AlphaEarth cache:
chips per second, bytes and requests fetched per chip from all three sources, and the peak memory of the two
local worker processes. Then the cost of a 1-million-chip
build, on paper, from those figures. The servers answer at once: over the internet, latency and bandwidth add to
the time (the bytes and requests do not change).

Run: python benchmarks/bench_harvest.py  (--quick: fewer patches, no Ray)
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
SHARED = Path(os.environ.get("FUSAR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--chip-size", type=int, default=504, help="chip side in pixels (default 504, the command's)")
    args = parser.parse_args()
    if not (SHARED / "sen1floods11").is_dir():
        print(f"skipped: the replicas are made from real data in {SHARED} (sen1floods11, aef_points), absent")
        return 0
    sys.path.insert(0, str(TESTS))
    import dataset_scripts.alphaearth_cloud  # noqa: F401  first, as in `fusar-data`: its GDAL settings come first
    import harvest_replica
    import hub_server
    import range_server

    with tempfile.TemporaryDirectory(prefix="bench-harvest-") as folder:  # ~1.7 GB at full size: never left behind
        # Ray's session files under the same folder (its default, /tmp/ray, outlives the run).
        os.environ["RAY_TMPDIR"] = str(Path(folder) / "ray")
        try:
            measure(Path(folder), args, harvest_replica, hub_server, range_server)
        finally:
            if "ray" in sys.modules:
                sys.modules["ray"].shutdown()
    return 0


def measure(work: Path, args, harvest_replica, hub_server, range_server) -> None:
    repeats = 1 if args.quick else 12
    harvest_replica.build(work / "sources", SHARED, repeats=repeats, release_geometry=True)
    with hub_server.serve(work / "hub") as hub, range_server.serve(work / "sources") as files:
        os.environ.update({"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_local_bench", "HF_HOME": str(work / "hf"),
                           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
        from huggingface_hub import HfApi

        from dataset_scripts.cli import main as fusar_data

        api = HfApi()
        api.create_repo("Major-TOM/Core-S1RTC", repo_type="dataset")
        api.upload_folder(folder_path=str(work / "sources" / "majortom"), repo_id="Major-TOM/Core-S1RTC",
                          repo_type="dataset")
        runs = [("local, 1 process", ["--num-proc", "1"]), ("local, 2 processes", ["--num-proc", "2"])]
        if not args.quick:
            runs.append(("ray, local instance of 2 CPUs", ["--engine", "ray", "--num-proc", "2"]))
        per_patch = (1068 // args.chip_size) ** 2
        print(f"{2 + 2 * repeats} patches of 2021 (1,068 px), {args.chip_size} px chips ({per_patch} per patch), "
              "8 x 8 anchors per chip")
        print("| engine | chips/s | MiB fetched per chip | requests per chip | peak RSS of a worker, MiB |\n"
              "|---|---|---|---|---|")
        for number, (name, options) in enumerate(runs):
            before = hub.sent + files.total_sent(), len(hub.log) + files.requests()
            start = time.perf_counter()
            fusar_data(["harvest", "--source", "Major-TOM/Core-S1RTC", "--worldcover", f"{files.url}/worldcover",
                        "--alphaearth", f"{files.url}/alphaearth", "--alphaearth-cache", str(work / f"cache{number}"),
                        "--chip-size", str(args.chip_size), "--start", "2021-01-01", "--patches-per-shard", "1",
                        "--output", str(work / f"out{number}"), *options])
            seconds = time.perf_counter() - start
            chips = count_chips(work / f"out{number}")
            fetched = hub.sent + files.total_sent() - before[0]
            requests = len(hub.log) + files.requests() - before[1]
            # The worker processes' peak (they have ended); for the other engines the workers are not ours to wait on.
            workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            peak = workers if name == "local, 2 processes" else None
            print(f"| {name} | {chips / seconds:.1f} | {fetched / chips / 2**20:.2f} | {requests / chips:.1f} | "
                  f"{f'{peak:.0f}' if peak else '-'} |")


def count_chips(folder: Path) -> int:
    import pyarrow.parquet as pq

    return len({s for path in folder.glob("data/*.parquet") for s in pq.read_table(path, columns=["scene_id"])
                .column("scene_id").to_pylist()})


if __name__ == "__main__":
    sys.exit(main())
