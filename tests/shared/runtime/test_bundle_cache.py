"""The per-user runtime cache (verified digests, optimised ONNX graphs) never lets an edited bundle
or a tampered cache entry through, and a broken cache only means recomputing."""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest

from medtransfer.shared.runtime import cache
from medtransfer.shared.runtime.bundle import load_bundle
from medtransfer.shared.utils.errors import BundleError

X = {"image": np.arange(8, dtype=np.float32).reshape(2, 4)}


@pytest.fixture
def cdir(tmp_path, monkeypatch):
    """A fresh cache folder; tiny test files count as big enough and old enough to be remembered."""
    d = tmp_path / "cache"
    monkeypatch.setenv("MEDTRANSFER_CACHE_DIR", str(d))
    monkeypatch.delenv("MEDTRANSFER_CACHE", raising=False)
    monkeypatch.setenv("MEDTRANSFER_ORT_GRAPH_CACHE", "on")  # opt-in; these tests check it
    monkeypatch.setattr(cache, "MIN_CACHED_BYTES", 0)
    monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)
    return d


def _no_hashing(monkeypatch):
    def boom(path, *a, **k):
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(cache, "sha256_file", boom)


def test_unchanged_bundle_is_verified_from_the_cache(kit, tmp_path, cdir, monkeypatch):
    b = kit.make_bundle(tmp_path / "b")
    first = load_bundle(b).checks
    assert len(list((cdir / "sha256").iterdir())) == 2  # model.onnx and README.md (metadata: hashed as parsed)
    _no_hashing(monkeypatch)
    assert load_bundle(b).checks == first


def test_model_edited_in_place_same_size_and_mtime_is_refused(kit, tmp_path, cdir):
    """Repro for the cache's one risk: an edit that keeps size and mtime (os.utime) must still miss."""
    b = kit.make_bundle(tmp_path / "b")
    model = b / "model.onnx"
    load_bundle(b)  # remembered
    st = os.stat(model)
    time.sleep(0.05)  # past the filesystem's timestamp tick, so the edit gets a new ctime
    data = bytearray(model.read_bytes())
    i = data.rfind(np.float32(1.0).tobytes())  # a weight of the identity matrix
    data[i : i + 4] = np.float32(-7.0).tobytes()
    with open(model, "r+b") as f:  # in place: same inode, same size
        f.write(data)
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(model)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    with pytest.raises(BundleError, match=r"model.onnx: sha256 does not match checksums.sha256 \(file altered or"):
        load_bundle(b)


def test_recently_changed_files_are_hashed_but_not_remembered(kit, tmp_path, cdir, monkeypatch):
    monkeypatch.setattr(cache, "RACY_SECONDS", 3600.0)  # every file is "just written"
    b = kit.make_bundle(tmp_path / "b")
    load_bundle(b)
    assert not (cdir / "sha256").exists() or not list((cdir / "sha256").iterdir())


def test_corrupt_foreign_or_unusable_cache_only_means_rehashing(kit, tmp_path, cdir, monkeypatch):
    b = kit.make_bundle(tmp_path / "b")
    good = load_bundle(b).checks
    for p in (cdir / "sha256").iterdir():  # corrupt entries: ignored
        p.write_text("{not json")
    assert load_bundle(b).checks == good
    for p in (cdir / "sha256").iterdir():  # an entry whose key is not this file's: ignored
        e = json.loads(p.read_text())
        e["key"][3] += 1
        e["sha256"] = "0" * 64
        p.write_text(json.dumps(e))
    assert load_bundle(b).checks == good
    os.chmod(cdir, 0o777)  # writable by others: not trusted at all
    assert cache.cache_dir() is None
    assert load_bundle(b).checks == good
    monkeypatch.setenv("MEDTRANSFER_CACHE_DIR", str(b / "model.onnx"))  # not a folder
    assert cache.cache_dir() is None
    assert load_bundle(b).checks == good
    monkeypatch.setenv("MEDTRANSFER_CACHE_DIR", str(cdir))
    monkeypatch.setenv("MEDTRANSFER_CACHE", "off")
    assert cache.cache_dir() is None


def _session_paths(monkeypatch) -> list[str]:
    import onnxruntime as ort

    seen: list[str] = []
    real = ort.InferenceSession

    def spy(path, *a, **k):
        seen.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    return seen


def test_optimised_graph_is_reused_and_a_tampered_one_is_not(kit, tmp_path, cdir, monkeypatch):
    b = kit.make_bundle(tmp_path / "b")
    want = load_bundle(b).run(X)["logits"]  # first session: optimised graph saved
    saved = list((cdir / "ort").glob("*.onnx"))
    assert len(saved) == 1
    seen = _session_paths(monkeypatch)
    np.testing.assert_allclose(load_bundle(b).run(X)["logits"], want)
    assert seen == [str(saved[0])]  # second session: straight from the saved graph

    kit.tiny_onnx(saved[0], scale=5.0)  # tampered cache entry (a valid model with other weights)
    seen.clear()
    np.testing.assert_allclose(load_bundle(b).run(X)["logits"], want)
    assert seen == [str(b / "model.onnx")]  # not trusted: rebuilt from the verified bundle model


def test_optimised_graph_key_follows_the_model(kit, tmp_path, cdir):
    """Two bundles with different weights never share a saved graph."""
    a = kit.make_bundle(tmp_path / "a")
    b = kit.make_bundle(tmp_path / "b")
    kit.tiny_onnx(b / "model.onnx", scale=3.0)
    meta = kit.read_meta(b)
    meta["files"]["model.onnx"] = hashlib.sha256((b / "model.onnx").read_bytes()).hexdigest()
    kit.write_meta(b, meta)
    kit.reseal(b)
    ya = load_bundle(a).run(X)["logits"]
    yb = load_bundle(b).run(X)["logits"]
    np.testing.assert_allclose(yb, 3.0 * ya)
    assert len(list((cdir / "ort").glob("*.onnx"))) == 2


def test_verify_command_rereads_every_file(kit, tmp_path, cdir):
    """`medtransfer verify` does not trust the cache: a forged entry (or bit rot no write caused) is caught."""
    from typer.testing import CliRunner

    from medtransfer.shared.cli.main import app

    b = kit.make_bundle(tmp_path / "b")
    listed = {c.name: c.sha256 for c in load_bundle(b).checks}
    model = b / "model.onnx"
    kit.tiny_onnx(model, scale=9.0)
    key, _ = cache._identity(model)
    entry = cache._entry(cdir / "sha256", key)
    entry.write_text(json.dumps({"v": cache.FORMAT, "key": key, "sha256": listed["model.onnx"]}))
    assert {c.name: c.sha256 for c in load_bundle(b).checks} == listed  # the forged entry is what the cache says
    with pytest.raises(BundleError, match="file altered or corrupt"):
        load_bundle(b, cached=False)
    r = CliRunner().invoke(app, ["verify", str(b)])
    assert r.exit_code == 2 and "model.onnx: sha256 does not match" in r.output


def _wide_model(path, scale: float = 1.0):
    """``logits = (image @ W1) @ W2`` with weights over the 1 KiB the saved graph keeps outside itself."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 256)) * scale).astype(np.float32)
    w2 = rng.standard_normal((256, 3)).astype(np.float32)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    inits = [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")]
    nodes = [helper.make_node("MatMul", ["image", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["logits"])]
    m = helper.make_model(
        helper.make_graph(nodes, "wide", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    m.ir_version = 8
    onnx.save(m, str(path))
    return X["image"] @ w1 @ w2


def test_saved_weights_file_is_checked_too(kit, tmp_path, cdir, monkeypatch):
    b = kit.make_bundle(tmp_path / "b")
    want = _wide_model(b / "model.onnx")
    meta = kit.read_meta(b)
    meta["files"]["model.onnx"] = hashlib.sha256((b / "model.onnx").read_bytes()).hexdigest()
    kit.write_meta(b, meta)
    kit.reseal(b)
    np.testing.assert_allclose(load_bundle(b).run(X)["logits"], want, rtol=1e-5)
    (weights,) = (cdir / "ort").glob("*.weights")  # the saved graph's weights, kept beside it
    seen = _session_paths(monkeypatch)
    np.testing.assert_allclose(load_bundle(b).run(X)["logits"], want, rtol=1e-5)
    assert seen and seen[0].startswith(str(cdir))

    data = bytearray(weights.read_bytes())  # tampered weights, same size
    data[:4] = np.float32(1e6).tobytes()
    os.chmod(weights, 0o600)  # saved read-only
    weights.write_bytes(bytes(data))
    seen.clear()
    np.testing.assert_allclose(load_bundle(b).run(X)["logits"], want, rtol=1e-5)
    assert seen == [str(b / "model.onnx")]  # rebuilt from the verified bundle model
    assert not weights.exists()  # the replaced entry's weights are gone


def test_saved_graphs_are_bounded(kit, tmp_path, cdir, monkeypatch):
    monkeypatch.setattr(cache, "MAX_SESSION_FILES", 1)
    for k, scale in enumerate((1.0, 2.0)):
        b = kit.make_bundle(tmp_path / f"b{k}")
        want = _wide_model(b / "model.onnx", scale=scale)
        meta = kit.read_meta(b)
        meta["files"]["model.onnx"] = hashlib.sha256((b / "model.onnx").read_bytes()).hexdigest()
        kit.write_meta(b, meta)
        kit.reseal(b)
        np.testing.assert_allclose(load_bundle(b).run(X)["logits"], want, rtol=1e-5)
        time.sleep(0.02)  # distinct mtimes: the newest entry is kept
    names = sorted(p.suffix for p in (cdir / "ort").iterdir())
    assert names == [".json", ".onnx", ".weights"]  # one entry and nothing orphaned ...
    (card,) = (cdir / "ort").glob("*.json")
    assert json.loads(card.read_text())["key"][0] == meta["files"]["model.onnx"]  # ... the newest


def test_optimised_graph_cache_is_opt_in(kit, tmp_path, cdir, monkeypatch):
    """Without MEDTRANSFER_ORT_GRAPH_CACHE=on no graph is saved (the digest cache still works)."""
    monkeypatch.delenv("MEDTRANSFER_ORT_GRAPH_CACHE")
    b = kit.make_bundle(tmp_path / "b")
    want = load_bundle(b).run(X)["logits"]
    assert not list(cdir.glob("ort/*.onnx"))  # no graph saved
    seen = _session_paths(monkeypatch)
    np.testing.assert_allclose(load_bundle(b).run(X)["logits"], want)
    assert seen == [str(b / "model.onnx")]  # the bundle's own model, optimised afresh
    assert len(list((cdir / "sha256").iterdir())) == 2  # while the digest cache still works
