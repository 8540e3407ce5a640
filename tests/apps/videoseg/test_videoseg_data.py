"""Readers, importers and clip sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.videoseg.data import (
    fill_polygon,
    import_echonet,
    import_trackrad,
    load_manifest_cases,
    tracing_polygon,
)
from medtransfer.apps.videoseg.io import open_video, read_masks, write_avi, write_masks
from medtransfer.apps.videoseg.synthetic import make_echonet_like, make_trackrad_like
from medtransfer.shared.manifest import read_manifest
from medtransfer.shared.utils.errors import InputError

REAL_TRACKRAD = (
    Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "videoseg" / "trackrad_format_example_synthetic"
)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("with_ext", [False, True])
def test_echonet_import_fills_tracings(tmp_path, with_ext):
    root = make_echonet_like(tmp_path / "E", n_videos=2, n_frames=20, splits=("TRAIN", "TEST"), with_ext=with_ext)
    man = import_echonet(root, tmp_path / "m.csv")
    recs = read_manifest(man)
    assert [r.split for r in recs] == ["train", "test"]
    for r, case in zip(recs, load_manifest_cases(man)):
        truth = read_masks(root / "SyntheticMasks" / f"{case.video.stem}.npz")
        assert len(case.masks) == 2
        ed, es = int(r.extra["ed_frame"]), int(r.extra["es_frame"])
        assert case.masks[ed].sum() > case.masks[es].sum()  # ED is the larger cavity
        for k, m in case.masks.items():
            assert _dice(m, truth[k]) > 0.95
        assert (case.height, case.width, case.n_frames) == (112, 112, 20)


def test_tracing_polygon_order():
    rows = [(0, 0, 0, 10), (1, 2, 9, 2), (1, 5, 9, 5), (1, 8, 9, 8)]
    poly = tracing_polygon(rows)
    assert poly.tolist() == [[1, 2], [1, 5], [1, 8], [9, 8], [9, 5], [9, 2]]
    m = fill_polygon(poly, 12, 12)
    assert m[5, 5] == 1 and m[0, 0] == 0 and m[5, 11] == 0


def test_echonet_import_errors(tmp_path):
    with pytest.raises(InputError, match="FileList.csv"):
        import_echonet(tmp_path, tmp_path / "m.csv")


def test_video_reader_avi_folder_and_truncation(tmp_path):
    frames = (np.arange(10)[:, None, None] * 20 + np.zeros((10, 32, 48))).astype(np.uint8)
    avi = write_avi(tmp_path / "v.avi", frames)
    rd = open_video(avi)
    assert (len(rd), rd.height, rd.width) == (10, 32, 48)
    got = rd.read([0, 5, 9])
    assert got.shape == (3, 32, 48) and abs(int(got[1].mean()) - 100) <= 3
    # a frame folder
    import cv2

    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(frames[:4]):
        cv2.imwrite(str(d / f"img_{i + 1}.png"), f)
    fr = open_video(d)
    assert len(fr) == 4 and int(fr.read([3])[0].mean()) == 60
    # truncated file: header promises more frames than the data holds
    data = avi.read_bytes()
    bad = tmp_path / "trunc.avi"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trunc.avi"):
        rd2 = open_video(bad)
        list(rd2.frames())
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputError, match="junk.mp4"):
        open_video(junk)


def test_masks_formats_and_size_mismatch(tmp_path):
    m = np.zeros((3, 20, 30), np.uint8)
    m[:, 5:10, 5:10] = 1
    write_masks(tmp_path / "a.npz", m[:2], frames=[0, 7])
    got = read_masks(tmp_path / "a.npz", n_frames=10)
    assert sorted(got) == [0, 7] and got[7].sum() == 25
    np.save(tmp_path / "b.npy", m)
    assert sorted(read_masks(tmp_path / "b.npy")) == [0, 1, 2]
    import cv2

    cv2.imwrite(str(tmp_path / "first.png"), m[0] * 255)
    one = read_masks(tmp_path / "first.png")
    assert list(one) == [0] and one[0].sum() == 25
    with pytest.raises(InputError, match="unsupported mask format"):
        (tmp_path / "x.txt").write_text("1")
        read_masks(tmp_path / "x.txt")
    with pytest.raises(InputError, match="frame 7"):
        read_masks(tmp_path / "a.npz", n_frames=5)
    # manifest row whose masks do not match the video size
    write_avi(tmp_path / "v.avi", np.zeros((4, 24, 24), np.uint8))
    (tmp_path / "m.csv").write_text("path,label,split\nv.avi,b.npy,train\n")
    with pytest.raises(InputError, match="differs from video frame size"):
        load_manifest_cases(tmp_path / "m.csv")


def test_trackrad_import_synthetic(tmp_path):
    root = make_trackrad_like(tmp_path / "T", case="S_001", size=48, n_frames=9)
    make_trackrad_like(tmp_path / "T", case="S_002", size=48, n_frames=9, seed=1)
    man = import_trackrad(root, tmp_path / "t.csv")
    recs = read_manifest(man)
    assert [r.group for r in recs] == ["S_001", "S_002"]
    assert recs[0].extra["frame_rate"] == "4.0" and recs[0].extra["scanned_region"] == "abdomen"
    case = load_manifest_cases(man)[0]
    assert (case.n_frames, case.height, case.width) == (9, 48, 48)
    assert len(case.masks) == 9 and all(m.any() for m in case.masks.values())
    # the moving disc moves: labels differ over time
    assert not np.array_equal(case.masks[0], case.masks[2])


def test_trackrad_import_real_example(tmp_path):
    if not REAL_TRACKRAD.is_dir():
        pytest.skip("../shared/data not present")
    man = import_trackrad(REAL_TRACKRAD, tmp_path / "t.csv")
    case = load_manifest_cases(man)[0]
    assert (case.n_frames, case.height, case.width) == (10, 125, 125)
    first = read_masks(REAL_TRACKRAD / "Z_001" / "targets" / "Z_001_first_label.mha")
    assert np.array_equal(first[0], case.masks[0])  # first-frame label = frame 0 of the labels


def test_clip_sampling(vs_echo):
    from medtransfer.apps.videoseg.train import clip_indices

    case = load_manifest_cases(vs_echo["manifest"])[0]
    lab = case.labelled
    idx = clip_indices(case, 4, 32, None)
    assert idx[0] == lab[0] and lab[-1] in idx and len(idx) == 4 and idx == sorted(idx)
    rng = np.random.default_rng(0)
    for _ in range(5):
        j = clip_indices(case, 3, 32, rng)
        assert j[0] in lab and len(j) == 3
