"""Torch-free recording-level predict: EDF/BDF/.set/.vhdr -> the bundle's recipe -> ONNX window
probabilities -> mean -> label, with an optional per-window abnormality trace plot.

EDF files are read once with edfio (``medtransfer[eeg]``); MNE (and SciPy) are imported only for the
other formats and for EDF files only MNE decodes (``medtransfer[eeg-mne]``), keeping the cold start short."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.apps.eeg.io import SUFFIXES, preprocess_recording, require_readers
from medtransfer.shared.runtime.gates import mark_unreliable
from medtransfer.shared.runtime.predictor import Opt, Predictor, softmax
from medtransfer.shared.utils.errors import InputError


class EEGPredictor(Predictor):
    """Normal / abnormal for one recording.

    Options: ``out_dir`` (folder for plots), ``plot`` (write ``out_dir/<input key>/trace.png``, the key
    being the input's path relative to ``input_root`` without its suffix; no plot without ``out_dir``),
    ``batch`` (windows per ONNX call, default 32), ``threshold`` (default from the bundle).

    Plausibility gates (``shared.runtime.gates``, limits overridable by the bundle's ``gates``
    metadata): NaN / inf samples are an error; amplitude beyond the EEG range, flat or saturated
    channels and EDF/BDF channels with an empty header range give ``unreliable: true`` with
    ``reasons``.  Every answer carries ``unreliable`` and ``reasons``.
    """

    suffixes = SUFFIXES
    modalities = ("eeg",)
    options_spec = {"batch": Opt("int", 1, 4096), "threshold": Opt("number", 0.0, 1.0)}
    preprocessing_spec = {"threshold": Opt("number", 0.0, 1.0), "sfreq": Opt("number", 1.0, 100_000.0)}

    def __init__(self, bundle: Any, **options: Any) -> None:
        require_readers()  # one line naming medtransfer[eeg] when edfio is not installed
        super().__init__(bundle, **options)
        self.pp = {k: v for k, v in bundle.preprocessing.items() if k not in ("aggregation", "threshold")}
        thr = self.options.get("threshold")  # 0 is a threshold, not "unset"
        self.threshold = float(bundle.preprocessing.get("threshold", 0.5) if thr is None else thr)
        self.labels = bundle.labels or ["normal", "abnormal"]
        self.gates = dict((getattr(bundle, "meta", None) or {}).get("gates") or {})

    def predict(self, path: Path, **case: Any) -> dict[str, Any]:
        """Answer one recording.

        Returns:
            ``label``, ``probability`` (abnormal), ``n_windows``, ``window_probabilities``,
            ``channels_mapped`` and ``plot`` when asked.

        Raises:
            InputError: unreadable file, missing channels, too short, NaN, low rate, non-finite model
                output (flat and saturated channels are reasons, see the class notes).
        """
        path = Path(path)
        out_dir = self.artefact_dir(path) if self.options.get("plot") else None  # refuse a clash before any work
        win, info = preprocess_recording(path, self.pp, gates=self.gates or True, transform=self.input_hook("eeg"))
        bs = int(self.options.get("batch") or 32)
        probs = []
        for i in range(0, len(win), bs):
            x = win[i : i + bs]
            logits = self.bundle.run({"eeg": x.astype(np.float32)})["logits"]
            probs.append(softmax(logits, axis=1)[:, self.labels.index("abnormal")])
        p = np.concatenate(probs)
        if not np.all(np.isfinite(p)):
            raise InputError(path, "the model gave non-finite probabilities for this recording")
        prob = float(p.mean())
        out: dict[str, Any] = {
            "label": "abnormal" if prob >= self.threshold else "normal",
            "probability": round(prob, 6),
            "n_windows": int(len(p)),
            "window_probabilities": [round(float(v), 5) for v in p],
            "channels_mapped": len(info["mapped"]),
        }
        if info["filled"]:
            out["channels_zero_filled"] = info["filled"]
        mark_unreliable(out, info.get("reasons") or [])
        if out_dir is not None:
            out["plot"] = str(self._plot(path, out_dir, p, prob))
        return out

    def _plot(self, path: Path, out_dir: Path, p: np.ndarray, prob: float) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out_dir.mkdir(parents=True, exist_ok=True)
        w = float(self.pp["window_seconds"])
        t0 = float(self.pp["crop_start_s"])
        edges = t0 + w * np.arange(len(p) + 1)
        fig, ax = plt.subplots(figsize=(7, 2.6))
        ax.stairs(p, edges, color="tab:red", lw=1.5, label="window P(abnormal)")
        ax.axhline(self.threshold, ls="--", color="grey", lw=0.8, label="threshold")
        ax.axhline(prob, ls=":", color="k", lw=1, label=f"recording mean {prob:.2f}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("time in recording (s)")
        ax.set_ylabel("P(abnormal)")
        ax.set_title(f"{path.name}: per-window abnormality", fontsize=9)
        ax.legend(fontsize=7, loc="center right", framealpha=0.8)
        fig.tight_layout()
        f = out_dir / "trace.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        return f
