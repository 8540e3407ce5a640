"""Pretrained weights from local files, sha256-checked; hub downloads only on explicit opt-in.

Lookup order for ``pretrained=True``: ``weights_dir`` argument, then ``$MEDTRANSFER_WEIGHTS``,
then ``~/.cache/medtransfer/weights``; the file name comes from the registry entry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medtransfer.shared.utils.errors import WeightsError
from medtransfer.shared.utils.hashing import sha256_file

ENV_DIR = "MEDTRANSFER_WEIGHTS"
ENV_ALLOW_DOWNLOAD = "MEDTRANSFER_ALLOW_DOWNLOAD"


def weight_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for weight files, in order."""
    dirs: list[Path] = []
    if weights_dir:
        dirs.append(Path(weights_dir))
    if os.environ.get(ENV_DIR):
        dirs += [Path(p) for p in os.environ[ENV_DIR].split(os.pathsep) if p]
    dirs.append(Path.home() / ".cache" / "medtransfer" / "weights")
    return dirs


def resolve_weights(
    model_name: str,
    pretrained: bool | str | Path,
    cfg: dict[str, Any] | None,
    weights_dir: str | Path | None = None,
) -> Path:
    """Find the weight file for a model.

    Args:
        model_name: registry name (for messages).
        pretrained: True (look up the registry's file name) or an explicit path.
        cfg: the entry's pretrained config (``filename``, optional ``sha256``, ``url``).
        weights_dir: an extra folder to search first.

    Returns:
        Path of an existing, hash-checked file.

    Raises:
        WeightsError: file missing (naming the expected file and where it was looked for) or
            hash mismatch.
    """
    cfg = cfg or {}
    if not isinstance(pretrained, bool):
        path = Path(pretrained)
        if not path.is_file():
            raise WeightsError(f"{path}: pretrained weights file for '{model_name}' not found")
    else:
        fname = cfg.get("filename")
        if not fname:
            raise WeightsError(
                f"'{model_name}' has no registered weight file name: pass pretrained=PATH to a local file"
            )
        dirs = weight_dirs(weights_dir)
        found = [d / fname for d in dirs if (d / fname).is_file()]
        if not found:
            if os.environ.get(ENV_ALLOW_DOWNLOAD) == "1" and cfg.get("url"):
                return _download(cfg["url"], dirs[0] / fname, cfg.get("sha256"))
            where = ", ".join(str(d) for d in dirs)
            hint = f" (or set {ENV_ALLOW_DOWNLOAD}=1 to allow a download from {cfg['url']})" if cfg.get("url") else ""
            raise WeightsError(
                f"pretrained weights for '{model_name}' not found: expected file '{fname}' in one of: {where}; "
                f"put it there or set ${ENV_DIR}{hint}"
            )
        path = found[0]
    want = cfg.get("sha256")
    if want and isinstance(pretrained, bool):
        got = sha256_file(path)
        if got != want:
            raise WeightsError(f"{path}: sha256 {got[:12]}... does not match the registry's {want[:12]}...")
    return path


def _download(url: str, dest: Path, sha256: str | None) -> Path:  # pragma: no cover - needs network
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    urllib.request.urlretrieve(url, tmp)
    if sha256 and sha256_file(tmp) != sha256:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"{url}: downloaded file does not match sha256")
    tmp.replace(dest)
    return dest


def read_state_dict(path: Path) -> dict[str, Any]:
    """Read a state dict from .pt/.pth/.bin (torch) or .safetensors, unwrapping common wrappers."""
    from medtransfer.shared.rundir import load_checkpoint_file

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - any unreadable file is one line
            raise WeightsError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    else:
        sd = load_checkpoint_file(path)  # weights_only=True: a pickle with code is refused
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}


#: a starting point must give at least this share of the model's parameter elements: a run of another
#: app gave 0 %; an EEG run moved to another channel set gives ~8 % (its temporal filters), a new head
#: or new adapters leave most of the model loaded
MIN_LOADED_SHARE = 0.05


def load_pretrained(model, path: "Path | dict", strict: bool = False, skip_mismatch: bool = True) -> dict[str, Any]:
    """Load weights into a model, skipping tensors whose shape differs (a new head, other in_chans).

    Args:
        model: the torch module.
        path: weight file, or an already-verified state dict (e.g. from ``RunDir.load_checkpoint``).
        strict: raise on missing / unexpected keys.
        skip_mismatch: drop tensors whose shapes differ instead of failing.

    Returns:
        ``{"missing": [...], "unexpected": [...], "skipped": [...], "loaded_share": float}`` (the share
        of the model's parameter elements the weights gave).
    """
    sd = dict(path) if isinstance(path, dict) else read_state_dict(Path(path))
    own = model.state_dict()
    skipped = []
    if skip_mismatch:
        for k in list(sd):
            if k in own and tuple(own[k].shape) != tuple(sd[k].shape):
                a, b = own[k], sd[k]
                if (
                    a.ndim == b.ndim == 4
                    and a.shape[0] == b.shape[0]
                    and a.shape[2:] == b.shape[2:]
                    and a.shape[1] == 1
                ):
                    sd[k] = b.sum(dim=1, keepdim=True)  # RGB stem -> grayscale stem (timm's rule)
                    continue
                skipped.append(k)
                sd.pop(k)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    share = sum(p.numel() for n, p in params.items() if n in sd) / total if total else 1.0
    if not strict and own and share < MIN_LOADED_SHARE:  # checked before the model is touched
        where = path if not isinstance(path, dict) else "the starting weights"
        raise WeightsError(
            f"{where}: only {100 * share:.1f}% of the model's weights match it by name and shape (another "
            "architecture, or other channels / input size?); it is not a starting point for this model"
        )
    res = model.load_state_dict(sd, strict=strict)
    missing = list(getattr(res, "missing_keys", []))
    unexpected = list(getattr(res, "unexpected_keys", []))
    return {"missing": missing, "unexpected": unexpected, "skipped": skipped, "loaded_share": round(share, 4)}
