"""The cube metadata model: ENVI map info ↔ geotransform (checked against GDAL through rasterio), scaling for the
super-resolved output, spectral lists, JSON round trip, clear errors on bad metadata."""

from __future__ import annotations

import numpy as np
import pytest

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.metadata import (
    CubeMetadata,
    GeoReference,
    format_map_info,
    parse_map_info,
    to_nanometres,
)

UTM = "{UTM, 1.000, 1.000, 500000.000, 4100000.000, 30.000, 30.000, 33, North, WGS-84, units=Meters}"


def test_map_info_parses_and_round_trips():
    info = parse_map_info(UTM)
    assert (info.projection, info.zone, info.hemisphere, info.datum, info.units) == ("UTM", 33, "North", "WGS-84",
                                                                                     "Meters")
    assert info.geotransform() == (500000.0, 30.0, 0.0, 4100000.0, 0.0, -30.0)
    assert parse_map_info(format_map_info(info)) == info


def test_reference_pixel_other_than_the_corner():
    info = parse_map_info("{UTM, 1.5, 1.5, 500015.0, 4099985.0, 30.0, 30.0, 33, North, WGS-84}")
    assert info.geotransform() == pytest.approx((500000.0, 30.0, 0.0, 4100000.0, 0.0, -30.0))
    hr = info.scaled(4)
    assert (hr.ref_x, hr.size_x) == (3.0, 7.5)  # the same map point, now at HR pixel corner 3
    assert hr.geotransform() == pytest.approx((500000.0, 7.5, 0.0, 4100000.0, 0.0, -7.5))


def test_scaled_georeference_keeps_the_corner():
    geo = GeoReference("EPSG:32633", parse_map_info(UTM).geotransform())
    hr = geo.scaled(4)
    assert hr.transform == (500000.0, 7.5, 0.0, 4100000.0, 0.0, -7.5) and hr.crs == "EPSG:32633"
    assert hr.pixel_size == (7.5, 7.5)


@pytest.mark.parametrize("bad, match", [
    ("{UTM, 1, 1, 500000}", "at least 7 items"),
    ("{UTM, 1, 1, east, 4100000, 30, 30}", "easting 'east'"),
    ("{UTM, 1, 1, 500000, 4100000, -30, 30}", "positive"),
    ("{UTM, 1, 1, 500000, 4100000, 30, 30, 33, Up, WGS-84}", "hemisphere"),
    ("{UTM, 1, 1, 500000, 4100000, 30, 30, 33, North, WGS-84, rotation=nan}", "rotation"),
])
def test_bad_map_info_is_a_clear_error(bad, match):
    with pytest.raises(InputValidationError, match=match):
        parse_map_info(bad)


def test_degenerate_geotransform_refused():
    with pytest.raises(InputValidationError, match="degenerate"):
        GeoReference(None, (0.0, 0.0, 0.0, 0.0, 0.0, -1.0))


def test_map_info_agrees_with_gdal(tmp_path):
    """GDAL's ENVI driver reads the same geotransform from the header as parse_map_info computes (incl. rotation)."""
    rasterio = pytest.importorskip("rasterio")
    for value in (UTM, "{UTM, 2.5, 3.5, 500000.0, 4100000.0, 30.0, 20.0, 33, North, WGS-84, rotation=15.0}"):
        (tmp_path / "cube.img").write_bytes(np.zeros((2, 5, 6), np.float32).tobytes())
        (tmp_path / "cube.hdr").write_text(
            "ENVI\nsamples = 6\nlines = 5\nbands = 2\nheader offset = 0\nfile type = ENVI Standard\n"
            f"data type = 4\ninterleave = bsq\nbyte order = 0\nmap info = {value}\n")
        with rasterio.open(tmp_path / "cube.img") as ds:
            gdal = ds.transform.to_gdal()
        assert parse_map_info(value).geotransform() == pytest.approx(gdal, abs=1e-6)


def test_wavelength_units():
    assert to_nanometres([0.4, 0.7], "Micrometers") == pytest.approx((400.0, 700.0))
    assert to_nanometres([0.4, 2.5], None) == pytest.approx((400.0, 2500.0))  # guessed from the values
    assert to_nanometres([400, 700], None) == (400.0, 700.0)
    with pytest.raises(InputValidationError, match="unknown wavelength unit"):
        to_nanometres([1.0], "furlongs")
    with pytest.raises(InputValidationError, match="cannot be converted"):
        to_nanometres([1.0], "wavenumber")


def test_check_refuses_lists_that_do_not_match_the_bands():
    meta = CubeMetadata(wavelengths=tuple(range(400, 710, 10)))
    assert meta.check(31) is meta
    with pytest.raises(InputValidationError, match="31 wavelengths for 30 bands"):
        meta.check(30, "scene.hdr")
    with pytest.raises(InputValidationError, match="infinite"):
        CubeMetadata(nodata=float("-inf")).check(3)


def test_for_output_scales_and_reindexes():
    meta = CubeMetadata(
        wavelengths=(400.0, 500.0, 600.0), fwhm=(10.0, 10.0, 12.0), band_names=("a", "b", "c"),
        geo=GeoReference("EPSG:32633", (0.0, 30.0, 0.0, 0.0, 0.0, -30.0)), map_info=parse_map_info(UTM),
        nodata=-9999.0, extra={"sensor type": "AVIRIS"})
    out = meta.for_output(4, band_indices=[2, 0])
    assert out.wavelengths == (600.0, 400.0) and out.fwhm == (12.0, 10.0) and out.band_names == ("c", "a")
    assert out.geo.transform[1] == 7.5 and out.map_info.size_x == 7.5
    assert out.nodata == -9999.0 and out.extra == {"sensor type": "AVIRIS"}
    assert meta.geo.transform[1] == 30.0  # the input's metadata is not changed
    resampled = meta.for_output(2, wavelengths_nm=[450.0, 550.0])
    assert resampled.wavelengths == (450.0, 550.0) and resampled.fwhm is None and resampled.band_names is None
    assert CubeMetadata.from_json(meta.to_json()) == meta


# ---- ENVI headers and attributes -------------------------------------------------------------------------------------

from sschsr_deploy.io.metadata import (  # noqa: E402
    attributes_from_metadata,
    envi_fields,
    metadata_from_attributes,
    metadata_from_envi,
)

ENVI = {
    "samples": "6", "lines": "5", "bands": "3", "interleave": "bsq", "data type": "4",
    "wavelength": "{450.0, 550.0,\n 650.0}", "fwhm": "{10, 10, 12}", "wavelength units": "Nanometers",
    "band names": "{blue, green, red}", "map info": UTM, "data ignore value": "-9999",
    "description": "{AVIRIS scene}", "sensor type": "AVIRIS",
}


def test_envi_header_to_metadata_and_back():
    meta = metadata_from_envi(ENVI)
    assert meta.wavelengths == (450.0, 550.0, 650.0) and meta.fwhm == (10.0, 10.0, 12.0)
    assert meta.band_names == ("blue", "green", "red") and meta.nodata == -9999.0
    assert meta.geo.crs == "EPSG:32633" and meta.geo.transform[1] == 30.0  # UTM 33 North, WGS-84
    assert meta.description == "AVIRIS scene" and meta.extra == {"sensor type": "AVIRIS"}
    fields = envi_fields(meta.for_output(4))
    assert "samples" not in fields and fields["sensor type"] == "AVIRIS"
    assert parse_map_info(fields["map info"]).size_x == 7.5
    assert "coordinate system string" not in fields  # the UTM map info says it all
    back = metadata_from_envi({**fields, "samples": "24"})
    assert back.wavelengths == meta.wavelengths and back.geo == meta.geo.scaled(4)


@pytest.mark.parametrize("key, value, match", [
    ("wavelength", "{450, abc, 650}", "wavelength must be a list of numbers"),
    ("data ignore value", "none", "data ignore value"),
    ("map info", "{UTM, 1, 1}", "at least 7 items"),
])
def test_bad_envi_metadata(key, value, match):
    with pytest.raises(InputValidationError, match=match):
        metadata_from_envi({**ENVI, key: value})


def test_envi_header_we_write_is_read_by_gdal_and_spy(tmp_path):
    """GDAL (rasterio) reads our map info + CRS, SPy reads our wavelengths, FWHM and band names."""
    rasterio = pytest.importorskip("rasterio")
    spectral = pytest.importorskip("spectral")
    cube = np.random.default_rng(0).random((3, 5, 6)).astype(np.float32)  # bsq
    geos = [GeoReference("EPSG:32633", (500000.0, 7.5, 0.0, 4100000.0, 0.0, -7.5)),  # a GeoTIFF's UTM
            GeoReference("EPSG:3035", (4321000.0, 10.0, 0.0, 3210000.0, 0.0, -10.0))]  # LAEA Europe: WKT
    for geo in geos:
        meta = CubeMetadata(wavelengths=(450.0, 550.0, 650.0), fwhm=(10.0, 10.0, 12.0), band_names=("b", "g", "r"),
                            geo=geo, nodata=-9999.0)
        fields = envi_fields(meta)
        header = "ENVI\nsamples = 6\nlines = 5\nbands = 3\nheader offset = 0\nfile type = ENVI Standard\n" \
                 "data type = 4\ninterleave = bsq\nbyte order = 0\n"
        header += "".join(f"{k} = {v}\n" for k, v in fields.items())
        (tmp_path / "c.hdr").write_text(header)
        (tmp_path / "c.img").write_bytes(cube.tobytes())
        with rasterio.open(tmp_path / "c.img") as ds:
            assert ds.transform.to_gdal() == pytest.approx(geo.transform)
            assert ds.crs == rasterio.crs.CRS.from_user_input(geo.crs)
            assert ds.nodata == -9999.0
        img = spectral.envi.open(str(tmp_path / "c.hdr"), str(tmp_path / "c.img"))
        assert img.bands.centers == [450.0, 550.0, 650.0] and img.bands.bandwidths == [10.0, 10.0, 12.0]
        assert img.metadata["band names"] == ["b", "g", "r"]


def test_attributes_round_trip():
    meta = CubeMetadata(wavelengths=(0.45, 0.55), wavelength_units="um", band_names=("a", "b"), nodata=0.0,
                        geo=GeoReference("EPSG:4326", (10.0, 0.001, 0.0, 50.0, 0.0, -0.001)), description="d",
                        extra={"sensor": "x"})
    attrs = attributes_from_metadata(meta)
    back = metadata_from_attributes({**attrs, "MATLAB_class": "double"})
    assert back == meta
    assert back.wavelengths_nm == pytest.approx((450.0, 550.0))
    assert metadata_from_attributes({"_FillValue": np.array([-1.0])}).nodata == -1.0
    with pytest.raises(InputValidationError, match="geotransform has 6 numbers"):
        metadata_from_attributes({"geotransform": np.zeros(4)})
    with pytest.raises(InputValidationError, match="wavelengths must be numbers"):
        metadata_from_attributes({"wavelength": ["a", "b"]})
