"""fusar-data: build, simulate, import and check the SAR image-text-AlphaEarth triplet dataset."""

from __future__ import annotations

import shared_machine  # noqa: F401  (before torch: its OpenMP threads then sleep when they wait)
import hub_kernels  # noqa: F401  (before peft: bitsandbytes then looks up no Hub kernel unasked)

import argparse
import sys
from pathlib import Path

from command_line import command, non_negative_int, positive_int

from .names import SPLITS, TASKS


def parse_tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown tasks {sorted(unknown)}; choose from {', '.join(TASKS)}")
    return tasks


def add_alphaearth_options(parser):
    parser.add_argument("--alphaearth-index", help="the release's index (GeoParquet), if not aef_index.parquet under it")
    parser.add_argument("--alphaearth-cache", help="folder for the blocks read from the release (default: "
                                                   "~/.cache/fusar-gpt/alphaearth)")


def add_split_option(parser):
    parser.add_argument("--split", choices=["hashed", *SPLITS], default="hashed",
                        help="the split every row goes to, or 'hashed': 80/10/10 by a hash of the scene id (default)")


def add_output_options(parser):
    parser.add_argument("--output", required=True, help="folder for the dataset (parquet shards per split + card)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    parser.add_argument("--num-proc", type=positive_int, default=1, help="worker processes for the scenes")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the dataset folder to this Hub repo")


@command("fusar-data")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fusar-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build the dataset from SAR images, annotations and AlphaEarth tiles")
    inputs = build.add_argument_group("inputs (one or more)")
    inputs.add_argument("--voc", action="append", default=[], help="folder of Pascal VOC XML files beside their images")
    inputs.add_argument("--coco", action="append", default=[], help="COCO detection JSON (images relative to it)")
    inputs.add_argument("--jsonl", action="append", default=[], help="scenes JSONL: image, caption(s), questions, objects")
    build.add_argument("--alphaearth", help="the AlphaEarth release: a folder of its int8 tiles (<year>/<zone><N|S>/"
                       "*.tiff), or its URL (https://, s3://, gs://) or a folder with its index (aef_index.parquet)")
    add_alphaearth_options(build)
    build.add_argument("--alphaearth-geotiff", help="a float AlphaEarth export (bands A00..A63) ...")
    build.add_argument("--alphaearth-year", type=int, help="... and its year")
    build.add_argument("--year", type=int, help="acquisition year for scenes whose files do not say")
    build.add_argument("--tasks", type=parse_tasks, default=TASKS, help=f"comma-separated, from {', '.join(TASKS)}")
    build.add_argument("--grid-size", type=positive_int, default=8, help="anchors per side of a scene (default 8)")
    build.add_argument("--years-before", type=non_negative_int, default=0, help="also anchor this many earlier years")
    build.add_argument("--sensor", default="", help="sensor name for scenes that do not give one")
    build.add_argument("--source", default="", help="provenance and licence of the inputs")
    build.add_argument("--name", default="fusar-sar-triplets", help="dataset name in the card")
    build.add_argument("--license", default="other", help="licence of the dataset (Hub identifier)")
    build.add_argument("--shard-size", type=positive_int, default=64, help="scenes per resumable work shard")
    add_split_option(build)
    add_output_options(build)

    simulate = commands.add_parser("simulate", help="build the deterministic simulated dataset (the embedded default)")
    simulate.add_argument("--scenes", type=positive_int, default=300, help="number of scenes (about 5 rows each)")
    simulate.add_argument("--seed", type=int, default=0)
    add_output_options(simulate)

    manifest = commands.add_parser("import-manifest",
                                   help="the authors' manifest (JSONL or a JSON list) with .npz / .npy anchors -> dataset")
    manifest.add_argument("manifest", help="JSONL or a JSON list of {id, image, aef, question, answer, coordinate_size}")
    manifest.add_argument("--task", choices=TASKS, help="task of every row (default: from the shape of each answer)")
    manifest.add_argument("--source", default="FUSAR-GPT authors' release", help="provenance and licence")
    manifest.add_argument("--root", help="folder the manifest's paths must lie under (default: the manifest's folder)")
    add_split_option(manifest)
    add_output_options(manifest)

    anchors = commands.add_parser("anchors", help="AlphaEarth anchors for one georeferenced image -> .npz")
    anchors.add_argument("image", help="a georeferenced SAR GeoTIFF (or an image with a .footprint.json)")
    anchors.add_argument("--source", required=True, help="the AlphaEarth release: URL or folder (as --alphaearth)")
    add_alphaearth_options(anchors)
    anchors.add_argument("--years", type=int, nargs="+", help="years to read (default: the image's year)")
    anchors.add_argument("--grid-size", type=positive_int, default=8, help="anchors per side (default 8)")
    anchors.add_argument("--output", required=True, help="the .npz to write (values, positions, mask, years)")

    harvest = commands.add_parser("harvest", help="real triplets: Major-TOM Sentinel-1 chips + WorldCover facts + "
                                  "AlphaEarth anchors, on local processes or Ray")
    where = harvest.add_mutually_exclusive_group()
    where.add_argument("--bbox", type=float, nargs=4, metavar=("WEST", "SOUTH", "EAST", "NORTH"),
                       help="region in degrees (patch centres inside)")
    where.add_argument("--region", help="region as a GeoJSON (Multi)Polygon file, lon/lat")
    harvest.add_argument("--start", type=iso_date, help="first acquisition date (YYYY-MM-DD)")
    harvest.add_argument("--end", type=iso_date, help="last acquisition date (YYYY-MM-DD), inclusive")
    harvest.add_argument("--max-chips", type=positive_int, help="stop after this many chips")
    harvest.add_argument("--max-nodata", type=float, default=0.0, help="largest nodata share of a patch and a chip "
                         "(default 0)")
    harvest.add_argument("--chip-size", type=positive_int, default=504, help="chip side in pixels (default 504: 2 x 2 "
                         "chips per 1,068 px patch)")
    harvest.add_argument("--grid-size", type=positive_int, default=8, help="anchors per side of a chip (default 8)")
    harvest.add_argument("--source", default="Major-TOM/Core-S1RTC", help="the Major-TOM Core-S1RTC Hub id, or a "
                         "local folder of its layout (metadata.parquet, images/)")
    harvest.add_argument("--alphaearth", default="https://data.source.coop/tge-labs/aef/v1/annual",
                         help="the AlphaEarth release (URL or folder; default the public mirror), 'none' for no anchors")
    add_alphaearth_options(harvest)
    harvest.add_argument("--worldcover", default="https://esa-worldcover.s3.eu-central-1.amazonaws.com",
                         help="the ESA WorldCover release (URL or folder of its layout)")
    harvest.add_argument("--templates", help="JSON file of text templates (keys as dataset_scripts/facts.py TEMPLATES)")
    harvest.add_argument("--rewrite", metavar="MODULE:FUNCTION", help="a hook (caption, facts) -> caption, e.g. a "
                         "local language model's rewording; off by default (the template's caption stays in facts)")
    add_split_option(harvest)
    harvest.add_argument("--output", required=True, help="folder, or a Hub dataset repo as hf://datasets/<user>/<name>")
    harvest.add_argument("--overwrite", action="store_true", help="replace an earlier harvest in the output")
    harvest.add_argument("--engine", choices=["local", "ray"], default="local",
                         help="local processes (default) or Ray tasks (pip install 'fusar-gpt[ray]')")
    harvest.add_argument("--num-proc", type=positive_int, default=1, help="local processes (or CPUs of a local Ray)")
    harvest.add_argument("--ray-address", help="a running Ray cluster (default: start a local instance)")
    harvest.add_argument("--patches-per-shard", type=positive_int, default=4, help="patches per resumable shard")
    harvest.add_argument("--max-skipped", type=float, default=0.5, help="largest share of the planned chips that may "
                         "be skipped (unreadable patches, source files that fail) before the run stops (default 0.5)")
    harvest.add_argument("--name", default="fusar-harvested-sar-triplets", help="dataset name in the card")

    retext = commands.add_parser("retext", help="a harvested dataset's texts made again from its facts, with other "
                                 "templates")
    retext.add_argument("dataset", help="a harvested dataset: folder or Hub id")
    retext.add_argument("--templates", required=True, help="JSON file of text templates (keys as TEMPLATES in "
                        "dataset_scripts/facts.py)")
    retext.add_argument("--output", required=True, help="folder for the new dataset")
    retext.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")

    check = commands.add_parser("check", help="validate a dataset folder or Hub id; exit 1 if anything is wrong")
    check.add_argument("dataset", help="dataset folder or Hub repo id")

    args = parser.parse_args(argv)
    if args.command == "harvest":
        return run_harvest(args)
    if args.command == "retext":
        from .retext import retext

        print(f"dataset written to {retext(args.dataset, args.output, args.templates, args.overwrite)}")
        return 0
    if args.command == "anchors":
        return write_anchors(args)
    if args.command == "check":
        from .check import check as run_check

        problems = run_check(args.dataset)
        print("\n".join(problems) or f"{args.dataset}: no problems found")
        return 1 if problems else 0
    output = run(args)
    print(f"dataset written to {output}")
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        url = api.create_repo(args.push_to_hub, repo_type="dataset", exist_ok=True)
        api.upload_folder(folder_path=str(output), repo_id=args.push_to_hub, repo_type="dataset",
                          commit_message="Upload dataset with fusar-data")
        print(f"pushed to {url}")
    return 0


def iso_date(text: str) -> str:
    import datetime

    try:
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def check_bbox(west: float, south: float, east: float, north: float) -> None:
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= north <= 90):
        raise ValueError(f"--bbox {west:g} {south:g} {east:g} {north:g}: expected WEST SOUTH EAST NORTH in degrees, "
                         "longitudes in [-180, 180], latitudes in [-90, 90], SOUTH <= NORTH")
    if west > east:
        print(f"--bbox: WEST {west:g} is east of EAST {east:g}: read as a box across the 180th meridian",
              file=sys.stderr)


def run_harvest(args) -> int:
    """`fusar-data harvest`: select patches, then harvest them (see dataset_scripts/harvest.py)."""
    from .facts import load_templates
    from .harvest import HarvestConfig, harvest
    from .majortom import Region, read_metadata, select

    if args.start and args.end and args.start > args.end:
        raise ValueError(f"--start {args.start} is after --end {args.end}")
    if not 0 <= args.max_skipped <= 1:
        raise ValueError(f"--max-skipped is a fraction in [0, 1], got {args.max_skipped:g}")
    if args.bbox:
        check_bbox(*args.bbox)
    if args.engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ValueError("--engine ray needs Ray: pip install 'fusar-gpt[ray]'")
    config = HarvestConfig(source=args.source, worldcover=args.worldcover,
                           alphaearth=None if args.alphaearth == "none" else args.alphaearth,
                           alphaearth_index=args.alphaearth_index, alphaearth_cache=args.alphaearth_cache,
                           chip_size=args.chip_size, grid_size=args.grid_size, max_nodata=args.max_nodata,
                           split=args.split, templates=load_templates(args.templates), rewrite=args.rewrite,
                           name=args.name)
    polygon = Region(args.region) if args.region else None
    patches = read_metadata(args.source)
    chosen = select(patches, bbox=args.bbox, polygon=polygon, start=args.start, end=args.end, max_nodata=args.max_nodata)
    region = f"bbox {args.bbox}" if args.bbox else f"GeoJSON {Path(args.region).name}" if args.region else ""
    dates = f"{args.start or 'any'} to {args.end or 'any'}"
    if not chosen:
        raise ValueError(f"no patches in {args.source} match: {region or 'anywhere'}, dates {dates}, nodata at most "
                         f"{args.max_nodata:g} ({len(patches)} patches in the metadata)")
    totals = harvest(chosen, args.output, config, max_chips=args.max_chips, patches_per_shard=args.patches_per_shard,
                     engine=args.engine, num_proc=args.num_proc, ray_address=args.ray_address,
                     overwrite=args.overwrite, region=f"{region or 'anywhere'}, dates {dates}",
                     max_skipped=args.max_skipped)
    print(f"dataset written to {args.output}: " + ", ".join(f"{s} {n} rows" for s, n in totals.items() if n))
    return 0


def write_anchors(args) -> int:
    """`fusar-data anchors`: one image's anchors to an .npz, written whole (a temporary name, then renamed)."""
    import os

    import numpy as np

    from .alphaearth import sample_anchors
    from .alphaearth_cloud import open_source
    from .sar_reader import read_sar_scene

    output = Path(args.output)
    if output.is_dir():
        raise ValueError(f"--output {output}: a folder; give the .npz file to write, e.g. {output / 'anchors.npz'}")
    if not output.parent.is_dir():
        raise ValueError(f"--output {output}: no such folder {output.parent}")
    scene = read_sar_scene(args.image)
    if scene.footprint is None:
        raise ValueError(f"{args.image}: not georeferenced (no CRS, no .footprint.json): no anchors can be placed")
    years = args.years or ([scene.year] if scene.year is not None else None)
    if not years:
        raise ValueError(f"{args.image}: its acquisition year is unknown; give --years")
    source = open_source(args.source, args.alphaearth_index, args.alphaearth_cache)
    anchors = sample_anchors(source, scene.footprint, years, grid_size=args.grid_size)
    temporary = output.with_name(f".{output.name}.partial.npz")
    try:
        np.savez(temporary, values=anchors.values, positions=anchors.positions, mask=anchors.mask,
                 years=np.asarray(anchors.years))
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
    found = int(anchors.mask.any(-1).sum())
    print(f"{output}: {found} of {len(anchors.positions)} anchors with AlphaEarth data, years {years}"
          + ("" if found else " (the footprint lies outside the release's tiles for these years)"))
    return 0


def run(args) -> Path:
    from .builder import BuildConfig, build

    if args.command == "simulate":
        from .simulate import simulate

        return simulate(args.output, scenes=args.scenes, seed=args.seed, num_proc=args.num_proc, overwrite=args.overwrite)
    if args.command == "import-manifest":
        from .inputs import from_manifest

        scenes = from_manifest(args.manifest, task=args.task, source=args.source, root=args.root)
        return build(scenes, args.output, BuildConfig(name=Path(args.manifest).stem, split=args.split),
                     num_proc=args.num_proc, overwrite=args.overwrite)
    from .alphaearth import AlphaEarthGeoTIFF
    from .alphaearth_cloud import open_source
    from .inputs import from_coco, from_jsonl, from_voc

    scenes = [s for folder in args.voc for s in from_voc(folder, source=args.source, sensor=args.sensor)]
    scenes += [s for path in args.coco for s in from_coco(path, source=args.source, sensor=args.sensor)]
    scenes += [s for path in args.jsonl for s in from_jsonl(path, source=args.source, sensor=args.sensor)]
    if not scenes:
        given = [*args.voc, *args.coco, *args.jsonl]
        raise ValueError(f"no scenes in {', '.join(given)}: each is empty" if given else
                         "no scenes: give --voc, --coco or --jsonl inputs")
    for scene in scenes:
        scene.year = scene.year if scene.year is not None else args.year
    alphaearth = None
    if args.alphaearth:
        alphaearth = open_source(args.alphaearth, args.alphaearth_index, args.alphaearth_cache)
    elif args.alphaearth_geotiff:
        if args.alphaearth_year is None:
            raise ValueError("--alphaearth-geotiff needs --alphaearth-year")
        alphaearth = AlphaEarthGeoTIFF(args.alphaearth_geotiff, args.alphaearth_year)
    config = BuildConfig(tasks=args.tasks, grid_size=args.grid_size, years_before=args.years_before,
                         shard_size=args.shard_size, name=args.name, license=args.license, split=args.split)
    return build(scenes, args.output, config, alphaearth, num_proc=args.num_proc, overwrite=args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
