"""GeoTIFF through rasterio (GDAL): the georeference, nodata and band centres of a TIFF, read and written.

Pixels of plain TIFFs keep going through tifffile (:mod:`.tiff`: lazy memory maps); rasterio is used where GDAL's
knowledge matters — a TIFF that carries GeoTIFF keys (CRS, geotransform), GDAL's nodata tag or GDAL band metadata, and
any output whose metadata has a georeference. Band centres and widths are GDAL's ``IMAGERY`` band metadata
(``CENTRAL_WAVELENGTH_UM`` / ``FWHM_UM``, what GDAL itself writes when it converts ENVI), band names the band
descriptions. rasterio is optional (``pip install .[geo]``); without it GeoTIFF metadata cannot be read or written
and asking for it is a clear error.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.metadata import CubeMetadata, GeoReference

__all__ = ["GeoTiffWriter", "check_crs", "has_geo_tags", "rasterio_available", "read_geotiff_metadata"]

log = logging.getLogger(__name__)

# TIFF tags that make a TIFF a GeoTIFF or carry GDAL's metadata / nodata: pixel scale, tie point, transformation,
# GeoKeys, GDAL metadata, GDAL nodata
_GEO_TAGS = {33550, 33922, 34264, 34735, 42112, 42113}


def rasterio_available() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def _rasterio() -> Any:
    try:
        import rasterio
    except ImportError:
        raise InputValidationError(
            "GeoTIFF georeferencing needs rasterio: pip install 'sschsr-deploy[geo]' (or pip install rasterio)"
        ) from None
    return rasterio


def check_crs(crs: str) -> None:
    """Refuse a CRS that rasterio (PROJ) cannot parse with a clear error naming it, instead of GDAL's ``CRSError``
    while the file is being made (needs rasterio)."""
    _rasterio()
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        CRS.from_user_input(crs)
    except CRSError as exc:
        raise InputValidationError(
            f"the output's CRS {crs[:200]!r} is not one rasterio / PROJ understands ({exc}); a GeoTIFF cannot be "
            "georeferenced with it") from None


def has_geo_tags(path: os.PathLike | str) -> bool:
    """Whether the first page of a TIFF carries GeoTIFF keys, GDAL metadata or GDAL's nodata tag."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            return bool(_GEO_TAGS & {tag.code for tag in tf.pages[0].tags.values()})
    except Exception:  # noqa: BLE001 - an unreadable file is the pixel reader's to report
        return False


def _floats(values: list[str | None]) -> tuple[float, ...] | None:
    if not values or any(v is None for v in values):
        return None
    try:
        return tuple(float(v) for v in values)  # type: ignore[arg-type]
    except ValueError:
        return None


def read_geotiff_metadata(path: os.PathLike | str) -> CubeMetadata:
    """The metadata GDAL reads from a (Geo)TIFF: CRS and transform (when georeferenced), nodata, band centres / FWHM
    (µm in GDAL's IMAGERY domain, returned in nm), band names, and the dataset's other tags (passed through)."""
    rasterio = _rasterio()
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        _quiet_gdal()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain TIFF: geo stays None
            ds = rasterio.open(path)
        with ds:
            geo = None
            if ds.crs is not None or not ds.transform.is_identity:
                crs = None
                if ds.crs is not None:
                    epsg = ds.crs.to_epsg()
                    crs = f"EPSG:{epsg}" if epsg else ds.crs.to_wkt()
                geo = GeoReference(crs, tuple(ds.transform.to_gdal()))
            imagery = [ds.tags(b, ns="IMAGERY") for b in ds.indexes]
            centres = _floats([t.get("CENTRAL_WAVELENGTH_UM") for t in imagery])
            widths = _floats([t.get("FWHM_UM") for t in imagery])
            names = tuple(d or "" for d in ds.descriptions) if any(ds.descriptions) else None
            tags = {k: v for k, v in ds.tags().items() if k not in ("AREA_OR_POINT",)}
            nodata = None if ds.nodata is None else float(ds.nodata)
    except RasterioError as exc:
        raise InputValidationError(f"cannot read the GeoTIFF metadata of {path}: {exc}") from exc
    return CubeMetadata(
        wavelengths=None if centres is None else tuple(c * 1000.0 for c in centres),
        fwhm=None if widths is None else tuple(w * 1000.0 for w in widths),
        wavelength_units=None if centres is None else "Nanometers",
        band_names=names, geo=geo, nodata=nodata, description=tags.pop("TIFFTAG_IMAGEDESCRIPTION", None),
        extra=tags,
    )


def _quiet_gdal() -> None:
    """GDAL's warnings (rasterio logs them) stay off stderr; errors still raise."""
    for name in ("rasterio", "rasterio._env", "rasterio._base", "rasterio._io"):
        logging.getLogger(name).setLevel(logging.ERROR)


class GeoTiffWriter:
    """Write an H x W x C float cube into a GeoTIFF at ``path`` (normally a temp path the caller renames), rows at a
    time, with the georeference, nodata, band names and band centres of ``metadata``. ``layout``: ``"hwc"`` →
    pixel-interleaved, ``"chw"`` → band-interleaved (planar); BigTIFF when the data need it."""

    def __init__(self, path: Path, shape_hwc: tuple[int, int, int], dtype: np.dtype, layout: str,
                 metadata: CubeMetadata) -> None:
        rasterio = _rasterio()
        from rasterio.transform import Affine

        h, w, c = shape_hwc
        self.shape_hwc = shape_hwc
        meta = metadata.check(c, str(path))
        profile: dict[str, Any] = dict(
            driver="GTiff", width=w, height=h, count=c, dtype=np.dtype(dtype).name,
            interleave="pixel" if layout == "hwc" else "band", BIGTIFF="IF_SAFER",
        )
        if meta.geo is not None:
            profile["transform"] = Affine.from_gdal(*meta.geo.transform)
            if meta.geo.crs:
                check_crs(meta.geo.crs)
                profile["crs"] = meta.geo.crs
        if meta.nodata is not None:
            profile["nodata"] = meta.nodata
        _quiet_gdal()
        self.ds = rasterio.open(path, "w", **profile)
        try:
            if meta.band_names:
                for b, name in enumerate(meta.band_names, 1):
                    self.ds.set_band_description(b, str(name))
            centres, widths = meta.wavelengths_nm, meta.fwhm_nm
            for b in range(c):
                tags = {}
                if centres is not None:
                    tags["CENTRAL_WAVELENGTH_UM"] = repr(centres[b] / 1000.0)
                if widths is not None:
                    tags["FWHM_UM"] = repr(widths[b] / 1000.0)
                if tags:
                    self.ds.update_tags(b + 1, ns="IMAGERY", **tags)
            extra = {k: str(v) for k, v in meta.extra.items()}
            if meta.description:
                extra["TIFFTAG_IMAGEDESCRIPTION"] = meta.description
            if extra:
                self.ds.update_tags(**extra)
        except BaseException:
            self.close()
            raise

    def store(self, y0: int, block_hwc: np.ndarray) -> None:
        from rasterio.windows import Window

        n, w, _ = block_hwc.shape
        self.ds.write(np.ascontiguousarray(block_hwc.transpose(2, 0, 1)), window=Window(0, y0, w, n))

    def close(self) -> None:
        if self.ds is not None:
            self.ds.close()
            self.ds = None
