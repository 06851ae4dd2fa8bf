"""Transfer: frozen features + scikit-learn probes, and the classical atlas-ROI baseline.

* :func:`extract_features` runs a (pretrained) encoder over a cohort, no gradients.
* :func:`fit_probe` fits a linear model on standardised features: L2 logistic regression
  (binary, multi-class) with the regularisation chosen by inner stratified cross-validation on the
  training subjects only, or ridge regression with leave-one-out choice of the penalty. The
  test subjects never enter the choice. ``C=`` / ``alpha=`` fit with a given penalty instead (``sobre
  probe``'s out-of-fold predictions use the penalty chosen for its final probe). When the features
  carry little signal the choice goes to the strongest penalty (C = 1e-4), whose probabilities all
  sit near 0.5: a ranking, not a calibrated probability.
* :func:`roi_features` computes the classical features: per atlas region (or per block of a
  regular grid), the mean intensity and the tissue volume (voxels above a threshold × voxel
  volume); :func:`fit_probe` then plays the part of the logistic / ridge regression.
"""

from __future__ import annotations

import numpy as np
import torch

from sobre.base import Progress
from sobre.errors import InputError
from sobre.learn import _engine as E
from sobre.learn._config import BaselineConfig, PreprocessConfig

__all__ = ["extract_features", "fit_probe", "Probe", "roi_features", "atlas_on_grid", "grid_atlas"]


def extract_features(encoder: torch.nn.Module, images, rows=None, *, batch_size: int = 16, bf16: bool = False,
                     channels_last: bool = True, progress: Progress | None = None) -> tuple[np.ndarray, float]:
    """Encoder features of ``images[rows]``: ``(array (n, D), samples/s)``; ``progress("features", done, n)``."""
    n = images.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows)
    out, sps = E.timed_inference(encoder, images, rows, batch_size=batch_size, bf16=bf16,
                                 channels_last=channels_last, progress=progress, desc="features")
    return out.numpy().astype(np.float64), sps


class Probe:
    """A fitted linear probe: standardisation + logistic or ridge regression."""

    def __init__(self, kind: str, model, scaler, info: dict) -> None:
        self.kind, self.model, self.scaler, self.info = kind, model, scaler, info

    def linear(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W (K, D), b (K,))`` acting on the raw features: ``logits (or value) = X @ W.T + b``.

        The standardisation is folded in: ``W = coef / sd``, ``b = intercept - sum(coef * mean / sd)``.
        """
        mu, sd = self.scaler.mean_, self.scaler.scale_
        coef = np.atleast_2d(self.model.coef_)
        icpt = np.atleast_1d(self.model.intercept_)
        return coef / sd, icpt - (coef * mu / sd).sum(1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        Z = self.scaler.transform(X)
        if self.kind == "regression":
            return self.model.predict(Z)
        p = self.model.predict_proba(Z)
        return p[:, 1] if self.kind == "binary" else p


def fit_probe(X: np.ndarray, y: np.ndarray, kind: str, *, seed: int = 0, max_folds: int = 5,
              C: float | None = None, alpha: float | None = None) -> Probe:
    """Fit a linear probe on training features only.

    Parameters
    ----------
    X : ndarray (n, D)
    y : ndarray (n,)
        Class indices (binary: 0/1) or values (regression).
    kind : {"binary", "multiclass", "regression"}
    C, alpha : float, optional
        Fit with this penalty (logistic ``C``, ridge ``alpha``): no inner cross-validation.

    Returns
    -------
    Probe
        ``predict(X)`` gives P(positive) (binary), class probabilities (multiclass) or values.
    """
    from threadpoolctl import threadpool_limits

    # small problems: one BLAS thread is many times faster than several competing for busy cores
    with threadpool_limits(limits=1):
        return _fit_probe(X, y, kind, seed=seed, max_folds=max_folds, C=C, alpha=alpha)


def _fit_probe(X, y, kind, *, seed, max_folds, C=None, alpha=None) -> Probe:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    if kind == "regression" and alpha is not None:
        m = Ridge(alpha=float(alpha)).fit(Z, y)
        return Probe(kind, m, scaler, {"alpha": float(alpha)})
    if kind == "regression":
        alphas = np.logspace(-2, 5, 22)
        m = RidgeCV(alphas=alphas).fit(Z, y)
        return Probe(kind, m, scaler, {"alpha": float(m.alpha_)})
    y = np.asarray(y).astype(int)
    counts = np.bincount(y)
    counts = counts[counts > 0]
    k = int(min(max_folds, counts.min()))
    Cs = np.logspace(-4, 1, 11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if C is not None:
            m = LogisticRegression(C=float(C), max_iter=5000).fit(Z, y)
            return Probe(kind, m, scaler, {"C": float(C), "inner_folds": 0})
        if k >= 2:
            cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            scoring = "roc_auc" if kind == "binary" else "neg_log_loss"
            m = LogisticRegressionCV(Cs=Cs, cv=cv, scoring=scoring, max_iter=5000, l1_ratios=(0.0,),
                                     use_legacy_attributes=False).fit(Z, y) \
                if _sklearn_has_new_lrcv() else \
                LogisticRegressionCV(Cs=Cs, cv=cv, scoring=scoring, max_iter=5000).fit(Z, y)
            C = float(np.ravel(m.C_)[0])
        else:
            C = 1.0
            m = LogisticRegression(C=C, max_iter=5000).fit(Z, y)
    return Probe(kind, m, scaler, {"C": C, "inner_folds": k})


def _sklearn_has_new_lrcv() -> bool:
    import inspect

    from sklearn.linear_model import LogisticRegressionCV

    return "use_legacy_attributes" in inspect.signature(LogisticRegressionCV.__init__).parameters


# ------------------------------------------------------------------------------------ classical
def grid_atlas(shape, grid) -> np.ndarray:
    """Labels 1..G of a regular grid of blocks over ``shape``."""
    idx = [np.minimum((np.arange(s) * g) // s, g - 1) for s, g in zip(shape, grid)]
    mesh = np.meshgrid(*idx, indexing="ij")
    lab = np.zeros(shape, np.int32)
    mult = 1
    for m, g in zip(reversed(mesh), reversed(list(grid))):
        lab += m * mult
        mult *= g
    return lab + 1


def atlas_on_grid(path, preprocess: PreprocessConfig, shape) -> np.ndarray:
    """Load a label image and bring it onto the preprocessed grid (nearest neighbour)."""
    import sobre
    from sobre.learn._data import preprocess_image

    img = sobre.load(path)
    lab, _ = preprocess_image(img, preprocess, mask=True)
    lab = lab[0]
    if tuple(lab.shape) != tuple(shape):
        raise InputError("the atlas does not land on the images' grid", path=path, expected=f"shape {tuple(shape)}",
                         found=f"shape {tuple(lab.shape)} after the same preprocessing",
                         fix="use an atlas in the images' space with the same field of view, or leave "
                             "baseline.atlas empty for a regular grid")
    return lab.astype(np.int32)


def roi_features(images, atlas: np.ndarray, cfg: BaselineConfig, voxel_volume: float = 1.0,
                 rows=None) -> tuple[np.ndarray, list[str]]:
    """Per-region mean intensity and tissue volume for every image.

    Parameters
    ----------
    images : array (N, C, *spatial)
        Preprocessed images (channel 0 is used).
    atlas : int array (*spatial)
        Region labels, 0 = background.
    cfg : BaselineConfig
        ``features`` (mean, volume), ``tissue_threshold``, ``min_voxels``.

    Returns
    -------
    features : ndarray (N, F)
    names : list of str
    """
    labels = [int(v) for v in np.unique(atlas) if v != 0 and (atlas == v).sum() >= cfg.min_voxels]
    if not labels:
        raise InputError("no atlas region is large enough on the preprocessed grid",
                         expected=f"regions of at least {cfg.min_voxels} voxels", found="none",
                         fix="lower baseline.min_voxels or use a coarser grid")
    flat = atlas.reshape(-1)
    onehot = np.zeros((len(labels), flat.size), np.float32)
    for i, v in enumerate(labels):
        onehot[i, flat == v] = 1.0
    sizes = onehot.sum(1)
    rows = np.arange(images.shape[0]) if rows is None else np.asarray(rows)
    feats = []
    for b in range(0, len(rows), 64):
        x = np.asarray(images[np.sort(rows[b:b + 64])], np.float32)[:, 0].reshape(len(rows[b:b + 64]), -1)
        order = np.argsort(np.argsort(rows[b:b + 64]))
        x = x[order]
        cols = []
        if "mean" in cfg.features:
            cols.append(x @ onehot.T / sizes)
        if "volume" in cfg.features:
            cols.append((x > cfg.tissue_threshold).astype(np.float32) @ onehot.T * voxel_volume)
        feats.append(np.concatenate(cols, 1))
    names = [f"{f}_roi{v}" for f in cfg.features for v in labels]
    return np.concatenate(feats, 0).astype(np.float64), names
