"""SAR normalisation: one function for quicklooks, GeoTIFFs and arrays in any radar unit."""

import warnings

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from conftest import shared_data
from processing import load_sar_image, sar_to_uint8


def speckled_intensity(seed=0, channels=1, size=(40, 50)):
    rng = np.random.default_rng(seed)
    return rng.gamma(1.0, 1.0, (channels, *size)) * rng.uniform(0.01, 1, (channels, 1, 1))


def test_8bit_quicklooks_pass_through(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (30, 20), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    image = load_sar_image(tmp_path / "grey.png")
    assert image.mode == "RGB" and all(np.array_equal(np.asarray(image)[..., c], grey) for c in range(3))
    colour = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert np.array_equal(np.asarray(load_sar_image(tmp_path / "colour.png")), colour)


def test_real_ship_chip_jpeg_passes_through():
    path = shared_data("sar_ship_chips", "Gao_ship_hh_0201611139301040015.jpg")
    original = np.asarray(Image.open(path).convert("L"))
    image = np.asarray(load_sar_image(path))
    assert image.shape == (*original.shape, 3) and np.array_equal(image[..., 0], original)


def test_every_radar_unit_gives_the_same_image():
    intensity = speckled_intensity(channels=2)
    phase = np.exp(1j * np.random.default_rng(2).uniform(0, 2 * np.pi, intensity.shape))
    expected = sar_to_uint8(intensity, unit="intensity")
    assert np.array_equal(sar_to_uint8(10 * np.log10(intensity), unit="db"), expected)
    assert np.array_equal(sar_to_uint8(np.sqrt(intensity), unit="amplitude"), expected)
    assert np.array_equal(sar_to_uint8(np.sqrt(intensity) * phase), expected)  # complex, detected automatically
    assert np.array_equal(sar_to_uint8(10 * np.log10(intensity)), expected)  # negative values: dB


def test_robust_clipping_and_determinism():
    db = 10 * np.log10(speckled_intensity(seed=3))
    db[0, 0, 0] = 80.0  # one wild outlier must not squash the rest
    image = sar_to_uint8(db, unit="db")
    assert image[0, 0, 0] == 255
    assert 0.9 < (image[..., 0] > 0).mean() and 60 < image[..., 0].mean() < 200
    assert np.array_equal(image, sar_to_uint8(db.copy(), unit="db"))


def test_dual_pol_channels_are_co_cross_and_their_ratio():
    intensity = speckled_intensity(seed=4, channels=2)
    db = 10 * np.log10(intensity)
    image = sar_to_uint8(db, unit="db", polarizations=["VV", "VH"])
    assert np.array_equal(image[..., 0], sar_to_uint8(db[:1], unit="db")[..., 0])
    assert np.array_equal(image[..., 1], sar_to_uint8(db[1:], unit="db")[..., 0])
    assert np.array_equal(image[..., 2], sar_to_uint8(db[:1] - db[1:], unit="db")[..., 0])
    assert np.array_equal(sar_to_uint8(db[::-1], unit="db", polarizations=["VH", "VV"]), image)


def test_quad_pol_real_and_pauli():
    intensity = speckled_intensity(seed=5, channels=4)
    db = 10 * np.log10(intensity)
    image = sar_to_uint8(db, unit="db", polarizations=["HH", "HV", "VH", "VV"])
    assert np.array_equal(image[..., 1], sar_to_uint8((db[1:2] + db[2:3]) / 2, unit="db")[..., 0])
    assert np.array_equal(sar_to_uint8(db[[3, 0, 2, 1]], unit="db", polarizations=["VV", "HH", "VH", "HV"]), image)
    slc = np.sqrt(intensity) * np.exp(1j * np.random.default_rng(6).uniform(0, 2 * np.pi, intensity.shape))
    pauli = sar_to_uint8(slc, polarizations=["HH", "HV", "VH", "VV"])
    hh, hv, vh, vv = slc
    assert np.array_equal(pauli[..., 0], sar_to_uint8(np.abs(hh - vv)[None], unit="amplitude")[..., 0])
    assert np.array_equal(pauli[..., 2], sar_to_uint8(np.abs(hh + vv)[None], unit="amplitude")[..., 0])


def test_nodata_and_nan_are_black_and_left_out_of_the_range():
    db = 10 * np.log10(speckled_intensity(seed=7))
    with_holes = db.copy()
    with_holes[0, :5] = np.nan
    with_holes[0, 5:10] = -99.0
    image = sar_to_uint8(with_holes, unit="db", nodata=-99.0)
    assert (image[:10] == 0).all()
    assert np.array_equal(image[10:], sar_to_uint8(db[:, 10:], unit="db"))


def write_geotiff(path, data, descriptions=None, nodata=None, dtype=None):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=dtype or data.dtype, crs="EPSG:32631", transform=from_origin(500000, 4800000, 10, 10),
                       nodata=nodata) as dataset:
        dataset.write(data)
        for i, description in enumerate(descriptions or []):
            dataset.set_band_description(i + 1, description)


def test_geotiff_bands_by_name_and_clear_errors(tmp_path):
    db = (10 * np.log10(speckled_intensity(seed=8, channels=2))).astype(np.float32)
    write_geotiff(tmp_path / "s1.tif", db, ["VV", "VH"])
    assert np.array_equal(np.asarray(load_sar_image(tmp_path / "s1.tif")), sar_to_uint8(db, polarizations=["VV", "VH"]))
    assert np.array_equal(np.asarray(load_sar_image(tmp_path / "s1.tif", bands=["VH"])), sar_to_uint8(db[1:]))
    with pytest.raises(ValueError, match=r"s1.tif: no band named 'HH'; its bands are \['VV', 'VH'\]"):
        load_sar_image(tmp_path / "s1.tif", bands=["HH"])
    with pytest.raises(ValueError, match="s1.tif: band 3 does not exist; it has bands 1..2"):
        load_sar_image(tmp_path / "s1.tif", bands=[3])


def test_complex_geotiff(tmp_path):
    slc = (np.sqrt(speckled_intensity(seed=9)) * np.exp(0.5j)).astype(np.complex64)
    write_geotiff(tmp_path / "slc.tif", slc)
    assert np.array_equal(np.asarray(load_sar_image(tmp_path / "slc.tif")), sar_to_uint8(np.abs(slc) ** 2, unit="intensity"))


def real_amplitude():
    """Real Sentinel-1 VV amplitude (from the shared Sen1floods11 chip's dB, NaN nodata dropped to its median)."""
    with rasterio.open(shared_data("sen1floods11", "Spain_7370579_S1Hand.tif")) as dataset:
        db = dataset.read(1, window=((0, 64), (0, 80))).astype(np.float64)
    db[~np.isfinite(db)] = np.nanmedian(db)
    return 10 ** (db / 20)


def test_a_complex_int16_geotiff_reads_like_its_complex64_twin(tmp_path):
    """Sentinel-1 SLC measurement files are CInt16: real amplitudes scaled to digital numbers, with a phase."""
    phase = np.exp(1j * np.random.default_rng(3).uniform(-np.pi, np.pi, real_amplitude().shape))
    slc = np.round(real_amplitude() * 400 * phase).astype(np.complex64)[None]
    write_geotiff(tmp_path / "slc_cint16.tif", slc.astype(np.complex64), ["VV"], dtype="complex_int16")
    with rasterio.open(tmp_path / "slc_cint16.tif") as dataset:
        assert dataset.dtypes == ("complex_int16",)  # truly CInt16 on disk
    write_geotiff(tmp_path / "slc_c64.tif", slc, ["VV"])
    image = np.asarray(load_sar_image(tmp_path / "slc_cint16.tif"))
    assert np.array_equal(image, np.asarray(load_sar_image(tmp_path / "slc_c64.tif")))
    assert np.array_equal(image, sar_to_uint8(np.abs(slc) ** 2, unit="intensity"))


@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32", "uint32", "float32", "float64", "complex64", "complex128"])
def test_every_type_gdal_gives_sar_products_reads(tmp_path, dtype):
    """GRD digital numbers (uint16), calibrated floats, and complex SLC values of either precision."""
    amplitude = real_amplitude() * 300
    data = amplitude * np.exp(0.3j) if dtype.startswith("complex") else np.round(amplitude)
    write_geotiff(tmp_path / f"{dtype}.tif", data.astype(dtype)[None])
    intensity = np.abs(data.astype(dtype).astype(np.complex128)) ** 2
    image = np.asarray(load_sar_image(tmp_path / f"{dtype}.tif"))
    assert image.shape == (*amplitude.shape, 3) and image.std() > 10  # the real scene's texture, not a blank
    if dtype.startswith("complex"):
        assert np.array_equal(image, sar_to_uint8(intensity[None], unit="intensity"))


@pytest.mark.parametrize("name", ["broken.png", "broken.jpg", "broken.tif"])
def test_unreadable_files_are_reported_by_name(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    with pytest.raises(ValueError, match=f"{name}: not a readable"):
        load_sar_image(tmp_path / name)


def test_real_sentinel1_dual_pol_geotiff():
    path = shared_data("sen1floods11", "Spain_7370579_S1Hand.tif")
    with rasterio.open(path) as dataset:
        db = dataset.read()
    image = np.asarray(load_sar_image(path))
    assert image.shape == (512, 512, 3)
    assert np.array_equal(image[..., 0], sar_to_uint8(db[:1], unit="db")[..., 0])  # VV, read by its band name
    assert image[..., 2].std() > 10  # the VV/VH ratio channel carries signal


def test_real_utm_geotiff_with_nodata():
    path = shared_data("pyrosar_s1_geocoded", "S1A__IW___A_20150309T173017_VV_grd_mli_geo_norm_db.tif")
    with rasterio.open(path) as dataset:
        db = dataset.read(1)
    image = np.asarray(load_sar_image(path))
    assert image.shape == (*db.shape, 3)
    assert (image[db == -99] == 0).all() and (image[db != -99].mean() > 50)


def test_a_few_negative_pixels_do_not_make_linear_data_decibels():
    intensity = speckled_intensity(seed=10)
    noisy = intensity.copy()
    noisy[0, 0, :3] = -1e-4  # thermal-noise removal leaves some slightly negative pixels: no dB value, black
    expected = intensity.copy()
    expected[0, 0, :3] = np.nan
    assert np.array_equal(sar_to_uint8(noisy), sar_to_uint8(expected, unit="intensity"))
    assert (sar_to_uint8(noisy)[0, :3] == 0).all()


def test_pil_modes(tmp_path):
    palette = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert("P")
    assert np.array_equal(np.asarray(load_sar_image(palette)), np.asarray(palette.convert("RGB")))
    amplitude = np.sqrt(speckled_intensity(seed=11)[0]) * 1000
    Image.fromarray(amplitude.astype(np.uint16)).save(tmp_path / "amplitude.png")  # a 16-bit PNG holds radar values
    image = load_sar_image(tmp_path / "amplitude.png", unit="amplitude")
    assert np.array_equal(np.asarray(image), sar_to_uint8(amplitude.astype(np.uint16)[None].astype(float), unit="amplitude"))


def test_a_camera_photo_is_read_with_a_warning(tmp_path):
    from PIL import Image

    photo = Image.new("RGB", (32, 24), (40, 120, 200))
    exif = Image.Exif()
    exif[271], exif[272] = "Canon", "EOS 5D"
    photo.save(tmp_path / "holiday.jpg", exif=exif)
    with pytest.warns(UserWarning, match="holiday.jpg: a photograph taken with Canon EOS 5D, not a radar image"):
        assert load_sar_image(tmp_path / "holiday.jpg").size == (32, 24)
    photo.save(tmp_path / "quicklook.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_sar_image(tmp_path / "quicklook.png")
