"""Reader fuzzing for the wsi app: mutated TIFF / SVS slides through ``extract_slide`` (what
``wsi extract`` and the slide predictor run: open, tissue mask, tiling, tile decoding, bag
writing) and mutated .h5 feature bags through ``read_bag`` (what ``predict`` / ``score`` call).

Every mutation must give a result or our own one-line InputError within 10 s, never another
exception.  The encoder is a numpy stand-in (the reader, not the network, is under test).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.wsi.features import extract_slide, read_bag, write_bag
from medtransfer.apps.wsi.synthetic import make_slide


class MeanEncoder:
    """Torch-free stand-in for the patch encoder: per-channel means and stds of each tile."""

    name = "fuzz-mean"
    feature_dim = 6
    pretrained = False

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        t = tiles.reshape(len(tiles), -1, 3).astype(np.float32) / 255.0
        return np.concatenate([t.mean(1), t.std(1)], axis=1)


def _slide_reader(out: Path, target_mpp: float, patch_size: int):
    enc = MeanEncoder()

    def reader(path: Path) -> None:
        extract_slide(path, out, enc, target_mpp=target_mpp, patch_size=patch_size, batch_size=16, overwrite=True)

    return reader


def seed_tiff(tmp: Path) -> bytes:
    """A small generated pyramidal tiled TIFF with MPP tags (3 levels, 64 px tiles)."""
    return make_slide(tmp / "seed.tif", size=(384, 256), seed=5, levels=3, tile=64).read_bytes()


def test_fuzz_slide_seed_is_valid(tmp_path):
    f = tmp_path / "ok.tif"
    f.write_bytes(seed_tiff(tmp_path))
    r = extract_slide(f, tmp_path / "out", MeanEncoder(), target_mpp=2.0, patch_size=16)
    assert r.status == "done" and r.n_tiles > 0


@pytest.mark.fuzz
def test_fuzz_tiff_slide_reader(fuzz, tmp_path):
    fuzz.run(seed_tiff(tmp_path), ".tif", _slide_reader(tmp_path / "out", 2.0, 16), tmp_path)


@pytest.mark.fuzz
def test_fuzz_real_svs_header(fuzz, shared_data, tmp_path):
    """The real CMU-1-Small-Region.svs with mutations limited to its header region: the TIFF header
    and the first image's IFD with its tag values (the rest of the file stays as it is)."""
    import tifffile

    svs = shared_data / "wsi" / "slides" / "CMU-1-Small-Region.svs"
    if not svs.is_file():
        pytest.skip("CMU-1-Small-Region.svs absent")
    orig = svs.read_bytes()
    with tifffile.TiffFile(svs) as t:
        start = int(t.pages[0].offset)
        end = max(int(tg.valueoffset) + int(tg.count) * 8 for tg in t.pages[0].tags.values())
    end = min(end, len(orig))
    header = orig[:8] + orig[start:end]

    def reader(path: Path) -> None:
        h = path.read_bytes()
        h = h + header[len(h) :] if len(h) < len(header) else h[: len(header)]  # keep every offset in place
        path.write_bytes(h[:8] + orig[8:start] + h[8:] + orig[end:])
        extract_slide(
            path, tmp_path / "out", MeanEncoder(), target_mpp=8.0, patch_size=32, batch_size=32, overwrite=True
        )

    # a case that parses decodes the real slide's full level for the tissue mask (~0.3-1 s): half
    # the runs keeps this test under a minute at the default 200 (nightly --fuzz-runs scales it)
    type(fuzz)(max(1, fuzz.runs // 2)).run(header, ".svs", reader, tmp_path)


def seed_bag(tmp: Path) -> bytes:
    """A small bag written by the app's own writer (12 patches x 8 features + attributes)."""
    rng = np.random.default_rng(0)
    coords = rng.integers(0, 5000, size=(12, 2))
    feats = rng.standard_normal((12, 8)).astype(np.float32)
    return write_bag(
        tmp / "seed.h5",
        coords,
        feats,
        {"encoder": "resnet18", "patch_size": 224, "mpp": 0.5, "complete": True, "slide": "seed.svs"},
    ).read_bytes()


def test_fuzz_bag_seed_is_valid(tmp_path):
    f = tmp_path / "ok.h5"
    f.write_bytes(seed_bag(tmp_path))
    feats, coords, attrs = read_bag(f)
    assert feats.shape == (12, 8) and coords.shape == (12, 2) and attrs["encoder"] == "resnet18"


@pytest.mark.fuzz
def test_fuzz_h5_bag_reader(fuzz, tmp_path):
    fuzz.run(seed_bag(tmp_path), ".h5", read_bag, tmp_path)
