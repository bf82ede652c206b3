"""TIFF files: the first series, memory-mapped when uncompressed and contiguous (else loaded), its sample axis giving
the band order; written as a memory-mapped TIFF (contiguous samples for ``layout="hwc"``, planar for ``"chw"``)."""

from __future__ import annotations

import logging
from pathlib import Path

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.cube import HSICube, _corrupt, _cube_from_array
from sschsr_deploy.io.sink import RowSink

log = logging.getLogger(__name__)


def read_tiff(path: Path, variable: str | None, layout: str | None, bands: int | None) -> HSICube:
    """A TIFF file's first series (``variable`` does not apply)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            shape, axes = tuple(series.shape), series.axes
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct errors … on bad files
        raise _corrupt(path, "TIFF", exc) from exc
    if len(shape) != 3:
        raise InputValidationError(f"{path} is not a 3-D cube (H x W x C or C x H x W); TIFF series shape {shape}")
    lazy = True
    try:
        arr = tifffile.memmap(path, mode="r")
    except Exception:  # compressed or non-contiguous: load it
        lazy = False
        try:
            arr = tifffile.imread(path)
        except Exception as exc:
            raise _corrupt(path, "TIFF", exc) from exc
        log.info("%s is compressed or not contiguous: loaded into memory (not memory-mapped)", path)
    if layout is None and "S" in axes:  # real samples per pixel: the file says where the bands are
        layout = "hwc" if axes.index("S") == 2 else "chw" if axes.index("S") == 0 else None
    return _cube_from_array(arr, path, "tiff", None, layout, bands, lazy=lazy)


class TiffSink(RowSink):
    """Writes a memory-mapped TIFF in place of the target."""

    def open(self) -> None:
        import tifffile

        self.buffer = self.temp(self.path)
        self.arr = tifffile.memmap(
            self.buffer, shape=self.disk_shape, dtype=self.dtype, photometric="minisblack",
            planarconfig="contig" if self.layout == "hwc" else "separate",
        )
