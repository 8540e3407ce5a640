import csv
from pathlib import Path

import h5py
import numpy as np
import pytest

from medtransfer.apps.wsi.features import extract_many, read_bag
from medtransfer.shared.utils.errors import InputError


def test_extract_folder_resumable_with_error_rows(slide_dir: Path, tmp_path: Path, tile_opts: dict) -> None:
    out = tmp_path / "bags"
    res = extract_many(
        slide_dir,
        out,
        "resnet18",
        None,
        tile_opts["target_mpp"],
        tile_opts["patch_size"],
        batch_size=8,
        show_progress=False,
    )
    by = {r.slide: r for r in res}
    assert by["good_a"].status == by["good_b"].status == "done"
    assert by["no_mpp"].status == "error" and "--mpp" in by["no_mpp"].error
    assert by["blank"].status == "error" and "tissue" in by["blank"].error
    assert by["corrupt"].status == "error"
    with h5py.File(out / "good_a.h5", "r") as f:
        n = f["coords"].shape[0]
        assert f["coords"].shape == (n, 2) and f["features"].shape == (n, 512) and n > 0
        assert f.attrs["patch_size"] == 64 and f.attrs["patch_level"] == 2 and f.attrs["mpp"] == 2.0
        assert f.attrs["complete"] and f.attrs["encoder"] == "resnet18" and not f.attrs["pretrained"]
        assert np.isfinite(f["features"][()]).all() and f["features"][()].std() > 0
    assert (out / "thumbnails" / "good_a.png").is_file()
    with open(out / "extract_log.csv") as fh:
        assert sum(1 for r in csv.DictReader(fh) if r["status"] == "error") == 3
    mtime = (out / "good_a.h5").stat().st_mtime_ns
    # second run: nothing recomputed for the finished slides; --mpp rescues the slide without MPP
    res2 = extract_many(
        slide_dir,
        out,
        "resnet18",
        None,
        tile_opts["target_mpp"],
        tile_opts["patch_size"],
        mpp=0.5,
        batch_size=8,
        show_progress=False,
    )
    by2 = {r.slide: r for r in res2}
    assert by2["good_a"].status == by2["good_b"].status == "skipped"
    assert by2["good_a"].n_tiles == n
    assert (out / "good_a.h5").stat().st_mtime_ns == mtime
    assert by2["no_mpp"].status == "done"
    feats, coords, attrs = read_bag(out / "no_mpp.h5")
    assert attrs["level0_mpp"] == 0.5 and feats.shape[0] == coords.shape[0]


def test_partial_h5_is_redone(slide_dir: Path, tmp_path: Path, tile_opts: dict) -> None:
    out = tmp_path / "bags"
    out.mkdir()
    with h5py.File(out / "good_a.h5", "w") as f:  # an interrupted run's leftover
        f.create_dataset("coords", data=np.zeros((3, 2)))
    single = slide_dir / "good_a.tif"
    res = extract_many(
        single, out, "resnet18", None, tile_opts["target_mpp"], tile_opts["patch_size"], show_progress=False
    )
    assert res[0].status == "done" and read_bag(out / "good_a.h5")[0].shape[1] == 512


def test_read_bag_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_bag(tmp_path / "x.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="HDF5"):
        read_bag(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((0, 8), np.float32))
    with pytest.raises(InputError, match="non-empty"):
        read_bag(tmp_path / "empty.h5")


def test_uni2h_option_gives_1536d() -> None:
    import torch

    from medtransfer.apps.wsi.model import build_encoder
    from medtransfer.shared.utils.errors import WeightsError

    model, dim, pre = build_encoder("uni2h", None, depth=1)  # full depth 24 = 681M params; 1 block for the test
    assert dim == 1536 and not pre
    assert model.num_prefix_tokens == 9  # class token + 8 registers, as UNI2-h
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 224, 224)).shape == (2, 1536)
    with pytest.raises(WeightsError):
        build_encoder("uni2h", "/nonexistent/uni2h.bin", depth=1)


def test_h5_features_equal_the_exported_onnx_encoder(slide_dir: Path, tmp_path: Path, tile_opts: dict) -> None:
    """One preprocessing source: features stored in an h5 bag == the bundle's encoder.onnx on the same tiles."""
    import onnxruntime as ort
    import timm
    import torch

    from medtransfer.apps.wsi.model import build_tile_encoder
    from medtransfer.apps.wsi.slide import Tiling, open_slide, read_tiles_plain
    from medtransfer.shared.export import export_onnx

    torch.manual_seed(0)
    weights = tmp_path / "enc.pt"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), str(weights))
    single = tmp_path / "one"
    single.mkdir()
    (single / "good_a.tif").symlink_to(slide_dir / "good_a.tif")
    out = tmp_path / "bags"
    res = extract_many(
        single,
        out,
        "resnet18",
        str(weights),
        tile_opts["target_mpp"],
        tile_opts["patch_size"],
        batch_size=8,
        show_progress=False,
    )
    assert res[0].status == "done", res[0].error
    feats, coords, a = read_bag(out / "good_a.h5")
    tiling = Tiling(
        coords=coords,
        patch_level=int(a["patch_level"]),
        read_size=int(a["read_size"]),
        patch_size=int(a["patch_size"]),
        patch_size_level0=int(a["patch_size_level0"]),
        level0_mpp=float(a["level0_mpp"]),
        target_mpp=float(a["mpp"]),
        tissue_fraction_min=float(a["tissue_fraction_min"]),
        thumb_scale=1.0,
    )
    tiles = np.stack(list(read_tiles_plain(open_slide(single / "good_a.tif"), tiling)))
    enc, _, _ = build_tile_encoder("resnet18", str(weights))
    ps = tiling.patch_size
    export_onnx(
        enc.eval(),
        (torch.rand(2, 3, ps, ps) * 255,),
        tmp_path / "encoder.onnx",
        ["tiles"],
        ["features"],
        dynamic={"tiles": {0: "batch"}},
        atol=1e-3,
    )
    sess = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    onnx_feats = sess.run(None, {"tiles": tiles.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    assert onnx_feats.shape == feats.shape
    np.testing.assert_allclose(onnx_feats, feats, rtol=1e-4, atol=1e-4)


def test_a_random_init_encoder_is_the_same_in_every_job(slide_dir: Path, tmp_path: Path, tile_opts: dict) -> None:
    """Two jobs of the default (random-init) encoder give equal features; bags record its identity."""
    import torch

    from medtransfer.apps.wsi.features import extraction_mismatch, random_init_digest
    from medtransfer.apps.wsi.model import build_tile_encoder

    single = slide_dir / "good_a.tif"
    bags = []
    for k, draws in enumerate((0, 500)):
        torch.rand(draws)  # what the process drew before does not change the encoder
        extract_many(
            single,
            tmp_path / f"o{k}",
            "resnet18",
            None,
            tile_opts["target_mpp"],
            tile_opts["patch_size"],
            show_progress=False,
        )
        bags.append(read_bag(tmp_path / f"o{k}" / "good_a.h5"))
    np.testing.assert_array_equal(bags[0][0], bags[1][0])
    assert bags[0][2]["random_init_sha256"] == random_init_digest("resnet18")
    other = {**bags[0][2], "random_init_sha256": "0" * 64}  # a bag of another random draw does not mix
    assert "random_init_sha256" in (extraction_mismatch(bags[0][2], other) or "")
    state = torch.random.get_rng_state()
    build_tile_encoder("resnet18", None)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's stream is left alone


@pytest.mark.parametrize(
    "kw,words",
    [
        ({"target_mpp": float("nan")}, "--target-mpp must be a finite"),
        ({"target_mpp": 0.0}, "--target-mpp"),
        ({"patch_size": 0}, "--patch-size must be a whole number"),
        ({"mpp": float("inf")}, "--mpp must be a finite"),
        ({"threads": -1}, "--threads must be a whole number from 0 to"),
        ({"threads": 5000}, "--threads must be a whole number from 0 to"),
        ({"batch_size": 0}, "--batch-size must be a whole number from 1 to 4096"),
    ],
)
def test_options_no_slide_can_meet_are_refused_before_reading_any(slide_dir, tmp_path, kw, words):
    from medtransfer.shared.utils.errors import ConfigError

    args = {"target_mpp": 2.0, "patch_size": 64, **kw}
    with pytest.raises(ConfigError, match=words):
        extract_many(slide_dir, tmp_path / "o", "resnet18", None, show_progress=False, **args)
    assert not (tmp_path / "o").exists()  # refused before anything was read or written


def test_the_extract_log_keeps_earlier_jobs_rows(slide_dir: Path, tmp_path: Path, tile_opts: dict) -> None:
    for name in ("good_a", "good_b", "good_a"):
        extract_many(
            slide_dir / f"{name}.tif",
            tmp_path / "o",
            "resnet18",
            None,
            tile_opts["target_mpp"],
            tile_opts["patch_size"],
            show_progress=False,
        )
    with open(tmp_path / "o" / "extract_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["slide"] for r in rows) == ["good_a", "good_b"]  # one row per slide, the latest
    assert {r["slide"]: r["status"] for r in rows} == {"good_a": "skipped", "good_b": "done"}
