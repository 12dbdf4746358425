"""Balanced MSE (Ren et al., CVPR 2022): BMC, BNI and GAI losses, and their label priors.

With Gaussian label noise ``N(y; pred, var)`` the balanced likelihood of a training label is
divided by its marginal under the training label prior ``p_train``; the loss is its negative
log, scaled by ``2 var`` (detached) so that it stays on the scale of an MSE::

    L = [ -log N(y; pred, var) + log integral p_train(y') N(y'; pred, var) dy' ] * (2 var).detach()

The three variants differ in how the balancing integral is computed:

* BMC (batch Monte-Carlo, no prior): the batch targets stand in for ``p_train``;
  ``logits_ij = -(pred_i - y_j)^2 / (2 var)``, ``L = CE(logits, i) * (2 var).detach()``.
* BNI (bin numerical integration): a histogram prior ``p_b`` with bin centres ``c_b``;
  ``L = (pred - y)^2 / (2 var) + logsumexp_b(log p_b - (pred - c_b)^2 / (2 var))``, times ``2 var``.
* GAI (GMM analytic integration): a Gaussian mixture ``{phi_k, mu_k, v_k}`` fitted on the training
  labels; ``L = (pred - y)^2 / (2 var) + 1/2 log var
  + logsumexp_k(log phi_k - 1/2 log(v_k + var) - (pred - mu_k)^2 / (2 (v_k + var)))``, times
  ``2 var``.

The constant ``1/2 log 2 pi`` is dropped everywhere, as in the reference; BNI has no
``1/2 log var`` term, so a BNI loss can be negative (the reference's behaviour, author in
BalancedMSE issue #21).

Scale: scores, targets, bin centres and GMM parameters are on the COMMON 0..10 scale, and so is
the noise ``sigma`` (``var = sigma^2``). The reference's defaults are in age years (labels about
0..100, bins of one year): ``init_noise_sigma`` 1.0 (argparse default, i.e. one label bin) and
10.0 (IMDB-WIKI README runs), ``sigma_lr`` 1e-2 with Adam. Mapped onto 0..10 (a factor 1/10),
this gives :data:`DEFAULT_INIT_NOISE_SIGMA` = 0.1, which is also one default bin (width 0.1) on our
scale, and 1.0 for the IMDB-WIKI setting. Adam moves ``sigma`` by about ``lr`` label units per
step, so the re-expressed learning rate is :data:`DEFAULT_SIGMA_LR` = 1e-3 (the reference's 1e-2
would move a sigma of 0.1 by ~10 % a step). As the author advises (BalancedMSE issue #10), on a new
task a fixed sigma tuned upwards from a small value is the safer start; a sigma of the order of a
MOS's standard error (rating std / sqrt(number of ratings)) is a natural first guess.

The training-step losses do no host-device sync (no value read back, no data-dependent shapes) and
take ``noise_var`` as a tensor (e.g. ``noise_sigma ** 2`` of an ``nn.Parameter`` registered in the
LightningModule, so DDP all-reduces its gradient); positivity of ``noise_var`` is the caller's
job (it is not checked, as that would read a value back). Priors (:func:`bin_prior`,
:func:`fit_label_gmm`) are built once at set-up from the full training labels, identically on
every rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_INIT_NOISE_SIGMA",
    "DEFAULT_SIGMA_LR",
    "REFERENCE_SIGMA_LR",
    "bmc_loss",
    "bni_loss",
    "gai_loss",
    "fit_label_gmm",
    "bin_prior",
]

#: Initial noise sigma on the common 0..10 scale: the reference's 1.0 (age years, labels ~0..100)
#: times 1/10; equal to one default bin width (0.1), as the reference's 1.0 was one age bin.
DEFAULT_INIT_NOISE_SIGMA = 0.1

#: Learning rate of sigma on the common scale (Adam): the reference's 1e-2 times 1/10.
DEFAULT_SIGMA_LR = 1e-3

#: The reference's ``--sigma_lr`` (age-year units), for reproducing it verbatim.
REFERENCE_SIGMA_LR = 1e-2


def _float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_pred_target(pred: torch.Tensor, target: torch.Tensor, noise_var: torch.Tensor) -> None:
    if pred.dim() != 1 or pred.shape[0] == 0:
        raise ValueError(f"pred must have shape (B,) with B >= 1, got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(
            f"target must have shape (B,) matching pred, got {tuple(target.shape)} and "
            f"{tuple(pred.shape)}"
        )
    if not isinstance(noise_var, torch.Tensor) or noise_var.dim() != 0:
        shape = tuple(noise_var.shape) if isinstance(noise_var, torch.Tensor) else type(noise_var)
        raise ValueError(f"noise_var must be a 0-dim tensor, got {shape}")


def _masked_log(p: torch.Tensor) -> torch.Tensor:
    """``log p`` with exactly ``-inf`` where ``p <= 0`` and finite gradients everywhere.

    ``log(clamp(p))`` keeps the backward of the log finite; ``torch.where`` then puts ``-inf``
    (a constant, no gradient) in place of the empty entries, so ``logsumexp`` gives them weight
    ``exp(-inf) = 0`` and their gradient is ``0``, not ``0 * inf = NaN``.
    """
    tiny = torch.finfo(p.dtype).tiny
    return torch.where(p > 0, p.clamp_min(tiny).log(), torch.full_like(p, -math.inf))


def bmc_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    noise_var: torch.Tensor,
    all_targets: torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
) -> torch.Tensor:
    """Balanced MSE by batch Monte-Carlo: pred (B,), target (B,), noise_var () -> scalar.

    ``logits_ij = -(pred_i - t_j)^2 / (2 var)``; ``CE(logits, positives) * (2 var).detach()``,
    mean over the B rows. The other targets of the batch are the Monte-Carlo sample of the
    training label prior, so no prior is needed; with B = 1 the loss is constantly 0 (drop the
    last partial batch).

    DDP (to see the global batch like the DataParallel reference): pass ``all_targets`` (N,),
    the gathered targets of the global batch (no gradient needed), and ``offset``, this rank's
    first row in it (``rank * B``, an int or a 0-dim long tensor); then the columns are
    ``all_targets`` and the positive of row ``i`` is column ``offset + i``. With equal local
    batches the mean of the ranks' losses equals the loss of the global batch. The gradient
    w.r.t. ``noise_var`` flows through the logits only (the scale factor is detached).

    Example:
        >>> pred, target = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0])
        >>> round(bmc_loss(pred, target, torch.tensor(0.5)).item(), 6)
        0.355649
    """
    _check_pred_target(pred, target, noise_var)
    if all_targets is None:
        columns = target
    else:
        if all_targets.dim() != 1 or all_targets.shape[0] < pred.shape[0]:
            raise ValueError(
                "all_targets must have shape (N,) with N >= B (the gathered global batch), got "
                f"{tuple(all_targets.shape)} for B = {pred.shape[0]}"
            )
        columns = all_targets.detach()
    dtype = _float_dtype(pred, columns, noise_var)
    var = noise_var.to(dtype)
    logits = -(pred.to(dtype).unsqueeze(1) - columns.to(dtype).unsqueeze(0)).square() / (2 * var)
    positives = torch.arange(pred.shape[0], device=pred.device) + offset
    loss = F.cross_entropy(logits, positives)
    return loss * (2 * var).detach()


def bni_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    noise_var: torch.Tensor,
    centres: torch.Tensor,
    prior: torch.Tensor,
) -> torch.Tensor:
    """Balanced MSE by bin numerical integration: pred (B,), target (B,), noise_var (),
    centres (K,) bin centres, prior (K,) bin probabilities -> scalar.

    ``[(pred - t)^2 / (2 var) + logsumexp_b(log p_b - (pred - c_b)^2 / (2 var))]`` times
    ``(2 var).detach()``, mean over the batch. All K bins of the framework's binning can be
    passed: empty bins (``p_b = 0``) contribute ``exp(-inf) = 0`` with a finite (zero) gradient,
    which equals the reference's dropping of empty buckets. ``prior`` must have some positive
    mass (see :func:`bin_prior`); a prior that does not sum to 1 only shifts the loss by a
    constant.

    Example:
        >>> loss = bni_loss(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor(0.5),
        ...                 torch.tensor([0.0, 1.0]), torch.tensor([0.25, 0.75]))
        >>> round(loss.item(), 6)  # 1 + log(0.25 + 0.75 / e)
        0.357374
    """
    _check_pred_target(pred, target, noise_var)
    if centres.dim() != 1 or prior.shape != centres.shape or centres.shape[0] == 0:
        raise ValueError(
            "centres and prior must have the same shape (K,) with K >= 1, got "
            f"{tuple(centres.shape)} and {tuple(prior.shape)}"
        )
    dtype = _float_dtype(pred, target, noise_var, centres, prior)
    var = noise_var.to(dtype)
    p = pred.to(dtype)
    mse_term = (p - target.to(dtype)).square() / (2 * var)
    log_prior = _masked_log(prior.to(dtype)).unsqueeze(0)
    distance = (p.unsqueeze(1) - centres.to(dtype).unsqueeze(0)).square()
    balancing = log_prior - distance / (2 * var)
    loss = mse_term + torch.logsumexp(balancing, dim=1)
    return (loss * (2 * var).detach()).mean()


def gai_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    noise_var: torch.Tensor,
    gmm_weights: torch.Tensor,
    gmm_means: torch.Tensor,
    gmm_vars: torch.Tensor,
) -> torch.Tensor:
    """Balanced MSE by GMM analytic integration: pred (B,), target (B,), noise_var (), and a
    1-D Gaussian mixture prior of the training labels (K,) x 3 -> scalar.

    ``[(pred - t)^2 / (2 var) + 1/2 log var + logsumexp_k(log phi_k - 1/2 log(v_k + var)
    - (pred - mu_k)^2 / (2 (v_k + var)))] * (2 var).detach()``, mean over the batch, as the
    reference (``1/2 log var`` included, ``1/2 log 2 pi`` dropped). Components of weight 0 are
    ignored with a finite gradient. Fit the mixture with :func:`fit_label_gmm`.

    Example:
        >>> one = torch.tensor([1.0])
        >>> loss = gai_loss(one, torch.tensor([0.0]), torch.tensor(0.5),
        ...                 one, torch.tensor([2.0]), torch.tensor([0.5]))
        >>> round(loss.item(), 6)  # 1 + 0.5 log 0.5 - 0.5 log 1 - 1 / 2
        0.153426
    """
    _check_pred_target(pred, target, noise_var)
    k = gmm_weights.shape
    if gmm_weights.dim() != 1 or k[0] == 0 or gmm_means.shape != k or gmm_vars.shape != k:
        raise ValueError(
            "gmm_weights, gmm_means and gmm_vars must have the same shape (K,) with K >= 1, got "
            f"{tuple(gmm_weights.shape)}, {tuple(gmm_means.shape)} and {tuple(gmm_vars.shape)}"
        )
    dtype = _float_dtype(pred, target, noise_var, gmm_weights, gmm_means, gmm_vars)
    var = noise_var.to(dtype)
    p = pred.to(dtype)
    mse_term = (p - target.to(dtype)).square() / (2 * var) + 0.5 * var.log()
    sum_var = gmm_vars.to(dtype) + var
    balancing = (
        _masked_log(gmm_weights.to(dtype))
        - 0.5 * sum_var.log()
        - (p.unsqueeze(1) - gmm_means.to(dtype).unsqueeze(0)).square() / (2 * sum_var)
    )
    loss = mse_term + torch.logsumexp(balancing, dim=1)
    return (loss * (2 * var).detach()).mean()


def fit_label_gmm(
    scores: np.ndarray,
    components: int = 8,
    seed: int = 0,
    *,
    max_iter: int = 500,
    tol: float = 1e-6,
    var_floor: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 1-D Gaussian mixture of the training labels by EM -> (weights, means, vars), each (K,)
    float64, means sorted ascending. Set-up time only (numpy, not a training step).

    Replaces the reference's ``sklearn.mixture.GaussianMixture(K, random_state=0)`` (scikit-learn
    is not a dependency). Deterministic: means start at the ``(k + 1/2) / K`` quantiles of the
    scores, moved by a tiny ``seed``-driven jitter (1e-3 of the score std) so that components
    starting on the same value (ties in discrete labels) can separate; equal weights; every
    variance the global variance. EM stops when the mean log-likelihood per score changes by
    less than ``tol`` or after ``max_iter`` iterations; variances are floored at ``var_floor``
    (a component on a single repeated label would otherwise collapse to variance 0). Loops over
    iterations only; each is vectorised over the (distinct scores, K) responsibilities, each
    distinct score weighted by its count (the same sums as over all N scores, faster).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(2.0, 0.3, 500), rng.normal(7.0, 0.5, 500)])
        >>> w, m, v = fit_label_gmm(x, components=2)
        >>> np.round(m, 1).tolist()
        [2.0, 7.0]
    """
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    if x.size < components:
        raise ValueError(f"need at least {components} scores to fit {components} components")
    if not np.isfinite(x).all():
        raise ValueError("scores must be finite")
    if max_iter < 1 or var_floor <= 0:
        raise ValueError(f"need max_iter >= 1 and var_floor > 0, got {max_iter}, {var_floor}")
    rng = np.random.default_rng(seed)
    global_var = max(float(x.var()), var_floor)
    quantiles = (np.arange(components) + 0.5) / components
    means = np.quantile(x, quantiles) + rng.normal(0.0, 1e-3 * math.sqrt(global_var), components)
    variances = np.full(components, global_var)
    weights = np.full(components, 1.0 / components)
    # EM sums over samples; equal scores (common: a MOS is a ratio of vote counts) enter once,
    # with their multiplicity, which gives the same sums with fewer rows.
    values, multiplicity = np.unique(x, return_counts=True)
    values = values[:, None]
    multiplicity = multiplicity[:, None].astype(np.float64)
    eps = 10 * np.finfo(np.float64).eps
    previous = -np.inf
    for _ in range(max_iter):
        # E-step: log of weight * N(x; mean, var) for each (value, component), normalised.
        log_joint = (
            np.log(weights)
            - 0.5 * np.log(2 * np.pi * variances)
            - 0.5 * (values - means) ** 2 / variances
        )
        top = log_joint.max(axis=1, keepdims=True)
        log_norm = top + np.log(np.exp(log_joint - top).sum(axis=1, keepdims=True))
        resp = np.exp(log_joint - log_norm) * multiplicity
        # M-step.
        mass = resp.sum(axis=0) + eps
        weights = mass / mass.sum()
        means = (resp * values).sum(axis=0) / mass
        variances = np.maximum((resp * (values - means) ** 2).sum(axis=0) / mass, var_floor)
        log_likelihood = float((log_norm * multiplicity).sum()) / x.size
        if abs(log_likelihood - previous) < tol:
            break
        previous = log_likelihood
    order = np.argsort(means, kind="stable")
    return weights[order], means[order], variances[order]


def bin_prior(
    counts: torch.Tensor, lds_kernel: torch.Tensor | np.ndarray | Sequence[float] | None = None
) -> torch.Tensor:
    """Bin probabilities (K,) of the training counts (K,), optionally LDS-smoothed: set-up time.

    Without a kernel ``p_b = n_b / N``. With one (odd length, e.g. the peak-normalised Gaussian
    LDS window), the counts are first convolved with it, zero padded and of the same length
    (``scipy.ndimage.convolve1d(..., mode='constant')`` as in the reference's
    ``get_bucket_info``), then normalised. The result has the dtype of the counts, at least
    float32, on their device; empty bins keep probability 0, which :func:`bni_loss` handles.

    Example:
        >>> bin_prior(torch.tensor([1, 0, 3])).tolist()
        [0.25, 0.0, 0.75]
        >>> bin_prior(torch.tensor([0.0, 4.0, 0.0]), [0.5, 1.0, 0.5]).tolist()
        [0.25, 0.5, 0.25]
    """
    if counts.dim() != 1 or counts.shape[0] == 0:
        raise ValueError(f"counts must have shape (K,) with K >= 1, got {tuple(counts.shape)}")
    dtype = _float_dtype(counts)
    n = counts.to(dtype)
    if lds_kernel is not None:
        kernel = torch.as_tensor(lds_kernel, dtype=dtype, device=n.device)
        if kernel.dim() != 1 or kernel.shape[0] % 2 != 1:
            raise ValueError(f"lds_kernel must be 1-D of odd length, got {tuple(kernel.shape)}")
        if (kernel < 0).any():
            raise ValueError("lds_kernel must be non-negative")
        half = kernel.shape[0] // 2
        # conv1d computes a correlation: flip the kernel for a true convolution (as convolve1d).
        n = F.conv1d(n.view(1, 1, -1), kernel.flip(0).view(1, 1, -1), padding=half).view(-1)
    if (n < 0).any() or not torch.isfinite(n).all():
        raise ValueError("counts must be finite and non-negative")
    total = n.sum()
    if total <= 0:
        raise ValueError("counts must have a positive total")
    return n / total
