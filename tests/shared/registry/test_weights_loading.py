"""load_pretrained: a starting point must fit the model it starts."""


def test_a_starting_point_that_fits_almost_nothing_is_refused(tmp_path):
    """`eeg train --init <a cardiac run>` recorded 'transferred' while nothing had loaded."""
    import pytest
    import torch
    from torch import nn

    from medtransfer.shared.registry.weights import WeightsError, load_pretrained

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    other = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).state_dict()  # names match, shapes not
    with pytest.raises(WeightsError, match="only 0.0% of the model's weights match it"):
        load_pretrained(model, other)
    same_body = {k: v for k, v in model.state_dict().items() if k.startswith("0.")}  # a new head: fine
    before = model[2].weight.clone()
    info = load_pretrained(model, same_body)
    assert info["missing"] == ["2.weight", "2.bias"] and torch.equal(model[2].weight, before)
    assert 0.9 < info["loaded_share"] < 1.0
