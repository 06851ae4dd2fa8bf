"""Contrastive losses: SimCLR's NT-Xent and the y-aware InfoNCE of Dufumier et al. (MICCAI 2021).

Notation (both losses). A batch of ``N`` subjects gives two augmented views each; their
embeddings ``z1, z2`` (shape ``(N, D)``) are L2-normalised and stacked into ``Z`` (``2N × D``),
rows ``0..N-1`` the first views, ``N..2N-1`` the second. ``s_kt = <Z_k, Z_t> / τ``. For an anchor
``k`` the *contrast set* ``A(k)`` is every other view ``t ≠ k`` (optionally only those of the same
nuisance group, see ``groups``), and

    log p_kj = s_kj − log Σ_{t ∈ A(k)} exp(s_kt)

NT-Xent (Chen et al., 2020) takes the other view of the same subject as the only positive:

    L = mean_k [ −log p_{k, k±N} ]

y-aware InfoNCE (Dufumier et al., 2021, eq. 3) weights *every* view of the contrast set by a kernel
on the subjects' metadata ``y`` (e.g. age), normalised over the contrast set of the anchor:

    w_kj = K(y_k, y_j) / Σ_{t ∈ A(k)} K(y_k, y_t),      L = mean_k [ −Σ_{j ∈ A(k)} w_kj log p_kj ]

with ``K(y, y') = exp(−½ Σ_d ((y_d − y'_d)/σ_d)²)`` (RBF, one bandwidth σ_d per variable) or
``exp(−Σ_d |y_d − y'_d|/σ_d)`` (Laplacian). The other view of the anchor always has weight
``K = 1``, the largest; as σ → 0 with distinct ``y`` the loss becomes NT-Xent exactly.

Two remarks for anyone comparing with the authors' code (github.com/Duplums/yAwareContrastiveLearning,
``GeneralizedSupervisedNTXenLoss``): it computes ``weights /= weights.sum(axis=1)``, which numpy
broadcasts over *columns* (``w_kj / Σ_t w_jt``) rather than normalising each anchor's row as the
paper's equation does; and it scales the sum over the ``2N`` anchors by ``1/N``. Here each row is
normalised as in the paper and the loss is the mean over anchors (half the authors' scale), so that
NT-Xent and y-aware values are directly comparable.

``groups`` (conditional contrastive learning, Tsai et al., ICML 2021): when given, the contrast set
of an anchor holds only views whose group (e.g. acquisition site) equals the anchor's. Negatives
then never differ from the anchor by site, so telling sites apart earns nothing: the loss is the
average of the per-site losses, weighted by the number of anchors in each site.

Data parallel: with a process group (:mod:`sobre.learn._engine`), each process embeds its block of
the batch and :func:`gather_rows` puts the blocks of every process together, in rank order, with
gradients flowing back to the process that computed each row. The loss then sees the negatives of
the whole global batch and equals the single-process loss on that batch (every process computes
the same value; gradients summed by the gather and averaged by DistributedDataParallel give the
single-process gradient).

Precision: the similarities, their log-softmax and the kernel weights are always computed in fp32
(the kernel in fp64), also inside a bf16 ``torch.autocast`` region, whose matrix products would
otherwise round the logits to bf16 (8 bits of mantissa: at τ = 0.1 a logit of 10 moves by up to
0.03) — precision must never change results silently. Embeddings of a bf16 forward pass are
upcast first.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

__all__ = ["nt_xent", "y_aware_infonce", "kernel_matrix", "GradientReversal", "fp32", "gather_rows"]


def fp32(*tensors: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context in which autocast is off on the devices of ``tensors`` (losses run in full precision).

    >>> with torch.autocast("cpu", dtype=torch.bfloat16), fp32(torch.ones(1)):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.float32
    """
    stack = contextlib.ExitStack()
    for kind in sorted({t.device.type for t in tensors} or {"cpu"}):
        stack.enter_context(torch.autocast(device_type=kind, enabled=False))
    return stack


def gather_rows(z: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """The rows of ``z`` of every process of the group, concatenated in rank order, differentiably.

    ``z`` is this process's block ``(n_rank, D)``; blocks may differ in length (``sizes``: the length
    of each process's block when known, else exchanged). Without a process group, ``z`` itself.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    import warnings

    from torch.distributed.nn.functional import all_gather  # differentiable, gloo included, torch 2.3 onwards

    if sizes is None:
        n = torch.tensor([z.shape[0]], device=z.device)
        got = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
        dist.all_gather(got, n)
        sizes = [int(t) for t in got]
    top = max(sizes)
    pad = torch.cat([z, z.new_zeros((top - z.shape[0], *z.shape[1:]))]) if z.shape[0] < top else z
    with warnings.catch_warnings():  # torch 2.13 suggests its private _functional_collectives instead
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(pad)  # gradients flow back to each block's process (summed over processes)
    return torch.cat([p[:k] for p, k in zip(parts, sizes)])


def _scores(z1: torch.Tensor, z2: torch.Tensor, temperature: float, groups: torch.Tensor | None):
    """``(log p, allowed)``: log-softmax of the fp32 similarity logits over each anchor's contrast set."""
    with fp32(z1, z2):
        return _scores_fp32(z1, z2, temperature, groups)


def _scores_fp32(z1, z2, temperature, groups):
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], 0).float(), dim=1)
    s = z @ z.T / temperature
    allowed = ~torch.eye(2 * n, dtype=torch.bool, device=z.device)
    if groups is not None:
        g = torch.as_tensor(groups, device=z.device).reshape(-1)
        if g.shape[0] != n:
            raise ValueError(f"groups must hold one value per subject ({n}), got {g.shape[0]}")
        g2 = torch.cat([g, g])
        allowed &= g2[:, None] == g2[None, :]
    log_p = s - torch.logsumexp(s.masked_fill(~allowed, float("-inf")), dim=1, keepdim=True)
    return log_p, allowed


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1,
            groups: torch.Tensor | None = None) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy.

    Parameters
    ----------
    z1, z2 : Tensor, shape (N, D)
        Embeddings of the two views of the same ``N`` subjects (not necessarily normalised).
    temperature : float
    groups : Tensor, shape (N,), optional
        Nuisance group of each subject (e.g. site codes): contrast within the anchor's group only.

    Returns
    -------
    Tensor
        Scalar: mean over the ``2N`` anchors.

    Examples
    --------
    >>> z = torch.eye(2)
    >>> round(float(nt_xent(z, z, temperature=1.0)), 5)   # log(2 + e) - 1
    0.55144
    """
    n = z1.shape[0]
    log_p, _ = _scores(z1, z2, temperature, groups)
    idx = torch.arange(2 * n, device=log_p.device)
    partner = (idx + n) % (2 * n)
    with fp32(log_p):
        return -log_p[idx, partner].mean()


def kernel_matrix(y: torch.Tensor, bandwidth, kernel: str = "rbf") -> torch.Tensor:
    """``K(y_i, y_j)`` for every pair; ``y`` is ``(N,)`` or ``(N, V)``, ``bandwidth`` a float or ``V`` floats.

    Examples
    --------
    >>> K = kernel_matrix(torch.tensor([0.0, 1.0]), 1.0)
    >>> round(float(K[0, 1]), 5)   # exp(-1/2)
    0.60653
    """
    y = torch.as_tensor(y, dtype=torch.float64)
    if y.ndim == 1:
        y = y[:, None]
    bw = torch.as_tensor(bandwidth, dtype=torch.float64, device=y.device).reshape(-1)
    if bw.numel() == 1:
        bw = bw.expand(y.shape[1])
    if bw.numel() != y.shape[1]:
        raise ValueError(f"need one bandwidth per variable ({y.shape[1]}), got {bw.numel()}")
    if torch.any(bw <= 0):
        raise ValueError("bandwidths must be > 0")
    d = (y[:, None, :] - y[None, :, :]) / bw
    if kernel == "rbf":
        return torch.exp(-0.5 * (d ** 2).sum(-1))
    if kernel == "laplacian":
        return torch.exp(-d.abs().sum(-1))
    raise ValueError(f"unknown kernel {kernel!r} (rbf or laplacian)")


def y_aware_infonce(z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, bandwidth, temperature: float = 0.1,
                    kernel: str = "rbf", groups: torch.Tensor | None = None) -> torch.Tensor:
    """y-aware InfoNCE (Dufumier et al., MICCAI 2021): positives weighted by a kernel on metadata ``y``.

    Parameters
    ----------
    z1, z2 : Tensor, shape (N, D)
        Embeddings of the two views of the same ``N`` subjects.
    y : Tensor, shape (N,) or (N, V)
        Continuous metadata of each subject (e.g. age in years; several variables as columns).
    bandwidth : float or sequence of V floats
        Kernel bandwidth σ per variable, in the variable's units.
    temperature : float
    kernel : {"rbf", "laplacian"}
    groups : Tensor, shape (N,), optional
        Nuisance group of each subject: contrast within the anchor's group only.

    Returns
    -------
    Tensor
        Scalar: mean over the ``2N`` anchors of ``−Σ_j w_kj log p_kj``.

    Examples
    --------
    >>> z = torch.eye(2)
    >>> round(float(y_aware_infonce(z, z, torch.tensor([0.0, 1.0]), 1.0, temperature=1.0)), 4)
    1.0996
    """
    n = z1.shape[0]
    y = torch.as_tensor(y, device=z1.device)
    if y.shape[0] != n:
        raise ValueError(f"y must hold one row per subject ({n}), got {y.shape[0]}")
    log_p, allowed = _scores(z1, z2, temperature, groups)
    with fp32(log_p):
        y2 = torch.cat([y, y], 0)
        w = kernel_matrix(y2, bandwidth, kernel).to(log_p.dtype) * allowed
        w = w / w.sum(1, keepdim=True)
        terms = torch.where(allowed, w * log_p, torch.zeros_like(log_p))
        return -terms.sum(1).mean()


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class GradientReversal(torch.nn.Module):
    """Identity forward, gradient multiplied by ``-scale`` backward (Ganin & Lempitsky, 2015).

    Placed between an encoder and a nuisance classifier (e.g. site), the classifier learns to
    predict the nuisance while the encoder learns to remove it.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Reverse.apply(x, self.scale)
