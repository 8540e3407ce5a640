import hashlib

import pytest
import torch

from medtransfer.shared.registry import core as reg_core
from medtransfer.shared.registry import create_model, get_entry, list_models
from medtransfer.shared.utils.errors import MedTransferError, WeightsError


def test_families_registered():
    names = list_models()
    for n in ("resnet18", "densenet121", "monai_densenet121", "deep4", "shallow", "tcn", "eegnet"):
        assert n in names
    assert get_entry("resnet18").pretrained_cfg["filename"].endswith(".safetensors")


def test_unknown_name_suggests():
    with pytest.raises(MedTransferError, match="resnet18"):
        create_model("resnet81")


def test_timm_head_and_shapes():
    m = create_model("resnet18", num_classes=6, in_chans=1)
    assert m.transfer_head == ["fc"]
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 6)


def test_braindecode_signal_parameters():
    m = create_model("eegnet", n_chans=4, n_outputs=2, n_times=400, sfreq=100)
    assert m(torch.randn(3, 4, 400)).shape[:2] == (3, 2)


def test_missing_weights_name_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsError, match=r"resnet18\.a1_in1k\.safetensors"):
        create_model("resnet18", pretrained=True, num_classes=2)


def test_local_weights_loaded_and_rgb_stem_folded(tmp_path, monkeypatch):
    src = create_model("resnet18", num_classes=1000, in_chans=3)
    f = tmp_path / get_entry("resnet18").pretrained_cfg["filename"]
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    monkeypatch.setenv("MEDTRANSFER_WEIGHTS", str(tmp_path))
    m = create_model("resnet18", pretrained=True, num_classes=5, in_chans=1)
    assert torch.allclose(m.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(m.layer4[0].conv1.weight, src.layer4[0].conv1.weight)
    assert m.fc.weight.shape == (5, 512)  # new head, not loaded
    assert m.pretrained_report["skipped"] == 2


def test_sha256_checked(tmp_path, monkeypatch):
    src = create_model("resnet18", num_classes=2)
    f = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), f)

    @reg_core.register_model("test_hashed", family="test", pretrained_cfg={"filename": "tiny.pt", "sha256": "0" * 64})
    def _b(**kw):
        return create_model("resnet18", num_classes=2)

    monkeypatch.setenv("MEDTRANSFER_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError, match="sha256"):
        create_model("test_hashed", pretrained=True)
    reg_core._REGISTRY["test_hashed"].pretrained_cfg["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    m = create_model("test_hashed", pretrained=True)
    assert torch.equal(m.fc.weight, src.fc.weight)
