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


def _three_experts(routing: str) -> MoEPKT:
    """3 identical-size sources, router fixed to probabilities (0.5, 0.3, 0.2) with logsumexp 1."""
    torch.manual_seed(0)
    srcs = [build_mil(8, 3, hidden=16, attn_dim=8).eval() for _ in range(3)]
    moe = MoEPKT(srcs, build_mil(8, 3, hidden=16, attn_dim=8), n_bins=3, top_k=2, routing=routing).eval()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.bias.copy_(torch.log(torch.tensor([0.5, 0.3, 0.2])) + 1.0)
    return moe


def test_moe_routing_raw_vs_renormalised_by_hand() -> None:
    x = torch.randn(1, 5, 8)
    raw, ren = _three_experts("raw"), _three_experts("renorm")
    with torch.no_grad():
        o_raw, o_ren = raw.route(x), ren.route(x)
        outs = [e(s.embed(x, None)[0]) for s, e in zip(raw.sources, raw.experts)]
    torch.testing.assert_close(o_raw["gates"], torch.tensor([[0.5, 0.3, 0.0]]))  # Path-PKT: softmax as is
    torch.testing.assert_close(o_ren["gates"], torch.tensor([[0.625, 0.375, 0.0]]))  # ours: 0.5/0.8, 0.3/0.8
    torch.testing.assert_close(o_raw["logits"], raw.head(0.5 * outs[0] + 0.3 * outs[1]))
    torch.testing.assert_close(o_ren["logits"], ren.head(0.625 * outs[0] + 0.375 * outs[1]))


def test_moe_loss_scales_by_hand() -> None:
    """f = (0.5, 0.5, 0) (two picks of one slide), P = (0.5, 0.3, 0.2): sum f P = 0.4; ours x E=3 -> 1.2;
    z = logsumexp(log P + 1)^2 = 1; the total adds 0.01 x each."""
    from medtransfer.apps.wsi.train import make_config, make_loss

    with torch.no_grad():
        out = _three_experts("raw").route(torch.randn(1, 5, 8))
    torch.testing.assert_close(MoEPKT.aux_losses(out, scale_by_experts=False)["balance"], torch.tensor(0.4))
    torch.testing.assert_close(MoEPKT.aux_losses(out)["balance"], torch.tensor(1.2))
    torch.testing.assert_close(MoEPKT.aux_losses(out)["z"], torch.tensor(1.0))
    tgt = {"bin": torch.tensor([1]), "censored": torch.tensor([0]), "time": torch.tensor([5.0])}
    ours = make_loss(make_config())(out, tgt)
    pkt = make_loss(make_config(overrides=["moe.balance_times_experts=false"]))(out, tgt)
    nll = make_loss(make_config())({"logits": out["logits"]}, tgt)
    torch.testing.assert_close(ours - nll, torch.tensor(0.01 * 1.2 + 0.01 * 1.0))
    torch.testing.assert_close(pkt - nll, torch.tensor(0.01 * 0.4 + 0.01 * 1.0))


def test_moe_unknown_routing_is_a_config_error() -> None:
    import pytest

    from medtransfer.shared.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="moe.routing"):
        _three_experts("softmax")
