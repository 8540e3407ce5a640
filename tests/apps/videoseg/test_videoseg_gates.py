"""videoseg readers and predictor: sizes from headers before decoding, implausible geometry as one-line
errors (error rows, not crashes), one output folder per input (never beside the inputs), importer
paths relative to the CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.videoseg.io import open_video, read_masks
from medtransfer.apps.videoseg.synthetic import make_cine
from medtransfer.shared.manifest import read_manifest
from medtransfer.shared.utils.errors import InputError


def _no_decode(*_a, **_k):
    raise AssertionError("pixels decoded before the header's size was checked")


@pytest.mark.parametrize(
    "dims,words", [("30000 30000 100", "exceeds"), ("64 64 100000", "frames"), ("1 1 10", "smaller")]
)
def test_mha_header_checked_before_pixels(tmp_path, monkeypatch, dims, words):
    import SimpleITK as sitk

    p = tmp_path / "big.mha"
    p.write_bytes(
        (
            "ObjectType = Image\nNDims = 3\nBinaryData = True\nDimSize = "
            + dims
            + "\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
        ).encode()
        + bytes(4096)
    )
    monkeypatch.setattr(sitk, "ReadImage", _no_decode)
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", _no_decode)
    for reader in (open_video, read_masks):
        with pytest.raises(InputError) as e:
            reader(p)
        assert "big.mha" in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_nan_pixels_in_a_stack_are_an_error_not_a_blank_answer(tmp_path):
    """100 NaN pixels in frame 0 of a float .mha gave status ok, 11 empty frames, a numpy warning."""
    a = np.random.default_rng(0).normal(size=(12, 32, 32)).astype(np.float32)
    a[0, :10, :10] = np.nan
    with pytest.raises(InputError, match="nan.mha: pixel values contain 100 NaN/inf value"):
        open_video(_mha(tmp_path / "nan.mha", a))


def test_vector_mha_is_one_line(tmp_path):
    """A colour (3-component) stack used to escape the reader as a ValueError."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((4, 32, 32, 3), np.uint8), isVector=True)
    sitk.WriteImage(img, str(tmp_path / "rgb.mha"))
    with pytest.raises(InputError, match="components"):
        open_video(tmp_path / "rgb.mha")


def test_a_metaimage_reads_pixels_from_itself_or_its_own_folder_only(tmp_path):
    """A 400-byte .mha whose header pointed at ``../secret/other_patient.raw`` was read: the other
    file's pixels came back as this input's answer (and ``/etc/passwd`` was opened)."""
    import SimpleITK as sitk

    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "other_patient.raw").write_bytes(frames.tobytes())
    (tmp_path / "in").mkdir()
    head = "ObjectType = Image\nNDims = 3\nDimSize = 32 32 4\nElementType = MET_UCHAR\nElementDataFile = {}\n"
    for name, target in (
        ("up.mha", "../secret/other_patient.raw"),
        ("abs.mha", "/etc/passwd"),
        ("list.mha", "LIST"),
        ("gone.mhd", "missing.raw"),
        ("none.mha", None),
    ):
        p = tmp_path / "in" / name
        p.write_text(head.format(target) if target else "ObjectType = Image\nNDims = 3\n")
        with pytest.raises(InputError) as e:
            open_video(p)
        msg = str(e.value)
        assert name in msg and "\n" not in msg and "passwd" not in msg and "secret" not in msg, msg
    (tmp_path / "in" / "twice.mhd").write_text(  # ITK reads the first name, a check of the last one passed it
        head.format("../secret/other_patient.raw") + "ElementDataFile = twice.raw\n"
    )
    (tmp_path / "in" / "twice.raw").write_bytes(frames.tobytes())
    with pytest.raises(InputError, match="twice.mhd: MetaImage header points its pixel data at another folder"):
        open_video(tmp_path / "in" / "twice.mhd")
    # what MetaIO also writes and ITK reads: ':' for '=', Local / local, a name with a space, CRLF lines
    (tmp_path / "in" / "my data.raw").write_bytes(frames.tobytes())
    for k, (sep, target, nl) in enumerate(((":", "my data.raw", "\n"), ("=", "my data.raw", "\r\n"))):
        (tmp_path / "in" / f"ok{k}.mhd").write_text(head.replace(" = ", f" {sep} ").format(target).replace("\n", nl))
        assert open_video(tmp_path / "in" / f"ok{k}.mhd").n_frames == 4
    sitk.WriteImage(sitk.GetImageFromArray(frames), str(tmp_path / "in" / "pair.mhd"))  # header + .raw beside it
    (tmp_path / "annex").mkdir()  # a git-annex / DataLad pair: both names are links into an object store
    for n in ("pair.mhd", "pair.raw"):
        (tmp_path / "annex" / n).symlink_to(tmp_path / "in" / n)
    assert open_video(tmp_path / "annex" / "pair.mhd").n_frames == 4
    assert (tmp_path / "in" / "pair.raw").is_file()
    assert open_video(tmp_path / "in" / "pair.mhd").n_frames == 4
    assert open_video(_mha(tmp_path / "in" / "local.mha", frames)).n_frames == 4  # LOCAL: pixels follow the header


class FakeCapture:
    """cv2.VideoCapture stand-in declaring a geometry; it really holds up to 50 small frames."""

    def __init__(self, w: int, h: int, n: int) -> None:
        self.props = {3: float(w), 4: float(h), 7: float(n), 5: 25.0}
        self.reads = 0

    def __call__(self, *_a):
        self.reads = 0
        return self

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return self.props.get(int(prop), 0.0)

    def read(self):
        w, h = int(self.props[3]), int(self.props[4])
        self.reads += 1
        if self.reads > 50:
            return False, None
        if w * h > 4096 * 4096:
            raise AssertionError("frame decoded before the header's geometry was checked")
        return True, np.full((max(h, 1), max(w, 1), 3), 128, np.uint8)

    def set(self, *_a) -> bool:
        return True

    def release(self) -> None:
        pass


@pytest.mark.parametrize(
    "w,h,n,words",
    [(0, 0, 10, "no pixels"), (1, 1, 10, "smaller"), (64, 64, 100000, "frames"), (50000, 20, 3, "exceeds")],
)
def test_implausible_video_geometry_is_one_line_error(tmp_path, monkeypatch, w, h, n, words):
    import cv2

    p = tmp_path / "clip.avi"
    p.write_bytes(b"RIFF0000AVI LIST")
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture(w, h, n))
    with pytest.raises(InputError) as e:
        open_video(p)
    assert words in str(e.value) and "clip.avi" in str(e.value) and "\n" not in str(e.value)


def test_huge_npy_mask_refused_before_loading(tmp_path, monkeypatch):
    from numpy.lib import format as npf

    p = tmp_path / "m.npy"
    with open(p, "wb") as f:
        npf.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (100000, 512, 512)})
        f.write(bytes(1024))
    monkeypatch.setattr(np, "load", _no_decode)
    with pytest.raises(InputError, match="frames"):
        read_masks(p)


# ------------------------------------------------------------------------------ importers (paths)
def test_echonet_and_trackrad_paths_relative_to_csv(tmp_path, monkeypatch):
    from medtransfer.apps.videoseg.data import import_echonet, import_trackrad, load_manifest_cases
    from medtransfer.apps.videoseg.synthetic import make_echonet_like, make_trackrad_like

    make_echonet_like(tmp_path / "data" / "E", n_videos=2, n_frames=8)
    make_trackrad_like(tmp_path / "data" / "T", n_frames=6)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for fn, root, out in ((import_echonet, "../data/E", "sub/e.csv"), (import_trackrad, "../data/T", "sub/t.csv")):
        fn(root, out)
        recs = read_manifest(tmp_path / "work" / out)
        assert recs and all(r.path.is_file() and not r.rel.startswith("/") for r in recs)
        monkeypatch.chdir(tmp_path)  # masks resolve against the CSV, not the cwd
        assert len(load_manifest_cases(tmp_path / "work" / out)) == len(recs)
        monkeypatch.chdir(tmp_path / "work")


# ------------------------------------------------------------------------------ predictor (bundle)
def _mha(path: Path, frames: np.ndarray) -> Path:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(frames), str(path))
    return path


def test_two_inputs_never_share_outputs_and_nothing_beside_inputs(vs_bundle, tmp_path, monkeypatch):
    """`predict pt.v1.mha pt.v2.mha --out O` -> O/pt.v1/masks.npz and O/pt.v2/masks.npz; no --out -> no files."""
    from typer.testing import CliRunner

    from medtransfer.shared.cli.main import app

    f1, _, _ = make_cine(64, 4, seed=21)
    f2 = np.ascontiguousarray(f1[:, ::-1])  # a different cine
    ins = [_mha(tmp_path / "in" / "pt.v1.mha", f1), _mha(tmp_path / "in" / "pt.v2.mha", f2)]
    r = CliRunner().invoke(
        app,
        [
            "predict",
            str(vs_bundle),
            *map(str, ins),
            "--box",
            "8,8,50,50",
            "--out",
            str(tmp_path / "o"),
            "--opt",
            "gif=false",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    masks = [row["masks"] for row in rows]
    assert masks == [str(tmp_path / "o" / "pt.v1" / "masks.npz"), str(tmp_path / "o" / "pt.v2" / "masks.npz")]
    assert all(np.load(m)["masks"].shape == (4, 64, 64) for m in masks)
    # no --out: nothing written anywhere (not beside the inputs, not in the cwd); the answer says so
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    r = CliRunner().invoke(app, ["predict", str(vs_bundle), str(ins[0]), "--box", "8,8,50,50"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output.strip().splitlines()[-1])
    assert row["masks"] is None and "--out" in row["artefacts"]
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["pt.v1.mha", "pt.v2.mha"]
    assert list((tmp_path / "cwd").iterdir()) == []


def test_blank_first_frame_is_unreliable(vs_bundle, tmp_path):
    from medtransfer.apps.videoseg.predict import VideoSegPredictor
    from medtransfer.shared.runtime.bundle import Bundle

    p = _mha(tmp_path / "flat.mha", np.full((3, 64, 64), 40, np.uint8))
    res = VideoSegPredictor(Bundle(vs_bundle)).predict(p, box="8,8,50,50")
    assert res["unreliable"] is True and any("blank / constant" in r for r in res["reasons"])


def test_time_axis_option_reads_a_generic_stack_whose_frames_look_square(vs_bundle, tmp_path):
    """A (T=64, H=64, W=96) stack was read time-last (96 frames of 64 x 64) with no way to say otherwise."""
    from medtransfer.apps.videoseg.predict import VideoSegPredictor
    from medtransfer.shared.runtime.bundle import Bundle
    from medtransfer.shared.utils.errors import ConfigError

    p = _mha(tmp_path / "thw.mha", np.random.default_rng(0).integers(0, 255, (64, 64, 96), dtype=np.uint8))
    guessed = VideoSegPredictor(Bundle(vs_bundle), max_frames=3).predict(p, box="8,8,40,40")
    first = VideoSegPredictor(Bundle(vs_bundle), max_frames=3, time_axis="first").predict(p, box="8,8,40,40")
    assert (guessed["height"], guessed["width"]) == (64, 64) and (first["height"], first["width"]) == (64, 96)
    with pytest.raises(ConfigError, match="time_axis=middle: expected one of auto, first, last"):
        VideoSegPredictor(Bundle(vs_bundle), time_axis="middle")
    neg = tmp_path / "neg.npz"
    np.savez(neg, masks=np.ones((1, 64, 96), np.uint8), frames=np.array([-1]))
    with pytest.raises(InputError, match="neg.npz: 'frames' holds a negative frame index"):
        VideoSegPredictor(Bundle(vs_bundle), time_axis="first").predict(p, mask=str(neg))


def test_a_dicom_cine_is_named_as_dicom_not_as_a_video_without_frames(tmp_path):
    (tmp_path / "cine.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00" * 64)  # the preamble's marker
    with pytest.raises(InputError, match="cine.dcm: a DICOM file: this app reads videos"):
        open_video(tmp_path / "cine.dcm")
