"""TIFF files: the first series, memory-mapped when uncompressed and contiguous (else loaded), its sample axis giving
the band order; written uncompressed, rows written through (contiguous samples for ``layout="hwc"``, planar for
``"chw"``).

Pixels always go through tifffile; GeoTIFF metadata (CRS, geotransform, nodata, band centres and names) through
rasterio (:mod:`.geotiff`), which is optional: a TIFF with GeoTIFF / GDAL tags is read without them (a warning) when
rasterio is missing or cannot read them, and an output whose metadata GDAL should carry is written by
:class:`GeoTiffSink` (rasterio required) instead of :class:`TiffSink`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from sschsr_deploy.errors import InputValidationError, OutputSpaceError
from sschsr_deploy.io.atomic import fsync_file
from sschsr_deploy.io.cube import HSICube, _corrupt, _cube_from_array
from sschsr_deploy.io.geotiff import GeoTiffWriter, check_crs, has_geo_tags, rasterio_available, read_geotiff_metadata
from sschsr_deploy.io.metadata import CubeMetadata
from sschsr_deploy.io.sink import RowSink
from sschsr_deploy.io.space import _space_error, space_errors

log = logging.getLogger(__name__)


def read_tiff(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """A TIFF file's first series (``variable`` does not apply)."""
    import tifffile

    try:
        with tifffile_log(path, "TIFF"), tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            shape, axes = tuple(series.shape), series.axes
    except InputValidationError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct errors … on bad files
        raise _corrupt(path, "TIFF", exc) from exc
    if len(shape) != 3:
        raise InputValidationError(f"{path} is not a 3-D cube (H x W x C or C x H x W); TIFF series shape {shape}")
    lazy = True
    try:
        with tifffile_log(path, "TIFF"):
            arr = tifffile.memmap(path, mode="r")
    except InputValidationError:
        raise
    except Exception:  # compressed or non-contiguous: load it
        lazy = False
        try:
            with tifffile_log(path, "TIFF"):
                arr = tifffile.imread(path)
        except InputValidationError:
            raise
        except Exception as exc:
            raise _corrupt(path, "TIFF", exc) from exc
        log.info("%s is compressed or not contiguous: loaded into memory (not memory-mapped)", path)
    if layout is None and "S" in axes:  # real samples per pixel: the file says where the bands are
        layout = "hwc" if axes.index("S") == 2 else "chw" if axes.index("S") == 0 else None
    return _cube_from_array(arr, path, "tiff", None, layout, bands, lazy=lazy, metadata=_tiff_metadata(path))


def _tiff_metadata(path: Path) -> CubeMetadata:
    """The GeoTIFF metadata of ``path`` when it has GeoTIFF / GDAL tags and rasterio can read them; otherwise empty,
    with a warning when tags were there (the pixels are still read: a georeference is not needed to super-resolve)."""
    if not has_geo_tags(path):
        return CubeMetadata()
    if not rasterio_available():
        log.warning("%s has GeoTIFF tags (georeference, nodata or band metadata) that are ignored: reading them needs "
                    "rasterio (pip install 'sschsr-deploy[geo]'); the output will carry no georeference", path)
        return CubeMetadata()
    try:
        return read_geotiff_metadata(path)
    except Exception as exc:  # noqa: BLE001 - rasterio / GDAL raise many types; the pixels do not depend on them
        log.warning("%s: cannot read its GeoTIFF metadata (%s: %s); reading the pixels without it",
                    path, type(exc).__name__, exc)
        return CubeMetadata()


# what tifffile logs (instead of raising) when a file is damaged: a broken page chain (truncated file), data that do
# not fill the shape the file declares, strips or tiles without offsets
_TIFF_DAMAGE = ("invalid page offset", "invalid next page", "failed to reshape", "missing data offset",
                "missing ByteCounts", "missing data ByteCounts")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def tifffile_log(path: Path, what: str) -> Iterator[None]:
    """Keep tifffile's log lines off stderr while it reads ``path``: they go to this module's log at debug level, and
    the ones that say the file is damaged (``_TIFF_DAMAGE``; tifffile logs them and returns what it could read, e.g. a
    2-D image of a truncated cube) raise :class:`InputValidationError`. Not thread-safe (it detaches the ``tifffile``
    logger from its parents for the duration)."""
    tlog = logging.getLogger("tifffile")
    handler = _Records()
    propagate = tlog.propagate
    tlog.addHandler(handler)
    tlog.propagate = False
    try:
        yield
    finally:
        tlog.removeHandler(handler)
        tlog.propagate = propagate
        for rec in handler.records:
            log.debug("tifffile (%s): %s", path, rec.getMessage())
    damage = [r.getMessage() for r in handler.records if any(d in r.getMessage() for d in _TIFF_DAMAGE)]
    if damage:
        raise InputValidationError(
            f"cannot read {path} as {what}: {damage[0].splitlines()[0][:200]} (truncated or corrupt file?)"
        )


class TiffSink(RowSink):
    """Writes an uncompressed contiguous TIFF in place of the target: tifffile writes the header and tags of an empty
    image (what ``tifffile.memmap`` creates) and returns the data's offset; the rows are then written through."""

    def open(self) -> None:
        import tifffile

        self.buffer = self.temp(self.path)
        self.file_dtype = self.dtype.newbyteorder("=")
        with space_errors(self.path, self.space_needed()):  # tifffile extends the file to its full size
            offset, size = tifffile.imwrite(
                self.buffer, data=None, shape=self.disk_shape, dtype=self.file_dtype, photometric="minisblack",
                planarconfig="contig" if self.layout == "hwc" else "separate",
                align=tifffile.TIFF.ALLOCATIONGRANULARITY, returnoffset=True,
            )
        if size != self.nbytes:
            raise RuntimeError(f"tifffile laid out {size} bytes of image data for {self.nbytes}")
        self.data_offset = int(offset)
        self.open_raw(self.path, existing=True)


def tiff_sink(path: Path, shape_hwc: tuple[int, int, int], dtype: np.dtype, layout: str, variable: str,
              temp: Callable[[Path], Path], metadata: CubeMetadata | None = None) -> RowSink:
    """The TIFF sink for ``metadata``: :class:`GeoTiffSink` when it has a georeference or nodata (rasterio required:
    an output that silently lost its georeference would be placed nowhere), or band centres / names and rasterio is
    installed (without it they are left to the JSON sidecar, with a warning); else the plain (tifffile,
    written-through) :class:`TiffSink`."""
    meta = metadata if metadata is not None else CubeMetadata()
    if meta.geo is not None or meta.nodata is not None:
        cls: type[RowSink] = GeoTiffSink
    elif meta.wavelengths is not None or meta.band_names is not None:
        cls = GeoTiffSink if rasterio_available() else TiffSink
        if cls is TiffSink:
            log.warning("%s: a plain TIFF without the band centres / names (writing them as GeoTIFF band metadata "
                        "needs rasterio: pip install 'sschsr-deploy[geo]')", path)
    else:
        cls = TiffSink
    return cls(path, shape_hwc, dtype, layout, variable, temp, meta)


_GDAL_SPACE = ("no space left", "disk full", "file too large", "quota exceeded")


@contextlib.contextmanager
def _gdal_space_errors(path: Path, need: int) -> Iterator[None]:
    """:func:`space_errors` for writes done by GDAL: an OSError with a space errno, or a GDAL error whose message says
    the disk is full, becomes :class:`OutputSpaceError` naming the output."""
    with space_errors(path, need):
        try:
            yield
        except OutputSpaceError:
            raise
        except Exception as exc:  # rasterio's errors (some are OSErrors without an errno) carry GDAL's message
            if getattr(exc, "errno", None) is None and any(m in str(exc).lower() for m in _GDAL_SPACE):
                raise _space_error(path, need, "limit" if "too large" in str(exc).lower() else "free") from exc
            raise


class GeoTiffSink(RowSink):
    """Writes a GeoTIFF through rasterio (:class:`~sschsr_deploy.io.geotiff.GeoTiffWriter`) into the writer's temp
    file: rows through GDAL (its block cache, so no reserved space: the free space is checked before instead), the
    file completed by closing the dataset and fsynced at :meth:`finish`. rasterio and a CRS it understands are
    checked when the sink is made, so that :func:`~sschsr_deploy.io.hsi.check_output_space` refuses them before a
    run's compute."""

    writer: GeoTiffWriter | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self.layout not in ("hwc", "chw"):
            raise InputValidationError(f"a GeoTIFF output takes layout hwc or chw; got {self.layout!r}")
        if not rasterio_available():
            raise InputValidationError(
                f"{self.path}: writing the output's georeference, nodata or band metadata into a GeoTIFF needs "
                "rasterio: pip install 'sschsr-deploy[geo]' (or pip install rasterio), or choose another format "
                "(ENVI keeps them too)")
        from rasterio.dtypes import check_dtype

        if not check_dtype(self.dtype):
            raise InputValidationError(f"{self.path}: a GeoTIFF cannot store {self.dtype} (GDAL); use float32")
        geo = self.metadata.geo
        if geo is not None and geo.crs:
            check_crs(geo.crs)

    def open(self) -> None:
        self.buffer = self.temp(self.path)
        with _gdal_space_errors(self.path, self.space_needed()):
            self.writer = GeoTiffWriter(self.buffer, self.shape_hwc, self.dtype, self.layout, self.metadata)

    def store(self, y0: int, block: np.ndarray) -> None:
        with _gdal_space_errors(self.path, self.space_needed()):
            self.writer.store(y0, block)  # type: ignore[union-attr]

    def finish(self) -> list[tuple[Path, Path]]:
        writer, self.writer = self.writer, None
        with _gdal_space_errors(self.path, self.space_needed()):
            writer.close()  # type: ignore[union-attr]  # GDAL flushes its cache and the directory here
        fsync_file(self.buffer)
        return [(self.buffer, self.path)]

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()

