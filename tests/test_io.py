"""Readers and writers: round trips for every format and band order, lazy reading, atomic writes, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io import (
    HSIWriter,
    check_writable,
    detect_layout,
    list_variables,
    load_hsi,
    read_hsi,
    read_rgb,
    sidecar_path,
    write_hsi,
    write_rgb,
    write_sidecar,
)
from sschsr_deploy.io.atomic import verify_sidecar

FORMATS = [("npy", ".npy"), ("npz", ".npz"), ("mat", ".mat"), ("mat73", ".mat"), ("h5", ".h5"),
           ("envi", ".img"), ("envi", ".hdr"), ("tiff", ".tif")]
LAZY = {"npy": True, "npz": False, "mat": False, "mat73": True, "h5": True, "envi": True, "tiff": True}


@pytest.fixture(scope="module")
def cube():
    return np.random.default_rng(0).random((20, 24, 7)).astype(np.float32)


def _leftovers(folder):
    return [p for p in os.listdir(folder) if ".partial" in p]


@pytest.mark.parametrize("layout", ["hwc", "chw"])
@pytest.mark.parametrize("fmt,ext", FORMATS)
def test_round_trip(tmp_path, cube, fmt, ext, layout):
    path = tmp_path / f"cube{ext}"
    write_hsi(path, cube, format=fmt, layout=layout)
    assert not _leftovers(tmp_path)
    with read_hsi(path, bands=7) as c:
        assert c.shape == (20, 24, 7)
        assert c.format == fmt
        assert c.lazy == LAZY[fmt]
        np.testing.assert_array_equal(c.read(), cube)
        np.testing.assert_array_equal(c.read(slice(3, 9), slice(2, 10), [5, 1, 2]), cube[3:9, 2:10][:, :, [5, 1, 2]])


@pytest.mark.parametrize("fmt,ext", [("npy", ".npy"), ("h5", ".h5"), ("mat73", ".mat"), ("envi", ".img"),
                                     ("tiff", ".tif")])
def test_lazy_sources_are_not_loaded(tmp_path, cube, fmt, ext):
    path = tmp_path / f"cube{ext}"
    write_hsi(path, cube, format=fmt)
    with read_hsi(path) as c:
        assert isinstance(c.source, np.memmap | h5py.Dataset)
        assert c.lazy


def test_matlab_layouts_match_matlab_semantics(tmp_path, cube):
    # a v5 file holds the array as MATLAB sees it; v7.3 holds the reversed axes (column-major); both read back H x W x C
    scipy.io.savemat(tmp_path / "v5.mat", {"cube": cube})
    with h5py.File(tmp_path / "v73.mat", "w") as f:
        f.create_dataset("cube", data=cube.transpose(2, 1, 0))  # what MATLAB writes for an H x W x C array
    np.testing.assert_array_equal(load_hsi(tmp_path / "v5.mat"), cube)
    np.testing.assert_array_equal(load_hsi(tmp_path / "v73.mat", bands=7), cube)
    with read_hsi(tmp_path / "v73.mat") as c:
        assert c.format == "mat73"


def test_variable_selection(tmp_path, cube):
    np.savez(tmp_path / "two.npz", a=cube, b=cube[..., :3] * 2, label=np.arange(3))
    with pytest.raises(InputValidationError, match="several 3-D arrays"):
        read_hsi(tmp_path / "two.npz")
    np.testing.assert_array_equal(load_hsi(tmp_path / "two.npz", variable="b", layout="hwc"), cube[..., :3] * 2)
    scipy.io.savemat(tmp_path / "v.mat", {"rad": cube, "wl": np.arange(7.0)})
    np.testing.assert_array_equal(load_hsi(tmp_path / "v.mat"), cube)  # the only 3-D variable
    with pytest.raises(InputValidationError, match=r"variable 'hsi' not found .* available: rad \(20, 24, 7\)"):
        read_hsi(tmp_path / "v.mat", variable="hsi")
    assert list_variables(tmp_path / "v.mat") == {"rad": (20, 24, 7), "wl": (1, 7)}
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_dataset("group/cube", data=cube)
    with pytest.raises(InputValidationError, match="group/cube"):
        read_hsi(tmp_path / "g.h5", variable="missing")
    np.testing.assert_array_equal(load_hsi(tmp_path / "g.h5"), cube)


def test_band_order_detection():
    assert detect_layout((64, 80, 31)) == "hwc"
    assert detect_layout((31, 64, 80)) == "chw"
    assert detect_layout((64, 31, 31), bands=31) == "hwc"
    assert detect_layout((128, 128, 200), bands=128) == "chw"  # the band count decides
    for shape in [(31, 64, 31), (64, 20, 64), (40, 40, 40)]:
        with pytest.raises(InputValidationError, match="ambiguous band order"):
            detect_layout(shape)


def test_ambiguous_file_needs_layout(tmp_path):
    arr = np.zeros((32, 8, 32), np.float32)
    np.save(tmp_path / "amb.npy", arr)
    with pytest.raises(InputValidationError, match="ambiguous band order"):
        read_hsi(tmp_path / "amb.npy")
    assert read_hsi(tmp_path / "amb.npy", layout="chw").shape == (8, 32, 32)


def test_tiff_written_by_tifffile_defaults(tmp_path, cube):
    import tifffile

    tifffile.imwrite(tmp_path / "pages.tif", cube.transpose(2, 0, 1))  # one page per band
    np.testing.assert_array_equal(load_hsi(tmp_path / "pages.tif", bands=7), cube)
    tifffile.imwrite(tmp_path / "zip.tif", cube.transpose(2, 0, 1), compression="zlib")
    with read_hsi(tmp_path / "zip.tif", bands=7) as c:
        assert not c.lazy  # compressed: loaded
        np.testing.assert_array_equal(c.read(), cube)


def test_envi_byte_order_and_interleave(tmp_path, cube):
    data = cube.transpose(0, 2, 1).astype(">f4")  # BIL, big-endian
    data.tofile(tmp_path / "bil.raw")
    (tmp_path / "bil.hdr").write_text(
        "ENVI\nsamples = 24\nlines = 20\nbands = 7\nheader offset = 0\ndata type = 4\n"
        "interleave = bil\nbyte order = 1\nwavelength = {400,\n 450, 500}\n"
    )
    np.testing.assert_array_equal(load_hsi(tmp_path / "bil.hdr"), cube)
    np.testing.assert_array_equal(load_hsi(tmp_path / "bil.raw"), cube)


@pytest.mark.parametrize("name", ["missing.npy", "missing.mat", "missing.hdr", "missing.tif"])
def test_missing_file(tmp_path, name):
    with pytest.raises(InputValidationError, match="file not found"):
        read_hsi(tmp_path / name)


def test_unknown_extension(tmp_path):
    (tmp_path / "cube.xyz").write_bytes(b"1234")
    with pytest.raises(InputValidationError, match="unknown extension '.xyz'"):
        read_hsi(tmp_path / "cube.xyz")
    with pytest.raises(InputValidationError, match="unknown extension"):
        read_rgb(tmp_path / "cube.xyz")


@pytest.mark.parametrize("fmt,ext", [("npy", ".npy"), ("npz", ".npz"), ("mat", ".mat"), ("mat73", ".mat"),
                                     ("h5", ".h5"), ("tiff", ".tif"), ("envi", ".img")])
def test_truncated_files(tmp_path, cube, fmt, ext):
    path = tmp_path / f"cube{ext}"
    write_hsi(path, cube, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputValidationError, match="truncated"):
        with read_hsi(path) as c:
            c.read()


def test_garbage_files(tmp_path):
    for name in ("x.npy", "x.npz", "x.mat", "x.h5", "x.tif"):
        (tmp_path / name).write_bytes(b"this is not a cube" * 10)
        with pytest.raises(InputValidationError):
            read_hsi(tmp_path / name)
    (tmp_path / "x.hdr").write_text("not envi\n")
    (tmp_path / "x.img").write_bytes(b"\0" * 10)
    with pytest.raises(InputValidationError, match="not an ENVI header"):
        read_hsi(tmp_path / "x.hdr")


def test_non_cube_arrays_are_refused(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((10, 10)))
    with pytest.raises(InputValidationError, match="not a 3-D cube"):
        read_hsi(tmp_path / "flat.npy")
    np.save(tmp_path / "c.npy", np.zeros((4, 5, 6), np.complex64))
    with pytest.raises(InputValidationError, match="real numeric"):
        read_hsi(tmp_path / "c.npy")


def test_writer_is_atomic_on_error(tmp_path, cube):
    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError, match="boom"):
        with HSIWriter(target, cube.shape) as w:
            w.write_rows(0, cube[:10])
            raise RuntimeError("boom")
    assert not target.exists() and not _leftovers(tmp_path)
    # an existing output is left untouched by a failed rewrite
    write_hsi(target, cube)
    with pytest.raises(RuntimeError):
        with HSIWriter(target, cube.shape) as w:
            w.write_rows(0, np.zeros_like(cube[:5]))
            raise RuntimeError("boom")
    np.testing.assert_array_equal(np.load(target), cube)
    assert not _leftovers(tmp_path)


def test_writer_streams_rows(tmp_path, cube):
    for fmt, ext in FORMATS:
        path = tmp_path / f"rows_{fmt}{ext}"
        with HSIWriter(path, cube.shape, format=fmt, layout="chw") as w:
            for y in range(0, 20, 6):
                w.write_rows(y, cube[y:y + 6])
        np.testing.assert_array_equal(load_hsi(path, bands=7), cube)


def test_output_path_checks(tmp_path):
    with pytest.raises(InputValidationError, match="does not exist"):
        check_writable(tmp_path / "no" / "such" / "dir" / "out.npy")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputValidationError, match="not a directory"):
        check_writable(tmp_path / "afile" / "out.npy")
    with pytest.raises(InputValidationError, match="is a directory"):
        check_writable(tmp_path)


def test_sidecar(tmp_path, cube):
    out = write_hsi(tmp_path / "o.npy", cube)
    side = write_sidecar(out, {"backend": "torch", "tile": 256})
    assert side == sidecar_path(out) == tmp_path / "o.npy.json"
    import json

    meta = json.loads(side.read_text())
    assert meta["output"] == "o.npy" and meta["backend"] == "torch" and "package_version" in meta
    assert verify_sidecar(out) == [] and meta["output_files"][0]["bytes"] == out.stat().st_size


def test_commit_writes_output_and_sidecar_together(tmp_path, cube):
    out = tmp_path / "o.img"  # ENVI: two files, data renamed before header, the sidecar last
    with HSIWriter(out, cube.shape, format="envi") as w:
        w.write(cube)
        w.commit(sidecar={"backend": "torch"})
    assert sorted(os.listdir(tmp_path)) == ["o.hdr", "o.img", "o.img.json"]
    import json

    meta = json.loads(sidecar_path(out).read_text())
    assert [f["name"] for f in meta["output_files"]] == ["o.img", "o.hdr"] and len(meta["run_id"]) == 32
    assert verify_sidecar(out) == []
    (tmp_path / "o.hdr").write_text((tmp_path / "o.hdr").read_text() + "\n")
    assert verify_sidecar(out) == ["o.hdr does not match o.img.json (another run's output or sidecar)"]


@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_written_through_files_are_byte_identical_to_the_libraries(tmp_path, cube, layout):
    """npy / TIFF / ENVI are written with pwrite into a preallocated file; the bytes are what np.save and
    tifffile.memmap (the former writers) produce; HDF5's reservation is cut off again."""
    import tifffile

    import sschsr_deploy.io.hdf5 as hdf5_module

    disk = np.ascontiguousarray(cube if layout == "hwc" else cube.transpose(2, 0, 1))
    write_hsi(tmp_path / "a.npy", cube, layout=layout)
    np.save(tmp_path / "b.npy", disk)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    write_hsi(tmp_path / "a.tif", cube, layout=layout)
    m = tifffile.memmap(tmp_path / "b.tif", shape=disk.shape, dtype=disk.dtype, photometric="minisblack",
                        planarconfig="contig" if layout == "hwc" else "separate")
    m[:] = disk
    m.flush()
    del m
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    write_hsi(tmp_path / "a.img", cube, layout=layout)
    assert (tmp_path / "a.img").read_bytes() == disk.astype("<f4").tobytes()
    write_hsi(tmp_path / "a.h5", cube, layout=layout)
    real = hdf5_module.reserve_space
    hdf5_module.reserve_space = lambda *a: None
    try:
        write_hsi(tmp_path / "b.h5", cube, layout=layout)
    finally:
        hdf5_module.reserve_space = real
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


@pytest.mark.parametrize("fmt,ext", [("npy", ".npy"), ("tiff", ".tif"), ("envi", ".img"), ("npz", ".npz")])
def test_writers_reserve_the_space_and_do_not_map_the_output(tmp_path, cube, fmt, ext):
    # a memory map of a sparse file is what turned a full disk into SIGBUS (issue #22)
    with HSIWriter(tmp_path / f"o{ext}", cube.shape, format=fmt) as w:
        w.write_rows(0, cube[:5])
        (tmp,) = [p for p in tmp_path.iterdir() if ".partial" in p.name]
        st = tmp.stat()
        assert st.st_blocks * 512 >= cube.nbytes  # allocated, not sparse
        maps = Path("/proc/self/maps")
        assert not maps.exists() or str(tmp) not in maps.read_text()
        w.write_rows(5, cube[5:])
    np.testing.assert_array_equal(load_hsi(tmp_path / f"o{ext}"), cube)


# ------------------------------------------------------------------ RGB


@pytest.mark.parametrize("ext,dtype", [(".png", np.uint8), (".png", np.uint16), (".tif", np.uint8),
                                       (".tif", np.uint16), (".tif", np.float32)])
def test_rgb_round_trip(tmp_path, ext, dtype):
    rng = np.random.default_rng(1)
    if dtype == np.float32:
        img = rng.random((16, 20, 3)).astype(np.float32)
    else:
        img = rng.integers(0, np.iinfo(dtype).max, size=(16, 20, 3), endpoint=True).astype(dtype)
    write_rgb(tmp_path / f"img{ext}", img)
    back = read_rgb(tmp_path / f"img{ext}")
    assert back.dtype == img.dtype
    np.testing.assert_array_equal(back, img)


def test_rgb_channel_order_and_jpeg(tmp_path):
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 250  # pure red
    write_rgb(tmp_path / "red.jpg", img)
    back = read_rgb(tmp_path / "red.jpg")
    assert back.dtype == np.uint8 and back.shape == (32, 32, 3)
    assert back[..., 0].mean() > 200 and back[..., 2].mean() < 30


def test_sixteen_bit_reference_is_scaled_by_65535(tmp_path):
    from sschsr_deploy.preprocess import reference_to_unit

    img = np.full((8, 8, 3), 65535, np.uint16)
    img[0, 0] = (0, 32768, 65535)
    write_rgb(tmp_path / "deep.png", img)
    unit = reference_to_unit(read_rgb(tmp_path / "deep.png"))
    assert unit.max() == 1.0
    np.testing.assert_allclose(unit[0, 0], [0.0, 32768 / 65535, 1.0])


def test_rgb_errors(tmp_path):
    import cv2

    with pytest.raises(InputValidationError, match="file not found"):
        read_rgb(tmp_path / "none.png")
    cv2.imwrite(str(tmp_path / "grey.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(InputValidationError, match="grey-scale"):
        read_rgb(tmp_path / "grey.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(InputValidationError, match="cannot decode"):
        read_rgb(tmp_path / "bad.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 255  # OpenCV writes BGRA: red after the swap
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    back = read_rgb(tmp_path / "rgba.png")
    assert back.shape == (8, 8, 3) and (back[..., 0] == 255).all()
