"""PreparedScene streams its preprocessing: windows equal the whole-image formula, nothing of HR size is kept.

The whole-image formula here is written out with the building blocks of :mod:`sschsr_deploy.preprocess` (bicubic of
the whole normalised cube, scikit-image's histogram matching against the whole degraded reference), independently of
PreparedScene, so the streamed implementation (row bands, sketches, per-window upsampling and matching) is checked
against it, not against itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage.exposure import match_histograms

from sschsr_deploy import preprocess
from sschsr_deploy import scene as scene_mod
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.io import as_cube
from sschsr_deploy.preprocess import ValueSketch, histogram_matching_map
from sschsr_deploy.scene import PreparedScene, prepare_inputs


def _lr_and_ref(lr_h: int, lr_w: int, scale: int, bands: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:lr_h, 0:lr_w] / max(lr_h, lr_w)
    lr = np.stack([np.sin(3 * yy + b) * np.cos(2 * xx - b) for b in range(bands)], axis=-1)
    lr = (100.0 + 40.0 * lr + rng.normal(0, 1.0, lr.shape)).astype(np.float32)
    ref = rng.integers(0, 256, (lr_h * scale, lr_w * scale, 3), dtype=np.uint8)
    ref[: lr_h * scale // 4, : lr_w * scale // 3] = 255  # a saturated patch: a large atom in the template
    return lr, ref


def _whole_image(lr: np.ndarray, ref: np.ndarray, scale: int, bands: tuple[int, int, int]) -> list[np.ndarray]:
    """The five inputs (C x H x W float32) by the whole-image formula."""
    x = lr.astype(np.float64)
    norm = (x - x.min()) / (x.max() - x.min())
    up = preprocess.bicubic_upsample(norm, scale)
    rgb = preprocess.bicubic_upsample(np.ascontiguousarray(norm[..., list(bands)]), scale)
    unit = preprocess.reference_to_unit(ref)
    matched = match_histograms(rgb.astype(np.float32), preprocess.degrade(unit, scale), channel_axis=-1)
    hwc = [np.clip(up, 0, 1), np.clip(matched, 0, 1), unit, 255.0 * rgb, unit * 255.0]
    return [np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32) for a in hwc]


def _reflect_take(a: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    h, w = a.shape[1:]
    rows = scene_mod._reflect(np.arange(y0, y1), h)
    cols = scene_mod._reflect(np.arange(x0, x1), w)
    return a[:, rows][:, :, cols]


@pytest.mark.parametrize("lr_h,lr_w,scale", [(37, 53, 4), (29, 23, 8), (41, 33, 4)])
@pytest.mark.parametrize("band_pixels", [None, 5000])
def test_streamed_windows_equal_the_whole_image_formula(lr_h, lr_w, scale, band_pixels, monkeypatch):
    # band_pixels=5000: many row bands (a band is a few LR rows), exercising the banded degradation, upsampling and
    # sketch merging; the sketches stay below capacity, so the matching is exact.
    if band_pixels is not None:
        monkeypatch.setattr(scene_mod, "BAND_PIXELS", band_pixels)
    bands = (4, 2, 0)
    lr, ref = _lr_and_ref(lr_h, lr_w, scale)
    whole = _whole_image(lr, ref, scale, bands)
    sc = PreparedScene(as_cube(lr), ref, scale, bands)
    assert sc.matching_exact
    if band_pixels is not None:
        assert len(list(sc._bands())) > 3
    h, w = sc.height, sc.width
    windows = [
        (0, h, 0, w),  # the whole image
        (8, 136, 16, 144),  # interior
        (h - 96, h + 32, w - 120, w + 8),  # beyond the bottom-right corner: reflect padding
        (0, 128, w - 64, w + 64),  # beyond the right edge
    ]
    for y0, y1, x0, x1 in windows:
        got = sc.window(y0, y1, x0, x1)
        for k, (g, full) in enumerate(zip(got, whole, strict=True)):
            assert g.dtype == np.float32 and g.shape == (full.shape[0], y1 - y0, x1 - x0)
            np.testing.assert_array_equal(g, _reflect_take(full, y0, y1, x0, x1), err_msg=f"input {k} {y0, y1, x0, x1}")
    # prepare_inputs is the one-window case
    mi = prepare_inputs(lr, ref, scale, bands)
    for a, full in zip(mi.as_tuple(), whole, strict=True):
        np.testing.assert_array_equal(a[0], full)


def test_sketch_is_exact_below_capacity_and_close_beyond():
    rng = np.random.default_rng(3)
    src = rng.normal(0.5, 0.2, (300, 200)).astype(np.float32)
    src[:40, :50] = 0.25  # an atom (a flat region)
    tmpl = np.clip(rng.gamma(2.0, 0.15, (280, 210)), 0, 1.5)
    tmpl[-30:] = 1.0
    want = match_histograms(src[..., None], tmpl[..., None], channel_axis=-1)[..., 0]

    def matched(capacity: int, pieces: int) -> tuple[np.ndarray, bool]:
        s, t = ValueSketch(capacity), ValueSketch(capacity)
        for part in np.array_split(src, pieces):
            s.add(part)
        for part in np.array_split(tmpl, pieces):
            t.add(part)
        xs, mapped = histogram_matching_map(s, t)
        return np.interp(src, xs, mapped).astype(np.float32), s.exact and t.exact

    got, exact = matched(2**17, 7)
    assert exact
    np.testing.assert_array_equal(got, want)
    got, exact = matched(2**11, 7)  # ~30x fewer entries than distinct values
    assert not exact
    err = np.abs(got.astype(np.float64) - want)
    assert np.median(err) < 1e-3 and err.max() < 0.05
    # the atom keeps its exact share (one entry), so it maps to one value; only the template's interval moves it
    assert np.ptp(got[:40, :50]) == 0 and err[:40, :50].max() < 1e-4


def _arrays(obj: object, seen: set[int] | None = None) -> list[np.ndarray]:
    """The numpy arrays an object holds (attributes, lists, tuples, dicts), recursively."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return [obj]
    items: list = []
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    elif hasattr(obj, "__dict__") and obj.__class__.__module__.startswith("sschsr_deploy.scene"):
        items = list(vars(obj).values())
    return [a for it in items for a in _arrays(it, seen)]


def test_a_large_scene_keeps_no_whole_image_hr_arrays(monkeypatch):
    monkeypatch.setattr(scene_mod, "BAND_PIXELS", 2**16)
    capacity = 2**12
    lr, ref = _lr_and_ref(200, 176, 4, bands=4, seed=1)  # 800 x 704 HR: 563k pixels, >> capacity
    sc = PreparedScene(as_cube(lr), ref, 4, (3, 1, 0), sketch_capacity=capacity)
    assert not sc.matching_exact
    hr_pixels = sc.height * sc.width
    kept = [a for a in _arrays(sc) if a is not sc.ref and a is not lr]
    assert kept, "expected the matching maps"
    assert max(a.size for a in kept) <= 2 * capacity  # map points: at most two per sketch entry
    assert sum(a.nbytes for a in kept) <= 3 * 2 * 2 * capacity * 8
    assert sum(a.nbytes for a in kept) < hr_pixels  # less than one byte per HR pixel in all
    assert sc.ref.dtype == np.uint8  # the reference stays as given (3 bytes per HR pixel)
    # windows still come out right: shapes, ranges; the matched image stays within ~1e-2 of the exact one
    whole = _whole_image(lr, ref, 4, (3, 1, 0))
    got = sc.window(96, 352, 200, 456)
    np.testing.assert_array_equal(got[0], whole[0][:, 96:352, 200:456])
    np.testing.assert_array_equal(got[3], whole[3][:, 96:352, 200:456])
    err = np.abs(got[1].astype(np.float64) - whole[1][:, 96:352, 200:456])
    assert np.median(err) < 1e-3 and err.max() < 2e-2


@pytest.mark.parametrize("value", [1e300, -1e300, 1e39])
def test_values_beyond_float32_are_refused(value):
    lr, ref = _lr_and_ref(8, 10, 4, bands=6)
    big = lr.astype(np.float64)
    big[3, 4, 1] = value
    with pytest.raises(InputValidationError, match="beyond what float32 can hold") as info:
        prepare_inputs(big, ref, 4, (4, 2, 0))
    assert f"{value!r}" in str(info.value)


def test_a_range_beyond_float32_is_refused():
    lr, ref = _lr_and_ref(8, 10, 4, bands=6)
    span = lr.astype(np.float64)
    span[0, 0, 0], span[1, 1, 1] = -5e37, 5e37  # each value fits float32, max - min does not (with headroom)
    with pytest.raises(InputValidationError, match=r"\[-5e\+37, 5e\+37\]"):
        PreparedScene(as_cube(span), ref, 4, (4, 2, 0))


def test_memory_mapped_cube_pages_are_released(tmp_path):
    lr, ref = _lr_and_ref(33, 35, 4)
    np.save(tmp_path / "lr.npy", lr)
    mm = np.load(tmp_path / "lr.npy", mmap_mode="r")
    sc = PreparedScene(as_cube(mm), ref, 4, (4, 2, 0))
    before = sc.window(0, 128, 4, 132)
    sc.release_pages()  # unmapped pages are read again from the file
    for a, b in zip(before, sc.window(0, 128, 4, 132), strict=True):
        np.testing.assert_array_equal(a, b)
