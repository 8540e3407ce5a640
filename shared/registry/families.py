"""Built-in model families: timm image nets, MONAI nets, braindecode EEG nets.

SAM2 (``shared/models/sam2_builder.py``) and MIL aggregators (``shared/models/mil.py``) register
themselves when their modules are importable.
"""

from __future__ import annotations

import importlib
from typing import Any

from medtransfer.shared.registry.core import register_model

HF = "https://huggingface.co/timm/{tag}/resolve/main/model.safetensors"

# name -> (timm architecture, pretrained tag, weight file name users place in MEDTRANSFER_WEIGHTS)
TIMM_MODELS = {
    "resnet18": ("resnet18", "resnet18.a1_in1k"),
    "resnet34": ("resnet34", "resnet34.a1_in1k"),
    "resnet50": ("resnet50", "resnet50.a1_in1k"),
    "densenet121": ("densenet121", "densenet121.ra_in1k"),
    "efficientnet_b0": ("efficientnet_b0", "efficientnet_b0.ra_in1k"),
    "convnext_tiny": ("convnext_tiny", "convnext_tiny.fb_in1k"),
    "vit_small_patch16_224": ("vit_small_patch16_224", "vit_small_patch16_224.augreg_in21k_ft_in1k"),
}


def _timm_builder(arch: str):
    def build(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any):
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
        clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "")
        model.transfer_head = [clf] if isinstance(clf, str) and clf else list(clf or [])  # type: ignore[assignment]
        return model

    return build


for _name, (_arch, _tag) in TIMM_MODELS.items():
    register_model(
        _name,
        family="timm",
        pretrained_cfg={"filename": f"{_tag}.safetensors", "url": HF.format(tag=_tag), "source": f"timm/{_tag}"},
        description=f"timm {_arch} (ImageNet weights from a local file)",
    )(_timm_builder(_arch))


@register_model("monai_densenet121", family="monai", head=("class_layers",), description="MONAI DenseNet121 (2D)")
def _monai_densenet121(num_classes: int = 2, in_chans: int = 1, spatial_dims: int = 2, **kw: Any):
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=spatial_dims, in_channels=in_chans, out_channels=num_classes, **kw)


@register_model("monai_resnet18", family="monai", head=("fc",), description="MONAI ResNet18 (2D)")
def _monai_resnet18(num_classes: int = 2, in_chans: int = 1, spatial_dims: int = 2, **kw: Any):
    from monai.networks.nets import resnet18

    return resnet18(spatial_dims=spatial_dims, n_input_channels=in_chans, num_classes=num_classes, **kw)


# braindecode: every EEG model speaks n_chans, n_outputs, n_times, sfreq.
BRAINDECODE = {
    "deep4": ("Deep4Net", {"final_conv_length": "auto"}),
    "shallow": ("ShallowFBCSPNet", {"final_conv_length": "auto"}),
    "tcn": ("BDTCN", {}),
    "eegnet": ("EEGNet", {}),
}


def _bd_builder(cls_name: str, defaults: dict[str, Any]):
    def build(n_chans: int = 21, n_outputs: int = 2, n_times: int = 6000, sfreq: float = 100.0, **kw: Any):
        mod = importlib.import_module("braindecode.models")
        cls = getattr(mod, cls_name)
        args = {**defaults, **kw}
        return cls(n_chans=n_chans, n_outputs=n_outputs, n_times=n_times, sfreq=sfreq, **args)

    return build


for _name, (_cls, _defaults) in BRAINDECODE.items():
    register_model(_name, family="braindecode", head=("final_layer",), description=f"braindecode {_cls}")(
        _bd_builder(_cls, _defaults)
    )

for _mod in ("medtransfer.shared.models.mil", "medtransfer.shared.models.sam2_builder"):
    try:
        importlib.import_module(_mod)
    except ModuleNotFoundError as _e:  # module not written yet / optional dependency absent
        if _e.name != _mod:
            raise
