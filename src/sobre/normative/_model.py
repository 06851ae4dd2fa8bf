"""The normative model: location and scale of each measure given age and sex, with site as a batch effect.

Model (per measure ``m``; vectorised over thousands of measures)::

    y_i = f(age_i) + b * sex_i + mu_0 + a_site(i) + e_i,      e_i ~ N(0, s_site(i)^2 * g(age_i))

* ``f`` is a natural cubic spline of age (``age_df`` degrees of freedom, knots at quantiles of the
  normative sample, linear beyond its boundary knots), ``sex`` a 0/1 indicator.
* **Location, hierarchical in site**: site intercepts are random effects, ``a_s ~ N(0, tau^2)``. They
  are estimated jointly with the fixed effects (least squares with one column per site), then pooled
  by the DerSimonian-Laird moment estimator of ``tau^2`` and shrunk (BLUP): a small site borrows
  strength from the others, and a site never seen is scored with ``a = 0`` and ``tau^2`` added to its
  predictive variance.
* **Scale, hierarchical in site**: the sites' log residual variances are random effects too, pooled
  by empirical Bayes (moment estimate of their spread; the variance moderation of Smyth 2004 and the
  variance prior of ComBat, Johnson 2007), and optionally multiplied by a smooth function of age
  ``g`` (a location-scale model in the spirit of GAMLSS brain charts), fitted on the log squared
  standardised residuals.
* **Prediction**: the posterior predictive of a flat-prior Bayesian linear regression: variance
  ``s^2 g(age) (1 + h)`` with ``h`` the leverage of the new subject, Student t with the residual
  degrees of freedom, turned into a z-score through the t and normal distribution functions.

This is the structure of PCNtoolkit's hierarchical Bayesian regression (site effects on mean and
variance; Kia et al. 2020, 2021) and of lifespan brain charts (GAMLSS with site random effects;
Bethlehem et al. 2022), estimated by empirical Bayes in closed form rather than by MCMC, so that
40,000 voxels fit in seconds on a CPU. Covariates outside the fitted range are *flagged per subject*
(the spline's linear tails are an extrapolation), never silently scored as if inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

__all__ = ["NormativeParams", "Predictions", "expected_extremes", "fit_arrays", "natural_spline", "nominal_rate",
           "predict_arrays", "t_to_z"]


# --------------------------------------------------------------------------- basis
def natural_spline(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Natural cubic spline basis without the intercept: ``len(knots) - 1`` columns (Hastie et al. 2009, 5.2.1).

    ``knots`` include the two boundary knots; the basis is linear beyond them. ``x`` is scaled by the
    boundary knots first (numerically steady).

    >>> natural_spline(np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.5, 1.0])).shape
    (3, 2)
    """
    k = np.asarray(knots, float)
    lo, hi = k[0], k[-1]
    span = hi - lo if hi > lo else 1.0
    u = (np.asarray(x, float) - lo) / span
    ku = (k - lo) / span
    cols = [u]
    last = ku[-1]

    def d(j):
        return (np.clip(u - ku[j], 0, None) ** 3 - np.clip(u - last, 0, None) ** 3) / (last - ku[j])

    dk1 = d(len(ku) - 2)
    for j in range(len(ku) - 2):
        cols.append(d(j) - dk1)
    return np.stack(cols, axis=1)


def t_to_z(t: np.ndarray, df: float) -> np.ndarray:
    """z with the same tail probability as Student's ``t`` with ``df`` degrees of freedom (both tails)."""
    t = np.asarray(t, float)
    if not np.isfinite(df) or df > 1e6:
        return t
    z = -stats.norm.ppf(stats.t.sf(np.abs(t), df))
    return np.sign(t) * z


# --------------------------------------------------------------------------- parameters
@dataclass
class NormativeParams:
    """Fitted parameters (arrays over ``M`` measures); saved in a normative model artefact.

    Attributes
    ----------
    knots : (K,) age knots (boundaries included); ``age_range`` the ages seen, ``sex_levels`` the
        sexes seen (the first is the reference), ``sites`` the sites seen.
    beta : (P, M) fixed effects (spline columns, then sex).
    site_raw : (S, M) least-squares site intercepts; ``mu0`` (M,) their pooled mean; ``site_offset``
        (S, M) the shrunk offsets; ``tau2`` (M,) between-site variance of the intercepts.
    sigma2_site : (S, M) moderated residual variances; ``scale_coef`` (Q, M) the log-variance age
        model (zeros when ``scale`` is ``"site"``); ``gram_inv`` (S+P, S+P) for leverages.
    df_resid : residual degrees of freedom; ``n_site`` (S,) subjects per site.
    """

    knots: np.ndarray
    age_range: tuple[float, float]
    sex_levels: list[str]
    sites: list[str]
    beta: np.ndarray
    site_raw: np.ndarray
    mu0: np.ndarray
    site_offset: np.ndarray
    tau2: np.ndarray
    sigma2_site: np.ndarray
    scale_knots: np.ndarray
    scale_coef: np.ndarray
    gram_inv: np.ndarray
    df_resid: float
    n_site: np.ndarray
    residual_skew: np.ndarray = field(default_factory=lambda: np.zeros(0))
    residual_kurtosis: np.ndarray = field(default_factory=lambda: np.zeros(0))

    ARRAYS = ("knots", "beta", "site_raw", "mu0", "site_offset", "tau2", "sigma2_site", "scale_knots", "scale_coef",
              "gram_inv", "n_site", "residual_skew", "residual_kurtosis")

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k)) for k in self.ARRAYS}

    def meta(self) -> dict:
        return {"age_range": list(self.age_range), "sex_levels": list(self.sex_levels), "sites": list(self.sites),
                "df_resid": float(self.df_resid)}

    @classmethod
    def from_saved(cls, arrays: dict, meta: dict) -> NormativeParams:
        return cls(age_range=tuple(meta["age_range"]), sex_levels=list(meta["sex_levels"]), sites=list(meta["sites"]),
                   df_resid=float(meta["df_resid"]), **{k: np.asarray(arrays[k]) for k in cls.ARRAYS})

    @property
    def n_measures(self) -> int:
        return int(self.beta.shape[1])


def _fixed_design(age: np.ndarray, female: np.ndarray, knots: np.ndarray) -> np.ndarray:
    return np.column_stack([natural_spline(age, knots), female.astype(float)])


def _scale_design(age: np.ndarray, scale_knots: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(age)), natural_spline(age, scale_knots)])


def _pool_log_variances(s2: np.ndarray, d: np.ndarray, prior_df: float | None) -> np.ndarray:
    """Site variances (S, M) shrunk on the log scale towards their weighted mean (empirical Bayes).

    ``log s2_s`` has sampling variance ``~2 / d_s``; the between-site variance of the true log
    variances is estimated by moments (like DerSimonian-Laird for the intercepts), and each site is
    shrunk by ``B_s = tau^2 / (tau^2 + 2 / d_s)``: sites that truly differ keep their own scale, a
    small site borrows from the others. ``prior_df`` (not None) fixes the pooling instead:
    ``B_s = d_s / (d_s + prior_df)``.
    """
    k = s2.shape[0]
    ls = np.log(s2)
    v = (2.0 / d)[:, None] * np.ones_like(ls)
    w = 1.0 / v
    if k == 1:
        return s2
    mean = (w * ls).sum(0) / w.sum(0)
    if prior_df is not None:
        b = (d / (d + prior_df))[:, None] * np.ones_like(ls)
    else:
        q = (w * (ls - mean) ** 2).sum(0)
        denom = w.sum(0) - (w ** 2).sum(0) / w.sum(0)
        tau2 = np.maximum(0.0, (q - (k - 1)) / np.maximum(denom, 1e-300))
        b = tau2[None, :] / (tau2[None, :] + v)
    return np.exp(mean[None, :] + b * (ls - mean[None, :]))


def fit_arrays(y: np.ndarray, age: np.ndarray, sex: np.ndarray, site: np.ndarray, *, age_df: int = 3,
               scale: str = "site", scale_prior_df: float | None = None) -> NormativeParams:
    """Fit the normative model (module docstring) on a reference sample.

    Parameters
    ----------
    y : (N, M) measures of the reference subjects (finite).
    age : (N,) years; sex : (N,) labels (e.g. ``"F"``/``"M"``); site : (N,) batch labels.
    age_df : spline degrees of freedom for age (1 = linear).
    scale : ``"site"`` (a variance per site) or ``"site+age"`` (times a smooth function of age).
    scale_prior_df : None (default): each site's variance is pooled with the others' by empirical Bayes on
        the log scale; a number fixes the pooling (the weight, in degrees of freedom, of the others).
    """
    y = np.asarray(y, float)
    n, m = y.shape
    age = np.asarray(age, float)
    sex = np.asarray(sex).astype(str)
    site = np.asarray(site).astype(str)
    sites = sorted(set(site.tolist()))
    levels = sorted(set(sex.tolist()))
    female = sex == levels[-1] if len(levels) > 1 else np.zeros(n, bool)
    qs = np.linspace(0, 1, age_df + 1)
    knots = np.unique(np.quantile(age, qs))
    if len(knots) < 2:
        knots = np.array([age.min(), age.min() + 1.0])
    xf = _fixed_design(age, female, knots)
    if len(levels) < 2:
        xf = xf[:, :-1]
    s_idx = np.array([sites.index(s) for s in site])
    d_site = np.zeros((n, len(sites)))
    d_site[np.arange(n), s_idx] = 1.0
    a = np.column_stack([d_site, xf])
    gram = a.T @ a
    gram_inv = np.linalg.pinv(gram)
    coef = gram_inv @ (a.T @ y)
    resid = y - a @ coef
    n_par = a.shape[1]
    df_resid = float(n - np.linalg.matrix_rank(a))
    k = len(sites)
    n_site = np.bincount(s_idx, minlength=k).astype(float)

    # scale: per-site variance, moderated towards the pooled one; optional smooth age factor
    share = n_site / n
    d_s = np.maximum(n_site - n_par * share, 1.0)
    ss = np.stack([(resid[s_idx == j] ** 2).sum(0) for j in range(k)])
    s2 = np.maximum(ss / d_s[:, None], 1e-300)
    sigma2 = _pool_log_variances(s2, d_s, scale_prior_df)
    scale_knots = np.array([age.min(), age.max()]) if age.max() > age.min() else np.array([0.0, 1.0])
    q = _scale_design(age, scale_knots)
    scale_coef = np.zeros((q.shape[1], m))
    if scale == "site+age":
        scale_knots = np.unique(np.quantile(age, [0.0, 0.5, 1.0]))
        q = _scale_design(age, scale_knots)
        std2 = resid ** 2 / sigma2[s_idx]
        logr = np.log(std2 + 1e-8)
        scale_coef = np.linalg.lstsq(q, logr, rcond=None)[0]
        g = np.exp(q @ scale_coef)
        scale_coef[0] -= np.log(np.mean(g, axis=0))  # factor of mean 1 over the sample (log scale)
        g = np.exp(q @ scale_coef)
        c = np.mean(std2 / g, axis=0)  # the site variances keep the overall level
        sigma2 = sigma2 * c[None, :]
    elif scale != "site":
        raise ValueError(f"unknown scale model {scale!r}")

    # location: DerSimonian-Laird pooling of the site intercepts, BLUP shrinkage
    raw = coef[:k]
    v = np.stack([gram_inv[j, j] * sigma2[j] for j in range(k)])  # (S, M) sampling variance of each intercept
    if k > 1:
        w = 1.0 / v
        mean_w = (w * raw).sum(0) / w.sum(0)
        qstat = (w * (raw - mean_w) ** 2).sum(0)
        denom = w.sum(0) - (w ** 2).sum(0) / w.sum(0)
        tau2 = np.maximum(0.0, (qstat - (k - 1)) / np.maximum(denom, 1e-300))
    else:
        tau2 = np.zeros(m)
    ws = 1.0 / (v + tau2[None, :])
    mu0 = (ws * raw).sum(0) / ws.sum(0)
    shrink = tau2[None, :] / (tau2[None, :] + v) if k > 1 else np.zeros_like(v)
    offset = shrink * (raw - mu0[None, :])

    std_res = resid / np.sqrt(sigma2[s_idx])
    skew = stats.skew(std_res, axis=0) if n > 2 else np.zeros(m)
    kurt = stats.kurtosis(std_res, axis=0) if n > 3 else np.zeros(m)
    beta = coef[k:]
    if len(levels) < 2:
        beta = np.vstack([beta, np.zeros((1, m))])
    return NormativeParams(knots=knots, age_range=(float(age.min()), float(age.max())), sex_levels=levels,
                           sites=sites, beta=beta, site_raw=raw, mu0=mu0, site_offset=offset, tau2=tau2,
                           sigma2_site=sigma2, scale_knots=scale_knots, scale_coef=scale_coef, gram_inv=gram_inv,
                           df_resid=df_resid, n_site=n_site, residual_skew=np.asarray(skew, float),
                           residual_kurtosis=np.asarray(kurt, float))


# --------------------------------------------------------------------------- prediction
@dataclass
class Predictions:
    """Expected value, predictive SD and flags of new subjects (arrays (N, M) and (N,)).

    ``seen_site`` False: the site was not in the normative sample (scored with the population
    intercept and the between-site variance). ``extrapolated``: a reason per subject ("" when inside
    the fitted range); ``scorable`` False where a covariate is missing or unknown (z is NaN).
    """

    mean: np.ndarray
    sd: np.ndarray
    leverage: np.ndarray
    df_eff: np.ndarray
    seen_site: np.ndarray
    extrapolated: list[str]
    scorable: np.ndarray
    df_resid: float

    def z(self, y: np.ndarray) -> np.ndarray:
        """z-scores of ``y`` (N, M): Student t of the predictive distribution mapped to the normal scale."""
        t = (np.asarray(y, float) - self.mean) / self.sd
        z = t_to_z(t, self.df_resid)
        z[~self.scorable] = np.nan
        return z

    def z_interval(self, z: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Interval of each z from the normative estimate's own uncertainty (delta method).

        ``var(z) ~ h / (1 + h) + z^2 / (2 d)``: the uncertainty of the expected value (leverage ``h``)
        and of the scale (``d`` its degrees of freedom, moderated). Not the subject's measurement error.
        """
        zq = stats.norm.ppf(0.5 + level / 2)
        h = self.leverage[:, None]
        half = zq * np.sqrt(h / (1 + h) + z ** 2 / (2 * self.df_eff))
        return z - half, z + half


def predict_arrays(p: NormativeParams, age: np.ndarray, sex: np.ndarray, site: np.ndarray) -> Predictions:
    """Predictive mean and SD for new subjects (covariates only; nothing is refitted)."""
    age = np.asarray(age, float)
    sex = np.asarray(sex).astype(str)
    site = np.asarray(site).astype(str)
    n = len(age)
    k = len(p.sites)
    levels = p.sex_levels
    known_sex = np.isin(sex, levels)
    female = sex == levels[-1] if len(levels) > 1 else np.zeros(n, bool)
    finite_age = np.isfinite(age)
    age_f = np.where(finite_age, age, p.age_range[0])
    xf = _fixed_design(age_f, female, p.knots)
    mean = xf @ p.beta
    s_idx = np.array([p.sites.index(s) if s in p.sites else -1 for s in site])
    seen = s_idx >= 0
    mean = mean + p.mu0[None, :]
    mean[seen] += p.site_offset[s_idx[seen]]
    # variance: the site's (or, unseen, the mean over sites weighted by size) times the age factor
    w = p.n_site / p.n_site.sum()
    var_unseen = (w[:, None] * p.sigma2_site).sum(0)
    var = np.where(seen[:, None], p.sigma2_site[np.maximum(s_idx, 0)], var_unseen[None, :])
    if p.scale_coef.shape[0] > 1 or np.any(p.scale_coef):
        var = var * np.exp(_scale_design(age_f, p.scale_knots) @ p.scale_coef)
    # leverage of the fixed part (+ the site column for seen sites)
    cols = p.gram_inv.shape[0]
    xa = xf[:, : cols - k]
    a = np.zeros((n, cols))
    a[:, k:] = xa
    a[np.flatnonzero(seen), s_idx[seen]] = 1.0
    if (~seen).any():  # unseen site: the population intercept = the size-weighted site mean
        a[np.ix_(np.flatnonzero(~seen), np.arange(k))] = w[None, :]
    lev = np.einsum("ij,jk,ik->i", a, p.gram_inv, a)
    var_pred = var * (1.0 + lev[:, None])
    var_pred[~seen] += p.tau2[None, :]
    d_site = np.maximum(p.n_site - cols * p.n_site / p.n_site.sum(), 1.0)
    df_eff = np.where(seen, d_site[np.maximum(s_idx, 0)], p.df_resid)[:, None]  # conservative: the site's own
    lo, hi = p.age_range
    reasons = []
    for i in range(n):
        r = []
        if not finite_age[i]:
            r.append("age missing")
        elif age[i] < lo or age[i] > hi:
            r.append(f"age {age[i]:g} outside the fitted range {lo:g}-{hi:g}")
        if not known_sex[i]:
            r.append(f"sex {str(sex[i])!r} not in the normative sample ({', '.join(levels)})")
        reasons.append("; ".join(r))
    scorable = finite_age & known_sex
    return Predictions(mean=mean, sd=np.sqrt(var_pred), leverage=lev, df_eff=np.broadcast_to(df_eff, mean.shape),
                       seen_site=seen, extrapolated=reasons, scorable=scorable, df_resid=p.df_resid)


def expected_extremes(n_measures: int, threshold: float) -> float:
    """Expected number of measures beyond ``|z| > threshold`` for one subject under the norm."""
    return n_measures * 2 * stats.norm.sf(threshold)


def nominal_rate(threshold: float) -> float:
    """Two-sided tail probability of the standard normal beyond ``threshold`` (e.g. 0.0093 at 2.6)."""
    return float(2 * stats.norm.sf(threshold))
