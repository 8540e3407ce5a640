"""Example batch job on a Ray cluster: score a manifest with an ONNX bundle.

Submit to a running cluster (workers need ``pip install 'medtransfer[distributed]'``, no torch):

    export RAY_ADDRESS=ray://head-node:10001      # or "auto" on the head node
    python deploy/ray_batch_job.py BUNDLE_DIR MANIFEST.csv results.csv --actors 16

or with the Ray Jobs API:

    ray job submit --working-dir . -- python deploy/ray_batch_job.py /shared/bundles/eeg /shared/m.csv /shared/out.csv

The job is resumable: re-running it skips cases already in results.csv, and bad cases become
error rows.  It is the same code path as ``medtransfer score --engine ray``.
"""
from __future__ import annotations

import argparse
import json

from medtransfer.shared.runtime.score import cases_from_manifest, score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--actors", type=int, default=4, help="onnxruntime actors (one session each)")
    args = ap.parse_args()
    summary = score(args.bundle, cases_from_manifest(args.manifest), args.out, resume=True, workers=args.actors,
                    engine="ray")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
