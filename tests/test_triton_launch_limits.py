"""What the Triton wrappers check before a launch: CUDA's grid limits, and the device the launch happens on.

CUDA allows 2**31 − 1 programs on grid axis 0 but only 65535 on axes 1 and 2; past that a launch fails on a GPU while
the interpreter runs it. The wrappers must refuse such calls with an ``InputValidationError`` before launching (the
kernels are replaced by stubs here, so a launch fails the test at once instead of running 65536 interpreted programs).

Triton launches on the *current* CUDA device, not on the tensors': every wrapper must launch inside
``launch_device(<the tensors' device>)``.
"""

from __future__ import annotations

import contextlib
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernels' definition (their import)

import pytest  # noqa: E402

from sschsr_deploy import kernels  # noqa: E402
from sschsr_deploy.errors import InputValidationError  # noqa: E402
from sschsr_deploy.kernels.triton import deform_conv as dcn  # noqa: E402
from sschsr_deploy.kernels.triton import patch_match as pm  # noqa: E402
from sschsr_deploy.kernels.triton import spectral_attention as sa  # noqa: E402

KERNELS = [(dcn, "_deform_conv2d_kernel"), (sa, "_gram_norms_kernel"), (sa, "_attn_apply_kernel"),
           (pm, "_patch_match_kernel")]


class _Events:
    """Stands in for the kernels and for ``launch_device``, recording what the wrappers do with them."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []

    def kernel(self, name: str):
        log = self.log

        class _Stub:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: log.append(("launch", name))

        return _Stub()

    def launch_device(self, device: torch.device):
        @contextlib.contextmanager
        def ctx():
            self.log.append(("enter", device))
            yield
            self.log.append(("exit", device))

        return ctx()


@pytest.fixture
def events(monkeypatch) -> _Events:
    ev = _Events()
    for mod, name in KERNELS:
        monkeypatch.setattr(mod, name, ev.kernel(name))
    for mod in (dcn, sa, pm):
        monkeypatch.setattr(mod, "launch_device", ev.launch_device, raising=False)
    return ev


def launches(ev: _Events) -> list[object]:
    return [what for kind, what in ev.log if kind == "launch"]


# ---- grid limits ----------------------------------------------------------------------------------------------------

def test_check_grid_limits_are_cudas():
    kernels.check_grid("op", (2**31 - 1, 65535, 65535), ("a", "b", "c"))
    with pytest.raises(InputValidationError, match="2147483648 programs on grid axis 0.*; tile the image"):
        kernels.check_grid("op", (2**31, 1, 1), ("tile the image", "b", "c"))
    with pytest.raises(InputValidationError, match="65536 programs on grid axis 2, more than CUDA's 65535; c$"):
        kernels.check_grid("op", (1, 1, 65536), ("a", "b", "c"))


def _dcn_inputs(b: int, groups: int, og: int = 1, dtype=torch.float16):
    """A 1×1 deformable conv on 1×1 maps, one input channel per group: tiny whatever b·groups."""
    x = torch.zeros(b, groups, 1, 1, dtype=dtype)
    offset, mask = torch.zeros(b, 2, 1, 1, dtype=dtype), torch.ones(b, 1, 1, 1, dtype=dtype)
    weight = torch.zeros(groups * og, 1, 1, 1, dtype=dtype)
    return x, offset, mask, weight


@pytest.mark.parametrize("b, groups", [(65536, 1), (1, 65536), (256, 256)])
def test_deform_conv_refuses_more_than_65535_batch_groups(events, b, groups):
    x, offset, mask, weight = _dcn_inputs(b, groups)
    with pytest.raises(InputValidationError, match=r"grid axis 2.*split the batch \(or the groups\)"):
        dcn.deform_conv2d_triton(x, offset, mask, weight, groups=groups)
    assert launches(events) == []


def test_deform_conv_refuses_more_than_65535_output_channel_blocks(events):
    block_o = min(cfg.kwargs["BLOCK_O"] for cfg in dcn._ACTIVE_CONFIGS)
    x, offset, mask, weight = _dcn_inputs(1, 1, og=65535 * block_o + 1)
    with pytest.raises(InputValidationError, match="grid axis 1.*fewer output channels per group"):
        dcn.deform_conv2d_triton(x, offset, mask, weight)
    assert launches(events) == []


def test_deform_conv_launches_at_the_limit(events):
    dcn.deform_conv2d_triton(*_dcn_inputs(65535, 1))
    assert launches(events) == ["_deform_conv2d_kernel"]


def test_gram_refuses_more_than_65535_pixel_splits(events):
    """A split holds at least 256 pixels, so only a ≥ 16.7-Mpixel image with a huge ``splits`` reaches the limit (an
    expanded tensor: no memory)."""
    n = 65535 * 256 + 1
    q = torch.zeros(1, 1, 1, 1, dtype=torch.float16).expand(1, 1, 1, n)
    with pytest.raises(InputValidationError, match="grid axis 1.*pass fewer splits"):
        sa.gram_and_norms_triton(q, q, 1, splits=n)
    sa.gram_and_norms_triton(q, q, 1, splits=65535)  # 65535 splits of 257 → 512 pixels: 32768 programs
    sa.gram_and_norms_triton(q[..., :4096], q[..., :4096], 1, splits=10**9)  # clamped to 16 splits of 256
    assert launches(events) == ["_gram_norms_kernel"] * 2


@pytest.mark.parametrize("b, heads", [(65536, 1), (16384, 4)])
def test_attention_refuses_more_than_65535_batch_heads(events, b, heads):
    v = torch.zeros(b, heads, 1, 1, dtype=torch.float16)
    attn = torch.zeros(b, heads, 1, 1)
    with pytest.raises(InputValidationError, match=r"grid axis 1.*split the batch \(or the heads\)"):
        sa.attention_apply_triton(attn, v, heads)
    with pytest.raises(InputValidationError, match=r"grid axis 1.*split the batch \(or the heads\)"):
        sa.spectral_attention_triton(v, v, v, torch.ones(heads), heads)  # before the Gram pass too
    assert launches(events) == []
    sa.attention_apply_triton(attn[:65535 // heads], v[:65535 // heads], heads)
    assert launches(events) == ["_attn_apply_kernel"]


def test_patch_match_refuses_more_than_65535_batch(events):
    feat = torch.zeros(65536, 1, 1, 1)
    with pytest.raises(InputValidationError, match="grid axis 1.*split the batch over several calls"):
        pm.patch_match_triton(feat, feat, patch_size=1)
    pm.patch_match_triton(feat[:65535], feat[:65535], patch_size=1)
    assert launches(events) == ["_patch_match_kernel"]


# ---- launch device --------------------------------------------------------------------------------------------------

def test_launch_device_is_the_tensors_cuda_device_or_nothing():
    assert isinstance(kernels.launch_device(torch.device("cpu")), contextlib.nullcontext)
    guard = kernels.launch_device(torch.device("cuda:1"))  # made without a GPU; entering it would need one
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def _dcn(dev):
    x = torch.zeros(1, 8, 5, 5, device=dev)
    return lambda: dcn.deform_conv2d_triton(x, torch.zeros(1, 18, 5, 5, device=dev),
                                            torch.zeros(1, 9, 5, 5, device=dev), torch.zeros(4, 8, 3, 3, device=dev),
                                            torch.zeros(4, device=dev), padding=1)


def _gram(dev):
    q = torch.zeros(1, 8, 4, 4, device=dev)
    return lambda: sa.gram_and_norms_triton(q, q, 2)


def _apply(dev):
    attn, v = torch.zeros(1, 2, 4, 4, device=dev), torch.zeros(1, 8, 4, 4, device=dev)
    return lambda: sa.attention_apply_triton(attn, v, 2)


def _attention(dev):
    q = torch.zeros(1, 8, 4, 4, device=dev)
    return lambda: sa.spectral_attention_triton(q, q, q, torch.ones(2, 1, 1, device=dev), 2)


def _patch_match(dev):
    f = torch.zeros(1, 4, 6, 6, device=dev)
    return lambda: pm.patch_match_triton(f, f, 3)


@pytest.mark.parametrize("call, kernels_launched", [
    (_dcn, ["_deform_conv2d_kernel"]),
    (_gram, ["_gram_norms_kernel"]),
    (_apply, ["_attn_apply_kernel"]),
    (_attention, ["_gram_norms_kernel", "_attn_apply_kernel"]),
    (_patch_match, ["_patch_match_kernel"]),
])
def test_every_launch_happens_inside_launch_device_of_the_tensors_device(events, call, kernels_launched):
    """Meta tensors (the interpreter accepts any device) show the device comes from the tensors, not a default."""
    call(torch.device("meta"))()
    meta = torch.device("meta")
    expected = [e for k in kernels_launched for e in (("enter", meta), ("launch", k), ("exit", meta))]
    assert events.log == expected


def test_attention_apply_refuses_tensors_on_two_devices():
    with pytest.raises(InputValidationError, match="one device"):
        sa.attention_apply_triton(torch.zeros(1, 2, 4, 4), torch.zeros(1, 8, 4, 4, device="meta"), 2)
