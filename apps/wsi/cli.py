"""``medtransfer wsi ...``: extract feature bags, train / evaluate / cross-validate survival, MoE-PKT comparison.

Torch-free at import: heavy modules are imported inside the commands.  Known errors propagate to
``main()`` (one line, exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from medtransfer.shared.cli.grammar import out_option, recipe_option, set_option
from medtransfer.shared.utils.errors import ConfigError

app = typer.Typer(
    help="Whole-slide prognosis: tiling + feature bags, attention-MIL survival, MoE-PKT.", no_args_is_help=True
)


def _config_and_bags(
    labels: Path,
    features: Optional[Path],
    synthetic: bool,
    dim: int,
    strength: float,
    set_: Optional[List[str]],
    recipe: Optional[Path] = None,
) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """Resolved config plus the bags source (planted synthetic bags, or None to read --features)."""
    from medtransfer.apps.wsi.train import make_config

    cfg = make_config(recipe, set_)
    bags = _bags(labels, synthetic, dim, int(cfg["train"]["seed"]), strength)
    if bags is None and features is None:
        raise ConfigError("give --features DIR or --synthetic")
    return cfg, bags


def _bags(labels: Path, synthetic: bool, dim: int, seed: int, strength: float = 1.5) -> Optional[dict[str, Any]]:
    if not synthetic:
        return None
    from medtransfer.apps.wsi.labels import find_studies, read_table
    from medtransfer.apps.wsi.synthetic import planted_bags

    cases = []
    for s, p in find_studies(labels).items():
        cases += read_table(p, "dss", s)[0]
    return planted_bags(cases, dim=dim, seed=seed, strength=strength)


@app.command("synth")
def synth(
    out: Path = out_option(help="labels root to write (datasets_csv/, splits/)"),
    studies: str = typer.Option("tcga_aaa,tcga_bbb", "--studies", help="comma-separated cohort names"),
    n_cases: int = typer.Option(60, "--n-cases", help="patients per cohort"),
    folds: int = typer.Option(5, "--folds", help="official folds to write"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
) -> None:
    """Write SurvPath-layout survival tables and splits (random labels) for `--synthetic` bags."""
    from medtransfer.apps.wsi.synthetic import make_survpath_tables

    names = [s.strip() for s in studies.split(",") if s.strip()]
    typer.echo(str(make_survpath_tables(out, studies=names, n_cases=n_cases, folds=folds, seed=seed)))


@app.command("extract")
def extract(
    source: Path = typer.Argument(..., help="a slide file or a folder of slides"),
    out: Path = out_option(help="folder for <slide>.h5 bags and thumbnails/"),
    encoder: str = typer.Option("resnet18", "--encoder", help="registry encoder (resnet18, resnet50, uni2h, ...)"),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="local encoder weights (default: random init, flagged in the h5)"
    ),
    encoder_onnx: Optional[Path] = typer.Option(
        None, "--encoder-onnx", help="run an exported encoder with ONNX Runtime: a bundle folder or an .onnx file"
    ),
    mpp: Optional[float] = typer.Option(None, "--mpp", help="level-0 microns/pixel for slides lacking it"),
    target_mpp: float = typer.Option(0.5, "--target-mpp", help="tile resolution in um/px (0.5 ~ 20x)"),
    patch_size: int = typer.Option(224, "--patch-size", help="tile side at --target-mpp"),
    batch_size: int = typer.Option(32, "--batch-size", help="tiles per encoder batch"),
    tissue: float = typer.Option(0.25, "--tissue", help="minimum tissue fraction per tile"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    precision: str = typer.Option("auto", "--precision", help="torch on CUDA: auto (bf16), fp32, bf16, fp16"),
    threads: int = typer.Option(0, "--threads", help="encoder threads per worker (0 = cores / workers)"),
    read_workers: int = typer.Option(2, "--read-workers", help="tile reader threads per slide"),
    backend: str = typer.Option(
        "auto", "--backend", help="auto (ONNX Runtime on CPU when --weights is a file), torch or onnx"
    ),
    quantize: Optional[str] = typer.Option(
        None,
        "--quantize",
        help="int8: ONNX encoder statically int8-quantized on tiles of the first (up to 8) slides, once per --out folder "
        "(checked against fp32 on held-out tiles; features differ)",
    ),
    engine: str = typer.Option("local", "--engine", help="local (processes) or ray (actors; RAY_ADDRESS honoured)"),
    workers: int = typer.Option(1, "--workers", min=1, help="slides in parallel (processes or Ray actors)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="redo slides already done"),
) -> None:
    """Tile slides on tissue and write CLAM/TRIDENT-style h5 feature bags (resumable per slide)."""
    from medtransfer.apps.wsi.features import extract_many

    res = extract_many(
        source,
        out,
        encoder,
        weights,
        target_mpp,
        patch_size,
        mpp,
        batch_size,
        tissue,
        device,
        overwrite,
        encoder_onnx=encoder_onnx,
        precision=precision,
        threads=threads,
        read_workers=read_workers,
        engine=engine,
        workers=workers,
        backend=backend,
        quantize=quantize,
    )
    for r in res:
        msg = f"{r.status:8s} {r.slide}: " + (
            r.error if r.status == "error" else f"{r.n_tiles} tiles x {r.feature_dim}-d -> {r.h5}"
        )
        typer.echo(msg)
    counts = {s: sum(r.status == s for r in res) for s in ("done", "skipped", "error")}
    typer.echo(json.dumps(counts))
    if counts["error"]:
        raise typer.Exit(1)


@app.command("train")
def train(
    labels: Path = typer.Option(..., "--labels", help="SurvPath labels root (datasets_csv/, splits/)"),
    study: str = typer.Option(..., "--study", help="cohort, e.g. tcga_blca"),
    out: Path = out_option(help="run folder"),
    features: Optional[Path] = typer.Option(None, "--features", help="folder of <slide>.h5 bags"),
    synthetic: bool = typer.Option(False, "--synthetic", help="planted-signal bags keyed to the tables"),
    dim: int = typer.Option(128, "--dim", help="feature size of --synthetic bags"),
    strength: float = typer.Option(1.5, "--strength", help="planted signal strength of --synthetic bags"),
    fold: int = typer.Option(0, "--fold", help="official fold to hold out (-1 = train on all)"),
    recipe: Optional[Path] = recipe_option(),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Train one exportable survival MIL (``medtransfer export RUN --out BUNDLE``); the run records its
    validation and held-out bags in ``RUN/reference_bags/`` for ``medtransfer estimate``'s drift reference."""
    from medtransfer.apps.wsi.train import train_run

    cfg, bags = _config_and_bags(labels, features, synthetic, dim, strength, set_, recipe)
    m = train_run(labels, study, out, cfg, features, bags, None if fold < 0 else fold)
    typer.echo(json.dumps(m, default=float))


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="run folder of `medtransfer wsi train`"),
    labels: Path = typer.Option(..., "--labels", help="SurvPath labels root (datasets_csv/, splits/)"),
    study: Optional[str] = typer.Option(None, "--study", help="cohort (default: the run's study)"),
    features: Optional[Path] = typer.Option(None, "--features", help="folder of <slide>.h5 bags"),
    synthetic: bool = typer.Option(False, "--synthetic", help="the planted-signal bags the run was trained on"),
    strength: float = typer.Option(1.5, "--strength", help="planted signal strength of --synthetic bags"),
    fold: Optional[int] = typer.Option(None, "--fold", help="official fold (default: the run's; -1 = none)"),
    split: str = typer.Option(
        "test", "--split", help="test (the fold's held-out cases) | val (training patients held out) | train | all"
    ),
) -> None:
    """Print C-index / td-AUC of a run's model (last epoch) on a split of the official fold, as JSON,
    with the trivial baseline (C-index 0.5 / age-only Cox) on the same cases beside it."""
    from medtransfer.apps.wsi.export import rebuild
    from medtransfer.apps.wsi.labels import read_splits
    from medtransfer.apps.wsi.train import evaluate, load_cohort, survival_baseline

    if split not in ("test", "val", "train", "all"):
        raise ConfigError(f"--split must be test, val, train or all (got '{split}')")
    model, info, cfg = rebuild(run_dir)
    study = study or info.get("study")
    if not study:
        raise ConfigError(f"{run_dir}: the run names no study; give --study")
    k = info.get("fold") if fold is None else (None if fold < 0 else fold)
    bags = _bags(labels, synthetic, int(info["in_dim"]), int(cfg["train"]["seed"]), strength)
    if bags is None and features is None:
        raise ConfigError("give --features DIR or --synthetic")
    coh = load_cohort(labels, study, features, str(cfg["data"]["endpoint"]), bags)
    if k is None:
        if split == "test":
            raise ConfigError(f"{run_dir}: no held-out fold (trained on all cases); use --split all or --fold K")
        tr, te = coh.cases, []
    else:
        tr_ids, te_ids = read_splits(labels, study)[int(k)]
        tr, te = coh.subset(tr_ids), coh.subset(te_ids)
    val_ids = set(info.get("val_ids") or [])
    va = [c for c in tr if c.case_id in val_ids]
    tr = [c for c in tr if c.case_id not in val_ids]  # the patients actually fitted
    cases = {"test": te, "val": va, "train": tr, "all": coh.cases}[split]
    if not cases:
        raise ConfigError(f"{run_dir}: the {split} split has no patient with a bag")
    ev = evaluate(model, cases, coh.bags, tr)
    base = survival_baseline(model, cases, coh.bags, tr, split)
    typer.echo(
        json.dumps(
            {
                "study": study,
                "fold": k,
                "split": split,
                **{key: ev[key] for key in ("c_index", "td_auc", "n", "events")},
                "baseline_c_index": base["baseline"],
                "baseline": base["baseline_name"],
                "baselines": base["baselines"],
                "beats_baseline": base["beats_baseline"],
            },
            default=float,
        )
    )


@app.command("cv")
def cv(
    labels: Path = typer.Option(..., "--labels"),
    study: str = typer.Option(..., "--study"),
    out: Path = out_option(help="cross-validation folder"),
    features: Optional[Path] = typer.Option(None, "--features"),
    synthetic: bool = typer.Option(False, "--synthetic"),
    dim: int = typer.Option(128, "--dim", help="feature size of --synthetic bags"),
    strength: float = typer.Option(1.5, "--strength", help="planted signal strength of --synthetic bags"),
    folds: int = typer.Option(5, "--folds"),
    recipe: Optional[Path] = recipe_option(),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """k-fold cross-validation on the official splits: C-index / td-AUC mean +- sd, KM plot."""
    from medtransfer.apps.wsi.train import cross_validate, load_cohort

    cfg, bags = _config_and_bags(labels, features, synthetic, dim, strength, set_, recipe)
    coh = load_cohort(labels, study, features, str(cfg["data"]["endpoint"]), bags)
    r = cross_validate(coh, labels, study, cfg, out, folds)
    typer.echo(
        f"{study}: C-index {r['c_index_mean']:.3f} +- {r['c_index_sd']:.3f}, td-AUC {r['td_auc_mean']:.3f} "
        f"+- {r['td_auc_sd']:.3f}, KM log-rank p={r['km']['logrank_p']:.2g} ({r['km']['png']})"
    )


@app.command("pkt")
def pkt(
    labels: Path = typer.Option(..., "--labels"),
    target: str = typer.Option(..., "--target", help="target cancer (few patients)"),
    sources: str = typer.Option(..., "--sources", help="comma-separated source cancers"),
    out: Path = out_option(help="comparison folder"),
    features: Optional[Path] = typer.Option(None, "--features"),
    synthetic: bool = typer.Option(False, "--synthetic"),
    dim: int = typer.Option(128, "--dim", help="feature size of --synthetic bags"),
    strength: float = typer.Option(1.5, "--strength", help="planted signal strength of --synthetic bags"),
    n_train: int = typer.Option(40, "--n-train", help="target training patients per fold (0 = all, as Path-PKT)"),
    folds: int = typer.Option(5, "--folds"),
    finetune: str = typer.Option(
        "best", "--finetune", help="single-source fine-tune: best (source picked on training patients), all, none"
    ),
    experts: str = typer.Option(
        "all", "--experts", help="MoE-PKT experts: all sources, or auto:K (K picked per fold by LogME + OSBORN greedy)"
    ),
    recipe: Optional[Path] = recipe_option(),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Cancer-specific vs single-source fine-tune vs MoE-PKT, per fold, in one command."""
    from medtransfer.apps.wsi.train import (
        check_same_extraction,
        load_cohort,
        parse_experts,
        pkt_compare,
        train_sources,
    )

    cfg, bags = _config_and_bags(labels, features, synthetic, dim, strength, set_, recipe)
    ep = str(cfg["data"]["endpoint"])
    srcs = [s.strip() for s in sources.split(",") if s.strip()]
    parse_experts(experts, len(srcs))  # refused before any training
    cohorts = {s: load_cohort(labels, s, features, ep, bags) for s in srcs}
    tgt = load_cohort(labels, target, features, ep, bags)
    check_same_extraction({**cohorts, target: tgt})  # refused before any training
    models = train_sources(cohorts, cfg, out)
    r = pkt_compare(
        tgt,
        models,
        labels,
        target,
        cfg,
        out,
        n_train,
        folds,
        finetune,
        experts,
    )
    for name, v in r["methods"].items():
        typer.echo(f"{name:32s} C-index {v['mean']:.3f} +- {v['sd']:.3f}")
    typer.echo("routing: " + ", ".join(f"{k} {v:.2f}" for k, v in r["routing"]["mean_gate"].items()))
    if experts != "all":
        typer.echo("experts per fold: " + "; ".join(",".join(f) for f in r["experts_per_fold"]))
    typer.echo(f"figure: {r['png']}")
