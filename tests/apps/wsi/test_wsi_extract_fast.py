"""The fast extraction path (issue 12): pooled tile reading, batched / ONNX encoders, workers.

Parity is checked against the previous path, kept here as the reference: one producer thread
reading runs of tiles in order, and the torch encoder on contiguous NCHW batches.
"""

from __future__ import annotations

import importlib.util
import queue
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from cliutil import run_main
from lockutil import lock_held_elsewhere

from medtransfer.apps.wsi.features import EncoderSpec, OnnxEncoder, extract_many, read_bag
from medtransfer.apps.wsi.slide import (
    _resize,
    _rgb,
    iter_tile_batches,
    open_slide,
    plan_tiles,
    read_tiles_plain,
    tissue_mask,
)
from medtransfer.apps.wsi.synthetic import make_slide
from medtransfer.shared.utils.errors import ConfigError

TOL = 1e-4


# ------------------------------------------------------------------ the previous path (reference)
def _old_iter_tile_batches(slide: Any, tiling: Any, batch_size: int = 64, block: int = 8) -> Iterator[Any]:
    """The reader before issue 12: one producer thread, runs of adjacent tiles, RGBA via PIL."""
    coords = tiling.coords
    ps0, rs, lvl, out = tiling.patch_size_level0, tiling.read_size, tiling.patch_level, tiling.patch_size
    runs: list[list[int]] = []
    for i in range(len(coords)):
        if runs and len(runs[-1]) < block:
            j = runs[-1][-1]
            if coords[j, 1] == coords[i, 1] and coords[i, 0] - coords[j, 0] == ps0:
                runs[-1].append(i)
                continue
        runs.append([i])
    q: queue.Queue = queue.Queue(maxsize=4)

    def producer() -> None:
        idx: list[int] = []
        buf: list[np.ndarray] = []
        for run in runs:
            x, y = int(coords[run[0], 0]), int(coords[run[0], 1])
            region = _rgb(slide.read_region((x, y), lvl, (rs * len(run), rs)))
            for k, i in enumerate(run):
                buf.append(_resize(region[:, k * rs : (k + 1) * rs], out))
                idx.append(i)
                if len(buf) == batch_size:
                    q.put((np.asarray(idx), np.stack(buf)))
                    idx, buf = [], []
        if buf:
            q.put((np.asarray(idx), np.stack(buf)))
        q.put(None)

    threading.Thread(target=producer, daemon=True).start()
    while (item := q.get()) is not None:
        yield item


def _old_features(slide_path: Path, weights: Path, tile_opts: dict) -> tuple[np.ndarray, np.ndarray]:
    """Features of the previous path: contiguous NCHW float batches through the torch encoder."""
    import torch

    from medtransfer.apps.wsi.model import build_tile_encoder

    model, dim, _ = build_tile_encoder("resnet18", str(weights))
    model.eval()
    s = open_slide(slide_path)
    tiling, _, _ = plan_tiles(s, slide_path, **tile_opts)
    feats = np.zeros((len(tiling.coords), dim), np.float32)
    with torch.inference_mode():
        for idx, tiles in _old_iter_tile_batches(s, tiling, batch_size=8):
            x = torch.from_numpy(tiles.copy()).permute(0, 3, 1, 2).float().contiguous()
            feats[idx] = model(x).numpy()
    return feats, tiling.coords


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Fixed resnet18 weights (random but saved), so every path encodes with the same network."""
    import timm
    import torch

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("w") / "enc.pt"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), str(p))
    return p


@pytest.fixture(scope="module")
def one_slide(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("one")
    make_slide(d / "s1.tif", size=(1024, 768), seed=5)
    return d


# ------------------------------------------------------------------------------------- reading
def test_wsi_pool_reader_matches_plain_loop_in_order(slide_dir: Path, tile_opts: dict) -> None:
    p = slide_dir / "good_a.tif"
    s = open_slide(p)
    til, _, _ = plan_tiles(s, p, **tile_opts)
    assert til.patch_level == 2  # 2 um/px on a 0.5 um/px slide: read at the x4 pyramid level, not level 0
    plain = np.stack(list(read_tiles_plain(s, til)))
    for workers, block, bs in ((1, 8, 4), (4, 2, 3), (3, 1, 64)):
        batches = list(iter_tile_batches(s, til, batch_size=bs, block=block, prefetch=1, workers=workers))
        idx = np.concatenate([b[0] for b in batches])
        assert idx.tolist() == list(range(len(til.coords)))  # coordinate order, whatever the thread count
        assert all(len(b[0]) == bs for b in batches[:-1])
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), plain)
    old = np.concatenate([t for _, t in _old_iter_tile_batches(s, til, batch_size=5)])
    np.testing.assert_array_equal(old, plain)


def test_wsi_pool_reader_error_reaches_consumer(slide_dir: Path, tile_opts: dict) -> None:
    p = slide_dir / "good_a.tif"
    s = open_slide(p)
    til, _, _ = plan_tiles(s, p, **tile_opts)

    class Broken:
        def __init__(self, inner: Any) -> None:
            self.inner, self.n = inner, 0

        def read_region(self, *a: Any, **k: Any) -> Any:
            self.n += 1
            if self.n == 2:
                raise ValueError("decoder failed")
            return self.inner.read_region(*a, **k)

    with pytest.raises(ValueError, match="decoder failed"):
        list(iter_tile_batches(Broken(s), til, batch_size=2, block=1, workers=2))


def test_wsi_tissue_mask_same_as_skimage_hsv(slide_dir: Path) -> None:
    """The faster saturation / value computation gives the mask skimage's rgb2hsv gave."""
    from scipy import ndimage
    from skimage import color, filters, morphology

    from medtransfer.apps.wsi.slide import _has_max_size, thumbnail

    thumb, _ = thumbnail(open_slide(slide_dir / "good_b.tif"))
    hsv = color.rgb2hsv(thumb)
    sat, val = hsv[..., 1], hsv[..., 2]
    thr = float(filters.threshold_otsu(sat))
    ref = (sat > max(thr, 0.07)) & (val > 0.15) & (thumb.min(axis=-1) < 235)
    n = max(4, int(0.001 * ref.size))
    ref = ndimage.binary_closing(ref, structure=morphology.disk(2))
    if _has_max_size():
        ref = morphology.remove_small_holes(morphology.remove_small_objects(ref, max_size=n), max_size=n * 4)
    else:
        ref = morphology.remove_small_holes(morphology.remove_small_objects(ref, min_size=n), area_threshold=n * 4)
    got = tissue_mask(thumb)
    assert 0.05 < got.mean() < 0.95
    np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------------------------- encoders
def test_wsi_fast_extract_matches_previous_path(one_slide: Path, weights: Path, tmp_path: Path, tile_opts) -> None:
    """Pooled reads + batched channels-last torch encoder == the previous path within 1e-4."""
    ref, ref_coords = _old_features(one_slide / "s1.tif", weights, tile_opts)
    res = extract_many(
        one_slide, tmp_path / "bags", "resnet18", str(weights), **tile_opts, batch_size=5, backend="torch",
        read_workers=3, show_progress=False,
    )  # fmt: skip
    assert res[0].status == "done", res[0].error
    feats, coords, attrs = read_bag(tmp_path / "bags" / "s1.h5")
    np.testing.assert_array_equal(coords, ref_coords)
    assert attrs["encoder_backend"] == "torch" and attrs["precision"] == "fp32" and attrs["patch_level"] == 2
    assert np.abs(ref).max() > 1e-2  # non-trivial features
    assert np.max(np.abs(feats - ref)) <= TOL


@pytest.mark.slow
def test_wsi_onnx_backend_matches_torch_and_is_cached(
    one_slide: Path, weights: Path, tmp_path: Path, tile_opts: dict
) -> None:
    """``--backend auto`` on CPU with a weights file: exported once to OUT/.cache, ONNX Runtime
    features == the previous torch path within 1e-4; the export is reused by the next run."""
    ref, _ = _old_features(one_slide / "s1.tif", weights, tile_opts)
    out = tmp_path / "bags"
    kw = dict(batch_size=4, show_progress=False, device="cpu", backend="auto")
    res = extract_many(one_slide, out, "resnet18", str(weights), **tile_opts, **kw)
    assert res[0].status == "done", res[0].error
    feats, _, attrs = read_bag(out / "s1.h5")
    assert attrs["encoder_backend"] == "onnx" and attrs["encoder"] == "resnet18" and attrs["pretrained"]
    assert np.max(np.abs(feats - ref)) <= TOL
    cached = list((out / ".cache").glob("resnet18-64px-*.onnx"))
    assert len(cached) == 1 and not list((out / ".cache").glob("tmp-*"))
    mtime = cached[0].stat().st_mtime_ns
    res2 = extract_many(one_slide, out, "resnet18", str(weights), **tile_opts, **kw, overwrite=True)
    assert res2[0].status == "done" and cached[0].stat().st_mtime_ns == mtime  # not exported again
    # the exported file also runs as --encoder-onnx; a tile size it was not exported for is refused
    enc = OnnxEncoder(cached[0], "cpu", 64, threads=1)
    assert enc.feature_dim == 512
    with pytest.raises(ConfigError, match="patch-size"):
        OnnxEncoder(cached[0], "cpu", 96)
    res3 = extract_many(
        one_slide, tmp_path / "b3", "resnet18", None, **tile_opts, **kw, encoder_onnx=cached[0], read_workers=1
    )
    f3, _, a3 = read_bag(tmp_path / "b3" / "s1.h5")
    assert res3[0].status == "done" and a3["encoder"].startswith("onnx:") and np.max(np.abs(f3 - ref)) <= TOL
    # static int8 (calibrated on the slide's tiles): recorded as such, close to fp32 but not equal
    res4 = extract_many(
        one_slide, tmp_path / "b4", "resnet18", None, **tile_opts, **kw, encoder_onnx=cached[0], quantize="int8"
    )
    f4, _, a4 = read_bag(tmp_path / "b4" / "s1.h5")
    assert res4[0].status == "done" and a4["encoder"].endswith("+int8") and a4["precision"] == "int8"
    cos = (f4 * ref).sum(1) / (np.linalg.norm(f4, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.98 and np.max(np.abs(f4 - ref)) > TOL


@pytest.mark.slow
def test_wsi_int8_one_model_per_folder_checked_and_recorded(
    weights: Path, tmp_path: Path, tile_opts: dict, slide_dir: Path, monkeypatch, capsys
) -> None:
    """``--quantize int8``: calibrated once on the folder's first slide, kept in OUT/.cache and
    reused, so a resumed job's bags come from the same int8 model (before, it calibrated again on
    the first slide left to do); every bag records the model's sha256 and its agreement with fp32
    on held-out tiles; a bag of another int8 model is redone; a model that disagrees is refused."""
    import json

    import medtransfer.apps.wsi.features as F

    src = tmp_path / "slides"
    make_slide(src / "a.tif", size=(1024, 768), seed=11)
    make_slide(src / "b.tif", size=(1024, 768), seed=12)
    out = tmp_path / "bags"
    kw = dict(**tile_opts, batch_size=8, show_progress=False, device="cpu", backend="onnx", quantize="int8")
    res = extract_many(src, out, "resnet18", str(weights), **kw)
    assert [r.status for r in res] == ["done", "done"], [r.error for r in res]
    fb, _, ab = read_bag(out / "b.h5")
    _, _, aa = read_bag(out / "a.h5")
    models = list((out / ".cache").glob("*.int8.onnx"))
    cards = list((out / ".cache").glob("*.int8.json"))
    assert len(models) == 1 and len(cards) == 1
    card = json.loads(cards[0].read_text())
    assert aa["int8_sha256"] == ab["int8_sha256"] == card["int8_sha256"] == F.file_sha256(models[0])
    assert F.INT8_MIN_COSINE <= ab["int8_cosine_min"] <= ab["int8_cosine_mean"] <= 1.0
    assert card["calibration_tiles"] > 0 and card["check_tiles"] == ab["int8_check_tiles"] > 0
    assert ab["encoder"] == "resnet18+int8" and ab["precision"] == "int8"

    # resumed after b's bag was lost: b is extracted again with the folder's int8 model, a skipped
    (out / "b.h5").unlink()
    mtime = models[0].stat().st_mtime_ns
    res2 = extract_many(src, out, "resnet18", str(weights), **kw)
    assert [r.status for r in res2] == ["skipped", "done"]
    fb2, _, ab2 = read_bag(out / "b.h5")
    assert ab2["int8_sha256"] == ab["int8_sha256"] and models[0].stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(fb2, fb)

    # a bag of another int8 model (here: its recorded sha edited) is not "done": it is redone
    import h5py

    with h5py.File(out / "a.h5", "r+") as f:
        f.attrs["int8_sha256"] = "0" * 64
    res3 = extract_many(src, out, "resnet18", str(weights), **kw)
    assert [r.status for r in res3] == ["done", "skipped"]
    assert read_bag(out / "a.h5")[2]["int8_sha256"] == ab["int8_sha256"]

    # an edited card (or model) is not trusted: the model is made again
    cards[0].write_text(json.dumps({**card, "int8_sha256": "f" * 64}))
    extract_many(src, tmp_path / "bags2", "resnet18", str(weights), **kw)  # another folder: its own model
    res4 = extract_many(src, out, "resnet18", str(weights), **kw, overwrite=True)
    assert all(r.status == "done" for r in res4)
    assert json.loads(cards[0].read_text())["int8_sha256"] == F.file_sha256(models[0])

    # a blank or corrupt first slide is its own error row: calibration takes the next one (the
    # job failed with the blank slide's error before)
    res5 = extract_many(slide_dir, tmp_path / "bags5", "resnet18", str(weights), **kw)
    status = {r.slide: r.status for r in res5}
    assert status["blank"] == status["corrupt"] == "error" and status["good_a"] == status["good_b"] == "done"

    # an int8 model that disagrees with fp32 is refused in one line, nothing written
    monkeypatch.setattr(F, "INT8_MIN_COSINE", 1.000001)
    with pytest.raises(ConfigError, match=r"--quantize int8: .* agree with fp32 at cosine .* run without --quantize"):
        extract_many(src, tmp_path / "bags3", "resnet18", str(weights), **kw)
    assert not list((tmp_path / "bags3").glob("*.h5")) and not list((tmp_path / "bags3" / ".cache").glob("*int8*"))
    code, _, err = run_main(
        ["wsi", "extract", src, "-o", tmp_path / "bags4", "--weights", weights, "--quantize", "int8",
         "--target-mpp", "2", "--patch-size", "64", "--device", "cpu"],
        capsys,
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "run without --quantize" in err


def test_wsi_int8_calibration_draws_on_several_slides(slide_dir: Path, tile_opts: dict) -> None:
    """The int8 model was calibrated (and checked) on the folder's first slide alone, so one
    atypical slide set every activation range; now an equal, even share of tiles from each of
    the first slides with tissue (blank / corrupt ones passed over), up to 8 slides."""
    from medtransfer.apps.wsi.features import calibration_tiles, folder_calibration_tiles
    from medtransfer.shared.utils.errors import InputError

    opts = (tile_opts["target_mpp"], tile_opts["patch_size"], None, 0.25)
    a, b, blank, bad = (slide_dir / n for n in ("good_a.tif", "good_b.tif", "blank.tif", "corrupt.svs"))
    got = folder_calibration_tiles([blank, a, bad, b], *opts, n=8)
    want = np.concatenate([calibration_tiles(a, *opts, 4), calibration_tiles(b, *opts, 4)])
    assert got.shape == want.shape and np.array_equal(got, want)
    np.testing.assert_array_equal(
        folder_calibration_tiles([a, b], *opts, n=8, max_slides=1), calibration_tiles(a, *opts, 8)
    )
    with pytest.raises(InputError):
        folder_calibration_tiles([blank, bad], *opts, n=8)


def test_wsi_extract_option_errors(one_slide: Path, tmp_path: Path, capsys) -> None:
    import torch

    with pytest.raises(ConfigError, match="--engine"):
        extract_many(one_slide, tmp_path / "o", engine="spark", show_progress=False)
    with pytest.raises(ConfigError, match="device indices"):
        extract_many(one_slide, tmp_path / "o", device="cuda:1", show_progress=False)
    with pytest.raises(ConfigError, match="--backend"):
        extract_many(one_slide, tmp_path / "o", backend="tvm", show_progress=False)
    with pytest.raises(ConfigError, match="--precision"):
        extract_many(one_slide, tmp_path / "o", precision="int4", show_progress=False)
    with pytest.raises(ConfigError, match="quantize"):
        EncoderSpec(quantize="int4", backend="onnx").resolve(tmp_path, tmp_path)
    if not torch.cuda.is_available():
        code, _, err = run_main(["wsi", "extract", one_slide, "-o", tmp_path / "o", "--device", "cuda"], capsys)
        assert code == 2 and err.strip().startswith("error:") and "no CUDA GPU" in err
        assert len(err.strip().splitlines()) == 1
    code, _, err = run_main(["wsi", "extract", one_slide, "-o", tmp_path / "o", "--encoder-onnx", tmp_path], capsys)
    assert code == 2 and "encoder.onnx" in err
    (tmp_path / "afile").write_text("x")
    code, _, err = run_main(["wsi", "extract", one_slide, "-o", tmp_path / "afile"], capsys)
    assert code == 2 and "--out is a file, expected a folder" in err and len(err.strip().splitlines()) == 1


def test_wsi_extract_refuses_a_folder_another_job_is_extracting_into(one_slide: Path, tmp_path: Path, capsys) -> None:
    """Two ``wsi extract`` jobs into one --out both wrote every bag through one ``<slide>.h5.part``,
    the folder's int8 model (a bag could record one model and hold the other's features) and the
    log (one job's rows lost).  Now the second is refused in one line naming the first; the lock
    dies with its holder."""
    out = tmp_path / "feats"
    out.mkdir()
    with lock_held_elsewhere(out / ".extract.lock") as holder:
        rc, _, err = run_main(["wsi", "extract", one_slide, "-o", out], capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert f"already being extracted into by pid {holder.pid}" in err
        assert not list(out.glob("*.h5")) and not (out / "extract_log.csv").exists()
    rc, _, err = run_main(["wsi", "extract", one_slide, "-o", out], capsys)
    assert rc == 0, err
    assert len(list(out.glob("*.h5"))) == 1 and not (out / ".extract.lock").exists()


# ------------------------------------------------------------------------------ scale-out
def _folder(slide_dir: Path, tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for n in ("good_a.tif", "good_b.tif", "corrupt.svs"):
        shutil.copy(slide_dir / n, src / n)
    return src


@pytest.mark.slow
def test_wsi_extract_scale_out_same_bags(
    slide_dir: Path, weights: Path, tmp_path: Path, tile_opts, monkeypatch
) -> None:
    """Two local worker processes and two Ray actors give the previous path's bags; a corrupt slide
    is an error row in both."""
    src = _folder(slide_dir, tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "local")  # a Ray of its own, whatever runs on this machine
    kw = dict(batch_size=8, show_progress=False, backend="torch", device="cpu", workers=2, threads=1)
    engines = ["local"] + (["ray"] if importlib.util.find_spec("ray") else [])
    for engine in engines:
        res = extract_many(src, tmp_path / engine, "resnet18", str(weights), **tile_opts, **kw, engine=engine)
        assert [r.status for r in res] == ["error", "done", "done"], engine
        assert "corrupt" in res[0].slide and res[0].error
    for name in ("good_a", "good_b"):
        ref, ref_coords = _old_features(src / f"{name}.tif", weights, tile_opts)
        for engine in engines:
            feats, coords, _ = read_bag(tmp_path / engine / f"{name}.h5")
            np.testing.assert_array_equal(coords, ref_coords)
            assert np.max(np.abs(feats - ref)) <= TOL, (engine, name)


@pytest.mark.gpu
def test_wsi_extract_cuda_bf16_close_to_cpu(one_slide: Path, weights: Path, tmp_path: Path, tile_opts) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    ref, _ = _old_features(one_slide / "s1.tif", weights, tile_opts)
    res = extract_many(
        one_slide, tmp_path / "gpu", "resnet18", str(weights), **tile_opts, device="cuda", show_progress=False
    )
    feats, _, attrs = read_bag(tmp_path / "gpu" / "s1.h5")
    assert res[0].status == "done" and attrs["precision"] == "bf16" and attrs["encoder_backend"] == "torch"
    rel = np.linalg.norm(feats - ref, axis=1) / (np.linalg.norm(ref, axis=1) + 1e-6)
    assert rel.max() < 0.05  # bf16 autocast: close, not equal
