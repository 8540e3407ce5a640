"""The CACTUS recipe: the paper's values pinned, and one optimisation step of the full-size model from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

RECIPE = Path(__file__).resolve().parents[3] / "apps" / "cardiac" / "recipes" / "cactus.yaml"


def test_recipe_values_are_the_papers():
    """Values the CACTUS paper states (arXiv:2503.05604); a silent drift fails here."""
    raw = yaml.safe_load(RECIPE.read_text())
    assert raw["model"]["backbone"] == "resnet18"  # "a shared encoder (ResNet18)"
    assert raw["model"]["views"] == ["A4C", "PL", "PSAV", "PSMV", "SC", "Random"]  # the six released classes
    assert raw["grade"]["init"] == "view"  # grading fine-tuned from the view model
    assert raw["grade"]["view_weight"] == 0.0  # transfer learning, not multi-task
    assert raw["preprocessing"]["size"] == 224  # ResNet18 full-size input
    text = RECIPE.read_text()
    assert "arXiv:2503.05604" in text and "NOT stated in the paper" in text  # sources and gaps are said


def test_recipe_is_the_default_protocol():
    """CACTUS pure transfer is the app default too (the recipe only adds size and explicit train values)."""
    from medtransfer.apps.cardiac.train import make_config

    base, rec = make_config(), make_config(RECIPE)
    assert base["grade"] == rec["grade"] == {"init": "view", "view_weight": 0.0}
    assert rec["model"]["views"] == base["model"]["views"]
    assert rec["preprocessing"]["size"] == 224 and rec["train"]["optimizer"] == "adamw"


def test_full_size_model_one_step_from_recipe():
    """ResNet18 at 224 px from the recipe (random init): one AdamW step on a batch of 2 changes the weights."""
    from medtransfer.apps.cardiac.model import build_model
    from medtransfer.apps.cardiac.train import _forward, _loss, make_config

    cfg = make_config(RECIPE)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model.backbone).__name__.lower().startswith("resnet")
    assert sum(p.numel() for p in model.backbone.parameters()) > 11_000_000  # full ResNet18 (11.2 M)
    s = int(cfg["preprocessing"]["size"])
    batch = (torch.randn(2, 3, s, s), torch.tensor([0, 3]), torch.tensor([2.0, 7.5]))
    opt = torch.optim.AdamW(
        model.parameters(), lr=float(cfg["train"]["lr"]), weight_decay=float(cfg["train"]["weight_decay"])
    )
    before = model.grade_head.weight.detach().clone()
    model.train()
    out, tgt = _forward(model, batch)
    assert out["view_logits"].shape == (2, 6) and out["grade"].shape == (2,)
    loss = _loss(1.0, 1.0)(out, tgt)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert not torch.equal(before, model.grade_head.weight)


@pytest.mark.parametrize("views", [["A4C", "Nope"], ["A4C", "A4C"], ["A4C"]])
def test_bad_view_list_is_a_config_error(views):
    from medtransfer.apps.cardiac.train import make_config, run_views
    from medtransfer.shared.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="model.views"):
        run_views(make_config(overrides={"model": {"views": views}}))
