"""Export an eeg run to an ONNX bundle (window logits; recording aggregation done by the predictor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtransfer.apps.eeg.data import LABELS
from medtransfer.apps.eeg.io import pp_config, window_samples
from medtransfer.shared.rundir import RunDir
from medtransfer.shared.runtime.gates import limits_for


def export_run(
    run_dir: str | Path, out_dir: str | Path, quantize: str | None = None, overwrite: bool = True, force: bool = False
) -> Path:
    """Write ``model.onnx`` (input ``eeg`` [batch, channels, samples] in microvolts after the
    recipe, output ``logits`` [batch, 2]), ``metadata.json`` with the preprocessing recipe, and the
    model card.

    Args:
        run_dir: a run folder written by ``medtransfer eeg train``.
        out_dir: bundle folder.
        quantize: ``"int8"`` also writes ``model_int8.onnx``.
        overwrite: replace an existing bundle at ``out_dir`` (the CLI asks for ``--overwrite``).
        force: export even below the trivial baseline (the bundle is then marked unreliable).

    Returns:
        The bundle folder (absolute), written atomically (see ``shared.export.export_bundle``).
    """
    from medtransfer.shared.export import export_bundle

    return export_bundle(run_dir, out_dir, _write_bundle_files, quantize, overwrite, force)


def _write_bundle_files(run_dir: str | Path, out_dir: Path, quantize: str | None) -> Path:
    """Write the bundle into ``out_dir`` (the staging folder of :func:`export_run`)."""
    import torch

    from medtransfer.apps.eeg.train import load_run
    from medtransfer.shared.export import export_onnx, quantize_int8, write_bundle

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, cfg = load_run(run_dir)
    info = RunDir(run_dir).info()
    pp = pp_config(cfg["data"])
    c, t = len(pp["channels"]), window_samples(pp)
    g = torch.Generator().manual_seed(0)
    ex = (torch.randn(2, c, t, generator=g) * 20.0,)
    parity = export_onnx(
        model,
        ex,
        out_dir / "model.onnx",
        ["eeg"],
        ["logits"],
        dynamic={"eeg": {0: "batch"}},
        atol=1e-3,
        parity_args=[(torch.randn(3, c, t, generator=g) * 20.0,)],
    )
    files = [out_dir / "model.onnx"]
    if quantize == "int8":
        files.append(quantize_int8(out_dir / "model.onnx", out_dir / "model_int8.onnx"))
    metrics: dict[str, Any] = {"onnx_parity_max_abs_diff": parity["max_abs_diff"]}
    for f in sorted(run_dir.glob("eval_*.json")):
        m = json.loads(f.read_text())
        metrics[f.stem] = {k: v for k, v in m.items() if isinstance(v, (int, float))}
    summ = run_dir / "summary.json"
    if summ.is_file():
        metrics["validation"] = json.loads(summ.read_text()).get("best", {})
    name = cfg["model"]["name"]
    write_bundle(
        out_dir,
        name=f"eeg-pathology-{name}",
        app="eeg",
        task="pathology",
        files=files,
        inputs={
            "eeg": {
                "shape": [-1, c, t],
                "dtype": "float32",
                "unit": "uV",
                "channel_def": pp["channels"],
                "sfreq": pp["sfreq"],
            }
        },
        outputs={"logits": {"shape": [-1, len(LABELS)], "dtype": "float32", "classes": list(LABELS)}},
        preprocessing={
            **pp,
            "aggregation": "mean of window softmax probabilities",
            "threshold": float(info.get("threshold", 0.5)),
        },
        labels=list(LABELS),
        metrics=metrics,
        data_card="data_cards/tuab.md",
        description=(
            f"braindecode {name} classifying {pp['window_seconds']:g} s EEG windows as normal/abnormal; "
            "a recording's answer is the mean of its window probabilities."
        ),
        extra={
            "init": info.get("init", {}),
            "model_name": name,
            "run_dir": str(run_dir.resolve()),
            "gates": limits_for("eeg_"),
        },
    )
    return out_dir
