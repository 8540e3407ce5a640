"""Transfer strategies: which parameters train, at which learning rate.

- ``full``: everything trains at ``lr``.
- ``linear_probe``: only the head trains.
- ``gradual_unfreeze``: head first; one more backbone stage (from the top) every
  ``unfreeze_every`` epochs (call :func:`unfreeze_for_epoch` each epoch).
- ``llrd``: layer-wise LR decay: stage k from the top gets ``lr * llrd_decay**k``.
- ``lora`` / ``adapter``: PEFT modules (and the head) train, the rest is frozen.

A *stage* is a top-level child module of the model (in definition order), the head excluded;
models with a single container child are looked into once (``model.backbone.*``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medtransfer.shared.config import TRAIN_RULES

STRATEGIES: tuple[str, ...] = tuple(TRAIN_RULES["strategy"][1])  # one list: config checks and setup agree


def head_names(model: nn.Module, head: list[str] | None = None) -> list[str]:
    """Module-name prefixes of the task head (argument, else ``model.transfer_head``)."""
    names = list(head if head is not None else getattr(model, "transfer_head", []) or [])
    return [n for n in names if n]


def _is_head(name: str, heads: list[str]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in heads)


def stages(model: nn.Module, head: list[str] | None = None) -> list[list[str]]:
    """Backbone stages bottom-to-top, each a list of parameter names."""
    heads = head_names(model, head)
    children = [(n, m) for n, m in model.named_children()]
    if len(children) == 1 and not heads:
        prefix, only = children[0]
        children = [(f"{prefix}.{n}", m) for n, m in only.named_children()]
    out: list[list[str]] = []
    named = dict(model.named_parameters())
    for cname, _ in children:
        ps = [n for n in named if (n == cname or n.startswith(cname + ".")) and not _is_head(n, heads)]
        if ps:
            out.append(ps)
    covered = {p for s in out for p in s}
    rest = [n for n in named if n not in covered and not _is_head(n, heads)]
    if rest:  # top-level parameters (e.g. cls tokens)
        out.insert(0, rest)
    return out


def setup_strategy(model: nn.Module, train_cfg: dict[str, Any], head: list[str] | None = None) -> None:
    """Set ``requires_grad`` for the chosen strategy (and insert LoRA / adapters when asked).

    Args:
        model: the model (changed in place).
        train_cfg: the ``train`` config section.
        head: head prefixes (default: ``model.transfer_head``).

    Raises:
        ValueError: unknown strategy, or a strategy needing a head on a model without one.
    """
    strategy = train_cfg.get("strategy", "full")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{strategy}' (choose from {', '.join(STRATEGIES)})")
    heads = head_names(model, head)
    named = dict(model.named_parameters())
    if strategy in ("linear_probe", "gradual_unfreeze") and not heads:
        raise ValueError(f"strategy '{strategy}' needs the model's head module names (model.transfer_head)")
    if strategy in ("full", "llrd"):
        for p in model.parameters():
            p.requires_grad_(True)
    elif strategy in ("linear_probe", "gradual_unfreeze"):
        for n, p in named.items():
            p.requires_grad_(_is_head(n, heads))
    elif strategy in ("lora", "adapter"):
        from medtransfer.shared import peft

        pcfg = dict(train_cfg.get("peft") or {})
        if not any(isinstance(m, peft.PEFTModule) for m in model.modules()):
            if strategy == "lora":
                peft.apply_lora(
                    model,
                    targets=pcfg.get("targets") or ["*qkv", "*proj", "*fc", "*classifier"],
                    r=int(pcfg.get("r", 8)),
                    alpha=float(pcfg.get("alpha", 16)),
                )
            else:
                targets = pcfg.get("targets")
                if not targets:
                    raise ValueError("strategy 'adapter' needs train.peft.targets (module-name globs)")
                dim = int(pcfg.get("dim", 0))
                red = int(pcfg.get("reduction", 4))

                def make(name: str, block: nn.Module) -> nn.Module:
                    d = dim or _out_dim(block)
                    return peft.BottleneckAdapter(d, reduction=red, channels_first=bool(pcfg.get("channels_first")))

                peft.insert_adapters(model, targets, make)
        peft.mark_peft_trainable(model, also=heads + list(pcfg.get("also_train") or []))


def _out_dim(block: nn.Module) -> int:
    last = [m for m in block.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm2d, nn.LayerNorm))]
    if not last:
        raise ValueError("cannot infer adapter dim: set train.peft.dim")
    m = last[-1]
    return int(
        getattr(m, "out_features", 0)
        or getattr(m, "out_channels", 0)
        or getattr(m, "num_features", 0)
        or m.normalized_shape[0]  # type: ignore[index]
    )


def unfreeze_for_epoch(model: nn.Module, epoch: int, train_cfg: dict[str, Any], head: list[str] | None = None) -> int:
    """For ``gradual_unfreeze``: unfreeze the top ``epoch // unfreeze_every`` stages.

    Returns:
        Number of backbone stages now trainable.
    """
    if train_cfg.get("strategy") != "gradual_unfreeze":
        return -1
    every = max(1, int(train_cfg.get("unfreeze_every", 1)))
    st = stages(model, head)
    k = min(len(st), epoch // every)
    named = dict(model.named_parameters())
    for i, names in enumerate(reversed(st)):
        for n in names:
            named[n].requires_grad_(i < k)
    return k


def param_groups(model: nn.Module, train_cfg: dict[str, Any], head: list[str] | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups (every parameter that may ever train, with its LR).

    Frozen parameters of ``gradual_unfreeze`` are included (they get no gradient until unfrozen).
    No weight decay on biases and norm weights.
    """
    lr = float(train_cfg.get("lr", 1e-3))
    wd = float(train_cfg.get("weight_decay", 0.0))
    strategy = train_cfg.get("strategy", "full")
    heads = head_names(model, head)
    named = dict(model.named_parameters())
    scale: dict[str, float] = {}
    if strategy == "llrd":
        decay = float(train_cfg.get("llrd_decay", 0.75))
        st = stages(model, head)
        for k, names in enumerate(reversed(st), start=1):
            for n in names:
                scale[n] = decay**k
    peft_mult = float((train_cfg.get("peft") or {}).get("lr_mult", 1.0))
    include_frozen = strategy == "gradual_unfreeze"
    groups: dict[tuple[float, bool], list] = {}
    for n, p in named.items():
        if not p.requires_grad and not include_frozen:
            continue
        s = scale.get(n, 1.0)
        if strategy in ("lora", "adapter") and not _is_head(n, heads) and ("lora_" in n or "adapter" in n):
            s *= peft_mult
        no_decay = p.ndim <= 1
        groups.setdefault((s, no_decay), []).append(p)
    return [
        {"params": ps, "lr": lr * s, "weight_decay": 0.0 if nd else wd, "lr_scale": s}
        for (s, nd), ps in sorted(groups.items(), key=lambda kv: -kv[0][0])
    ]
