"""TIFF files: the first series, memory-mapped when uncompressed and contiguous (else loaded), its sample axis giving
the band order; written uncompressed, rows written through (contiguous samples for ``layout="hwc"``, planar for
``"chw"``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import HSICube, _corrupt, _cube_from_array
from sschsr_deploy.io.sink import RowSink
from sschsr_deploy.io.space import space_errors

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
    return _cube_from_array(arr, path, "tiff", None, layout, bands, lazy=lazy)


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
