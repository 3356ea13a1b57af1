"""Seed spread and paired bootstrap intervals of PQ differences (is a gap between two rows real?).

A row's held-out result is kept as per-image statistics: ``(S, N, C, 4)`` arrays holding, for each seed ``s``,
held-out image ``n`` and category ``c``, the image's ``tp``, ``fp``, ``fn`` and summed match IoU (the
:data:`STAT_FIELDS`). PQ is a ratio of sums over the whole set (per class ``Σ IoU / (TP + FP/2 + FN/2)``, then
the mean over the classes that occur), not a mean of per-image PQs: an image without a class has no PQ for
it, and small images would weigh as much as crowded ones. So each bootstrap draw resamples images (with
replacement), *sums* their statistics per class and recomputes PQ from the sums, exactly as the evaluator does
on the real set; :func:`pq_from_stats` is that rule.

Pairing: both rows of a claim are scored on the same draw of images (the images are shared, so their
difficulty cancels), and on the same draw of seed indices (seed ``k`` of every network uses the same training
seed, i.e. the same data sampling order). The estimate is the difference of the seed-mean PQs; the interval is
the percentile interval of that difference over :attr:`BootstrapConfig.resamples` draws from a fixed seed, so a
rerun prints the same interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..evaluation import PanopticQuality

# Machinery of `panoptic compare` (the package exports the API: CompareConfig, run_compare, CompareResult).
__all__: list[str] = []

STAT_FIELDS = ("tp", "fp", "fn", "iou")
"""Order of the last axis of per-image statistics."""


@dataclass(frozen=True)
class BootstrapConfig:
    """How intervals are computed.

    Attributes:
        resamples: Bootstrap draws (2000: the 2.5% / 97.5% percentiles then rest on 50 draws each side).
        level: Coverage of the interval (0.95: a 95% interval).
        seed: Seed of the resampling (fixed: the same inputs give the same interval).
    """

    resamples: int = 2000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 1 or not 0.0 < self.level < 1.0:
            raise ValueError(f"resamples must be >= 1 and level in (0, 1), got {self.resamples} and {self.level}.")


@dataclass(frozen=True)
class Interval:
    """A paired bootstrap interval of ``PQ(a) - PQ(b)`` in PQ points (0-100).

    Attributes:
        diff: The measured difference (seed-mean PQ of ``a`` minus that of ``b``).
        lo: Lower end of the interval.
        hi: Upper end.
        level: Coverage (0.95).
        resamples: Bootstrap draws.
        images: Held-out images resampled.
        seeds: Seeds resampled.
    """

    diff: float
    lo: float
    hi: float
    level: float
    resamples: int
    images: int
    seeds: int

    @property
    def holds(self) -> bool:
        """``a`` beats ``b``: the whole interval is above 0."""
        return self.lo > 0.0

    def describe(self) -> str:
        """``"+1.5 PQ, 95% interval [+0.4, +2.6]"``."""
        return f"{self.diff:+.1f} PQ, {100 * self.level:.0f}% interval [{self.lo:+.1f}, {self.hi:+.1f}]"


def metric_stats(metric: PanopticQuality) -> np.ndarray:
    """``(C, 4)`` ``tp, fp, fn, iou`` totals of a PQ accumulator (of one image: that image's statistics)."""
    st = metric.state_dict()
    return np.stack([st[k].numpy().astype(np.float64) for k in ("tp", "fp", "fn", "iou_sum")], -1)


def pq_from_stats(stats: np.ndarray) -> np.ndarray:
    """PQ (0-100) of summed statistics, the evaluator's rule.

    Args:
        stats: ``(..., C, 4)`` summed ``tp, fp, fn, iou`` per class.

    Returns:
        ``(...)`` PQ: the mean over classes with ``tp + fp + fn > 0`` of ``iou / (tp + fp/2 + fn/2)``
        (0 where no class occurs).
    """
    tp, fp, fn, iou = (stats[..., i] for i in range(4))
    denom = tp + 0.5 * fp + 0.5 * fn
    present = denom > 0
    per_class = np.where(present, iou / np.where(present, denom, 1.0), 0.0)
    n = present.sum(-1)
    return 100.0 * per_class.sum(-1) / np.maximum(n, 1)


def _check(stats: np.ndarray, name: str) -> np.ndarray:
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 4 or stats.shape[-1] != len(STAT_FIELDS) or stats.shape[0] < 1 or stats.shape[1] < 1:
        raise ValueError(f"{name} must be (seeds, images, classes, 4) per-image statistics, got shape {stats.shape}.")
    return stats


def seed_spread(values: np.ndarray) -> tuple[float, float]:
    """``(mean, sample standard deviation)`` over seeds (std 0 for one seed)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def paired_bootstrap(a: np.ndarray, b: np.ndarray, config: BootstrapConfig = BootstrapConfig()) -> Interval:
    """Paired bootstrap interval of ``PQ(a) - PQ(b)`` over held-out images and seeds.

    Each draw picks ``N`` images and ``S`` seed indices with replacement, the same for both rows; per picked seed
    it sums the picked images' statistics, computes PQ of each row, and averages the seed differences.

    Args:
        a: ``(S, N, C, 4)`` per-image statistics of the first row (see :data:`STAT_FIELDS`).
        b: The same for the second row (same seeds, images and classes).
        config: Draws, level and seed.

    Returns:
        The measured difference and its percentile interval.

    Raises:
        ValueError: If the shapes are not per-image statistics of the same seeds, images and classes.
    """
    a, b = _check_pair(a, b)
    s, n = a.shape[:2]
    diff = float((pq_from_stats(a.sum(1)) - pq_from_stats(b.sum(1))).mean())
    lo, hi = _percentiles(_draws(a, b, config, images=n), config.level)
    return Interval(diff, lo, hi, config.level, config.resamples, n, s)


@dataclass(frozen=True)
class HeldOutSize:
    """Is the held-out set big enough? The interval's width against the gap it should resolve.

    Attributes:
        gap: ``|diff|`` of the claim, in PQ points.
        width: Width ``hi - lo`` of the claim's interval with the held-out images at hand.
        images: Held-out images at hand.
        seeds_only: Width with the images fixed and only the seeds resampled: the part no held-out size removes.
        widths: Estimated width with ``m`` held-out images, for each ``m`` tried (``m``-out-of-``n`` bootstrap:
            ``m`` images drawn with replacement from the ``n`` at hand, i.e. assuming they represent the
            images a larger set would hold).
        needed: The smallest ``m`` tried whose width is below ``gap``; ``None`` if none is.
        seeds: Seeds at hand (with one, the seeds' share cannot be measured and :attr:`seeds_only` is 0).
    """

    gap: float
    width: float
    images: int
    seeds_only: float
    widths: dict[int, float]
    needed: int | None
    seeds: int = 1

    @property
    def estimate(self) -> int | None:
        """Held-out images for a width below the gap by the ``1 / sqrt(m)`` law: widths add about in quadrature,
        ``width(m)**2 = seeds_only**2 + (width**2 - seeds_only**2) * n / m``; ``None`` when the seeds alone are at
        least as wide as the gap (no held-out size is enough)."""
        if self.seeds_only >= self.gap:
            return None
        image_part = max(self.width ** 2 - self.seeds_only ** 2, 0.0)
        return max(1, math.ceil(self.images * image_part / (self.gap ** 2 - self.seeds_only ** 2)))

    @property
    def seeds_estimate(self) -> int | None:
        """Seeds for a width below the gap with the images at hand, by the ``1 / sqrt(S)`` law of the seeds'
        share: ``width(S')**2 = (width**2 - seeds_only**2) + seeds_only**2 * S / S'``. ``None`` when the interval
        is already narrower than the gap, with one seed (the seeds' share is not measured), or when the images'
        share alone is at least as wide as the gap (then more images are needed as well)."""
        if self.width < self.gap or self.seeds < 2:
            return None
        room = self.gap ** 2 - max(self.width ** 2 - self.seeds_only ** 2, 0.0)
        if room <= 1e-9:  # (squared PQ points) no room, up to rounding: the images' share fills the gap
            return None
        return max(self.seeds + 1, math.ceil(self.seeds * self.seeds_only ** 2 / room))

    def as_dict(self) -> dict[str, Any]:
        """The claim's ``held_out`` entry of ``results.json`` (widths keyed by image count as strings)."""
        return {"gap": self.gap, "width": self.width, "seeds_only": self.seeds_only,
                "widths": {str(m): w for m, w in self.widths.items()}, "needed": self.needed,
                "estimate": self.estimate, "seeds_estimate": self.seeds_estimate, "text": self.describe()}

    def describe(self) -> str:
        """One sentence: how wide, why, and how many images would make it narrower than the gap."""
        seeds = (f"the seeds alone: {self.seeds_only:.2f}" if self.seeds > 1
                 else "one seed: the seeds' share is not measured")
        head = f"interval width {self.width:.2f} with {self.images} images against a gap of {self.gap:.2f} ({seeds})"
        if self.width < self.gap:
            return f"{head}: narrower than the gap"
        if self.gap == 0.0:
            return f"{head}: the rows do not differ, so no held-out size resolves a gap"
        estimate = self.estimate
        if estimate is None:
            more = self.seeds_estimate
            seeds = f"about {more} seeds would (estimate)" if more is not None else "more seeds are needed"
            return f"{head}: no held-out size makes it narrower than the gap; {seeds}"
        if estimate > 100 * self.images:
            return f"{head}: a gap this small needs more than 100 times these images"
        tried = max(self.widths)
        return (f"{head}: narrower than the gap from about {estimate} images "
                f"(estimate; {self.widths[tried]:.2f} wide with {tried})")


def held_out_size(a: np.ndarray, b: np.ndarray, config: BootstrapConfig = BootstrapConfig(),
                  factors: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)) -> HeldOutSize:
    """How the width of :func:`paired_bootstrap`'s interval would change with the held-out size.

    For each factor ``f`` the interval is recomputed with ``round(f * n)`` images drawn (with replacement) from the
    ``n`` at hand in every resample, seeds resampled as usual; and once with the images fixed (seeds only). Image
    noise shrinks about as ``1 / sqrt(m)``, seed noise does not, so a claim whose seeds alone are about as wide as
    its gap needs more seeds, not more images.

    Args:
        a: ``(S, N, C, 4)`` per-image statistics of the first row.
        b: The same for the second row.
        config: Draws, level and seed (each width uses the same seed).
        factors: Held-out sizes to try, as multiples of ``N``.

    Returns:
        The widths and the smallest size tried whose interval is narrower than the gap.
    """
    a, b = _check_pair(a, b)
    n = a.shape[1]
    gap = abs(float((pq_from_stats(a.sum(1)) - pq_from_stats(b.sum(1))).mean()))
    widths = {}
    for f in sorted(set(factors) | {1.0}):
        m = max(1, round(f * n))
        lo, hi = _percentiles(_draws(a, b, config, images=m), config.level)
        widths[m] = hi - lo
    lo, hi = _percentiles(_draws(a, b, config, images=None), config.level)
    needed = next((m for m in sorted(widths) if widths[m] < gap), None)
    return HeldOutSize(gap, widths[n], n, hi - lo, widths, needed, int(a.shape[0]))


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _check(a, "a"), _check(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a {a.shape} and b {b.shape} must hold the same seeds, images and classes (paired).")
    return a, b


def _draws(a: np.ndarray, b: np.ndarray, config: BootstrapConfig, images: int | None) -> np.ndarray:
    """``(draws,)`` resampled seed-mean PQ differences: ``images`` images drawn with replacement per resample
    (``None``: every image once, only the seeds resampled), the seed indices drawn with replacement."""
    s, n = a.shape[:2]
    rng = np.random.default_rng(config.seed)
    draws = config.resamples
    # Multiplicity of each image / seed in each draw: a weighted sum equals summing the resampled items.
    if images is None:
        img_w = np.ones((draws, n))
    else:
        img_w = np.zeros((draws, n))
        np.add.at(img_w, (np.arange(draws)[:, None], rng.integers(0, n, (draws, images))), 1.0)
    seed_w = np.zeros((draws, s))
    np.add.at(seed_w, (np.arange(draws)[:, None], rng.integers(0, s, (draws, s))), 1.0)

    def resampled_pq(x: np.ndarray) -> np.ndarray:  # (S, N, C, 4) -> (draws, S), one matrix product per seed
        return pq_from_stats((img_w @ x.reshape(s, n, -1)).reshape(s, draws, *x.shape[2:])).T

    d = resampled_pq(a) - resampled_pq(b)
    return (seed_w * d).sum(1) / s


def _percentiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return float(lo), float(hi)
