"""Joint image/ground-truth transforms and batch collation.

A transform maps a :class:`Sample` (image tensor + panoptic ground truth + valid size) to a new one,
drawing any randomness from the ``numpy.random.Generator`` it is given, so a pipeline is
deterministic for a seed. Transforms touch only the image and the panoptic map; the semantic map,
instance masks, boxes and crowd mask are derived afterwards (:func:`~panoptic.data.targets.build_target`),
so they are aligned with the image by construction.

Order: resize, then flip, then pad (resizing or flipping a padded sample raises).

Example:
    >>> import numpy as np
    >>> from panoptic.data.synthetic import generate_scene
    >>> scene = generate_scene(np.random.default_rng(0), (50, 70))
    >>> image = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255
    >>> t = build_transforms(short_side=40, flip_prob=0.5, size_divisor=32)
    >>> out = t(Sample(image, scene.panoptic), np.random.default_rng(0))
    >>> tuple(out.image.shape), out.image_size
    ((3, 64, 64), (40, 56))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import SIZE_DIVISOR
from ..segments import assemble_result
from ..structures import PanopticResult
from .targets import PanopticTarget, pad_panoptic, pad_target

__all__ = [
    "build_transforms",
    "collate",
]


@dataclass
class Sample:
    """An image and its ground truth while being transformed.

    Attributes:
        image: ``(3, H, W)`` float image.
        panoptic: Ground truth of size ``(H, W)``.
        image_size: ``(h, w)`` valid (unpadded) region; defaults to ``(H, W)``.
    """

    image: torch.Tensor
    panoptic: PanopticResult
    image_size: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or tuple(self.image.shape[1:]) != self.panoptic.image_size:
            raise ValueError(f"image {tuple(self.image.shape)} must be (3, H, W) with (H, W) equal to the "
                             f"panoptic map's {self.panoptic.image_size}.")
        if self.image_size == (0, 0):
            self.image_size = self.panoptic.image_size

    @property
    def padded(self) -> bool:
        """Whether the image is larger than its valid region."""
        return self.image_size != self.panoptic.image_size


class Transform(Protocol):
    """Anything that maps ``(sample, rng)`` to a new sample."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample: ...


class Compose:
    """Apply transforms in order.

    Args:
        transforms: The transforms.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def _nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each output pixel for nearest resizing (pixel centres, like ``nearest-exact``)."""
    idx = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out)).floor().long()
    return idx.clamp_(0, n_in - 1)


def resize_panoptic(panoptic: PanopticResult, size: tuple[int, int]) -> PanopticResult:
    """Nearest-neighbour resize of a result; segments that vanish are dropped, areas recounted.

    Args:
        panoptic: The result.
        size: ``(H', W')``.
    """
    h, w = panoptic.image_size
    rows, cols = _nearest_index(h, size[0]), _nearest_index(w, size[1])
    seg = panoptic.segment_map[rows][:, cols].long() - 1
    unknown = panoptic.unknown_mask[rows][:, cols]
    return assemble_result(seg, panoptic.category, panoptic.isthing, panoptic.score, panoptic.source,
                           iscrowd=panoptic.iscrowd, unknown_mask=unknown)


class ResizeShortSide:
    """Resize to short side ``short_side`` (random choice if several) with the long side <= ``max_size``.

    The image is resized bilinearly (antialiased when shrinking), the panoptic map by nearest neighbour.

    Args:
        short_side: Target short side, or candidates to draw from uniformly.
        max_size: Cap on the long side; ``None`` for no cap.
    """

    def __init__(self, short_side: int | Sequence[int], max_size: int | None = None) -> None:
        self.choices = [short_side] if isinstance(short_side, int) else list(short_side)
        if not self.choices or min(self.choices) <= 0:
            raise ValueError(f"short_side must be positive, got {short_side!r}.")
        self.max_size = max_size

    def output_size(self, size: tuple[int, int], short_side: int) -> tuple[int, int]:
        """``(H', W')`` for an input of size ``(H, W)``."""
        h, w = size
        scale = short_side / min(h, w)
        if self.max_size is not None and max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if sample.padded:
            raise ValueError("ResizeShortSide got a padded sample; apply PadToMultiple last.")
        k = int(rng.integers(len(self.choices))) if len(self.choices) > 1 else 0
        short = self.choices[k]
        size = self.output_size(sample.panoptic.image_size, short)
        if size == sample.panoptic.image_size:
            return sample
        image = F.interpolate(sample.image[None].float(), size=size, mode="bilinear", align_corners=False,
                              antialias=True)[0]
        return Sample(image, resize_panoptic(sample.panoptic, size))

    def __repr__(self) -> str:
        return f"ResizeShortSide(short_side={self.choices}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p`` (one ``rng.random()`` draw per call, whatever ``p``).

    Args:
        p: Flip probability; 1.0 always flips.
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if sample.padded:
            raise ValueError("RandomHorizontalFlip got a padded sample; apply PadToMultiple last.")
        if rng.random() >= self.p:
            return sample
        pan = sample.panoptic
        flipped = replace(pan, segment_map=pan.segment_map.flip(-1), unknown_mask=pan.unknown_mask.flip(-1))
        return Sample(sample.image.flip(-1), flipped)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class PadToMultiple:
    """Pad bottom/right to a multiple of ``divisor``: image 0, panoptic map void (semantic 255, masks False).

    Args:
        divisor: E.g. 32, the largest FPN stride.
    """

    def __init__(self, divisor: int = SIZE_DIVISOR) -> None:
        if divisor <= 0:
            raise ValueError(f"divisor must be positive, got {divisor}.")
        self.divisor = divisor

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample.panoptic.image_size
        size = (-(-h // self.divisor) * self.divisor, -(-w // self.divisor) * self.divisor)
        if size == (h, w):
            return sample
        image = F.pad(sample.image, (0, size[1] - w, 0, size[0] - h), value=0.0)
        return Sample(image, pad_panoptic(sample.panoptic, size), sample.image_size)

    def __repr__(self) -> str:
        return f"PadToMultiple(divisor={self.divisor})"


def build_transforms(short_side: int | Sequence[int] | None = None, max_size: int | None = None,
                     flip_prob: float = 0.0, size_divisor: int | None = SIZE_DIVISOR) -> Compose:
    """The usual pipeline: optional resize, optional random flip, optional padding.

    Args:
        short_side: Resize target(s); ``None`` keeps the size (``max_size`` is then ignored).
        max_size: Long-side cap for the resize.
        flip_prob: Horizontal flip probability (0 for evaluation).
        size_divisor: Pad to a multiple of this; ``None`` for no padding.
    """
    ts: list[Transform] = []
    if short_side is not None:
        ts.append(ResizeShortSide(short_side, max_size))
    if flip_prob > 0:
        ts.append(RandomHorizontalFlip(flip_prob))
    if size_divisor:
        ts.append(PadToMultiple(size_divisor))
    return Compose(ts)


def collate(batch: Sequence[tuple[torch.Tensor, PanopticTarget]],
            size_divisor: int = 1) -> tuple[torch.Tensor, list[PanopticTarget]]:
    """Stack images padded (bottom/right, zeros) to a common size; pad every target map to match.

    Args:
        batch: ``(image (3, H_i, W_i), target)`` pairs, as a :class:`CocoPanopticDataset` yields.
        size_divisor: Round the common size up to a multiple of this.

    Returns:
        ``images (B, 3, H, W)`` and the targets, each padded to ``(H, W)`` (semantic 255, masks and
        crowd ``False``, panoptic void); ``image_size`` keeps each valid region.
    """
    if not batch:
        raise ValueError("collate got an empty batch.")
    h = max(int(img.shape[1]) for img, _ in batch)
    w = max(int(img.shape[2]) for img, _ in batch)
    h, w = -(-h // size_divisor) * size_divisor, -(-w // size_divisor) * size_divisor
    first = batch[0][0]
    images = first.new_zeros((len(batch), first.shape[0], h, w))
    targets = []
    for k, (img, target) in enumerate(batch):
        images[k, :, : img.shape[1], : img.shape[2]] = img
        targets.append(pad_target(target, (h, w)))
    return images, targets
