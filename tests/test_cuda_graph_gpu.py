"""CUDA graph capture and replay of the custom ops and of the torch backend's forward (needs a CUDA device).

Why: a graph replays the kernels recorded at capture with the pointers of that moment, so an op breaks under graphs
when it synchronises with the host, copies from pageable memory, launches on another stream than the current one,
or keeps host-side state between calls (a workspace it frees, a size it caches). Eager tests cannot see any of that.
Each case is captured after a warm-up (Triton autotunes and compiles in the warm-up, never during capture), replayed
on the inputs of the capture and again after new values are copied into the same input tensors, and compared with
eager runs on both input sets. The ops are forced to one backend through their environment variables
(``SSCHSR_*_BACKEND``): ``cuda`` (the native kernels; refused, not silently replaced, when they are not built) or
``triton``. The ops themselves promise deterministic results (no atomics), so replay must equal eager bit for bit;
the whole model also runs cuDNN / cuBLAS, so it is held to a tight relative tolerance instead.
Run by ``scripts/gpu_suite.py`` (stage ``cuda-graph``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from sschsr_deploy.ops import gram_and_norms, modulated_deform_conv2d, patch_match, spectral_attention

pytestmark = pytest.mark.gpu

ENV_VARS = ("SSCHSR_DEFORM_CONV_BACKEND", "SSCHSR_SPECTRAL_ATTENTION_BACKEND", "SSCHSR_PATCH_MATCH_BACKEND")
NATIVE_OPS = ("modulated_deform_conv2d", "patch_match", "spectral_attention", "gram_and_norms")


@pytest.fixture(params=["cuda", "triton"])
def backend(request, monkeypatch) -> str:
    """Every op forced to the native CUDA kernels or to Triton for the test."""
    name = request.param
    for var in ENV_VARS:
        monkeypatch.setenv(var, name)
    if name == "cuda":
        import sschsr_deploy.ops  # noqa: F401  (defines the ops, loads the extension)
        from sschsr_deploy.ops._backend import has_kernel, native_status

        missing = [op for op in NATIVE_OPS if not has_kernel(op, "cuda")]
        assert not missing, f"no native CUDA kernel for {missing}: {native_status()}"
    else:
        from sschsr_deploy.kernels.triton import deform_conv

        assert not deform_conv._INTERPRET, "Triton kernels were defined under TRITON_INTERPRET=1"
    return name


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).cuda()


def capture(fn: Callable[..., object], static: Sequence[torch.Tensor], warmup: int = 3) -> tuple[object, object]:
    """(graph, its output) after ``warmup`` calls on a side stream, as torch recommends before capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)
    return graph, out


def _flat(out: object) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple | list) else [out]  # type: ignore[list-item]


def replay_matches(fn: Callable[..., object], inputs_a: Sequence[torch.Tensor], inputs_b: Sequence[torch.Tensor],
                   check: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    """Eager on both input sets, then capture on set A, replay on A and on B copied into the captured inputs."""
    eager_a = [t.clone() for t in _flat(fn(*inputs_a))]
    eager_b = [t.clone() for t in _flat(fn(*inputs_b))]
    assert any(not torch.equal(x, y) for x, y in zip(eager_a, eager_b, strict=True)), "the two input sets agree"
    static = [t.clone() for t in inputs_a]
    graph, out = capture(fn, static)
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(_flat(out), eager_a, strict=True):
        check(got, want)
    for s, t in zip(static, inputs_b, strict=True):
        s.copy_(t)
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(_flat(out), eager_b, strict=True):
        check(got, want)


def bitwise(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(got, want), f"replay differs from eager: max |diff| {(got.double() - want.double()).abs().max()}"


def _dcn_inputs(seed: int) -> list[torch.Tensor]:
    b, c, o, h, w, og = 2, 32, 24, 20, 22, 8
    return [randn(b, c, h, w, seed=seed), 2.0 * randn(b, 2 * og * 9, h, w, seed=seed + 1),
            torch.rand(b, og * 9, h, w, generator=torch.Generator().manual_seed(seed + 2)).cuda(),
            randn(o, c, 3, 3, seed=seed + 3) / 17.0, randn(o, seed=seed + 4)]


OPS: dict[str, tuple[Callable[[int], list[torch.Tensor]], Callable[..., object]]] = {
    "deform_conv": (_dcn_inputs, lambda x, off, m, wt, bs: modulated_deform_conv2d(
        x, off, m, wt, bs, stride=1, padding=1, dilation=1, groups=1, offset_groups=8)),
    "spectral_attention": (
        lambda s: [randn(2, 64, 24, 28, seed=s + i) for i in range(3)] + [torch.rand(2, 1, 1).cuda() + 0.5],
        lambda q, k, v, tau: spectral_attention(q, k, v, tau, 2)),
    "gram_and_norms": (lambda s: [randn(2, 64, 24, 28, seed=s + i) for i in range(2)],
                       lambda q, k: gram_and_norms(q, k, 2)),
    "patch_match": (lambda s: [randn(1, 32, 20, 22, seed=s + i) for i in range(2)],
                    lambda f, r: patch_match(f, r, 3)),
}


@pytest.mark.parametrize("op", list(OPS))
def test_op_graph_replay_equals_eager(op, backend):
    make, fn = OPS[op]
    with torch.inference_mode():
        replay_matches(fn, make(10), make(20), bitwise)


def _model_inputs(seed: int, bands: int = 31, size: int = 128) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(1, bands, size, size)] + [(1, 3, size, size)] * 4
    return [torch.rand(s, generator=g).cuda() for s in shapes]


def test_model_forward_graph_replay_equals_eager(backend):
    """The torch backend's forward (tiny preset, one 128² window) captured whole, then replayed on new inputs."""
    from sschsr_deploy.model import SSCHSR
    from sschsr_deploy.runtime.backends import TorchBackend

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SSCHSR.from_preset("tiny")
    runner = TorchBackend(model, "cuda")

    def close(got: torch.Tensor, want: torch.Tensor) -> None:
        assert got.shape == want.shape and torch.isfinite(got).all()
        err = ((got.double() - want.double()).norm() / want.double().norm()).item()
        print(f"\n{backend}: graph replay vs eager rel. L2 {err:.1e} (bitwise: {torch.equal(got, want)})")
        assert err <= 1e-5

    replay_matches(runner.run, _model_inputs(1), _model_inputs(2), close)
