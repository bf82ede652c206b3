"""Read and write RGB images: PNG / JPEG through OpenCV (8-bit; PNG also 16-bit), TIFF (8/16-bit, float) via tifffile.

Images come back H x W x 3 in R, G, B order with their stored dtype: uint8 (0..255), uint16 (0..65535) or float. The
preprocessing scales uint8 by 255 and uint16 by 65535 (:func:`sschsr_deploy.preprocess.reference_to_unit`); a 16-bit
PNG or TIFF therefore keeps its full precision. An alpha channel is dropped (with a warning); grey-scale images are
refused, because the model needs colour.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io.atomic import atomic_path

__all__ = ["RGB_EXTENSIONS", "read_rgb", "to_uint8", "write_rgb"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
RGB_EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}


def _rgb_format(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in RGB_EXTENSIONS:
        raise InputValidationError(
            f"cannot tell the image format of {path}: unknown extension {ext or '(none)'!r}; supported: "
            f"{', '.join(sorted(RGB_EXTENSIONS))}"
        )
    return RGB_EXTENSIONS[ext]


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own warnings ("PNG input buffer is incomplete") off stderr while decoding: a decoding failure is
    reported as an error instead. Not thread-safe (OpenCV's log level is global)."""
    import cv2

    old = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(old)


def _to_rgb3(img: np.ndarray, path: Path, bgr: bool) -> np.ndarray:
    if not (img.dtype in (np.uint8, np.uint16) or np.issubdtype(img.dtype, np.floating)):
        raise InputValidationError(
            f"{path} holds {img.dtype} pixels; the reference must be uint8, uint16 or float (corrupt file?)"
        )
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        raise InputValidationError(f"{path} is a grey-scale image; the reference must be an RGB colour image")
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise InputValidationError(f"{path}: expected an H x W x 3 RGB image; got shape {img.shape}")
    if min(img.shape[:2]) < 1:
        raise InputValidationError(f"{path} is an empty image (shape {img.shape}; corrupt file?)")
    if img.shape[2] == 4:
        log.warning("%s has an alpha channel; it is ignored", path)
        img = img[:, :, :3]
    if bgr:
        img = img[:, :, ::-1]
    return np.ascontiguousarray(img)


def read_rgb(path: PathLike) -> np.ndarray:
    """Read an RGB image as H x W x 3 (R, G, B) in its stored dtype (uint8, uint16 or float)."""
    p = Path(path)
    fmt = _rgb_format(p)
    if not p.exists():
        raise InputValidationError(f"file not found: {p}")
    if p.is_dir():
        raise InputValidationError(f"{p} is a directory, not an image file")
    if fmt == "tiff":
        import tifffile

        from sschsr_deploy.io.tiff import tifffile_log

        try:
            with tifffile_log(p, "TIFF"):
                img = tifffile.imread(p)
        except InputValidationError:
            raise
        except Exception as exc:  # tifffile raises several types on bad files
            raise InputValidationError(
                f"cannot read {p} as TIFF: {type(exc).__name__}: {exc} (truncated or corrupt file?)"
            ) from exc
        if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[2] not in (3, 4):
            img = img.transpose(1, 2, 0)  # planar (separate) TIFF
        return _to_rgb3(img, p, bgr=False)
    import cv2

    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise InputValidationError(f"cannot read {p}: {exc}") from exc
    try:
        with _quiet_opencv():
            img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error as exc:  # e.g. a damaged header that declares an image too large to allocate
        raise InputValidationError(
            f"cannot decode {p} as {fmt.upper()}: {' '.join(str(exc).split())[:200]} (truncated or corrupt file?)"
        ) from exc
    if img is None:
        raise InputValidationError(f"cannot decode {p} as {fmt.upper()} (truncated or corrupt file?)")
    return _to_rgb3(img, p, bgr=True)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 by rounding x / 257; float in [0, 1] -> round(255 x) (clipped); uint8 unchanged."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return np.round(img / 257.0).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise InputValidationError(f"cannot convert an image of dtype {img.dtype} to uint8")


def write_rgb(path: PathLike, img: np.ndarray, *, quality: int = 95) -> Path:
    """Write an H x W x 3 RGB image atomically. PNG: uint8 or uint16; JPEG: uint8; TIFF: uint8, uint16 or float32.

    Float images in [0, 1] are converted to uint8 for PNG / JPEG.
    """
    p = Path(path)
    fmt = _rgb_format(p)
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputValidationError(f"write_rgb expects an H x W x 3 image; got shape {arr.shape}")
    if fmt == "tiff":
        import tifffile

        with atomic_path(p) as tmp:
            tifffile.imwrite(tmp, arr, photometric="rgb")
        return p
    import cv2

    if fmt == "jpeg" or np.issubdtype(arr.dtype, np.floating):
        arr = to_uint8(arr)
    elif arr.dtype not in (np.uint8, np.uint16):
        raise InputValidationError(f"PNG stores uint8 or uint16 images; got {arr.dtype}")
    ext = ".png" if fmt == "png" else ".jpg"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(arr[:, :, ::-1]), params)
    if not ok:
        raise InputValidationError(f"OpenCV could not encode the image as {fmt.upper()}")
    with atomic_path(p) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.tobytes())
    return p
