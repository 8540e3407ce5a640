"""The survival trivial baseline (C-index 0.5 / age-only Cox) and Path-PKT's expert set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medtransfer.apps.wsi.labels import Case, find_studies, read_table
from medtransfer.apps.wsi.synthetic import make_survpath_tables, planted_bags
from medtransfer.apps.wsi.train import (
    AGE_BASELINE,
    CONSTANT_BASELINE,
    SELF_EXPERT,
    age_cox_c_index,
    load_cohort,
    make_config,
    pkt_compare,
    split_val,
    survival_baseline,
    train_sources,
)
from medtransfer.shared.rundir import RunDir

TINY = ["train.epochs=1", "min_steps=0", "model.hidden=8", "model.attn_dim=4"]


def _aged(n: int, older_dies_sooner: bool = True) -> list[Case]:
    """Every patient has an event; time falls (or rises) strictly with age."""
    out = []
    for i in range(n):
        t = 100.0 - 3 * i if older_dies_sooner else 10.0 + 3 * i
        out.append(Case(f"TCGA-AG-{i:04d}", "tcga_age", t, 0, [], "", 40.0 + i))
    return out


def test_age_only_cox_by_hand() -> None:
    tr, te = _aged(20), _aged(8)
    assert age_cox_c_index(tr, te) == pytest.approx(1.0)  # age orders every comparable pair
    no_age = [Case(c.case_id, c.study, c.time, c.censored) for c in te]
    assert age_cox_c_index(tr, no_age) is None  # ages missing: constant baseline only
    assert age_cox_c_index(tr[:5], te) is None  # too few training ages


def test_survival_baseline_takes_the_stronger_bar() -> None:
    from medtransfer.apps.wsi.model import build_mil

    tr, te = _aged(20), _aged(8)
    bags = {c.case_id: np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32) for c in tr + te}
    torch.manual_seed(0)
    rec = survival_baseline(build_mil(4, 3, hidden=8, attn_dim=4).eval(), te, bags, tr)
    assert rec["baselines"] == {CONSTANT_BASELINE: 0.5, AGE_BASELINE: pytest.approx(1.0)}
    assert rec["baseline_name"] == AGE_BASELINE and rec["baseline"] == pytest.approx(1.0)
    assert rec["split"] == "val" and rec["n"] == 8 and rec["beats_baseline"] is False  # nothing beats 1.0


def test_split_val_is_seeded_and_disjoint() -> None:
    cases = _aged(20)
    fit, val = split_val(cases, 0.2, 3)
    assert len(val) == 4 and len(fit) == 16 and not {c.case_id for c in fit} & {c.case_id for c in val}
    assert [c.case_id for c in split_val(cases, 0.2, 3)[1]] == [c.case_id for c in val]
    assert split_val(cases, 0.0, 3) == (cases, [])
    # mostly censored (2 events in 20): the validation split still holds an event, so its C-index is defined
    few = [Case(c.case_id, c.study, c.time, 0 if i in (3, 11) else 1, [], "", c.age) for i, c in enumerate(cases)]
    for seed in range(5):
        assert any(c.event for c in split_val(few, 0.2, seed)[1])


def test_c_index_without_events_is_nan_not_an_error() -> None:
    from medtransfer.apps.wsi.survival import c_index

    assert np.isnan(c_index(np.array([1.0, 2.0, 3.0]), np.zeros(3), np.array([0.1, 0.2, 0.3])))


@pytest.fixture(scope="module")
def pkt_self(tmp_path_factory):
    d = tmp_path_factory.mktemp("pktself")
    root = make_survpath_tables(d / "labels", studies=("tcga_aaa", "tcga_ccc"), n_cases=30)
    cases = []
    for s, p in find_studies(root).items():
        cases += read_table(p, "dss", s)[0]
    bags = planted_bags(cases, dim=8, seed=0, n_patches=(4, 8))
    cfg = make_config(overrides=TINY + ["moe.self_expert=true", "moe.routing=raw", "moe.top_k=2"])
    sources = train_sources({"tcga_aaa": load_cohort(root, "tcga_aaa", bags=bags)}, cfg, d / "pkt")
    res = pkt_compare(
        load_cohort(root, "tcga_ccc", bags=bags), sources, root, "tcga_ccc", cfg, d / "pkt", 12, 1, "none"
    )
    return {"res": res, "dir": d / "pkt"}


def test_path_pkt_expert_set_includes_the_target_fold_model(pkt_self) -> None:
    from medtransfer.apps.wsi.export import rebuild

    res, d = pkt_self["res"], pkt_self["dir"]
    assert res["experts"] == ["tcga_aaa", SELF_EXPERT] and res["protocol"]["self_expert"] is True
    moe, info, _ = rebuild(d / "fold0" / "moe")
    assert info["sources"] == ["tcga_aaa", SELF_EXPERT] and moe.routing == "raw" and len(moe.sources) == 2
    specific = RunDir(d / "fold0" / "specific").load_checkpoint("last")["model"]
    for k, v in moe.sources[1].state_dict().items():  # the self expert IS the fold's cancer-specific model
        torch.testing.assert_close(v, specific[k])
    assert set(res["routing"]["mean_gate"]) == {"tcga_aaa", SELF_EXPERT}


def test_pkt_runs_record_their_baseline_and_export_is_guarded(pkt_self, tmp_path: Path) -> None:
    from medtransfer.apps.wsi.export import export_run
    from medtransfer.shared.export.guard import BelowBaselineError

    d = pkt_self["dir"] / "fold0"
    for run in ("specific", "moe"):
        rec = RunDir(d / run).info()["baseline"]
        # 12 of the fold's training patients drawn: the others are the validation split
        assert rec["metric"] == "c_index" and rec["split"].startswith("val") and rec["n"] > 0
        assert rec["baselines"][CONSTANT_BASELINE] == 0.5 and rec["baseline"] >= 0.5
    # a run marked below its baseline is refused, and exported only with force, marked unreliable
    info = RunDir(d / "moe").info()
    info["baseline"] = {**info["baseline"], "model": 0.4, "beats_baseline": False}
    RunDir(d / "moe").write_info(info)
    with pytest.raises(BelowBaselineError, match="does not beat the trivial baseline"):
        export_run(d / "moe", tmp_path / "b1")
    b = export_run(d / "moe", tmp_path / "b2", force=True)
    meta = json.loads((b / "metadata.json").read_text())
    assert "does not beat" in meta["unreliable"]
