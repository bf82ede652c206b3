"""Regression tests of the input readers on damaged files (issue #22): each case is a failing input the adversarial run
found, rebuilt here from a small valid file. Bad input must raise InputValidationError, never crash the process or
raise another exception type, and must not be read as garbage."""

from __future__ import annotations

import logging
import struct

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io import list_variables, load_hsi, read_hsi, read_rgb, write_hsi, write_rgb
from sschsr_deploy.io.envi import _parse_envi_header

pytestmark = pytest.mark.faults

CUBE = np.random.default_rng(0).random((16, 12, 5)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# MAT v5: SciPy's parser crashes the process on some corrupt files


def _mat5_with_compressed_tag(path):
    """A MAT v5 file whose data element (the variable's real part) is tagged miCOMPRESSED (15) instead of miSINGLE (7):
    whosmat lists it, loadmat dies with SIGSEGV in SciPy's compiled reader."""
    scipy.io.savemat(path, {"hsi": CUBE})
    data = bytearray(path.read_bytes())
    # 128-byte header, miMATRIX tag (8), array flags (16), dimensions (8 + 12 padded to 16), name "hsi" (8): 184
    assert struct.unpack_from("<I", data, 184)[0] == 7  # miSINGLE
    data[184] = 15
    path.write_bytes(bytes(data))
    return path


def test_mat5_parser_crash_is_reported_as_corrupt_file(tmp_path):
    path = _mat5_with_compressed_tag(tmp_path / "crash.mat")
    with pytest.raises(InputValidationError, match=r"cannot read .*crash\.mat as MATLAB v5 .mat: .*crashed.*corrupt"):
        read_hsi(path)
    assert list_variables(path) == {"hsi": (16, 12, 5)}  # the header is fine; listing needs no data


def test_mat5_still_reads_and_selects_variables(tmp_path):
    path = tmp_path / "ok.mat"
    scipy.io.savemat(path, {"hsi": CUBE, "other": CUBE[:, :, :3].astype(np.float64), "note": "text"})
    with pytest.raises(InputValidationError, match="several 3-D arrays"):
        read_hsi(path)
    np.testing.assert_array_equal(load_hsi(path, variable="hsi"), CUBE)
    assert load_hsi(path, variable="other").dtype == np.float64
    with pytest.raises(InputValidationError, match="not a numeric array"):
        read_hsi(path, variable="note", layout="hwc")
    with pytest.raises(InputValidationError, match="'nope' not found"):
        read_hsi(path, variable="nope")


def test_mat5_garbage_and_truncation(tmp_path):
    path = tmp_path / "cut.mat"
    scipy.io.savemat(path, {"hsi": CUBE})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InputValidationError, match="MATLAB v5"):
        load_hsi(path)


# ---------------------------------------------------------------------------------------------------------------------
# HDF5 / MAT v7.3: h5py raises RuntimeError / KeyError on damaged files; names that are not UTF-8


def _h5(path, name="hsi", mat73=False):
    if mat73:
        write_hsi(path, CUBE, format="mat73", variable=name)
    else:
        with h5py.File(path, "w") as f:
            f.create_dataset(name, data=CUBE)
    return bytearray(path.read_bytes())


@pytest.mark.parametrize("mat73", [False, True], ids=["h5", "mat73"])
def test_hdf5_bad_heap_free_list(tmp_path, mat73):
    path = tmp_path / ("bad.mat" if mat73 else "bad.h5")
    data = _h5(path, mat73=mat73)
    heap = data.find(b"HEAP")  # the root group's local heap: signature, version, size (8 bytes), free list offset
    size = struct.unpack_from("<Q", data, heap + 8)[0]
    struct.pack_into("<Q", data, heap + 16, size + 8)
    path.write_bytes(bytes(data))
    with pytest.raises(InputValidationError, match=r"RuntimeError: .*heap free list.*corrupt"):
        read_hsi(path)
    with pytest.raises(InputValidationError, match="corrupt"):
        list_variables(path)


def test_hdf5_link_name_damaged_into_a_path(tmp_path):
    path = tmp_path / "slash.h5"
    data = _h5(path)
    i = data.find(b"hsi\x00")
    data[i + 1] = ord("/")  # the link is now named "h/i": h5py cannot open it by that name
    path.write_bytes(bytes(data))
    with pytest.raises(InputValidationError, match="corrupt"):
        read_hsi(path)


def test_hdf5_name_not_utf8_is_listed_escaped_and_readable(tmp_path):
    path = tmp_path / "latin.h5"
    data = _h5(path)
    i = data.find(b"hsi\x00")
    data[i] = 0xFF
    path.write_bytes(bytes(data))
    with read_hsi(path) as cube:
        assert cube.variable == "\\xffsi"
        np.testing.assert_array_equal(cube.read(), CUBE)
    assert list_variables(path) == {"\\xffsi": (16, 12, 5)}
    np.testing.assert_array_equal(load_hsi(path, variable="\\xffsi"), CUBE)


def test_hdf5_damaged_chunk_is_input_error(tmp_path):
    path = tmp_path / "chunk.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("hsi", data=CUBE, chunks=(4, 12, 5), compression="gzip")
    data = bytearray(path.read_bytes())
    data[-60:-40] = b"\xff" * 20  # inside the last compressed chunk
    path.write_bytes(bytes(data))
    with read_hsi(path) as cube, pytest.raises(InputValidationError, match="corrupt"):
        cube.read()


# ---------------------------------------------------------------------------------------------------------------------
# .npy / .npz


def test_npy_header_token_error(tmp_path):
    path = tmp_path / "tok.npy"
    np.save(path, CUBE)
    data = path.read_bytes()
    assert b"5), }" in data
    path.write_bytes(data.replace(b"5), }", b"5 , }"))  # an unclosed "(": numpy's header filter raises TokenError
    with pytest.raises(InputValidationError, match="cannot read .* as npy"):
        read_hsi(path)


def test_npz_header_token_error(tmp_path):
    path = tmp_path / "tok.npz"
    np.savez(path, hsi=CUBE)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"5), }", b"5 , }"))
    with pytest.raises(InputValidationError, match="as npz"):
        read_hsi(path)


def test_npy_header_that_disagrees_with_the_file_size(tmp_path):
    path = tmp_path / "shape.npy"
    np.save(path, CUBE)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"(16, 12, 5)", b"(16, 12, 4)"))  # would memory-map shifted data
    with pytest.raises(InputValidationError, match=r"header describes \d+ bytes .* the file has \d+ bytes"):
        read_hsi(path)
    path.write_bytes(data + b"\0" * 7)
    with pytest.raises(InputValidationError, match="header describes"):
        read_hsi(path)


def test_npz_member_header_that_claims_more_than_the_member_holds(tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, hsi=np.zeros((64, 64, 5), np.float32))  # large enough that reading the header does not reach the
    # member's end (where zipfile checks the CRC): without the size check, loading would allocate 320 GB
    data = path.read_bytes()
    assert b"(64, 64, 5), }       " in data  # the header's padding leaves room for a longer shape, same length
    path.write_bytes(data.replace(b"(64, 64, 5), }       ", b"(64, 64, 50000000), }"))
    with pytest.raises(InputValidationError, match="member 'hsi' .* header describes"):
        read_hsi(path)


def test_npz_named_npy_and_npy_named_npz(tmp_path):
    np.savez(tmp_path / "a.npz", hsi=CUBE)
    (tmp_path / "a.npy").write_bytes((tmp_path / "a.npz").read_bytes())
    with pytest.raises(InputValidationError, match="is an .npz archive"):
        read_hsi(tmp_path / "a.npy")
    np.save(tmp_path / "b.npy", CUBE)
    (tmp_path / "b.npz").write_bytes((tmp_path / "b.npy").read_bytes())
    with pytest.raises(InputValidationError, match="is a .npy file"):
        read_hsi(tmp_path / "b.npz")


# ---------------------------------------------------------------------------------------------------------------------
# ENVI


def _envi(tmp_path, data: np.ndarray | bytes, *, samples=12, lines=16, bands=5, code=4, order=0, interleave="bip",
          extra=""):
    raw = data if isinstance(data, bytes) else data.tobytes()
    (tmp_path / "c.img").write_bytes(raw)
    (tmp_path / "c.hdr").write_text(
        f"ENVI\nsamples = {samples}\nlines = {lines}\nbands = {bands}\n{extra}data type = {code}\n"
        f"interleave = {interleave}\nbyte order = {order}\n"
    )
    return tmp_path / "c.hdr"


@pytest.mark.parametrize("field,value,match", [
    ("samples", "-12", r"samples = -12 \(must be at least 1\)"),
    ("lines", "-16", r"lines = -16 \(must be at least 1\)"),
    ("bands", "0", r"bands = 0 \(must be at least 1\)"),
])
def test_envi_negative_sizes(tmp_path, field, value, match):
    sizes = {"samples": 12, "lines": 16, "bands": 5, field: value}
    with pytest.raises(InputValidationError, match=match):
        read_hsi(_envi(tmp_path, CUBE, **sizes))


@pytest.mark.parametrize("value,match", [("-8", r"header offset = -8"), ("abc", "malformed number"),
                                         ("1.5", "malformed number")])
def test_envi_bad_header_offset(tmp_path, value, match):
    with pytest.raises(InputValidationError, match=match):
        read_hsi(_envi(tmp_path, CUBE, extra=f"header offset = {value}\n"))


def test_envi_empty_value_does_not_swallow_the_next_line(tmp_path):
    hdr = _envi(tmp_path, CUBE, extra="header offset =\nfile type = ENVI Standard\n")
    fields = _parse_envi_header(hdr.read_text(), hdr)
    assert fields["header offset"] == "" and fields["file type"] == "ENVI Standard"
    np.testing.assert_array_equal(load_hsi(hdr), CUBE)


@pytest.mark.parametrize("extra_bytes,match", [(-4, "is truncated"), (4, "is larger than its header describes")])
def test_envi_data_size_must_match_the_header(tmp_path, extra_bytes, match):
    raw = CUBE.tobytes()
    raw = raw[:extra_bytes] if extra_bytes < 0 else raw + b"\0" * extra_bytes
    with pytest.raises(InputValidationError, match=rf"{match}: {len(raw)} bytes, .* describes {CUBE.nbytes} bytes"):
        read_hsi(_envi(tmp_path, raw))


def test_envi_wrong_data_type_with_the_same_size_is_refused(tmp_path):
    f32 = CUBE.astype("<f4")
    with pytest.raises(InputValidationError, match="does not hold the data type = 4 .*big-endian.*byte order"):
        read_hsi(_envi(tmp_path, f32, order=1))  # wrong byte order
    with pytest.raises(InputValidationError, match="holds float32 values, not the data type = 3"):
        read_hsi(_envi(tmp_path, f32, code=3))  # int32 over float32
    with pytest.raises(InputValidationError, match="holds float32 values, not the data type = 2"):
        read_hsi(_envi(tmp_path, f32, code=2, bands=10))  # int16 over float32, bands doubled to match the size
    with pytest.raises(InputValidationError, match="holds float32 values, not the data type = 5"):
        read_hsi(_envi(tmp_path, np.random.default_rng(1).random((16, 12, 10)).astype("<f4"), code=5))
    with pytest.raises(InputValidationError, match="holds float64 values, not the data type = 4"):
        read_hsi(_envi(tmp_path, CUBE.astype("<f8"), bands=10))  # float32 over float64
    with pytest.raises(InputValidationError, match="does not hold the data type = 4"):
        read_hsi(_envi(tmp_path, (CUBE * 4095).astype("<i4")))  # float32 over int32


@pytest.mark.parametrize("name,arr", [
    ("reflectance f4", CUBE),
    ("radiance f4", CUBE * 1e4),
    ("tiny f4", CUBE * 1e-6),
    ("signed f8", np.random.default_rng(2).normal(size=(16, 12, 5))),
    ("counts as f8", np.round(CUBE * 4095).astype(np.float64)),
    ("halves as f8", np.round(CUBE * 64).astype(np.float64) / 64),
    ("counts as f4", np.round(CUBE * 65535).astype(np.float32)),
    ("mostly NaN f4", np.where(CUBE < 0.7, np.nan, CUBE).astype(np.float32)),
    # a narrow range (one or two float32 exponents): its value pairs read as plausible float64 in both pairings
    ("narrow range f4", (0.3 + 0.4 * CUBE).astype(np.float32)),
    ("narrow range f4 big-endian", (0.3 + 0.4 * CUBE).astype(">f4")),
    ("zeros f4", np.zeros((16, 12, 5), np.float32)),
    ("big-endian f4", CUBE.astype(">f4")),
    ("int16 counts", np.round(CUBE * 4095).astype(np.int16)),
    ("int16 near 2**14", (15000 + CUBE * 2000).astype(np.int16)),
    ("int16 full range", np.random.default_rng(3).integers(-32768, 32767, (16, 12, 5)).astype(np.int16)),
    ("uint16 full range", np.random.default_rng(4).integers(0, 65535, (16, 12, 5)).astype(np.uint16)),
    ("int32 full range", np.random.default_rng(5).integers(-2**31, 2**31 - 1, (16, 12, 5)).astype(np.int32)),
    ("uint64", np.random.default_rng(6).integers(0, 2**40, (16, 12, 5)).astype(np.uint64)),
    ("uint8", np.round(CUBE * 255).astype(np.uint8)),
])
def test_envi_plausibility_check_accepts_valid_data(tmp_path, name, arr):
    codes = {"u1": 1, "i2": 2, "i4": 3, "f4": 4, "f8": 5, "u2": 12, "u4": 13, "i8": 14, "u8": 15}
    hdr = _envi(tmp_path, arr, code=codes[arr.dtype.str[1:]], order=int(arr.dtype.byteorder == ">"))
    np.testing.assert_array_equal(load_hsi(hdr), arr)


# ---------------------------------------------------------------------------------------------------------------------
# TIFF


def _truncated_pages_tiff(path):
    """A cube stored one zlib-compressed page per band, cut short: tifffile logs a broken page chain and returns the
    first page alone (a 2-D image)."""
    tifffile.imwrite(path, CUBE.transpose(2, 0, 1), photometric="minisblack", compression="zlib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def test_truncated_compressed_tiff_is_reported_as_truncated_and_tifffile_stays_quiet(tmp_path, caplog, capfd,
                                                                                     monkeypatch):
    path = _truncated_pages_tiff(tmp_path / "cut.tif")
    # a CLI test run earlier in this process leaves its stderr handler and level on the package logger
    monkeypatch.setattr(logging.getLogger("sschsr_deploy"), "handlers", [])
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sschsr_deploy")
    with pytest.raises(InputValidationError, match=r"cut\.tif as TIFF: .*invalid page offset.*truncated or corrupt"):
        read_hsi(path, layout="chw")
    assert not [r for r in caplog.records if r.name == "tifffile"]  # tifffile's own lines do not reach the handlers
    assert any("invalid page offset" in r.getMessage() for r in caplog.records if r.name == "sschsr_deploy.io.tiff")
    assert "tifffile" not in capfd.readouterr().err


def test_tiff_log_silencing_restores_the_tifffile_logger(tmp_path):
    tifffile.imwrite(tmp_path / "ok.tif", CUBE, photometric="minisblack")
    before = logging.getLogger("tifffile").propagate, list(logging.getLogger("tifffile").handlers)
    load_hsi(tmp_path / "ok.tif")
    with pytest.raises(InputValidationError):
        read_hsi(_truncated_pages_tiff(tmp_path / "cut.tif"), layout="chw")
    assert (logging.getLogger("tifffile").propagate, logging.getLogger("tifffile").handlers) == before


# ---------------------------------------------------------------------------------------------------------------------
# RGB references


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif"])
@pytest.mark.parametrize("keep", [0.2, 0.9])
def test_truncated_reference_images(tmp_path, ext, keep, capfd):
    img = (np.random.default_rng(7).random((40, 32, 3)) * 255).astype(np.uint8)
    path = tmp_path / f"ref{ext}"
    if ext == ".tif":
        tifffile.imwrite(path, img, photometric="rgb", compression="zlib", rowsperstrip=8)
    else:
        write_rgb(path, img)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputValidationError, match="truncated or corrupt"):
        read_rgb(path)
    err = capfd.readouterr().err
    assert "WARN" not in err and "tifffile" not in err  # OpenCV's and tifffile's warnings stay off stderr


def test_reference_with_an_unsupported_pixel_type(tmp_path):
    tifffile.imwrite(tmp_path / "ref.tif", np.zeros((8, 8, 3), np.int16), photometric="rgb")
    with pytest.raises(InputValidationError, match="holds int16 pixels"):
        read_rgb(tmp_path / "ref.tif")


def test_reference_without_image_width(tmp_path):
    """A fuzz case: the ImageWidth tag renamed to a second ImageLength; tifffile reads a 16 x 0 image."""
    path = tmp_path / "ref.tif"
    tifffile.imwrite(path, np.zeros((20, 16, 3), np.uint16), photometric="rgb", metadata=None)
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\0" and struct.unpack_from("<IHH", data, 4) == (8, data[8], 256)  # first tag: ImageWidth
    data[10] = 1  # tag 256 -> 257 (ImageLength)
    path.write_bytes(bytes(data))
    with pytest.raises(InputValidationError, match=r"empty image \(shape \(\d+, 0, 3\)"):
        read_rgb(path)
