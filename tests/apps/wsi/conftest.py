"""Shared fixtures for the wsi tests: small generated slides, the real-data paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtransfer.apps.wsi.synthetic import make_slide

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "wsi"
CMU = DATA / "slides" / "CMU-1-Small-Region.svs"
LABELS = DATA / "tcga_survival_labels_survpath"

# small tiles keep resnet18 cheap on CPU: 64 px tiles at 2 um/px on 0.5 um/px slides
TILE = {"target_mpp": 2.0, "patch_size": 64}


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory) -> Path:
    """Two good slides, one without MPP, one blank, one corrupt."""
    d = tmp_path_factory.mktemp("slides")
    make_slide(d / "good_a.tif", size=(1024, 768), seed=1)
    make_slide(d / "good_b.tif", size=(1024, 768), seed=2)
    make_slide(d / "no_mpp.tif", size=(512, 512), seed=3, mpp=None)
    make_slide(d / "blank.tif", size=(512, 512), seed=4, tissue=False)
    (d / "corrupt.svs").write_bytes(b"II*\x00" + b"\x00garbage" * 50)
    return d


@pytest.fixture(scope="session")
def labels_root() -> Path:
    if not LABELS.is_dir():
        pytest.skip("real TCGA label tables absent (../shared/data/wsi)")
    return LABELS.resolve()


@pytest.fixture(scope="session")
def tile_opts() -> dict:
    """Tiling options used by the tests."""
    return dict(TILE)


@pytest.fixture(scope="session")
def cmu() -> Path:
    if not CMU.is_file():
        pytest.skip("real CMU slide absent (../shared/data/wsi/slides)")
    return CMU.resolve()
