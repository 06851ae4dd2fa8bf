"""Subgroup analysis: every metric per subgroup with CIs, and weak subgroups flagged."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from sobre.validate._estimate import Estimate

__all__ = ["age_bands", "subgroup_analysis", "DEFAULT_AGE_BANDS", "flag_weak"]

#: Edges (years) of the default age bands: <18, 18-39, 40-59, 60-79, >=80.
DEFAULT_AGE_BANDS = (18, 40, 60, 80)


def age_bands(age: pd.Series, edges: Sequence[float] = DEFAULT_AGE_BANDS) -> pd.Series:
    """Age bands as strings (``"<18"``, ``"18-39"``, ..., ``">=80"``); missing ages stay missing.

    Parameters
    ----------
    age : Series of float
    edges : sequence of float
        Band edges in years; a band includes its lower edge.
    """
    edges = list(edges)
    labels = [f"<{edges[0]:g}"] + [f"{a:g}-{b - 1:g}" for a, b in zip(edges[:-1], edges[1:])] + [f">={edges[-1]:g}"]
    a = pd.to_numeric(age, errors="coerce").to_numpy(dtype=float)
    idx = np.searchsorted(np.asarray(edges, dtype=float), a, side="right")
    out = np.array(labels, dtype=object)[np.clip(idx, 0, len(labels) - 1)]
    out[~np.isfinite(a)] = None
    return pd.Series(out, index=age.index, name="age_band")


def flag_weak(est: Estimate, overall: Estimate, direction: int) -> bool:
    """Whether a subgroup's interval lies wholly on the worse side of the overall estimate.

    ``direction`` is +1 when higher is better (flag: CI wholly below the overall value),
    -1 when lower is better (flag: CI wholly above), 0 for two-sided metrics (never flagged).
    """
    if direction == 0 or not (np.isfinite(est.ci_low) and np.isfinite(est.ci_high)):
        return False
    if not np.isfinite(overall.value):
        return False
    if direction > 0:
        return bool(est.ci_high < overall.value)
    return bool(est.ci_low > overall.value)


def subgroup_analysis(
    groups: pd.DataFrame,
    compute: Callable[[np.ndarray], dict],
    overall: dict,
    directions: dict,
    *,
    min_size: int = 10,
) -> dict:
    """Metrics per level of each grouping column.

    Parameters
    ----------
    groups : DataFrame
        One column per grouping variable, one row per subject (aligned with the metrics' inputs).
    compute : callable
        ``compute(index) -> {metric: Estimate}`` for the subjects at positions ``index``.
    overall : dict of str to Estimate
        The metrics on all subjects.
    directions : dict of str to int
        +1 higher is better, -1 lower is better (metrics missing here are not flagged).
    min_size : int
        Subgroups smaller than this are reported without intervals-based flags and marked small.

    Returns
    -------
    dict
        ``{column: [{"level", "n", "metrics": {name: Estimate}, "flags": [metric, ...],
        "small": bool}, ...]}``
    """
    out = {}
    for col in groups.columns:
        rows = []
        values = groups[col]
        missing = int(values.isna().sum())
        for level in sorted(values.dropna().unique(), key=lambda v: str(v)):
            idx = np.flatnonzero((values == level).to_numpy())
            small = len(idx) < min_size
            metrics = compute(idx)
            flags = [] if small else [m for m, d in directions.items()
                                      if m in metrics and m in overall and flag_weak(metrics[m], overall[m], d)]
            rows.append({"level": str(level), "n": int(len(idx)), "metrics": metrics, "flags": flags,
                         "small": small})
        out[col] = {"levels": rows, "missing": missing}
    return out


def subgroups_to_dict(result: dict) -> dict:
    """JSON-ready version of :func:`subgroup_analysis` output."""
    return {
        col: {"missing": v["missing"],
              "levels": [{**{k: r[k] for k in ("level", "n", "flags", "small")},
                          "metrics": {m: e.to_dict() for m, e in r["metrics"].items()}} for r in v["levels"]]}
        for col, v in result.items()
    }
