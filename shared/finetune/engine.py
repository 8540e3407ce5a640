"""The training loop every app uses.

``fit`` trains with a validation split and early stopping, keeps best and last checkpoints with
the resolved config beside them, resumes from ``last.pt`` after an interruption, seeds every RNG,
uses AMP on CUDA, shows a progress bar, writes per-epoch metrics to CSV/JSON, logs to TensorBoard
or MLflow only if installed and asked, and runs under ``torchrun`` (DDP; gloo on CPU) unchanged.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, ParamSpec, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medtransfer.shared.config import check_ranges, save_yaml
from medtransfer.shared.finetune.strategies import param_groups, setup_strategy, unfreeze_for_epoch
from medtransfer.shared.rundir import RunDir, load_checkpoint_file
from medtransfer.shared.utils.hashing import sha256_file
from medtransfer.shared.utils.seed import seed_everything

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "optimizer": "adamw",  # adamw | sgd
    "scheduler": "cosine",  # cosine | step | none
    "step_size": 1,  # scheduler=step: epochs between decays (torch StepLR)
    "gamma": 0.1,  # scheduler=step: decay factor
    "warmup_epochs": 0,
    "strategy": "full",  # full | linear_probe | gradual_unfreeze | llrd | lora | adapter
    "llrd_decay": 0.75,
    "unfreeze_every": 1,
    "peft": {},  # targets, r, alpha, reduction, dim, lr_mult, also_train
    "patience": 5,  # early stopping on the monitored validation metric (0 = off)
    "monitor": "",  # "" = the task's default (val_loss)
    "mode": "",  # min | max ("" = task default)
    "seed": 0,
    "amp": True,  # used on CUDA only
    "num_workers": 0,
    "device": "auto",  # auto | cpu | cuda | mps
    "grad_accum": 1,
    "max_grad_norm": 0.0,
    "resume": True,
    "log": "none",  # none | tensorboard | mlflow | auto
    "progress": True,
}


@dataclass
class FitResult:
    """What ``fit`` returns."""

    run_dir: Path
    best_path: Path
    last_path: Path
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the local CUDA device (LOCAL_RANK under torchrun), then CPU."""
    if name in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "cuda":
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def amp_settings(amp: Any, device: torch.device) -> tuple[bool, torch.dtype | None]:
    """Mixed precision on CUDA only: bf16 where the card supports it (no scaler), else fp16 + GradScaler.

    Args:
        amp: ``train.amp`` (true / false).
        device: the training device.

    Returns:
        (enabled, dtype).
    """
    if not amp or device.type != "cuda":
        return False, None
    return True, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def _dist() -> tuple[bool, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if world > 1:
        return True, torch.distributed.get_rank(), world
    return False, 0, 1


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``fit`` (dict with model, config, epoch, best, ...).

    Safe: ``weights_only=True``; when the file sits in a run folder (``RUN/checkpoints/X.pt``)
    its sha256 is verified against ``RUN/run.json``.  Prefer :class:`RunDir.load_checkpoint`.
    """
    p = Path(path)
    if p.parent.name == "checkpoints" and p.stem in ("best", "last") and (p.parent.parent / "run.json").is_file():
        return RunDir(p.parent.parent).load_checkpoint(p.stem, map_location=map_location)
    return load_checkpoint_file(p, map_location=map_location)


def _to(x: Any, device: torch.device) -> Any:
    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def _default_forward(model: nn.Module, batch: Any) -> tuple[Any, Any]:
    x, y = batch[0], batch[1]
    return model(x), y


def _cat(xs: list[Any]) -> Any:
    if not xs:
        return np.zeros((0,))
    if isinstance(xs[0], dict):
        return {k: _cat([x[k] for x in xs]) for k in xs[0]}
    return np.concatenate([np.asarray(x) for x in xs], axis=0)


def _numpy(x: Any) -> Any:
    if torch.is_tensor(x):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: _numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and x and torch.is_tensor(x[0]):
        return type(x)(_numpy(v) for v in x)
    return x


@torch.no_grad()
def predict_arrays(
    model: nn.Module,
    data: Dataset | DataLoader,
    forward_fn: Callable[[nn.Module, Any], tuple[Any, Any]] | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    collate_fn: Callable | None = None,
) -> tuple[Any, Any]:
    """Run a model over a dataset; returns (outputs, targets) as numpy arrays (concatenated)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    model = model.to(dev).eval()
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, collate_fn=collate_fn)
    fwd = forward_fn or _default_forward
    outs, tgts = [], []
    for batch in loader:
        o, t = fwd(model, _to(batch, dev))
        outs.append(_numpy(o))
        tgts.append(_numpy(t))
    return _cat(outs), _cat(tgts)


class _Loggers:
    def __init__(self, run_dir: Path, kind: str, enabled: bool) -> None:
        self.tb = None
        self.mlflow = None
        if not enabled or kind == "none":
            return
        if kind in ("tensorboard", "auto"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except Exception:
                self.tb = None
        if kind in ("mlflow", "auto") and self.tb is None:
            try:
                import mlflow

                mlflow.start_run(run_name=run_dir.name)
                self.mlflow = mlflow
            except Exception:
                self.mlflow = None

    def log(self, row: dict[str, float], step: int) -> None:
        for k, v in row.items():
            if not isinstance(v, (int, float)) or k == "epoch":
                continue
            if self.tb is not None:
                self.tb.add_scalar(k, v, step)
            if self.mlflow is not None:
                self.mlflow.log_metric(k, float(v), step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


_P = ParamSpec("_P")


def _one_trainer(fn: Callable[_P, FitResult]) -> Callable[_P, FitResult]:
    """One training per run folder: the main process holds ``run_dir/.train.lock`` for the whole
    fit (:func:`medtransfer.shared.utils.locks.exclusive`; released if it dies).  Two trainings
    into one ``--out`` both wrote its checkpoints, metrics and ``run.json`` (one could resume from
    the other's ``last.pt``); the second is now refused in one line naming the first."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> FitResult:
        from medtransfer.shared.utils.locks import exclusive

        run_dir = Path(str(kwargs["run_dir"]))
        if int(os.environ.get("RANK", "0")) != 0:  # DDP: rank 0 writes the folder and holds its lock
            return fn(*args, **kwargs)
        run_dir.mkdir(parents=True, exist_ok=True)
        with exclusive(run_dir / ".train.lock", run_dir, "already being trained into by"):
            return fn(*args, **kwargs)

    return wrapper


@_one_trainer
def fit(
    model: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset | None,
    *,
    cfg: dict[str, Any],
    run_dir: str | Path,
    app: str,
    task: str,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    metric_fn: Callable[[Any, Any], dict[str, float]] | None = None,
    forward_fn: Callable[[nn.Module, Any], tuple[Any, Any]] | None = None,
    collate_fn: Callable | None = None,
    head: list[str] | None = None,
    monitor: str = "val_loss",
    mode: str = "min",
    extra_state: dict[str, Any] | None = None,
    model_spec: dict[str, Any] | None = None,
    sampler_weights: Sequence[float] | None = None,
    data_files: Sequence[str | Path] = (),
) -> FitResult:
    """Train ``model`` and keep the best checkpoint by a validation metric.

    Args:
        model: the network (the strategy in ``cfg["train"]`` is applied here).
        train_ds: training dataset (items go to ``forward_fn`` after default collation).
        val_ds: validation dataset (never the test split); None = monitor the training loss.
        cfg: the resolved config; ``cfg["train"]`` holds the keys of ``TRAIN_DEFAULTS``.
        run_dir: output folder (created; resumed from ``checkpoints/last.pt`` when present).
        app: app name, written to ``run.json`` (``medtransfer export`` dispatches on it).
        task: task name, written to ``run.json``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
        metric_fn: ``metric_fn(outputs_np, targets_np) -> dict`` on the whole validation set.
        forward_fn: ``forward_fn(model, batch) -> (outputs, targets)``; default ``model(x), y``.
        collate_fn: DataLoader collate function.
        head: head prefixes for the strategy (default ``model.transfer_head``).
        monitor: metric that picks the best checkpoint (``val_loss`` or a metric_fn key as
            ``val_<key>``); ``cfg["train"]["monitor"]`` overrides.
        mode: ``min`` or ``max``; ``cfg["train"]["mode"]`` overrides.
        extra_state: saved into every checkpoint (label names, preprocessing ...).
        model_spec: how to rebuild the model (``shared.rundir.model_spec``); saved in every checkpoint
            and run.json so ``RunDir.load_model`` rebuilds it without app code.
        sampler_weights: per-item weights for a weighted random sampler (class balance).
        data_files: what the training reads its cases from (the manifest): their sha256 go into
            ``run.json`` (``data_sha256``) and a resume on other contents is refused.

    Returns:
        FitResult with the checkpoint paths, the best validation metrics and the history.

    Raises:
        MedTransferError: another training holds ``run_dir`` (one training per run folder).
    """
    tc = {**TRAIN_DEFAULTS, **(cfg.get("train") or {})}
    check_ranges({"train": tc})  # programmatic callers get the same range checks as the CLI
    monitor = tc.get("monitor") or monitor
    mode = tc.get("mode") or mode
    run_dir = Path(run_dir)
    is_dist, rank, world = _dist()
    main = rank == 0
    seed_everything(int(tc["seed"]) + rank)
    device = resolve_device(str(tc["device"]))
    run = RunDir(run_dir, must_exist=False)
    last = run.load_checkpoint("last") if tc["resume"] and run.has_checkpoint("last") else None  # verified first
    data_sha = {Path(f).name: sha256_file(f) for f in data_files}
    if last is not None:
        check_resume_config(run.path, cfg)
        check_resume_data(run, data_sha)
    if main:
        _start_run(run, cfg, app, task, monitor, mode, world, fresh=last is None)
        if model_spec:
            run.update_info(model_spec=model_spec)
        if last is None:  # a fresh start: which weights and data it started from (a resume keeps them)
            run.update_info(initial_weights_sha256=weights_digest(model), data_sha256=data_sha)

    setup_strategy(model, tc, head)
    model.to(device)
    opt, sched = _optimizer(model, tc, head)
    use_amp, amp_dtype = amp_settings(tc["amp"], device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    train_model: nn.Module = model
    if is_dist:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    g = torch.Generator().manual_seed(int(tc["seed"]))
    train_loader, val_loader, sampler = _loaders(train_ds, val_ds, tc, device, g, is_dist, collate_fn, sampler_weights)

    st = _Tracker(mode)
    if last is not None:
        st.resume(last, model, opt, sched, g)

    fwd = forward_fn or _default_forward
    step = _Step(
        fwd, loss_fn, opt, scaler, device, use_amp, amp_dtype, max(1, int(tc["grad_accum"])), float(tc["max_grad_norm"])
    )
    epochs = int(tc["epochs"])
    loggers = _Loggers(run_dir, str(tc["log"]), enabled=main)
    progress = _progress(enabled=main and bool(tc["progress"]))
    try:
        with progress:
            bar = progress.add_task(f"{app}/{task}", total=max(0, epochs - st.start_epoch) * len(train_loader))
            for epoch in range(st.start_epoch, epochs):
                if st.stopped:
                    break
                unfreeze_for_epoch(model, epoch, tc, head)
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)

                def tick(loss: float, epoch: int = epoch) -> None:
                    progress.update(bar, advance=1, description=f"{app}/{task} ep {epoch + 1}/{epochs} loss {loss:.4f}")

                row = step.epoch(train_model, model, train_loader, epoch, tick)
                sched.step()
                row["lr"] = opt.param_groups[0]["lr"]
                if val_loader is not None and main:
                    row.update(_validate(model, val_loader, fwd, loss_fn, metric_fn, device, use_amp, amp_dtype))
                key = monitor if monitor in row else ("val_loss" if "val_loss" in row else "train_loss")
                improved = st.update(row, epoch, key, _agree(is_dist, device))
                if main:
                    _checkpoint(
                        run,
                        st,
                        model,
                        opt,
                        sched,
                        g,
                        epoch,
                        key,
                        improved,
                        cfg,
                        app,
                        task,
                        {**(extra_state or {}), **({"model_spec": model_spec} if model_spec else {})},
                    )
                    _write_metrics(run_dir, st.history)
                    loggers.log(row, epoch)
                patience = int(tc["patience"])
                st.stopped = bool(patience and st.bad_epochs >= patience)
    finally:
        loggers.close()
    if main and not run.has_checkpoint("best") and run.has_checkpoint("last"):
        last = run.load_checkpoint("last")
        run.save_checkpoint({k: v for k, v in last.items() if k not in _RESUME_ONLY}, "best")
    if main:
        summary = {
            "best_epoch": st.best_epoch,
            "monitor": monitor,
            "best": st.best_metrics,
            "epochs_run": len(st.history),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if is_dist:
        torch.distributed.barrier()
    return FitResult(
        run_dir, run.checkpoint_path("best"), run.checkpoint_path("last"), st.best_metrics, st.history, st.best_epoch
    )


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state: every entry's name, dtype, shape and bytes, in name order.

    ``fit`` records it as ``initial_weights_sha256`` in ``run.json``: two runs of one config that
    started from the same weights (same seed, same pretrained file) have the same digest.

    Args:
        model: the network.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# ------------------------------------------------------------------------------- fit's parts
_RESUME_ONLY = ("optimizer", "scheduler", "rng")  # kept in last.pt only


#: config keys a resumed run may change: how long and where it runs, not what it learns
RESUME_MAY_CHANGE = frozenset(
    {"train.epochs", "train.progress", "train.device", "train.resume", "train.num_workers", "train.patience"}
    | {"data.cache_dir", "data.workers", "data.engine"}  # where the data is prepared, not what it is
)


def check_resume_config(run_dir: Path, cfg: dict[str, Any]) -> None:
    """Refuse to resume a run folder whose ``config.yaml`` differs from ``cfg`` in what the run learns.

    Re-running the same command resumes; re-running into the same ``--out`` with another seed, recipe or
    data setting would otherwise continue the old checkpoint and overwrite its config, so the folder would
    no longer describe its weights.

    Raises:
        ConfigError: a differing key (the first few are named).
    """
    from medtransfer.shared.config import as_saved, load_yaml
    from medtransfer.shared.utils.errors import ConfigError

    old_path = Path(run_dir) / "config.yaml"
    if not old_path.is_file():
        return
    old = _flatten(load_yaml(old_path))
    new = _flatten(as_saved(cfg))
    diffs = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE]
    if diffs:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diffs[:3])
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise ConfigError(
            f"{run_dir}: holds a run trained with another config ({shown}{more}); resuming would mix them: "
            "use a new --out, or --set train.resume=false to start this folder over"
        )


def check_resume_data(run: RunDir, data_sha: Mapping[str, str]) -> None:
    """Refuse to resume a run on data other than what it started on (another manifest, or the same
    one with rows changed): its earlier epochs, best checkpoint and validation came from the first.

    Raises:
        ConfigError: one line naming the run folder and the file that differs.
    """
    from medtransfer.shared.utils.errors import ConfigError

    was = run.info().get("data_sha256")
    if not isinstance(was, dict) or not data_sha:
        return  # a run of an earlier version, or a caller that names no data file
    if sorted(was.values()) != sorted(data_sha.values()):
        names = ", ".join(sorted(data_sha))
        raise ConfigError(
            f"{run.path}: holds a run trained on other data than {names} (its sha256 differs from what the run "
            "started on); resuming would mix them: use a new --out, or --set train.resume=false to start over"
        )


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
    return out


#: what a finished run leaves beside its checkpoints that describes its results (removed when a
#: fresh start reuses the folder, so that none of it is taken for the new run's)
RESULT_FILES = ("summary.json", "metrics.json", "metrics.csv", "test_metrics.json")


def _start_run(
    run: RunDir, cfg: dict[str, Any], app: str, task: str, monitor: str, mode: str, world: int, fresh: bool = True
) -> None:
    """Create the run folder: config.yaml beside the checkpoints and run.json.

    A resume keeps ``run.json``.  A fresh start into a used folder (``train.resume=false``, or no
    ``last.pt``) starts ``run.json`` over and removes the earlier run's checkpoints and result files:
    before, the earlier run's evaluation (``val``, ``test``, ``baseline``) stayed in ``run.json``, so
    an interrupted restart exported the new weights under the old run's scores.
    """
    run.checkpoint_path("last").parent.mkdir(parents=True, exist_ok=True)
    prev = run.info()
    if fresh and prev:
        for which in ("best", "last"):
            run.checkpoint_path(which).unlink(missing_ok=True)
        for name in RESULT_FILES:
            (run.path / name).unlink(missing_ok=True)
        run.write_info({})
        prev = {}
    save_yaml(cfg, run.path / "config.yaml")
    info = {
        "app": app,
        "task": task,
        "seed": int((cfg.get("train") or {}).get("seed", 0)),
        "monitor": monitor,
        "mode": mode,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "torch": torch.__version__,
        "world_size": world,
    }
    if prev:
        info = {**prev, **info, "created": prev.get("created")}
    run.write_info(info)


def _optimizer(
    model: nn.Module, tc: dict[str, Any], head: list[str] | None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW or SGD over the strategy's parameter groups, with warm-up then cosine (or constant)."""
    groups = param_groups(model, tc, head)
    if not groups:
        raise ValueError("no trainable parameters for this strategy")
    if tc["optimizer"] == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=float(tc["lr"]), momentum=0.9)
    else:
        opt = torch.optim.AdamW(groups, lr=float(tc["lr"]))
    epochs, warm, kind = int(tc["epochs"]), int(tc["warmup_epochs"]), str(tc["scheduler"])
    step_size, gamma = int(tc.get("step_size", 1)), float(tc.get("gamma", 0.1))

    def lr_lambda(ep: int) -> float:
        if ep < warm:
            return (ep + 1) / (warm + 1)
        if kind == "cosine" and epochs > warm:
            return 0.5 * (1 + math.cos(math.pi * (ep - warm) / max(1, epochs - warm)))
        if kind == "step":  # torch.optim.lr_scheduler.StepLR's rule, after the warm-up
            return gamma ** ((ep - warm) // step_size)
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)


def _loaders(
    train_ds: Dataset,
    val_ds: Dataset | None,
    tc: dict[str, Any],
    device: torch.device,
    g: torch.Generator,
    is_dist: bool,
    collate_fn: Callable | None,
    sampler_weights: Sequence[float] | None,
) -> tuple[DataLoader, DataLoader | None, Any]:
    """Training loader (distributed, class-weighted or shuffled), validation loader, and the sampler."""
    bs, nw, seed = int(tc["batch_size"]), int(tc["num_workers"]), int(tc["seed"])
    # on CUDA: pinned host memory for async copies; workers kept alive between epochs
    kw: dict[str, Any] = {
        "num_workers": nw,
        "collate_fn": collate_fn,
        "pin_memory": device.type == "cuda",
        "persistent_workers": nw > 0,
    }
    sampler: Any = None
    if is_dist:
        sampler = torch.utils.data.DistributedSampler(train_ds, shuffle=True, seed=seed)
        train = DataLoader(train_ds, batch_size=bs, sampler=sampler, **kw)
    elif sampler_weights is not None:
        ws = [float(w) for w in sampler_weights]
        sampler = torch.utils.data.WeightedRandomSampler(ws, num_samples=len(ws), replacement=True, generator=g)
        train = DataLoader(train_ds, batch_size=bs, sampler=sampler, **kw)
    else:
        n = len(train_ds)  # type: ignore[arg-type]
        train = DataLoader(train_ds, batch_size=bs, shuffle=True, generator=g, drop_last=n > bs and n % bs == 1, **kw)
    val = DataLoader(val_ds, batch_size=bs, shuffle=False, **kw) if val_ds else None
    return train, val, sampler


class _Tracker:
    """Best-so-far, history and early-stopping counters; restored from ``last.pt`` on resume."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.start_epoch = 0
        self.best_val = math.inf if mode == "min" else -math.inf
        self.best_metrics: dict[str, float] = {}
        self.best_epoch = -1
        self.history: list[dict[str, float]] = []
        self.bad_epochs = 0
        self.stopped = False

    def resume(
        self, st: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer, sched: Any, g: torch.Generator
    ) -> None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        self.start_epoch = int(st["epoch"]) + 1
        self.best_val = float(st["best"]["value"])
        self.best_metrics = dict(st["best"].get("metrics", {}))
        self.best_epoch = int(st["best"].get("epoch", -1))
        self.history = list(st.get("history", []))
        self.bad_epochs = int(st.get("bad_epochs", 0))
        rng = st.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
            g.set_state(rng["loader"])
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(list(rng["cuda"]))

    def update(self, row: dict[str, float], epoch: int, key: str, agree: Callable[[bool], bool]) -> bool:
        """Record an epoch; returns whether the monitored value improved (agreed across ranks)."""
        value = float(row[key])
        improved = agree(value < self.best_val if self.mode == "min" else value > self.best_val)
        self.history.append(row)
        if improved:
            self.best_val, self.best_metrics, self.best_epoch, self.bad_epochs = value, dict(row), epoch, 0
        else:
            self.bad_epochs += 1
        return improved


def _agree(is_dist: bool, device: torch.device) -> Callable[[bool], bool]:
    """Under DDP rank 0 decides whether an epoch improved; every rank follows."""

    def agree(flag: bool) -> bool:
        if not is_dist:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.broadcast(t, 0)
        return bool(t.item())

    return agree


class _Step:
    """One training epoch: autocast forward, scaled backward, accumulation, clipping."""

    def __init__(
        self,
        fwd: Callable,
        loss_fn: Callable,
        opt: torch.optim.Optimizer,
        scaler: Any,
        device: torch.device,
        use_amp: bool,
        amp_dtype: torch.dtype | None,
        accum: int,
        max_grad_norm: float,
    ) -> None:
        self.fwd, self.loss_fn, self.opt, self.scaler = fwd, loss_fn, opt, scaler
        self.device, self.use_amp, self.amp_dtype = device, use_amp, amp_dtype
        self.accum, self.max_grad_norm = accum, max_grad_norm

    def epoch(
        self, train_model: nn.Module, model: nn.Module, loader: DataLoader, epoch: int, tick: Callable[[float], None]
    ) -> dict[str, float]:
        train_model.train()
        t0 = time.time()
        tot, n = 0.0, 0
        self.opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(loader):
            batch = _to(batch, self.device)
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                out, tgt = self.fwd(train_model, batch)
                loss = self.loss_fn(out, tgt)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch}, step {i}")
            self.scaler.scale(loss / self.accum).backward()
            if (i + 1) % self.accum == 0 or i + 1 == len(loader):
                if self.max_grad_norm > 0:
                    self.scaler.unscale_(self.opt)
                    nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
            bsz = _batch_len(tgt)
            tot += float(loss.detach()) * bsz
            n += bsz
            tick(tot / max(n, 1))
        return {"epoch": epoch, "train_loss": tot / max(n, 1), "seconds": time.time() - t0}


def _checkpoint(
    run: RunDir,
    st: _Tracker,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    g: torch.Generator,
    epoch: int,
    key: str,
    improved: bool,
    cfg: dict[str, Any],
    app: str,
    task: str,
    extra_state: dict[str, Any] | None,
) -> None:
    """``last.pt`` every epoch (with optimiser, scheduler and RNG for resume); ``best.pt`` when improved."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "loader": g.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": epoch,
        "config": cfg,
        "app": app,
        "task": task,
        "history": st.history,
        "best": {"value": st.best_val, "metrics": st.best_metrics, "epoch": st.best_epoch, "monitor": key},
        "bad_epochs": st.bad_epochs,
        "rng": rng,
        **(extra_state or {}),
    }
    if improved:
        run.save_checkpoint({k: v for k, v in state.items() if k not in _RESUME_ONLY}, "best")
    run.save_checkpoint(state, "last")


def _batch_len(t: Any) -> int:
    if torch.is_tensor(t):
        return int(t.shape[0]) if t.ndim else 1
    if isinstance(t, dict):
        return _batch_len(next(iter(t.values())))
    if isinstance(t, (list, tuple)):
        return len(t)
    return 1


@torch.no_grad()
def _validate(model, loader, fwd, loss_fn, metric_fn, device, use_amp, amp_dtype=None) -> dict[str, float]:
    model.eval()
    tot, n = 0.0, 0
    outs, tgts = [], []
    for batch in loader:
        batch = _to(batch, device)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
            out, tgt = fwd(model, batch)
            loss = loss_fn(out, tgt)
        b = _batch_len(tgt)
        tot += float(loss) * b
        n += b
        outs.append(_numpy(out))
        tgts.append(_numpy(tgt))
    row = {"val_loss": tot / max(n, 1)}
    if metric_fn is not None:
        for k, v in (metric_fn(_cat(outs), _cat(tgts)) or {}).items():
            row[f"val_{k}"] = float(v)
    return row


def _write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for r in history:
        keys += [k for k in r if k not in keys]
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in history:
            w.writerow(r)
    (run_dir / "metrics.json").write_text(json.dumps(history, indent=2, default=float))


def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
