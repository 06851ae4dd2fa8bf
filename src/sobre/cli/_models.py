"""``sobre model register|list|show|verify|export|import|export-onnx|key|trust|trusted``: signed model packages."""

from __future__ import annotations

import os
import sys

from sobre.cli._common import add_json_arg, add_workspace_arg, emit_json, open_workspace, progress_bars


def register(sub) -> None:
    m = sub.add_parser("model", help="signed model packages with model cards: register, verify, export, import")
    ms = m.add_subparsers(dest="model_cmd", metavar="ACTION", required=True)

    p = ms.add_parser("register", help="package a completed run: weights, card, report, signed manifest")
    p.add_argument("run", metavar="RUN", help="run id (or unique prefix) or run folder")
    p.add_argument("--name", required=True, help="model name (letters, digits, . _ + -)")
    p.add_argument("--version", required=True, help="model version, e.g. 1.0.0 (never overwritten)")
    p.add_argument("--report", metavar="DIR", help="`sobre evaluate` output of this run (default: the newest report "
                                                   "of the run found in its folder)")
    p.add_argument("--card-info", metavar="TOML", help="intended use, users, labelling, oversight, output codes "
                                                       "(see docs/models.md)")
    p.add_argument("--purpose", help="intended use (overrides the TOML)")
    p.add_argument("--users", help="intended users")
    p.add_argument("--setting", help="clinical setting and place in the care pathway")
    p.add_argument("--population", help="patients the model is meant for")
    p.add_argument("--contraindication", action="append", metavar="TEXT", help="when not to use it (repeatable)")
    p.add_argument("--labelling", help="how the labels were obtained, by whom")
    p.add_argument("--oversight", help="how people review, correct and override the outputs")
    p.add_argument("--onnx", action="store_true", help="also export to ONNX and measure fp32 and int8")
    p.add_argument("--no-measure", action="store_true", help="skip measuring memory and latency")
    _common(p)
    p.set_defaults(func=_register)

    p = ms.add_parser("list", help="list registered models")
    _common(p)
    p.set_defaults(func=_list)

    p = ms.add_parser("show", help="show a model's package and card summary")
    p.add_argument("ref", metavar="NAME@VERSION")
    p.add_argument("--card", action="store_true", help="print the whole card (Markdown)")
    _common(p)
    p.set_defaults(func=_show)

    p = ms.add_parser("verify", help="check signature, trust and every file's SHA-256 (exit 1 when it fails)")
    p.add_argument("ref", metavar="NAME@VERSION")
    _common(p)
    p.set_defaults(func=_verify)

    p = ms.add_parser("export", help="write a package as one archive (.tar)")
    p.add_argument("ref", metavar="NAME@VERSION")
    p.add_argument("--to", required=True, metavar="PATH", help="archive file, or a folder for NAME@VERSION.tar")
    _common(p)
    p.set_defaults(func=_export)

    p = ms.add_parser("import", help="add a package from an archive (refused unless intact and from a trusted site)")
    p.add_argument("archive")
    _common(p)
    p.set_defaults(func=_import)

    p = ms.add_parser("export-onnx", help="export to ONNX, check against PyTorch, measure fp32 vs int8")
    p.add_argument("ref", metavar="NAME@VERSION")
    p.add_argument("--int8", choices=["auto", "never"], default="auto",
                   help="auto (default): quantize and keep int8 only where measured faster and as accurate")
    p.add_argument("--calibration", metavar="DATASET@V", help="calibration images (default: the run's training split)")
    p.add_argument("--atol", type=float, default=1e-4, help="ONNX Runtime vs PyTorch absolute tolerance (1e-4)")
    _common(p)
    p.set_defaults(func=_export_onnx)

    p = ms.add_parser("key", help="this site's signing key: id and public key (to give to other sites)")
    p.add_argument("--out", metavar="FILE.pem", help="write the public key to this file")
    _common(p)
    p.set_defaults(func=_key)

    p = ms.add_parser("trust", help="trust another site's key (a .pem, an exported archive or a package folder)")
    p.add_argument("source", metavar="PEM_OR_ARCHIVE")
    p.add_argument("--label", help="name of the site, shown in lists and checks")
    _common(p)
    p.set_defaults(func=_trust)

    p = ms.add_parser("trusted", help="list the keys this workspace trusts")
    _common(p)
    p.set_defaults(func=_trusted)


def _common(p) -> None:
    add_workspace_arg(p)
    add_json_arg(p)


def _registry(ns):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: sleeping threads on a shared CPU
    from sobre.models import Registry

    return Registry(open_workspace(ns))


def _register(ns) -> int:
    from sobre.base import load_config
    from sobre.models import CardInfo, register

    reg = _registry(ns)
    info = load_config(ns.card_info, CardInfo).model_dump() if ns.card_info else {}
    use = dict(info.get("intended_use") or {})
    for key, value in (("purpose", ns.purpose), ("users", ns.users), ("setting", ns.setting),
                       ("population", ns.population), ("contraindications", ns.contraindication)):
        if value:
            use[key] = value
    info["intended_use"] = use
    if ns.labelling:
        info["training_data"] = {**(info.get("training_data") or {}), "labelling": ns.labelling}
    if ns.oversight:
        info["human_oversight"] = ns.oversight
    with progress_bars(ns) as progress:
        pkg = register(reg.ws, ns.run, ns.name, ns.version, info=info, report=ns.report, onnx=ns.onnx,
                       measure=not ns.no_measure, progress=progress)
    if ns.json:
        emit_json(pkg.summary())
    else:
        s = pkg.summary()
        print(f"registered {pkg.ref} from run {s['run_id']}\n  package: {pkg.path}\n  card:    "
              f"{pkg.path / 'card' / 'card.html'}\n  model sha256 {s['model_sha256']}\n  signed by site key "
              f"{s['key_id']}\n  report: {s['report']}")
        if s.get("onnx"):
            print(f"  onnx: recommended runtime {s['onnx']['recommended']}")
    return 0


def _list(ns) -> int:
    rows = _registry(ns).list()
    if ns.json:
        emit_json(rows)
        return 0
    if not rows:
        print("no model registered yet (sobre model register RUN --name NAME --version V)")
    for r in rows:
        if r.get("status") == "unreadable":
            print(f"{r['ref']:<32s} UNREADABLE: {r['problem']}")
            continue
        onnx = (r.get("onnx") or {}).get("recommended", "-")
        print(f"{r['ref']:<32s} {r.get('task') or '-':<13s} run {r.get('run_id')}  onnx {onnx}  "
              f"key {r.get('key_id')}")
    return 0


def _show(ns) -> int:
    pkg = _registry(ns).get(ns.ref)
    if ns.json:
        emit_json({**pkg.summary(), "manifest": pkg.manifest, "card": pkg.card, "onnx": pkg.onnx})
        return 0
    if ns.card:
        sys.stdout.write((pkg.path / "card" / "card.md").read_text())
        return 0
    s = pkg.summary()
    card = pkg.card["sections"]
    print(f"{pkg.ref}: {s['task']} model from run {s['run_id']} ({s['created_at']})")
    print(f"  package       {pkg.path}")
    print(f"  model sha256  {s['model_sha256']}\n  package sha256 {s['package_sha256']}\n  signed by key {s['key_id']}")
    print(f"  dataset       {(s.get('dataset') or {}).get('ref')}  {(s.get('dataset') or {}).get('content_hash')}")
    print(f"  intended use  {card['intended_use']['purpose']}")
    print(f"  report        {s['report']}")
    metrics = card["quantitative_analyses"].get("metrics")
    for k, v in metrics.items() if isinstance(metrics, dict) else ():
        if v.get("value") is not None:
            ci = "" if v.get("ci_low") is None else f" [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
            print(f"    {k:<24s} {v['value']:.3f}{ci}")
    print(f"  card          {pkg.path / 'card' / 'card.html'}  (sobre model show {pkg.ref} --card)")
    return 0


def _verify(ns) -> int:
    chk = _registry(ns).verify(ns.ref)
    if ns.json:
        emit_json(chk.to_dict())
    else:
        if chk.ok:
            print(f"{ns.ref}: intact, signed by {chk.signed_by} (key {chk.key_id}), package sha256 "
                  f"{chk.package_sha256}")
        for p in chk.problems:
            print(f"{ns.ref}: {p.path}: {p.message}" + (f". {p.fix}" if p.fix else ""), file=sys.stderr)
    return 0 if chk.ok else 1


def _export(ns) -> int:
    path = _registry(ns).export(ns.ref, ns.to)
    emit_json({"ref": ns.ref, "archive": str(path)}) if ns.json else print(f"exported {ns.ref} to {path}")
    return 0


def _import(ns) -> int:
    pkg = _registry(ns).import_(ns.archive)
    chk = pkg.verify()
    if ns.json:
        emit_json({**pkg.summary(), "signed_by": chk.signed_by})
    else:
        print(f"imported {pkg.ref} (signed by {chk.signed_by}, key {chk.key_id}) into {pkg.path}")
    return 0


def _export_onnx(ns) -> int:
    reg = _registry(ns)
    with progress_bars(ns) as progress:
        pkg = reg.export_onnx(ns.ref, {"int8": ns.int8, "calibration": ns.calibration, "atol": ns.atol},
                              progress=progress)
    rec = pkg.onnx
    if ns.json:
        emit_json(rec)
        return 0
    lat, chk, int8 = rec["latency"], rec["check"], rec["int8"]
    print(f"{pkg.ref}: ONNX Runtime matches PyTorch (max abs diff {chk['max_abs_diff']:.2g} <= {chk['atol']:g} + "
          f"{chk['rtol']:g}·|torch|, {chk['n']} inputs)")
    print(f"  latency (1 image): torch fp32 {lat['torch_fp32_ms']:.3g} ms, ONNX Runtime fp32 {lat['ort_fp32_ms']:.3g} ms "
          f"({lat['ort_fp32_over_torch_fp32']:.2f}x)" + (f", int8 {lat['ort_int8_ms']:.3g} ms "
                                                         f"({lat['ort_int8_over_ort_fp32']:.2f}x fp32)"
                                                         if "ort_int8_ms" in lat else ""))
    print(f"  int8: {'kept' if int8.get('chosen') else 'not kept'}: {int8.get('reason')}")
    print(f"  recommended runtime: {rec['recommended']} ({rec['recommended_basis']}; load(runtime='auto') "
          "uses it)")
    return 0


def _key(ns) -> int:
    from sobre.base import write_atomic

    key = _registry(ns).site_key()
    pem = key.public_key_pem()
    if ns.out:
        write_atomic(ns.out, pem)
    if ns.json:
        emit_json({"key_id": key.key_id, "public_key_pem": pem.decode(), "written_to": ns.out})
    else:
        print(f"site key id: {key.key_id}")
        print(f"public key written to {ns.out}" if ns.out else pem.decode().rstrip())
        print("Other sites trust it with `sobre model trust FILE.pem` after checking this id with you.",
              file=sys.stderr)
    return 0


def _trust(ns) -> int:
    res = _registry(ns).trust(ns.source, ns.label)
    if ns.json:
        emit_json(res)
    elif res["label"] == "this site":
        print(f"key {res['key_id']} is this site's own key: nothing to do")
    else:
        print(f"trusting site key {res['key_id']} ({res['label']}); packages it signed can now be imported. "
              "Make sure the other site confirmed this id.")
    return 0


def _trusted(ns) -> int:
    rows = _registry(ns).trusted_keys()
    if ns.json:
        emit_json(rows)
        return 0
    if not rows:
        print("no key yet (this site's key is created by the first `sobre model register` or `sobre model key`)")
    for r in rows:
        print(f"{r['key_id']}  {r['label']}" + (f"  (added {r['added_at']})" if r.get("added_at") else ""))
    return 0
