"""``medtransfer eeg ...``: synth, preprocess, train, evaluate, transfer, bonn.

Torch-free at import: heavy modules are imported inside the commands.  Known errors propagate to
``main()`` (one line, exit 2); the old ``--config`` flag ends with one line naming ``--recipe``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from medtransfer.shared.cli.grammar import (
    manifest_option,
    old_option,
    out_option,
    recipe_option,
    renamed,
    set_option,
)
from medtransfer.shared.utils.errors import ConfigError

app = typer.Typer(
    help="EEG normal/abnormal: TUAB/NMT import, paper preprocessing, transfer, ONNX.",
    no_args_is_help=True,
    add_completion=False,
)


def _data_overrides(
    channels: Optional[str],
    sfreq: Optional[float],
    window_seconds: Optional[float],
    crop_start: Optional[float],
    crop_max: Optional[float],
    car: Optional[bool],
    fill_missing: Optional[bool],
    cache_dir: Optional[Path],
    workers: Optional[int],
) -> dict:
    d: dict = {}
    if channels:
        d["channels"] = [c.strip() for c in channels.split(",") if c.strip()]
    for k, v in (
        ("sfreq", sfreq),
        ("window_seconds", window_seconds),
        ("crop_start_s", crop_start),
        ("crop_max_s", crop_max),
    ):
        if v is not None:
            d[k] = float(v)
    if car is not None:
        d["car"] = car
    if fill_missing is not None:
        d["fill_missing"] = fill_missing
    if cache_dir is not None:
        d["cache_dir"] = str(cache_dir)
    if workers is not None:
        d["workers"] = workers
    return d


_CH = typer.Option(None, "--channels", help="comma-separated channel list (default: the paper's 21)")
_SF = typer.Option(None, "--sfreq", help="target sampling rate in Hz (default 100)")
_WS = typer.Option(None, "--window-seconds", help="window length in s (default 60)")
_CS = typer.Option(None, "--crop-start", help="seconds skipped at the start (default 60)")
_CM = typer.Option(None, "--crop-max", help="seconds kept after the start crop (default 300; 0 = all)")
_CAR = typer.Option(None, "--car/--no-car", help="common average reference (default on)")
_FM = typer.Option(None, "--fill-missing/--no-fill-missing", help="zero-fill missing channels (default: refuse)")
_CD = typer.Option(None, "--cache-dir", help="window cache folder (default <manifest folder>/.eeg_cache)")
_WK = typer.Option(None, "--workers", min=1, help="preprocessing processes (default 2)")


def _cfg(
    recipe: Optional[Path],
    sets: Optional[List[str]],
    data: dict,
    model: Optional[str] = None,
    epochs: Optional[int] = None,
    strategy: Optional[str] = None,
    seed: Optional[int] = None,
) -> dict:
    """The resolved config: defaults <- recipe <- flags <- ``--set``."""
    from medtransfer.apps.eeg.train import make_config

    ov: dict = {"data": data}
    if model:
        ov["model"] = {"name": model}
    tr: dict = {}
    if epochs is not None:
        tr["epochs"] = epochs
    if strategy:
        tr["strategy"] = strategy
    if seed is not None:
        tr["seed"] = seed
    if tr:
        ov["train"] = tr
    cfg = make_config(recipe, ov)
    if sets:
        from medtransfer.shared.config import merge, parse_overrides

        cfg = merge(cfg, parse_overrides(sets))
    return cfg


@app.command("synth")
def synth(
    kind: str = typer.Argument(..., help="tuab or nmt"),
    out: Path = out_option(help="folder to write"),
    n_per_class: int = typer.Option(6, help="train recordings per class"),
    eval_per_class: int = typer.Option(3, help="eval recordings per class"),
    duration: float = typer.Option(130.0, help="recording length (s)"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Write a synthetic EDF dataset in the TUAB (v3) or NMT release layout."""
    from medtransfer.apps.eeg import synthetic as S

    if kind == "tuab":
        S.make_tuab(out, n_per_class, eval_per_class, duration, seed=seed)
    elif kind == "nmt":
        S.make_nmt(out, n_per_class, eval_per_class, duration, seed=seed)
    else:
        raise ConfigError(f"kind must be tuab or nmt, got '{kind}'")
    typer.echo(f"wrote {out}")


@app.command("preprocess")
def preprocess(
    manifest: Path = manifest_option(),
    channels: Optional[str] = _CH,
    sfreq: Optional[float] = _SF,
    window_seconds: Optional[float] = _WS,
    crop_start: Optional[float] = _CS,
    crop_max: Optional[float] = _CM,
    car: Optional[bool] = _CAR,
    fill_missing: Optional[bool] = _FM,
    cache_dir: Optional[Path] = _CD,
    workers: Optional[int] = _WK,
    engine: Optional[str] = typer.Option(None, "--engine", help="local (processes, default) or ray (actors)"),
) -> None:
    """Preprocess every recording of a manifest into the window cache (a second run is instant)."""
    from medtransfer.apps.eeg.data import data_cfg, load_split

    cfg = data_cfg(
        {
            **_data_overrides(
                channels, sfreq, window_seconds, crop_start, crop_max, car, fill_missing, cache_dir, workers
            ),
            "engine": engine,
        }
    )
    got, errors = load_split(manifest, cfg, ["train", "val", "test"])
    n = {k: len(v) for k, v in got.items()}
    w = sum(r.n_windows for v in got.values() for r in v)
    typer.echo(json.dumps({"recordings": n, "windows": w, "errors": errors}))


@app.command("train")
def train_cmd(
    manifest: Path = manifest_option(help="manifest CSV (labels normal/abnormal)"),
    out: Path = out_option(help="run folder"),
    init: Optional[Path] = typer.Option(None, "--init", help="source run folder to start from (transfer)"),
    model: Optional[str] = typer.Option(None, "--model", help="shallow | deep4 | tcn | eegnet"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="full | linear_probe | llrd | gradual_unfreeze"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    recipe: Optional[Path] = recipe_option(help="recipe YAML (e.g. apps/eeg/recipes/bonn.yaml)"),
    set_: Optional[List[str]] = set_option(),
    channels: Optional[str] = _CH,
    sfreq: Optional[float] = _SF,
    window_seconds: Optional[float] = _WS,
    window_stride: Optional[float] = typer.Option(
        None,
        "--window-stride",
        help="seconds between TRAINING window starts (overlap when < window; "
        "evaluation windows never overlap; default 0 = window length)",
    ),
    crop_start: Optional[float] = _CS,
    crop_max: Optional[float] = _CM,
    car: Optional[bool] = _CAR,
    fill_missing: Optional[bool] = _FM,
    cache_dir: Optional[Path] = _CD,
    workers: Optional[int] = _WK,
    config: Optional[Path] = old_option("--config"),
) -> None:
    """Train on the manifest's train split (validation on val; test untouched)."""
    if config is not None:
        renamed("eeg train --config FILE", "eeg train --recipe FILE")
    from medtransfer.apps.eeg.train import train

    data = _data_overrides(channels, sfreq, window_seconds, crop_start, crop_max, car, fill_missing, cache_dir, workers)
    if window_stride is not None:
        data["window_stride_seconds"] = float(window_stride)
    if init is not None and (init / "config.yaml").is_file() and not recipe:
        # the source run's recipe is the starting point; flags and --set still apply
        from medtransfer.shared.config import load_yaml

        src = load_yaml(init / "config.yaml")
        data = {**{k: v for k, v in src.get("data", {}).items() if k != "cache_dir"}, **data}
        model = model or src.get("model", {}).get("name")
    cfg = _cfg(recipe, set_, data, model, epochs, strategy, seed)
    res = train(manifest, out, cfg, init=init)
    typer.echo(json.dumps({"run_dir": res["run_dir"], "best_epoch": res["best_epoch"], "val": res["val"]}, default=str))


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="run folder"),
    manifest: Path = manifest_option(),
    split: str = typer.Option("test", "--split", help="test | val | train | all"),
) -> None:
    """Print recording-level metrics as JSON (balanced_accuracy, auroc, ...)."""
    from medtransfer.apps.eeg.train import evaluate

    m = evaluate(run_dir, manifest, split=split)
    typer.echo(json.dumps(m, default=str))


@app.command("transfer")
def transfer_cmd(
    source: Path = typer.Option(..., "--source", help="source manifest (e.g. TUAB)"),
    target: Path = typer.Option(..., "--target", help="target manifest (e.g. NMT)"),
    out: Path = out_option(help="sweep folder"),
    strategies: str = typer.Option("full", "--strategies", help="comma list: full, linear_probe, llrd"),
    fractions: str = typer.Option("0.01,0.05,0.1,0.25,1.0", "--fractions", help="target label fractions"),
    seeds: str = typer.Option("0,1,2", "--seeds", help="comma list of seeds"),
    model: Optional[str] = typer.Option(None, "--model", help="shallow | deep4 | tcn | eegnet"),
    source_run: Optional[Path] = typer.Option(None, "--source-run", help="reuse a trained source run"),
    baselines: str = typer.Option(
        "", "--baselines", help="the paper's baselines, comma list: concat (source+target), scaling (source data)"
    ),
    source_fractions: str = typer.Option(
        "0.1,0.25,0.5,1.0", "--source-fractions", help="source training fractions for --baselines scaling"
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    recipe: Optional[Path] = recipe_option(help="recipe YAML"),
    set_: Optional[List[str]] = set_option(),
    channels: Optional[str] = _CH,
    sfreq: Optional[float] = _SF,
    window_seconds: Optional[float] = _WS,
    crop_start: Optional[float] = _CS,
    crop_max: Optional[float] = _CM,
    workers: Optional[int] = _WK,
    config: Optional[Path] = old_option("--config"),
) -> None:
    """Pretrain on source, fine-tune on target fractions (vs scratch), report forgetting; CSV + plot."""
    if config is not None:
        renamed("eeg transfer --config FILE", "eeg transfer --recipe FILE")
    from medtransfer.apps.eeg.transfer import sweep
    from medtransfer.shared.utils.cliargs import number_list

    data = _data_overrides(channels, sfreq, window_seconds, crop_start, crop_max, None, None, None, workers)
    cfg = _cfg(recipe, set_, data, model, epochs)
    res = sweep(
        source,
        target,
        out,
        cfg,
        strategies=[s.strip() for s in strategies.split(",") if s.strip()],
        fractions=number_list(fractions, "--fractions", 0.0, 1.0, lo_open=True),
        seeds=number_list(seeds, "--seeds", 0, 2**31 - 1, integer=True),
        source_run=source_run,
        baselines=[b.strip() for b in baselines.split(",") if b.strip()],
        source_fractions=number_list(source_fractions, "--source-fractions", 0.0, 1.0, lo_open=True),
    )
    typer.echo(json.dumps({k: str(v) for k, v in res.items() if k in ("table", "plot", "summary")}))


@app.command("bonn")
def bonn_cmd(
    out: Path = out_option(help="manifest CSV to write (EDFs go beside it)"),
    root: Optional[Path] = typer.Option(None, "--root", help="bonn folder (default ../shared/data/eeg/bonn)"),
) -> None:
    """Write the Bonn segments as single-channel EDF and import them through the generic manifest."""
    from medtransfer.apps.eeg.data import import_bonn

    root = root or Path.cwd().parent / "shared" / "data" / "eeg" / "bonn"
    p = import_bonn(root, out)
    typer.echo(f"wrote {p}")
    recipe = Path(__file__).resolve().parent / "recipes" / "bonn.yaml"
    print(f"train with: medtransfer eeg train --manifest {p} --out RUN --recipe {recipe}", file=sys.stderr)
