import copy

import torch

from medtransfer.apps.wsi.model import MoEPKT, SurvivalHead, build_mil


def test_moe_starts_as_source_ensemble_and_routes_top_k() -> None:
    torch.manual_seed(0)
    src = build_mil(8, 3, hidden=16, attn_dim=8).eval()
    moe = MoEPKT(
        [copy.deepcopy(src), copy.deepcopy(src)], build_mil(8, 3, hidden=16, attn_dim=8), n_bins=3, top_k=1
    ).eval()
    assert not any(p.requires_grad for p in moe.sources.parameters())  # sources frozen
    x = torch.randn(4, 6, 8)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, 4:] = False
    with torch.no_grad():
        out = moe.route(x, mask)
        torch.testing.assert_close(out["logits"], src(x, mask), atol=1e-5, rtol=1e-5)  # identical sources
    assert out["keep"].sum(1).tolist() == [1.0] * 4
    torch.testing.assert_close(out["gates"].sum(1), torch.ones(4))
    aux = MoEPKT.aux_losses(out)
    assert torch.isfinite(aux["balance"]) and aux["balance"] > 0 and aux["z"] >= 0
    # export wrapper: survival is the cumulative product of (1 - hazard), risk = -sum(survival)
    with torch.no_grad():
        risk, hz, surv, attn = SurvivalHead(moe)(x, mask.float())
    torch.testing.assert_close(surv, torch.cumprod(1 - hz, dim=-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(risk, -surv.sum(-1))
    assert attn.shape == (4, 6) and float(attn[0, 4:].sum()) == 0.0
