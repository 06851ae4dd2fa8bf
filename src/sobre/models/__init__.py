"""Model packages, the registry, model cards, and CPU efficiency (ONNX).

A completed, validated run becomes a **package**: weights, preprocessing, task and output codes,
resolved config, provenance, the validation report, a model card (JSON, Markdown, HTML) and a
manifest of every file's SHA-256, signed with the site's Ed25519 key. Packages live in the
workspace's registry (``ws.layout.models``), are exported as one archive and imported elsewhere
only when intact and signed by a trusted site.

Public API
----------
``register(ws, run, name, version, ...)``
    Build the signed package ``name@version`` from a completed train or probe run.
``Registry(ws)``
    ``list``, ``get``, ``verify``, ``export``, ``import_``, ``export_onnx``, ``trust``,
    ``trusted_keys``, ``untrust``, ``site_key``.
``ModelPackage``
    ``manifest``, ``card``, ``onnx``, ``verify()``, ``load(runtime="torch"|"onnx"|...)``.
``PackageCheck``
    What verification found (``ok``, ``problems`` naming each file).
``CardInfo``, ``OnnxOptions``
    What the person registering states; how ONNX export is checked and measured.
``OnnxModel``
    A model whose networks run in ONNX Runtime, with the same ``predict``.
``CARD_SECTIONS``, ``CROSSWALK``, ``FRAMEWORKS``, ``data_ranges``, ``render_html``, ``render_markdown``
    The card's sections, their cross-map to CLAIM 2024, TRIPOD+AI, EU AI Act art. 13 and FDA's 2025
    draft guidance, and the card's renderers.

See docs/models.md.
"""

from __future__ import annotations

from sobre.models._card import NOT_STATED, CardInfo, data_ranges, render_html, render_markdown
from sobre.models._crosswalk import CARD_SECTIONS, CROSSWALK, FRAMEWORKS
from sobre.models._package import PACKAGE_FORMAT, PackageCheck, check_package, parse_ref
from sobre.models._registry import ModelPackage, Registry

__all__ = [
    "register", "Registry", "ModelPackage", "PackageCheck", "check_package", "parse_ref", "PACKAGE_FORMAT",
    "CardInfo", "NOT_STATED", "data_ranges", "render_html", "render_markdown", "CARD_SECTIONS", "CROSSWALK",
    "FRAMEWORKS", "OnnxOptions", "OnnxModel",
]


def register(ws, run, name: str, version: str, *, report=None, info=None, onnx: bool = False, onnx_options=None,
             measure: bool = True, progress=None) -> ModelPackage:
    """Build the signed model package ``name@version`` from a completed run, atomically.

    Parameters
    ----------
    ws : sobre.catalog.Workspace
    run : Run, run folder, or run id (a unique prefix works)
        A completed train or probe run of this workspace.
    name, version : str
        1 to 100 ASCII letters, digits, ``. _ + -``. An existing ``name@version`` is never overwritten.
    report : path, optional
        Folder (or ``report.json``) written by ``sobre evaluate`` for this run. By default the newest
        report of this run found in its folder (``RUN/report.json``, ``RUN/*/report.json``); none:
        the card says "not stated" for performance.
    info : CardInfo, dict or path of a TOML file, optional
        What only people know: intended use, users, setting, contraindications, labelling, human
        oversight, output codes (see :class:`CardInfo`). Anything not given is "not stated".
    onnx : bool
        Also export the networks to ONNX and measure them (see :class:`OnnxOptions`).
    onnx_options : OnnxOptions or dict, optional
    measure : bool
        Measure peak memory and latency in a fresh process (a few seconds).
    progress : callable, optional
        ``progress(stage, done, total)``.

    Returns
    -------
    ModelPackage

    Raises
    ------
    CatalogError
        Unknown run, existing ``name@version``.
    InputError
        A run that is not completed or holds no trained model, a report of another run, output
        codes for unknown classes, invalid names.
    ConfigError
        Bad card information or ONNX options.
    """
    from sobre.models._register import register as _register

    return _register(ws, run, name, version, report=report, info=info, onnx=onnx, onnx_options=onnx_options,
                     measure=measure, progress=progress)


def __getattr__(name: str):  # torch and onnxruntime load on first use
    if name in ("OnnxOptions", "OnnxModel"):
        from sobre.models import _onnx

        return getattr(_onnx, name)
    raise AttributeError(f"module 'sobre.models' has no attribute {name!r}")
