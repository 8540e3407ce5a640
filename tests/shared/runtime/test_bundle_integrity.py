"""Bundle integrity: checksums.sha256 covers every file (metadata included), nothing unlisted runs."""

import hashlib
import os
import subprocess

import numpy as np
import pytest

from medtransfer.shared.runtime.bundle import load_bundle
from medtransfer.shared.utils.errors import BundleError


def test_written_bundle_loads_runs_and_passes_sha256sum(kit, tmp_path):
    b = kit.make_bundle(tmp_path / "b")
    bundle = load_bundle(b)
    assert {c.name for c in bundle.checks} == {"metadata.json", "README.md", "model.onnx"}
    assert bundle.run({"image": np.ones((2, 4), np.float32)})["logits"].shape == (2, 3)
    # the identity is a digest over everything: sha256sum of the checksums file, which sha256sum -c accepts
    assert bundle.sha256 == hashlib.sha256((b / "checksums.sha256").read_bytes()).hexdigest()
    r = subprocess.run(["sha256sum", "-c", "checksums.sha256"], cwd=b, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count(": OK") == 3


@pytest.mark.parametrize("edit", ["threshold", "label_order"])
def test_metadata_edit_is_refused(kit, tmp_path, edit):
    """Repro: metadata.json was covered by no hash, so an edited threshold or label order flipped answers."""
    b = kit.make_bundle(tmp_path / "b")
    meta = kit.read_meta(b)
    if edit == "threshold":
        meta["preprocessing"]["threshold"] = 0.01
    else:
        meta["labels"] = list(reversed(meta["labels"]))
    kit.write_meta(b, meta)
    with pytest.raises(BundleError, match=r"metadata.json: sha256 does not match checksums.sha256"):
        load_bundle(b)


def test_any_edit_changes_the_identity(kit, tmp_path):
    """Even a consistently resealed edit (README only) gives another bundle_sha256."""
    b = kit.make_bundle(tmp_path / "b")
    before = load_bundle(b).sha256
    (b / "README.md").write_text("edited card\n")
    with pytest.raises(BundleError, match="README.md: sha256 does not match"):
        load_bundle(b)
    kit.reseal(b)
    assert load_bundle(b).sha256 != before


def test_model_dropped_from_files_is_refused(kit, tmp_path):
    """Repro: `files` needed not cover model.onnx; a byte-flipped model ran once its entry was removed."""
    b = kit.make_bundle(tmp_path / "b", extra_models=("model.int8.onnx",))
    data = bytearray((b / "model.onnx").read_bytes())
    data[-5] ^= 0x01
    (b / "model.onnx").write_bytes(bytes(data))
    meta = kit.read_meta(b)
    del meta["files"]["model.onnx"]
    kit.write_meta(b, meta)
    with pytest.raises(BundleError, match="bundle refused"):
        load_bundle(b)
    kit.reseal(b)  # even with the checksum list regenerated: model.onnx is not a file of the bundle
    with pytest.raises(BundleError, match=r"model.onnx: in checksums.sha256 but not one of the bundle's files"):
        load_bundle(b)


def test_unlisted_external_data_and_planted_files_are_refused(kit, tmp_path):
    """Repro: external data (*.onnx.data) or a planted file needed no hash entry."""
    for planted in ("model.onnx.data", "evil.onnx", ".hidden"):
        b = kit.make_bundle(tmp_path / planted)
        (b / planted).write_bytes(b"\0" * 16)
        with pytest.raises(BundleError, match=r"not listed in checksums.sha256 \(unexpected file"):
            load_bundle(b)


def test_subfolders_and_links_are_refused(kit, tmp_path):
    b = kit.make_bundle(tmp_path / "pyc")
    (b / "__pycache__").mkdir()
    with pytest.raises(BundleError, match="__pycache__: unexpected folder"):
        load_bundle(b)
    b = kit.make_bundle(tmp_path / "link")
    os.symlink(b / "model.onnx", b / "other.onnx")
    with pytest.raises(BundleError, match="other.onnx: symbolic link"):
        load_bundle(b)
    b = kit.make_bundle(tmp_path / "swap")
    real = tmp_path / "elsewhere.onnx"
    (b / "model.onnx").rename(real)
    os.symlink(real, b / "model.onnx")  # same bytes, but through a link
    with pytest.raises(BundleError, match="model.onnx: symbolic link"):
        load_bundle(b)


def test_os_view_files_are_ignored_not_trusted(kit, tmp_path):
    b = kit.make_bundle(tmp_path / "b")
    (b / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    bundle = load_bundle(b)
    assert [c.name for c in bundle.checks if c.status == "ignored"] == [".DS_Store"]
    with pytest.raises(BundleError, match="not a model file"):
        bundle.session(".DS_Store")


@pytest.mark.parametrize("key", ["../outside.onnx", "ABS", "sub/model.onnx", "metadata.json"])
def test_files_keys_must_be_plain_names_inside(kit, tmp_path, key):
    """Repro: `files` keys could be absolute or ../ (hashing and trusting files outside the bundle)."""
    b = kit.make_bundle(tmp_path / "b")
    outside = kit.tiny_onnx(tmp_path / "outside.onnx")
    key = str(outside) if key == "ABS" else key
    meta = kit.read_meta(b)
    meta["files"][key] = hashlib.sha256(outside.read_bytes()).hexdigest()
    kit.write_meta(b, meta)
    kit.reseal(b)
    with pytest.raises(BundleError) as e:
        load_bundle(b)
    msg = str(e.value)
    assert (
        msg.startswith(
            f"{b / 'metadata.json'}: field 'files': expected a mapping of relative file names to sha256 (bad entry '"
        )
        and "\n" not in msg
    )
    assert repr(key) in msg or len(key) > 50  # the key name (clipped when long) is the only thing echoed


def test_missing_checksums_and_malformed_lines(kit, tmp_path):
    b = kit.make_bundle(tmp_path / "b")
    text = (b / "checksums.sha256").read_text()
    (b / "checksums.sha256").write_text(text.replace("  README.md", "  ../README.md"))
    with pytest.raises(BundleError, match=r"line 1: '../README.md' is not a plain file name"):
        load_bundle(b)
    (b / "checksums.sha256").unlink()
    with pytest.raises(BundleError, match="checksums.sha256: missing"):
        load_bundle(b)
