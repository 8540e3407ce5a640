import pytest

from medtransfer.shared.config import parse_overrides, resolve_config
from medtransfer.shared.utils.errors import ConfigError

DEFAULTS = {
    "model": {"name": "resnet18"},
    "train": {"epochs": 3, "lr": 0.001, "amp": True, "peft": {}},
    "data": {"channels": ["A1", "A2"]},
}


def test_overrides_are_typed():
    cfg = resolve_config(
        DEFAULTS, overrides=["train.epochs=5", "train.lr=1e-4", "data.channels=[FP1,FP2,CZ]", "train.peft.r=4"]
    )
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["lr"] == pytest.approx(1e-4)
    assert cfg["data"]["channels"] == ["FP1", "FP2", "CZ"] and cfg["train"]["peft"] == {"r": 4}
    assert DEFAULTS["train"]["epochs"] == 3  # defaults untouched


def test_unknown_key_named():
    with pytest.raises(ConfigError, match="unknown config key 'train.epochz'.*epochs"):
        resolve_config(DEFAULTS, overrides=["train.epochz=5"])


def test_type_errors():
    with pytest.raises(ConfigError, match="train.epochs"):
        resolve_config(DEFAULTS, overrides=["train.epochs=many"])
    with pytest.raises(ConfigError, match="true/false"):
        resolve_config(DEFAULTS, overrides=["train.amp=3"])


def test_recipe_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  epochs: 9\n")
    assert resolve_config(DEFAULTS, recipe=p)["train"]["epochs"] == 9
    p.write_text("trian:\n  epochs: 9\n")
    with pytest.raises(ConfigError, match="trian"):
        resolve_config(DEFAULTS, recipe=p)


def test_parse_overrides_needs_equals():
    with pytest.raises(ConfigError):
        parse_overrides(["train.epochs"])
