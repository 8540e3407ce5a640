"""The image task's ``rank_features`` hook: pooled features of the target manifest's training images.

A candidate is an image run folder (its model and its preprocessing), a bundle (through its run
folder), or a registry backbone (``resnet18``...) with local weights, or randomly initialised
(seed 0), read with the recipe's preprocessing (``--opt data.size=64`` etc. override it).  The
feature of an image is the classifier's input (timm ``forward_head(..., pre_logits=True)``).
Target: the class index.  The splits are the target's, assigned exactly as ``image train`` assigns
them (recipe split fractions and seed, ``--opt data.*`` overrides).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medtransfer.shared.utils.errors import MedTransferError


def _pooled(model: Any, x: Any) -> Any:
    """The pre-logits features of a timm-style classifier (its pooled output when it has no head)."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    return model(x)


def rank_features(
    candidate: Any, manifest: Path, batch_size: int = 32, **opts: Any
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(features (b, D), class index (b,))`` batches of the manifest's training images.

    Args:
        candidate: a resolved ``shared.transferability.rank.Candidate``.
        manifest: an image manifest (``path,label[,split,group]``).
        batch_size: images per forward pass.
        **opts: ``data.*`` overrides (registry candidates' preprocessing and the split assignment).
    """
    import torch

    from medtransfer.shared.config import resolve_config
    from medtransfer.shared.imagetask.data import load_image
    from medtransfer.shared.imagetask.task import _prep, _split, defaults, load_run
    from medtransfer.shared.manifest import by_split, read_manifest
    from medtransfer.shared.transferability.features import dotted_overrides

    cfg = resolve_config(defaults(), None, dotted_overrides(opts))
    recs = read_manifest(manifest, require_label=True)
    _split(recs, cfg)
    train = by_split(recs, "train")
    labels = sorted({r.label for r in recs})
    if candidate.path is not None:
        model, _, _, prep = load_run(candidate.path)
    else:
        from medtransfer.shared.registry import create_model

        prep = _prep(cfg)
        torch.manual_seed(0)
        try:
            model = create_model(
                str(candidate.backbone),
                pretrained=candidate.weights or False,
                num_classes=0,
                in_chans=1 if prep["grayscale"] else 3,
            )
        except MedTransferError:
            raise
        except Exception as e:  # noqa: BLE001 - a backbone that does not build as an image encoder
            raise MedTransferError(
                f"'{candidate.backbone}' does not build as an image encoder ({type(e).__name__})"
            ) from None
    model.eval()
    for i in range(0, len(train), batch_size):
        chunk = train[i : i + batch_size]
        x = torch.from_numpy(np.stack([load_image(r.path, prep) for r in chunk]))
        with torch.no_grad():
            f = _pooled(model, x).float().reshape(len(x), -1).numpy()
        yield f, np.array([labels.index(r.label) for r in chunk], np.int64)
