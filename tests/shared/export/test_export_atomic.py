"""Atomic export (staged_output), write_bundle path handling, and the `export` / `verify` commands."""

import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtransfer.shared.cli.main import app
from medtransfer.shared.export import staged_output, write_bundle
from medtransfer.shared.runtime.bundle import load_bundle
from medtransfer.shared.utils.errors import BundleError, ConfigError, MedTransferError

runner = CliRunner()


def _onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
    g = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "id", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _write(folder: Path, files=None) -> Path:
    write_bundle(
        folder,
        name="t",
        app="image",
        task="classification",
        files=files or ["model.onnx"],
        inputs={"image": {"shape": [-1, 2]}},
        outputs={"logits": {"shape": [-1, 2]}},
        preprocessing={"size": 2},
        labels=["a", "b"],
    )
    return folder


def test_write_bundle_relative_out_and_file_paths(tmp_path, monkeypatch):
    """Repro (EEG): out_dir relative and files given as out_dir / name crashed in write_bundle."""
    monkeypatch.chdir(tmp_path)
    out = Path("rel/dir")
    out.mkdir(parents=True)
    _onnx(out / "model.onnx")
    _write(out, files=[out / "model.onnx"])
    assert set(load_bundle(out).description.files) == {"model.onnx"}


def test_write_bundle_refuses_outside_files_and_strays(tmp_path):
    (tmp_path / "b").mkdir()
    _onnx(tmp_path / "b" / "model.onnx")
    _onnx(tmp_path / "outside.onnx")
    with pytest.raises(BundleError, match="not a model file directly inside the bundle folder"):
        _write(tmp_path / "b", files=["model.onnx", tmp_path / "outside.onnx"])
    (tmp_path / "b" / "model.pre.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="model.pre.onnx: not one of the bundle's files"):
        _write(tmp_path / "b")


def test_staged_output_relative_new_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with staged_output("a/b/bundle") as tmp:
        assert tmp.is_absolute() and tmp.parent == tmp_path / "a" / "b" and tmp.name.startswith(".bundle.tmp-")
        _onnx(tmp / "model.onnx")
        _write(tmp)
    load_bundle(tmp_path / "a" / "b" / "bundle")
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["bundle"]


def test_staged_output_failure_leaves_nothing(tmp_path):
    for exc in (MedTransferError("parity failed"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with staged_output(tmp_path / "new" / "deep" / "bundle") as tmp:
                _onnx(tmp / "model.onnx")
                raise exc
        assert os.listdir(tmp_path) == []  # no bundle, no temp folder, no parents it created


def test_staged_output_existing_targets(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_output(empty) as tmp:
        _onnx(tmp / "model.onnx")
        _write(tmp)
    first = load_bundle(empty).sha256
    # an existing bundle: refused unless overwrite; replaced whole with it
    with pytest.raises(ConfigError, match="a bundle already exists there; pass --overwrite"):
        with staged_output(empty):
            pass
    with staged_output(empty, overwrite=True) as tmp:
        _onnx(tmp / "model.onnx")
        write_bundle(
            tmp,
            name="t2",
            app="image",
            task="classification",
            files=["model.onnx"],
            inputs={},
            outputs={},
            preprocessing={},
        )
    assert load_bundle(empty).name == "t2" and load_bundle(empty).sha256 != first
    # a failed overwrite keeps the old bundle
    with pytest.raises(MedTransferError):
        with staged_output(empty, overwrite=True) as tmp:
            raise MedTransferError("boom")
    assert load_bundle(empty).name == "t2" and sorted(os.listdir(tmp_path)) == ["empty"]
    # a non-empty folder that is not a bundle, or a file: refused and untouched
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    for target in (other, tmp_path / "file"):
        with pytest.raises(ConfigError):
            with staged_output(target, overwrite=True):
                pass
    assert (other / "keep.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "x"


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_export_relative_overwrite_and_verify(image_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = str(image_run["run"])
    r = runner.invoke(app, ["export", run, "--out", "rel/dir", "--force"])  # plumbing run: below baseline
    assert r.exit_code == 0, r.output
    out = tmp_path / "rel" / "dir"
    assert sorted(os.listdir(out)) == ["README.md", "checksums.sha256", "metadata.json", "model.onnx", "reference.json"]
    assert os.listdir(tmp_path / "rel") == ["dir"]
    r = runner.invoke(app, ["export", run, "--out", "rel/dir", "--force"])
    assert r.exit_code == 2 and "pass --overwrite" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["export", run, "--out", str(out), "--overwrite", "--force"])
    assert r.exit_code == 0, r.output

    r = runner.invoke(app, ["verify", "rel/dir"])
    assert r.exit_code == 0, r.output
    sha = hashlib.sha256((out / "checksums.sha256").read_bytes()).hexdigest()
    assert "schema  medtransfer-bundle/2" in r.output and sha in r.output
    for name in ("README.md", "metadata.json", "model.onnx"):
        size = (out / name).stat().st_size
        assert any(ln.startswith("OK") and ln.endswith(name) and f"{size:,d}" in ln for ln in r.output.splitlines())

    meta = json.loads((out / "metadata.json").read_text())
    meta["labels"] = list(reversed(meta["labels"]))
    (out / "metadata.json").write_text(json.dumps(meta))
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: {out / 'metadata.json'}: sha256 does not match checksums.sha256 "
        "(file altered or corrupt); bundle refused"
    )


def test_cli_export_failure_leaves_nothing(image_run, tmp_path, monkeypatch):
    """Repro: a failing export left a half-written bundle folder behind."""
    import medtransfer.shared.export as ex

    def broken(module, args, path, *a, **k):
        Path(path).write_bytes(b"half")
        raise ex.ParityError(f"{path}: ONNX differs from PyTorch")

    monkeypatch.setattr(ex, "export_onnx", broken)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["export", str(image_run["run"]), "--out", "rel/dir", "--force"])
    assert r.exit_code == 2 and "ONNX differs" in r.output
    assert os.listdir(tmp_path) == []
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("mine")
    r = runner.invoke(app, ["export", str(image_run["run"]), "--out", "notes", "--overwrite", "--force"])
    assert r.exit_code == 2 and "not empty and not a bundle" in r.output
    assert os.listdir(notes) == ["a.txt"]
