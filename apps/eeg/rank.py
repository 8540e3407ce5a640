"""The eeg ``rank_features`` hook: frozen braindecode features of the target's training recordings.

A candidate is a run folder (its model and its preprocessing), a bundle (through its run folder),
or a registry name of the four eeg architectures (``shallow``, ``deep4``, ``tcn``, ``eegnet``) with
local weights (loaded ``strict=False``, as the paper's transfer does) or randomly initialised
(seed 0).  The feature of a window is the input of the network's ``final_layer``; a recording's
feature is the mean over its windows (one sample per recording, so the cross-validated probes never
see windows of the same recording on both sides).  Target: 0 = normal, 1 = abnormal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medtransfer.shared.utils.errors import MedTransferError


def _model_and_cfg(candidate: Any, opts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import torch

    from medtransfer.apps.eeg.train import MODELS, build_model, load_run, make_config
    from medtransfer.shared.transferability.features import dotted_overrides

    if candidate.path is not None:  # run (or a bundle's run)
        model, cfg = load_run(candidate.path)
        return model, dict(cfg)
    if candidate.backbone not in MODELS:
        raise MedTransferError(f"'{candidate.backbone}' is not an eeg architecture ({', '.join(MODELS)})")
    cfg = make_config(overrides=[*dotted_overrides(opts), f"model.name={candidate.backbone}"])
    torch.manual_seed(0)
    model = build_model(cfg)
    if candidate.weights is not None:
        from medtransfer.shared.registry.weights import load_pretrained

        load_pretrained(model, candidate.weights, strict=False)
    return model.eval(), cfg


def rank_features(
    candidate: Any, manifest: Path, batch_size: int = 64, max_windows: int = 0, **opts: Any
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(features (1, D), target (1,))`` per training recording of the manifest.

    Args:
        candidate: a resolved ``shared.transferability.rank.Candidate``.
        manifest: the target manifest (labels normal / abnormal; splits assigned as training does).
        batch_size: windows per forward pass.
        max_windows: windows per recording at most (0 = all).
        **opts: ``data.*`` / ``model.*`` overrides for registry candidates; ``cache_dir`` for the
            preprocessing cache (default: beside the manifest, shared with training).
    """
    import torch

    from medtransfer.apps.eeg.data import LABELS, load_split
    from medtransfer.shared.transferability.features import head_input_features

    model, cfg = _model_and_cfg(candidate, dict(opts))
    dcfg = dict(cfg["data"])
    # the target's windows go to the target's cache, never to the cache folder the candidate run recorded
    dcfg["cache_dir"] = str(opts.get("cache_dir") or Path(manifest).resolve().parent / ".eeg_cache")
    splits, _ = load_split(Path(manifest), dcfg, ["train"], progress=False)
    for rec in splits["train"]:
        win = np.load(rec.file, mmap_mode="r")
        if max_windows:
            win = win[:max_windows]
        feats = [
            head_input_features(model, "final_layer", torch.from_numpy(np.array(win[i : i + batch_size], np.float32)))
            for i in range(0, len(win), batch_size)
        ]
        if not feats:
            continue
        yield np.concatenate(feats).mean(0, keepdims=True), np.array([LABELS.index(rec.label)], np.int64)


def rank_demo(base: Path, demo_out: Path, fast: bool) -> dict[str, Any]:
    """The "Which source?" validation of this app at demo scale (see ``shared.transferability.demo``).

    Args:
        base: work folder.
        demo_out: the demo's output folder (its runs are reused where present).
        fast: demo scale.

    Returns:
        ``{"labels": {candidate: label}, "ranking": rank() result, "results": {candidate: fine-tuned result},
        "what": what the result is}`` (higher result = better).
    """
    from medtransfer.apps.eeg import synthetic as S
    from medtransfer.apps.eeg.data import import_nmt, import_tuab
    from medtransfer.apps.eeg.demo import demo_config
    from medtransfer.apps.eeg.train import evaluate, train
    from medtransfer.shared.rundir import RunDir
    from medtransfer.shared.transferability.rank import rank

    n, ne, dur = (8, 3, 42.0) if fast else (20, 6, 130.0)
    cfg = demo_config(fast)
    dopts = {k: cfg["data"][k] for k in ("window_seconds", "crop_start_s", "crop_max_s", "sfreq")}
    work = demo_out / "work" / "eeg"
    data = work / "data" if (work / "data" / "nmt.csv").is_file() else base / "data"
    cfg["data"]["cache_dir"] = str(data / ".eeg_cache")
    if not (data / "nmt.csv").is_file():  # no demo folder to reuse: the demo's data, made here
        S.make_tuab(data / "tuab", n, ne, dur, seed=0)
        S.make_nmt(data / "nmt_scalp_eeg_dataset", n, ne, dur, seed=1)
        import_tuab(data / "tuab", data / "tuab.csv", **dopts)
        import_nmt(data / "nmt_scalp_eeg_dataset", data / "nmt.csv", **dopts)
    target = data / "nmt.csv"
    tuab_run = work / "runs" / "tuab_source"
    if not (tuab_run / "run.json").is_file():
        tuab_run = base / "runs" / "tuab_source"
        train(data / "tuab.csv", tuab_run, cfg, progress=False)
    site2 = base / "data" / "nmt_site2"
    if not (site2 / "Labels.csv").is_file():
        S.make_nmt(site2, n, ne, dur, seed=2)
    site2_csv = base / "data" / "nmt_site2.csv"
    if not site2_csv.is_file():
        import_nmt(site2, site2_csv, **dopts)
    nmt_run = base / "runs" / "nmt_like_source"
    if not RunDir(nmt_run, must_exist=False).has_checkpoint("best"):  # a rerun reuses it (same data, same seed)
        train(site2_csv, nmt_run, cfg, progress=False)
    labels = {
        str(tuab_run): "TUAB source (shallow)",
        str(nmt_run): "NMT-like source (shallow, 2nd site)",
        "shallow": "scratch shallow",
        "eegnet": "scratch eegnet",
        "deep4": "scratch deep4",
    }
    res = rank(
        "eeg",
        target,
        list(labels),
        base / "rank",
        allow_random_init=True,
        opts={f"data.{k}": v for k, v in dopts.items()},
        progress=False,
    )
    results = {}
    for spec in labels:
        c = json.loads(json.dumps(cfg))
        init = spec if Path(spec).is_dir() else None
        c["model"]["name"] = "shallow" if init else spec
        run = base / "finetune" / Path(spec).name
        train(target, run, c, init=init, progress=False)
        results[spec] = float(evaluate(run, target, split="test", progress=False, write=False)["balanced_accuracy"])
    src = "the eeg demo's data and TUAB run" if data == work / "data" else "data and a TUAB run made here"
    what = (
        f"test balanced accuracy ({src}; whole network fine-tuned {cfg['train']['epochs']} epochs on "
        f"{2 * n} train/val recordings of {dur:.0f} s, {cfg['data']['sfreq']:g} Hz)"
    )
    return {"labels": labels, "ranking": res, "results": results, "what": what}
