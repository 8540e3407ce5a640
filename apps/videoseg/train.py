"""Adapter fine-tuning of SAM2 on video clips, through the shared ``fit`` engine.

Each item is a clip of ``clip_len`` frames sampled from one video so that it starts on a
labelled frame (the prompt frame: a box, optionally jittered, or the mask itself) and contains
other labelled frames (EchoNet: ED -> ES; TrackRAD: consecutive frames).  The encoder is frozen;
the DD-Adapters (or LoRA / MLP adapters) and the mask decoder train with Dice + BCE (MONAI) on
every labelled frame of the clip; AdamW with ``train.peft.lr_mult`` on adapter parameters; the
best checkpoint is kept by validation Dice (prompt frame excluded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtransfer.apps.videoseg.data import VideoCase, load_manifest_cases
from medtransfer.apps.videoseg.io import open_video
from medtransfer.apps.videoseg.model import MODEL_DEFAULTS, build_model, clip_forward
from medtransfer.apps.videoseg.propagate import mask_to_box, preprocess
from medtransfer.shared.config import resolve_config
from medtransfer.shared.export.guard import baseline_record
from medtransfer.shared.finetune import TRAIN_DEFAULTS, fit
from medtransfer.shared.rundir import RunDir, model_spec
from medtransfer.shared.utils.errors import ConfigError, InputError
from medtransfer.shared.utils.seed import seed_everything

APP, TASK = "videoseg", "track"
DATA_DEFAULTS: dict[str, Any] = {
    "clip_len": 4,
    "max_span": 32,  # furthest labelled frame a clip may reach from its prompt frame
    "prompt": "box",  # box | mask
    "box_jitter": 0.05,  # fraction of the box size (training only)
    "clips_per_video": 1,  # training clips drawn per case per epoch
    "sampling": "spread",  # spread (prompt frame -> a later labelled frame) | consecutive (DD-SAM2)
    "intensity": "fixed",  # fixed (x/255) | minmax_video (DD-SAM2: per-video min-max, then ImageNet)
}
LOSSES = ("dice_bce", "squared_dice_bce")
SAMPLINGS = ("spread", "consecutive")
INTENSITIES = ("fixed", "minmax_video")
DEFAULTS: dict[str, Any] = {
    "model": dict(MODEL_DEFAULTS),
    "data": dict(DATA_DEFAULTS),
    "train": {
        **TRAIN_DEFAULTS,
        "epochs": 3,
        "batch_size": 1,
        "lr": 1e-4,
        "weight_decay": 1e-4,
        "strategy": "adapter",
        "peft": {"lr_mult": 10.0},
        "patience": 0,
        "monitor": "val_dice",
        "mode": "max",
        "loss": "dice_bce",  # dice_bce | squared_dice_bce (DD-SAM2: MONAI DiceLoss squared_pred + BCE)
    },
}
HEAD = ["sam_mask_decoder", "sam_prompt_encoder", "obj_ptr_proj"]
MEMORY = ["memory_attention", "memory_encoder", "maskmem_tpos_enc", "obj_ptr_tpos_proj"]


RECIPES = Path(__file__).resolve().parent / "recipes"


def recipe_path(name: str) -> Path:
    """The packaged recipe ``name`` (``dd_sam2_echonet`` / ``dd_sam2_trackrad``), ``.yaml`` optional."""
    p = RECIPES / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not p.is_file():
        raise ConfigError(
            f"{p}: no such videoseg recipe (have: {', '.join(sorted(q.stem for q in RECIPES.glob('*.yaml')))})"
        )
    return p


def make_config(recipe: str | Path | None = None, overrides: Any = None) -> dict[str, Any]:
    """The resolved training config (defaults <- recipe <- overrides).

    Raises:
        ConfigError: an unknown ``data.sampling`` / ``data.intensity`` / ``train.loss``.
    """
    cfg = resolve_config(DEFAULTS, recipe, overrides)
    for key, allowed in (
        (("data", "sampling"), SAMPLINGS),
        (("data", "intensity"), INTENSITIES),
        (("train", "loss"), LOSSES),
    ):
        if cfg[key[0]][key[1]] not in allowed:
            raise ConfigError(f"{'.'.join(key)}={cfg[key[0]][key[1]]!r}: expected one of {', '.join(allowed)}")
    if int(cfg["data"]["clip_len"]) < 1 or int(cfg["data"]["clips_per_video"]) < 1:
        raise ConfigError("data.clip_len and data.clips_per_video must be >= 1")
    return cfg


def clip_indices(
    case: VideoCase, clip_len: int, max_span: int, rng: np.random.Generator | None, sampling: str = "spread"
) -> list[int]:
    """Frame indices of one clip: starts on a labelled (non-empty) frame, the prompt frame.

    Args:
        case: the video and its labelled frames.
        clip_len: frames per clip.
        max_span: furthest labelled frame from the start (``spread``).
        rng: random generator (training) or None (validation: the first usable labelled frame
            and the furthest labelled frame within ``max_span``).
        sampling: ``spread`` (ours: ``clip_len`` frames spread from the prompt frame to a later
            labelled frame) or ``consecutive`` (DD-SAM2: ``clip_len`` consecutive frames from a
            random labelled start that leaves room for the whole clip).

    Returns:
        Sorted frame indices (at most ``clip_len``; fewer only when the video is shorter).
    """
    lab = [k for k in case.labelled if case.masks[k].any()]
    if not lab:
        raise InputError(case.video, "no non-empty mask to prompt from")
    if sampling == "consecutive":
        fits = [s for s in lab if s + clip_len <= case.n_frames] or lab[:1]
        s = int(rng.choice(fits)) if rng is not None else fits[0]
        return list(range(s, min(s + clip_len, case.n_frames)))
    starts = [s for s in lab if any(s < e <= s + max_span for e in lab)] or lab[:1]
    s = int(rng.choice(starts)) if rng is not None else starts[0]
    ends = [e for e in lab if s < e <= s + max_span]
    e = (int(rng.choice(ends)) if rng is not None else max(ends)) if ends else min(s + clip_len - 1, case.n_frames - 1)
    idx = sorted(set(int(round(v)) for v in np.linspace(s, e, clip_len)))
    nxt = idx[-1] + 1
    while len(idx) < clip_len and nxt < case.n_frames:
        idx.append(nxt)
        nxt += 1
    return idx


def minmax_scale(frames: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """DD-SAM2's per-video min-max scaling, onto 0..255 float32 (``preprocess`` then divides by 255
    and applies the ImageNet mean / std, as the authors do after their 0..1 scaling).

    Args:
        frames: (T, H, W) frames of one video.
        lo, hi: the whole video's minimum and maximum (a constant video maps to 0).
    """
    f = frames.astype(np.float32)
    return ((f - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(f)).astype(np.float32)


class ClipDataset(torch.utils.data.Dataset):
    """Clips of videos for training / validation.

    Args:
        cases: the videos.
        cfg: resolved config (``model.image_size``, ``data.*``).
        train: random clips and box jitter (else deterministic).
        seed: base seed.
    """

    def __init__(self, cases: list[VideoCase], cfg: dict[str, Any], train: bool, seed: int = 0) -> None:
        self.cases = cases
        self.size = int(cfg["model"]["image_size"])
        self.d = cfg["data"]
        self.train = train
        self.seed = seed
        self.epoch_calls = 0
        self._ranges: dict[str, tuple[float, float]] = {}

    def video_range(self, case: VideoCase) -> tuple[float, float]:
        """(min, max) intensity over every frame of ``case``'s video (read once, cached)."""
        if case.case_id not in self._ranges:
            lo, hi = np.inf, -np.inf
            for f in open_video(case.video).frames(0, case.n_frames):
                lo, hi = min(lo, float(f.min())), max(hi, float(f.max()))
            self._ranges[case.case_id] = (lo, hi)
        return self._ranges[case.case_id]

    def __len__(self) -> int:
        return len(self.cases) * (int(self.d["clips_per_video"]) if self.train else 1)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        case = self.cases[i % len(self.cases)]
        rng = None
        if self.train:
            self.epoch_calls += 1
            rng = np.random.default_rng([self.seed, i, self.epoch_calls])
        # validation keeps the deterministic spread clip (prompt -> furthest labelled frame) under either
        # sampling, so that val_dice always scores a later labelled frame (EchoNet: ES from ED)
        sampling = str(self.d["sampling"]) if self.train else "spread"
        idx = clip_indices(case, int(self.d["clip_len"]), int(self.d["max_span"]), rng, sampling)
        import cv2

        frames = open_video(case.video).read(idx)
        S, (H, W) = self.size, frames.shape[1:]
        if self.d["intensity"] == "minmax_video":
            frames = minmax_scale(frames, *self.video_range(case))
        x = np.concatenate([preprocess(f, S) for f in frames])
        masks = np.zeros((len(idx), S, S), np.float32)
        valid = np.zeros((len(idx),), np.float32)
        for j, k in enumerate(idx):
            if k in case.masks:
                masks[j] = cv2.resize(case.masks[k], (S, S), interpolation=cv2.INTER_NEAREST)
                valid[j] = 1.0
        box = mask_to_box(case.masks[idx[0]]).astype(np.float32)
        if rng is not None and float(self.d["box_jitter"]) > 0:
            bw, bh = box[2] - box[0], box[3] - box[1]
            box = box + rng.normal(0, float(self.d["box_jitter"]), 4).astype(np.float32) * np.array(
                [bw, bh, bw, bh], np.float32
            )
            box = np.clip(box, 0, [W, H, W, H]).astype(np.float32)
        box = box * np.array([S / W, S / H, S / W, S / H], np.float32)
        return {
            "frames": torch.from_numpy(x),
            "box": torch.from_numpy(box),
            "prompt_mask": torch.from_numpy(masks[0]),
            "masks": torch.from_numpy(masks),
            "valid": torch.from_numpy(valid),
        }


def make_forward(prompt: str = "box"):
    """``forward_fn(model, batch) -> ({"logits" (B,T,S,S), "scores" (B,T)}, {"masks", "valid"})``."""

    def forward(
        model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        sam = model.module if hasattr(model, "module") else model
        outs, scores = [], []
        for b in range(batch["frames"].shape[0]):
            if prompt == "mask":
                lg, sc = clip_forward(sam, batch["frames"][b], mask=batch["prompt_mask"][b])
            else:
                lg, sc = clip_forward(sam, batch["frames"][b], box=batch["box"][b])
            outs.append(lg[:, 0])
            scores.append(sc[:, 0])
        return {"logits": torch.stack(outs), "scores": torch.stack(scores)}, {
            "masks": batch["masks"],
            "valid": batch["valid"],
        }

    return forward


def make_loss(prompt: str = "box", kind: str = "dice_bce"):
    """Dice + BCE (MONAI ``DiceCELoss`` with sigmoid) over the labelled frames of each clip, plus
    BCE on SAM2's object score (object present = mask not empty), as SAM2's own training does:
    a frame scored "no object" outputs a constant mask that passes no gradient.

    ``kind="squared_dice_bce"`` squares the predictions in the Dice denominator (DD-SAM2's
    ``DiceLoss(sigmoid=True, squared_pred=True)`` + ``BCEWithLogitsLoss``).
    With a mask prompt the prompt frame is excluded (its output is the prompt itself).
    """
    from monai.losses import DiceCELoss

    fn = DiceCELoss(sigmoid=True, squared_pred=kind == "squared_dice_bce", reduction="mean")

    def loss(out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor]) -> torch.Tensor:
        valid = tgt["valid"].clone()
        if prompt == "mask":
            valid[:, 0] = 0
        sel = valid > 0
        logits, scores = out["logits"], out["scores"]
        if not bool(sel.any()):
            return logits.sum() * 0.0
        present = (tgt["masks"][sel].flatten(1).amax(1) > 0).float()
        obj = torch.nn.functional.binary_cross_entropy_with_logits(scores[sel], present)
        # SAM2 writes -1024 where it sees no object; clamp so BCE stays finite and readable
        return fn(logits[sel][:, None].clamp(-32, 32), tgt["masks"][sel][:, None]) + obj

    return loss


def dice_metric(out: dict[str, np.ndarray], tgt: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean Dice over labelled frames, prompt frame (index 0 of each clip) excluded."""
    pred = out["logits"] > 0
    gt = tgt["masks"] > 0.5
    valid = tgt["valid"].copy()
    valid[:, 0] = 0
    ds = []
    for b, t in zip(*np.nonzero(valid)):
        p, g = pred[b, t], gt[b, t]
        s = p.sum() + g.sum()
        ds.append(1.0 if s == 0 else 2.0 * (p & g).sum() / s)
    return {"dice": float(np.mean(ds)) if ds else float("nan")}


def head_modules(cfg: dict[str, Any]) -> list[str]:
    """The SAM2 modules that train beside the adapters (``model.train_decoder`` / ``train_memory`` /
    ``train_prompt_encoder``), as the ``head`` of the shared strategies."""
    head = HEAD + (MEMORY if cfg["model"]["train_memory"] else [])
    if not cfg["model"]["train_decoder"]:
        head = [h for h in head if h not in HEAD]
    if not cfg["model"].get("train_prompt_encoder", True):
        head = [h for h in head if h not in ("sam_prompt_encoder", "obj_ptr_proj")]
    return head


def train(manifest: str | Path, run_dir: str | Path, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune on a videoseg manifest; writes the shared run-dir layout.

    Args:
        manifest: ``path,label,split`` CSV (videos and masks).
        run_dir: output run directory.
        cfg: resolved config (default :data:`DEFAULTS`).

    Returns:
        ``{"run_dir", "best_path", "best_metrics", "params"}``.
    """
    cfg = cfg or make_config()
    cases = load_manifest_cases(manifest)
    tr = [c for c in cases if c.split == "train"]
    va = [c for c in cases if c.split == "val"]
    if not tr:
        raise InputError(manifest, "no rows with split=train")
    if not va:
        raise InputError(manifest, "no rows with split=val (validation never uses the test split)")
    seed = int(cfg["train"]["seed"])
    seed_everything(seed)  # the adapters' initial weights are the run's seed's
    model, params = build_model(cfg["model"])
    head = head_modules(cfg)
    prompt = str(cfg["data"]["prompt"])
    res = fit(
        model,
        ClipDataset(tr, cfg, True, seed),
        ClipDataset(va, cfg, False, seed),
        cfg=cfg,
        run_dir=run_dir,
        app=APP,
        task=TASK,
        loss_fn=make_loss(prompt, str(cfg["train"]["loss"])),
        metric_fn=dice_metric,
        forward_fn=make_forward(prompt),
        head=head,
        monitor="val_dice",
        mode="max",
        extra_state={"params": params},
        data_files=[manifest],
        # weights come from the run checkpoint: the rebuilt model starts from no SAM2 file
        model_spec=model_spec(
            builder="medtransfer.apps.videoseg.model:build_model", mcfg={**cfg["model"], "checkpoint": ""}
        ),
    )
    # the trivial baseline beside the model, on the same validation clips and frames: copy the prompt mask
    base = baseline_record(
        "dice",
        float(res.best_metrics.get("val_dice", float("nan"))),
        copy_first_dice(ClipDataset(va, cfg, False, seed)),
        "copy first mask",
        higher_is_better=True,
        split="val",
    )
    RunDir(run_dir).update_info(
        params=params, manifest=str(Path(manifest).resolve()), n_train=len(tr), n_val=len(va), baseline=base
    )
    return {
        "run_dir": str(run_dir),
        "best_path": str(res.best_path),
        "best_metrics": res.best_metrics,
        "params": params,
        "baseline": base,
    }


def copy_first_dice(ds: ClipDataset) -> float:
    """:func:`dice_metric` of copying each clip's prompt-frame mask to its other labelled frames.

    Args:
        ds: the validation clips (deterministic), the ones ``val_dice`` is measured on.

    Returns:
        Mean Dice over the labelled frames after the prompt frame (NaN when there are none).
    """
    masks, valid = [], []
    for i in range(len(ds)):
        it = ds[i]
        masks.append(it["masks"].numpy())
        valid.append(it["valid"].numpy())
    if not masks:
        return float("nan")
    T = max(m.shape[0] for m in masks)
    S = masks[0].shape[-1]
    gt = np.zeros((len(masks), T, S, S), np.float32)
    va = np.zeros((len(masks), T), np.float32)
    for b, (m, v) in enumerate(zip(masks, valid)):
        gt[b, : len(m)], va[b, : len(v)] = m, v
    copy = np.repeat(gt[:, :1], T, axis=1) * 2.0 - 1.0  # logits > 0 where the prompt mask is
    return dice_metric({"logits": copy}, {"masks": gt, "valid": va})["dice"]


def load_run_model(run_dir: str | Path, which: str = "best") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a run and load its checkpoint.  Returns ``(model, cfg)``."""
    model, st = RunDir(run_dir).load_model(which)  # rebuilt from the model spec the checkpoint records
    return model, st["config"]
