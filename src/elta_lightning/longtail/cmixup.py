"""C-Mixup: label-distance-aware mixup for regression (Yao et al., NeurIPS 2022), in-batch.

Plain mixup pairs random samples; C-Mixup prefers partners with close labels, so that the mixed
label stays a plausible label of the mixed input. For anchor ``i`` of a batch, with scores on
the COMMON 0..10 scale binned as ``b(s) = clamp(floor(s / w), 0, K - 1)`` and bin centres ``c``::

    k(a, b)   = exp(-(c_a - c_b)^2 / (2 h^2))                  Gaussian kernel over bins, (K, K)
    P(j | i)  = k(b_i, b_j) / sum_{j'} k(b_i, b_j')            j over the batch, j = i allowed
    lam       ~ Beta(alpha, alpha)                             one per batch
    x~ = lam x_i + (1 - lam) x_j,   y~ = lam y_i + (1 - lam) y_j   (inputs or features, targets,
                                                                   sample weights alike)

Reference: huaxiuyao/C-Mixup ``src/algorithm.py`` (``get_mixup_sample_rate``, ``train``):
``P(j | i)`` from a Gaussian ``KernelDensity`` on raw labels, normalised over the whole training
set and stored as an N x N matrix; ``lam = np.random.beta(alpha, alpha)`` per batch. Deliberate
deviations: (1) partners come from the current batch (the reference's ``batch_type 1`` idea),
never from an N x N matrix over the data set, which is O(N^2) for AVA's ~2.5e5 images; the
batch is itself a sample of the training distribution, so ``P(j | i)`` follows the same law up to
sampling noise, but a tail anchor finds few close partners in a batch and more often picks
itself (then the mix is a no-op); (2) label distances are measured between bin centres, so two
labels in one bin count as equal; the relative kernel error at distance ``d`` is about
``d w / h^2`` (~20% at ``d = h = 0.5`` with ``w = 0.1``), small next to the kernel's own decay;
(3) randomness only through a passed ``torch.Generator``, all on the device, without host sync.

Defaults on the 0..10 scale (the reference tunes ``h`` per data set in label units, 0.05..50,
and uses ``alpha`` 2.0 for tabular data, 0.2 for EchoNet videos):

* bandwidth ``h = 0.5`` (:data:`DEFAULT_BANDWIDTH`, 5 bins of width 0.1), about half the score
  std of the IAA sets: AVA ~0.73, PARA ~1.09, TAD66K ~1.45 (per-set suggestion ``h`` = 0.4 /
  0.5 / 0.7). With ``h = sigma / 2`` and Gaussian scores, a partner's label spreads around the
  anchor's with std ``h sigma / sqrt(h^2 + sigma^2) = 0.45 sigma`` (AVA: ~0.33 points), clearly
  closer than random mixup (``sigma`` for an anchor at the mean), while an anchor at the mean
  of a batch of 64 still has ~28 partners' worth of kernel mass (self-pick ~3%; ~15% at
  2 sigma, ~56% at 3 sigma). A much smaller ``h`` makes tail anchors mix mostly with
  themselves; a much larger one is plain mixup.
* ``alpha = 0.2`` (:data:`DEFAULT_ALPHA`) for mixing images: Beta(0.2, 0.2) puts ~67% of the
  draws within 0.1 of 0 or 1, so most mixed photographs stay close to one source (the blend of
  two photos is a double exposure whose aesthetics is not the blend of theirs); EchoNet (the
  reference's image-type task) and ImageNet mixup use 0.2 too. For mixing features (manifold
  mixup, as in the reference's tabular runs) use ``alpha = 2.0`` (:data:`DEFAULT_FEATURE_ALPHA`).

DDP: sampling is per process on its own batch with its own generator; no communication.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "bin_kernel",
    "sample_partners",
    "sample_lambda",
    "mix",
    "DEFAULT_BANDWIDTH",
    "DEFAULT_ALPHA",
    "DEFAULT_FEATURE_ALPHA",
]

#: Gaussian kernel bandwidth ``h`` on the 0..10 score scale (about half the IAA score std).
DEFAULT_BANDWIDTH = 0.5
#: Beta(alpha, alpha) parameter for mixing input images (reference EchoNet: 0.2).
DEFAULT_ALPHA = 0.2
#: Beta(alpha, alpha) parameter for mixing features (reference tabular / manifold: 2.0).
DEFAULT_FEATURE_ALPHA = 2.0


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            "C-Mixup draws its randomness only from a torch.Generator (on the device of the "
            f"batch); got {type(generator).__name__}"
        )


def bin_kernel(centres: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian kernel between label bins: centres (K,) on 0..10 -> (K, K), set-up time.

    ``kernel[a, b] = exp(-(c_a - c_b)^2 / (2 bandwidth^2))``, 1 on the diagonal, so every row of
    a batch's partner matrix has positive mass. ``bandwidth`` is in score points on the common
    0..10 scale (suggested 0.5, see the module docstring). Float32 or wider.
    """
    _check_positive("bandwidth", bandwidth)
    if centres.dim() != 1 or centres.shape[0] == 0:
        raise ValueError(f"centres must have shape (K,) with K >= 1, got {tuple(centres.shape)}")
    dtype = torch.promote_types(centres.dtype, torch.float32)
    c = centres.to(dtype)
    squared = (c.unsqueeze(1) - c.unsqueeze(0)).square()
    return torch.exp(-squared / (2 * bandwidth * bandwidth))


def sample_partners(
    bins: torch.Tensor, kernel: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Draw one mixup partner per anchor from the batch: bins (B,) long, kernel (K, K) -> (B,).

    ``P(j | i) = kernel[bins[i], bins[j]] / sum_j' kernel[bins[i], bins[j']]`` over the whole
    batch, ``j = i`` included (as in the reference); the (B, B) matrix is a gather of the kernel
    and the draw is one ``torch.multinomial`` with ``generator`` (on the batch's device), so no
    host sync. Bins must lie in ``0..K-1`` (not checked: that would need a sync).
    """
    _check_generator(generator)
    if bins.dim() != 1 or bins.shape[0] == 0:
        raise ValueError(f"bins must have shape (B,) with B >= 1, got {tuple(bins.shape)}")
    if bins.is_floating_point() or bins.is_complex() or bins.dtype == torch.bool:
        raise ValueError(f"bins must be integer bin indices, got dtype {bins.dtype}")
    if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1] or not kernel.is_floating_point():
        raise ValueError(
            f"kernel must be a floating (K, K) matrix from bin_kernel, got {tuple(kernel.shape)} "
            f"of dtype {kernel.dtype}"
        )
    b = bins.long()
    probabilities = kernel[b.unsqueeze(1), b.unsqueeze(0)]
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)


def sample_lambda(
    alpha: float, generator: torch.Generator, device: torch.device | str | None = None
) -> torch.Tensor:
    """One mixing weight ``lam ~ Beta(alpha, alpha)``, a 0-d float32 tensor on ``device``.

    Drawn as ``X / (X + Y)`` with ``X, Y ~ Gamma(alpha, 1)`` from ``torch._standard_gamma``, the
    generator-aware sampler behind ``torch.distributions.Gamma`` / ``Beta`` (whose ``sample``
    takes no generator). That sampler clamps draws to the dtype's smallest normal number, so
    ``X + Y > 0`` even for small ``alpha``; float32 rounds draws within ~6e-8 of 1 to exactly
    1 (harmless for mixing). ``device`` defaults to the generator's device; the two must match.
    No host sync.
    """
    _check_positive("alpha", alpha)
    _check_generator(generator)
    device = generator.device if device is None else torch.device(device)
    shape = torch.full((2,), float(alpha), dtype=torch.float32, device=device)
    gammas = torch._standard_gamma(shape, generator=generator)
    return gammas[0] / (gammas[0] + gammas[1])


def mix(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """``lam * a + (1 - lam) * b`` for two (B, ...) tensors: images, features, targets, weights.

    ``b`` is the partners' tensor (``x[partners]``). ``lam`` is a number, a 0-d tensor (one per
    batch, as in the reference) or a (B,) tensor (one per sample); it is cast to ``a``'s dtype.
    Vote distributions stay distributions and scores stay in range, since the mix is convex.
    Differentiable in ``a`` and ``b``; out of place.
    """
    if a.shape != b.shape or a.dim() == 0:
        raise ValueError(
            f"a and b must have the same shape (B, ...), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not a.is_floating_point() or not b.is_floating_point():
        raise ValueError(
            f"mix needs floating tensors (convert integer images or labels first), got "
            f"{a.dtype} and {b.dtype}"
        )
    if isinstance(lam, torch.Tensor):
        if lam.dim() == 1 and lam.shape[0] == a.shape[0]:
            lam = lam.reshape(-1, *([1] * (a.dim() - 1)))
        elif lam.dim() != 0:
            raise ValueError(
                f"lam must be a number, a 0-d tensor or have shape (B,) = ({a.shape[0]},), got "
                f"{tuple(lam.shape)}"
            )
        lam = lam.to(dtype=a.dtype)
    elif isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise ValueError(f"lam must be a number or a tensor, got {lam!r}")
    return lam * a + (1 - lam) * b.to(a.dtype)
