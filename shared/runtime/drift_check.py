"""How often does ``medtransfer estimate`` flag drift, with and without a real shift?  (issue 13)

``python -m medtransfer.shared.runtime.drift_check DEMO_OUT [-o drift_check.json] [--reps 100]``
(or ``BUNDLE --manifest MANIFEST`` for one bundle and the val + test manifest it was trained on)

For every classifier bundle with reference statistics under ``DEMO_OUT`` (a ``medtransfer demo``
output) whose run's manifest has ``val`` and ``test`` rows, the bundle's predictor and its app's
``input_stats`` hook observe every validation and test case once (torch-free), then:

- **null** (false-positive rate): ``--reps`` random halves of the pooled validation + test cases, one
  half as the reference (built as export builds it), the other as the site.  Both halves come from
  the same distribution, so every flag is a false positive.
- **test split**: the bundle's own ``reference.json`` (validation) against the whole test split, and
  against its first 40 rows (what the demo's estimate section took) and against ``--reps`` random
  40-case subsets (false-positive rate against the real validation reference).
- **copy**: the test split written by :func:`estimate_shift.shifted_manifest` at severity 0; the
  largest change of any input statistic between a case and its copy says whether the copy writer
  alters the inputs.
- **shifts**: the test split with gain x2 (6 dB) and heavy noise (EEG white noise 40 uV, image
  speckle 0.5, feature noise 0.5) against ``reference.json``: these should flag.

Each check runs the drift test of this checkout (:func:`estimate.drift_report`) and, for the
"before" column, the one of commit ``f85972a`` (read with ``git show``; skipped when git or the
commit is missing).  Writes JSON and a bar plot; prints a table.  Torch-free.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.runtime import estimate as est

#: the commit whose drift test is the "before" column
BEFORE_COMMIT = "f85972a"
#: test cases the demo's estimate section takes (``estimate_shift.demo_section``, fast)
DEMO_LIMIT = 40
#: modality -> (gain x2, heavy noise) as ``estimate_shift`` shifts
SHIFTS = {
    "eeg": [("gain", 6.0), ("white_noise", 40.0)],
    "image": [("gain", 6.0), ("speckle", 0.5)],
    "features": [("noise", 0.5)],
}

DriftFn = Callable[[Mapping[str, Any], Mapping[str, Sequence[float]]], dict[str, Any]]


def before_drift_report() -> DriftFn | None:
    """``drift_report`` of :data:`BEFORE_COMMIT` (None when git or the commit is unavailable)."""
    root = Path(__file__).resolve().parents[2]
    try:
        src = subprocess.run(
            ["git", "-C", str(root), "show", f"{BEFORE_COMMIT}:shared/runtime/estimate.py"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    mod = types.ModuleType("estimate_before")
    exec(compile(src, f"{BEFORE_COMMIT}:estimate.py", "exec"), mod.__dict__)  # noqa: S102 - our own file
    return mod.drift_report


def reference_from(observations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The drift part of a reference (``stats``, ``outputs``, ``confidence``) as export builds it."""
    site = est.site_values(observations)
    groups: dict[str, dict[str, list[float]]] = {"stats": {}, "outputs": {}, "confidence": {}}
    for key, values in site.items():
        group, name = key.split(".", 1)
        target = {"input": "stats", "output": "outputs", "confidence": "confidence"}[group]
        groups[target][name] = est.reference_sample(values)
    return groups


def observe_rows(bundle: Any, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`estimate.observe` over ``{"path"}`` rows (unreadable cases skipped)."""
    from medtransfer.shared.runtime.predictor import build_predictor

    predictor = build_predictor(bundle)
    stats_fn = est.stats_hook(bundle.app)
    out = []
    for r in rows:
        try:
            out.append(est.observe(predictor, stats_fn, Path(r["path"]), r.get("extra") or {}))
        except Exception:  # noqa: BLE001, S112 - a bad case is left out, as estimate makes it an error row
            continue
    return out


def _listed(manifest: Path) -> list[dict[str, Any]]:
    from medtransfer.shared.manifest import read_manifest

    return [{"path": str(r.path)} for r in read_manifest(manifest)]


def _cell(f: Mapping[str, Any], tag: str) -> str:
    status = f" [{f['status']}]" if f.get("status") else ""
    return f"{tag} flag={f['flag']} ({f['n_drifted']} drifted){status}"


def _flags(fns: Mapping[str, DriftFn], ref: Mapping[str, Any], obs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    site = est.site_values(obs)
    out: dict[str, Any] = {"n_site": len(obs)}
    for tag, fn in fns.items():
        d = fn(ref, site)
        out[tag] = {"flag": d["flag"], "n_drifted": len(d["drifted"]), "drifted": d["drifted"][:5]}
        if "status" in d:
            out[tag]["status"] = d["status"]
    return out


def check_bundle(
    bundle_dir: Path,
    work: Path,
    reps: int = 100,
    seed: int = 0,
    fns: Mapping[str, DriftFn] | None = None,
    manifest: Path | None = None,
) -> dict[str, Any] | None:
    """Every check of the module docstring on one bundle (None when it has no val + test split).

    Args:
        bundle_dir: a classifier bundle with reference statistics.
        work: folder for the shifted copies.
        reps: random halves for the false-positive rate.
        seed: their seed.
        fns: tag -> drift_report to compare (default: this checkout's).
        manifest: the manifest with ``val`` and ``test`` rows (default: the one the bundle's run recorded).
    """
    from medtransfer.shared.manifest import read_manifest
    from medtransfer.shared.rundir import RunDir
    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.estimate_shift import modality_of, shifted_manifest

    bundle = load_bundle(bundle_dir)
    ref = est.read_reference(bundle)
    if ref.get("kind") != "classifier":
        return None
    run_dir = bundle.meta.get("run_dir")
    if manifest is None and run_dir and Path(run_dir).is_dir():
        manifest = RunDir(run_dir).info().get("manifest")
    if not manifest or not Path(manifest).is_file():
        return None
    rows = {s: [{"path": str(r.path), "extra": dict(r.extra)} for r in read_manifest(manifest) if r.split == s]
            for s in ("val", "test")}  # fmt: skip
    if not rows["val"] or not rows["test"]:
        return None
    fns = fns or {"after": est.drift_report}
    obs = {s: observe_rows(bundle, r) for s, r in rows.items()}
    pooled = obs["val"] + obs["test"]
    rng = np.random.default_rng(seed)
    null_flags: dict[str, int] = dict.fromkeys(fns, 0)
    null_insufficient = 0
    for _ in range(reps):
        idx = rng.permutation(len(pooled))
        half = len(pooled) // 2
        r_half = reference_from([pooled[i] for i in idx[:half]])
        s_half = est.site_values(pooled[i] for i in idx[half : 2 * half])
        for tag, fn in fns.items():
            d = fn(r_half, s_half)
            null_flags[tag] += int(d["flag"])
            if tag == "after" and d.get("status") == est.INSUFFICIENT_DATA:
                null_insufficient += 1
    res: dict[str, Any] = {
        "app": bundle.app,
        "bundle": str(bundle_dir),
        "n_val": len(obs["val"]),
        "n_test": len(obs["test"]),
        "n_statistics": len(est.site_values(pooled)),
        "null": {
            "reps": reps,
            "half": len(pooled) // 2,
            "false_positive_rate": {t: round(n / max(reps, 1), 3) for t, n in null_flags.items()},
            "insufficient_data": null_insufficient,
        },
        "test_split": _flags(fns, ref, obs["test"]),
    }
    if len(obs["test"]) > DEMO_LIMIT:  # what the demo's estimate section took: the split's first rows
        res[f"test_split_first{DEMO_LIMIT}"] = _flags(fns, ref, obs["test"][:DEMO_LIMIT])
        sub_flags = dict.fromkeys(fns, 0)
        for _ in range(reps):  # random subsets of that size instead
            pick = rng.choice(len(obs["test"]), DEMO_LIMIT, replace=False)
            site = est.site_values(obs["test"][i] for i in pick)
            for tag, fn in fns.items():
                sub_flags[tag] += int(fn(ref, site)["flag"])
        res[f"test_random{DEMO_LIMIT}"] = {
            "reps": reps,
            "false_positive_rate": {t: round(n / max(reps, 1), 3) for t, n in sub_flags.items()},
        }
    modality = modality_of(rows["test"][0]["path"])
    test_paths = [{"path": r["path"], "label": ""} for r in rows["test"]]
    man = shifted_manifest(test_paths, work / "none_0", "none", 0.0)
    copies = observe_rows(bundle, _listed(man))
    diffs: dict[str, float] = {}
    for a, b in zip(obs["test"], copies):
        for k, v in (a.get("stats") or {}).items():
            diffs[k] = max(diffs.get(k, 0.0), abs(float(v) - float((b.get("stats") or {}).get(k, np.inf))))
    worst = max(diffs, key=lambda k: diffs[k]) if diffs else None
    res["copy"] = {
        "max_abs_change": round(diffs[worst], 6) if worst else None,
        "statistic": worst,
        **_flags(fns, ref, copies),
    }
    res["shifts"] = {}
    for name, sev in SHIFTS.get(modality, []):
        man = shifted_manifest(test_paths, work / f"{name}_{sev:g}", name, sev, seed=1)
        sh = observe_rows(bundle, _listed(man))
        res["shifts"][f"{name} {sev:g}"] = _flags(fns, ref, sh)
    return res


def plot(results: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """False-positive rate (random halves) before / after, and flags on the shifted test split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    tags = list(results[0]["null"]["false_positive_rate"]) if results else []
    x = np.arange(len(results))
    for j, tag in enumerate(tags):
        ax.bar(x + j * 0.35, [r["null"]["false_positive_rate"][tag] for r in results], 0.35, label=tag)
    ax.set_xticks(x + 0.175 * (len(tags) - 1), [r["app"] for r in results])
    ax.set_ylabel("false-positive rate (unshifted halves)")
    top = max([r["null"]["false_positive_rate"][t] for r in results for t in tags] or [0.0])
    ax.set_ylim(0, max(0.2, 1.2 * top))
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line (see the module docstring)."""
    from medtransfer.shared.bench import load_average
    from medtransfer.shared.runtime.estimate_shift import bundles_under

    ap = argparse.ArgumentParser(prog="python -m medtransfer.shared.runtime.drift_check")
    ap.add_argument("demo_out", type=Path, help="a demo output folder (its bundles), or one bundle with --manifest")
    ap.add_argument("--manifest", type=Path, default=None, help="val + test manifest for a single bundle")
    ap.add_argument("-o", "--out", type=Path, default=Path("drift_check.json"))
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    fns: dict[str, DriftFn] = {}
    before = before_drift_report()
    if before is not None:
        fns["before"] = before
    fns["after"] = est.drift_report
    results = []
    with tempfile.TemporaryDirectory(prefix="drift_check_") as tmp:
        for b in [a.demo_out] if a.manifest else bundles_under(a.demo_out):
            r = check_bundle(b, Path(tmp) / b.name, a.reps, a.seed, fns, a.manifest)
            if r is not None:
                results.append(r)
    out = {"results": results, "load_average": load_average(), "rule": est.drift_rule()}
    if results:
        out["plot"] = str(plot(results, a.out.with_suffix(".png")))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    for r in results:
        fpr = r["null"]["false_positive_rate"]
        print(f"{r['app']}: val {r['n_val']}, test {r['n_test']}, {r['n_statistics']} statistics")
        print(f"  null ({r['null']['reps']} random halves of {r['null']['half']}): false-positive rate {fpr}")
        checks = [("test split", r["test_split"]), ("copy (severity 0)", r["copy"]), *r["shifts"].items()]
        if f"test_split_first{DEMO_LIMIT}" in r:
            checks.insert(1, (f"test split, first {DEMO_LIMIT} rows", r[f"test_split_first{DEMO_LIMIT}"]))
        for name, f in checks:
            print(f"  {name}: " + ", ".join(_cell(f[t], t) for t in fns))
        if f"test_random{DEMO_LIMIT}" in r:
            sub = r[f"test_random{DEMO_LIMIT}"]
            print(f"  {sub['reps']} random {DEMO_LIMIT}-case subsets of the test split vs reference.json: "
                  f"false-positive rate {sub['false_positive_rate']}")  # fmt: skip
        print(f"  copy writer: largest statistic change {r['copy']['max_abs_change']} ({r['copy']['statistic']})")
    print(f"load average {out['load_average']}; wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
