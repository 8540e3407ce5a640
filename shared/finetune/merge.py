"""Merge models fine-tuned from one base at several sites: TIES, task arithmetic, plain averaging.

Hospitals that cannot pool their data can still pool their weights.  Every site fine-tunes the
same base model; each site's *task vector* is ``tau_t = theta_t - theta_base``.

- ``task_arithmetic`` (Ilharco et al. 2023, "Editing Models with Task Arithmetic"):
  ``theta = theta_base + scale * sum_t tau_t``; the default scale ``1/n`` is the mean task vector
  (identical to averaging the sites' weights); ``scale=1`` adds every site's update in full.
- ``ties`` (Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models"):
  1. trim: keep the top ``trim`` fraction of each task vector by magnitude (over the whole model,
     not per tensor, as the paper does), zero the rest;
  2. elect: the sign of every parameter is the sign of the sum of the trimmed vectors;
  3. disjoint mean: average only the trimmed values that agree with the elected sign (zeros and
     disagreeing values are left out; a parameter nobody kept stays at the base);
  ``theta = theta_base + scale * tau_merged`` (default ``scale=1``).  Merging copies of one run
  returns that run with its task vector trimmed (unchanged with ``trim=1``).
- ``average``: the mean of the sites' weights (model soup / FedAvg); needs no base.

Tensors that are not task vectors:

- BatchNorm running statistics (``running_mean`` / ``running_var``) are averaged over the sites
  (they are data statistics, not learnt updates; the mean of the sites' means is the pooled mean for
  equal site sizes, and the mean of variances ignores the spread between site means: a choice, kept
  simple and stated); integer buffers (``num_batches_tracked``) come from the first run;
- parameters the base does not hold (a head trained from scratch, bottleneck adapters inserted
  for fine-tuning) have no task vector and are averaged over the sites.

LoRA (``shared.peft.LoRALinear`` / ``LoRAConv2d``): the low-rank factors of different sites do not
share a basis, so averaging ``A`` and ``B`` separately is not the average of ``B @ A`` even when
the ranks agree.  Each site's update is therefore merged in its exact dense form
``scale_lora * B @ A`` (:func:`fold_lora`), and the merged update is folded into the wrapped layer's
``base.weight`` with ``lora_b`` set to zero (:func:`unfold_lora`): the merged state dict has the
very keys and shapes of the runs, loads through the same model spec, and computes
``W_base + merged update`` exactly (``merge_lora`` at export folds nothing more).

The functions on state dicts are pure (no files); :func:`merge_runs` reads and writes run folders
through :class:`~medtransfer.shared.rundir.RunDir`, refusing runs that do not share architecture,
labels and base with one line.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from medtransfer.shared.utils.errors import InputError, MedTransferError
from medtransfer.shared.utils.locks import exclusive

METHODS: tuple[str, ...] = ("ties", "task_arithmetic", "average")
#: TIES keeps the top 20% of each task vector by magnitude (the paper's k = 20)
DEFAULT_TRIM = 0.2
BN_STATS = ("running_mean", "running_var")
#: a run whose weights have a median cosine below this to the base was not fine-tuned from it
MIN_BASE_COSINE = 0.5
#: the base must hold at least this fraction of the runs' parameter elements
MIN_BASE_COVERAGE = 0.5

StateDict = dict[str, Any]


class MergeError(MedTransferError):
    """Runs that cannot be merged (one line naming the run and the reason)."""


# ------------------------------------------------------------------------------------------- helpers
def _is_float(v: Any) -> bool:
    return torch.is_tensor(v) and v.is_floating_point()


def is_bn_stat(key: str) -> bool:
    """Whether ``key`` is a BatchNorm running statistic (averaged, never a task vector)."""
    return key.rsplit(".", 1)[-1] in BN_STATS


def base_key(key: str, base: Mapping[str, Any]) -> str | None:
    """The base's name for a run's parameter, or None.

    PEFT wrappers rename the layers they wrap (``x.base.weight`` for LoRA, ``x.block.*`` for an
    adapter-wrapped block), so a base without them is looked up under the unwrapped name too.
    """
    for cand in (
        key,
        key.replace(".base.", "."),
        key.replace(".block.", "."),
        key.replace(".base.", ".").replace(".block.", "."),
    ):
        if cand in base:
            return cand
    return None


def default_scale(method: str, n: int) -> float:
    """The scaling lambda when none is given: ``1/n`` for task arithmetic (the mean task vector), 1 for TIES."""
    return 1.0 / max(n, 1) if method == "task_arithmetic" else 1.0


# ------------------------------------------------------------------------------------ task vectors
def task_vectors(sites: Sequence[Mapping[str, Any]], base: Mapping[str, Any], keys: Sequence[str]) -> list[StateDict]:
    """``site - base`` (float32) for each site on ``keys`` (keys present in the base with the same shape).

    Args:
        sites: the sites' state dicts.
        base: the base state dict.
        keys: the run keys that have a task vector.

    Returns:
        One dict per site, ``{key: tensor}``.
    """
    out = []
    for sd in sites:
        bk = {k: base_key(k, base) for k in keys}
        out.append({k: sd[k].detach().float() - base[bk[k]].detach().float() for k in keys})  # type: ignore[index]
    return out


def trim_threshold(tv: Mapping[str, torch.Tensor], keep: float) -> float | None:
    """The magnitude below which TIES trims a task vector (None: keep everything).

    Args:
        tv: one task vector ``{key: tensor}`` (trimming is global over all its tensors, as in the paper).
        keep: fraction of entries kept, in (0, 1].

    Returns:
        The ``round(keep * d)``-th largest magnitude (entries at or above it are kept), or None.
    """
    if not 0.0 < keep <= 1.0:
        raise MergeError(f"--trim must be in (0, 1] (the fraction of each task vector kept; got {keep})")
    d = sum(v.numel() for v in tv.values())
    n_keep = max(1, int(round(keep * d)))
    if keep >= 1.0 or n_keep >= d:
        return None
    flat = torch.cat([v.reshape(-1).abs() for v in tv.values()])
    return float(torch.kthvalue(flat, d - n_keep + 1).values)


def trim_topk(tv: Mapping[str, torch.Tensor], keep: float) -> StateDict:
    """Keep the ``keep`` fraction of a task vector's entries with the largest magnitude (zero the rest)."""
    thr = trim_threshold(tv, keep)
    return {k: v.clone() if thr is None else v * (v.abs() >= thr) for k, v in tv.items()}


def ties(tvs: Sequence[Mapping[str, torch.Tensor]], keep: float = DEFAULT_TRIM) -> tuple[StateDict, dict[str, float]]:
    """TIES-merge task vectors; the scaling is applied by the caller.

    Per entry: trim each vector to its top ``keep`` fraction (:func:`trim_topk`); elect the sign of
    the sum of the trimmed values; average the trimmed values of that sign (zeros and the other sign
    left out; 0 where the sum is 0).  Computed tensor by tensor, one site at a time (memory: a few
    copies of one tensor, not of the model).

    Returns:
        (merged task vector, stats: ``kept_fraction`` (mean over sites), ``sign_conflict_fraction``
        (entries kept by two or more sites with opposite signs)).
    """
    thrs = [trim_threshold(tv, keep) for tv in tvs]
    merged: StateDict = {}
    kept = conflict = n = 0.0
    for k in tvs[0]:
        sp = torch.zeros_like(tvs[0][k])
        sn, cp, cn = torch.zeros_like(sp), torch.zeros_like(sp), torch.zeros_like(sp)
        for tv, thr in zip(tvs, thrs):
            v = tv[k] if thr is None else tv[k] * (tv[k].abs() >= thr)
            sp += v.clamp(min=0)
            sn += v.clamp(max=0)
            cp += v > 0
            cn += v < 0
        total = sp + sn  # its sign is the elected sign
        zero = torch.zeros_like(sp)
        merged[k] = torch.where(total > 0, sp / cp.clamp(min=1), torch.where(total < 0, sn / cn.clamp(min=1), zero))
        kept += float((cp + cn).sum())
        conflict += float(((cp > 0) & (cn > 0)).sum())
        n += sp.numel()
    n = n or 1.0
    return merged, {"kept_fraction": kept / (n * len(tvs)), "sign_conflict_fraction": conflict / n}


def task_arithmetic(tvs: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
    """The sum of the task vectors (the caller scales it)."""
    return {k: torch.stack([tv[k] for tv in tvs]).sum(0) for k in tvs[0]}


# -------------------------------------------------------------------------------------------- LoRA
def lora_scalings(model: torch.nn.Module) -> dict[str, float]:
    """``{module name: alpha / r}`` of every LoRA layer of a model (what :func:`fold_lora` needs)."""
    from medtransfer.shared.peft import LoRAConv2d, LoRALinear

    return {n: float(m.scaling) for n, m in model.named_modules() if isinstance(m, (LoRALinear, LoRAConv2d))}


def lora_delta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The dense update ``B @ A`` of one LoRA layer (linear: (out, r) @ (r, in); conv: 1x1 ``B`` over k x k ``A``)."""
    a, b = a.float(), b.float()
    if a.ndim == 2:
        return b @ a
    return torch.einsum("or,rihw->oihw", b.reshape(b.shape[0], b.shape[1]), a)


def fold_lora(sd: Mapping[str, Any], scalings: Mapping[str, float]) -> StateDict:
    """Fold each LoRA layer's update into its ``base.weight`` and drop the factors.

    Args:
        sd: a state dict with ``<name>.base.weight``, ``<name>.lora_a.weight``, ``<name>.lora_b.weight``.
        scalings: :func:`lora_scalings` of the model.

    Returns:
        A new state dict: ``<name>.base.weight = W + scaling * B @ A``, no ``lora_a`` / ``lora_b`` keys.
    """
    out = dict(sd)
    for name, s in scalings.items():
        ka, kb, kw = f"{name}.lora_a.weight", f"{name}.lora_b.weight", f"{name}.base.weight"
        if ka not in sd or kb not in sd or kw not in sd:
            continue
        w = sd[kw]
        out[kw] = (w.float() + s * lora_delta(sd[ka], sd[kb])).to(w.dtype)
        del out[ka], out[kb]
    return out


def unfold_lora(dense: Mapping[str, Any], template: Mapping[str, Any], scalings: Mapping[str, float]) -> StateDict:
    """Back to the runs' keys: the merged update stays in ``base.weight``, ``lora_b`` is zero.

    Args:
        dense: the merged, folded state dict.
        template: one run's state dict (key order, ``lora_a`` values and shapes).
        scalings: the LoRA layers (:func:`lora_scalings`).

    Returns:
        A state dict with exactly the template's keys.
    """
    out: StateDict = {}
    for k, v in template.items():
        if k in dense:
            out[k] = dense[k]
        elif k.endswith(".lora_b.weight") and k[: -len(".lora_b.weight")] in scalings:
            out[k] = torch.zeros_like(v)
        elif k.endswith(".lora_a.weight") and k[: -len(".lora_a.weight")] in scalings:
            out[k] = v.clone()
        else:
            raise MergeError(f"merged weights lack '{k}'")
    return out


# ------------------------------------------------------------------------------------------ merging
def base_cosine(site: Mapping[str, Any], base: Mapping[str, Any]) -> tuple[float, int]:
    """Median cosine similarity between a run's weight tensors (2-D or more) and the base's.

    A model fine-tuned from the base stays close to it (cosine near 1); one trained from another
    start is nearly orthogonal to it (near 0).

    Returns:
        (median cosine, number of tensors compared); ``(nan, 0)`` when nothing is comparable.
    """
    cos = []
    for k, v in site.items():
        bk = base_key(k, base)
        if not _is_float(v) or v.ndim < 2 or v.numel() < 16 or bk is None or is_bn_stat(k):
            continue
        b = base[bk]
        if not _is_float(b) or b.shape != v.shape:
            continue
        x, y = v.reshape(-1).double(), b.reshape(-1).double()
        den = float(x.norm() * y.norm())
        if den > 0:
            cos.append(float(x @ y) / den)
    if not cos:
        return float("nan"), 0
    return float(torch.tensor(cos).median()), len(cos)


def merge_state_dicts(
    sites: Sequence[Mapping[str, Any]],
    base: Mapping[str, Any] | None,
    method: str,
    trim: float = DEFAULT_TRIM,
    scale: float | None = None,
) -> tuple[StateDict, dict[str, Any]]:
    """Merge state dicts of one architecture fine-tuned from ``base``.

    Args:
        sites: the sites' state dicts (same keys and shapes; LoRA already folded, see :func:`fold_lora`).
        base: the base state dict (None only for ``average``).
        method: ``ties``, ``task_arithmetic`` or ``average``.
        trim: TIES: fraction of each task vector kept (by magnitude).
        scale: the lambda applied to the merged task vector (default :func:`default_scale`).

    Returns:
        (merged state dict with the sites' keys, dtypes and devices; report: method, trim, scale,
        counts of task-vector / averaged / BN-statistic / copied tensors, TIES statistics).
    """
    if method not in METHODS:
        raise MergeError(f"unknown merge method '{method}' (choose from {', '.join(METHODS)})")
    if not sites:
        raise MergeError("nothing to merge")
    if method != "average" and base is None:
        raise MergeError(f"method '{method}' needs the base the runs were fine-tuned from (--base)")
    lam = default_scale(method, len(sites)) if scale is None else float(scale)
    if not math.isfinite(lam):
        raise MergeError(f"--scale must be a finite number (got {scale})")
    first = sites[0]
    tv_keys, avg_keys, bn_keys, copy_keys = [], [], [], []
    for k, v in first.items():
        if not _is_float(v):
            copy_keys.append(k)
        elif is_bn_stat(k):
            bn_keys.append(k)
        elif method == "average" or base is None:
            avg_keys.append(k)
        else:
            bk = base_key(k, base)
            if bk is not None and _is_float(base[bk]) and tuple(base[bk].shape) == tuple(v.shape):
                tv_keys.append(k)
            else:
                avg_keys.append(k)
    merged: StateDict = {}
    for k in copy_keys:
        merged[k] = first[k]
    for k in bn_keys + avg_keys:
        merged[k] = torch.stack([sd[k].float() for sd in sites]).mean(0).to(first[k].dtype)
    report: dict[str, Any] = {"method": method, "scale": lam if method != "average" else None, "n_runs": len(sites)}
    if tv_keys:
        assert base is not None
        tvs = task_vectors(sites, base, tv_keys)
        if method == "ties":
            tau, stats = ties(tvs, trim)
            report.update(trim=trim, **stats)
        else:
            tau = task_arithmetic(tvs)
        for k in tv_keys:
            b = base[base_key(k, base)]  # type: ignore[index]
            merged[k] = (b.float().to(tau[k].device) + lam * tau[k]).to(first[k].dtype)
    report.update(
        n_task_vector_tensors=len(tv_keys),
        n_averaged_tensors=len(avg_keys),
        averaged=avg_keys[:20] if method != "average" else [],
        n_bn_stat_tensors=len(bn_keys),
        n_copied_tensors=len(copy_keys),
    )
    return {k: merged[k] for k in first}, report


# ------------------------------------------------------------------------------------- run folders
def _spec_diff(a: Any, b: Any, path: str = "") -> str:
    """The first place two model specs differ, as ``key: A vs B`` (short)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b or a[k] != b[k]:
                return _spec_diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return ""
    sa, sb = json.dumps(a, default=str, sort_keys=True), json.dumps(b, default=str, sort_keys=True)
    return f"{path or 'spec'}: {sa[:60]} vs {sb[:60]}"


def _labels(info: Mapping[str, Any], ck: Mapping[str, Any]) -> list[str] | None:
    labels = info.get("labels", ck.get("labels"))
    return [str(x) for x in labels] if isinstance(labels, (list, tuple)) else None


def _recorded_init(info: Mapping[str, Any]) -> str:
    """The run folder a run records it was initialised from ('' when it records none)."""
    init = info.get("init")
    src = info.get("init_run") or (init.get("source") if isinstance(init, Mapping) else "")
    return str(src or "")


def _load_base(base: str | Path) -> tuple[StateDict, dict[str, Any]]:
    """The base's state dict and what identifies it (path, sha256)."""
    from medtransfer.shared.registry.weights import read_state_dict
    from medtransfer.shared.rundir import RunDir
    from medtransfer.shared.utils.hashing import sha256_file

    p = Path(base)
    if p.is_dir():
        run = RunDir(p)
        ck = run.load_checkpoint("best")
        sha = sorted(run.expected_sha256("best") or [""])[0]
        return dict(ck["model"]), {"path": str(p.resolve()), "kind": "run", "sha256": sha}
    if not p.is_file():
        raise InputError(p, "--base: no such run folder or weights file")
    return read_state_dict(p), {"path": str(p.resolve()), "kind": "weights", "sha256": sha256_file(p)}


def _same_weights(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool | None:
    """Whether two state dicts hold the same values on the tensors they share (None: nothing shared)."""
    common = [k for k in a if k in b and torch.is_tensor(a[k]) and torch.is_tensor(b[k])]
    if not common:
        return None
    return all(a[k].shape == b[k].shape and torch.equal(a[k].to(b[k].dtype), b[k]) for k in common)


def _check_provenance(
    run_path: Path, info: Mapping[str, Any], base: Path, base_sd: Mapping[str, Any], seen: dict[str, Any]
) -> None:
    """Refuse a run that records a starting point (run folder or weights file, still present) whose
    weights are not the base's, whichever way the base is given (its run folder or a weights file)."""
    from medtransfer.shared.registry.weights import read_state_dict
    from medtransfer.shared.rundir import RunDir

    src = _recorded_init(info)
    if not src:
        return
    sp = Path(src)
    if not sp.exists() or sp.resolve() == base.resolve():
        return
    key = str(sp.resolve())
    if key not in seen:
        try:
            seen[key] = RunDir(sp).load_checkpoint("best")["model"] if sp.is_dir() else read_state_dict(sp)
        except MedTransferError:
            seen[key] = None  # unreadable now: the weight-cosine test below still applies
    if seen[key] is not None and _same_weights(seen[key], base_sd) is False:
        raise MergeError(f"{run_path}: was fine-tuned from {sp}, whose weights are not the base {base}'s; refused")


def not_validated_baseline(rec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The merged run's ``run.json["baseline"]``: the task's baseline, the merged model not yet validated.

    ``beats_baseline`` is False until someone validates the merged run, so ``export`` refuses it
    unless ``--force`` (and a forced bundle says why): merged weights are never exported as if checked.
    """
    rec = dict(rec or {})
    name = str(rec.get("baseline_name") or "trivial baseline")
    return {
        **rec,
        "model": float("nan"),
        "baseline_name": f"{name}; merged weights not validated (evaluate the merged run)",
        "beats_baseline": False,
        "merged": True,
    }


#: run.json fields of the first run that describe its own training / evaluation (not copied)
_OWN_RESULTS = ("checkpoints", "val", "test", "val_baselines", "created", "baseline")


def merge_runs(
    runs: Sequence[str | Path],
    out: str | Path,
    base: str | Path | None,
    method: str = "ties",
    trim: float = DEFAULT_TRIM,
    scale: float | None = None,
) -> dict[str, Any]:
    """Merge run folders fine-tuned from one base into a new, ordinary run folder.

    The runs must record the same app, task, model spec (architecture), parameter names and shapes,
    and labels; each must look fine-tuned from ``base`` (the base holds most of its parameters,
    its weights are close to the base's, and a base run it records is this one).  The new run has
    ``run.json`` (the first run's fields, a ``merged_from`` record and a not-validated baseline),
    ``config.yaml`` (the first run's) and ``checkpoints/best.pt`` (sha256 in ``run.json``, model
    spec), so each app's ``evaluate`` and ``export`` read it unchanged.

    Args:
        runs: two or more run folders.
        out: the new run folder (must not exist or be empty).
        base: the base run folder or weights file (optional for ``average``).
        method: ``ties``, ``task_arithmetic`` or ``average``.
        trim: TIES: fraction of each task vector kept.
        scale: lambda on the merged task vector (default: TIES 1, task arithmetic 1/n).

    Returns:
        The ``merged_from`` record (with the merge report).

    Raises:
        MergeError / InputError / CheckpointError: one line naming the run and the reason.
    """
    from medtransfer.shared.config import load_yaml, save_yaml
    from medtransfer.shared.rundir import RunDir, build_from_spec

    if method not in METHODS:
        raise MergeError(f"unknown merge method '{method}' (choose from {', '.join(METHODS)})")
    if len(runs) < 2:
        raise MergeError("merge needs two or more runs")
    if method == "ties" and not 0.0 < trim <= 1.0:
        raise MergeError(f"--trim must be in (0, 1] (the fraction of each task vector kept; got {trim})")
    if scale is not None and not math.isfinite(scale):
        raise MergeError(f"--scale must be a finite number (got {scale})")
    out = Path(out)
    _check_out(out)
    dirs = [RunDir(r) for r in runs]
    where: dict[str, Path] = {}
    for d in dirs:
        k = os.path.realpath(d.path)
        if k in where:
            raise MergeError(f"{d.path}: given twice (as {where[k]} and {d.path}); merge needs distinct runs")
        where[k] = d.path
    infos = [d.info() for d in dirs]
    cks = [d.load_checkpoint("best") for d in dirs]
    specs = [ck.get("model_spec") or info.get("model_spec") for ck, info in zip(cks, infos)]
    r0, i0, s0, ck0 = dirs[0].path, infos[0], specs[0], cks[0]
    if not isinstance(s0, Mapping):
        raise MergeError(f"{r0}: records no model spec; cannot merge (retrain with this medtransfer)")
    l0 = _labels(i0, ck0)
    for d, info, spec, ck in zip(dirs[1:], infos[1:], specs[1:], cks[1:]):
        for key in ("app", "task"):
            if info.get(key) != i0.get(key):
                raise MergeError(f"{d.path}: {key} '{info.get(key)}' differs from {r0} ('{i0.get(key)}'); refused")
        if not isinstance(spec, Mapping):
            raise MergeError(f"{d.path}: records no model spec; cannot merge (retrain with this medtransfer)")
        if json.dumps(spec, sort_keys=True, default=str) != json.dumps(s0, sort_keys=True, default=str):
            raise MergeError(
                f"{d.path}: different architecture from {r0} (model spec {_spec_diff(spec, s0)}); "
                "merge needs runs of one architecture"
            )
        sd, sd0 = ck["model"], ck0["model"]
        if list(sd) != list(sd0) or any(
            tuple(sd[k].shape) != tuple(sd0[k].shape) for k in sd if torch.is_tensor(sd[k])
        ):
            bad = next(
                (k for k in list(sd) + list(sd0) if k not in sd or k not in sd0 or sd[k].shape != sd0[k].shape), "?"
            )
            raise MergeError(
                f"{d.path}: parameters differ from {r0} (first: '{bad}'); merge needs runs of one architecture"
            )
        lab = _labels(info, ck)
        if lab != l0:
            raise MergeError(
                f"{d.path}: labels {lab} differ from {r0} ({l0}); heads for different label sets are not merged"
            )
    model = build_from_spec(s0)
    scalings = lora_scalings(model)
    sites = [fold_lora(ck["model"], scalings) for ck in cks]
    base_sd: StateDict | None = None
    base_rec: dict[str, Any] = {}
    if base is not None:
        base_raw, base_rec = _load_base(base)
        base_sd = fold_lora(base_raw, scalings)
        float_keys = [k for k, v in sites[0].items() if _is_float(v) and not is_bn_stat(k)]
        total = sum(sites[0][k].numel() for k in float_keys) or 1
        found = sum(
            sites[0][k].numel()
            for k in float_keys
            if (bk := base_key(k, base_sd)) is not None and tuple(base_sd[bk].shape) == tuple(sites[0][k].shape)
        )
        if found / total < MIN_BASE_COVERAGE:
            raise MergeError(
                f"{base}: holds only {100 * found / total:.0f}% of the runs' parameters; "
                "not the base they were fine-tuned from"
            )
        seen: dict[str, Any] = {}
        for d, info, sd in zip(dirs, infos, sites):
            _check_provenance(d.path, info, Path(base), base_raw, seen)
            cos, n = base_cosine(sd, base_sd)
            if n and cos < MIN_BASE_COSINE:
                raise MergeError(
                    f"{d.path}: not fine-tuned from the base {base} (median weight cosine {cos:.2f} over {n} "
                    "tensors; a fine-tuned run stays near 1); refused"
                )
    else:  # no base (average): the runs must still share a starting point, or averaging mixes unrelated weights
        for d, sd in zip(dirs[1:], sites[1:]):
            cos, n = base_cosine(sd, sites[0])
            if n and cos < MIN_BASE_COSINE:
                raise MergeError(
                    f"{d.path}: does not share a starting point with {dirs[0].path} (median weight cosine "
                    f"{cos:.2f} over {n} tensors; runs fine-tuned from one base stay near 1); refused"
                )
    merged, report = merge_state_dicts(sites, base_sd, method, trim, scale)
    bad = next(
        (k for k, v in merged.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()), None
    )
    if bad is not None:
        raise MergeError(
            f"the merged weights hold inf or NaN (first: '{bad}'; --scale {report.get('scale')}); nothing written"
        )
    merged = unfold_lora(merged, cks[0]["model"], scalings)
    try:
        model.load_state_dict(merged)
    except RuntimeError:
        raise MergeError(f"{r0}: merged weights do not load into the recorded model spec") from None
    record = {
        "method": method,
        "trim": trim if method == "ties" else None,
        "scale": report.get("scale"),
        "runs": [{"path": str(d.path.resolve()), "sha256": sorted(d.expected_sha256("best") or [""])[0]} for d in dirs],
        "base": base_rec or None,
        "lora": "dense update per site, folded into base.weight (lora_b = 0)" if scalings else None,
        "batchnorm": "running statistics averaged over the runs",
        "run_json_from": str(r0.resolve()),
        "report": report,
    }
    info = {k: v for k, v in i0.items() if k not in _OWN_RESULTS}
    info.update(
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        merged_from=record,
        baseline=not_validated_baseline(i0.get("baseline")),
        model_spec=dict(s0),
    )
    state = {k: v for k, v in ck0.items() if k not in ("model", "history", "best")}
    state.update(model=merged, model_spec=dict(s0), merged_from=record)
    config = load_yaml(r0 / "config.yaml") if (r0 / "config.yaml").is_file() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(out.parent / f".{out.name}.merge.lock", out, "already being merged into by"):
        _check_out(out)  # again, under the lock: another merge may have finished into it meanwhile
        stage = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        try:
            run = RunDir(stage, must_exist=False)
            stage.mkdir()
            run.write_info(info)
            if config is not None:
                save_yaml(config, stage / "config.yaml")
            run.save_checkpoint(state, "best")
            if out.is_dir():
                out.rmdir()  # empty (checked under the lock)
            os.rename(stage, out)  # the run appears whole or not at all
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return record


def _check_out(out: Path) -> None:
    from medtransfer.shared.runtime.score import bundle_above

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "--out exists and is not empty; choose a new run folder")
    inside = bundle_above(out.parent)
    if inside is not None:  # an unlisted folder makes the bundle refused
        raise InputError(out, f"--out is inside the bundle {inside}; choose a folder outside it")
