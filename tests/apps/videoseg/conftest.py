"""videoseg fixtures: synthetic EchoNet-layout data, one micro SAM2 run and its bundle (built once)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtransfer.apps.videoseg.model import MICRO_OVERRIDES

MICRO = {"image_size": 128, "overrides": list(MICRO_OVERRIDES), "adapter_blocks": 2}


@pytest.fixture(scope="session")
def vs_micro() -> dict:
    """The micro SAM2 model config used by the tests."""
    return dict(MICRO)


@pytest.fixture(scope="session")
def vs_echo(tmp_path_factory) -> dict:
    """Three synthetic cines in the EchoNet layout, imported into a manifest."""
    from medtransfer.apps.videoseg.data import import_echonet
    from medtransfer.apps.videoseg.synthetic import make_echonet_like

    work = tmp_path_factory.mktemp("vs_echo")
    root = make_echonet_like(work / "EchoNet", n_videos=3, n_frames=16, splits=("TRAIN", "VAL", "TEST"))
    manifest = import_echonet(root, work / "manifest.csv")
    return {"root": root, "manifest": manifest, "work": work}


@pytest.fixture(scope="session")
def vs_run(vs_echo) -> dict:
    """A one-epoch micro run through the shared fit engine."""
    from medtransfer.apps.videoseg.train import make_config, train

    cfg = make_config(
        overrides=[
            "model.image_size=128",
            f"model.overrides={json.dumps(MICRO_OVERRIDES)}",
            "model.adapter_blocks=2",
            "train.epochs=1",
            "data.clip_len=3",
            "train.progress=false",
        ]
    )
    out = train(vs_echo["manifest"], vs_echo["work"] / "run", cfg)
    return {**out, "cfg": cfg}


@pytest.fixture(scope="session")
def vs_bundle(vs_run, vs_echo) -> Path:
    """The run exported to an ONNX bundle (parity-checked inside export_run); forced because a
    one-epoch micro run need not beat its copy-first-mask baseline."""
    from medtransfer.apps.videoseg.export import export_run

    return export_run(vs_run["run_dir"], vs_echo["work"] / "bundle", force=True)
