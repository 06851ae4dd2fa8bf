"""Self-contained HTML report (plots as base64 PNG) and JSON file of an :class:`Evaluation`."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from sobre.validate._estimate import Estimate

__all__ = ["write_report", "render_html"]


def _fig_to_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _fmt(x, spec=".3f") -> str:
    if isinstance(x, Estimate):
        return format(x, spec)
    if x is None:
        return "—"
    if isinstance(x, float):
        return "—" if not math.isfinite(x) else format(x, spec)
    return html.escape(str(x))


# ------------------------------------------------------------------ plots


def plot_roc(roc: dict, auc: Estimate):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    gx = np.asarray(roc["grid_fpr"])
    lo = np.asarray(roc["tpr_low"], dtype=float)
    hi = np.asarray(roc["tpr_high"], dtype=float)
    if np.isfinite(lo).all():
        ax.fill_between(gx, lo, hi, step="post", color="tab:blue", alpha=0.2, label="95% band (bootstrap)")
    ax.step(roc["fpr"], roc["tpr"], where="post", color="tab:blue", label=f"ROC, AUC {auc}")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title="ROC curve")
    ax.legend(loc="lower right", fontsize=8)
    return _fig_to_png(fig)


def plot_calibration(cal) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    d = cal.diagram
    ax.plot(d["confidence"], d["frequency"], "o-", color="tab:red", label=f"as given (ECE {cal.metrics['ece']})")
    if cal.diagram_scaled is not None:
        d2 = cal.diagram_scaled
        ax.plot(d2["confidence"], d2["frequency"], "s--", color="tab:green",
                label=f"temperature {cal.temperature:.2f} (ECE {cal.metrics['ece_scaled']})")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
           title="Reliability diagram")
    ax.legend(loc="upper left", fontsize=7)
    return _fig_to_png(fig)


def plot_forest(subgroups: dict, metric: str, overall: Estimate) -> str | None:
    rows = []
    for col, v in subgroups.items():
        for r in v["levels"]:
            e = r["metrics"].get(metric)
            if e is not None:
                rows.append((f"{col} = {r['level']} (n={r['n']})", e, bool(r["flags"] and metric in r["flags"])))
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 0.35 * len(rows) + 1.2))
    for i, (name, e, flag) in enumerate(rows[::-1]):
        color = "tab:red" if flag else "black"
        if np.isfinite(e.ci_low):
            ax.plot([e.ci_low, e.ci_high], [i, i], color=color, lw=1.5)
        if np.isfinite(e.value):
            ax.plot([e.value], [i], "s", color=color)
    ax.axvline(overall.value, color="tab:blue", ls="--", lw=1, label=f"overall {overall.value:.3f}")
    if np.isfinite(overall.ci_low):
        ax.axvspan(overall.ci_low, overall.ci_high, color="tab:blue", alpha=0.1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows[::-1]], fontsize=8)
    ax.set_xlabel(metric)
    ax.set_title(f"Subgroups: {metric} with 95% CI (red: weak)")
    ax.legend(fontsize=8, loc="best")
    return _fig_to_png(fig)


def plot_site_probes(site: dict) -> str | None:
    bars = []
    for name, p in (site.get("site_probe") or {}).items():
        bars.append((name, p.balanced_accuracy, p.chance))
    cb = site.get("combat")
    if hasattr(cb, "probe_after"):
        bars.append(("features after ComBat (in folds)", cb.probe_after.balanced_accuracy, cb.probe_after.chance))
    if not bars:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    x = np.arange(len(bars))
    vals = [b[1].value for b in bars]
    err = np.array([[b[1].value - b[1].ci_low, b[1].ci_high - b[1].value] for b in bars]).T
    ax.bar(x, vals, yerr=err, color="tab:purple", alpha=0.7, capsize=4)
    ax.axhline(bars[0][2], color="black", ls="--", lw=1, label=f"chance 1/K = {bars[0][2]:.2f}")
    ax.set_xticks(x)
    ax.set_xticklabels([b[0] for b in bars], fontsize=8, rotation=10)
    ax.set_ylim(0, 1)
    ax.set_ylabel("balanced accuracy")
    ax.set_title("Site-prediction probe")
    ax.legend(fontsize=8)
    return _fig_to_png(fig)


def plot_label_efficiency(points: list) -> str | None:
    try:
        pts = sorted(points, key=lambda p: float(p["n_labels"]))
        n = np.array([float(p["n_labels"]) for p in pts])
        v = np.array([float(p["value"]) for p in pts])
    except (KeyError, TypeError, ValueError):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    lo = np.array([float(p.get("ci_low", np.nan) if p.get("ci_low") is not None else np.nan) for p in pts])
    hi = np.array([float(p.get("ci_high", np.nan) if p.get("ci_high") is not None else np.nan) for p in pts])
    if np.isfinite(lo).all() and np.isfinite(hi).all():
        ax.fill_between(n, lo, hi, alpha=0.2)
    ax.plot(n, v, "o-")
    ax.set_xscale("log")
    metric = pts[0].get("metric", "metric")
    ax.set(xlabel="number of labelled subjects", ylabel=str(metric), title="Label efficiency")
    return _fig_to_png(fig)


def plot_froc(froc: dict, metrics: dict, rates) -> str | None:
    if not froc.get("fp_per_case"):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    fx = list(froc["fp_per_case"]) + [max(max(rates), froc["fp_per_case"][-1])]
    fy = list(froc["sensitivity"]) + [froc["sensitivity"][-1]]
    ax.step(fx, fy, where="post", label="FROC")
    xs, ys, lo, hi = [], [], [], []
    for r in rates:
        e = metrics.get(f"froc_sensitivity@{r:g}")
        if e is not None and np.isfinite(e.value):
            xs.append(r)
            ys.append(e.value)
            lo.append(e.value - e.ci_low if np.isfinite(e.ci_low) else 0)
            hi.append(e.ci_high - e.value if np.isfinite(e.ci_high) else 0)
    if xs:
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label="sensitivity at FP rates (95% CI)")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="false positives per case", ylabel="lesion-wise sensitivity", ylim=(0, 1.02), title="FROC")
    ax.legend(fontsize=8)
    return _fig_to_png(fig)


def plot_scatter(scatter: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.3))
    y = np.asarray(scatter["label"])
    p = np.asarray(scatter["prediction"])
    ax.scatter(y, p, s=8, alpha=0.5)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], ls=":", color="grey")
    ax.set(xlabel="reference", ylabel="prediction", title="Prediction vs reference")
    return _fig_to_png(fig)


def plot_per_case(per_case: list, metric: str) -> str | None:
    vals = [c[metric] for c in per_case if c.get(metric) is not None]
    if not vals:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.hist(vals, bins=min(30, max(5, len(vals) // 3)), color="tab:cyan")
    ax.set(xlabel=metric, ylabel="cases", title=f"Per-case {metric}")
    return _fig_to_png(fig)


# ------------------------------------------------------------------ html

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;color:#222;
padding:0 1em;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #444}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f3f3f3}.flag{color:#b00020;font-weight:bold}.muted{color:#666}
.limits li{margin:.2em 0}img{max-width:100%;margin:.5em .5em 0 0}.warn{background:#fff4e5;padding:.5em 1em;
border-left:4px solid #f0a000}
"""


def _img(b64: str | None, alt: str) -> str:
    if not b64:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


_UNITS = {"hd95": "mm", "hd": "mm", "asd": "mm", "volume_error": "mm³ (mm² in 2D)",
          "abs_volume_error": "mm³ (mm² in 2D)", "fp_per_case": "per case"}


def _metric_table(metrics: dict, title_col: str = "metric") -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}{' (' + _UNITS[k] + ')' if k in _UNITS else ''}</td><td>{_fmt(v.value)}</td><td>{_fmt(v.ci_low)}</td><td>{_fmt(v.ci_high)}</td>"
        f"<td class='muted'>{html.escape(v.method)}{'; ' + html.escape(v.note) if v.note else ''}</td></tr>"
        for k, v in metrics.items())
    return (f"<table><tr><th>{title_col}</th><th>estimate</th><th>95% CI low</th><th>95% CI high</th>"
            f"<th>interval</th></tr>{rows}</table>")


def _kv_table(d: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


def render_html(ev) -> str:
    """The report of an :class:`Evaluation` as one self-contained HTML string."""
    d = ev.to_dict()
    p = ev.predictions
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Sobre validation report</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>Validation report</h1>",
             f"<p class='muted'>Sobre {html.escape(d['sobre_version'])}, {html.escape(d['created'])}. "
             f"Task: <b>{html.escape(ev.task)}</b>.</p>"]
    # data and model
    data = d["data"]
    simulated = data.get("simulated")
    parts.append("<h2>Data</h2>")
    parts.append(_kv_table({
        "predictions file": str(p.path), "sha256": p.sha256,
        "dataset version": data.get("dataset_version") or "not stated",
        "simulated": {True: "yes", False: "no"}.get(simulated, "not stated") if not isinstance(simulated, str)
        else simulated,
        "test subjects": d["input"]["test_subjects"], "validation subjects": d["input"]["validation_subjects"],
        "classes": ", ".join(d["classes"]) if d["classes"] else "—",
    }))
    if simulated in (True, "true", "yes", 1):
        parts.append("<p class='warn'>These are <b>simulated</b> data.</p>")
    parts.append("<h2>Model</h2>")
    model = d["model"]
    parts.append(_kv_table({"run id": model.get("run_id") or "not stated", "model": model.get("model") or "—"}))
    if model.get("config"):
        parts.append(f"<details><summary>configuration</summary><pre>"
                     f"{html.escape(json.dumps(model['config'], indent=2, default=str))}</pre></details>")
    # limits first: what a reader must know
    parts.append("<h2>Limits seen</h2>")
    if ev.limits:
        parts.append("<ul class='limits'>" + "".join(f"<li>{html.escape(x)}</li>" for x in ev.limits) + "</ul>")
    else:
        parts.append("<p>No weak subgroup, site dependence or other limit was detected by these analyses.</p>")
    # metrics
    parts.append("<h2>Performance</h2>")
    st = ev.settings
    parts.append(f"<p class='muted'>95% confidence intervals by subject-level bootstrap ({st.n_bootstrap} "
                 f"resamples, {html.escape(st.ci_method)}), seed {st.seed}.</p>")
    if "threshold" in ev.details and ev.task == "binary":
        c = ev.details["counts"]
        source = html.escape(str(ev.details.get("threshold_source", "")))
        if ev.details["threshold"] is None:
            parts.append(f"<p><strong>No operating threshold</strong> ({source}): sensitivity, specificity, PPV, "
                         "NPV and accuracy are not reported.</p>")
        else:
            parts.append(f"<p>Threshold {ev.details['threshold']:g} ({source}; score ≥ threshold is positive, "
                         f"positive class {html.escape(ev.details['positive_class'])}): TP {c['tp']}, FN {c['fn']}, "
                         f"TN {c['tn']}, FP {c['fp']}.</p>")
    parts.append(_metric_table(ev.metrics))
    if isinstance(ev.details.get("auc_delong"), Estimate):
        parts.append(f"<p>AUC with DeLong's asymptotic interval: {ev.details['auc_delong']}.</p>")
    if ev.comparison is not None:
        c = ev.comparison
        parts.append("<h2>Comparison (DeLong's test, paired)</h2>")
        parts.append(_kv_table({"AUC (score)": c.auc_a, f"AUC ({st.compare})": c.auc_b,
                                "difference": c.difference, "z": c.z, "p-value": c.p_value,
                                "correlation of the AUCs": c.correlation}))
    if "roc" in ev.curves:
        parts.append(_img(plot_roc(ev.curves["roc"], ev.metrics["auc"]), "ROC curve"))
    if "scatter" in ev.curves:
        parts.append(_img(plot_scatter(ev.curves["scatter"]), "scatter"))
    if ev.task == "segmentation":
        parts.append(_img(plot_per_case(ev.details["per_case"], "dice"), "per-case Dice"))
        parts.append("<p>Conventions:</p>" + _kv_table(ev.details["conventions"]))
    if ev.task == "detection":
        parts.append(_img(plot_froc(ev.curves["froc"], ev.metrics, st.fp_rates), "FROC"))
        parts.append(_kv_table({**ev.details["counts"]["lesions_per_size"],
                                "hit rule": ev.details["hit_rule"], "lesion size": ev.details["lesion_size"]}))
    # calibration
    if ev.calibration is not None:
        cal = ev.calibration
        parts.append("<h2>Calibration</h2>")
        parts.append(f"<p class='muted'>{cal.n_bins} equal-width bins. Temperature scaling fitted on validation "
                     f"subjects only{'' if cal.temperature is not None else ' (' + html.escape(cal.note or '') + ')'}"
                     ".</p>")
        parts.append(_metric_table(cal.metrics))
        parts.append(_img(plot_calibration(cal), "reliability diagram"))
    # triage
    parts.append("<h2>Triage operating point</h2>")
    if ev.triage is not None:
        t = ev.triage
        parts.append(_kv_table({
            "target sensitivity": t.target_sensitivity, "threshold (chosen on validation)": t.threshold,
            "validation sensitivity": t.validation_sensitivity, "validation specificity": t.validation_specificity,
            "test sensitivity (joint bootstrap)": t.sensitivity, "test specificity (joint bootstrap)": t.specificity,
            "test sensitivity (Clopper-Pearson)": t.sensitivity_exact,
            "test specificity (Clopper-Pearson)": t.specificity_exact,
            "missed positives on test": t.counts["test_missed_positives"]}))
        if t.note:
            parts.append(f"<p class='warn'>{html.escape(t.note)}</p>")
    else:
        parts.append(f"<p>{html.escape(str(ev.details.get('triage', 'not applicable to this task')))}</p>")
    # subgroups
    if ev.subgroups:
        parts.append("<h2>Subgroups</h2>")
        parts.append(_img(plot_forest(ev.subgroups, ev.primary_metric, ev.metrics[ev.primary_metric]),
                          "forest plot"))
        for col, v in ev.subgroups.items():
            names = list(ev.metrics)
            shown = [m for m in names if any(m in r["metrics"] for r in v["levels"])]
            head = "".join(f"<th>{html.escape(m)}</th>" for m in shown)
            body = ""
            for r in v["levels"]:
                cells = "".join(
                    f"<td class='{'flag' if m in r['flags'] else ''}'>{_fmt(r['metrics'].get(m))}</td>" for m in shown)
                body += (f"<tr><td>{html.escape(r['level'])}{' (small)' if r['small'] else ''}</td><td>{r['n']}</td>"
                         f"{cells}</tr>")
            parts.append(f"<h3>{html.escape(col)}</h3><table><tr><th>level</th><th>n</th>{head}</tr>{body}</table>")
            if v["missing"]:
                parts.append(f"<p class='muted'>{v['missing']} subjects without {html.escape(col)}.</p>")
    # site
    parts.append("<h2>Site effects</h2>")
    site = ev.site
    if site.get("note"):
        parts.append(f"<p>{html.escape(site['note'])}</p>")
    if site.get("subjects_per_site"):
        parts.append("<p>Subjects per site:</p>" + _kv_table(site["subjects_per_site"]))
    lab = site.get("label_by_site")
    if isinstance(lab, dict):
        parts.append(f"<p>Label distribution across sites: {html.escape(lab['test'])} test, p = "
                     f"{_fmt(lab['p_value'], '.3g')}.</p>")
    probes = site.get("site_probe") or {}
    for name, pr in probes.items():
        flag = " — <b>site detectable</b>" if pr.detectable else ""
        parts.append(f"<p>Site probe from {html.escape(name)}: balanced accuracy {pr.balanced_accuracy} "
                     f"(chance {pr.chance:.3f}, {pr.n_sites} sites){flag}.</p>")
    parts.append(_img(plot_site_probes(site), "site probe"))
    loso = site.get("leave_one_site_out")
    if hasattr(loso, "per_site"):
        parts.append(f"<h3>Leave-one-site-out (linear probe on the features, {loso.metric})</h3>")
        rows = {f"held-out {k}": v for k, v in loso.per_site.items()}
        rows["all held-out sites"] = loso.pooled
        rows["within-site CV (reference)"] = loso.within_site_cv
        parts.append(_metric_table(rows, "evaluation"))
    elif isinstance(loso, str):
        parts.append(f"<p>Leave-one-site-out: {html.escape(loso)}</p>")
    cb = site.get("combat")
    if hasattr(cb, "probe_after"):
        parts.append("<h3>ComBat harmonisation (neuroHarmonize), fitted inside training folds only</h3>")
        rows = {"site probe before": cb.probe_before.balanced_accuracy,
                "site probe after": cb.probe_after.balanced_accuracy}
        if cb.task_before is not None:
            rows[f"task {cb.task_metric} before"] = cb.task_before
            rows[f"task {cb.task_metric} after"] = cb.task_after
        parts.append(_metric_table(rows, "quantity"))
        parts.append(f"<p class='muted'>Covariates preserved: {html.escape(', '.join(cb.covariates) or 'none')}; "
                     f"{len(cb.folds)} site-stratified folds; the ComBat model of each fold never saw its test "
                     "subjects.</p>")
    elif isinstance(cb, str):
        parts.append(f"<p>ComBat: {html.escape(cb)}</p>")
    # label efficiency
    le = p.metadata.get("label_efficiency")
    if le:
        parts.append("<h2>Label efficiency</h2>")
        parts.append(_img(plot_label_efficiency(le), "label efficiency"))
    # problems and settings
    if ev.problems:
        parts.append("<h2>Notes on the input</h2><ul>" +
                     "".join(f"<li>[{html.escape(q.level)}] {html.escape(q.message)}"
                             f"{' — ' + html.escape(q.fix) if q.fix else ''}</li>" for q in ev.problems) + "</ul>")
    parts.append("<h2>Settings</h2>" + _kv_table({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                                                 for k, v in d["settings"].items()}))
    parts.append("<p class='muted'>Every number of this report is in report.json.</p></body></html>")
    return "\n".join(x for x in parts if x)


def write_report(ev, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` for an evaluation.

    Returns
    -------
    html_path, json_path : Path
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(ev.to_dict(), indent=2, default=str, allow_nan=False))
    html_path = out / "report.html"
    html_path.write_text(render_html(ev), encoding="utf-8")
    return html_path, json_path
