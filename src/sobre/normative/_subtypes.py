"""Subtype discovery: cluster patients by their deviation profiles, choose k by stability, test the clusters.

1. **Features**: each patient's normative z-scores (regions or voxels), or learned features (then
   standardised with the discovery set's own statistics; better, z-scored against a normative model
   fitted on controls' features, which also removes site effects). ``metric="cosine"`` scales each
   profile to unit length, so that clusters follow the *pattern* of deviations rather than severity;
   PCA keeps the components explaining ``components`` of the variance.
2. **k by stability** (consensus clustering, Monti et al. 2003): for each k, ``resamples`` subsamples
   of ``fraction`` of the patients are clustered with k-means; stability is the mean adjusted Rand
   index between pairs of subsample clusterings on the patients they share (Lange et al. 2004), and
   the consensus matrix gives the proportion of ambiguous clustering (PAC, Senbabaoglu et al. 2014).
   The same is done on a one-cluster Gaussian null with the data's covariance: a k is retained only
   where its stability beats the null's (otherwise: no stable subtypes, ``k = 1``).
3. **Association with metadata**: chi-square and Cramér's V for categories (site, sex), Kruskal-Wallis
   and epsilon-squared for numbers (age). Clusters that **merely recover sites** (V with site above
   ``site_flag_v``, or a cluster drawn at 80 % or more from one site holding under half the patients)
   are flagged: they are a scanner, not a disease subtype.

Only the discovery patients reach the clustering that selects k; :meth:`SubtypeModel.assign` places
held-out patients on the nearest centroid without refitting anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from sobre.base import Progress, no_progress
from sobre.errors import InputError
from sobre.normative._config import SubtypeConfig

__all__ = ["SubtypeModel", "adjusted_rand_index", "discover_subtypes", "kmeans", "metadata_association"]


# --------------------------------------------------------------------------- primitives
def adjusted_rand_index(a, b) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie 1985); 1 = identical partitions, ~0 = chance.

    >>> adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError("labelings of different lengths")
    n = a.size
    if n < 2:
        return 1.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def comb2(x):
        return x * (x - 1) / 2.0

    sum_ij = comb2(table).sum()
    sum_a = comb2(table.sum(1)).sum()
    sum_b = comb2(table.sum(0)).sum()
    expected = sum_a * sum_b / comb2(n)
    top = (sum_a + sum_b) / 2.0
    if top == expected:
        return 1.0
    return float((sum_ij - expected) / (top - expected))


def kmeans(x: np.ndarray, k: int, *, n_init: int = 10, seed: int = 0, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """k-means (k-means++ starts, Lloyd iterations); the best of ``n_init`` runs. Returns (labels, centroids)."""
    x = np.asarray(x, float)
    n = len(x)
    if k > n:
        raise ValueError(f"cannot make {k} clusters of {n} points")
    rng = np.random.default_rng(seed)
    best = (np.inf, None, None)
    sq = (x ** 2).sum(1)
    for _ in range(n_init):
        c = np.empty((k, x.shape[1]))
        c[0] = x[rng.integers(n)]
        d2 = ((x - c[0]) ** 2).sum(1)
        for j in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
            c[j] = x[rng.choice(n, p=p)]
            d2 = np.minimum(d2, ((x - c[j]) ** 2).sum(1))
        lab = None
        for _it in range(max_iter):
            dist = sq[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None, :]
            new = np.argmin(dist, axis=1)
            if lab is not None and np.array_equal(new, lab):
                break
            lab = new
            for j in range(k):
                members = x[lab == j]
                c[j] = members.mean(0) if len(members) else x[rng.integers(n)]
        inertia = float(np.sum((x - c[lab]) ** 2))
        if inertia < best[0]:
            best = (inertia, lab.copy(), c.copy())
    # a canonical order: clusters by size (largest first), then by first member
    lab, c = best[1], best[2]
    sizes = np.bincount(lab, minlength=k)
    first = np.array([np.flatnonzero(lab == j)[0] if sizes[j] else n for j in range(k)])
    order = np.lexsort((first, -sizes))
    remap = np.empty(k, int)
    remap[order] = np.arange(k)
    return remap[lab], c[order]


# --------------------------------------------------------------------------- feature space
@dataclass
class _Space:
    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray  # (q, d)
    cosine: bool
    standardise: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, float)
        if self.standardise:
            x = (x - self.mean) / self.scale
        if self.cosine:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        y = x @ self.components.T
        return y


def _space(x: np.ndarray, cfg: SubtypeConfig, standardise: bool) -> _Space:
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale == 0] = 1.0
    tmp = _Space(mean, scale, np.eye(x.shape[1]), cfg.metric == "cosine", standardise)
    y = tmp(x)
    centred = y - y.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    if cfg.components >= 1:
        q = min(cfg.max_components, vt.shape[0])
    else:
        share = np.cumsum(s ** 2) / max(np.sum(s ** 2), 1e-300)
        q = int(min(np.searchsorted(share, cfg.components) + 1, cfg.max_components, vt.shape[0]))
    return _Space(mean, scale, vt[:q], cfg.metric == "cosine", standardise)


# --------------------------------------------------------------------------- stability
def _stability(y: np.ndarray, k: int, cfg: SubtypeConfig, rng: np.random.Generator, resamples: int) -> dict:
    n = len(y)
    m = max(k + 1, int(round(cfg.fraction * n)))
    labels = []
    together = np.zeros((n, n))
    sampled = np.zeros((n, n))
    for _ in range(resamples):
        idx = np.sort(rng.choice(n, m, replace=False))
        lab, _ = kmeans(y[idx], k, n_init=max(1, cfg.n_init // 2), seed=int(rng.integers(2**31)))
        full = np.full(n, -1)
        full[idx] = lab
        labels.append(full)
        same = lab[:, None] == lab[None, :]
        together[np.ix_(idx, idx)] += same
        sampled[np.ix_(idx, idx)] += 1
    aris = []
    for i in range(len(labels)):
        for j in range(i + 1, min(len(labels), i + 11)):  # each with its next 10: O(B) pairs
            both = (labels[i] >= 0) & (labels[j] >= 0)
            aris.append(adjusted_rand_index(labels[i][both], labels[j][both]))
    with np.errstate(invalid="ignore", divide="ignore"):
        cons = together / sampled
    iu = np.triu_indices(n, 1)
    c = cons[iu]
    c = c[np.isfinite(c)]
    pac = float(np.mean((c > 0.1) & (c < 0.9))) if c.size else float("nan")
    return {"stability": float(np.mean(aris)), "stability_sd": float(np.std(aris)), "pac": pac}


# --------------------------------------------------------------------------- association
def metadata_association(clusters: np.ndarray, metadata: dict[str, np.ndarray]) -> dict:
    """Per variable: test, statistic, p, effect size (Cramér's V or epsilon-squared) and per-cluster summary."""
    clusters = np.asarray(clusters)
    ks = np.unique(clusters)
    out = {}
    for name, values in metadata.items():
        v = np.asarray(values)
        numeric = v.dtype.kind in "fiu"
        if numeric:
            v = v.astype(float)
            ok = np.isfinite(v)
            groups = [v[ok & (clusters == k)] for k in ks]
            groups = [g for g in groups if len(g)]
            if len(groups) < 2:
                continue
            h, p = stats.kruskal(*groups)
            n = int(ok.sum())
            eps2 = float((h - len(groups) + 1) / max(n - len(groups), 1))
            out[name] = {"test": "kruskal-wallis", "statistic": float(h), "p": float(p), "effect": "epsilon2",
                         "effect_size": eps2,
                         "per_cluster": {str(k): float(np.mean(v[ok & (clusters == k)])) for k in ks}}
        else:
            v = v.astype(str)
            ok = (v != "") & (v != "None")
            cats = np.unique(v[ok])
            if len(cats) < 2:
                continue
            table = np.array([[np.sum(ok & (clusters == k) & (v == c)) for c in cats] for k in ks], float)
            table = table[table.sum(1) > 0]
            chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
            n = table.sum()
            cv = float(np.sqrt(chi2 / (n * max(min(table.shape) - 1, 1))))
            out[name] = {"test": "chi-square", "statistic": float(chi2), "p": float(p), "effect": "cramers_v",
                         "effect_size": cv,
                         "per_cluster": {str(k): {str(c): int(np.sum(ok & (clusters == k) & (v == c))) for c in cats}
                                         for k in ks}}
    return out


def _site_flags(clusters: np.ndarray, site: np.ndarray, assoc: dict, cfg: SubtypeConfig) -> tuple[bool, dict]:
    site = np.asarray(site).astype(str)
    flags = {}
    share_all = {s: float(np.mean(site == s)) for s in np.unique(site)}
    for k in np.unique(clusters):
        members = site[clusters == k]
        if not len(members):
            continue
        vals, counts = np.unique(members, return_counts=True)
        top = int(np.argmax(counts))
        frac = counts[top] / len(members)
        if frac >= 0.8 and share_all[vals[top]] < 0.5 and len(members) >= 5:
            flags[str(k)] = f"{100 * frac:.0f} % of this cluster comes from site {vals[top]} " \
                            f"({100 * share_all[vals[top]]:.0f} % of the patients)"
    a = assoc.get("site")
    overall = bool(a is not None and a["effect_size"] >= cfg.site_flag_v and a["p"] < 0.01)
    return overall, flags


# --------------------------------------------------------------------------- discovery
@dataclass
class SubtypeModel:
    """The result of :func:`discover_subtypes`: the chosen k, its stability, the clusters, their meaning.

    Attributes
    ----------
    k : number of clusters chosen (1: no stable structure beyond the null).
    labels : (n,) cluster of each discovery patient (0 = largest cluster).
    per_k : for each k tried, ``stability`` (mean ARI between subsample clusterings) and its SD,
        ``pac``, and with a null ``null_stability`` and ``null_pac``.
    association : :func:`metadata_association` of the clusters with the metadata given.
    recovers_site : the clusters as a whole follow the sites (Cramér's V >= ``site_flag_v``, p < 0.01).
    site_flags : clusters drawn mostly from one minority site, with the reason.
    """

    config: SubtypeConfig
    k: int
    labels: np.ndarray
    centroids: np.ndarray
    per_k: dict
    association: dict
    recovers_site: bool
    site_flags: dict
    n_features: int
    space: _Space = field(repr=False)
    subjects: list[str] = field(default_factory=list)

    def assign(self, features: np.ndarray) -> np.ndarray:
        """Clusters of new patients (nearest centroid in the discovery space); nothing is refitted."""
        x = np.asarray(features, float)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise InputError("features of new patients do not match the subtype model",
                             expected=f"(n, {self.n_features})", found=str(x.shape))
        if self.k == 1:
            return np.zeros(len(x), int)
        y = self.space(x)
        d = ((y[:, None, :] - self.centroids[None, :, :]) ** 2).sum(-1)
        return np.argmin(d, axis=1)

    def to_dict(self) -> dict:
        return {"k": self.k, "per_k": self.per_k, "sizes": np.bincount(self.labels, minlength=self.k).tolist(),
                "association": self.association, "recovers_site": self.recovers_site, "site_flags": self.site_flags,
                "config": self.config.model_dump(mode="json"), "n_features": self.n_features,
                "components": int(self.space.components.shape[0])}


def discover_subtypes(features: np.ndarray, *, config: SubtypeConfig | dict | None = None,
                      metadata: dict[str, np.ndarray] | None = None, site_key: str = "site",
                      standardise: bool = False, subjects: list[str] | None = None,
                      progress: Progress = no_progress) -> SubtypeModel:
    """Cluster patients (rows of ``features``) and choose the number of clusters by stability.

    Parameters
    ----------
    features : (n, d) normative z-scores of the patients (``standardise=False``) or learned features
        (``standardise=True``: centred and scaled with these patients' statistics).
    metadata : per-patient arrays (``site``, ``sex``, ``age``...) tested against the clusters.
    """
    cfg = config if isinstance(config, SubtypeConfig) else SubtypeConfig.model_validate(config or {})
    x = np.asarray(features, float)
    if x.ndim != 2 or len(x) < max(10, 2 * cfg.k_max):
        raise InputError("too few patients for subtype discovery", expected=f"at least {max(10, 2 * cfg.k_max)} "
                         f"rows (k_max = {cfg.k_max})", found=str(x.shape))
    if not np.all(np.isfinite(x)):
        bad = int((~np.all(np.isfinite(x), axis=1)).sum())
        raise InputError(f"{bad} patient(s) have missing features (NaN)", expected="finite features",
                         fix="leave out unscorable or flagged patients first")
    space = _space(x, cfg, standardise)
    y = space(x)
    rng = np.random.default_rng(cfg.seed)
    per_k = {}
    ks = list(range(cfg.k_min, cfg.k_max + 1))
    null = None
    if cfg.null_resamples:
        cov = np.cov(y, rowvar=False).reshape(y.shape[1], y.shape[1])
        null = np.random.default_rng(cfg.seed + 1).multivariate_normal(y.mean(0), cov, size=len(y))
    total = len(ks) * (2 if null is not None else 1)
    step = 0
    for k in ks:
        per_k[k] = _stability(y, k, cfg, rng, cfg.resamples)
        step += 1
        progress("stability", step, total)
        if null is not None:
            nl = _stability(null, k, cfg, rng, cfg.null_resamples)
            per_k[k]["null_stability"] = nl["stability"]
            per_k[k]["null_pac"] = nl["pac"]
            step += 1
            progress("stability", step, total)

    def score(k):
        r = per_k[k]
        if cfg.criterion == "pac":
            return -(r["pac"] - r.get("null_pac", 0.0)) if null is not None else -r["pac"]
        return r["stability"] - (r.get("null_stability", 0.0) if null is not None else 0.0)

    best = max(ks, key=score)
    k = best
    if null is not None:
        r = per_k[best]
        beats = r["stability"] - 2 * r["stability_sd"] / np.sqrt(max(cfg.resamples, 1)) > r["null_stability"]
        if not beats:
            k = 1
    if k == 1:
        labels = np.zeros(len(x), int)
        centroids = y.mean(0, keepdims=True)
    else:
        labels, centroids = kmeans(y, k, n_init=cfg.n_init, seed=cfg.seed)
    meta = metadata or {}
    assoc = metadata_association(labels, meta) if k > 1 else {}
    recovers, flags = _site_flags(labels, meta[site_key], assoc, cfg) if (k > 1 and site_key in meta) else (False, {})
    return SubtypeModel(config=cfg, k=k, labels=labels, centroids=centroids,
                        per_k={str(kk): v for kk, v in per_k.items()}, association=assoc, recovers_site=recovers,
                        site_flags=flags, n_features=x.shape[1], space=space, subjects=list(subjects or []))
