"""The ``medtransfer`` command.  Torch-free at import: heavy modules load inside commands."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from medtransfer.shared.utils.errors import MedTransferError


def known_error_line(e: BaseException) -> str | None:
    """The one line for a known error (ours, an OS error on a user path, a CSV syntax error); None for a bug."""
    import csv

    if isinstance(e, MedTransferError):
        msg = str(e)
    elif isinstance(e, OSError):
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        msg = f"{where}{e.strerror or type(e).__name__}"
    elif isinstance(e, csv.Error):
        msg = f"CSV syntax error: {e}"
    else:
        return None
    return "error: " + " ".join(msg.split())


class _OneLineErrors(typer.core.TyperGroup):
    """The top-level group.

    The one error path: any known error escaping any command (core or app) is one line + exit 2.
    Lazy mounting: the transfer tools (:data:`TOOL_MODULES`) and the apps' groups are imported only
    when invoked (or when ``--help`` lists them), so ``medtransfer predict`` pays for none of them.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as e:  # noqa: BLE001 - known errors become one line; bugs keep their traceback
            line = known_error_line(e)
            if line is None:
                raise
            typer.echo(line, err=True)
            raise typer.Exit(2) from None

    def list_commands(self, ctx: Any) -> list[str]:
        """Core commands, then the tools, then the core's groups, then the apps (the order of ``--help``)."""
        core = super().list_commands(ctx)
        groups = [n for n in core if hasattr(self.commands[n], "list_commands")]
        lazy = [n for n in (*TOOL_MODULES, *_app_names()) if n not in core]
        tools = [n for n in lazy if n in TOOL_MODULES]
        return [n for n in core if n not in groups] + tools + groups + [n for n in lazy if n not in tools]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and (cmd_name in TOOL_MODULES or cmd_name in _app_names()):
            for name, c in _load_lazy(cmd_name).items():
                self.commands.setdefault(name, c)
            cmd = super().get_command(ctx, cmd_name)
        return cmd

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """As typer's, with "Did you mean ...?" also offering lazily mounted commands (only near misses load)."""
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            from difflib import get_close_matches

            lazy = [*TOOL_MODULES, *_app_names()]
            if args[0] not in lazy:
                for name in get_close_matches(args[0], lazy):
                    self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="medtransfer",
    help="Transfer learning for clinical AI: train, export to ONNX, predict and batch-score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_OneLineErrors,
)
data_app = typer.Typer(help="Datasets: import into the generic manifest, list importers, split.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def fail(msg: str, code: int = 2) -> None:
    """Print one line to stderr and exit non-zero."""
    typer.echo(f"error: {' '.join(str(msg).split())}", err=True)
    raise typer.Exit(code)


def parse_opts(pairs: Optional[List[str]], raw: bool = False) -> dict[str, Any]:
    """``--opt key=value`` pairs: values parsed as YAML scalars, or (``raw``) kept as the text given.

    Predictor options go raw: each predictor converts them by the kind it declares
    (``shared.runtime.predictor.Opt``), so ``out_dir=1.10`` stays ``"1.10"`` (YAML made it 1.1) and
    ``max_frames=4`` / ``4`` are one value.
    """
    out: dict[str, Any] = {}
    if not pairs:
        return out  # no YAML import on the common path (predict's cold start)
    for p in pairs:
        if "=" not in p:
            fail(f"--opt expects key=value, got '{p}'")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip() if raw else _yaml_scalar(v)
    return out


def _yaml_scalar(v: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


# --------------------------------------------------------------------------------------------- data
@data_app.command("list")
def data_list() -> None:
    """List the dataset importers every installed app provides."""
    from medtransfer.shared.plugins import discover_apps

    for spec in discover_apps().values():
        for name in spec.importers:
            typer.echo(f"{name}\t({spec.name})")


@data_app.command("import")
def data_import(
    name: str = typer.Argument(..., help="importer name (see `medtransfer data list`)"),
    root: Path = typer.Argument(..., help="dataset root folder as released"),
    out: Path = typer.Option(..., "--out", "-o", help="manifest CSV to write"),
    opt: Optional[List[str]] = typer.Option(None, "--opt", help="importer option key=value (repeatable)"),
) -> None:
    """Import a dataset from its published layout into the generic manifest CSV."""
    from medtransfer.shared.plugins import discover_apps, load_object

    try:
        for spec in discover_apps().values():
            if name in spec.importers:
                fn = load_object(spec.importers[name])
                res = fn(root, out, **parse_opts(opt))
                typer.echo(f"wrote {res if res else out}")
                return
        names = sorted(n for s in discover_apps().values() for n in s.importers)
        fail(f"unknown dataset '{name}' (known: {', '.join(names) or 'none'})")
    except MedTransferError as e:
        fail(str(e))


@data_app.command("split")
def data_split(
    manifest: Path = typer.Argument(..., help="manifest CSV"),
    out: Path = typer.Option(..., "--out", "-o", help="manifest CSV with the split column filled"),
    val: float = typer.Option(0.15, help="validation fraction (of groups)"),
    test: float = typer.Option(0.15, help="test fraction (of groups)"),
    seed: int = typer.Option(0, help="split seed"),
) -> None:
    """Fill the split column (grouped by the group column, stratified by label, deterministic)."""
    from medtransfer.shared.manifest import assign_splits, read_manifest, write_manifest

    try:
        recs = assign_splits(read_manifest(manifest), val, test, seed)
        write_manifest(recs, out)
        counts = {s: sum(r.split == s for r in recs) for s in ("train", "val", "test")}
        typer.echo(json.dumps(counts))
    except MedTransferError as e:
        fail(str(e))


@app.command("models")
def models(family: Optional[str] = typer.Option(None, help="timm, monai, braindecode, sam2, mil")) -> None:
    """List the backbone registry (needs the medtransfer[train] extra)."""
    from medtransfer.shared.registry import get_entry, list_models

    for n in list_models(family):
        e = get_entry(n)
        typer.echo(f"{n}\t{e.family}\t{e.pretrained_cfg.get('filename', '-')}\t{e.description}")


# ------------------------------------------------------------------------------------------- export
@app.command("export")
def export(
    run_dir: Path = typer.Argument(..., help="a training run folder (has run.json and checkpoints/)"),
    out: Path = typer.Option(..., "--out", "-o", help="bundle folder to write"),
    quantize: Optional[str] = typer.Option(None, help="'int8': also write an int8 model and record the metric change"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing bundle at --out"),
    force: bool = typer.Option(
        False,
        "--force",
        help="export a run that does not beat its trivial baseline (the bundle and every answer are marked unreliable)",
    ),
    audit: Optional[Path] = typer.Option(
        None, "--audit", help="labelled manifest: audit the bundle (`medtransfer audit`) into its model card"
    ),
) -> None:
    """Export a trained run to an ONNX bundle (model files, metadata.json, README.md, checksums.sha256).

    --out may be relative, absolute or an existing empty folder; the bundle is written into a
    hidden temp folder beside it and renamed into place at the end, so a failed export leaves
    nothing behind.  A non-empty folder that is not a bundle is refused; an existing bundle is
    replaced only with --overwrite.
    """
    from medtransfer.shared.export.atomic import check_output
    from medtransfer.shared.plugins import hook
    from medtransfer.shared.rundir import RunDir

    run = RunDir(run_dir)
    check_output(out, overwrite)  # refuse before the (slow) export
    fn = hook(run.app, "exporter")  # every exporter writes through shared.export.export_bundle (atomic, guarded)
    from medtransfer.shared.export.guard import auditing

    if audit is not None and not audit.is_file():
        fail(f"{audit}: audit manifest not found")
    with auditing(audit):
        res = fn(run_dir, out, quantize=quantize, overwrite=overwrite, force=force)
    typer.echo(f"wrote {res}")


@app.command("verify")
def verify(bundle: Path = typer.Argument(..., help="bundle folder")) -> None:
    """Check a bundle: schema version, every file against checksums.sha256, nothing unlisted.

    Prints each file with OK and its size, the schema and the bundle sha256 (the
    bundle_sha256 of scored rows); exits 2 with one error line when the bundle is refused.
    """
    from medtransfer.shared.runtime.bundle import load_bundle

    try:
        b = load_bundle(bundle, cached=False)  # every byte re-read (predict may trust the digest cache)
    except MedTransferError as e:
        fail(str(e))
    typer.echo(f"bundle  {b.path}")
    typer.echo(f"schema  {b.schema}")
    typer.echo(f"model   {b.name} {b.version} (app {b.app}, task {b.task})")
    for c in b.checks:
        note = "  (operating-system file, not part of the bundle)" if c.status != "OK" else ""
        typer.echo(f"{c.status:<7} {c.size:>12,d}  {c.name}{note}")
    n = sum(c.status == "OK" for c in b.checks)
    typer.echo(f"sha256  {b.sha256}  (bundle_sha256: sha256 of checksums.sha256)")
    typer.echo(f"verified {n} files against checksums.sha256; nothing unlisted")


# ------------------------------------------------------------------------------------------ predict
@app.command("predict")
def predict(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    inputs: List[Path] = typer.Argument(..., help="input files"),
    fmt: str = typer.Option("json", "--format", help="json (one line per input) or table"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for artefacts (masks, plots, crops)"),
    plot: bool = typer.Option(False, "--plot", help="write plots / contact sheets into --out"),
    mask: Optional[Path] = typer.Option(None, "--mask", help="first-frame mask (video apps)"),
    box: Optional[str] = typer.Option(None, "--box", help="first-frame box x0,y0,x1,y1 (video apps)"),
    opt: Optional[List[str]] = typer.Option(None, "--opt", help="predictor option key=value (repeatable)"),
) -> None:
    """Answer each input with the bundle (torch-free). Exit 1 if any input failed."""
    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.predictor import build_predictor

    try:
        b = load_bundle(bundle)
        from medtransfer.shared.runtime.outputs import artefact_lock, input_root, unique_keys

        root = input_root(inputs)  # per-input outputs: OUT/<path relative to this root, no suffix>
        if out:
            unique_keys(inputs, root)  # two inputs mapping to one output folder: one line, before any work
        options = {
            "out_dir": str(out) if out else None,
            "input_root": str(root),
            "plot": plot,
            "mask": str(mask) if mask else None,
            "box": box,
            **parse_opts(opt, raw=True),
        }
        pred = build_predictor(b, **options)
        held = contextlib.ExitStack()
        held.enter_context(artefact_lock(out))  # one job per artefact folder
    except MedTransferError as e:
        fail(str(e))
    rows = []
    failed = 0
    with held:
        for p in inputs:
            try:
                res = {"input": str(p), "status": "ok", **pred.answer(p)}
            except MedTransferError as e:
                res = {"input": str(p), "status": "error", "error": " ".join(str(e).split())}
                failed += 1
            except Exception as e:  # noqa: BLE001
                msg = " ".join(str(e).split())
                res = {"input": str(p), "status": "error", "error": f"{p}: {type(e).__name__}: {msg}"}
                failed += 1
            if fmt == "json":
                typer.echo(json.dumps(res, default=_jsonable))
            else:
                rows.append(res)
            if res["status"] == "error":
                typer.echo(f"error: {res['error']}", err=True)
    if fmt != "json":
        _table(rows)
    if failed:
        raise typer.Exit(1)


def _jsonable(x: Any) -> Any:
    return x.tolist() if hasattr(x, "tolist") else str(x)


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and not isinstance(v, (list, dict))]
    t = Table(*keys)
    for r in rows:
        t.add_row(*[(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, ""))) for k in keys])
    Console().print(t)


# -------------------------------------------------------------------------------------------- score
@app.command("score")
def score_cmd(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", "-m", help="manifest CSV (path column used)"),
    input_dir: Optional[Path] = typer.Option(None, "--input-dir", "-i", help="folder of inputs"),
    out: Path = typer.Option(..., "--out", "-o", help="results CSV"),
    resume: bool = typer.Option(False, "--resume", help="skip cases already in --out (same bundle only)"),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="replace an existing --out (with --resume: only if its rows come from another bundle)",
    ),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="processes (local) or actors (ray)"),
    engine: str = typer.Option("local", "--engine", help="local or ray"),
    opt: Optional[List[str]] = typer.Option(None, "--opt", help="predictor option key=value"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Batch-score a manifest or a folder; resumable; bad cases become error rows.

    One job per --out (a lock held for the job's life); an existing --out needs --resume or
    --overwrite; --out may not be the manifest, an input, or inside the input folder or the bundle.
    """
    from medtransfer.shared.runtime import score as sc
    from medtransfer.shared.runtime.bundle import load_bundle

    if (manifest is None) == (input_dir is None):
        fail("give exactly one of --manifest or --input-dir")
    if engine not in sc.ENGINES:
        fail(f"unknown engine '{engine}' (local or ray)")
    options = parse_opts(opt, raw=True)
    try:
        sc.check_out_path(out, manifest=manifest, input_dir=input_dir, bundle_dir=bundle)
        with sc.lock_output(out):  # before any work: unwritable or busy --out is refused first
            b = load_bundle(bundle)
            cases = sc.cases_from_manifest(manifest, b) if manifest else sc.cases_from_dir(input_dir, b)
            if options.get("out_dir"):  # per-case artefacts: OUT/<path relative to the input root>, no clashes
                from medtransfer.shared.runtime.outputs import input_root, unique_keys

                paths = [Path(c.path) for c in cases if Path(c.path).exists()]
                root = Path(input_dir) if input_dir else input_root(paths)
                options.setdefault("input_root", str(root))
                unique_keys(paths, root)
            summary = sc.score(
                bundle,
                cases,
                out,
                resume=resume,
                overwrite=overwrite,
                workers=workers,
                engine=engine,
                options=options,
                progress=not quiet,
                manifest=manifest,
                input_dir=input_dir,
            )
    except MedTransferError as e:
        fail(str(e))
    typer.echo(json.dumps(summary))


# --------------------------------------------------------------------------------------------- demo
@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="output folder (report.md, bundles/)"),
    apps: Optional[str] = typer.Option(None, "--apps", help="comma-separated apps (default: all installed)"),
    full: bool = typer.Option(False, "--full", help="bigger data / more epochs than the quick default"),
    tools: bool = typer.Option(True, "--tools/--no-tools", help="then rank, estimate, merge and audit on the demo"),
) -> None:
    """Run every installed app end to end on generated data; write report.md and bundles/."""
    from medtransfer.shared.demo import run_demo

    try:
        report = run_demo(out, apps=apps.split(",") if apps else None, fast=not full, tools_on=tools)
    except MedTransferError as e:
        fail(str(e))
    typer.echo(f"wrote {report}")


# -------------------------------------------------------------------------------------------- bench
@app.command("bench")
def bench(
    bundle: Optional[Path] = typer.Option(
        None, "--bundle", "-b", help="bundle to benchmark (default: build the demo image bundle)"
    ),
    app_name: Optional[str] = typer.Option(None, "--app", help="also run this app's own benchmark"),
    workers: int = typer.Option(2, "--workers", min=1, help="N for the 1-vs-N score comparison"),
    batch: int = typer.Option(16, "--batch", help="batch size for throughput"),
    threads: int = typer.Option(0, "--threads", help="threads for both engines (0 = all cores)"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the JSON here"),
    sample: Optional[List[Path]] = typer.Option(None, "--sample", help="input(s) for cold start and score scaling"),
    score_cases: str = typer.Option("", "--score-cases", help="e.g. 200,1000: score that many cases, 1 vs N and Ray"),
    score_setups: str = typer.Option(
        "",
        "--score-setups",
        help="engine:workers list for --score-cases (default local:1,local:N and, with Ray, ray:N and "
        "ray-cluster:N twice, then ray-cluster-other:N; ray-cluster:N = a private running cluster, a setup given "
        "twice runs twice, ray-cluster-other:N = a job of another bundle (a copy) on its warm actors)",
    ),
    opt: Optional[List[str]] = typer.Option(
        None, "--opt", help="predictor option key=value for the cold start and score runs (e.g. box=10,10,90,90)"
    ),
) -> None:
    """Benchmarks as JSON: ONNX vs eager, predict cold start, score at 1 vs N workers (+ app benches)."""
    from medtransfer.shared.bench import check_score_setups, run_bench

    try:
        try:
            sizes = tuple(int(x) for x in score_cases.split(",") if x.strip())
        except ValueError:
            raise MedTransferError(f"--score-cases '{score_cases}': expected case counts such as 200,1000") from None
        setups = tuple(x.strip() for x in score_setups.split(",") if x.strip()) or None
        check_score_setups(setups or (), sizes)  # before any benchmark runs
        res = run_bench(
            bundle,
            app_name,
            workers,
            batch,
            threads,
            sample,
            score_sizes=sizes,
            score_setups=setups,
            options=parse_opts(opt, raw=True),
        )
    except MedTransferError as e:
        fail(str(e))
    text = json.dumps(res, indent=2, default=_jsonable)
    if out:
        out.write_text(text)
    typer.echo(text)


# ------------------------------------------------------------------------------ app groups and tools (lazy)
#: top-level tools kept in their own modules: ``shared/cli/cmd_<name>.py`` with ``register(app)``
#: mounting the command ``<name>`` (each imports only typer at import time)
TOOL_MODULES = ("rank", "estimate", "merge", "audit")


def _app_names() -> list[str]:
    """The installed apps that have a CLI group (their plugin specs only: no app module is imported)."""
    from medtransfer.shared.plugins import discover_apps

    return [s.name for s in discover_apps().values() if s.cli]


def _load_lazy(name: str) -> dict[str, Any]:
    """The click command(s) behind one lazily mounted name: a tool module's commands or an app's group.

    A broken app CLI is a warning on stderr (the rest of the CLI keeps working) and no command.
    """
    import importlib

    from medtransfer.shared.plugins import discover_apps, load_object

    holder = typer.Typer(add_completion=False)
    if name in TOOL_MODULES:
        try:
            mod = importlib.import_module(f"medtransfer.shared.cli.cmd_{name}")
        except ModuleNotFoundError as e:
            if e.name != f"medtransfer.shared.cli.cmd_{name}":
                raise
            return {}
        mod.register(holder)
    else:
        spec = next(s for s in discover_apps().values() if s.name == name)
        try:
            sub = load_object(spec.cli)
        except Exception as e:  # noqa: BLE001 - a broken app must not take the CLI down
            print(f"warning: CLI of app '{spec.name}' failed to load: {e}", file=sys.stderr)
            return {}
        holder.add_typer(sub, name=spec.name, help=spec.help)
    return dict(typer.main.get_group(holder).commands)


def main() -> None:
    """Console-script entry point: every known error is one line on stderr and exit code 2.

    Known errors are our own (MedTransferError and its subclasses: input, config, bundle,
    weights), OS errors on user paths (missing, unwritable, a folder where a file was expected)
    and CSV syntax errors.  Anything else is a bug and keeps its traceback.
    """
    try:
        app(standalone_mode=True)  # commands' known errors are handled by _OneLineErrors
    except SystemExit as e:
        # a job that joined a running Ray cluster ends here without Ray's ~0.33 s driver shutdown
        # (every other exit handler still runs); anything else returns and exits as usual
        if "ray" in sys.modules:
            from medtransfer.shared.runtime.engines import end_ray_driver

            end_ray_driver(e.code)
        raise
    except Exception as e:  # noqa: BLE001 - the same rule for anything outside a command
        line = known_error_line(e)
        if line is None:
            raise
        sys.stderr.write(line + "\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
