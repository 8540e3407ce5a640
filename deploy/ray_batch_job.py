"""Example batch job on a Ray cluster: score a manifest with an ONNX bundle.

Submit to a running cluster (workers need ``pip install 'medtransfer[distributed]'``, no torch):

    export RAY_ADDRESS=ray://head-node:10001      # or "auto" on the head node
    python deploy/ray_batch_job.py BUNDLE_DIR MANIFEST.csv results.csv --actors 16

or with the Ray Jobs API:

    ray job submit --working-dir . -- python deploy/ray_batch_job.py /shared/bundles/eeg /shared/m.csv /shared/out.csv

Without ``RAY_ADDRESS`` it joins the cluster ``ray start --head`` left on this machine, else it
starts a small local Ray (``--actors`` CPUs; ``RAY_ADDRESS=local`` always does).  The job is resumable:
re-running it skips cases already in results.csv, and bad cases become error rows.  It is the same
code path as ``medtransfer score --engine ray``: the shared engine
(``medtransfer.shared.runtime.engines``) keeps one long-lived actor per ``--actors`` (each opens
the bundle once), sends each a few chunks of case paths at a time (never arrays), and this
process alone appends the rows.  The summary printed at the end gives the start-up (Ray and
actors) apart from the work.
"""

from __future__ import annotations

import argparse
import json

from medtransfer.shared.runtime.bundle import load_bundle
from medtransfer.shared.runtime.score import cases_from_manifest, score


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, score the manifest on Ray, print the summary as JSON."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--actors", type=int, default=4, help="onnxruntime actors (one session each)")
    ap.add_argument("--chunksize", type=int, default=None, help="cases per task (default: the engine's)")
    ap.add_argument("--engine", default="ray", choices=["ray", "local"], help="local: processes on this machine")
    args = ap.parse_args(argv)
    summary = score(
        args.bundle,
        cases_from_manifest(args.manifest, load_bundle(args.bundle)),  # the bundle: videoseg labels prompt
        args.out,
        resume=True,
        workers=args.actors,
        engine=args.engine,
        chunksize=args.chunksize,
        manifest=args.manifest,
        progress=False,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
