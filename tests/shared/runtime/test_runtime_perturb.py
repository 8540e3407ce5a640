"""The perturbation registry: identity at 0, documented ladders, physical units that mean what they say."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from medtransfer.shared.runtime import perturb
from medtransfer.shared.runtime.perturb import PERTURBATIONS, get, ladder

SFREQ = 200.0


def _sample(modality: str, rng: np.random.Generator) -> np.ndarray:
    if modality == "eeg":
        t = np.arange(2000) / SFREQ
        slow = 50 * np.sin(2 * np.pi * 0.2 * t)  # a 5 s period: longer time shifts move it further
        return (slow[None] + 20 * np.sin(2 * np.pi * 7 * t)[None] + rng.normal(0, 10, (8, 2000))).astype(np.float32)
    if modality == "image":
        yy, xx = np.mgrid[:48, :64]
        return (
            (100 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 5, (48, 64))).clip(0, 255).astype(np.uint8)
        )
    if modality == "wsi":
        return rng.integers(60, 230, size=(32, 32, 3), dtype=np.uint8)
    if modality == "features":
        return rng.normal(0, 1, (40, 16)).astype(np.float32)
    if modality == "video":
        return rng.integers(0, 255, size=(20, 16, 16), dtype=np.uint8)
    raise AssertionError(modality)


ALL = [(m, n) for m, d in PERTURBATIONS.items() for n in d]


def test_registry_covers_the_modalities_the_audit_needs():
    assert {"eeg", "image", "wsi", "video", "features"} <= set(PERTURBATIONS)
    assert {"white_noise", "line_noise_50hz", "line_noise_60hz", "gain", "channel_dropout", "time_shift",
            "rereference"} <= set(PERTURBATIONS["eeg"])  # fmt: skip
    assert {"speckle", "gain", "blur", "depth_crop", "rotation"} <= set(PERTURBATIONS["image"])
    assert {"stain", "blur", "jpeg"} <= set(PERTURBATIONS["wsi"])
    assert {"frame_drop", "noise"} <= set(PERTURBATIONS["video"])
    for m, n in ALL:  # every one documented in the module docstring with its ladder and unit
        p = PERTURBATIONS[m][n]
        assert f"``{n}``" in perturb.__doc__ or f"``{n.rsplit('_', 1)[0]}" in perturb.__doc__, n
        assert p.severities[0] == 0 and len(p.severities) >= 4 and list(p.severities) == sorted(set(p.severities))
        assert p.unit and p.description


@pytest.mark.parametrize("modality,name", ALL)
def test_zero_is_identity_and_damage_grows_with_severity(modality, name):
    p = get(modality, name)
    x = _sample(modality, np.random.default_rng(0))
    y0 = p(x, 0, np.random.default_rng(1), sfreq=SFREQ)
    assert y0.dtype == x.dtype and np.array_equal(y0, x) and y0 is not x
    dist = []
    for s in p.severities[1:]:
        d = []
        for seed in range(4):
            y = p(x, s, np.random.default_rng(seed), sfreq=SFREQ)
            assert y.dtype == x.dtype
            if name != "patch_dropout":
                assert y.shape == x.shape
                d.append(float(np.mean(np.abs(y.astype(float) - x.astype(float)))))
            else:
                d.append(float(len(x) - len(y)))
        dist.append(np.mean(d))
    assert dist[0] > 0, "the mildest severity changes nothing"
    assert dist[-1] > dist[0], f"{modality}/{name}: the strongest severity is no worse than the mildest: {dist}"
    # reproducible from the generator alone
    s = p.severities[-1]
    a = p(x, s, np.random.default_rng(7), sfreq=SFREQ)
    b = p(x, s, np.random.default_rng(7), sfreq=SFREQ)
    assert np.array_equal(a, b)


def test_eeg_units_are_physical():
    rng = np.random.default_rng(0)
    x = np.zeros((4, 4000), np.float64)
    noise = get("eeg", "white_noise")(x, 20.0, rng)
    assert abs(np.sqrt(np.mean(noise**2)) - 20.0) < 0.5  # µV RMS
    x1 = np.ones((3, 100))
    assert np.allclose(get("eeg", "gain")(x1, 6.0, rng), 10 ** (6 / 20))  # dB
    line = get("eeg", "line_noise_60hz")(x, 10.0, rng, sfreq=SFREQ)
    spec = np.abs(np.fft.rfft(line[0]))
    assert abs(np.fft.rfftfreq(x.shape[1], 1 / SFREQ)[np.argmax(spec)] - 60.0) < 0.1
    drop = get("eeg", "channel_dropout")(np.full((20, 500), 30.0), 0.25, rng)
    lost = np.abs(drop.mean(axis=1)) < 1
    assert int(lost.sum()) == 5 and np.all(drop[lost].std(axis=1) > 0)  # noise floor, not constant
    ramp = np.tile(np.arange(1000.0), (2, 1))
    shifted = get("eeg", "time_shift")(ramp, 100.0, rng, sfreq=SFREQ)  # 100 ms at 200 Hz = 20 samples
    assert np.array_equal(shifted[:, :980], ramp[:, 20:]) and shifted.shape == ramp.shape
    car = get("eeg", "rereference")(rng.normal(size=(6, 300)), 1.0, rng)
    assert np.allclose(car.mean(axis=0), 0.0)
    with pytest.raises(ValueError, match="sfreq"):
        get("eeg", "time_shift")(ramp, 100.0, rng)
    with pytest.raises(ValueError, match="severity"):
        get("eeg", "gain")(x1, -1.0, rng)


def test_image_units_and_ranges():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64), 100.0, np.float32)
    sp = get("image", "speckle")(flat, 0.25, rng, vmax=255)
    assert abs(sp.mean() / 100.0 - 1) < 0.02 and abs(sp.std() / 100.0 - 0.25) < 0.03  # mean-1 field, std = severity
    u8 = np.full((10, 10, 3), 200, np.uint8)
    g = get("image", "gain")(u8, 6.0, rng)
    assert g.dtype == np.uint8 and g.max() == 255  # clipped, not wrapped
    unit = np.full((8, 8), 0.5, np.float32)
    assert np.allclose(get("image", "gain")(unit, 20 * np.log10(1.5), rng), 0.75)  # float 0-1 range kept
    img = np.zeros((40, 40), np.uint8)
    img[0, 20] = 255  # the transducer apex stays at the top centre after a depth crop
    dc = get("image", "depth_crop")(img, 0.2, rng)
    assert dc[:3].max() > 0 and dc[3:].max() == 0
    bar = np.zeros((41, 41), np.float32)
    bar[20, :] = 1.0
    rot = get("image", "rotation")(bar, 20.0, rng)
    assert rot[20, 20] > 0.5 and rot[20, 0] < 0.5  # turned about the centre


def test_wsi_tiles_stay_rgb_and_jpeg_loses_more_at_lower_quality():
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    st = get("wsi", "stain")(tile, 0.05, rng)
    assert st.shape == tile.shape and st.dtype == np.uint8 and not np.array_equal(st, tile)
    errs = [np.abs(get("wsi", "jpeg")(tile, s, rng).astype(float) - tile).mean() for s in (30, 90)]
    assert errs[1] > errs[0] > 0


def test_video_frame_drop_repeats_frames_and_keeps_the_first():
    x = np.arange(30, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    y = get("video", "frame_drop")(x, 0.5, np.random.default_rng(3))
    assert y[0, 0, 0] == 0 and y.shape == x.shape
    vals = y[:, 0, 0]
    assert np.all(np.diff(vals.astype(int)) >= 0) and len(np.unique(vals)) < 30


def test_ladder_and_lookup_errors():
    p = get("eeg", "white_noise")
    assert ladder(p, 3) == (0.0, p.severities[2], p.severities[-1])  # 0, the middle, the strongest
    assert ladder(p) == p.severities and ladder(p, 1) == (0.0,)
    with pytest.raises(KeyError, match="known"):
        get("eeg", "nope")
    with pytest.raises(KeyError, match="known"):
        get("ct", "noise")


def test_perturb_imports_no_torch():
    code = "import sys, medtransfer.shared.runtime.perturb as p; p.get('wsi','stain'); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "False"
