"""Evaluate image -> 3D generation on held-out toy objects (test_set.py).

    compress3d-lite evaluate generate --split test --json gen.json

For object i of the split (test_set.py, categories cycling): one view is
rendered at a random orbit camera (64 px, the towers' training resolution, composited on white),
the pipeline generates a mesh from it, with the prior and without it (the paper's ablation, same
seed), and we measure, in the [-1, 1] data frame:

    IoU           occupancy of the generated field (logit > 0) vs the exact occupancy at 50,000
                  uniform points
    Chamfer-L1    10,000 points on the generated mesh vs 10,000 on the true visible surface
    category      the shape tower embeds the generated mesh (area-uniform surface samples with
                  colours interpolated from the vertex colours, ``embed.embed_mesh``);
                  its nearest true shape embedding among the n test objects has the input's
                  category (a retrieval classifier; chance 1/14)
    image sim.    the generated mesh rendered from the input camera, embedded by the pipeline's
                  image tower, cosine to the input's embedding (a CLIP-similarity analogue; the
                  report names the tower: offline it is the toy tower, not OpenAI/LAION CLIP)

Our targets: median IoU >= 0.6, category accuracy >= 0.85, with-prior better than without.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..data.dataset import CATEGORY_NAMES
from ..data.images import load_image
from ..data.render import render_trimesh
from ..mesh import MeshingError, query_points
from ..stages.embed import embed_images, embed_mesh, embed_points
from . import metrics
from .report import check_targets, clean, target_line
from .test_set import SPLITS, held_out, input_view, occupancy_queries, surface_points

N_IOU, N_SURFACE, VIEW_RES = 50_000, 10_000, 64
TARGETS = {"iou_median": (">=", 0.6), "category_acc": (">=", 0.85)}


@torch.no_grad()
def evaluate_generate(pipeline="course", split: str = "test", n: int = 56, res: int = 64, steps: int = 25,
                      guidance_image: float | None = None, guidance_shape: float | None = None, seed: int = 0,
                      device: str | None = None, progress: bool = True) -> dict:
    import trimesh
    from tqdm.auto import tqdm

    from ..pipeline import Compress3DPipeline

    if res < 8:
        raise ValueError("--res must be >= 8")
    items = held_out(split, n, "generate", min_n=2)
    t_start = time.perf_counter()
    pipe = Compress3DPipeline.from_pretrained(pipeline, device=device)
    pipe.set_progress_bar_config(disable=True)
    guidance_image, guidance_shape = pipe.guidance(guidance_image, guidance_shape)
    n_points = pipe.shape_points
    split_seed = SPLITS[split]
    gt_es = torch.cat([embed_points(pipe.shape_tower, *surface_points(item, n_points))  # the gallery
                       for item in items])
    cats = torch.tensor([CATEGORY_NAMES.index(item.category) for item in items])
    rows = []
    for item in tqdm(items, desc=f"generate {split}", unit="obj", disable=not progress):
        i, rng = item.index, item.rng
        rgba, cam = input_view(item, VIEW_RES)
        image = load_image(rgba)
        e_in = embed_images(pipe.tower, [image])
        gt_points, _ = surface_points(item, N_SURFACE)
        queries, inside = occupancy_queries(item, N_IOU)
        row = {"index": i, "category": item.category}
        for variant, use_prior in (("prior", True), ("no_prior", False)):
            r = {}
            out = pipe(image, num_inference_steps=steps, image_guidance_scale=guidance_image,
                       shape_guidance_scale=guidance_shape, seed=seed, use_prior=use_prior, mesh_resolution=res)
            try:
                mesh = out.mesh
            except MeshingError as e:
                row[variant] = {"error": str(e), "iou": 0.0, "chamfer_l1": None, "category_ok": False, "image_sim": None}
                continue
            planes = pipe.vae.decode(out.latents)
            logits, _ = query_points(pipe.vae, planes, queries)
            r["iou"] = metrics.iou(logits > 0, inside)
            pts, faces = trimesh.sample.sample_surface(mesh, N_SURFACE, seed=rng)
            r["chamfer_l1"] = metrics.surface_metrics(pts, gt_points)["chamfer_l1"]
            e_gen = embed_mesh(pipe.shape_tower, mesh, n_points, seed=i)
            r["category_ok"] = bool(cats[int((e_gen @ gt_es.T).argmax())] == cats[i])
            r["own_object"] = bool(int((e_gen @ gt_es.T).argmax()) == i)
            view = render_trimesh(mesh, cam, VIEW_RES)[0]
            r["image_sim"] = float(embed_images(pipe.tower, [load_image(view)]) @ e_in.T)
            r["seconds"] = out.timings["total"]
            row[variant] = r
        rows.append(row)

    def summary(variant):
        rs = [r[variant] for r in rows]
        ious = [r["iou"] for r in rs]
        cds = [r["chamfer_l1"] for r in rs if r.get("chamfer_l1") is not None]
        sims = [r["image_sim"] for r in rs if r.get("image_sim") is not None]
        return {"iou_median": float(np.median(ious)), "iou_mean": float(np.mean(ious)),
                "chamfer_l1_median": float(np.median(cds)) if cds else None,
                "category_acc": float(np.mean([r["category_ok"] for r in rs])),
                "own_object_acc": float(np.mean([r.get("own_object", False) for r in rs])),
                "image_sim_mean": float(np.mean(sims)) if sims else None,
                "seconds_mean": float(np.mean([r.get("seconds", 0.0) for r in rs])),
                "n_failed": sum(1 for r in rs if "error" in r)}

    with_prior, without = summary("prior"), summary("no_prior")
    targets = check_targets(with_prior, TARGETS)
    better = with_prior["iou_median"] > without["iou_median"] and with_prior["image_sim_mean"] >= without["image_sim_mean"]
    targets["prior_helps"] = {"target": "with prior > without (median IoU and image similarity)",
                              "value": [with_prior["iou_median"], without["iou_median"]], "pass": bool(better)}
    report = {
        "pipeline": str(pipeline), "split": split, "seed": split_seed, "n_objects": n,
        "settings": {"steps": steps, "guidance_image": guidance_image, "guidance_shape": guidance_shape,
                     "sampler": "ddim", "seed": seed, "mesh_res": res, "view_res": VIEW_RES},
        "image_tower": pipe.tower.identity(),
        "protocol": "one random orbit view per held-out toy object in; see evaluation/generate.py",
        "with_prior": with_prior, "without_prior": without, "targets": targets,
        "seconds": time.perf_counter() - t_start, "objects": rows,
    }
    return clean(report)


def format_generate(report: dict) -> str:
    head = f"{'':14s} {'IoU med':>8s} {'IoU mean':>9s} {'CD-L1 med':>10s} {'category':>9s} {'own obj':>8s} {'img sim':>8s} {'s/img':>6s}"
    lines = [f"{report['n_objects']} {report['split']} objects, image tower {report['image_tower']['name']}", head]
    for name, key in (("with prior", "with_prior"), ("without prior", "without_prior")):
        s = report[key]
        cd = "-" if s["chamfer_l1_median"] is None else f"{s['chamfer_l1_median']:.4f}"
        lines.append(f"{name:14s} {s['iou_median']:8.3f} {s['iou_mean']:9.3f} {cd:>10s} {s['category_acc']:9.3f} "
                     f"{s['own_object_acc']:8.3f} {s['image_sim_mean']:8.3f} {s['seconds_mean']:6.2f}")
    lines += [target_line(k, t) for k, t in report["targets"].items()]
    return "\n".join(lines)
