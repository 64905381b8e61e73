"""The AlphaEarth reader: de-quantisation, tiles in the official layout (written here from the real vectors in
../shared/data/aef_points), both orientations, tile and UTM-zone boundaries, real SAR footprints, windowed reads."""

import csv
import io

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin
from rasterio.warp import transform as transform_points

import dataset_scripts.alphaearth as alphaearth
from conftest import shared_data
from dataset_scripts.alphaearth import AlphaEarthGeoTIFF, AlphaEarthTiles, Footprint, dequantize, quantize, sample_anchors
from dataset_scripts.sar_reader import read_sar_scene


@pytest.fixture(scope="module")
def real_vectors():
    with open(shared_data("aef_points", "iowa_ag.csv")) as file:
        rows = list(csv.DictReader(file))
    return np.array([[float(row[f"A{i:02d}"]) for i in range(64)] for row in rows])


def test_dequantisation_known_values():
    values = np.zeros((3, 64), np.int8)
    values[0, :4] = [127, -64, 0, 1]
    values[1] = -128  # nodata: -128 in all bands
    values[2, 0] = -128  # -128 in one band only is a value
    out = dequantize(values)
    np.testing.assert_allclose(out[0, :4], [(127 / 127.5) ** 2, -((64 / 127.5) ** 2), 0, (1 / 127.5) ** 2], rtol=1e-6)
    assert np.isnan(out[1]).all() and not np.isnan(out[2]).any()
    assert out[2, 0] == pytest.approx(-((128 / 127.5) ** 2))


def test_real_vectors_survive_quantisation_exactly_and_are_unit_length(real_vectors):
    codes = quantize(real_vectors)
    assert np.array_equal(dequantize(codes), real_vectors.astype(np.float32))
    # The release's documentation says +-0.002; these real vectors reach +-0.006 (int8 rounding), hence `check`'s wider tolerance.
    np.testing.assert_allclose(np.linalg.norm(dequantize(codes), axis=1), 1, atol=0.01)


def write_tile(path, codes: np.ndarray, crs: str, transform: Affine, bottom_up: bool = False):
    """An official-format tile: int8, 64 bands, -128 nodata; `codes` [H, W, 64] listed top row first."""
    if bottom_up:  # a mirror's orientation: origin at the bottom edge, positive y pixel size
        height = codes.shape[0]
        transform = Affine(transform.a, 0, transform.c, 0, -transform.e, transform.f + transform.e * height)
        codes = codes[::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=codes.shape[1], height=codes.shape[0], count=64, dtype="int8",
                       crs=crs, transform=transform, nodata=-128, tiled=True, blockxsize=64, blockysize=64) as dataset:
        dataset.write(np.ascontiguousarray(codes.transpose(2, 0, 1)))


def patterned_codes(vectors, height, width):
    """Tile pixel (r, c) holds real vector (7 r + 13 c) mod N, so every pixel can be told from its neighbours."""
    rows, cols = np.mgrid[0:height, 0:width]
    return quantize(vectors[(7 * rows + 13 * cols) % len(vectors)])


def expected_anchor(vectors, footprint, position, tile_crs, tile_transform):
    """The vector an anchor must get, computed here without the reader: image pixel centre -> map -> tile pixel."""
    x, y = footprint.transform @ (position[1] * (footprint.width - 1) + 0.5, position[0] * (footprint.height - 1) + 0.5)
    [tx], [ty] = transform_points(footprint.crs, tile_crs, [x], [y])
    col, row = ~tile_transform @ (tx, ty)
    return vectors[(7 * int(np.floor(row)) + 13 * int(np.floor(col))) % len(vectors)]


@pytest.mark.parametrize("bottom_up", [False, True])
def test_sen1floods11_chip_gets_the_tile_vectors_at_its_anchor_places(tmp_path, real_vectors, bottom_up):
    scene = read_sar_scene(shared_data("sen1floods11", "Spain_7370579_S1Hand.tif"))
    assert scene.footprint.crs.to_epsg() == 4326
    origin = from_origin(694_000, 4_223_000, 10, 10)  # UTM 30N, covering the chip with a margin
    write_tile(tmp_path / "2024" / "30N" / "tile-0-0.tiff", patterned_codes(real_vectors, 600, 450), "EPSG:32630",
               origin, bottom_up)
    anchors = sample_anchors(AlphaEarthTiles(tmp_path), scene.footprint, [2024], grid_size=6)
    assert anchors.mask.all() and anchors.years == [2024]
    for position, values in zip(anchors.positions, anchors.values[:, 0]):
        expected = expected_anchor(real_vectors, scene.footprint, position, "EPSG:32630", origin)
        np.testing.assert_array_equal(values, expected.astype(np.float32))


def test_a_footprint_across_two_tiles_and_the_release_prefix(tmp_path, real_vectors):
    scene = read_sar_scene(shared_data("sen1floods11", "Spain_7370579_S1Hand.tif"))
    codes = patterned_codes(real_vectors, 600, 450)
    root = tmp_path / "satellite_embedding" / "v1" / "annual"
    write_tile(root / "2024" / "30N" / "a.tiff", codes, "EPSG:32630", from_origin(694_000, 4_223_000, 10, 10))
    whole = sample_anchors(AlphaEarthTiles(tmp_path), scene.footprint, [2024], grid_size=6)
    (root / "2024" / "30N" / "a.tiff").unlink()
    write_tile(root / "2024" / "30N" / "left.tiff", codes[:, :200], "EPSG:32630", from_origin(694_000, 4_223_000, 10, 10))
    write_tile(root / "2024" / "30N" / "right.tiff", codes[:, 200:], "EPSG:32630", from_origin(696_000, 4_223_000, 10, 10))
    split = sample_anchors(AlphaEarthTiles(tmp_path), scene.footprint, [2024], grid_size=6)
    assert split.mask.all() and np.array_equal(split.values, whole.values)


def test_a_footprint_across_utm_zones_nodata_and_missing_years(tmp_path):
    """A GeoTIFF footprint in EPSG:4326 straddling 0 degrees longitude: its west half lies in zone 30N, its east
    half in 31N; each zone's tile holds one vector, and nodata over the footprint's northern quarter."""
    west, east = np.zeros(64), np.zeros(64)
    west[0], east[1] = 1.0, 1.0
    # Each tile ends near the zone boundary (0 degrees: x = 715 051 m in zone 30, 284 949 m in zone 31), as released.
    for zone, vector, x, width in ((30, west, 713_000, 215), (31, east, 284_850, 300)):
        codes = np.broadcast_to(quantize(vector), (400, width, 64)).copy()
        codes[:125] = -128  # rows north of y = 5 541 250 m: between the first (5 541 514) and second anchor rows
        write_tile(tmp_path / "2023" / f"{zone}N" / "t.tiff", codes, f"EPSG:{32600 + zone}", from_origin(x, 5_542_500, 10, 10))
    footprint = Footprint(rasterio.crs.CRS.from_epsg(4326), from_origin(-0.01, 49.99, 0.0002, 0.0002), 100, 100)
    anchors = sample_anchors(AlphaEarthTiles(tmp_path), footprint, [2022, 2023], grid_size=4)
    assert not anchors.mask[:, 0].any()  # no 2022 tiles
    assert not anchors.mask[:4, 1].any() and anchors.mask[4:, 1].all()  # the first anchor row is in the nodata band
    valid = anchors.mask[:, 1]
    top = (127 / 127.5) ** 2  # the largest int8 code
    assert (anchors.values[valid & (anchors.positions[:, 1] < 0.5), 1, 0] == np.float32(top)).all()  # west: zone 30
    assert (anchors.values[valid & (anchors.positions[:, 1] > 0.5), 1, 1] == np.float32(top)).all()  # east: zone 31


def test_pyrosar_utm_scene_and_a_float_export(tmp_path, real_vectors):
    scene = read_sar_scene(shared_data("pyrosar_s1_geocoded", "S1A__IW___A_20150309T173017_VV_grd_mli_geo_norm_db.tif"))
    assert scene.year == 2015 and scene.crs == "EPSG:32631" and scene.resolution_m == 20
    origin = from_origin(619_000, 4_831_000, 10, 10)
    codes = patterned_codes(real_vectors, 600, 700)
    write_tile(tmp_path / "tiles" / "2017" / "31N" / "t.tiff", codes, "EPSG:32631", origin)
    from_tiles = sample_anchors(AlphaEarthTiles(tmp_path / "tiles"), scene.footprint, 2017)
    with rasterio.open(tmp_path / "export.tif", "w", driver="GTiff", width=700, height=600, count=64, dtype="float32",
                       crs="EPSG:32631", transform=origin) as dataset:
        dataset.write(dequantize(codes).transpose(2, 0, 1))
    from_export = sample_anchors(AlphaEarthGeoTIFF(tmp_path / "export.tif", 2017), scene.footprint, 2017)
    assert from_tiles.mask.all() and np.array_equal(from_tiles.values, from_export.values)


def test_reads_are_windowed(tmp_path, real_vectors, monkeypatch):
    """Reading the anchors of a small footprint touches a small part of a large tile."""
    write_tile(tmp_path / "2024" / "31N" / "big.tiff", patterned_codes(real_vectors, 512, 512), "EPSG:32631",
               from_origin(500_000, 5_000_000, 10, 10))
    size = (tmp_path / "2024" / "31N" / "big.tiff").stat().st_size
    read = []

    class Counting(io.FileIO):
        def read(self, size=-1):
            data = super().read(size)
            read.append(len(data))
            return data

        def readinto(self, buffer):
            count = super().readinto(buffer)
            read.append(count)
            return count

    monkeypatch.setattr(alphaearth, "_open", lambda path: rasterio.open(path, opener=lambda p, mode="rb": Counting(p, mode)))
    footprint = Footprint(rasterio.crs.CRS.from_epsg(32631), from_origin(503_000, 4_997_000, 10, 10), 51, 51)
    anchors = sample_anchors(AlphaEarthTiles(tmp_path), footprint, 2024)
    assert anchors.mask.all()
    assert 0 < sum(read) < size / 10, f"read {sum(read)} bytes of a {size}-byte tile"


def test_nodata_in_one_tile_does_not_hide_an_overlapping_tile(tmp_path):
    """Neighbouring UTM zones' tiles overlap, each nodata outside its zone: a point must be read where it has data."""
    vector = np.zeros(64)
    vector[3] = 1.0
    write_tile(tmp_path / "2020" / "31N" / "a.tiff", np.full((100, 100, 64), -128, np.int8), "EPSG:32631",
               from_origin(500_000, 5_000_000, 10, 10))
    write_tile(tmp_path / "2020" / "31N" / "b.tiff", np.broadcast_to(quantize(vector), (100, 100, 64)).copy(), "EPSG:32631",
               from_origin(500_000, 5_000_000, 10, 10))
    footprint = Footprint(rasterio.crs.CRS.from_epsg(32631), from_origin(500_100, 4_999_900, 10, 10), 20, 20)
    assert sample_anchors(AlphaEarthTiles(tmp_path), footprint, 2020, grid_size=2).mask.all()


def test_points_outside_a_float_export_are_masked(tmp_path):
    with rasterio.open(tmp_path / "export.tif", "w", driver="GTiff", width=10, height=10, count=64, dtype="float32",
                       crs="EPSG:32631", transform=from_origin(500_000, 5_000_000, 10, 10)) as dataset:
        dataset.write(np.ones((64, 10, 10), np.float32))
    far = Footprint(rasterio.crs.CRS.from_epsg(32631), from_origin(600_000, 5_000_000, 10, 10), 20, 20)
    assert not sample_anchors(AlphaEarthGeoTIFF(tmp_path / "export.tif", 2020), far, 2020, grid_size=2).mask.any()


def test_the_anchor_spacing_comes_from_the_shorter_side_on_the_ground():
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from dataset_scripts.alphaearth import Footprint

    strip = Footprint(CRS.from_epsg(32631), from_origin(500_000, 5_000_000, 10, 10), 60, 1000)  # 10 km x 0.6 km
    assert strip.size_m() == (10_000, 600)
    arctic = Footprint(CRS.from_epsg(4326), from_origin(10.0, 60.01, 0.001, 0.001), 20, 20)  # around 60 N
    width, height = arctic.size_m()
    assert abs(width / height - 0.5) < 0.01  # a degree of longitude is half as long there
