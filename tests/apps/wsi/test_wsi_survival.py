from pathlib import Path

import numpy as np
import pytest
import torch

from medtransfer.apps.wsi.survival import (
    c_index,
    km_plot,
    make_bins,
    mean_sd,
    nll_loss,
    pad_bags,
    risk_from_logits,
    td_auc,
    to_bins,
)
from medtransfer.shared.registry import create_model


def test_bins_and_labels() -> None:
    t = np.array([1, 5, 10, 20, 40, 80.0])
    e = np.array([1, 1, 1, 0, 1, 0])
    edges = make_bins(t, e, 2)
    assert len(edges) == 3 and edges[0] == 0 and edges[-1] > 80
    assert list(to_bins(t, edges)) == sorted(to_bins(t, edges).tolist())
    y = make_bins(t, e, 4, "yearly")
    assert list(y[:4]) == [0, 12, 24, 36] and y[-1] >= 81
    assert list(to_bins(np.array([0, 11.9, 12, 500]), y)) == [0, 0, 1, 3]


def test_nll_prefers_correct_hazards() -> None:
    y = torch.tensor([0, 2])
    c = torch.tensor([0, 1])
    good = torch.tensor([[4.0, -4, -4], [-4.0, -4, -4]])  # event in bin 0; censored survivor
    bad = torch.tensor([[-4.0, -4, -4], [4.0, 4, 4]])
    assert nll_loss(good, y, c) < nll_loss(bad, y, c)
    # censored: only survival up to the end of its bin counts
    l1 = nll_loss(torch.tensor([[-4.0, -4, 9]]), torch.tensor([1]), torch.tensor([1]))
    l2 = nll_loss(torch.tensor([[-4.0, -4, -9]]), torch.tensor([1]), torch.tensor([1]))
    assert float(l1) == pytest.approx(float(l2), abs=1e-6)
    risk, h, s = risk_from_logits(good.numpy())
    assert risk[0] > risk[1] and np.all(np.diff(s, axis=1) <= 0)


def test_mil_padding_mask_is_exact() -> None:
    m = create_model("abmil_gated", in_dim=8, hidden=16, attn_dim=8, n_outputs=3).eval()
    rng = np.random.default_rng(0)
    bags = [rng.standard_normal((n, 8)).astype(np.float32) for n in (3, 7, 5)]
    x, mask = pad_bags(bags)
    assert x.shape == (3, 7, 8) and mask.sum(1).tolist() == [3, 7, 5]
    x[0, 3:] = 100.0  # garbage in padding must not matter
    with torch.no_grad():
        batched = m(torch.from_numpy(x), torch.from_numpy(mask))
        _, attn = m.embed(torch.from_numpy(x), torch.from_numpy(mask))
        for i, b in enumerate(bags):
            single = m(torch.from_numpy(b)[None])
            torch.testing.assert_close(batched[i], single[0], atol=1e-5, rtol=1e-5)
    assert float(attn[0, 3:].abs().sum()) == 0.0
    torch.testing.assert_close(attn.sum(1), torch.ones(3))


def test_metrics_and_km(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    risk = rng.standard_normal(120)
    t = np.exp(-risk + 0.3 * rng.standard_normal(120)) * 30
    e = (rng.random(120) < 0.7).astype(int)
    assert c_index(t, e, risk) > 0.8
    assert c_index(t, e, -risk) < 0.2
    auc, times, aucs = td_auc(t, e, t, e, risk)
    assert 0.8 < auc <= 1 and len(times) == len(aucs) > 0
    km = km_plot(t, e, risk, tmp_path / "km.png")
    assert Path(km["png"]).stat().st_size > 5000 and km["logrank_p"] < 1e-3
    assert [g["name"] for g in km["groups"]] == ["low risk", "high risk"]
    assert mean_sd([0.7, 0.8, float("nan")]) == pytest.approx((0.75, 0.0707), abs=1e-3)


def test_c_index_without_a_comparable_pair_is_nan_not_an_exception():
    """One event after every censoring time: no comparable pair (scikit-survival >= 0.22 raises
    NoComparablePairException; a wsi training died in its baseline step on it)."""
    import math

    from medtransfer.apps.wsi.survival import c_index

    assert math.isnan(c_index(np.array([10.0, 5.0, 4.0]), np.array([1, 0, 0]), np.array([0.3, 0.1, 0.2])))


def test_bag_attrs_skip_an_unreadable_first_bag(tmp_path):
    import h5py

    from medtransfer.apps.wsi.train import bag_attrs

    (tmp_path / "a.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 20)  # sorts first, cannot be opened
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((2, 4), np.float32))
        f.attrs.update(encoder="resnet18", patch_size=64, mpp=1.0, pretrained=False)
    assert bag_attrs(tmp_path)["patch_size"] == 64
