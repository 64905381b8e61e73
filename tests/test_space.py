"""The Spaces demo: its functions directly, then the page in a real (headless) Chromium."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spaces"))
import fusar_demo  # noqa: E402

import train_sft  # noqa: E402
from conftest import SHARED_DATA, shared_data  # noqa: E402
from processing import load_sar_image  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from dataset_scripts.simulate import simulate
    from test_training import FAST, parse

    folder = tmp_path_factory.mktemp("space")
    data = simulate(folder / "data", scenes=16)
    output = train_sft.main(*parse("--dataset_name", str(data), "--output_dir", str(folder / "model"), *FAST))
    model, _ = fusar_demo.load_checkpoint(str(output))
    import torch

    torch.nn.init.normal_(model.anchor_module.film[-1].weight, std=0.1)  # visible modulation for the heat map
    return str(output), folder / "data.raw"


def test_a_png_chip_with_an_npz(checkpoint, tmp_path):
    path, _ = checkpoint
    np.savez(tmp_path / "a.npz", features=np.eye(64, dtype=np.float32)[:9], positions=np.random.default_rng(0).uniform(size=(9, 2)))
    answer, boxes, heat, message = fusar_demo.run(path, str(shared_data("sar_ship_chips", "ship010902.jpg")),
                                                  str(tmp_path / "a.npz"), "", "Detect objects", "")
    assert message.startswith("Answered with 9 anchors.") and isinstance(answer, str) and boxes.size == (256, 256)
    unparsable = fusar_demo.parse_detection_answer(answer) is None
    assert unparsable == ("holds no boxes in the asked form" in message)  # said, not silently an empty picture
    assert heat.size == (500, 420)  # the image under the heat map, with its colour bar
    _, _, heat, message = fusar_demo.run(path, str(shared_data("sar_ship_chips", "ship010902.jpg")), None, "",
                                         "Count ships", "")
    assert heat is None and "without anchors: there is no modulation to show" in message


def test_a_georeferenced_geotiff_with_alphaearth_tiles(checkpoint, monkeypatch):
    path, raw = checkpoint
    scene = sorted((raw / "sar").glob("*.tif"))[0]
    monkeypatch.setenv("FUSAR_TILES_ROOT", str(raw))
    answer, boxes, heat, message = fusar_demo.run(path, str(scene), None, "alphaearth", "Land cover at the centre", "")
    assert message == "Answered with 64 anchors." and isinstance(answer, str) and heat is not None


def test_anchors_from_the_servers_alphaearth_release(checkpoint, monkeypatch, tmp_path):
    """'release' reads the AlphaEarth release the server names (here the simulated tiles with an index, over HTTP):
    the same anchors, so the same heat map, as the tiles folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import rasterio
    from rasterio.warp import transform_bounds

    from range_server import serve

    path, raw = checkpoint
    scene = str(sorted((raw / "sar").glob("*.tif"))[0])
    assert "names no AlphaEarth release" in fusar_demo.run(path, scene, None, "release", "Count ships", "")[3]
    release = tmp_path / "annual"  # served like the mirror's .../aef/v1/annual, its index beside the years
    shutil.copytree(raw / "alphaearth" / "satellite_embedding" / "v1" / "annual", release)
    rows = []
    for tile in sorted(release.rglob("*.tiff")):
        with rasterio.open(tile) as dataset:
            west, south, east, north = transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds)
        rows.append({"path": str(tile.relative_to(release)), "year": int(tile.parts[-3]),
                     "wgs84_west": west, "wgs84_south": south, "wgs84_east": east, "wgs84_north": north})
    pq.write_table(pa.Table.from_pylist(rows), release / "aef_index.parquet")
    monkeypatch.setenv("FUSAR_TILES_ROOT", str(raw))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expected = fusar_demo.run(path, scene, None, "alphaearth", "Count ships", "")
    with serve(release) as server:
        monkeypatch.setenv("FUSAR_ALPHAEARTH_SOURCE", server.url)
        got = fusar_demo.run(path, scene, None, "release", "Count ships", "")
    assert got[3] == expected[3] == "Answered with 64 anchors."
    assert np.array_equal(np.asarray(got[2]), np.asarray(expected[2]))


def test_boxes_are_drawn_from_a_detection_answer():
    image = Image.new("RGB", (50, 50))
    drawn = np.asarray(fusar_demo.draw_boxes(image, 'Found: [{"bbox_2d": [10, 10, 30, 30], "label": "ship"}]'))
    assert drawn[10, 10:31].any() and not drawn[40, 40].any()
    assert np.array_equal(np.asarray(fusar_demo.draw_boxes(image, "no boxes")), np.asarray(image))
    # The authors' writing: a code fence, a box beyond the image; None for no targets; a reversed box is skipped.
    fenced = '```json\n[{"bbox_2d": [-35, 10, 529, 30], "label": "ship"}]\n```'
    assert not np.array_equal(np.asarray(fusar_demo.draw_boxes(image, fenced)), np.asarray(image))
    for answer in ("None", '[{"bbox_2d": [30, 30, 10, 10], "label": "ship"}]'):
        assert np.array_equal(np.asarray(fusar_demo.draw_boxes(image, answer)), np.asarray(image))


@pytest.mark.parametrize("content, name, message", [
    (b"not an image at all", "scene.png", "scene.png: not a readable image file"),
    (b"II*\x00garbage", "scene.tif", "scene.tif: not a readable GeoTIFF"),
])
def test_bad_files_give_a_message_not_a_trace(checkpoint, tmp_path, content, name, message):
    (tmp_path / name).write_bytes(content)
    answer, boxes, heat, shown = fusar_demo.run(checkpoint[0], str(tmp_path / name), None, "", "Count ships", "")
    assert answer == "" and boxes is None and message in shown and "Traceback" not in shown
    assert str(tmp_path) not in shown  # no server paths either


def test_limits_and_missing_inputs(checkpoint, tmp_path, monkeypatch):
    Image.new("L", (64, 64)).save(tmp_path / "small.png")
    monkeypatch.setattr(fusar_demo, "MAX_UPLOAD_BYTES", 10)
    assert "larger than" in fusar_demo.run(checkpoint[0], str(tmp_path / "small.png"), None, "", "Count ships", "")[3]
    assert "Upload a SAR image" in fusar_demo.run(checkpoint[0], None, None, "", "Count ships", "")[3]
    assert "run `fusar-main` first" in fusar_demo.run("no-such-checkpoint", str(tmp_path / "small.png"), None, "", "", "")[3]
    bomb = tmp_path / "bomb.png"
    Image.new("L", (9000, 9000)).save(bomb, optimize=True)  # 81 megapixels in a small file
    monkeypatch.setattr(fusar_demo, "MAX_UPLOAD_BYTES", 50 * 2**20)
    monkeypatch.setattr(fusar_demo, "MAX_IMAGE_BYTES", 100 * 2**20)
    assert "bomb.png: 9000 x 9000 pixels would need about" in fusar_demo.run(checkpoint[0], str(bomb), None, "", "", "")[3]


def test_a_small_file_that_would_need_gigabytes_is_refused_from_its_header(checkpoint, tmp_path):
    import rasterio

    sparse = tmp_path / "quad.tif"  # 4096 x 4096, 4 complex bands, no block written: a tiny file
    with rasterio.open(sparse, "w", driver="GTiff", width=4096, height=4096, count=4, dtype="complex64",
                       tiled=True, sparse_ok=True, compress="deflate"):
        pass
    assert sparse.stat().st_size < 2**20
    message = fusar_demo.run(checkpoint[0], str(sparse), None, "", "Count ships", "")[3]
    assert "quad.tif: 4096 x 4096 pixels would need about 3.06 GiB" in message and "limit of 1.00 GiB" in message


def test_the_token_never_reaches_the_page(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    monkeypatch.setattr(fusar_demo, "ask", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("hf_secret_value_123")))
    Image.new("L", (64, 64)).save(tmp_path / "x.png")
    outputs = fusar_demo.run(checkpoint[0], str(tmp_path / "x.png"), None, "", "Count ships", "")
    assert "hf_secret_value_123" not in json.dumps([o for o in outputs if isinstance(o, str)]) + capsys.readouterr().out


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_page_in_a_real_browser(checkpoint, tmp_path):
    from playwright.sync_api import sync_playwright

    import app

    demo = app.build(checkpoint[0])
    demo.launch(server_name="127.0.0.1", server_port=7871, prevent_thread_lock=True, quiet=True)
    try:
        # A real ship chip where the shared data is; else a simulated scene as the PNG quicklook a user uploads.
        real = SHARED_DATA / "sar_ship_chips" / "ship010902.jpg"
        chip = str(real if real.exists() else tmp_path / "scene.png")
        if not real.exists():
            load_sar_image(str(sorted((checkpoint[1] / "sar").glob("*.tif"))[0])).save(chip)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                      "--disable-sync", "--no-first-run"])
            page = browser.new_page()
            page.goto("http://127.0.0.1:7871", wait_until="load")
            page.locator("#ask").wait_for(timeout=30_000)
            page.locator("#image input[type=file]").set_input_files(chip)
            page.locator("#question textarea").fill("How many ships are there?")
            page.wait_for_timeout(500)
            page.locator("#ask").click()
            page.wait_for_function("document.querySelector('#message') && document.querySelector('#message').innerText.includes('Answered')",
                                   timeout=60_000)
            assert page.locator("#boxes img").count() == 1
            assert page.locator("#heat img").count() == 0 and "without anchors" in page.locator("#message").inner_text()
            assert "simulated data" in page.locator("#checkpoint").inner_text()  # the page says what the model is
            page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
    finally:
        demo.close()


def test_publish_model_dataset_and_space(checkpoint, local_hub, tmp_path, capsys):
    """One command; then the model loads back with trust_remote_code (same logits), the dataset with load_dataset
    (images and arrays intact), and the Space holds its files."""
    import datasets
    import torch
    from huggingface_hub import HfApi
    from transformers import AutoModelForImageTextToText

    import publish
    from dataset_scripts.schema import row_anchors
    from processing.anchors import collate_anchor_sets

    model_dir, raw = checkpoint
    data_dir = raw.parent / "data"
    space_dir = Path(__file__).resolve().parents[1] / "spaces"
    publish.main(["--namespace", "user", "--model", model_dir, "--dataset", str(data_dir), "--space", str(space_dir)])
    printed = capsys.readouterr().out
    assert "model: " in printed and "/datasets/user/data" in printed and "/spaces/user/fusar-gpt-demo" in printed
    assert "hf_local_test_token" not in printed

    local = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    remote = AutoModelForImageTextToText.from_pretrained(f"user/{Path(model_dir).name}", trust_remote_code=True).eval()
    _, processor = fusar_demo.load_checkpoint(model_dir)
    rows = list(datasets.load_dataset(str(data_dir), split="train", cache_dir=str(tmp_path / "cache")).select(range(2)))
    hub_rows = list(datasets.load_dataset("user/data", split="train").select(range(2)))
    assert all(np.array_equal(np.asarray(a["image"]), np.asarray(b["image"])) and a["anchor_values"] == b["anchor_values"]
               for a, b in zip(rows, hub_rows))
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
                                           add_generation_prompt=True)
    inputs = processor(images=[rows[0]["image"]], text=[prompt], return_tensors="pt")
    inputs.update(collate_anchor_sets([row_anchors(rows[0])]))
    with torch.no_grad():
        assert torch.equal(local(**inputs).logits, remote(**inputs).logits)
    files = set(HfApi().list_repo_files("user/fusar-gpt-demo", repo_type="space"))
    assert {"app.py", "fusar_demo.py", "requirements.txt", "README.md", "processing/sar.py", "evaluation/generation.py",
            "command_line.py", "dataset_scripts/alphaearth.py", "modeling_fusar/modeling_fusar.py"} <= files

    # The published Space, started from another folder with its own copies of the code, serves the published model.
    from huggingface_hub import snapshot_download

    space = snapshot_download("user/fusar-gpt-demo", repo_type="space", local_dir=tmp_path / "space")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    chip = sorted((raw / "sar").glob("*.tif"))[0]
    script = (f"import sys; sys.path.insert(0, {str(space)!r}); import fusar_demo, evaluation.generation as generation; "
              f"assert fusar_demo.__file__.startswith({str(space)!r}) and generation.__file__.startswith({str(space)!r}); "
              "print(fusar_demo.DEFAULT_CHECKPOINT); print(fusar_demo.checkpoint_note(fusar_demo.DEFAULT_CHECKPOINT)); "
              f"print(fusar_demo.run(fusar_demo.DEFAULT_CHECKPOINT, {str(chip)!r}, None, '', 'Count ships', '')[3])")
    result = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    served, note, message = result.stdout.strip().splitlines()[-3:]
    assert served == f"user/{Path(model_dir).name}" and "simulated data" in note and message.startswith("Answered")


def test_tiles_only_from_the_allowed_root_and_no_paths_in_messages(checkpoint, tmp_path, monkeypatch):
    path, raw = checkpoint
    scene = str(sorted((raw / "sar").glob("*.tif"))[0])
    for year in range(2018, 2025):  # whatever the scene's year, its tile is junk
        secret = tmp_path / "secret" / str(year) / "31N"
        secret.mkdir(parents=True)
        (secret / "x.tiff").write_bytes(b"junk")
    monkeypatch.setenv("FUSAR_TILES_ROOT", str(tmp_path))
    shown = fusar_demo.run(path, scene, None, "secret", "Count ships", "")[3]
    assert "not a readable tile" in shown and str(tmp_path) not in shown
    for outside in ("../../etc", str(raw / "alphaearth")):
        shown = fusar_demo.run(path, scene, None, outside, "Count ships", "")[3]
        assert "only from folders under the server's FUSAR_TILES_ROOT" in shown and str(raw) not in shown
