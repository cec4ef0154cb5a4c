"""Evaluate image -> 3D generation on held-out toy objects (test_set.py).

    compress3d-lite evaluate generate --split val --json gen.json     # choose settings on val
    compress3d-lite evaluate generate --split test --json gen.json    # report once, on test

For object i of the split (test_set.py, categories cycling): one view is rendered at a random
orbit camera (64 px, the towers' training resolution, composited on white), the pipeline
generates a mesh from it, with the prior and without it (the paper's ablation, same seed), and we
measure, in the [-1, 1] data frame:

    IoU           occupancy of the generated field (logit > 0) vs the exact occupancy at 50,000
                  uniform points in the cube (the counts: test_set.POINTS["generate"])
    IoU near      the same at 50,000 points near the true surface: visible-surface samples moved
                  by N(0, 0.05^2) per axis. Uniform points are mostly far from any surface, so
                  uniform IoU is forgiving of a missing pole or table leg; this one is not
    Chamfer-L1    10,000 points on the generated mesh vs 10,000 on the true visible surface
    category      the shape tower embeds the generated mesh (area-uniform surface samples with
                  colours interpolated from the vertex colours, ``embed.embed_mesh``);
                  its nearest true shape embedding among the n test objects has the input's
                  category (a retrieval classifier; chance 1/14)
    image sim.    the generated mesh rendered from the input camera, embedded by the pipeline's
                  image tower, cosine to the input's embedding (a CLIP-similarity analogue; the
                  report names the tower: offline it is the toy tower, not OpenAI/LAION CLIP)
    colour        the same render against the input view itself (before compositing): the mean
                  |rgb| error (in [0, 1]) over the pixels both cover, so the shape's outline does
                  not count, its colours do (shading is the same renderer's in both)
    colour parts  the generated colour field at the 10,000 true surface points against their true
                  colours, averaged per part and then over the parts, so a small part (a lamp's
                  base, a rocket's tip) counts as much as the body; also over all points, and the
                  worst part (its name in the per-object rows); ``colour_mesh_parts`` the same
                  with the colour of the mesh's nearest vertex: what meshing keeps of the field

and report medians per category as well as over all objects. Images go through the pipeline
``batch`` at a time, each with its own generator seeded ``seed``, so the numbers do not depend on
the batch size.

Our targets (docs/stages.md, "Stage 4"): median IoU >= 0.75, median IoU near the surface >= 0.6,
every category's median IoU >= 0.5, category accuracy >= 0.93, with the prior better than without.
Settings are chosen on the val split (``diagnose.py``); the test split is measured once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from ..data.dataset import CATEGORY_NAMES
from ..data.images import load_image
from ..data.render import render_trimesh
from ..inference.embed import embed_images, embed_mesh, embed_points
from ..mesh import MeshingError, extract_mesh, query_points
from ..pipeline import Compress3DPipeline
from . import metrics
from .report import check_targets, clean, target_line
from .test_set import (
    POINTS,
    SPLITS,
    HeldOut,
    held_out,
    input_view,
    occupancy_queries,
    render_input,
    surface_points,
    surface_samples,
)

log = logging.getLogger(__name__)

VIEW_RES = 64  # px of the input view (the towers' training resolution)
NEAR_SIGMA = 0.05  # std of the offset of the near-surface IoU points (data frame, objects span 1.8)
TARGETS = {"iou_median": (">=", 0.75), "iou_near_median": (">=", 0.6), "worst_category_iou": (">=", 0.5),
           "category_acc": (">=", 0.93)}


@dataclass
class Case:
    """One held-out object and everything a generated shape is measured against."""

    item: HeldOut
    image: object  # the input view (PIL image, composited on white)
    camera: np.ndarray  # (1, 4, 4) its cam2world
    rgba: np.ndarray  # (VIEW_RES, VIEW_RES, 4) uint8: the input view before compositing
    gt_points: np.ndarray  # (S, 3) on the true visible surface; S = POINTS["generate"].surface
    gt_colors: np.ndarray  # (S, 3) their true colours
    gt_parts: np.ndarray  # (S,) the part each lies on
    queries: np.ndarray  # (Q, 3) uniform in the cube; Q = POINTS["generate"].iou
    inside: np.ndarray  # (Q,) exact occupancy there
    near: np.ndarray  # (Q, 3) near the true surface
    near_inside: np.ndarray  # (Q,)
    vae_input: tuple  # (points, colours) on the visible surface: the VAE's input for the true latent


@dataclass
class Variant:
    """How one row of a table generates: the shipped settings unless a field says otherwise."""

    name: str
    shape: str = "prior"  # where e_s comes from: "prior", "true" (the shape tower on the true points), "none"
    steps: int | None = None  # None: the checkpoint's
    sampler: str | None = None
    guidance: tuple = (None, None)  # (image, shape); None: the checkpoint's
    interval: tuple | None = None  # noise levels t / T where guidance applies; None: the checkpoint's
    rescale: float | None = None  # guidance rescale phi; None: the checkpoint's
    strength: float = 1.0  # < 1: start from the true latent noised partway (diffusion.sample)
    start: str = "noise"  # "regression": the UNet starts from its StartEstimate (config.STARTS)
    view_res: int = VIEW_RES  # resolution the input view is rendered at (the tower resizes it)
    decode_true: bool = False  # skip generation: decode the VAE latent of the true object (the ceiling)
    note: str = ""


@dataclass
class Bench:
    """A pipeline, the held-out cases and the shape-embedding gallery of the category classifier."""

    pipe: object
    cases: list
    gallery: torch.Tensor  # (n, D) true shape embeddings
    categories: torch.Tensor  # (n,) category index
    split: str
    pipeline: str = "course"  # what was asked for (a name or folder), for the report
    extra_views: dict = field(default_factory=dict)  # view_res -> [(image, camera)] per case


def case_input(item, n_points: int) -> tuple:
    """(points, colors, RGBA view (H, W, 4) uint8, cam2world (1, 4, 4)) of one held-out item: the
    shape tower's points, then the input view, drawn from the item's generator in the order every
    report of this module draws them. Regenerating one object of a stored report starts here."""
    points, colors = surface_points(item, n_points)
    rgba, cam = input_view(item, VIEW_RES)
    return points, colors, rgba, cam


def make_bench(pipeline="course", split: str = "test", n: int = 56, device: str | None = None) -> Bench:
    """Load the pipeline and draw every case (the random draws depend on the split and object only)."""
    items = held_out(split, n, "generate", min_n=2)
    pipe = pipeline if not isinstance(pipeline, (str, dict)) and hasattr(pipeline, "unet") else \
        Compress3DPipeline.from_pretrained(pipeline, device=device)
    pipe.set_progress_bar_config(disable=True)
    inputs = [case_input(item, pipe.shape_points) for item in items]
    gallery = torch.cat([embed_points(pipe.shape_tower, points, colors) for points, colors, _, _ in inputs])
    cats = torch.tensor([CATEGORY_NAMES.index(item.category) for item in items])
    vae_points = int(pipe.vae_cfg.get("train", {}).get("n_points", 2048))
    n_iou, n_surface = POINTS["generate"].iou, POINTS["generate"].surface
    cases = []
    for item, (_, _, rgba, cam) in zip(items, inputs):
        gt_points, gt_colors, gt_parts = surface_samples(item, n_surface)
        queries, inside = occupancy_queries(item, n_iou)
        near = surface_points(item, n_iou)[0] + item.rng.normal(0.0, NEAR_SIGMA, size=(n_iou, 3))
        near = np.clip(near, -1.0, 1.0)
        cases.append(Case(item, load_image(rgba), cam, rgba, gt_points, gt_colors, gt_parts, queries, inside, near, item.obj.contains(near),
                          surface_points(item, vae_points)))
    return Bench(pipe, cases, gallery, cats, split, str(pipeline) if isinstance(pipeline, (str, dict)) else "given")


def _view(bench: Bench, k: int, res: int):
    """Case k's input image at ``res`` px, from the same camera (rendered once and kept)."""
    if res == VIEW_RES:
        return bench.cases[k].image
    if res not in bench.extra_views:
        bench.extra_views[res] = [load_image(render_input(c.item, c.camera, res)) for c in bench.cases]
    return bench.extra_views[res][k]


@torch.no_grad()
def true_latents(bench: Bench, idx: list) -> torch.Tensor:
    """Normalised VAE latents (B, 3, c', r', r') of the true objects (posterior means)."""
    pipe = bench.pipe
    pts = torch.as_tensor(np.stack([bench.cases[k].vae_input[0] for k in idx]), dtype=torch.float32)
    cols = torch.as_tensor(np.stack([bench.cases[k].vae_input[1] for k in idx]), dtype=torch.float32)
    mu, _ = pipe.vae.encode(pts.to(pipe.device), cols.to(pipe.device))
    return (mu - pipe.latent_mean) / pipe.latent_std


@torch.no_grad()
def generate_case_latents(bench: Bench, v: Variant, seed: int = 0, batch: int = 8) -> tuple:
    """(normalised latents (n, 3, c', r', r'), seconds per image) of every case under variant ``v``."""
    pipe = bench.pipe
    out, t0 = [], time.perf_counter()
    for k in range(0, len(bench.cases), batch):
        idx = list(range(k, min(k + batch, len(bench.cases))))
        if v.decode_true:
            out.append(true_latents(bench, idx))
            continue
        gens = [torch.Generator().manual_seed(seed) for _ in idx]  # as if one by one
        e_i = pipe.embed_images([_view(bench, j, v.view_res) for j in idx])
        e_s = {"prior": lambda: pipe.sample_shape_embeds(e_i, gens), "none": lambda: None,
               "true": lambda: bench.gallery[idx].to(pipe.device)}[v.shape]()
        x_start = true_latents(bench, idx) if v.strength < 1.0 else None
        out.append(pipe.sample_latents(e_i, e_s, v.steps, *v.guidance, gens, use_prior=v.shape != "none",
                                       progress=False, sampler=v.sampler, x_start=x_start, strength=v.strength,
                                       guidance_interval=v.interval, guidance_rescale=v.rescale, start=v.start))
    return torch.cat(out), (time.perf_counter() - t0) / len(bench.cases)


@torch.no_grad()
def measure_case(bench: Bench, k: int, z: torch.Tensor, res: int = 64) -> dict:
    """Every metric of case k for one normalised latent z (1, 3, c', r', r')."""
    pipe, case = bench.pipe, bench.cases[k]
    i = case.item.index
    planes = pipe.vae.decode(z * pipe.latent_std + pipe.latent_mean)
    logits, _ = query_points(pipe.vae, planes, case.queries)
    near_logits, _ = query_points(pipe.vae, planes, case.near)
    _, surface_rgb = query_points(pipe.vae, planes, case.gt_points)
    r = {"iou": metrics.iou(logits > 0, case.inside), "iou_near": metrics.iou(near_logits > 0, case.near_inside),
         **metrics.colour_error(surface_rgb, case.gt_colors, case.gt_parts)}  # the colour field on the true surface
    r["worst_part"] = case.item.obj.part_names[r["worst_part"]]
    try:
        mesh = extract_mesh(pipe.vae, planes, res=res)
    except MeshingError as e:
        return {**r, "error": str(e), "chamfer_l1": None, "category_ok": False, "own_object": False,
                "image_sim": None, "colour_view_err": None}
    pts, _ = trimesh.sample.sample_surface(mesh, POINTS["generate"].surface, seed=i)
    r["chamfer_l1"] = metrics.surface_metrics(pts, case.gt_points)["chamfer_l1"]
    e_gen = embed_mesh(pipe.shape_tower, mesh, pipe.shape_points, seed=i)
    best = int((e_gen @ bench.gallery.T.to(e_gen.device)).argmax())
    r["category_ok"] = bool(bench.categories[best] == bench.categories[k])
    r["own_object"] = best == k
    vertex_rgb = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
    nearest = cKDTree(np.asarray(mesh.vertices)).query(case.gt_points)[1]  # the mesh's colour there
    r["colour_mesh_parts"] = metrics.colour_error(vertex_rgb[nearest], case.gt_colors, case.gt_parts)["colour_err_parts"]
    view = render_trimesh(mesh, case.camera, VIEW_RES)[0]
    r["colour_view_err"] = metrics.masked_colour_error(view, case.rgba)  # what the user sees, from the input camera
    e_in = embed_images(pipe.tower, [case.image])
    r["image_sim"] = float(embed_images(pipe.tower, [load_image(view)]) @ e_in.T)
    return r


def summarize(bench: Bench, rows: list) -> dict:
    """Medians, means and accuracies over the cases, and the median IoU of each category."""
    ious = [r["iou"] for r in rows]
    cds = [r["chamfer_l1"] for r in rows if r.get("chamfer_l1") is not None]
    sims = [r["image_sim"] for r in rows if r.get("image_sim") is not None]
    views = [r["colour_view_err"] for r in rows if r.get("colour_view_err") is not None]
    meshes = [r["colour_mesh_parts"] for r in rows if r.get("colour_mesh_parts") is not None]
    per_cat = {}
    for case, r in zip(bench.cases, rows):
        per_cat.setdefault(case.item.category, []).append(r["iou"])
    per_cat = {c: float(np.median(v)) for c, v in sorted(per_cat.items())}
    return {"iou_median": float(np.median(ious)), "iou_mean": float(np.mean(ious)),
            "iou_near_median": float(np.median([r["iou_near"] for r in rows])),
            "chamfer_l1_median": float(np.median(cds)) if cds else None,
            "category_acc": float(np.mean([r["category_ok"] for r in rows])),
            "own_object_acc": float(np.mean([r.get("own_object", False) for r in rows])),
            "image_sim_mean": float(np.mean(sims)) if sims else None,
            "colour_err_median": float(np.median([r["colour_err"] for r in rows])),
            "colour_parts_median": float(np.median([r["colour_err_parts"] for r in rows])),
            "colour_worst_part_median": float(np.median([r["colour_err_worst_part"] for r in rows])),
            "colour_view_median": float(np.median(views)) if views else None,
            "colour_mesh_parts_median": float(np.median(meshes)) if meshes else None,
            "category_iou_median": per_cat, "worst_category_iou": min(per_cat.values()),
            "worst_category": min(per_cat, key=per_cat.get), "n_failed": sum(1 for r in rows if "error" in r)}


def measure_latents(bench: Bench, z: torch.Tensor, res: int = 64) -> tuple:
    """(summary, per-case rows) of one normalised latent per case, z (n, 3, c', r', r')."""
    rows = [measure_case(bench, k, z[k:k + 1], res) for k in range(len(bench.cases))]
    return summarize(bench, rows), rows


def summary_line(label: str, name: str, s: dict) -> str:
    """One progress line of a table row: median IoU, near-surface IoU, category accuracy, worst category."""
    return (f"  {label} {name:24s} IoU {s['iou_median']:.3f}  near {s['iou_near_median']:.3f}  "
            f"category {s['category_acc']:.3f}  worst {s['worst_category']} {s['worst_category_iou']:.2f}")


def run_variant(bench: Bench, v: Variant, seed: int = 0, res: int = 64, batch: int = 8) -> tuple:
    """(summary, per-case rows) of one variant."""
    z, seconds = generate_case_latents(bench, v, seed, batch)
    summary, rows = measure_latents(bench, z, res)
    return {**summary, "seconds_per_image": seconds}, rows


def settings_of(bench: Bench, v: Variant) -> dict:
    """The sampler, steps and guidance a variant actually used."""
    gi, gs = bench.pipe.guidance(*v.guidance)
    d = bench.pipe.default_guidance
    return {"sampler": v.sampler or bench.pipe.sampler, "steps": v.steps or bench.pipe.steps,
            "guidance_image": gi, "guidance_shape": gs,
            "guidance_interval": list(v.interval or d["interval"]),
            "guidance_rescale": d["rescale"] if v.rescale is None else v.rescale, "start": v.start}


def evaluate_generate(pipeline="course", split: str = "test", n: int = 56, res: int = 64, steps: int | None = None,
                      guidance_image: float | None = None, guidance_shape: float | None = None, seed: int = 0,
                      device: str | None = None, progress: bool = True, sampler: str | None = None,
                      batch: int = 8, start: str = "noise") -> dict:
    """The main evaluation: with the prior and without it, every metric, per object and per category.
    ``start``: where the UNet starts with the prior ("noise" or "regression", which needs the prior's
    shape embedding: the row without the prior always starts from noise)."""
    if res < 8:
        raise ValueError("`res` must be >= 8")
    t_start = time.perf_counter()
    bench = make_bench(pipeline, split, n, device)
    common = {"steps": steps, "sampler": sampler, "guidance": (guidance_image, guidance_shape)}
    bench.pipe.check_settings(steps, sampler=sampler, start=start)
    variants = [Variant("with_prior", "prior", start=start, **common), Variant("without_prior", "none", **common)]
    summaries, objects = {}, [{"index": c.item.index, "category": c.item.category} for c in bench.cases]
    for v in variants:
        if progress:
            log.info("  %s ...", v.name)
        summaries[v.name], rows = run_variant(bench, v, seed, res, batch)
        for o, r in zip(objects, rows):
            o[v.name] = r
    with_prior, without = summaries["with_prior"], summaries["without_prior"]
    targets = check_targets(with_prior, TARGETS)
    better = with_prior["iou_median"] > without["iou_median"] and with_prior["image_sim_mean"] >= without["image_sim_mean"]
    targets["prior_helps"] = {"target": "with prior > without (median IoU and image similarity)",
                              "value": [with_prior["iou_median"], without["iou_median"]], "pass": bool(better)}
    report = {
        "pipeline": str(pipeline), "split": split, "seed": SPLITS[split], "n_objects": n,
        "settings": {**settings_of(bench, variants[0]), "seed": seed, "mesh_res": res, "view_res": VIEW_RES,
                     "near_sigma": NEAR_SIGMA},
        "image_tower": bench.pipe.tower.identity(),
        "protocol": "one random orbit view per held-out toy object in; see evaluation/generate.py",
        "with_prior": with_prior, "without_prior": without, "targets": targets,
        "seconds": time.perf_counter() - t_start, "objects": objects,
    }
    return clean(report)


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def format_summaries(named: list, categories: bool = True) -> str:
    """A table with one row per (name, summary) and, with ``categories``, the per-category medians."""
    w = max([24] + [len(name) for name, _ in named])
    head = (f"{'':{w}s} {'IoU med':>7s} {'near':>6s} {'worst cat':>15s} {'CD-L1':>7s} {'categ.':>6s} "
            f"{'own':>5s} {'img sim':>7s} {'colour':>6s} {'parts':>6s} {'s/img':>6s}")
    lines = [head]
    for name, s in named:
        cd = "-" if s["chamfer_l1_median"] is None else f"{s['chamfer_l1_median']:.4f}"
        worst = f"{s['worst_category']} {s['worst_category_iou']:.2f}"
        lines.append(f"{name:{w}s} {s['iou_median']:7.3f} {s['iou_near_median']:6.3f} {worst:>15s} {cd:>7s} "
                     f"{s['category_acc']:6.3f} {s['own_object_acc']:5.3f} {s['image_sim_mean']:7.3f} "
                     f"{_num(s.get('colour_view_median')):>6s} {_num(s.get('colour_parts_median')):>6s} "
                     f"{s.get('seconds_per_image', 0.0):6.2f}")
    lines.append("colour: median masked colour error between the renders of the generated and the true object from "
                 "the input camera; parts: median over objects of the colour field's error on the true surface, "
                 "averaged over the parts (mean |rgb| in [0, 1]; lower is better)")
    if categories and named:
        cats = list(named[0][1]["category_iou_median"])
        lines.append("median IoU per category:")
        lines.append(f"{'':{w}s} " + " ".join(f"{c[:7]:>7s}" for c in cats))
        for name, s in named:
            lines.append(f"{name:{w}s} " + " ".join(f"{s['category_iou_median'][c]:7.2f}" for c in cats))
    return "\n".join(lines)


def format_generate(report: dict) -> str:
    s = report["settings"]
    lines = [f"{report['n_objects']} {report['split']} objects, image tower {report['image_tower']['name']}, "
             f"{s['sampler']} {s['steps']} steps, guidance {s['guidance_image']:g} / {s['guidance_shape']:g}",
             format_summaries([("with prior", report["with_prior"]), ("without prior", report["without_prior"])])]
    lines += [target_line(k, t) for k, t in report["targets"].items()]
    return "\n".join(lines)
