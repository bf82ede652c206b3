"""Metadata through the readers and writers: ENVI headers (read back by SPy and GDAL too), GeoTIFF, HDF5 / MAT v7.3
attributes, MAT v5 / .npz variables; metadata that does not fit the cube is a warning, an unreadable map info or CRS a
clear error."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import as_cube
from sschsr_deploy.io.geotiff import has_geo_tags
from sschsr_deploy.io.hsi import HSIWriter, check_output_space, read_hsi, write_hsi
from sschsr_deploy.io.metadata import CubeMetadata, GeoReference, metadata_from_envi

MAP_INFO = "{UTM, 1.0, 1.0, 500000.0, 4100000.0, 30.0, 30.0, 33, North, WGS-84, units=Meters}"
ENVI_FIELDS = {
    "map info": MAP_INFO, "wavelength": "{450, 550, 650}", "fwhm": "{10, 10, 12}", "wavelength units": "Nanometers",
    "band names": "{blue, green, red}", "data ignore value": "-9999", "sensor type": "test sensor",
}
SCALED = (500000.0, 7.5, 0.0, 4100000.0, 0.0, -7.5)  # 30 m / 4, the upper-left corner kept


def _meta() -> CubeMetadata:
    return metadata_from_envi(ENVI_FIELDS).for_output(4)


def _cube(h: int = 5, w: int = 6, c: int = 3) -> np.ndarray:
    return np.random.default_rng(0).random((h, w, c)).astype(np.float32)


def test_output_metadata_is_scaled():
    meta = _meta()
    assert meta.geo == GeoReference("EPSG:32633", SCALED)
    assert meta.map_info.size_x == 7.5 and meta.map_info.zone == 33


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_round_trip_ours_rasterio_spy(tmp_path, interleave):
    rasterio = pytest.importorskip("rasterio")
    spectral = pytest.importorskip("spectral")
    cube = _cube()
    path = tmp_path / "out.img"
    write_hsi(path, cube, format="envi", layout=interleave, metadata=_meta())
    header = tmp_path / "out.hdr"
    assert f"interleave = {interleave}" in header.read_text()

    with read_hsi(path) as back:
        assert back.layout == interleave
        assert np.array_equal(back.read(), cube)
        m = back.metadata
    assert m.wavelengths == (450.0, 550.0, 650.0) and m.fwhm == (10.0, 10.0, 12.0)
    assert m.band_names == ("blue", "green", "red") and m.nodata == -9999.0
    assert m.geo == GeoReference("EPSG:32633", SCALED)
    assert m.extra == {"sensor type": "test sensor"}
    assert m.description == "written by sschsr-deploy"

    with rasterio.open(path) as ds:
        assert ds.crs is not None and ds.crs.to_epsg() == 32633
        assert ds.transform.to_gdal() == pytest.approx(SCALED)
        assert ds.nodata == -9999.0
        assert np.array_equal(ds.read(), cube.transpose(2, 0, 1))

    img = spectral.open_image(str(header))
    assert img.bands.centers == pytest.approx([450.0, 550.0, 650.0])
    assert img.interleave == {"bsq": spectral.BSQ, "bil": spectral.BIL, "bip": spectral.BIP}[interleave]
    assert img.metadata["map info"][:7] == ["UTM", "1.0", "1.0", "500000.0", "4100000.0", "7.5", "7.5"]
    assert float(img.metadata["data ignore value"]) == -9999.0
    assert np.array_equal(np.asarray(img.load()), cube)


def test_envi_bil_rows_written_in_pieces(tmp_path):
    cube = _cube(7, 4, 3)
    with HSIWriter(tmp_path / "o.img", cube.shape, layout="bil") as w:
        assert w.disk_shape == (7, 3, 4)
        w.write_rows(0, cube[:3])
        w.write_rows(3, cube[3:])
    raw = np.fromfile(tmp_path / "o.img", dtype="<f4").reshape(7, 3, 4)
    assert np.array_equal(raw, cube.transpose(0, 2, 1))


def test_bil_is_envi_only_and_readers_keep_hwc_chw(tmp_path):
    with pytest.raises(InputValidationError, match="bil"):
        HSIWriter(tmp_path / "o.npy", (2, 2, 3), layout="bil")
    with pytest.raises(InputValidationError, match="bil"):
        check_output_space(tmp_path / "o.tif", (2, 2, 3), layout="bil")
    with pytest.raises(InputValidationError, match="layout must be one of"):
        write_hsi(tmp_path / "o.npy", _cube(), layout="diagonal")
    np.save(tmp_path / "in.npy", _cube())
    with pytest.raises(InputValidationError, match="layout must be one of hwc, chw"):
        read_hsi(tmp_path / "in.npy", layout="bsq")
    # the ENVI names mean hwc / chw for other formats
    write_hsi(tmp_path / "bsq.npy", _cube(), layout="bsq")
    assert np.load(tmp_path / "bsq.npy").shape == (3, 5, 6)


@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_geotiff_round_trip(tmp_path, layout):
    rasterio = pytest.importorskip("rasterio")
    cube = _cube()
    path = tmp_path / "out.tif"
    write_hsi(path, cube, layout=layout, metadata=_meta())
    assert sorted(os.listdir(tmp_path)) == ["out.tif"]  # no temp file or GDAL side file left
    assert has_geo_tags(path)
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.transform.to_gdal() == pytest.approx(SCALED)
        assert ds.nodata == -9999.0 and ds.descriptions == ("blue", "green", "red")
        centres = [float(ds.tags(b, ns="IMAGERY")["CENTRAL_WAVELENGTH_UM"]) for b in ds.indexes]
        assert centres == pytest.approx([0.45, 0.55, 0.65])
        assert np.array_equal(ds.read(), cube.transpose(2, 0, 1))
    with read_hsi(path) as back:
        assert np.array_equal(back.read(), cube)
        m = back.metadata
    assert m.geo == GeoReference("EPSG:32633", SCALED) and m.nodata == -9999.0
    assert m.wavelengths == pytest.approx((450.0, 550.0, 650.0)) and m.band_names == ("blue", "green", "red")


def test_tiff_without_metadata_stays_plain_tifffile(tmp_path):
    import tifffile

    cube = _cube()
    with HSIWriter(tmp_path / "p.tif", cube.shape, metadata=CubeMetadata(description="no geo")) as w:
        assert type(w._sink).__name__ == "TiffSink"
        w.write(cube)
    assert not has_geo_tags(tmp_path / "p.tif")
    with tifffile.TiffFile(tmp_path / "p.tif") as tf:
        assert not {33550, 33922, 34735, 42112, 42113} & {t.code for t in tf.pages[0].tags.values()}
    with read_hsi(tmp_path / "p.tif") as back:
        assert np.array_equal(back.read(), cube)
        assert back.metadata == CubeMetadata()


def test_geotiff_bad_crs_is_a_clear_error(tmp_path):
    pytest.importorskip("rasterio")
    meta = CubeMetadata(geo=GeoReference("EPSG:999999", SCALED))
    with pytest.raises(InputValidationError, match="EPSG:999999"):
        write_hsi(tmp_path / "o.tif", _cube(), metadata=meta)
    with pytest.raises(InputValidationError, match="EPSG:999999"):
        check_output_space(tmp_path / "o.tif", (5, 6, 3), metadata=meta)
    assert os.listdir(tmp_path) == []


def test_geotiff_needs_rasterio(tmp_path, monkeypatch):
    import sschsr_deploy.io.tiff as tiff

    monkeypatch.setattr(tiff, "rasterio_available", lambda: False)
    with pytest.raises(InputValidationError, match=r"sschsr-deploy\[geo\]"):
        write_hsi(tmp_path / "o.tif", _cube(), metadata=CubeMetadata(nodata=0.0))
    assert os.listdir(tmp_path) == []


def test_band_metadata_without_rasterio_falls_back_to_plain_tiff(tmp_path, monkeypatch, caplog):
    import sschsr_deploy.io.tiff as tiff

    monkeypatch.setattr(tiff, "rasterio_available", lambda: False)
    cube = _cube()
    with caplog.at_level(logging.WARNING):
        write_hsi(tmp_path / "o.tif", cube, metadata=CubeMetadata(wavelengths=(1.0, 2.0, 3.0)))
    assert "band centres" in caplog.text and not has_geo_tags(tmp_path / "o.tif")
    assert np.array_equal(read_hsi(tmp_path / "o.tif").read(), cube)


def test_geotiff_refuses_dtype_gdal_cannot_store(tmp_path):
    pytest.importorskip("rasterio")
    with pytest.raises(InputValidationError, match="float16"):
        HSIWriter(tmp_path / "o.tif", (2, 2, 3), np.float16, metadata=_meta())
    assert os.listdir(tmp_path) == []


def test_geotiff_abort_removes_temp(tmp_path):
    pytest.importorskip("rasterio")
    cube = _cube()
    with pytest.raises(RuntimeError, match="stop"), HSIWriter(tmp_path / "o.tif", cube.shape, metadata=_meta()) as w:
        w.write_rows(0, cube[:2])
        assert len(os.listdir(tmp_path)) == 1  # the temp file
        raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []


def test_geotiff_tags_ignored_with_warning_without_rasterio(tmp_path, monkeypatch, caplog):
    pytest.importorskip("rasterio")
    import sschsr_deploy.io.tiff as tiff

    cube = _cube()
    write_hsi(tmp_path / "g.tif", cube, metadata=_meta())
    monkeypatch.setattr(tiff, "rasterio_available", lambda: False)
    with caplog.at_level(logging.WARNING), read_hsi(tmp_path / "g.tif") as back:
        assert np.array_equal(back.read(), cube) and back.metadata.geo is None
    assert "sschsr-deploy[geo]" in caplog.text and "g.tif" in caplog.text

    def broken(path):
        raise RuntimeError("GDAL exploded")

    monkeypatch.setattr(tiff, "rasterio_available", lambda: True)
    monkeypatch.setattr(tiff, "read_geotiff_metadata", broken)
    caplog.clear()
    with caplog.at_level(logging.WARNING), read_hsi(tmp_path / "g.tif") as back:
        assert np.array_equal(back.read(), cube) and back.metadata == CubeMetadata()
    assert "GDAL exploded" in caplog.text


@pytest.mark.parametrize("fmt,ext", [("h5", ".h5"), ("mat73", ".mat"), ("mat", ".mat"), ("npz", ".npz")])
def test_attribute_and_variable_formats_round_trip(tmp_path, fmt, ext):
    cube = _cube()
    path = tmp_path / f"o{ext}"
    write_hsi(path, cube, format=fmt, layout="chw", metadata=_meta())
    with read_hsi(path) as back:
        assert back.format == fmt and back.variable == "hsi"
        assert np.array_equal(back.read(), cube)
        m = back.metadata
    assert m.wavelengths == (450.0, 550.0, 650.0) and m.fwhm == (10.0, 10.0, 12.0)
    assert m.wavelength_units == "Nanometers" and m.nodata == -9999.0
    assert m.geo == GeoReference("EPSG:32633", SCALED)
    assert m.band_names == ("blue", "green", "red")
    if fmt in ("h5", "mat73"):
        assert m.extra == {"sensor type": "test sensor"}


def test_npy_has_no_metadata(tmp_path):
    write_hsi(tmp_path / "o.npy", _cube(), metadata=_meta())
    assert read_hsi(tmp_path / "o.npy").metadata == CubeMetadata()


def test_h5_root_attributes_and_vector_datasets(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.attrs["nodata"] = -1.0
        f.attrs["description"] = "root"
        ds = f.create_dataset("cube", data=_cube(4, 4, 3))
        ds.attrs["description"] = "dataset"
        f.create_dataset("wavelength", data=np.array([[0.45, 0.55, 0.65]]))  # 1 x N, micrometres
        f.create_dataset("fwhm", data=np.array([0.01, 0.01, 0.02]))
    m = read_hsi(path, variable="cube").metadata
    assert m.nodata == -1.0 and m.description == "dataset"
    assert m.wavelengths == (0.45, 0.55, 0.65) and m.wavelengths_nm == pytest.approx((450.0, 550.0, 650.0))
    assert m.fwhm == (0.01, 0.01, 0.02)


def test_mat73_vectors_flattened_and_char_skipped(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "x.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        ds = f.create_dataset("cube", data=_cube(4, 5, 3).transpose(2, 1, 0))  # MATLAB 4 x 5 x 3
        ds.attrs["MATLAB_class"] = np.bytes_("single")
        wl = f.create_dataset("wavelength", data=np.array([[450.0], [550.0], [650.0]]))  # MATLAB 1 x 3
        wl.attrs["MATLAB_class"] = np.bytes_("double")
        txt = f.create_dataset("fwhm", data=np.array([[49], [50], [51]], np.uint16))  # a char array named fwhm
        txt.attrs["MATLAB_class"] = np.bytes_("char")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\x00" * 8 + b"\x00\x02IM")
    with read_hsi(path, variable="cube") as back:
        assert back.format == "mat73" and back.shape == (4, 5, 3)
        assert back.metadata.wavelengths == (450.0, 550.0, 650.0) and back.metadata.fwhm is None


def test_mat5_variables_written_by_scipy(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    path = tmp_path / "x.mat"
    scipy_io.savemat(path, {
        "cube": _cube(4, 4, 3), "wavelength": np.array([450.0, 550.0, 650.0]), "nodata": 0.0,
        "crs": "EPSG:32633", "geotransform": np.array(SCALED), "band_names": np.array(["a", "b", "c"], dtype=object),
        "wavelength_units": "nm", "description": "scene",
    })
    m = read_hsi(path).metadata
    assert m.wavelengths == (450.0, 550.0, 650.0) and m.wavelength_units == "nm" and m.nodata == 0.0
    assert m.geo == GeoReference("EPSG:32633", SCALED) and m.band_names == ("a", "b", "c")
    assert m.description == "scene"


def test_npz_scalars_and_string_arrays(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, cube=_cube(4, 4, 3), wavelength=np.array([1.0, 2.0, 3.0]), nodata=np.array(5.0),
             band_names=np.array(["x", "y", "z"]), crs=np.array("EPSG:4326"), geotransform=np.array(SCALED),
             units=np.array(["um"]))
    m = read_hsi(path).metadata
    assert m.wavelengths_nm == (1000.0, 2000.0, 3000.0) and m.nodata == 5.0 and m.band_names == ("x", "y", "z")
    assert m.geo == GeoReference("EPSG:4326", SCALED)


def _envi(tmp_path, extra: str, bands: int = 3):
    cube = _cube(4, 5, bands)
    cube.transpose(2, 0, 1).astype("<f4").tofile(tmp_path / "in.img")
    (tmp_path / "in.hdr").write_text(
        f"ENVI\nsamples = 5\nlines = 4\nbands = {bands}\nheader offset = 0\ndata type = 4\ninterleave = bsq\n"
        f"byte order = 0\n{extra}")
    return cube


def test_envi_wavelength_count_mismatch_warns_and_drops(tmp_path, caplog):
    cube = _envi(tmp_path, "wavelength = {400, 500, 600, 700}\nfwhm = {1, 2, 3}\n")
    with caplog.at_level(logging.WARNING), read_hsi(tmp_path / "in.hdr") as back:
        assert back.metadata.wavelengths is None and back.metadata.fwhm == (1.0, 2.0, 3.0)
        assert np.array_equal(back.read(), cube)
    assert "in.hdr" in caplog.text and "wavelengths" in caplog.text and "4 values for 3 bands" in caplog.text


def test_envi_unparsable_map_info_names_the_header(tmp_path):
    _envi(tmp_path, "map info = {UTM, 1, 1, east, 4100000, 30, 30}\n")
    with pytest.raises(InputValidationError, match="in.hdr") as err:
        read_hsi(tmp_path / "in.img")
    assert "easting" in str(err.value)


def test_validated_drops_what_does_not_fit(caplog):
    meta = CubeMetadata(wavelengths=(1.0, float("nan")), fwhm=(1.0, 2.0), band_names=("a",), nodata=float("inf"))
    with caplog.at_level(logging.WARNING):
        out = meta.validated(2, "f.hdr")
    assert out.wavelengths is None and out.fwhm == (1.0, 2.0) and out.band_names is None and out.nodata is None
    assert meta.wavelengths is not None  # the input is not changed
    assert caplog.text.count("f.hdr") == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        out = CubeMetadata(wavelengths=(1.0, 2.0), fwhm=(1.0, 1.0), wavelength_units="cm-1").validated(2, "g")
    assert out.wavelengths is None and out.fwhm is None and "cannot be converted" in caplog.text
    kept = CubeMetadata(wavelengths=(1.0, 2.0), wavelength_units="um", nodata=float("nan")).validated(2)
    assert kept.wavelengths == (1.0, 2.0) and kept.nodata != kept.nodata  # NaN nodata is fine


def test_writer_refuses_metadata_for_other_band_count(tmp_path):
    with pytest.raises(InputValidationError, match="3 wavelengths for 2 bands"):
        HSIWriter(tmp_path / "o.img", (4, 4, 2), metadata=_meta())
    assert os.listdir(tmp_path) == []


def test_as_cube_carries_metadata():
    meta = CubeMetadata(wavelengths=(1.0, 2.0, 3.0))
    cube = as_cube(_cube(), metadata=meta)
    assert cube.metadata.wavelengths == (1.0, 2.0, 3.0)
    assert as_cube(_cube()).metadata == CubeMetadata()
    assert as_cube(cube, metadata=CubeMetadata(nodata=1.0)).metadata.nodata == 1.0


def test_gdal_full_disk_error_becomes_output_space_error(tmp_path):
    errors = pytest.importorskip("rasterio.errors")
    from sschsr_deploy.errors import OutputSpaceError
    from sschsr_deploy.io.tiff import _gdal_space_errors

    with pytest.raises(OutputSpaceError, match="o.tif"), _gdal_space_errors(tmp_path / "o.tif", 100):
        raise errors.RasterioIOError("Write error: No space left on device")
    with pytest.raises(errors.RasterioIOError, match="other"), _gdal_space_errors(tmp_path / "o.tif", 100):
        raise errors.RasterioIOError("other")
