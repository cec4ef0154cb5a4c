"""Evaluate a triplane VAE on held-out toy objects (test_set.py: the splits).

    compress3d-lite evaluate ae --ckpt data_samples/checkpoints/vae_course --split test --json eval.json

Per object (all in the [-1, 1] data frame; metric definitions in metrics.py):

    input         train.n_points coloured surface samples of the visible surface (as in training)
    latent        the posterior mean mu; the triplane decoded from it
    IoU           occupancy of the field (logit > 0) vs the exact ``ToyObject.contains`` at
                  100,000 points uniform in [-1, 1]^3 (the Occupancy Networks protocol)
    Chamfer-L1,   30,000 points sampled on the marching-cubes mesh (grid res^3, default 128) vs
    F-score@0.02  30,000 points on the ground-truth visible surface (part faces hidden inside
                  other parts are excluded)
    colour PSNR   the colour head at those 30,000 ground-truth surface points vs their true colours
                  (the counts: test_set.POINTS["vae"])

Our targets for the shipped course checkpoint: IoU >= 0.90, Chamfer-L1 <= 0.02, PSNR >= 22 dB.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from tqdm.auto import tqdm

from ..data.sampling import sample_surface
from ..inference.vae import DEFAULT_VAE, load_vae
from ..mesh import MeshingError, extract_mesh, query_points
from ..samples import shipped_checkpoint
from . import metrics
from .report import check_targets, clean, target_line
from .test_set import POINTS, SPLITS, held_out

TARGETS = {"iou": (">=", 0.90), "chamfer_l1": ("<=", 0.02), "psnr": (">=", 22.0)}
METRICS = ("iou", "chamfer_l1", "f_score", "psnr")


@torch.inference_mode()
def evaluate_object(model, obj, n_points: int, res: int, rng: np.random.Generator) -> dict:
    """All metrics of one ToyObject, plus timings; deterministic given ``rng``."""
    counts = POINTS["vae"]  # occupancy queries (.iou), surface samples each side (.surface)
    cmesh = obj.colored_mesh()
    points, colors, _ = sample_surface(cmesh, n_points, rng, keep=obj.exposed)  # the VAE's input
    gt_points, gt_colors, _ = sample_surface(cmesh, counts.surface, rng, keep=obj.exposed)
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    pts = torch.from_numpy(points.astype(np.float32))[None].to(device)  # (1, N, 3)
    cols = torch.from_numpy(colors.astype(np.float32))[None].to(device)
    mu, _ = model.encode(pts, cols)  # (1, 3, c', r', r')
    planes = model.decode(mu)  # (1, 3, C, r, r)
    row = {}
    try:
        mesh = extract_mesh(model, planes, res=res)
        row["recon_seconds"] = time.perf_counter() - t0
        pred_points, _ = trimesh.sample.sample_surface(mesh, counts.surface, seed=rng)
        row.update(metrics.surface_metrics(pred_points, gt_points), n_faces=len(mesh.faces))
    except MeshingError as e:  # no surface at all: the worst possible geometry
        row.update(recon_seconds=time.perf_counter() - t0, chamfer_l1=None, f_score=0.0, precision=0.0,
                   recall=0.0, n_faces=0, error=str(e))
    queries = rng.uniform(-1.0, 1.0, size=(counts.iou, 3))
    logits, _ = query_points(model, planes, queries)
    row["iou"] = metrics.iou(logits > 0, obj.contains(queries))
    _, rgb = query_points(model, planes, gt_points)
    row["psnr"] = metrics.psnr(rgb, gt_colors)
    return row


def _stats(rows: list, key: str, fn) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return float(fn(values)) if values else None


def summarize(rows: list) -> dict:
    """Per-category means and overall mean / median of every metric."""
    cats = {}
    for r in rows:
        cats.setdefault(r["category"], []).append(r)
    return {
        "categories": {c: {"n": len(rs), **{m: _stats(rs, m, np.mean) for m in METRICS}} for c, rs in cats.items()},
        "mean": {m: _stats(rows, m, np.mean) for m in METRICS},
        "median": {m: _stats(rows, m, np.median) for m in METRICS},
    }


def evaluate_vae(ckpt=None, split: str = "test", n: int = 56, res: int = 128, preset: str | None = None,
                 progress: bool = True) -> dict:
    """Evaluate the VAE checkpoint ``ckpt`` (default: the shipped course VAE) on objects 0..n-1 of
    ``split``: the report dict."""
    if res < 8:
        raise ValueError("`res` must be >= 8")
    items = held_out(split, n, "vae")
    t_start = time.perf_counter()
    ckpt = ckpt or shipped_checkpoint(DEFAULT_VAE)
    model, cfg = load_vae(ckpt, preset=preset)
    n_points = int(cfg.get("train", {}).get("n_points", 2048))
    seed = SPLITS[split]
    rows = []
    for item in tqdm(items, desc=f"evaluate {split}", unit="obj", disable=not progress):
        t = time.perf_counter()
        row = {"index": item.index, "category": item.category}
        row.update(evaluate_object(model, item.obj, n_points, res, item.rng))
        row["seconds"] = time.perf_counter() - t
        rows.append(row)
    summary = summarize(rows)
    m = cfg["model"]
    n_iou, n_surface = POINTS["vae"].iou, POINTS["vae"].surface
    report = {
        "checkpoint": str(Path(ckpt).resolve()),
        "config": {"preset": cfg.get("preset"), "step": cfg.get("step"), "attn": m.get("attn"),
                   "attn_res": m.get("attn_res"), "volume_res": m.get("volume_res"),
                   "latent": [3, m.get("latent_channels"), m.get("latent_res"), m.get("latent_res")],
                   "n_params": sum(p.numel() for p in model.parameters()), "n_points": n_points,
                   "train_data": cfg.get("data", {}).get("generator"), "train_seed": cfg.get("data", {}).get("seed")},
        "split": split, "seed": seed, "n_objects": n, "res": res,
        "protocol": {
            "frame": "[-1, 1]^3 data frame",
            "iou": f"{n_iou} uniform points, field logit > 0 vs exact occupancy",
            "chamfer_l1": f"{n_surface} mesh points vs {n_surface} GT visible-surface points, "
                          "mean Euclidean NN distance each way, averaged",
            "f_score": "threshold 0.02 (d < 0.02)",
            "psnr": f"colour head at {n_surface} GT surface points, rgb in [0, 1]",
            "latent": "posterior mean",
        },
        **summary,
        "targets": check_targets(summary["mean"], TARGETS),
        "n_failed_meshes": sum(1 for r in rows if "error" in r),
        "timing": {"total_seconds": time.perf_counter() - t_start,
                   "mean_seconds_per_object": float(np.mean([r["seconds"] for r in rows])),
                   "mean_recon_seconds": float(np.mean([r["recon_seconds"] for r in rows]))},
        "objects": rows,
    }
    return clean(report)


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_table(report: dict) -> str:
    """A small text table: one row per category, then mean and median, then the targets."""
    head = f"{'category':<10} {'n':>3} {'IoU':>7} {'CD-L1':>8} {'F@0.02':>7} {'PSNR':>6}"
    lines = [head, "-" * len(head)]

    def line(name, n, s):
        return (f"{name:<10} {n:>3} {_fmt(s['iou'], '.4f'):>7} {_fmt(s['chamfer_l1'], '.5f'):>8} "
                f"{_fmt(s['f_score'], '.4f'):>7} {_fmt(s['psnr'], '.2f'):>6}")

    for c, s in report["categories"].items():
        lines.append(line(c, s["n"], s))
    lines.append("-" * len(head))
    lines.append(line("mean", report["n_objects"], report["mean"]))
    lines.append(line("median", report["n_objects"], report["median"]))
    lines += [target_line(m, t) for m, t in report["targets"].items()]
    if report["n_failed_meshes"]:
        lines.append(f"{report['n_failed_meshes']} object(s) decoded to an empty or full field (no mesh)")
    return "\n".join(lines)
