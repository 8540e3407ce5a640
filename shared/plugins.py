"""How apps plug into the core without the core importing them by name.

Each app declares an entry point in the ``medtransfer.apps`` group of pyproject.toml pointing at
an :class:`AppSpec` in its torch-free ``plugin`` module, e.g.::

    [project.entry-points."medtransfer.apps"]
    eeg = "medtransfer.apps.eeg.plugin:SPEC"

Every hook is an import string ``"module:attr"`` resolved only when used, so ``medtransfer
--help`` and the runtime stay fast and torch-free.  Torch-free.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from medtransfer.shared.utils.errors import MedTransferError


@dataclass(frozen=True)
class AppSpec:
    """What an app gives the core.

    Attributes:
        name: app name (``cardiac``, ``eeg``, ``videoseg``, ``wsi``); the CLI group name.
        help: one line for ``medtransfer --help``.
        cli: ``"module:attr"`` of the app's typer.Typer group (module must import lazily).
        predictor: ``"module:Class"`` of the torch-free predictor (see runtime.predictor).
        exporter: ``"module:func"``; ``func(run_dir, out_dir, quantize=None) -> Path``.
        demo: ``"module:func"``; ``func(out_dir: Path, fast: bool) -> dict`` (a report section).
        bench: ``"module:func"``; ``func(**opts) -> dict`` of measured figures.
        importers: dataset name -> ``"module:func"``; ``func(root, out_csv, **opts) -> Path``.
        data_cards: names of files in ``data_cards/`` this app relies on.
    """

    name: str
    help: str
    cli: str | None = None
    predictor: str | None = None
    exporter: str | None = None
    demo: str | None = None
    bench: str | None = None
    importers: dict[str, str] = field(default_factory=dict)
    data_cards: tuple[str, ...] = ()


def load_object(ref: str) -> Any:
    """Import ``"pkg.module:attr"`` and return the attribute."""
    mod, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


_CORE: dict[str, AppSpec] = {}


def register_core_app(spec: AppSpec) -> None:
    """Register a spec that lives in shared/ (the core's own small image task)."""
    _CORE[spec.name] = spec


@functools.lru_cache(maxsize=1)
def _discover() -> tuple[tuple[str, AppSpec], ...]:
    return tuple(_discover_uncached().items())


def discover_apps() -> dict[str, AppSpec]:
    """All app specs (cached): the core's own plus every ``medtransfer.apps`` entry point."""
    return dict(_discover())


def _discover_uncached() -> dict[str, AppSpec]:
    """All app specs: the core's own plus every ``medtransfer.apps`` entry point.

    Returns:
        name -> AppSpec, sorted by name.
    """
    import medtransfer.shared.core_app  # noqa: F401  (registers the core image task)

    found: dict[str, AppSpec] = dict(_CORE)
    for ep in entry_points(group="medtransfer.apps"):
        try:
            spec = ep.load()
        except Exception as e:  # a broken app must not take the CLI down
            import sys

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
    """Resolve one hook of one app, with a clear error when the app lacks it."""
    spec = get_app(name)
    ref = getattr(spec, which)
    if not ref:
        raise MedTransferError(f"app '{name}' has no {which}")
    return load_object(ref)
