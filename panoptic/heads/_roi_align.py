"""RoIAlign with torchvision's forward and a faster CPU gradient for small feature maps.

Training on the CPU at the synthetic benchmark's sizes spent about a sixth of every Mask R-CNN step in
torchvision's RoIAlign *backward*: its CPU kernel walks every output value and every sampling point one at a time,
scattering four bilinear weights each (about 60 ms for the box head's 256 RoIs of ``64 x 7 x 7`` on a
``32 x 32`` map).

RoIAlign is separable. Output bin ``(p, q)`` of RoI ``k`` averages ``g_h x g_w`` samples on a Cartesian grid, and
each sample's bilinear weight is a row weight times a column weight (torchvision's rules — samples beyond one pixel
outside the map count as zero, coordinates clamped at 0 and at the last row/column — act on each axis alone), so::

    out[k, c, p, q] = sum_{h, w} Ay[k, p, h] * x[b_k, c, h, w] * Ax[k, q, w]

with ``Ay[k, p, h]`` the mean over the bin's ``g_h`` row samples of their weight on row ``h`` (``Ax`` likewise).
The gradient is then two matrix products per image: ``dx[b, c, h, w] = sum_{k in b, p, q} Ay[k, p, h]
dout[k, c, p, q] Ax[k, q, w]``. It reads every row and column of the map, so it pays only where the map is small
next to the RoIs' sampling work (:func:`separable_pays`); elsewhere, and on other devices (torchvision's CUDA
kernel scatters with atomics in parallel), torchvision's own backward runs.

The forward is always torchvision's kernel: results are bit for bit ``torchvision.ops.roi_align``'s; gradients
equal torchvision's up to float rounding (another summation order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign as _TorchvisionMultiScaleRoIAlign
from torchvision.ops import roi_align as _tv_roi_align
from torchvision.ops.poolers import LevelMapper

# Machinery of the heads (the Mask R-CNN head and the semantic head's RoI loss use it), not API.
__all__: list[str] = []

# Break-even measured on 2 cores (torch 2.x, mkldnn matmul): torchvision's CPU backward costs about 19 ns per
# sampling point of every output value; the separable form about (H * W / Q + W) multiply-adds per output value at
# about 15 G/s. Use it only where it is at least 2x cheaper by that estimate.
_NS_PER_SAMPLE = 19.0
_MACS_PER_NS = 15.0
_MARGIN = 2.0


def separable_pays(height: int, width: int, pooled_width: int, samples_per_bin: float) -> bool:
    """Whether the separable gradient is estimated at least 2x cheaper than torchvision's CPU backward.

    Args:
        height, width: Size of the feature map.
        pooled_width: Output columns ``Q``.
        samples_per_bin: Mean sampling points per output bin (``g_h * g_w``).
    """
    separable_ns = (height * width / max(pooled_width, 1) + width) / _MACS_PER_NS
    return _MARGIN * separable_ns <= _NS_PER_SAMPLE * samples_per_bin


def roi_align(input: Tensor, boxes: Tensor | Sequence[Tensor], output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """``torchvision.ops.roi_align`` (same arguments, bit-identical output) with the separable CPU gradient.

    Args:
        input: ``(N, C, H, W)`` feature map.
        boxes: ``(K, 5)`` rows ``(batch index, x1, y1, x2, y2)``, or ``N`` tensors ``(K_n, 4)`` of xyxy boxes.
        output_size: ``P`` or ``(P, Q)``.
        spatial_scale: Box coordinates times this are map coordinates.
        sampling_ratio: Samples per bin along each axis; ``<= 0``: ``ceil(roi size / bins)`` per RoI.
        aligned: Shift boxes by half a pixel (pixel centres), and do not clamp RoIs to at least one pixel.

    Returns:
        ``(K, C, P, Q)``.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4).requires_grad_()
        >>> out = roi_align(x, torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0]]), 1, aligned=True)
        >>> out.sum().backward(); x.grad[0, 0]
        tensor([[0.2500, 0.2500, 0.0000, 0.0000],
                [0.2500, 0.2500, 0.0000, 0.0000],
                [0.0000, 0.0000, 0.0000, 0.0000],
                [0.0000, 0.0000, 0.0000, 0.0000]])
    """
    rois = boxes if isinstance(boxes, Tensor) else _to_rois(boxes)
    size = (output_size, output_size) if isinstance(output_size, int) else (int(output_size[0]),
                                                                             int(output_size[1]))
    if (input.device.type != "cpu" or not input.requires_grad or not torch.is_grad_enabled()
            or rois.ndim != 2 or rois.shape[0] == 0):
        return _tv_roi_align(input, rois, size, spatial_scale, sampling_ratio, aligned)
    samples = _mean_samples(rois, size, spatial_scale, sampling_ratio, aligned)
    if not separable_pays(int(input.shape[-2]), int(input.shape[-1]), size[1], samples):
        return _tv_roi_align(input, rois, size, spatial_scale, sampling_ratio, aligned)
    return _SeparableRoIAlign.apply(input, rois, size, spatial_scale, sampling_ratio, aligned)


def _to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """``N`` tensors ``(K_n, 4)`` -> ``(K, 5)`` rows ``(n, x1, y1, x2, y2)`` (torchvision's conversion)."""
    return torch.cat([torch.cat([torch.full_like(b[:, :1], n), b], dim=1) for n, b in enumerate(boxes)], dim=0)


def _mean_samples(rois: Tensor, size: tuple[int, int], scale: float, sampling_ratio: int, aligned: bool) -> float:
    """Mean sampling points per bin over the RoIs (one host read, only for adaptive sampling)."""
    if sampling_ratio > 0:
        return float(sampling_ratio * sampling_ratio)
    (_, rh), (_, rw) = _extent(rois, scale, aligned)
    gh, gw = _grid(rh, rw, size, sampling_ratio)
    return float((gh * gw).double().mean())


def _grid(rh: Tensor, rw: Tensor, size: tuple[int, int], sampling_ratio: int) -> tuple[Tensor, Tensor]:
    """``(K,)`` int64 samples per bin along y and x: ``sampling_ratio``, or ``ceil(roi size / bins)``."""
    if sampling_ratio > 0:
        full = torch.full(rh.shape, sampling_ratio, dtype=torch.long, device=rh.device)
        return full, full
    return torch.ceil(rh / size[0]).long(), torch.ceil(rw / size[1]).long()


def _extent(rois: Tensor, scale: float, aligned: bool) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Per RoI ``((y start, height), (x start, width))`` in map coordinates, as torchvision computes them."""
    offset = 0.5 if aligned else 0.0
    x0 = rois[:, 1] * scale - offset
    y0 = rois[:, 2] * scale - offset
    rw = rois[:, 3] * scale - offset - x0
    rh = rois[:, 4] * scale - offset - y0
    if not aligned:  # torchvision forces malformed RoIs to 1x1
        rw = rw.clamp(min=1.0)
        rh = rh.clamp(min=1.0)
    return (y0, rh), (x0, rw)


def axis_weights(start: Tensor, length: Tensor, bins: int, grid: Tensor, size: int) -> Tensor:
    """``(K, bins, size)``: weight of map row ``h`` in bin ``p`` of each RoI along one axis.

    The mean over the bin's ``grid`` samples of their bilinear weights, with torchvision's rules: a sample below
    ``-1`` or above ``size`` weighs nothing; otherwise it is clamped to ``>= 0``, and at or beyond the last row it
    sits on the last row.

    Args:
        start: ``(K,)`` first map coordinate of each RoI.
        length: ``(K,)`` its extent along the axis.
        bins: Output bins along the axis.
        grid: ``(K,)`` int64 samples per bin along the axis.
        size: Map size along the axis.
    """
    k = start.shape[0]
    g_max = int(grid.max()) if k else 0
    weights = start.new_zeros(k, bins, size)
    if g_max == 0:
        return weights
    dtype = start.dtype
    p = torch.arange(bins, device=start.device, dtype=dtype)[None, :, None]
    s = torch.arange(g_max, device=start.device, dtype=dtype)[None, None, :]
    g = grid.to(dtype).clamp(min=1)[:, None, None]
    step = (length / bins)[:, None, None]
    y = start[:, None, None] + p * step + (s + 0.5) * step / g  # (K, bins, g_max)
    used = (s < grid[:, None, None]) & (y >= -1.0) & (y <= size)
    y = y.clamp(min=0)
    low = y.floor().long()
    last = low >= size - 1
    low = torch.where(last, size - 1, low)
    high = torch.where(last, low, low + 1)
    frac = torch.where(last, torch.zeros_like(y), y - low.to(dtype))
    share = used.to(dtype) / g
    weights.scatter_add_(2, low, (1 - frac) * share)
    weights.scatter_add_(2, high, frac * share)
    return weights


def separable_backward(grad: Tensor, rois: Tensor, input_shape: Sequence[int], spatial_scale: float,
                       sampling_ratio: int, aligned: bool) -> Tensor:
    """Gradient of RoIAlign with respect to its input, from the separable form (see the module docstring).

    Args:
        grad: ``(K, C, P, Q)`` gradient of the output.
        rois: ``(K, 5)`` as in :func:`roi_align`.
        input_shape: ``(N, C, H, W)``.
        spatial_scale, sampling_ratio, aligned: As in :func:`roi_align`.

    Returns:
        ``(N, C, H, W)``.
    """
    n, c, h, w = (int(v) for v in input_shape)
    p, q = int(grad.shape[2]), int(grad.shape[3])
    (y0, rh), (x0, rw) = _extent(rois.to(grad.dtype), spatial_scale, aligned)
    gh, gw = _grid(rh, rw, (p, q), sampling_ratio)
    ay = axis_weights(y0, rh, p, gh, h)  # (K, P, H)
    ax = axis_weights(x0, rw, q, gw, w)  # (K, Q, W)
    # along x first, channels last, so that the rows of every RoI of an image stack into one matrix product
    v = torch.matmul(ax.transpose(1, 2)[:, None], grad.permute(0, 2, 3, 1))  # (K, P, W, C)
    out = grad.new_zeros(n, h, w, c)
    image = rois[:, 0].long()
    for b in range(n):  # images, not instances
        idx = (image == b).nonzero()[:, 0]
        if idx.numel():
            torch.mm(ay[idx].reshape(-1, h).t(), v[idx].reshape(-1, w * c), out=out[b].view(h, w * c))
    return out.permute(0, 3, 1, 2).contiguous()


class _SeparableRoIAlign(torch.autograd.Function):
    """torchvision's forward, :func:`separable_backward` as the input's gradient (boxes get none, as there)."""

    @staticmethod
    def forward(ctx, input: Tensor, rois: Tensor, size: tuple[int, int], scale: float, sampling_ratio: int,
                aligned: bool) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.args = (tuple(input.shape), scale, sampling_ratio, aligned)
        return _tv_roi_align(input, rois, size, scale, sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        shape, scale, sampling_ratio, aligned = ctx.args
        dx = separable_backward(grad, rois, shape, scale, sampling_ratio, aligned) if ctx.needs_input_grad[0] else None
        return dx, None, None, None, None, None


class MultiScaleRoIAlign(_TorchvisionMultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same arguments, levels and output) pooling with :func:`roi_align`.

    Example:
        >>> pool = MultiScaleRoIAlign(["p2", "p3"], 7, 2)
        >>> feats = {"p2": torch.rand(1, 8, 32, 32), "p3": torch.rand(1, 8, 16, 16)}
        >>> tuple(pool(feats, [torch.tensor([[0.0, 0.0, 40.0, 40.0]])], [(128, 128)]).shape)
        (1, 8, 7, 7)
    """

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """``(K, C, P, Q)`` features of every image's boxes (xyxy in image pixels), in box order."""
        feats = [x[k] for k in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _to_rois(boxes)
        size = tuple(self.output_size)
        if len(feats) == 1:
            return roi_align(feats[0], rois, size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        result = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            result[idx] = roi_align(feat, rois[idx], size, scale, self.sampling_ratio).to(result.dtype)
        return result


def _setup_scales(feats: list[Tensor], image_shapes: list[tuple[int, int]], canonical_scale: int,
                  canonical_level: int) -> tuple[list[float], LevelMapper]:
    """Each level's scale (a power of 2 from its size against the largest image) and the level of a box, as
    torchvision infers them."""
    if not image_shapes:
        raise ValueError("MultiScaleRoIAlign needs the image sizes; got none.")
    original = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
    # in float32 torch arithmetic, as torchvision
    scales = [2 ** float(torch.tensor(float(f.shape[-2]) / float(original[0])).log2().round()) for f in feats]
    k_min, k_max = (int(-torch.log2(torch.tensor(s, dtype=torch.float32)).item()) for s in (scales[0], scales[-1]))
    return scales, LevelMapper(k_min, k_max, canonical_scale, canonical_level)
