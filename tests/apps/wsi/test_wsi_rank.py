"""wsi ranking: martingale-residual target, source-run features, MoE-PKT ``--experts auto:K``."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from medtransfer.apps.wsi.rank import martingale_residuals


def test_martingale_residuals_by_hand():
    # Nelson-Aalen: t=1: 1 event / 3 at risk -> H=1/3; t=3: 1/1 -> H=4/3; H(2)=1/3 (censored at 2)
    r = martingale_residuals(np.array([1.0, 2.0, 3.0]), np.array([1, 0, 1]))
    assert r == pytest.approx([2 / 3, -1 / 3, -1 / 3])


def test_parse_experts():
    from medtransfer.apps.wsi.train import parse_experts
    from medtransfer.shared.utils.errors import MedTransferError

    assert parse_experts("all", 3) == 0 and parse_experts("auto:2", 3) == 2
    for bad in ("auto:4", "auto:0", "top:2", "auto:x"):
        with pytest.raises(MedTransferError, match="auto:K"):
            parse_experts(bad, 3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from medtransfer.apps.wsi.labels import find_studies, read_table
    from medtransfer.apps.wsi.synthetic import make_survpath_tables, planted_bags

    root = make_survpath_tables(tmp_path_factory.mktemp("lab") / "labels", ("tcga_aaa", "tcga_bbb", "tcga_ccc"), 30)
    cases = [c for s, p in find_studies(root).items() for c in read_table(p, "dss", s)[0]]
    return root, cases, planted_bags(cases, dim=16, seed=0, strength=1.5)


def test_select_experts_picks_k_distinct_sources_from_training_patients(cohort):
    import torch

    from medtransfer.apps.wsi.model import build_mil
    from medtransfer.apps.wsi.train import select_experts

    _, cases, bags = cohort
    torch.manual_seed(0)
    mil = build_mil(16, 4, hidden=8, attn_dim=4)
    srcs = {"a": mil, "a_copy": mil, "b": build_mil(16, 4, hidden=8, attn_dim=4)}
    out = select_experts(srcs, cases[:20], bags, 2, lam=0.0)  # no redundancy term: the top two by LogME
    assert set(out["logme"]) == set(srcs) and out["picked"] == ["a", "a_copy"]
    assert out["logme"]["a"] == out["logme"]["a_copy"] and out["logme"]["a"] > out["logme"]["b"]
    assert out["cka"][("a", "a_copy")] == pytest.approx(1.0)
    # a copy (CKA 1) of the first pick gains t - lam; b gains 0 - lam * CKA(a, b) < lam: with lam 2.5 b wins
    assert select_experts(srcs, cases[:20], bags, 2, lam=2.5)["picked"] == ["a", "b"]


def test_wsi_rank_source_run_on_target_training_fold(cohort, tmp_path):
    from medtransfer.apps.wsi.labels import read_splits
    from medtransfer.apps.wsi.train import load_cohort, make_config, train_sources
    from medtransfer.shared.transferability.rank import CandidateError, rank

    root, _, bags = cohort
    cfg = make_config(overrides=["train.epochs=1", "min_steps=0", "model.hidden=8", "model.attn_dim=4"])
    train_sources({"tcga_aaa": load_cohort(root, "tcga_aaa", bags=bags)}, cfg, tmp_path / "pkt")
    run = str(tmp_path / "pkt" / "source_tcga_aaa")
    opts = {"study": "tcga_bbb", "synthetic": True, "dim": 16}
    res = rank("wsi", root, [run], tmp_path / "out", opts=opts, progress=False)
    n_fold0 = len(load_cohort(root, "tcga_bbb", bags=bags).subset(read_splits(root, "tcga_bbb")[0][0]))
    assert res["task"] == "regression" and res["rows"][0]["n"] == n_fold0 and res["rows"][0]["dim"] == 8
    with pytest.raises(CandidateError, match="not registry backbones"):
        rank("wsi", root, ["resnet18"], tmp_path / "out2", True, opts, progress=False)
    with pytest.raises(CandidateError, match="bags are 32-d"):
        rank("wsi", root, [run], tmp_path / "out3", opts={**opts, "dim": 32}, progress=False)


def test_pkt_experts_option_refused_before_training(cohort, tmp_path):
    from medtransfer.shared.cli.main import app

    root, _, _ = cohort
    args = ["wsi", "pkt", "--labels", str(root), "--target", "tcga_bbb", "--sources", "tcga_aaa", "--synthetic"]
    r = CliRunner().invoke(app, [*args, "--dim", "16", "--experts", "auto:3", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "auto:K" in r.output
    assert not (tmp_path / "o").exists()


def test_pkt_compare_auto_experts_per_fold(cohort, tmp_path):
    from medtransfer.apps.wsi.train import load_cohort, make_config, pkt_compare, train_sources

    root, _, bags = cohort
    cfg = make_config(overrides=["train.epochs=1", "min_steps=0", "model.hidden=8", "model.attn_dim=4"])
    srcs = {s: load_cohort(root, s, bags=bags) for s in ("tcga_aaa", "tcga_ccc")}
    models = train_sources(srcs, cfg, tmp_path / "pkt")
    target = load_cohort(root, "tcga_bbb", bags=bags)
    r = pkt_compare(target, models, root, "tcga_bbb", cfg, tmp_path / "pkt", 0, 1, "none", "auto:1")
    assert r["expert_selection"] == "auto:1" and len(r["experts_per_fold"]) == 1
    (picked,) = r["experts_per_fold"][0]
    gate = r["routing"]["mean_gate"]
    assert set(gate) == {"tcga_aaa", "tcga_ccc"} and gate[picked] == pytest.approx(1.0)
    assert gate[({"tcga_aaa", "tcga_ccc"} - {picked}).pop()] == 0.0  # not selected: never routed to
