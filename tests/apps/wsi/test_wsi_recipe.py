"""The Path-PKT recipe: its values are the authors', and it builds and trains at full size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import medtransfer.apps.wsi as wsi_pkg
from medtransfer.apps.wsi.labels import Case
from medtransfer.apps.wsi.model import MoEPKT
from medtransfer.apps.wsi.survival import make_bins
from medtransfer.apps.wsi.train import SELF_EXPERT, build_moe, make_config, new_mil, train_model

RECIPE = Path(wsi_pkg.__file__).parent / "recipes" / "path_pkt_uni2h.yaml"

# Transcribed by hand from liupei101/Path-PKT (commit a38c92b): config/cfg_sa_base_uni2h_stl.yaml and
# config/cfg_sa_base_uni2h_stl_moe_pkt.yaml; keys are ours, the comment names theirs.
AUTHORS = {
    "model.hidden": 512,  # deepmil_dim_emb / moetfl_dim_emb
    "model.attn_dim": 384,  # deepmil_dim_attn
    "model.dropout": 0.25,  # deepmil_drop_rate
    "model.n_bins": 32,  # time_bins
    "model.bins": "yearly",  # time_format: interval, time_event_max 11680 days = 32 x 365
    "loss.alpha": 0.5,  # loss_survmle_alpha
    "moe.top_k": 5,  # moetfl_expert_topk
    "moe.balance_weight": 0.01,  # loss_balance_weight
    "moe.z_weight": 0.01,  # loss_router_z_weight
    "moe.routing": "raw",  # softmax weights of the kept experts, not renormalised
    "moe.balance_times_experts": False,  # no factor E on the balance loss
    "moe.self_expert": True,  # transfer_self_feat: True
    "train.optimizer": "adamw",  # opt_name: adamW
    "train.lr": 1e-4,  # opt_lr
    "train.weight_decay": 1e-5,  # opt_weight_decay
    "train.epochs": 20,  # epochs
    "train.batch_size": 1,  # batch_size
    "train.grad_accum": 16,  # bp_every_batch
    "train.scheduler": "cosine",  # lrs_name
    "train.warmup_epochs": 1,  # lrs_warmup_epochs
    "train.patience": 0,  # es: False
    "train.seed": 42,  # seed
    "data.max_patches": 0,  # every patch of the bag
    "data.endpoint": "dss",  # UNI2-h-DSS
    "min_steps": 0,  # a fixed number of epochs
}


def _get(cfg: dict, dotted: str):
    node = cfg
    for k in dotted.split("."):
        node = node[k]
    return node


def test_path_pkt_recipe_values_are_the_authors() -> None:
    cfg = make_config(RECIPE)
    got = {k: _get(cfg, k) for k in AUTHORS}
    assert got == AUTHORS
    # every value line of the recipe carries its source or reason as a comment
    lines = [ln for ln in RECIPE.read_text().splitlines() if ":" in ln and not ln.lstrip().startswith("#")]
    assert all("#" in ln for ln in lines if not ln.rstrip().endswith(":")), lines


def _cases(n: int) -> list[Case]:
    return [Case(f"TCGA-XX-{i:04d}", "tcga_xxx", 6.0 + 9.0 * i, i % 2, [], "", 50.0 + i) for i in range(n)]


def test_path_pkt_recipe_full_size_mil_and_moe_one_step(tmp_path: Path) -> None:
    """Full-size gated ABMIL (1536 -> 512, attention 384) and MoE-PKT (12 sources + self, top-5 raw):
    one optimisation step each on generated 2,000-patch UNI2-h-sized bags, through the recipe's
    own training loop (AdamW, batch 1, accumulation 16, cosine with warm-up)."""
    cfg = make_config(RECIPE, ["train.epochs=1", "train.device=cpu"])
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cases = _cases(2)
    bags = {c.case_id: rng.standard_normal((2000, 1536)).astype(np.float32) for c in cases}
    t = np.array([c.time for c in cases])
    edges = make_bins(t, 1 - np.array([c.censored for c in cases]), 32, "yearly")

    mil = new_mil(1536, cfg)
    n_params = sum(p.numel() for p in mil.parameters())
    # Linear(1536,512) + gated attention 2 x Linear(512,384) + Linear(384,1) + head Linear(512,32)
    assert n_params == (1536 * 512 + 512) + 2 * (512 * 384 + 384) + (384 + 1) + (512 * 32 + 32)
    before = {k: v.clone() for k, v in mil.state_dict().items()}
    mil = train_model(mil, cases, bags, edges, cfg, tmp_path / "mil", extra={"in_dim": 1536, "kind": "mil"})
    changed = [k for k, v in mil.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(torch.isfinite(v).all() for v in mil.state_dict().values())

    sources = [new_mil(1536, cfg).eval() for _ in range(13)]
    names = [f"tcga_s{i}" for i in range(12)] + [SELF_EXPERT]
    moe = build_moe(sources, 1536, cfg, names)
    assert isinstance(moe, MoEPKT) and moe.top_k == 5 and moe.routing == "raw" and len(moe.experts) == 13
    frozen = {k: v.clone() for k, v in moe.sources.state_dict().items()}
    router = moe.router.weight.detach().clone()
    moe = train_model(
        moe,
        cases,
        bags,
        edges,
        {**cfg, "train": {**cfg["train"], "strategy": "linear_probe"}},
        tmp_path / "moe",
        head=["target", "router", "experts", "head"],
        extra={"in_dim": 1536, "kind": "moe", "sources": names},
    )
    assert not torch.equal(moe.router.weight, router)  # trained
    assert all(torch.equal(v, frozen[k]) for k, v in moe.sources.state_dict().items())  # sources frozen
    with torch.no_grad():
        out = moe.route(torch.from_numpy(bags[cases[0].case_id])[None])
    assert int(out["keep"].sum()) == 5 and float(out["gates"].sum()) < 1.0  # raw top-5 weights
