"""``sobre normative fit|score|list|show`` and ``sobre subtypes discover``: deviations from the healthy
population and subtypes of patients (see docs/normative.md)."""

from __future__ import annotations

import sys

from sobre.cli._common import add_json_arg, add_workspace_arg, emit_json, open_workspace, progress_bars


def register(sub) -> None:
    p = sub.add_parser("normative", help="normative models: fit on a healthy dataset version, score others",
                       description="Normative modelling of regional volumes/intensities and voxel-wise maps against "
                                   "age and sex, with site as a batch effect. See docs/normative.md.")
    s = p.add_subparsers(dest="normative_cmd", metavar="ACTION", required=True)

    f = s.add_parser("fit", help="fit a normative model on a healthy dataset version (frozen in WS/normative)")
    f.add_argument("dataset", metavar="DATASET@V", help="a frozen version of healthy reference subjects")
    f.add_argument("--config", metavar="TOML", help="normative configuration (docs/normative.md)")
    f.add_argument("--atlas", metavar="TSV|sim",
                   help="names of the labels: a table with index (or label) and name columns, e.g. a simulated "
                        "cohort's truth/regions.tsv, or 'sim' for sobre.sim's atlas")
    f.add_argument("--maps", metavar="PROTOCOL", help="also model voxel-wise maps: the protocol of the map series "
                   "(e.g. logjac)")
    f.add_argument("--no-labels", action="store_true", help="no regional measures (voxel-wise maps only)")
    add_workspace_arg(f)
    add_json_arg(f)
    f.set_defaults(func=_fit)

    c = s.add_parser("score", help="z-scores of a dataset version against a normative model, group deviations")
    c.add_argument("model", metavar="MODEL", help="model id (sobre normative list) or folder")
    c.add_argument("dataset", metavar="DATASET@V", help="a version without any subject of the training version")
    c.add_argument("--out", metavar="DIR", help="output folder (default: WS/normative/MODEL/scores/NAME-vN)")
    c.add_argument("--no-images", action="store_true", help="tables only (no per-subject z-maps)")
    c.add_argument("--top", type=int, default=5, metavar="N", help="regions shown per subject (default 5)")
    add_workspace_arg(c)
    add_json_arg(c)
    c.set_defaults(func=_score)

    ls = s.add_parser("list", help="normative models of the workspace")
    add_workspace_arg(ls)
    add_json_arg(ls)
    ls.set_defaults(func=_list)

    sh = s.add_parser("show", help="one model's record (dataset, config, code, covariate ranges, fit summary)")
    sh.add_argument("model", metavar="MODEL")
    add_workspace_arg(sh)
    add_json_arg(sh)
    sh.set_defaults(func=_show)

    t = sub.add_parser("subtypes", help="subtype discovery from normative deviations or learned features",
                       description="Cluster patients by their deviation profiles; the number of clusters is chosen "
                                   "by stability (consensus clustering against a null); clusters are tested against "
                                   "age, sex and site, and flagged when they merely recover sites.")
    ts = t.add_subparsers(dest="subtypes_cmd", metavar="ACTION", required=True)
    d = ts.add_parser("discover", help="discover subtypes among the patients of a normative scores folder")
    d.add_argument("scores", metavar="SCORES_DIR", help="output of `sobre normative score`")
    d.add_argument("--kind", choices=["volume", "intensity", "all", "voxels"], default="volume",
                   help="deviations clustered (default: regional volumes)")
    d.add_argument("--features", metavar="RUN", help="cluster learned features of this run's encoder instead "
                   "(of the patients' images in --dataset)")
    d.add_argument("--dataset", metavar="DATASET@V", help="with --features: the patients' dataset version")
    d.add_argument("--reference", metavar="DATASET@V", help="with --features: healthy controls; their features "
                   "are modelled against age, sex and site and the patients' features turned into z-scores "
                   "(removes site effects fitted on controls only)")
    d.add_argument("--config", metavar="TOML", help="subtype configuration (docs/normative.md)")
    d.add_argument("--k", metavar="A-B", help="numbers of clusters tried (default 2-6)")
    d.add_argument("--resamples", type=int, metavar="N", help="subsamples per k (default 50)")
    d.add_argument("--seed", type=int, metavar="N")
    d.add_argument("--holdout", type=float, default=0.0, metavar="F",
                   help="share of patients held out of discovery (assigned to the nearest cluster afterwards)")
    d.add_argument("--truth", metavar="TSV", help="a table with the true subtypes (e.g. truth/participants_truth.tsv"
                   " of a simulated cohort): ARI reported")
    d.add_argument("--truth-column", default="subtype", metavar="COL")
    d.add_argument("--out", metavar="DIR", help="output folder (default: SCORES_DIR/subtypes)")
    add_workspace_arg(d)
    add_json_arg(d)
    d.set_defaults(func=_discover)


# ------------------------------------------------------------------------------------ normative
def _atlas(value: str | None):
    if value is None:
        return None
    from sobre.normative import Atlas

    if value == "sim":
        from sobre.sim import region_names

        return Atlas.from_names(region_names(), title="sobre.sim (Colin27 AAL + ventricles, white matter, CSF)")
    return Atlas.from_tsv(value)


def _fit(ns) -> int:
    from sobre.base import load_config
    from sobre.errors import ConfigError
    from sobre.normative import NormativeConfig, fit_normative

    cfg = load_config(ns.config, NormativeConfig) if ns.config else NormativeConfig()
    update = {}
    if ns.maps:
        update["maps"] = {"field": "protocol", "equals": ns.maps}
    if ns.no_labels:
        update["labels"] = None
    if update:
        cfg = NormativeConfig.model_validate({**cfg.model_dump(), "data": {**cfg.data.model_dump(), **update}})
    atlas = _atlas(ns.atlas)
    if cfg.data.labels is not None and atlas is None:
        raise ConfigError("regional measures need the names of the labels", expected="--atlas TSV (e.g. a simulated "
                          "cohort's truth/regions.tsv) or --atlas sim", fix="or --no-labels for voxel-wise maps only")
    ws = open_workspace(ns)
    with progress_bars(ns) as progress:
        model = fit_normative(ws, ns.dataset, cfg, atlas=atlas, progress=progress)
    rec = model.record
    out = {"model_id": model.model_id, "folder": str(model.folder), "dataset": rec["dataset"],
           "measures": len(rec["measures"]), "voxels": (rec.get("maps") or {}).get("n_voxels", 0),
           "covariates": rec["covariates"], "fit_summary": rec["fit_summary"], "problems": rec["problems"]}
    if ns.json:
        emit_json(out)
    else:
        sites = ", ".join(f"{k} ({v})" for k, v in rec["covariates"]["sites"].items())
        print(f"normative model {model.model_id}: {len(rec['training_subjects'])} reference subjects of "
              f"{rec['dataset']['ref']}, {out['measures']} regional measures, {out['voxels']} voxels; ages "
              f"{rec['covariates']['age_range'][0]:g}-{rec['covariates']['age_range'][1]:g}, sites {sites}"
              f"{' (SIMULATED data)' if rec.get('simulated') else ''}")
        for p in rec["problems"]:
            print(f"warning: {p['message'] if isinstance(p, dict) else p}", file=sys.stderr)
    return 0


def _score(ns) -> int:
    from sobre.normative import load_normative

    ws = open_workspace(ns)
    model = load_normative(ws, ns.model)
    with progress_bars(ns) as progress:
        scores = model.score(ws, ns.dataset, progress=progress)
        folder = scores.write(ws, ns.out, images=not ns.no_images, progress=progress)
    summary = scores.summary()
    summary["folder"] = str(folder)
    if ns.json:
        summary["group"] = scores.group_table()[:20]
        emit_json(summary)
        return 0
    print(f"{summary['subjects']} subjects of {summary['dataset']['ref']} scored against {model.model_id} "
          f"({summary['patients']} patients, {summary['controls']} reference subjects, {summary['flagged']} flagged)"
          f"{' - SIMULATED data' if summary['simulated'] else ''}; written to {folder}")
    if "controls_extreme_rate" in summary:
        print(f"reference subjects beyond |z| > {summary['threshold']:g}: {100 * summary['controls_extreme_rate']:.2f} %"
              f" of their measures (nominal {100 * summary['nominal_rate']:.2f} %)")
    rows = [r for r in scores.group_table() if r["significant"]][:10]
    if rows:
        print(f"patients deviate in {summary.get('significant_regions', 0)} regional measures (BH q < "
              f"{model.config.scoring.fdr:g}); strongest:")
        for r in rows:
            print(f"  {r['kind']:9s} {r['region']:24s} mean z {r['mean_z']:+.2f} [{r['ci_low']:+.2f}, "
                  f"{r['ci_high']:+.2f}]  q {r['q']:.2g}")
    for p in scores.problems:
        print(f"warning: {p.message}", file=sys.stderr)
    return 0


def _list(ns) -> int:
    from sobre.normative import list_normative

    rows = list_normative(open_workspace(ns))
    if ns.json:
        emit_json(rows)
    elif not rows:
        print("no normative model (sobre normative fit DATASET@V)")
    else:
        for r in rows:
            print(f"{r['model_id']}  {r['dataset']}  {r['n_subjects']} subjects  {r['measures']} measures  "
                  f"{r['voxels']} voxels  {r['created_at']}")
    return 0


def _show(ns) -> int:
    from sobre.normative import load_normative

    model = load_normative(open_workspace(ns), ns.model)
    rec = {k: v for k, v in model.record.items() if k not in ("training_subjects",)}
    rec["training_subjects"] = len(model.record["training_subjects"])
    if ns.json:
        emit_json(rec)
    else:
        import json

        print(json.dumps(rec, indent=1, default=str))
    return 0


# ------------------------------------------------------------------------------------ subtypes
def _read_tsv(path) -> list[dict]:
    import csv
    from pathlib import Path

    from sobre.errors import InputError

    p = Path(path)
    if not p.exists():
        raise InputError("file not found", path=p, expected="the output of `sobre normative score`")
    return list(csv.DictReader(p.read_text().splitlines(), delimiter="\t"))


def _discover(ns) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from sobre.base import load_config, write_atomic
    from sobre.errors import ConfigError, InputError
    from sobre.normative import SubtypeConfig, adjusted_rand_index, discover_subtypes

    cfg = load_config(ns.config, SubtypeConfig) if ns.config else SubtypeConfig()
    upd = {}
    if ns.k:
        try:
            a, _, b = ns.k.partition("-")
            upd.update(k_min=int(a), k_max=int(b or a))
        except ValueError:
            raise ConfigError(f"cannot read --k {ns.k!r}", expected="A-B, e.g. 2-6") from None
    if ns.resamples:
        upd["resamples"] = ns.resamples
    if ns.seed is not None:
        upd["seed"] = ns.seed
    if upd:
        cfg = SubtypeConfig.model_validate({**cfg.model_dump(), **upd})
    scores = Path(ns.scores)
    summary = json.loads((scores / "scores.json").read_text()) if (scores / "scores.json").exists() else None
    if summary is None:
        raise InputError("not a normative scores folder", path=scores, expected="scores.json, subjects.tsv, regions.tsv",
                         fix="run `sobre normative score MODEL DATASET@V` first")
    reference = summary["model_record"]["config"]["scoring"]["group"]["reference"]
    subj = _read_tsv(scores / "subjects.tsv")
    patients = [r for r in subj if r["group"] not in ("", "n/a", reference) and not r["flags"].strip()]
    if ns.features:
        x, names, standardise = _learned_features(ns, [r["subject"] for r in patients])
    else:
        x, names = _deviation_matrix(scores, [r["subject"] for r in patients], ns.kind)
        standardise = False
    ids = [r["subject"] for r in patients]
    meta = {"site": np.array([r["site"] for r in patients]), "sex": np.array([r["sex"] for r in patients]),
            "age": np.array([float(r["age"]) for r in patients])}
    rng = np.random.default_rng(cfg.seed)
    held = np.zeros(len(ids), bool)
    if ns.holdout:
        if not 0 < ns.holdout < 0.9:
            raise ConfigError("--holdout must be a share between 0 and 0.9", found=str(ns.holdout))
        held[rng.permutation(len(ids))[: int(round(ns.holdout * len(ids)))]] = True
    disc = ~held
    with progress_bars(ns) as progress:
        model = discover_subtypes(x[disc], config=cfg, metadata={k: v[disc] for k, v in meta.items()},
                                  standardise=standardise, subjects=[i for i, h in zip(ids, held) if not h],
                                  progress=progress)
    labels = np.empty(len(ids), int)
    labels[disc] = model.labels
    if held.any():
        labels[held] = model.assign(x[held])
    result = {"simulated": bool(summary.get("simulated")), "source": "learned features" if ns.features else
              f"normative z ({ns.kind})", "patients": len(ids), "discovery": int(disc.sum()),
              "held_out": int(held.sum()), **model.to_dict()}
    if ns.truth:
        truth = {r["participant_id"]: r.get(ns.truth_column, "") for r in _read_tsv(ns.truth)}
        t = np.array([truth.get(i, "") for i in ids])
        result["ari_discovery"] = adjusted_rand_index(labels[disc], t[disc])
        if held.any():
            result["ari_held_out"] = adjusted_rand_index(labels[held], t[held])
    out = Path(ns.out) if ns.out else scores / "subtypes"
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "subtypes.json", json.dumps(result, indent=1, default=str) + "\n")
    lines = ["subject\tcluster\tset\tsite\tsex\tage"] + [
        f"{i}\t{lab}\t{'held-out' if h else 'discovery'}\t{meta['site'][j]}\t{meta['sex'][j]}\t{meta['age'][j]:g}"
        for j, (i, lab, h) in enumerate(zip(ids, labels, held))]
    write_atomic(out / "clusters.tsv", "\n".join(lines) + "\n")
    result["folder"] = str(out)
    result["features"] = len(names)
    if ns.json:
        emit_json(result)
        return 0
    print(f"{len(ids)} patients ({result['source']}, {len(names)} features; {int(disc.sum())} in discovery"
          f"{f', {int(held.sum())} held out' if held.any() else ''}): k = {model.k}"
          f"{' (no stable structure beyond the null)' if model.k == 1 else ''}")
    for k, r in model.per_k.items():
        null = f", null {r['null_stability']:.2f}" if "null_stability" in r else ""
        print(f"  k = {k}: stability {r['stability']:.2f} +- {r['stability_sd']:.2f}{null}, PAC {r['pac']:.2f}")
    if model.recovers_site or model.site_flags:
        print("WARNING: the clusters follow the sites - they may be scanners, not subtypes:", file=sys.stderr)
        for k, why in model.site_flags.items():
            print(f"  cluster {k}: {why}", file=sys.stderr)
    for name, a in model.association.items():
        print(f"  {name}: {a['test']} p = {a['p']:.2g}, {a['effect']} {a['effect_size']:.2f}")
    if "ari_discovery" in result:
        print(f"ARI against {ns.truth_column}: discovery {result['ari_discovery']:.2f}"
              + (f", held out {result['ari_held_out']:.2f}" if "ari_held_out" in result else ""))
    print(f"written to {out}")
    return 0


def _deviation_matrix(scores, ids: list[str], kind: str):
    import numpy as np

    from sobre.errors import InputError

    if kind == "voxels":
        import sobre

        maps = [np.asarray(sobre.load(scores / "maps" / f"{s}_space-template_zmap.nii.gz").array).ravel() for s in ids]
        x = np.stack(maps)
        keep = np.any(x != 0, axis=0)
        return x[:, keep], [f"voxel{i}" for i in np.flatnonzero(keep)]
    rows = _read_tsv(scores / "regions.tsv")
    cols = sorted({(r["kind"], r["region"]) for r in rows if kind == "all" or r["kind"] == kind})
    if not cols:
        raise InputError(f"no {kind} deviations in the scores", path=scores / "regions.tsv")
    col = {c: j for j, c in enumerate(cols)}
    row = {s: i for i, s in enumerate(ids)}
    x = np.full((len(ids), len(cols)), np.nan)
    for r in rows:
        i, j = row.get(r["subject"]), col.get((r["kind"], r["region"]))
        if i is not None and j is not None and r["z"] not in ("", "n/a"):
            x[i, j] = float(r["z"])
    keep = np.all(np.isfinite(x), axis=0)
    return x[:, keep], [f"{k}:{n}" for (k, n), ok in zip(cols, keep) if ok]


def _learned_features(ns, ids: list[str]):
    """Patients' encoder features; z-scored against a normative model of the controls' features if --reference."""
    from pathlib import Path

    import numpy as np

    from sobre.errors import ConfigError, InputError
    from sobre.learn import load_model

    if not ns.dataset:
        raise ConfigError("--features needs --dataset, the patients' dataset version")
    ws = open_workspace(ns)
    model = load_model(ns.features, workspace=ws)

    def feats(ref, keep_ids=None):
        ds = ws.dataset(ref)
        series = [s for s in ds.series if s.metadata.get("protocol") in (None, "T1w")
                  and (keep_ids is None or s.subject_id in keep_ids)]
        if not series:
            raise InputError(f"no image series in {ref} for these subjects")
        with progress_bars(ns) as progress:
            f = model.features(ds, series=series, progress=progress)
        meta = [s.metadata for s in series]
        return f, [s.subject_id for s in series], meta

    fp, sid, _ = feats(ns.dataset, set(ids))
    order = [sid.index(i) for i in ids if i in sid]
    missing = [i for i in ids if i not in sid]
    if missing:
        raise InputError(f"{len(missing)} patient(s) of the scores have no image in {ns.dataset}: {missing[:3]}")
    fp = fp[order]
    if not ns.reference:
        return fp, [f"f{j}" for j in range(fp.shape[1])], True
    from sobre.normative import fit_arrays, predict_arrays

    fc, _, mc = feats(ns.reference)
    age = np.array([float(m.get("age", np.nan)) for m in mc])
    params = fit_arrays(fc.astype(float), age, np.array([str(m.get("sex")) for m in mc]),
                        np.array([str(m.get("site")) for m in mc]), age_df=2)
    subj = {r["subject"]: r for r in _read_tsv(Path(ns.scores) / "subjects.tsv")}
    pr = predict_arrays(params, np.array([float(subj[i]["age"]) for i in ids]),
                        np.array([subj[i]["sex"] for i in ids]), np.array([subj[i]["site"] for i in ids]))
    return pr.z(fp.astype(float)), [f"f{j}" for j in range(fp.shape[1])], False
