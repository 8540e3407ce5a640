"""How apps plug into the core without the core importing them by name.

Each app (the core's own image task included) declares an entry point in the ``medtransfer.apps``
group of pyproject.toml pointing at an :class:`AppSpec` in its torch-free ``plugin`` module::

    [project.entry-points."medtransfer.apps"]
    eeg = "medtransfer.apps.eeg.plugin:SPEC"

Every hook is an import string ``"module:attr"`` resolved only when used, so ``medtransfer
--help`` and the runtime stay fast and torch-free.  :data:`HOOKS` documents the parameters each
hook must accept (the app contract test checks every installed app against it).  Torch-free.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from medtransfer.shared.utils.errors import MedTransferError

#: hook field -> the parameter names its target must accept (``cls`` hooks: its constructor's)
HOOKS: dict[str, tuple[str, ...]] = {
    "cli": (),
    "predictor": ("bundle",),
    "exporter": ("run_dir", "out_dir", "quantize", "overwrite", "force"),
    "demo": ("out_dir", "fast"),
    "bench": (),
    "bench_eager": ("run_dir",),
    "bench_bundle": ("work_dir",),
    "rank_features": ("candidate", "manifest"),
    "rank_demo": ("base", "demo_out", "fast"),
    "reference_cases": ("run_dir",),
    "input_stats": ("path", "bundle"),
    "merge_demo": ("out_dir", "fast"),
}
#: every importer: ``func(root, out_csv, **opts) -> Path``
IMPORTER_PARAMS: tuple[str, ...] = ("root", "out_csv")
#: a declared backbone: registry fields besides its name (``builder`` is required)
BACKBONE_KEYS: tuple[str, ...] = ("builder", "family", "pretrained_cfg", "head", "description")


@dataclass(frozen=True)
class AppSpec:
    """What an app gives the core.

    Attributes:
        name: app name, also its CLI group name (``medtransfer <name> ...``).
        help: one line for ``medtransfer --help``.
        cli: ``"module:attr"`` of the app's typer.Typer group (module must import lazily).
        predictor: ``"module:Class"`` of the torch-free predictor (see runtime.predictor).
        exporter: ``"module:func"``; ``func(run_dir, out_dir, quantize=None, overwrite=True, force=False) -> Path``
            (writes through ``shared.export.export_bundle``: atomic, trivial-baseline guard).
        demo: ``"module:func"``; ``func(out_dir: Path, fast: bool) -> dict`` (``markdown``,
            ``bundle``, ``metrics``: a report section).
        bench: ``"module:func"``; ``func(**opts) -> dict`` of measured figures (``medtransfer bench
            --app NAME``; given ``bundle=`` when it accepts it and no eager model is declared).
        bench_eager: ``"module:func"``; the app's run loader, ``func(run_dir) -> model`` or
            ``(model, ...)``: the PyTorch model of a run, for the core's ONNX-vs-eager benchmark of
            the bundle exported from that run (the bundle's ``metadata.run_dir``).
        bench_bundle: ``"module:func"``; ``func(work_dir) -> (bundle_dir, [sample inputs])``: a
            small bundle built from scratch for ``medtransfer bench`` without ``--bundle``.
        rank_features: ``"module:func"``; ``func(candidate, manifest, **opts)`` yields ``(features (b, D),
            target (b,))`` batches of the manifest's labelled training split under the candidate
            (a ``shared.transferability.rank.Candidate``); integer targets = classes, float targets =
            regression (``medtransfer rank``).
        rank_demo: ``"module:func"``; ``func(base, demo_out, fast) -> {"labels", "ranking", "results", "what"}``:
            the app's "Which source?" validation (rank, then fine-tune every candidate) for the demo.
        demo_default: whether ``medtransfer demo`` without ``--apps`` runs this app (an app with
            False runs by default only when no other app with a demo is installed).
        importers: dataset name -> ``"module:func"``; ``func(root, out_csv, **opts) -> Path``.
        data_cards: names of files in ``data_cards/`` this app relies on.
        backbones: registry name -> ``{"builder": "module:func", "family", "pretrained_cfg",
            "head", "description"}``: backbones the app adds to the shared registry, listed by
            ``medtransfer models`` without importing the builder's module.
        reference_cases: ``"module:func"``; ``func(run_dir) -> [{"path", "label", "extra"}]``: the
            run's VALIDATION cases (never test), which export runs through the bundle to store the
            reference statistics of ``medtransfer estimate`` (``shared.export.reference``).
        input_stats: ``"module:func"``; ``func(path, bundle) -> {name: float}``: torch-free modality
            statistics of one input (EEG band powers, intensity histogram...), for drift.
        merge_demo: ``"module:func"``; ``func(out_dir: Path, fast: bool) -> {"title", "sites", "metric",
            "rows": {model: {site: {metric: float}}}, "caption", "seconds"}``: the app's "merging site
            models" scenario for the demo (``shared.finetune.merge_demo.demo_section``).
    """

    name: str
    help: str
    cli: str | None = None
    predictor: str | None = None
    exporter: str | None = None
    demo: str | None = None
    bench: str | None = None
    bench_eager: str | None = None
    bench_bundle: str | None = None
    rank_features: str | None = None
    rank_demo: str | None = None
    demo_default: bool = True
    importers: dict[str, str] = field(default_factory=dict)
    data_cards: tuple[str, ...] = ()
    backbones: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference_cases: str | None = None
    input_stats: str | None = None
    merge_demo: str | None = None


def load_object(ref: str) -> Any:
    """Import ``"pkg.module:attr"`` and return the attribute."""
    mod, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


@functools.lru_cache(maxsize=1)
def _discover() -> tuple[tuple[str, AppSpec], ...]:
    return tuple(_discover_uncached().items())


def discover_apps() -> dict[str, AppSpec]:
    """All app specs (cached), one per ``medtransfer.apps`` entry point."""
    return dict(_discover())


def _discover_uncached() -> dict[str, AppSpec]:
    """All app specs of the ``medtransfer.apps`` entry points; a broken one is a warning.

    Returns:
        name -> AppSpec, sorted by name.
    """
    found: dict[str, AppSpec] = {}
    for ep in entry_points(group="medtransfer.apps"):
        try:
            spec = ep.load()
        except Exception as e:  # a broken app must not take the CLI down
            print(f"warning: app '{ep.name}' failed to load: {e}", file=sys.stderr)
            continue
        found[spec.name] = spec
    return dict(sorted(found.items()))


def get_app(name: str) -> AppSpec:
    """The spec of one app.

    Raises:
        MedTransferError: unknown app.
    """
    apps = discover_apps()
    if name not in apps:
        raise MedTransferError(f"unknown app '{name}' (installed: {', '.join(apps) or 'none'})")
    return apps[name]


def hook(name: str, which: str) -> Callable[..., Any]:
    """Resolve one hook of one app, with a clear error when the app lacks it.

    Args:
        name: app name.
        which: an :class:`AppSpec` hook field (a key of :data:`HOOKS`).

    Raises:
        MedTransferError: unknown app, or the app declares no such hook.
    """
    spec = get_app(name)
    ref = getattr(spec, which)
    if not ref:
        raise MedTransferError(f"app '{name}' has no {which} hook")
    return load_object(ref)


def accepts(fn: Callable[..., Any], *params: str) -> bool:
    """Whether ``fn`` can be called with each of ``params`` as a keyword (directly or via ``**kw``)."""
    sig = inspect.signature(fn)
    kinds = {p.name: p.kind for p in sig.parameters.values()}
    if any(k is inspect.Parameter.VAR_KEYWORD for k in kinds.values()):
        return True
    ok = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return all(kinds.get(p) in ok for p in params)


def hook_problems(spec: AppSpec) -> list[str]:
    """What is wrong with one spec's hooks (empty when it keeps the contract).

    Every declared hook must resolve and accept the parameters :data:`HOOKS` names; every
    importer must accept ``(root, out_csv)``; every declared backbone must name a builder.

    Returns:
        One line per problem.
    """
    problems: list[str] = []
    refs = [(f, getattr(spec, f), HOOKS[f]) for f in HOOKS if getattr(spec, f)]
    refs += [(f"importer '{n}'", r, IMPORTER_PARAMS) for n, r in spec.importers.items()]
    refs += [(f"backbone '{n}'", d.get("builder", ""), ()) for n, d in spec.backbones.items()]
    for what, ref, params in refs:
        try:
            obj = load_object(ref)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            problems.append(f"{spec.name}: {what} '{ref}' does not resolve: {type(e).__name__}: {e}")
            continue
        if params and not (callable(obj) and accepts(obj, *params)):
            problems.append(f"{spec.name}: {what} '{ref}' does not accept ({', '.join(params)})")
    for n, d in spec.backbones.items():
        unknown = set(d) - set(BACKBONE_KEYS)
        if unknown:
            problems.append(f"{spec.name}: backbone '{n}' has unknown keys {sorted(unknown)}")
    return problems
