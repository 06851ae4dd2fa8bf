"""``sobre train|pretrain|probe|fuse CONFIG.toml``, ``sobre runs list|show``, ``sobre benchmark label-efficiency``."""

from __future__ import annotations

import contextlib
import os
import sys

from sobre.cli._common import add_json_arg, add_workspace_arg, emit_json, open_workspace, progress_bars, show_progress


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model from a frozen dataset version (typed TOML config)")
    p.add_argument("config", nargs="?", help="TOML config (optional with --resume: the run's own config is used)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted training run from its last checkpoint")
    _common(p)
    _nproc_arg(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("pretrain", help="contrastive pretraining (SimCLR or y-aware) on an unlabelled cohort")
    p.add_argument("config", nargs="?", help="TOML config (optional with --resume)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted pretraining run")
    _common(p)
    _nproc_arg(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("probe", help="linear probe (scikit-learn) on frozen features of a pretrained encoder")
    p.add_argument("config", help="TOML config of `sobre train` with model.init_from = \"<pretraining run>\"")
    _common(p)
    p.set_defaults(func=_probe)

    p = sub.add_parser("fuse", help="image + clinical fusion on a completed binary train/probe run: tabular model, "
                       "late fusion or feature-level fusion (scikit-learn)")
    p.add_argument("config", help="TOML config: image_run, method, [tabular] variables (see docs/learning.md)")
    _common(p)
    p.set_defaults(func=_fuse)

    r = sub.add_parser("runs", help="training, pretraining and benchmark runs recorded in the workspace")
    rs = r.add_subparsers(dest="runs_cmd", metavar="ACTION", required=True)
    p = rs.add_parser("list", help="list runs, oldest first")
    p.add_argument("--kind", choices=["train", "pretrain", "probe", "fusion", "benchmark"],
                   help="only runs of this kind")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_runs_list)
    p = rs.add_parser("show", help="show one run (id or unique prefix)")
    p.add_argument("run_id")
    p.add_argument("--epochs", action="store_true", help="print the metrics of every epoch")
    add_workspace_arg(p)
    add_json_arg(p)
    p.set_defaults(func=_runs_show)

    b = sub.add_parser("benchmark", help="learning benchmarks")
    bs = b.add_subparsers(dest="bench_cmd", metavar="BENCHMARK", required=True)
    p = bs.add_parser("label-efficiency", help="from scratch vs SimCLR/y-aware probes and fine-tuning vs a "
                      "classical baseline, for N labelled subjects x repeats")
    p.add_argument("config", help="TOML config (see docs/learning.md)")
    p.add_argument("--no-reuse", action="store_true", help="pretrain again even if an identical run exists")
    _common(p)
    p.set_defaults(func=_benchmark)


def _common(p) -> None:
    add_workspace_arg(p)
    add_json_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")


def _nproc_arg(p) -> None:
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel training in N processes on this machine (PyTorch DDP, gloo): the same "
                        "global batch and result as one process; on several machines use torchrun "
                        "(docs/cluster.md)")


def _parallel(ns, argv: list[str]):
    """Launch ``--nproc`` processes of this command and wait for them (an exit status), or join the group
    this process was started in (``torchrun`` or such a launch: None, run the command here)."""
    if ns.nproc < 1:
        from sobre.errors import ConfigError

        raise ConfigError("--nproc must be at least 1", found=str(ns.nproc))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a member of a group (launched below, or by torchrun)
        from sobre.learn import init_parallel

        init_parallel()
        return None
    if ns.nproc == 1:
        return None
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(ns.nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ns.nproc),
                   LOCAL_WORLD_SIZE=str(ns.nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        args = argv if rank == 0 else [a for a in argv if a != "--json"] + ["--no-progress"]
        procs.append(subprocess.Popen([sys.executable, "-m", "sobre", *args], env=env,
                                      stdout=None if rank == 0 else subprocess.DEVNULL))
    status = 0
    try:
        while procs:
            for p in list(procs):
                rc = p.poll()
                if rc is None:
                    continue
                procs.remove(p)
                if rc and not status:  # one failed: the others would wait for it forever
                    status = rc
                    for q in procs:
                        q.terminate()
            if procs:
                import time

                time.sleep(0.2)
    except KeyboardInterrupt:
        for q in procs:
            q.terminate()
        raise
    return status


def _argv(ns, command: str) -> list[str]:
    """The command line of this command again (for the processes of --nproc)."""
    out = [command] + ([ns.config] if ns.config else []) + (["--resume", ns.resume] if ns.resume else [])
    out += ["-w", str(ns.workspace)] + (["--json"] if ns.json else []) + (["--no-progress"] if ns.no_progress else [])
    return out


def _prepare_torch() -> None:
    # Sleeping (not spinning) OpenMP threads: a shared CPU server stays responsive and small ops
    # do not collapse under contention. Must be set before torch is imported; a user value wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _shown(ns) -> bool:
    """Bars and per-epoch lines (on stderr): on a terminal, without --json or --no-progress."""
    return not ns.no_progress and show_progress(ns)


class _Epochs:
    """Renders the library's epoch records as one line each on stderr."""

    KEYS = ("epoch", "train_loss", "val_loss", "train_samples_per_s")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, row: dict) -> None:
        if not self.enabled:
            return
        keys = None if row.get("group") == "pretrain" else {*self.KEYS, row.get("monitor")}  # pretrain: every value
        shown = {k: v for k, v in row.items() if v is not None and k not in ("group", "monitor")
                 and (keys is None or k in keys)}
        line = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
        print(f"[{row.get('group', '')}] {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _bars(ns):
    """The library's progress callback: bars on a terminal (see :func:`_shown`), else None."""
    if not _shown(ns):
        yield None
        return
    with progress_bars(ns) as progress:
        yield progress


def _train(ns) -> int:
    _prepare_torch()
    from sobre.errors import ConfigError
    from sobre.learn import train

    if not ns.config and not ns.resume:
        raise ConfigError("no config given", expected="sobre train CONFIG.toml (or --resume RUN)",
                          fix="see docs/learning.md for an example config")
    status = _parallel(ns, _argv(ns, "train"))
    if status is not None:
        return status
    ws = open_workspace(ns)
    with _bars(ns) as progress:
        res = train(ns.config, workspace=ws, resume=ns.resume, progress=progress, on_epoch=_Epochs(_shown(ns)),
                    config_path=ns.config)
    return _report(ns, res.run, res.metrics)


def _pretrain(ns) -> int:
    _prepare_torch()
    from sobre.errors import ConfigError
    from sobre.learn import pretrain

    if not ns.config and not ns.resume:
        raise ConfigError("no config given", expected="sobre pretrain CONFIG.toml (or --resume RUN)")
    status = _parallel(ns, _argv(ns, "pretrain"))
    if status is not None:
        return status
    ws = open_workspace(ns)
    with _bars(ns) as progress:
        res = pretrain(ns.config, workspace=ws, resume=ns.resume, progress=progress, on_epoch=_Epochs(_shown(ns)),
                       config_path=ns.config)
    return _report(ns, res.run, res.metrics)


def _probe(ns) -> int:
    _prepare_torch()
    from sobre.learn import probe

    ws = open_workspace(ns)
    with _bars(ns) as progress:
        res = probe(ns.config, workspace=ws, progress=progress, config_path=ns.config)
    return _report(ns, res.run, res.metrics)


def _fuse(ns) -> int:
    _prepare_torch()
    from sobre.learn import fuse

    ws = open_workspace(ns)
    with _bars(ns) as progress:
        res = fuse(ns.config, workspace=ws, progress=progress, config_path=ns.config)
    return _report(ns, res.run, res.metrics)


def _report(ns, run, metrics) -> int:
    if ns.json:
        emit_json({"run_id": run.run_id if run else None, "status": run.record["status"] if run else None,
                   "path": str(run.path) if run else None, "metrics": metrics})
        return 0
    if run is None:
        return 0
    print(f"run {run.run_id}: {run.record['status']}  {run.record.get('headline') or ''}")
    print(f"  folder {run.path}")
    if run.record["status"] == "interrupted":
        print(f"  resume with: {run.record.get('resume_hint')}")
    return 0


def _runs_list(ns) -> int:
    from sobre.learn import list_runs, runs_root

    ws = open_workspace(ns)
    rows = [r for r in list_runs(runs_root(ws)) if not ns.kind or r.get("kind") == ns.kind]
    if ns.json:
        emit_json(rows)
        return 0
    if not rows:
        print("no runs yet (sobre train / pretrain / benchmark create them)")
    for r in rows:
        print(f"{r['run_id']:36s} {r.get('kind') or '-':9s} {r.get('status') or '-':11s} "
              f"{(r.get('dataset') or '-')[:24]:24s} {r.get('headline') or ''}")
    return 0


def _runs_show(ns) -> int:
    from sobre.learn import open_run, runs_root

    ws = open_workspace(ns)
    run = open_run(runs_root(ws), ns.run_id)
    r = run.record
    if ns.json:
        emit_json(r)
        return 0
    print(f"run {r['run_id']} ({r.get('kind')}, {r.get('status')})")
    print(f"  created {r.get('created_at')}  finished {r.get('finished_at') or '-'}  seed {r.get('seed')}")
    d = r.get("dataset") or {}
    print(f"  dataset {d.get('ref')}  content hash {str(d.get('content_hash'))[:16]}  simulated {d.get('simulated')}")
    c = r.get("code") or {}
    print(f"  code sobre {c.get('sobre_version')}  git {str(c.get('git_sha'))[:12]}"
          f"{' (dirty)' if c.get('git_dirty') else ''}  config sha256 {r.get('config_sha256', '')[:16]}")
    pk = r.get("packages") or {}
    print("  packages " + ", ".join(f"{k} {v}" for k, v in pk.items() if v))
    rt = r.get("runtime") or {}
    if rt:
        print(f"  runtime {rt.get('threads')} threads, {rt.get('precision')} ({rt.get('precision_reason')})")
    if r.get("split"):
        print("  split " + ", ".join(f"{k} {v}" for k, v in r["split"].items() if k.startswith("n_")))
    if r.get("init"):
        print(f"  initialised from {r['init'].get('run_id') or r['init'].get('path')}")
    if r.get("headline"):
        print(f"  result {r['headline']}")
    m = r.get("metrics") or {}
    for k, v in m.items():
        if isinstance(v, dict):
            print(f"  {k}: " + ", ".join(f"{a} {b:.4g}" if isinstance(b, float) else f"{a} {b}" for a, b in v.items()
                                          if not isinstance(b, (dict, list))))
    if ns.epochs:
        for e in r.get("epochs", []):
            print("   " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in e.items()))
    else:
        print(f"  epochs {len(r.get('epochs', []))} (--epochs to list them)")
    print(f"  artifacts {len(r.get('artifacts', {}))}: " + ", ".join(list(r.get("artifacts", {}))[:6]))
    return 0


def _benchmark(ns) -> int:
    _prepare_torch()
    from sobre.learn import label_efficiency

    ws = open_workspace(ns)
    quiet = ns.json
    with _bars(ns) as progress:
        res = label_efficiency(ns.config, workspace=ws, progress=progress, config_path=ns.config,
                               reuse_pretraining=not ns.no_reuse, log=None if quiet else print)
    run = res.run
    if ns.json:
        emit_json({"run_id": run.run_id if run else None, "path": str(run.path) if run else None,
                   "summary": {k: v["summary"] for k, v in res["targets"].items()}, "timings": res["timings"]})
    elif run is not None:
        print((run.path / "results.md").read_text())
        print(f"results in {run.path}")
    return 0
