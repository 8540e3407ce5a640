"""Adversarial robustness of a run's model (torch): FGSM and PGD at budgets in input units.

``medtransfer audit BUNDLE --run RUN`` records the model inputs the bundle's predictor built for
each plain answer (after its own preprocessing), rebuilds the run's model with
``RunDir.load_model`` and attacks those inputs under an L-infinity budget ``epsilon`` given in the
input's own units: microvolts for EEG (the model input is in µV), 0-255 intensity units for images
(converted with the bundle's normalisation, ``epsilon / (255 * std)``, and kept inside the valid
pixel range).  Every model input (an image, an echo frame, an EEG window) carries its case's label.

- FGSM (Goodfellow et al. 2015): one signed-gradient step of size ``epsilon``.
- PGD (Madry et al. 2018): ``steps`` signed-gradient steps of ``2.5 * epsilon / steps``, projected
  back into the ``epsilon`` ball (and the valid range) after each, starting from the clean input.

Single-input classifiers only (image, cardiac view, EEG): bundles with several model inputs (wsi
bags with masks) or streaming graphs (videoseg) get a note instead of a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: default budgets per unit
EPSILONS = {"µV": (0.0, 0.25, 0.5, 1.0, 2.0, 5.0), "intensity (0-255)": (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)}
PGD_STEPS = 10
MAX_SAMPLES = 256


def input_units(preprocessing: dict[str, Any]) -> tuple[str, float, tuple[float, float] | None]:
    """(unit name, model units per input unit, valid model-input range or None) for a bundle.

    Image bundles normalise ``(x / 255 - mean) / std``; anything else (EEG) feeds physical units.
    """
    if "mean" in preprocessing and "std" in preprocessing:
        mean, std = float(preprocessing["mean"]), float(preprocessing["std"])
        return "intensity (0-255)", 1.0 / (255.0 * std), ((0.0 - mean) / std, (1.0 - mean) / std)
    return "µV", 1.0, None


def _logits(model: Any, x: Any) -> Any:
    out = model(x)
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def attack(model: Any, x: Any, y: Any, eps: float, steps: int, lo_hi: tuple[float, float] | None, pgd: bool) -> Any:
    """The adversarial inputs (FGSM, or PGD with ``steps`` steps) within ``eps`` (model units) of ``x``."""
    import torch
    import torch.nn.functional as F

    if eps <= 0:
        return x
    x_adv = x.clone()
    n, step = (steps, 2.5 * eps / steps) if pgd else (1, eps)
    for _ in range(n):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(_logits(model, x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + step * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
            if lo_hi is not None:
                x_adv = x_adv.clamp(*lo_hi)
        x_adv = x_adv.detach()
    return x_adv


def adversarial_audit(
    run_dir: str | Path,
    bundle: Any,
    captured: list[tuple[int, dict[str, np.ndarray]]],
    labels: list[str],
    epsilons: list[float] | None = None,
    steps: int = PGD_STEPS,
    max_samples: int = MAX_SAMPLES,
) -> dict[str, Any]:
    """FGSM / PGD accuracy versus epsilon on the recorded model inputs.

    Args:
        run_dir: the run the bundle was exported from (``RunDir.load_model`` rebuilds its model).
        bundle: the loaded bundle (labels, preprocessing).
        captured: ``(case index, feeds)`` of each model call of the plain answers.
        labels: the label of each captured call's case.
        epsilons: budgets in input units (default :data:`EPSILONS` for the unit).
        steps: PGD steps.
        max_samples: at most this many model inputs (evenly spaced).

    Returns:
        ``{"unit", "n_samples", "results": [{"epsilon", "fgsm_accuracy", "pgd_accuracy"}]}`` or
        ``{"note": why not}``.
    """
    import torch

    from medtransfer.shared.rundir import RunDir

    names = {tuple(sorted(f)) for _, f in captured}
    if not captured or len(names) != 1 or len(next(iter(names))) != 1:
        return {"note": "not run: the bundle's model takes several inputs or none were recorded (classifiers only)"}
    classes = list(bundle.labels or [])
    xs, ys = [], []
    for (_, feeds), lab in zip(captured, labels):
        if lab not in classes:
            continue
        x = next(iter(feeds.values()))
        xs.append(x)
        ys += [classes.index(lab)] * len(x)
    if not xs:
        return {"note": "not run: no case label is one of the bundle's labels"}
    x_all = np.concatenate(xs).astype(np.float32)
    y_all = np.asarray(ys, np.int64)
    if len(x_all) > max_samples:
        keep = np.linspace(0, len(x_all) - 1, max_samples).round().astype(int)
        x_all, y_all = x_all[keep], y_all[keep]
    unit, per_unit, lo_hi = input_units(dict(bundle.preprocessing or {}))
    eps_list = [float(e) for e in (epsilons or EPSILONS[unit])]
    model, _ = RunDir(run_dir).load_model()
    model = model.float().eval()
    xt = torch.from_numpy(x_all)
    yt = torch.from_numpy(y_all)
    results = []
    for e in eps_list:
        row: dict[str, Any] = {"epsilon": e}
        for name, pgd in (("fgsm", False), ("pgd", True)):
            xa = attack(model, xt, yt, e * per_unit, steps, lo_hi, pgd)
            with torch.no_grad():
                acc = float((_logits(model, xa).argmax(1) == yt).float().mean())
            row[f"{name}_accuracy"] = acc
        results.append(row)
    return {"unit": unit, "n_samples": int(len(x_all)), "pgd_steps": steps, "results": results}
