"""The paper's autoencoder ablations with our protocol (docs/paper.md §8.3, §8.4): the VAE with and
without 3D-aware cross-attention, and the resolution r'' of the queried volume. Each reports the
paper's render losses L_rgb, L_mask, L_depth of the reconstruction on the protocol's cameras
(protocol.py), IoU / Chamfer / F, and the seconds per training step on this machine.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch
import trimesh
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..config import SampleSpec, TrainConfig
from ..data.render import intrinsics, render_views
from ..data.sampling import sample_surface
from ..data.surface import ColoredMesh
from ..data.toyshapes import make_toy_object, toy_example
from ..inference.vae import load_vae
from ..mesh import MeshingError, extract_mesh, query_points
from ..models.autoencoder import TriplaneVAE
from ..stages.vae import vae_step
from ..training.loop import TrainingStep
from . import metrics
from .protocol import Protocol, eval_cameras
from .test_set import POINTS


def train_seconds_per_step(cfg, batch_size: int = 8, n_points: int = 2048, n_occ: int = 4096, steps: int = 3,
                           seed: int = 0) -> float:
    """Wall seconds of one VAE training step on toy objects, this machine: the step ``fit`` runs
    (``stages.vae.vae_step`` and ``TrainingStep``: backward, clipping, AdamW, schedule; the median
    of ``steps`` after a warm-up)."""
    torch.manual_seed(seed)
    train = TrainingStep(Accelerator(cpu=True), TriplaneVAE(cfg).train(), TrainConfig(), ema=False)
    step_fn = vae_step(cfg)
    spec = SampleSpec(n_points=n_points, n_uniform=n_occ // 2, n_near=n_occ - n_occ // 2, views=0)
    ex = [toy_example(make_toy_object(seed, i), spec, np.random.default_rng(i)) for i in range(batch_size)]
    batch = {k: torch.from_numpy(np.stack([e[k] for e in ex]).astype(np.float32))
             for k in ("points", "colors", "occ_points", "occ_labels")}
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        t = time.perf_counter()
        loss, _ = step_fn(train.model, batch)
        train(loss)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


@torch.no_grad()
def reconstruction_errors(vae, objects: list, p: Protocol, progress: bool = True, desc: str = "reconstruct") -> dict:
    """The paper's AE metrics (8.3) on our renders: L_rgb (MSE of rgb on white), L_mask (MSE of the
    coverage mask), L_depth (mean |depth error| where both are covered) between the ground truth
    and the reconstruction's mesh, from the protocol's cameras; plus IoU / Chamfer / F."""
    cams, K = eval_cameras(p), intrinsics(p.view_res, p.fov_deg)
    device = next(vae.parameters()).device
    rows = []
    for o in tqdm(objects, desc=desc, unit="obj", disable=not progress):
        cmesh = o.obj.colored_mesh()
        gt_rgba, gt_depth = render_views(cmesh, cams, K, p.view_res)
        pts, cols, _ = sample_surface(cmesh, 2048, np.random.default_rng([o.index, 9]), keep=o.obj.exposed)
        mu, _ = vae.encode(torch.from_numpy(pts.astype(np.float32))[None].to(device),
                           torch.from_numpy(cols.astype(np.float32))[None].to(device))
        planes = vae.decode(mu)
        logits, _ = query_points(vae, planes, o.queries)
        row = {"index": o.index, "category": o.category, "iou": metrics.iou(logits > 0, o.inside)}
        try:
            mesh = extract_mesh(vae, planes, res=p.mesh_res)
        except MeshingError as e:
            rows.append({**row, "error": str(e)})
            continue
        rgba, depth = render_views(ColoredMesh.from_vertex_colors(mesh), cams, K, p.view_res)
        a, b = gt_rgba.astype(np.float32) / 255, rgba.astype(np.float32) / 255
        on_white = [x[..., :3] * x[..., 3:] + (1 - x[..., 3:]) for x in (a, b)]
        both = (gt_depth > 0) & (depth > 0)
        s, _ = trimesh.sample.sample_surface(mesh, POINTS["paper"].surface, seed=np.random.default_rng(o.index))
        surf = metrics.surface_metrics(s, o.gt_points)
        rows.append({**row, "l_rgb": float(np.mean((on_white[0] - on_white[1]) ** 2)),
                     "l_mask": float(np.mean((a[..., 3] - b[..., 3]) ** 2)),
                     "l_depth": float(np.abs(gt_depth - depth)[both].mean()) if both.any() else None,
                     "chamfer_l1": surf["chamfer_l1"], "f_score": surf["f_score"]})
    keys = ("l_rgb", "l_mask", "l_depth", "iou", "chamfer_l1", "f_score")
    return {k: float(np.mean([r[k] for r in rows if r.get(k) is not None])) for k in keys} | {
        "n_failed": sum("error" in r for r in rows)}


def ablate_attention(with_dir, without_dir, objects, p, progress=True) -> dict:
    out = {}
    for name, d in (("with", with_dir), ("without", without_dir)):
        vae, cfg = load_vae(d)
        t = cfg["train"]
        out[name] = {"checkpoint": str(d), "attn": vae.cfg.attn,
                     **reconstruction_errors(vae, objects, p, progress, desc=f"AE {name} attention"),
                     "s_per_step": train_seconds_per_step(vae.cfg, t["batch_size"], t["n_points"], t["n_occ"]),
                     "n_params": sum(q.numel() for q in vae.parameters())}
    return out


def ablate_attn_res(base_dir, resolutions, vae_dirs, objects, p, progress=True) -> dict:
    """s / step at each r'' for the architecture of ``base_dir``; reconstruction of any given checkpoint."""
    base, cfg = load_vae(base_dir)
    t = cfg["train"]
    valid = [r for r in range(base.cfg.latent_res, base.cfg.volume_res + 1, base.cfg.latent_res)
             if base.cfg.volume_res % r == 0]  # r'' is a multiple of r' and divides r
    resolutions = resolutions or valid
    bad = [r for r in resolutions if r not in valid]
    if bad:
        raise ValueError(f"`attn_res` {bad}: r'' must be a multiple of the latent res {base.cfg.latent_res} "
                         f"that divides the volume res {base.cfg.volume_res} (valid: {valid})")
    rows = {}
    for r in resolutions:
        mcfg = type(base.cfg)(**{**asdict(base.cfg), "attn_res": int(r)})
        rows[int(r)] = {"s_per_step": train_seconds_per_step(mcfg, t["batch_size"], t["n_points"], t["n_occ"])}
    for d in vae_dirs or []:
        vae, _ = load_vae(d)
        r = int(vae.cfg.attn_res)
        rows.setdefault(r, {})["checkpoint"] = str(d)
        rows[r].update(reconstruction_errors(vae, objects, p, progress, desc=f"AE r''={r}"))
    return {"volume_res": base.cfg.volume_res, "latent_res": base.cfg.latent_res, "rows": rows}
