"""GeoTIFF metadata through rasterio: written rows read back with CRS, transform, nodata, band names and centres."""

from __future__ import annotations

import numpy as np
import pytest

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.geotiff import GeoTiffWriter, has_geo_tags, read_geotiff_metadata
from sschsr_deploy.io.metadata import CubeMetadata, GeoReference

rasterio = pytest.importorskip("rasterio")

META = CubeMetadata(
    wavelengths=(450.0, 550.0, 650.0), fwhm=(10.0, 10.0, 12.0), wavelength_units="nm", band_names=("b", "g", "r"),
    geo=GeoReference("EPSG:32633", (500000.0, 7.5, 0.0, 4100000.0, 0.0, -7.5)), nodata=-9999.0,
    description="super-resolved", extra={"sensor": "test"})


@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_rows_and_metadata_round_trip(tmp_path, layout):
    cube = np.random.default_rng(0).random((11, 7, 3)).astype(np.float32)
    path = tmp_path / "out.tif"
    w = GeoTiffWriter(path, cube.shape, np.float32, layout, META)
    w.store(0, cube[:5])
    w.store(5, cube[5:])
    w.close()
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.transform.to_gdal() == META.geo.transform
        assert ds.nodata == -9999.0 and ds.descriptions == ("b", "g", "r")
        assert ds.profile["interleave"] == ("pixel" if layout == "hwc" else "band")
        assert np.array_equal(ds.read(), cube.transpose(2, 0, 1))
    assert has_geo_tags(path)
    back = read_geotiff_metadata(path)
    assert back.geo == META.geo and back.nodata == META.nodata and back.band_names == META.band_names
    assert back.wavelengths == pytest.approx(META.wavelengths) and back.fwhm == pytest.approx(META.fwhm)
    assert back.description == "super-resolved" and back.extra == {"sensor": "test"}


def test_plain_tiff_has_no_geo_tags(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((4, 4, 3), np.float32), photometric="minisblack")
    assert not has_geo_tags(tmp_path / "plain.tif")
    meta = read_geotiff_metadata(tmp_path / "plain.tif")
    assert meta.geo is None and meta.nodata is None and meta.wavelengths is None


def test_wkt_crs_without_epsg_is_kept(tmp_path):
    wkt = rasterio.crs.CRS.from_proj4("+proj=tmerc +lat_0=0 +lon_0=13.3 +k=0.9996 +x_0=0 +y_0=0 +ellps=GRS80").to_wkt()
    meta = CubeMetadata(geo=GeoReference(wkt, (0.0, 2.0, 0.0, 0.0, 0.0, -2.0)))
    w = GeoTiffWriter(tmp_path / "o.tif", (2, 2, 1), np.float32, "hwc", meta)
    w.store(0, np.ones((2, 2, 1), np.float32))
    w.close()
    back = read_geotiff_metadata(tmp_path / "o.tif")
    assert rasterio.crs.CRS.from_user_input(back.geo.crs) == rasterio.crs.CRS.from_wkt(wkt)


def test_metadata_that_does_not_fit_is_refused(tmp_path):
    with pytest.raises(InputValidationError, match="3 wavelengths for 2 bands"):
        GeoTiffWriter(tmp_path / "o.tif", (2, 2, 2), np.float32, "hwc", META)


def test_unreadable_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputValidationError, match="cannot read the GeoTIFF metadata"):
        read_geotiff_metadata(tmp_path / "bad.tif")
