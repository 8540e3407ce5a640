"""The registry itself: ``register_model`` / ``create_model`` / ``list_models``."""
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
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(_REGISTRY))}"
        raise MedTransferError(f"unknown model '{name}'{hint}")
    return _REGISTRY[name]


def list_models(family: str | None = None) -> list[str]:
    """Registered names, optionally of one family."""
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
        model.pretrained_report = {"file": str(path), **{k: len(v) for k, v in info.items()}}
    model.registry_name = name
    if not hasattr(model, "transfer_head"):
        model.transfer_head = list(entry.head)
    return model
