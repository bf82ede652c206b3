"""Metadata through the pipeline: an input's band centres, georeference, nodata and interleave reach the HR output
(read back with rasterio and SPy), bands are mapped by wavelength (a 224-band 400–2500 nm cube on the 31-band model),
and what cannot be right is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from sschsr_deploy.bands import BandMappedCube, plan_band_mapping
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import as_cube
from sschsr_deploy.io.hsi import read_hsi, write_hsi
from sschsr_deploy.io.metadata import CubeMetadata, GeoReference, parse_map_info
from sschsr_deploy.runtime import Pipeline
from sschsr_deploy.runtime.pipeline import output_layout

rasterio = pytest.importorskip("rasterio")
spectral = pytest.importorskip("spectral")

UTM = "{UTM, 1.0, 1.0, 500000.0, 4100000.0, 30.0, 30.0, 33, North, WGS-84, units=Meters}"
LR = 16
FILL = -9999.0


@pytest.fixture(scope="module")
def tiny():
    return Pipeline.from_pretrained("tiny-x4", quiet=True, tile=128)


def _cube(bands: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random((LR, LR, bands)), (1.5, 1.5, 0)).astype(np.float32)


@pytest.fixture(scope="module")
def ref_png(tmp_path_factory):
    import cv2

    path = tmp_path_factory.mktemp("ref") / "ref.png"
    rng = np.random.default_rng(1)
    cv2.imwrite(str(path), (ndimage.gaussian_filter(rng.random((4 * LR, 4 * LR, 3)), (2, 2, 0)) * 255).astype(
        np.uint8))
    return path


def _envi(path, cube_hwc: np.ndarray, interleave: str, fields: dict[str, str]) -> None:
    """An ENVI file written by hand (not by our writer): the header fields as given."""
    order = {"bsq": (2, 0, 1), "bil": (0, 2, 1), "bip": (0, 1, 2)}[interleave]
    np.ascontiguousarray(cube_hwc.transpose(order)).astype("<f4").tofile(path.with_suffix(".img"))
    h, w, c = cube_hwc.shape
    lines = ["ENVI", f"samples = {w}", f"lines = {h}", f"bands = {c}", "header offset = 0",
             "file type = ENVI Standard", "data type = 4", f"interleave = {interleave}", "byte order = 0"]
    lines += [f"{k} = {v}" for k, v in fields.items()]
    path.with_suffix(".hdr").write_text("\n".join(lines) + "\n")


def _wl(values) -> str:
    return "{" + ", ".join(f"{v:.3f}" for v in values) + "}"


def test_envi_in_envi_out_keeps_interleave_georeference_wavelengths_and_nodata(tiny, ref_png, tmp_path):
    cube = _cube(31)
    cube[7] = FILL  # a fill row
    wl = np.linspace(400, 700, 31)
    _envi(tmp_path / "in.img", cube, "bil", {
        "wavelength units": "Nanometers", "wavelength": _wl(wl), "fwhm": _wl(np.full(31, 10.0)),
        "map info": UTM, "data ignore value": "-9999", "sensor type": "demo camera",
    })
    out = tmp_path / "out.img"
    tiny.run_files(tmp_path / "in.hdr", ref_png, None, out)
    side = json.loads((tmp_path / "out.img.json").read_text()) if (tmp_path / "out.img.json").exists() else \
        json.loads(next(tmp_path.glob("out*.json")).read_text())
    assert side["output_layout"] == "bil" and side["band_mapping"]["method"] == "identity"
    assert side["nodata"]["masked_lr_pixels"] == LR and side["metadata"]["nodata"] == FILL
    img = spectral.open_image(str(tmp_path / "out.hdr"))
    assert img.metadata["interleave"] == "bil"
    np.testing.assert_allclose(img.bands.centers, wl, atol=1e-3)
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.nodata == FILL
        assert ds.transform.to_gdal() == pytest.approx((500000.0, 7.5, 0.0, 4100000.0, 0.0, -7.5))
    back = read_hsi(out)
    assert back.layout == "bil" and back.metadata.extra.get("sensor type") == "demo camera"
    hr = back.read()
    assert (hr[28:32] == FILL).all() and (hr[:28] != FILL).all() and (hr[32:] != FILL).all()
    assert np.isfinite(hr).all()


def test_geotiff_in_geotiff_out(tiny, ref_png, tmp_path):
    from rasterio.transform import Affine

    cube = _cube(31, 2)
    src = tmp_path / "in.tif"
    with rasterio.open(src, "w", driver="GTiff", width=LR, height=LR, count=31, dtype="float32", crs="EPSG:32633",
                       transform=Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4100000.0), nodata=FILL) as ds:
        ds.write(cube.transpose(2, 0, 1))
    out = tmp_path / "out.tif"
    tiny.run_files(src, ref_png, None, out)
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.nodata == FILL and ds.count == 31
        assert ds.transform.to_gdal() == pytest.approx((500000.0, 7.5, 0.0, 4100000.0, 0.0, -7.5))
        assert (ds.width, ds.height) == (4 * LR, 4 * LR)


def test_224_band_cube_runs_on_the_31_band_model_and_records_the_mapping(tiny, ref_png, tmp_path):
    wl = np.linspace(400, 2500, 224)
    cube = _cube(224, 3)
    _envi(tmp_path / "aviris.img", cube, "bip", {"wavelength units": "Nanometers", "wavelength": _wl(wl),
                                                 "map info": UTM})
    out = tmp_path / "hr.hdr"
    tiny.run_files(tmp_path / "aviris.hdr", ref_png, None, out)
    side = json.loads(next(p for p in tmp_path.glob("hr*.json")).read_text())
    mapping = side["band_mapping"]
    expected = plan_band_mapping(wl, np.linspace(400, 700, 31))
    assert mapping["method"] == expected.method == "nearest"
    assert mapping["source_bands"] == list(expected.source_indices)
    back = read_hsi(out)
    assert back.bands == 31
    np.testing.assert_allclose(back.metadata.wavelengths, wl[list(expected.source_indices)], atol=1e-3)
    assert "nearest" in back.metadata.extra["band mapping"]
    with rasterio.open(tmp_path / "hr.img") as ds:
        assert ds.count == 31 and ds.crs.to_epsg() == 32633


def test_band_mapping_refusals(tiny, ref_png, tmp_path):
    _envi(tmp_path / "short.img", _cube(30, 4), "bsq", {"wavelength": _wl(np.linspace(450, 740, 30))})
    with pytest.raises(InputValidationError, match="cover"):
        tiny.run_files(tmp_path / "short.hdr", ref_png, None, tmp_path / "a.npy")
    _envi(tmp_path / "wide.img", _cube(224, 5), "bsq", {"wavelength": _wl(np.linspace(400, 2500, 224))})
    with pytest.raises(InputValidationError, match="224 bands but the model expects 31"):
        tiny.run_files(tmp_path / "wide.hdr", ref_png, None, tmp_path / "b.npy", band_mapping="none")
    np.save(tmp_path / "plain.npy", _cube(12, 6))
    with pytest.raises(InputValidationError, match="needs the cube's band centres"):
        tiny.run_files(tmp_path / "plain.npy", ref_png, None, tmp_path / "c.npy", band_mapping="nearest")
    assert not list(tmp_path.glob("[abc].npy"))


def test_in_memory_wavelengths_gaussian_mapping(tiny, ref_png):
    import cv2

    ref = cv2.imread(str(ref_png))[:, :, ::-1]
    wl = np.arange(395.0, 706.0, 2.5)  # 125 bands, 4 per model band: integrated
    cube = _cube(wl.size, 7)
    out = tiny.run(cube, ref, wavelengths=wl)
    assert out.shape == (4 * LR, 4 * LR, 31) and np.isfinite(out).all()
    assert tiny.last_band_mapping.method == "gaussian"
    mapped = BandMappedCube(as_cube(cube, "hwc"), tiny.last_band_mapping)
    np.testing.assert_allclose(mapped.read(), tiny.last_band_mapping.apply(cube), rtol=1e-6)


def test_band_mapped_cube_marks_nodata_in_every_band():
    wl = np.arange(395.0, 706.0, 2.5)
    cube = _cube(wl.size, 8)
    cube[3, 4, 60] = FILL
    mapping = plan_band_mapping(wl, np.linspace(400, 700, 31))
    view = BandMappedCube(as_cube(cube, "hwc"), mapping, FILL)
    block = view.read()
    assert (block[3, 4] == FILL).all() and (block != FILL).sum() == block.size - 31
    np.testing.assert_array_equal(view.read(rows=slice(2, 5), cols=slice(3, 6), bands=[0, 5]),
                                  block[2:5, 3:6][:, :, [0, 5]])


def test_output_layout_follows_the_input():
    assert output_layout("bsq", "envi") == "bsq" and output_layout("bil", "envi") == "bil"
    assert output_layout("bsq", "npy") == "chw" and output_layout("bil", "h5") == "hwc"
    assert output_layout("chw", "tiff") == "chw" and output_layout("hwc", "envi") == "hwc"
    assert output_layout("bsq", "envi", "bip") == "bip"


def test_metadata_written_by_our_writer_round_trips_through_the_pipeline(tiny, ref_png, tmp_path):
    meta = CubeMetadata(wavelengths=tuple(np.linspace(0.4, 0.7, 31)), wavelength_units="Micrometers",
                        geo=GeoReference("EPSG:32633", parse_map_info(UTM).geotransform()), description="scene 7")
    write_hsi(tmp_path / "in.h5", _cube(31, 9), metadata=meta)
    tiny.run_files(tmp_path / "in.h5", ref_png, None, tmp_path / "out.h5")
    back = read_hsi(tmp_path / "out.h5").metadata
    np.testing.assert_allclose(back.wavelengths_nm, np.linspace(400, 700, 31))
    assert back.geo.transform == pytest.approx((500000.0, 7.5, 0.0, 4100000.0, 0.0, -7.5))
    assert back.geo.crs == "EPSG:32633" and back.description == "scene 7"
