"""``medtransfer bench --app wsi``: patch-feature extraction, ours vs the plain ``read_region`` loop.

Two slides: the real CMU slide (``../shared/data/wsi``, skipped when absent) and a generated
20k x 20k pyramidal TIFF (JPEG tiles, 0.25 um/px, written into a temp dir with tifffile, so
tiles at 0.5 um/px come from pyramid level 1).  On each, the same tissue tiles, the same encoder
weights and the same encoder threads run through:

* ``plain``: one ``read_region`` per tile, then the torch model on that one tile (the loop users
  write);
* ``ours_torch``: :func:`~medtransfer.apps.wsi.slide.iter_tile_batches` (reader threads decode
  runs of adjacent tiles ahead of the encoder, bounded queue) + the batched channels-last
  :class:`~medtransfer.apps.wsi.features.Encoder` (what ``wsi extract`` runs);
* ``ours_onnx``: the same reader + the encoder exported to ONNX and run by ONNX Runtime
  (``wsi extract --encoder-onnx``); its one-off export time is reported apart.

On CUDA the plain loop and ``ours_torch`` also run on the GPU.  Each pipeline runs ``rounds``
times interleaved and the best round counts (the machine is shared); the load average is
recorded beside every number.  The per-slide fixed cost of ours (open + thumbnail tissue plan)
is reported apart from the tile throughput.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

CMU = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wsi" / "slides" / "CMU-1-Small-Region.svs"
#: what --devices accepts (a comma-separated list of these)
DEVICES = ("auto", "cpu", "cuda")


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def make_big_slide(path: str | Path, side: int = 20000, mpp: float = 0.25, tile: int = 256, seed: int = 0) -> Path:
    """A ``side`` x ``side`` pyramidal RGB TIFF with JPEG tiles, written tile by tile (flat memory).

    Tissue is a few smooth blobs (decided on a coarse grid) filled with textured H&E-like tiles
    from a small random pool; every level halves the previous one down to ~1.2k px.

    Args:
        path: output ``.tif``.
        side: level-0 width and height.
        mpp: level-0 microns per pixel (resolution tags).
        tile: TIFF tile side.
        seed: random seed.

    Returns:
        The file path.
    """
    import tifffile
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(12):
        noise = ndimage.gaussian_filter(rng.standard_normal((tile, tile)).astype(np.float32), 3)
        nuclei = ndimage.gaussian_filter(rng.standard_normal((tile, tile)).astype(np.float32), 1.5) > 0.35
        pink = np.stack([225 + 20 * noise, 140 + 30 * noise, 185 + 20 * noise], -1)
        pool.append(np.where(nuclei[..., None], np.float32([95, 60, 150]), pink).clip(0, 255).astype(np.uint8))
    white = np.full((tile, tile, 3), 242, np.uint8)
    g = 256  # coarse tissue grid
    yy, xx = np.mgrid[0:g, 0:g] / g
    blob = np.zeros((g, g))
    for _ in range(5):
        cx, cy, rx, ry = (
            rng.uniform(0.25, 0.75),
            rng.uniform(0.25, 0.75),
            rng.uniform(0.1, 0.22),
            rng.uniform(0.1, 0.22),
        )
        blob += np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))
    tissue = blob > 0.5

    def tiles(w: int, h: int) -> Any:
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                gy, gx = min(g - 1, int((ty + tile / 2) / h * g)), min(g - 1, int((tx + tile / 2) / w * g))
                yield pool[(ty // tile * 7 + tx // tile) % len(pool)] if tissue[gy, gx] else white

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = [side]
    while sizes[-1] // 2 >= 1000:
        sizes.append(sizes[-1] // 2)
    opts: dict[str, Any] = dict(tile=(tile, tile), photometric="rgb", compression="jpeg", dtype=np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, s in enumerate(sizes):
            res = dict(resolution=(1e4 / (mpp * 2**i), 1e4 / (mpp * 2**i)), resolutionunit="CENTIMETER")
            extra = dict(subifds=len(sizes) - 1) if i == 0 else dict(subfiletype=1)
            tif.write(tiles(s, s), shape=(s, s, 3), **opts, **res, **extra)
    return path


def _best(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Run each pipeline ``rounds`` times, interleaved; best patches/s of each."""
    best = {k: 0.0 for k in fns}
    for _ in range(max(1, rounds)):
        for k, fn in fns.items():
            best[k] = max(best[k], fn())
    return best


def _slide_bench(
    path: Path,
    model: Any,
    enc: Any,
    extra: dict[str, Any],
    batch_size: int,
    max_tiles: int,
    target_mpp: float,
    patch_size: int,
    read_workers: int,
    rounds: int,
    device: str,
) -> dict[str, Any]:
    import torch

    from medtransfer.apps.wsi.features import feature_agreement, prepare_slide
    from medtransfer.apps.wsi.slide import iter_tile_batches, read_tiles_plain

    t = time.perf_counter()
    prep = prepare_slide(path, target_mpp, patch_size)
    fixed = time.perf_counter() - t
    s, tiling = prep.slide, prep.tiling
    n_all = len(tiling.coords)
    tiling.coords = tiling.coords[:max_tiles]
    n = len(tiling.coords)
    dev = torch.device(device)

    def plain() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for tile in read_tiles_plain(s, tiling):
                model(torch.from_numpy(tile).permute(2, 0, 1).unsqueeze(0).float().to(dev)).cpu()
        return n / (time.perf_counter() - t)

    def ours(e: Any) -> Callable[[], float]:
        def run() -> float:
            t = time.perf_counter()
            out = np.zeros((n, e.feature_dim), np.float32)
            for idx, tiles in iter_tile_batches(s, tiling, batch_size=batch_size, workers=read_workers):
                out[idx] = e(tiles)
            return n / (time.perf_counter() - t)

        return run

    def read_plain() -> float:
        t = time.perf_counter()
        for _ in read_tiles_plain(s, tiling):
            pass
        return n / (time.perf_counter() - t)

    def read_ours() -> float:
        t = time.perf_counter()
        for _ in iter_tile_batches(s, tiling, batch_size=batch_size, workers=read_workers):
            pass
        return n / (time.perf_counter() - t)

    # parity of the three on these tiles (features, not speed)
    with torch.inference_mode():
        ref = np.concatenate(
            [
                model(torch.from_numpy(t).permute(2, 0, 1).unsqueeze(0).float().to(dev)).float().cpu().numpy()
                for t in read_tiles_plain(s, tiling)
            ]
        )
    got = np.concatenate([enc(t) for _, t in iter_tile_batches(s, tiling, batch_size=batch_size)])
    res: dict[str, Any] = {
        "slide": path.name,
        "level_dimensions": [list(d) for d in s.level_dimensions],
        "patch_level": tiling.patch_level,
        "read_size": tiling.read_size,
        "tissue_tiles": n_all,
        "tiles_measured": n,
        "ours_fixed_cost_s": round(fixed, 3),
        "max_abs_feature_diff_torch": float(np.max(np.abs(ref - got))) if device == "cpu" else None,
    }
    load0 = _load()
    rd = _best({"plain": read_plain, "ours": read_ours}, rounds)
    fns: dict[str, Callable[[], float]] = {"plain": plain, "ours_torch": ours(enc)}
    for k, e in extra.items():
        fns[k] = ours(e)
        feats = np.concatenate([e(t) for _, t in iter_tile_batches(s, tiling)])
        res[f"max_abs_feature_diff_{k.removeprefix('ours_')}"] = float(np.max(np.abs(ref - feats)))
        if "int8" in k:  # lossy: how far from the fp32 features, per tile
            res[f"agreement_{k.removeprefix('ours_')}"] = feature_agreement(ref, feats)
    best = _best(fns, rounds)
    res["read_only_tiles_per_s"] = {k: round(v, 1) for k, v in rd.items()} | {
        "ratio": round(rd["ours"] / rd["plain"], 2)
    }
    res["patches_per_s"] = {k: round(v, 2) for k, v in best.items()}
    res["ratio_vs_plain"] = {k: round(v / best["plain"], 2) for k, v in best.items() if k != "plain"}
    res["loadavg"] = [load0, _load()]
    prep.close()
    return res


def bench(
    slide: Optional[str] = None,
    encoder: str = "resnet18",
    batch_size: int = 32,
    max_tiles: int = 192,
    threads: int = 2,
    target_mpp: float = 0.5,
    patch_size: int = 224,
    read_workers: int = 2,
    big_side: int = 20000,
    rounds: int = 2,
    onnx: bool = True,
    int8: bool = False,
    devices: str = "auto",
    out: Optional[str] = None,
    **_: Any,
) -> dict[str, Any]:
    """Measure patches/s of the plain loop and of ours on the CMU slide and a generated big TIFF.

    Args:
        slide: bench only this slide (default: CMU when present + the generated ``big_side`` TIFF).
        encoder: registry encoder (random init: speed does not depend on the weights).
        batch_size: encoder batch of ours.
        max_tiles: tissue tiles measured per slide (the first ones of the grid, in reading order).
        threads: encoder threads for every pipeline (torch and ONNX Runtime alike).
        target_mpp: tile resolution.
        patch_size: tile size.
        read_workers: reader threads of ours.
        big_side: side of the generated slide (0 = skip it).
        rounds: interleaved repetitions (best counts).
        onnx: also bench the ONNX Runtime encoder.
        int8: also bench it statically int8-quantized (QDQ, calibrated as ``wsi extract`` does; features differ).
        devices: ``auto`` (CPU, plus CUDA when present), ``cpu``, ``cuda`` or ``cpu,cuda``.
        out: also write the JSON here (``MEDTRANSFER_WSI_BENCH_OUT`` when unset).

    Returns:
        JSON-serialisable numbers per slide (patches/s, ratios, parity, load average).
    """
    import warnings

    import torch

    from medtransfer.apps.wsi.features import Encoder, OnnxEncoder
    from medtransfer.apps.wsi.model import build_tile_encoder

    bad = [d for d in devices.split(",") if d.strip() not in DEVICES]
    if bad or not devices.strip():
        raise ValueError(f"devices '{devices}': expected one or more of {', '.join(DEVICES)}")
    if slide and not Path(slide).is_file():
        raise FileNotFoundError(f"{slide}: slide not found")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # read-only tiles
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    res: dict[str, Any] = {
        "encoder": encoder,
        "torch_threads": torch.get_num_threads(),
        "read_workers": read_workers,
        "batch_size": batch_size,
        "cpu_count": os.cpu_count(),
        "loadavg_start": _load(),
        "slides": [],
    }
    want = ["cpu", "cuda"] if devices == "auto" else [d.strip() for d in devices.split(",")]
    if "cuda" in want and not torch.cuda.is_available():  # said, not silently skipped
        res["cuda"] = "not measured: torch sees no CUDA device on this machine"
        print(f"wsi bench [cuda]: {res['cuda']}", file=sys.stderr)
    run_on = [d for d in dict.fromkeys(want) if d == "cpu" or torch.cuda.is_available()]
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        paths: list[Path] = []
        if slide:
            paths.append(Path(slide))
        elif run_on:  # (nothing to generate when no device will run)
            if CMU.is_file():
                paths.append(CMU.resolve())
            else:
                res["cmu"] = "skipped: ../shared/data/wsi/slides/CMU-1-Small-Region.svs absent"
            if big_side:
                t = time.perf_counter()
                paths.append(make_big_slide(tmp / f"generated_{big_side}.tif", side=big_side))
                res["generate_big_slide_s"] = round(time.perf_counter() - t, 1)
        for device in run_on:
            model, dim, _ = build_tile_encoder(encoder, None)
            model = model.eval().to(device)
            enc = Encoder(encoder, None, device, patch_size, threads=threads)
            enc.model.load_state_dict(model.state_dict())  # same weights in every pipeline
            extra: dict[str, Any] = {}
            if onnx and device == "cpu":
                from medtransfer.apps.wsi.features import export_encoder_onnx

                t = time.perf_counter()
                src = tmp / "encoder.onnx"
                torch.save(model.model.state_dict(), str(tmp / "w.pt"))  # the same weights, exported
                export_encoder_onnx(encoder, str(tmp / "w.pt"), patch_size, src)
                res["onnx_export_s"] = round(time.perf_counter() - t, 1)
                extra["ours_onnx"] = OnnxEncoder(src, "cpu", patch_size, threads)
                if int8:  # as wsi extract --quantize int8 over the bench's slides: static QDQ, calibrated and checked
                    from medtransfer.apps.wsi.features import folder_calibration_tiles, int8_encoder

                    cal = functools.partial(folder_calibration_tiles, list(paths), target_mpp, patch_size, None, 0.25)
                    q, res["int8_check"] = int8_encoder(src, tmp, cal, patch_size)
                    extra["ours_onnx_int8"] = OnnxEncoder(q, "cpu", patch_size, threads)
            for e in [enc, *extra.values()]:  # warm-up (first-call kernel selection)
                e(np.zeros((batch_size, patch_size, patch_size, 3), np.uint8))
            with torch.inference_mode():
                model(torch.zeros(1, 3, patch_size, patch_size, device=device))
            for p in paths:
                r = _slide_bench(
                    p,
                    model,
                    enc,
                    extra,
                    batch_size,
                    max_tiles,
                    target_mpp,
                    patch_size,
                    read_workers,
                    rounds,
                    device,
                )
                r["device"] = device if device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})"
                res["slides"].append(r)
                ratios = ", ".join(f"{k} {v}x" for k, v in r["ratio_vs_plain"].items())
                pps = ", ".join(f"{k} {v}" for k, v in r["patches_per_s"].items())
                print(
                    f"wsi bench [{device}] {r['slide']}: patches/s {pps}; {ratios}; load {r['loadavg'][1]}",
                    file=sys.stderr,
                )
    res["loadavg_end"] = _load()
    out = out or os.environ.get("MEDTRANSFER_WSI_BENCH_OUT")
    if out:
        Path(out).write_text(json.dumps(res, indent=2))
    return res


def _main(argv: list[str]) -> None:
    """``python -m medtransfer.apps.wsi.bench [--out F] [--slide S] [--devices D] ...``: the slide bench
    (``medtransfer bench --app wsi`` runs the same with its defaults)."""
    import argparse

    from medtransfer.shared.utils.cliargs import at_least, choice_list

    ap = argparse.ArgumentParser(prog="python -m medtransfer.apps.wsi.bench", description=_main.__doc__)
    ap.add_argument("--out", default="wsi_bench.json", help="JSON file to write (default: wsi_bench.json)")
    ap.add_argument("--slide", default=None, help="bench only this slide (default: CMU + a generated TIFF)")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--batch-size", type=at_least(1), default=32)
    ap.add_argument("--max-tiles", type=at_least(1), default=192)
    ap.add_argument("--threads", type=at_least(1), default=2)
    ap.add_argument("--read-workers", type=at_least(1), default=2)
    ap.add_argument("--big-side", type=at_least(0), default=20000, help="side of the generated slide (0 = skip it)")
    ap.add_argument("--rounds", type=at_least(1), default=2)
    ap.add_argument("--int8", action="store_true", help="also the static int8 ONNX encoder")
    ap.add_argument("--devices", default="auto", type=choice_list(DEVICES), help="auto, cpu, cuda or cpu,cuda")
    a = ap.parse_args(argv)
    if a.slide and not Path(a.slide).is_file():
        ap.error(f"argument --slide: {a.slide}: slide not found")
    # every flag's dest is the name of a bench() parameter
    res = bench(**vars(a))
    print(json.dumps(res, indent=2))
    if res.get("slides") == []:  # e.g. --devices cuda where there is none: nothing was measured
        raise SystemExit(f"wsi bench: nothing measured ({res.get('cuda') or 'no slide'})")


if __name__ == "__main__":  # pragma: no cover
    _main(sys.argv[1:])
