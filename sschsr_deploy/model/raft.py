"""RAFT optical flow (Teed & Deng), the large variant SSC-HSR uses for coarse alignment (spec §3.1).

Computes the flow from the HSI pseudo-RGB (image 1) to the reference RGB (image 2), both given on the 0..255 scale, and
returns it at full resolution in HR pixels, channels (x, y). Attribute names follow the official RAFT checkpoint.
Differences from the research code that do not change the result: convex upsampling runs once after the last iteration
(the official code runs it every iteration and discards all but the last), and the dead multi-scale outputs are not
computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import float32_module, reduced_precision_module


@dataclass(frozen=True)
class RAFTConfig:
    """Widths and iteration count. The defaults are RAFT-L as used by SSC-HSR (``raft-things``)."""

    encoder_dims: tuple[int, int, int] = (64, 96, 128)
    feature_dim: int = 256
    hidden_dim: int = 128
    context_dim: int = 128
    corr_levels: int = 4
    corr_radius: int = 4
    corr_dims: tuple[int, int] = (256, 192)
    flow_dims: tuple[int, int] = (128, 64)
    head_dim: int = 256
    mask_dim: int = 256
    iters: int = 12


@float32_module
class ContextBatchNorm(nn.BatchNorm2d):
    """BatchNorm of the context encoder with a switch for the official test behaviour.

    The official test never calls ``eval()``, so this BatchNorm normalises with the statistics of the current batch.
    ``use_batch_statistics = True`` reproduces that in eval mode too, without touching the running statistics;
    ``False`` (default) gives the usual behaviour (running statistics in eval mode).
    """

    use_batch_statistics: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if self.use_batch_statistics and not self.training:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


@float32_module
class InstanceNorm(nn.InstanceNorm2d):
    """The feature encoder's instance norm (no affine parameters), a float32 island like every norm."""


def _make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return InstanceNorm(channels)
    return ContextBatchNorm(channels)


class ResidualBlock(nn.Module):
    """conv–norm–ReLU ×2 with an identity or (1×1 stride-2 conv + norm) shortcut; ReLU after the sum."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.relu = nn.ReLU(inplace=False)
        self.norm1 = _make_norm(norm, out_ch)
        self.norm2 = _make_norm(norm, out_ch)
        if stride != 1:
            # The official block registers one norm module as norm3 and as downsample.1: checkpoints list both keys.
            self.norm3 = _make_norm(norm, out_ch)
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride), self.norm3)
        else:
            self.downsample = None

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


@reduced_precision_module  # the convolutions are RAFT's cost; its norms stay float32
class BasicEncoder(nn.Module):
    """RAFT feature / context encoder: 7×7/2 stem, residual stages at 1/2, 1/4, 1/8, 1×1 head."""

    def __init__(self, dims: tuple[int, int, int], output_dim: int, norm: str) -> None:
        super().__init__()
        d1, d2, d3 = dims
        self.norm1 = _make_norm(norm, d1)
        self.conv1 = nn.Conv2d(3, d1, 7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=False)
        self.layer1 = nn.Sequential(ResidualBlock(d1, d1, norm, 1), ResidualBlock(d1, d1, norm, 1))
        self.layer2 = nn.Sequential(ResidualBlock(d1, d2, norm, 2), ResidualBlock(d2, d2, norm, 1))
        self.layer3 = nn.Sequential(ResidualBlock(d2, d3, norm, 2), ResidualBlock(d3, d3, norm, 1))
        self.conv2 = nn.Conv2d(d3, output_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.conv2(x)


class MotionEncoder(nn.Module):
    """Encodes correlation features and the current flow into the GRU's motion input (``BasicMotionEncoder``)."""

    def __init__(self, cfg: RAFTConfig) -> None:
        super().__init__()
        corr_ch = cfg.corr_levels * (2 * cfg.corr_radius + 1) ** 2
        c1, c2 = cfg.corr_dims
        f1, f2 = cfg.flow_dims
        self.convc1 = nn.Conv2d(corr_ch, c1, 1)
        self.convc2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.convf1 = nn.Conv2d(2, f1, 7, padding=3)
        self.convf2 = nn.Conv2d(f1, f2, 3, padding=1)
        self.conv = nn.Conv2d(c2 + f2, cfg.hidden_dim - 2, 3, padding=1)

    def forward(self, flow: Tensor, corr: Tensor) -> Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class SepConvGRU(nn.Module):
    """Separable ConvGRU: a horizontal (1×5) pass then a vertical (5×1) pass."""

    def __init__(self, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        c = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))

    @staticmethod
    def _step(h: Tensor, x: Tensor, cz: nn.Conv2d, cr: nn.Conv2d, cq: nn.Conv2d) -> Tensor:
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(cz(hx))
        r = torch.sigmoid(cr(hx))
        q = torch.tanh(cq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        h = self._step(h, x, self.convz1, self.convr1, self.convq1)
        return self._step(h, x, self.convz2, self.convr2, self.convq2)


class FlowHead(nn.Module):
    """Predicts the flow increment from the GRU state."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.conv1(x)))


@reduced_precision_module(methods=("forward", "upsample_mask"))
class UpdateBlock(nn.Module):
    """One RAFT refinement step (``BasicUpdateBlock``): motion encoder, GRU, flow head and upsampling-mask head."""

    def __init__(self, cfg: RAFTConfig) -> None:
        super().__init__()
        self.encoder = MotionEncoder(cfg)
        self.gru = SepConvGRU(cfg.hidden_dim, cfg.context_dim + cfg.hidden_dim)
        self.flow_head = FlowHead(cfg.hidden_dim, cfg.head_dim)
        self.mask = nn.Sequential(
            nn.Conv2d(cfg.hidden_dim, cfg.mask_dim, 3, padding=1),
            nn.ReLU(inplace=False),
            nn.Conv2d(cfg.mask_dim, 64 * 9, 1),
        )

    def forward(self, net: Tensor, inp: Tensor, corr: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        motion = self.encoder(flow, corr)
        net = self.gru(net, torch.cat([inp, motion], dim=1))
        return net, self.flow_head(net)

    def upsample_mask(self, net: Tensor) -> Tensor:
        """Convex-upsampling logits (×0.25 as in RAFT); needed only after the last iteration."""
        return 0.25 * self.mask(net)


def coords_grid(b: int, h: int, w: int, like: Tensor) -> Tensor:
    """(B, 2, h, w) pixel coordinates in (x, y) order."""
    ys = torch.arange(h, device=like.device, dtype=like.dtype).view(h, 1).expand(h, w)
    xs = torch.arange(w, device=like.device, dtype=like.dtype).view(1, w).expand(h, w)
    return torch.stack([xs, ys], dim=0).unsqueeze(0).expand(b, 2, h, w)


class CorrPyramid:
    """All-pairs correlation volume f1ᵀf2/√D and its 2×2 average-pooled pyramid, with the windowed bilinear lookup."""

    def __init__(self, fmap1: Tensor, fmap2: Tensor, levels: int, radius: int) -> None:
        b, d, h, w = fmap1.shape
        corr = fmap1.reshape(b, d, h * w).transpose(1, 2) @ fmap2.reshape(b, d, h * w)
        corr = (corr / torch.sqrt(torch.tensor(float(d), dtype=fmap1.dtype))).reshape(b * h * w, 1, h, w)
        self.pyramid = [corr]
        for _ in range(levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.pyramid.append(corr)
        self.radius = radius
        r = radius
        d_ = torch.arange(-r, r + 1, device=fmap1.device, dtype=fmap1.dtype)
        # delta[i, j] = (d_[i], d_[j]) added to (x, y): the x displacement is the slow index, y the fast one.
        self.delta = torch.stack(torch.meshgrid(d_, d_, indexing="ij"), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)

    def __call__(self, coords: Tensor) -> Tensor:
        b, _, h, w = coords.shape
        centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = []
        for lvl, corr in enumerate(self.pyramid):
            pos = centre / 2**lvl + self.delta
            hl, wl = corr.shape[-2:]
            grid = torch.cat([2 * pos[..., :1] / (wl - 1) - 1, 2 * pos[..., 1:] / (hl - 1) - 1], dim=-1)
            sampled = F.grid_sample(corr, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out.append(sampled.view(b, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


def convex_upsample(flow: Tensor, mask_logits: Tensor) -> Tensor:
    """Upsample a 1/8 flow ×8 as a softmax-weighted combination of the 3×3 coarse neighbours of 8·flow."""
    b, _, h, w = flow.shape
    mask = torch.softmax(mask_logits.view(b, 1, 9, 8, 8, h, w), dim=2)
    nbrs = F.unfold(8 * flow, (3, 3), padding=1).view(b, 2, 9, 1, 1, h, w)
    # The 9-tap sum as explicit adds (same order as torch.sum's): written as a reduction, Inductor fused it with the
    # flow's computation and parallelised the 9 taps inside a serial loop over every output value (an OpenMP region
    # per value: 187 ms of a 2.2 s compiled forward at 256²); as adds it is one parallel pointwise kernel.
    up = mask[:, :, 0] * nbrs[:, :, 0]  # b, 2, 8, 8, h, w
    for k in range(1, 9):
        up = up + mask[:, :, k] * nbrs[:, :, k]
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, 8 * h, 8 * w)


@float32_module  # correlation, lookups, coordinates, convex upsampling; encoders and update block reduced
class RAFT(nn.Module):
    """RAFT flow estimator; ``forward(image1, image2)`` takes 0..255 images and returns (B, 2, H, W) flow in HR px."""

    def __init__(self, cfg: RAFTConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or RAFTConfig()
        self.fnet = BasicEncoder(cfg.encoder_dims, cfg.feature_dim, "instance")
        self.cnet = BasicEncoder(cfg.encoder_dims, cfg.hidden_dim + cfg.context_dim, "batch")
        self.update_block = UpdateBlock(cfg)

    def forward(self, image1: Tensor, image2: Tensor, iters: int | None = None, trace: dict | None = None) -> Tensor:
        """Flow from image1 to image2. ``trace``, when given, receives the intermediates the golden fixtures record."""
        cfg = self.cfg
        iters = cfg.iters if iters is None else iters
        image1 = 2 * (image1 / 255.0) - 1.0
        image2 = 2 * (image2 / 255.0) - 1.0
        b = image1.shape[0]
        fmaps = self.fnet(torch.cat([image1, image2], dim=0))
        fmap1, fmap2 = fmaps[:b], fmaps[b:]
        corr_fn = CorrPyramid(fmap1, fmap2, cfg.corr_levels, cfg.corr_radius)
        cnet = self.cnet(image1)
        net, inp = torch.split(cnet, [cfg.hidden_dim, cfg.context_dim], dim=1)
        net = torch.tanh(net)
        inp = torch.relu(inp)
        _, _, h8, w8 = fmap1.shape
        coords0 = coords_grid(b, h8, w8, fmap1)
        coords1 = coords0
        lowres = []
        for _ in range(iters):
            corr = corr_fn(coords1)
            net, delta = self.update_block(net, inp, corr, coords1 - coords0)
            coords1 = coords1 + delta
            if trace is not None:
                lowres.append(coords1 - coords0)
        up_mask = self.update_block.upsample_mask(net)
        flow_up = convex_upsample(coords1 - coords0, up_mask)
        if trace is not None:
            trace.update(
                {"raft.fmap1": fmap1, "raft.fmap2": fmap2, "raft.cnet": cnet,
                 "raft.flow_lowres_iters": torch.stack(lowres, 0), "raft.up_mask_last": up_mask}
            )
        return flow_up
