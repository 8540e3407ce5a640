"""Configuration: a YAML recipe per app task plus ``--set key=value`` overrides, validated.

A recipe is a nested mapping.  The *schema* is the app's default recipe: every key a user may
set must exist there, so a typo gets an error naming the unknown key and the keys allowed at
that level.  Values are parsed as YAML (``--set train.lr=1e-4``, ``--set data.channels=[A1,A2]``)
and checked against the default's type.  Torch-free.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from medtransfer.shared.utils.errors import ConfigError


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping.

    Raises:
        ConfigError: missing file or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def save_yaml(cfg: Mapping[str, Any], path: str | Path) -> Path:
    """Write a config as YAML (keys in insertion order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(_plain(cfg), sort_keys=False), encoding="utf-8")
    return path


def as_saved(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` as :func:`save_yaml` writes it and :func:`load_yaml` reads it back (tuples -> lists, paths -> str)."""
    return yaml.safe_load(yaml.safe_dump(_plain(cfg), sort_keys=False)) or {}


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def _check_type(key: str, default: Any, value: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true/false, got {value!r}")
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-4" as a string
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value) if isinstance(default, float) else value
    if isinstance(default, str):
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return list(value)
    if isinstance(default, dict) and not isinstance(value, dict):
        raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
    return value


def merge(schema: Mapping[str, Any], override: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Merge ``override`` into a copy of ``schema``, refusing unknown keys.

    A mapping default that is empty (``{}``) accepts any keys (free-form section).

    Raises:
        ConfigError: naming the unknown key and the allowed ones.
    """
    out = copy.deepcopy(dict(schema))
    for k, v in override.items():
        key = f"{prefix}{k}"
        if k not in out:
            if schema:
                allowed = ", ".join(sorted(map(str, schema))) or "(none)"
                raise ConfigError(f"unknown config key '{key}' (allowed here: {allowed})")
        d = out.get(k)
        if isinstance(d, dict) and d and isinstance(v, Mapping):
            out[k] = merge(d, v, prefix=f"{key}.")
        elif isinstance(d, dict) and not d:
            out[k] = _check_type(key, d, v)
        else:
            out[k] = _check_type(key, d, v) if k in schema else v
    return out


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[x,y]"]`` into a nested mapping (values parsed as YAML).

    Raises:
        ConfigError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in pairs or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            val = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            val = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{p}' is set both as a value and as a section")
        node[parts[-1]] = val
    return out


#: Ranges of the shared training keys (``train.*``): checked in every resolved config.
#: Each entry: (kind, argument): ``gt`` / ``ge`` a number, ``in`` a set of names.
TRAIN_RULES: dict[str, tuple[str, Any]] = {
    "lr": ("gt", 0.0),
    "batch_size": ("int_ge", 1),
    "epochs": ("int_ge", 1),
    "weight_decay": ("ge", 0.0),
    "warmup_epochs": ("int_ge", 0),
    "patience": ("int_ge", 0),
    "grad_accum": ("int_ge", 1),
    "num_workers": ("int_ge", 0),
    "max_grad_norm": ("ge", 0.0),
    "llrd_decay": ("gt", 0.0),
    "unfreeze_every": ("int_ge", 1),
    # numpy seeds below 2**32; every rank of a distributed run seeds with seed + rank
    "seed": ("int_range", (0, 2**31 - 1)),
    "strategy": ("in", ("full", "linear_probe", "gradual_unfreeze", "llrd", "lora", "adapter")),
    "optimizer": ("in", ("adamw", "sgd")),
    "scheduler": ("in", ("cosine", "step", "none")),
    "step_size": ("int_ge", 1),
    "gamma": ("gt", 0.0),
    "mode": ("in", ("", "min", "max")),
    "device": ("in", ("auto", "cpu", "cuda", "mps")),
    "log": ("in", ("none", "tensorboard", "mlflow", "auto")),
}


def check_ranges(
    cfg: Mapping[str, Any], rules: Mapping[str, tuple[str, Any]] | None = None, section: str = "train"
) -> None:
    """Refuse out-of-range values of ``cfg[section]`` (lr > 0, batch_size >= 1, known names ...).

    Args:
        cfg: a resolved config.
        rules: key -> (kind, argument); default :data:`TRAIN_RULES`.
        section: the section the rules apply to.

    Raises:
        ConfigError: naming the key, the value and the allowed range.
    """
    node = cfg.get(section)
    if not isinstance(node, Mapping):
        return
    for key, (kind, arg) in (rules or TRAIN_RULES).items():
        if key not in node:
            continue
        v = node[key]
        name = f"{section}.{key}"
        if kind == "in":
            if v not in arg:
                raise ConfigError(
                    f"config key '{name}' must be one of {', '.join(repr(a) for a in arg if a != '')}, got {v!r}"
                )
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ConfigError(f"config key '{name}' must be a number, got {v!r}")
        if kind.startswith("int_"):  # counts and seeds: 1.5 epochs used to run 1 and record 1.5
            if v in (float("inf"), float("-inf")) or v != int(v):
                raise ConfigError(f"config key '{name}' must be a whole number, got {v!r}")
            kind = kind[4:]
        if kind == "range":
            lo, hi = arg
            if not lo <= v <= hi:
                raise ConfigError(f"config key '{name}' must be from {lo} to {hi}, got {v!r}")
            continue
        ops = {"gt": (">", v > arg), "ge": (">=", v >= arg), "lt": ("<", v < arg), "le": ("<=", v <= arg)}
        sign, ok = ops[kind]
        if not ok:
            raise ConfigError(f"config key '{name}' must be {sign} {arg}, got {v!r}")


def resolve_config(
    defaults: Mapping[str, Any],
    recipe: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Defaults <- recipe YAML <- ``--set`` overrides, each layer validated against the defaults.

    Args:
        defaults: the app task's default recipe (also the schema).
        recipe: optional YAML file.
        overrides: ``key=value`` strings or a nested mapping.

    Returns:
        The resolved config (a new dict).
    """
    cfg = copy.deepcopy(dict(defaults))
    if recipe:
        cfg = merge(cfg, load_yaml(recipe))
    if overrides:
        ov = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
        cfg = merge(cfg, ov)
    check_ranges(cfg)
    return cfg


def get(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """Read ``a.b.c`` from a nested mapping."""
    node: Any = cfg
    for p in dotted.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return default
        node = node[p]
    return node
