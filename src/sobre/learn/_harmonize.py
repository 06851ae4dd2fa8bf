"""Site removal on learned features, fitted on training rows only: ComBat and linear erasure (LEACE).

ComBat (Johnson et al. 2007; neuroHarmonize, Pomponio et al. 2020) removes additive and
multiplicative site effects per feature while keeping the effects of covariates (e.g. age).
:func:`combat_train_test` fits it on the *training* rows (their features, sites and covariates)
and only *applies* it to the rows it scores: nothing of a scored row reaches the fit. The
label is never a covariate (the scored subjects' labels are unknown when it is applied).

:func:`leace_fit` (Belrose et al., NeurIPS 2023, "LEACE: perfect linear concept erasure in closed
form") finds the smallest (least-squares, in the whitened space) affine change of the features after
which every site has the same feature mean, so that no linear classifier does better than chance on
the rows it was fitted on. It needs no site at inference (a fixed affine map, :class:`ErasedEncoder`),
unlike ComBat. It removes only what is linear: a non-linear probe may still find the site.

``sobre.validate`` wraps the same library for its cross-validated site analysis; the layers keep
the two packages apart (``learn`` and ``validate`` do not import each other), so each holds its
few lines of wrapper.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pandas as pd
import torch

from sobre.errors import InputError

__all__ = ["combat_fit", "combat_apply", "combat_train_test", "CombatModel", "leace_fit", "Eraser", "ErasedEncoder"]


class CombatModel:
    """A fitted ComBat model: neuroHarmonize's parameters plus the features it left alone.

    ``kept`` marks features with variance in every training site (ComBat's standardisation
    divides by it); the others (e.g. a channel that is zero for every subject) pass through as
    they are.
    """

    def __init__(self, model: dict | None, kept: np.ndarray, sites: list[str], covariates: list[str]) -> None:
        self.model, self.kept, self.sites, self.covariates = model, kept, sites, covariates


def _frame(site: np.ndarray, cov: np.ndarray | None, names: list[str]) -> pd.DataFrame:
    df = pd.DataFrame({"SITE": np.asarray(site).astype(str)})
    if cov is not None:
        cov = np.asarray(cov, dtype=float).reshape(len(df), -1)
        for i, n in enumerate(names):
            df[n] = cov[:, i]
    return df


def combat_fit(x: np.ndarray, site: np.ndarray, covariates: np.ndarray | None = None,
               names: list[str] | None = None) -> CombatModel:
    """Fit ComBat (empirical Bayes) on features ``x`` (n, d) of the given rows only.

    Parameters
    ----------
    x : array (n, d)
    site : array (n,)
        Every site needs at least two rows.
    covariates : array (n, c), optional
        Numeric effects to keep (e.g. age).
    names : list of str
        The covariates' names (for messages and the record).
    """
    try:
        from neuroHarmonize import harmonizationLearn
    except ImportError as exc:  # pragma: no cover - an install without the validate extra
        raise InputError("ComBat needs the neuroHarmonize package", expected="neuroHarmonize installed",
                         found="not installed", fix="pip install \"sobre[validate]\"") from exc
    x = np.asarray(x, dtype=float)
    site = np.asarray(site).astype(str)
    names = list(names or [f"covariate{i}" for i in range(0 if covariates is None else
                                                               np.asarray(covariates).reshape(len(x), -1).shape[1])])
    sites, counts = np.unique(site, return_counts=True)
    if len(sites) < 2 or counts.min() < 2:
        raise InputError("ComBat needs at least two sites with two or more training subjects each",
                         expected="two or more subjects per site, two or more sites",
                         found=", ".join(f"{s}: {c}" for s, c in zip(sites, counts)),
                         fix="use more labelled subjects (a larger N) or leave out the ComBat arm")
    if covariates is not None and not np.isfinite(np.asarray(covariates, dtype=float)).all():
        raise InputError(f"ComBat covariate(s) {', '.join(names)} have missing values", expected="numbers",
                         found="missing values", fix="filter those subjects out with data.where")
    kept = np.ones(x.shape[1], bool)
    for s in sites:
        kept &= x[site == s].std(0) > 1e-12
    model = None
    if kept.any():
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _ = harmonizationLearn(x[:, kept], _frame(site, covariates, names))
    return CombatModel(model, kept, [str(s) for s in sites], names)


def combat_apply(x: np.ndarray, site: np.ndarray, model: CombatModel,
                 covariates: np.ndarray | None = None) -> np.ndarray:
    """Apply a fitted ComBat model to rows (their sites must be among the model's)."""
    from neuroHarmonize import harmonizationApply

    x = np.asarray(x, dtype=float)
    site = np.asarray(site).astype(str)
    unseen = sorted(set(site) - set(model.sites))
    if unseen:
        raise InputError(f"ComBat cannot harmonise site(s) {', '.join(unseen)}: absent from its fit",
                         expected="sites among " + ", ".join(model.sites), found=", ".join(unseen),
                         fix="fit ComBat on training subjects of every site it is applied to")
    out = x.copy()
    if model.model is None or not len(x):
        return out
    # neuroHarmonize builds its design from the sites present in the rows it is given: rows lacking one of
    # the model's sites would misalign the columns. One placeholder row per site (dropped after) keeps every
    # site present; each row is harmonised with the model's parameters alone, so they change no other row.
    k = len(model.sites)
    xs = np.r_[x[:, model.kept], np.zeros((k, int(model.kept.sum())))]
    ss = np.r_[site, np.array(model.sites)]
    cs = None
    if covariates is not None:
        cov = np.asarray(covariates, dtype=float).reshape(len(x), -1)
        cs = np.r_[cov, np.zeros((k, cov.shape[1]))]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out[:, model.kept] = harmonizationApply(xs, _frame(ss, cs, model.covariates), model.model)[:len(x)]
    return out


def combat_train_test(x: np.ndarray, site: np.ndarray, covariates: np.ndarray | None, fit_rows: np.ndarray,
                      apply_rows: np.ndarray, names: list[str] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, CombatModel]:
    """ComBat fitted on ``x[fit_rows]`` only; returns (harmonised fit rows, harmonised apply rows, model)."""
    cov = None if covariates is None else np.asarray(covariates, dtype=float).reshape(len(x), -1)
    fit_rows, apply_rows = np.asarray(fit_rows), np.asarray(apply_rows)
    model = combat_fit(x[fit_rows], site[fit_rows], None if cov is None else cov[fit_rows], names)
    h_fit = combat_apply(x[fit_rows], site[fit_rows], model, None if cov is None else cov[fit_rows])
    h_apply = combat_apply(x[apply_rows], site[apply_rows], model, None if cov is None else cov[apply_rows])
    return h_fit, h_apply, model


# ------------------------------------------------------------------------------------------ LEACE
class Eraser:
    """``x -> x - (x - mean) @ M.T``: the LEACE map fitted by :func:`leace_fit` (``rank`` directions)."""

    def __init__(self, mean: np.ndarray, M: np.ndarray, rank: int) -> None:
        self.mean, self.M, self.rank = mean, M, rank

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return x - (x - self.mean) @ self.M.T


def leace_fit(x: np.ndarray, groups: np.ndarray, *, tol: float = 1e-8) -> Eraser:
    """LEACE for a categorical concept (e.g. site) on features ``x`` (n, d), fitted on these rows only.

    With ``W = (Σ_xx^{1/2})^+`` (whitening) and ``P`` the orthogonal projection onto the column
    space of ``W Σ_xz`` (``z`` the one-hot groups), the eraser is
    ``r(x) = x − W^+ P W (x − μ)``: afterwards every group has the same mean feature vector
    (within rounding) on the fitted rows.
    """
    x = np.asarray(x, dtype=float)
    g = np.asarray(groups).astype(str)
    levels = np.unique(g)
    if len(levels) < 2:
        raise InputError("linear site erasure needs at least two sites", expected="two or more sites",
                         found=", ".join(levels), fix="use a cohort from several sites")
    mu = x.mean(0)
    xc = x - mu
    z = (g[:, None] == levels[None, :]).astype(float)
    zc = z - z.mean(0)
    cov = xc.T @ xc / len(x)
    lam, V = np.linalg.eigh(cov)
    keep = lam > tol * max(lam.max(), 1e-300)
    W = (V[:, keep] / np.sqrt(lam[keep])) @ V[:, keep].T
    W_pinv = (V[:, keep] * np.sqrt(lam[keep])) @ V[:, keep].T
    A = W @ (xc.T @ zc / len(x))
    U, sv, _ = np.linalg.svd(A, full_matrices=False)
    r = int((sv > tol * max(sv.max(), 1e-300)).sum()) if len(sv) else 0
    U = U[:, :r]
    M = W_pinv @ (U @ U.T) @ W
    return Eraser(mu, M, r)


class ErasedEncoder(torch.nn.Module):
    """An encoder followed by a fixed LEACE map: the features of a site-erased representation."""

    def __init__(self, encoder: torch.nn.Module, eraser: Eraser) -> None:
        super().__init__()
        self.encoder = encoder
        self.out_features = getattr(encoder, "out_features", eraser.M.shape[0])
        self.register_buffer("mean", torch.as_tensor(eraser.mean, dtype=torch.float32))
        self.register_buffer("M", torch.as_tensor(eraser.M, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x).float()
        return h - (h - self.mean) @ self.M.T
