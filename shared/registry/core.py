"""The registry itself: ``register_model`` / ``create_model`` / ``list_models``.

Besides the built-in families, apps add backbones by declaring them in their spec
(``AppSpec.backbones``, see shared/plugins.py): the entry is listed from the declaration and its
builder module is imported only when the model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from medtransfer.shared.utils.errors import MedTransferError


@dataclass
class ModelEntry:
    """A registered model.

    Attributes:
        name: registry name.
        family: ``timm``, ``monai``, ``braindecode``, ``sam2``, ``mil`` or an app's own.
        builder: ``builder(**kwargs) -> nn.Module``.
        pretrained_cfg: ``filename`` (looked up in the weights dirs), optional ``sha256``, ``url``
            (used only with ``MEDTRANSFER_ALLOW_DOWNLOAD=1``), ``source``, ``license``.
        head: module-name prefixes of the task head (for linear probe / unfreezing).
        description: one line.
    """

    name: str
    family: str
    builder: Callable[..., Any]
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    head: tuple[str, ...] = ()
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}
_DECLARED_LOADED = False


def _lazy_builder(ref: str) -> Callable[..., Any]:
    """A builder that imports ``"module:func"`` on first call (keeps listing torch-free)."""

    def build(**kwargs: Any) -> Any:
        from medtransfer.shared.plugins import load_object

        return load_object(ref)(**kwargs)

    build.__qualname__ = build.__name__ = f"lazy[{ref}]"
    return build


def _load_declared() -> None:
    """Register every app's declared backbones once (a built-in name is never replaced)."""
    global _DECLARED_LOADED
    if _DECLARED_LOADED:
        return
    _DECLARED_LOADED = True
    from medtransfer.shared.plugins import discover_apps

    for spec in discover_apps().values():
        for name, d in spec.backbones.items():
            if name in _REGISTRY:
                import sys

                print(
                    f"warning: app '{spec.name}' declares backbone '{name}', which is already registered; "
                    "keeping the registered one",
                    file=sys.stderr,
                )
                continue
            register_model(
                name,
                family=d.get("family", spec.name),
                pretrained_cfg=d.get("pretrained_cfg"),
                head=tuple(d.get("head", ())),
                description=d.get("description", ""),
            )(_lazy_builder(d["builder"]))


def register_model(
    name: str,
    family: str,
    pretrained_cfg: dict[str, Any] | None = None,
    head: tuple[str, ...] | list[str] = (),
    description: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``builder(**kwargs) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = ModelEntry(name, family, fn, dict(pretrained_cfg or {}), tuple(head), description)
        return fn

    return deco


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``.

    Raises:
        MedTransferError: unknown name (listing close names).
    """
    _load_declared()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(_REGISTRY))}"
        raise MedTransferError(f"unknown model '{name}'{hint}")
    return _REGISTRY[name]


def list_models(family: str | None = None) -> list[str]:
    """Registered names (built-in and app-declared), optionally of one family."""
    _load_declared()
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def create_model(
    name: str,
    pretrained: bool | str | Path = False,
    weights_dir: str | Path | None = None,
    strict: bool = False,
    **kwargs: Any,
):
    """Build a registered model, optionally loading local pretrained weights.

    Args:
        name: registry name.
        pretrained: False; True (the registry's file in the weights dirs, sha256-checked); or a path.
        weights_dir: extra folder searched for weight files.
        strict: require every tensor to match when loading.
        **kwargs: passed to the builder (``num_classes``, ``in_chans``, ``n_chans`` ...).

    Returns:
        The ``torch.nn.Module``, with ``model.registry_name`` and ``model.transfer_head`` set.
    """
    entry = get_entry(name)
    model = entry.builder(**kwargs)
    if pretrained:
        from medtransfer.shared.registry.weights import load_pretrained, resolve_weights

        path = resolve_weights(name, pretrained, entry.pretrained_cfg, weights_dir)
        info = load_pretrained(model, path, strict=strict)
        model.pretrained_report = {
            "file": str(path),
            **{k: v if isinstance(v, float) else len(v) for k, v in info.items()},
        }
    model.registry_name = name
    if not hasattr(model, "transfer_head"):
        model.transfer_head = list(entry.head)
    return model
