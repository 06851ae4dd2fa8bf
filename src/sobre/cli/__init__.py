"""The ``sobre`` command line: one command with subcommands, thin over the Python API.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``; heavy imports happen inside the command functions so
that ``sobre --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence

from sobre.errors import SobreError

# Modules providing ``register(subparsers)``; add a line to add a command family.
COMMAND_MODULES = [
    "sobre.cli._workspace",   # init, ingest, info, export
    "sobre.cli._cohort",      # cohort ..., dataset ...
    "sobre.cli._samples",     # samples fetch|list, demo
    "sobre.cli._evaluate",
    "sobre.cli._simulate",
    "sobre.cli._privacy",     # deid, pseudonyms export, pull, push, listen
    "sobre.cli._learn",
    "sobre.cli._explain",     # explain (saliency maps)
    "sobre.cli._apps",        # app list|check|run, predict
    "sobre.cli._audit",       # audit verify|trace|entries
    "sobre.cli._models",      # model register|list|show|verify|export|import|export-onnx|key|trust|trusted
    "sobre.cli._service",     # service [init|status|process|retry|trace|export-audit], review list|show|accept|correct|reject
    "sobre.cli._serve",       # serve (the workstation)
    "sobre.cli._users",       # users add|list|disable|enable|reset-password, users project create|list|grant|revoke
    "sobre.cli._research",    # normative fit|score|list|show, subtypes discover
]


# The commands each module registers, so that ``sobre COMMAND ...`` imports and builds only that module's
# parsers (all of them cost ~20 ms at every start). A command missing here still works: the whole parser
# is built, as it is for ``sobre``, ``sobre -h`` and unknown commands. tests/image/test_export_speed_paths.py
# checks that every entry names the module that registers the command.
COMMAND_INDEX = {
    "init": "sobre.cli._workspace", "ingest": "sobre.cli._workspace", "info": "sobre.cli._workspace",
    "export": "sobre.cli._workspace", "cohort": "sobre.cli._cohort", "dataset": "sobre.cli._cohort",
    "samples": "sobre.cli._samples", "evaluate": "sobre.cli._evaluate", "simulate": "sobre.cli._simulate",
    "deid": "sobre.cli._privacy", "pseudonyms": "sobre.cli._privacy", "pull": "sobre.cli._privacy",
    "push": "sobre.cli._privacy", "listen": "sobre.cli._privacy", "train": "sobre.cli._learn",
    "pretrain": "sobre.cli._learn", "probe": "sobre.cli._learn", "runs": "sobre.cli._learn",
    "benchmark": "sobre.cli._learn", "app": "sobre.cli._apps", "predict": "sobre.cli._apps",
    "explain": "sobre.cli._explain",
    "audit": "sobre.cli._audit", "model": "sobre.cli._models", "serve": "sobre.cli._serve",
    "users": "sobre.cli._users", "service": "sobre.cli._service", "review": "sobre.cli._service",
}


def _command(args: Sequence[str]) -> str | None:
    """The command word of ``sobre [--debug] COMMAND ...``; None for help, ``--version`` or no command."""
    for a in args:
        if a in ("-h", "--help"):
            return None
        if a == "--version":
            return "--version"
        if not a.startswith("-"):
            return a
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``sobre`` parser; with ``command``, only the subparsers of the module that registers it."""
    from sobre import __version__

    parser = argparse.ArgumentParser(
        prog="sobre",
        description="Sobre: frugal, on-premises medical-imaging AI.",
    )
    parser.add_argument("--version", action="version", version=f"sobre {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command == "--version":
        return parser  # argparse prints the version and stops before any command
    module = COMMAND_INDEX.get(command) if command else None
    if module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
        if command in sub.choices:
            return parser
        return build_parser()  # the index is out of date: every module
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(args: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 check failed, 2 bad input, 3 internal error)."""
    args = sys.argv[1:] if args is None else list(args)
    parser = build_parser(_command(args))
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # argparse already printed usage and the error (or --help/--version)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not getattr(ns, "func", None):
        parser.print_help()
        return 0
    try:
        status = _run(ns)
    except SobreError as exc:
        if getattr(ns, "json", False):
            print(json.dumps(exc.to_dict(), indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # whoever read our output went away (`sobre ... | head`): stop quietly, as Unix tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except OSError:
            pass
        return 141  # 128 + SIGPIPE, what a tool killed by the broken pipe reports
    except Exception as exc:  # a bug, not bad input: say so plainly
        if ns.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc}\n"
              "This is a bug in Sobre; please report it with the output of the same command run with "
              "`sobre --debug ...`.", file=sys.stderr)
        return 3
    return int(status or 0)


def _run(ns):
    """The command, then every workspace it opened closed (main is also called in-process)."""
    from ._common import close_opened

    try:
        return ns.func(ns)
    finally:
        close_opened()


def _entry() -> None:  # pragma: no cover
    sys.exit(main())
