"""The paper's evaluation protocol and its ablations, in the paper's table format (docs/paper.md §8).

    compress3d-lite evaluate paper --out outputs/paper_eval                      # main table + no-prior
    compress3d-lite evaluate paper --ablations all --out outputs/paper_eval      # every ablation

The protocol (the paper does not state one: docs/paper.md §8.1 "NOT FOUND"; ours, written down;
protocol.py holds it, its cameras and its test set):

    test set      n held-out toy objects, ``make_toy_object(SPLITS[split], i)``, i < n (categories
                  cycle: n = 56 is 4 of each of the 14)
    input         one view per object at a random orbit camera (seeded by the object), input_res
                  px, composited on white -- what the pipeline sees
    generation    the checkpoint's sampler at ``steps`` steps with the pipeline's guidance, seed 0,
                  marching cubes at mesh_res^3
    rendered      ``views`` fixed cameras (azimuth 45 + k 360/views degrees, elevation 20 degrees,
    views         radius 4.6, fov 40) at view_res px, shaded vertex colours on white; the same
                  cameras render the ground-truth object (the reference set)
    FID           generated renders vs ground-truth renders (all objects x views in each set);
                  features: Inception-v3 pool3 when its weights are here, else a named open_clip
                  tower (the table says which; the scales are not comparable). Beside it the
                  "real vs real" floor: ground-truth renders of as many *other* objects (the val
                  split) vs the reference set -- FID of small sets is far from 0 even for real data
    CLIP sim.     cosine of the image tower's embeddings of each generated render and the ground-
                  truth render from the same camera, averaged (and, reported too, against the
                  input image)
    IoU / CD / F  the generated field's occupancy vs the exact one at 50,000 uniform points;
                  Chamfer-L1 and F-score@0.02 between 10,000 points on each surface (metrics.py;
                  the counts: test_set.POINTS["paper"])

Ablations (``--ablations``, comma separated, or ``all``):
    prior       without the diffusion prior (image embedding only; paper 8.5)
    guidance    the guidance-scale grid ``--guidance-grid 1,2,5x1,2`` (image x shape; paper 8.6)
    attention   the VAE with vs without 3D-aware cross-attention: the paper's render losses
                L_rgb, L_mask, L_depth of the reconstruction and seconds per training step (8.3)
    attn_res    resolution of the queried volume r'': seconds per training step at each r'' and,
                for VAE checkpoints given with ``--attn-res-vaes``, their reconstruction (8.4)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from tqdm.auto import tqdm

from ..config import PAPER_GUIDANCE
from ..data.render import render_trimesh
from ..mesh import MeshingError, query_points
from ..pipeline import Compress3DPipeline, pipeline_parts
from ..samples import shipped_checkpoint
from . import metrics
from .image_metrics import clip_similarity, fid, fid_features, to_rgb_tensor
from .paper_ablations import ablate_attention, ablate_attn_res
from .protocol import Protocol, eval_cameras, paper_test_set
from .report import clean
from .test_set import POINTS, SPLITS

# docs/paper.md §8.2-8.6
PAPER_MAIN = {
    "Shap-E": {"fid": 146.14, "clip": 0.731, "latent": "1.05M", "seconds": 11, "data": ">=1M", "gpu_hours": "-"},
    "OpenLRM": {"fid": 94.47, "clip": 0.756, "latent": "0.98M", "seconds": 5, "data": "0.951M", "gpu_hours": "9,200"},
    "Compress3D": {"fid": 53.21, "clip": 0.776, "latent": "0.10M", "seconds": 7, "data": "0.095M",
                   "gpu_hours": "1,900"},
}
PAPER_NO_PRIOR = {"fid": 66.46, "clip": 0.745}
PAPER_ATTENTION = {"without": {"l_rgb": 3.798e-3, "l_mask": 6.953e-3, "l_depth": 2.637e-2, "s_per_step": 0.789},
                   "with": {"l_rgb": 2.485e-3, "l_mask": 5.059e-3, "l_depth": 2.095e-2, "s_per_step": 0.824}}
PAPER_ATTN_RES = {128: 2.295, 64: 0.961, 32: 0.824}  # s / step; quality "about the same", 32 chosen
ABLATIONS = ("prior", "guidance", "attention", "attn_res")


@dataclass
class Scorer:
    """What every generated set is measured with: the reference renders and the feature extractors."""

    tower: object  # the open_clip image tower for CLIP similarity (and FID when no Inception)
    feature: object
    feature_info: dict
    reference: torch.Tensor  # (n * views, 3, H, W) ground-truth renders
    inputs: torch.Tensor  # (n, 3, H, W) the input images
    floor: float | None = None  # FID of other real objects vs the reference

    def score(self, views: torch.Tensor, per_object: int) -> dict:
        sim_gt = clip_similarity(self.tower, views, self.reference)
        sim_in = clip_similarity(self.tower, views, self.inputs.repeat_interleave(per_object, 0))
        return {"fid": fid(self.reference, views, self.feature), "clip_sim": float(sim_gt.mean()),
                "clip_sim_input": float(sim_in.mean())}


def make_scorer(objects: list, p: Protocol, tower, features: str = "auto", floor: bool = True) -> Scorer:
    feature, info = fid_features(features, tower)
    reference = to_rgb_tensor(np.concatenate([o.gt_views for o in objects]))
    inputs = torch.stack([torch.from_numpy(np.asarray(o.image, np.float32) / 255).permute(2, 0, 1) for o in objects])
    inputs = torch.nn.functional.interpolate(inputs, size=reference.shape[-2:], mode="bilinear", antialias=True)
    s = Scorer(tower, feature, info, reference, inputs)
    if floor:
        others = paper_test_set(Protocol(**{**asdict(p), "split": "val"}))
        s.floor = fid(reference, to_rgb_tensor(np.concatenate([o.gt_views for o in others])), feature)
    return s


@torch.no_grad()
def generate_set(pipe, objects: list, p: Protocol, use_prior: bool = True, guidance_image=None,
                 guidance_shape=None, progress: bool = True, desc: str = "generate") -> tuple:
    """(renders (n * views, 3, H, W), per-object rows) of the pipeline's assets for ``objects``."""
    cams, renders, rows = eval_cameras(p), [], []
    for o in tqdm(objects, desc=desc, unit="obj", disable=not progress):
        row = {"index": o.index, "category": o.category}
        out = pipe(o.image, num_inference_steps=p.steps, image_guidance_scale=guidance_image,
                   shape_guidance_scale=guidance_shape, seed=p.seed, use_prior=use_prior, mesh_resolution=p.mesh_res)
        try:
            mesh = out.mesh
        except MeshingError as e:  # an empty or full field: white renders, zero scores
            renders.append(np.full((p.views, p.view_res, p.view_res, 4), 255, np.uint8))
            rows.append({**row, "error": str(e), "iou": 0.0, "chamfer_l1": None, "f_score": 0.0})
            continue
        renders.append(render_trimesh(mesh, cams, p.view_res, p.fov_deg))
        logits, _ = query_points(pipe.vae, pipe.vae.decode(out.latents), o.queries)
        pts, _ = trimesh.sample.sample_surface(mesh, POINTS["paper"].surface, seed=np.random.default_rng(o.index))
        surf = metrics.surface_metrics(pts, o.gt_points)
        rows.append({**row, "iou": metrics.iou(logits > 0, o.inside), "chamfer_l1": surf["chamfer_l1"],
                     "f_score": surf["f_score"], "seconds": out.timings["total"]})
    return to_rgb_tensor(np.concatenate(renders)), rows


def summarize_rows(rows: list) -> dict:
    def stat(key, fn):
        v = [r[key] for r in rows if r.get(key) is not None]
        return float(fn(v)) if v else None

    return {"iou_mean": stat("iou", np.mean), "iou_median": stat("iou", np.median),
            "chamfer_l1_median": stat("chamfer_l1", np.median), "f_score_mean": stat("f_score", np.mean),
            "seconds_per_shape": stat("seconds", np.mean), "n_failed": sum("error" in r for r in rows)}


def evaluate_variant(pipe, objects, scorer, p, progress=True, **kw) -> dict:
    views, rows = generate_set(pipe, objects, p, progress=progress, **kw)
    return {**scorer.score(views, p.views), **summarize_rows(rows), "objects": rows}


# ----------------------------------------------------------------------------------- the command


def _train_hours(parts: dict) -> float | None:
    """CPU/GPU hours of the pipeline's training runs from their train_log.jsonl (None if unknown)."""
    total = 0.0
    for d in parts.values():
        d = Path(d)
        log = d / "train_log.jsonl" if (d / "train_log.jsonl").exists() else d.parent / "train_log.jsonl"
        if not log.exists():
            return None
        total += json.loads(log.read_text().strip().splitlines()[-1])["seconds"]
    return total / 3600


def parse_grid(text: str) -> list:
    """"1,2,5x1,2" -> [(1, 1), (1, 2), (2, 1), ...] (image scales x shape scales)."""
    try:
        gi, gs = text.lower().split("x")
        return [(float(a), float(b)) for a in gi.split(",") for b in gs.split(",")]
    except ValueError:
        raise ValueError(f"`guidance_grid` {text!r}: expected IMAGE_SCALES x SHAPE_SCALES, e.g. 1,2,5x1,2") from None


def evaluate_paper(pipeline="course", protocol: Protocol | None = None, ablations=("prior",), features="auto",
                   guidance_grid="1,2,5x1,2", vae_with=None, vae_without=None, attn_res=None,
                   attn_res_vaes=None, device=None, progress: bool = True) -> dict:
    """Run the protocol (module docstring) and the chosen ablations; the report dict."""
    p = protocol or Protocol()
    if p.split not in SPLITS:
        raise ValueError(f"unknown split {p.split!r}; choose from {', '.join(SPLITS)}")
    if p.n < 2 or p.views < 1 or p.view_res < 16 or p.mesh_res < 8:
        raise ValueError("`n` must be >= 2, `views` >= 1, `view_res` >= 16 and `mesh_res` >= 8")
    unknown = set(ablations) - set(ABLATIONS)
    if unknown:
        raise ValueError(f"unknown ablation(s) {sorted(unknown)}; choose from {', '.join(ABLATIONS)} or all")
    grid = parse_grid(guidance_grid) if "guidance" in ablations else []
    t0 = time.perf_counter()
    pipe = Compress3DPipeline.from_pretrained(pipeline, device=device)
    pipe.set_progress_bar_config(disable=True)
    parts = pipeline_parts(pipeline)
    objects = paper_test_set(p)
    scorer = make_scorer(objects, p, pipe.tower, features)
    gi, gs = pipe.guidance()
    vc = pipe.vae.cfg
    report = {
        "pipeline": str(pipeline), "protocol": asdict(p), "split_seed": SPLITS[p.split],
        "fid_features": scorer.feature_info, "clip_tower": pipe.tower.identity(), "fid_floor_real_vs_real": scorer.floor,
        "guidance": {"image": gi, "shape": gs}, "sampler": pipe.sampler,
        "latent_size": 3 * vc.latent_channels * vc.latent_res ** 2,
        "latent_shape": [3, vc.latent_channels, vc.latent_res, vc.latent_res],
        "train_objects": pipe.unet_cfg.get("data", {}).get("n_objects"), "train_hours": _train_hours(parts),
        "device": str(pipe.device), "paper": {"main": PAPER_MAIN, "no_prior": PAPER_NO_PRIOR,
                                              "attention": PAPER_ATTENTION, "attn_res": PAPER_ATTN_RES,
                                              "guidance": {"best": (PAPER_GUIDANCE["image"], PAPER_GUIDANCE["shape"]),
                                                           "fid": PAPER_MAIN["Compress3D"]["fid"]}},
        "main": evaluate_variant(pipe, objects, scorer, p, progress, desc="with prior"),
        "ablations": {},
    }
    if "prior" in ablations:
        report["ablations"]["prior"] = evaluate_variant(pipe, objects, scorer, p, progress, use_prior=False,
                                                        desc="without prior")
    if grid:
        cells = []
        for a, b in grid:
            r = evaluate_variant(pipe, objects, scorer, p, progress, guidance_image=a, guidance_shape=b,
                                 desc=f"guidance {a:g}/{b:g}")
            cells.append({"guidance_image": a, "guidance_shape": b, **{k: v for k, v in r.items() if k != "objects"}})
        report["ablations"]["guidance"] = cells
    if "attention" in ablations:
        report["ablations"]["attention"] = ablate_attention(vae_with or parts["vae"],
                                                            vae_without or shipped_checkpoint("vae_course_noattn"),
                                                            objects, p, progress)
    if "attn_res" in ablations:
        report["ablations"]["attn_res"] = ablate_attn_res(vae_with or parts["vae"], attn_res, attn_res_vaes,
                                                          objects, p, progress)
    report["seconds"] = time.perf_counter() - t0
    return clean(report)


# ----------------------------------------------------------------------------------- the tables


def _f(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def format_markdown(r: dict) -> str:
    """The report as markdown tables in the paper's layout, the paper's numbers beside ours."""
    p, m, feat = r["protocol"], r["main"], r["fid_features"]
    n_img = p["n"] * p["views"]
    hours = r.get("train_hours")
    lines = [
        f"# Evaluation in the paper's format: pipeline `{r['pipeline']}`",
        "",
        f"{p['n']} held-out toy objects ({p['split']} split, seed {r['split_seed']}), input {p['input_res']} px, "
        f"{p['views']} views x {p['view_res']} px on white per asset ({n_img} images per set), "
        f"{r.get('sampler', 'ddim')} {p['steps']} steps, guidance image {r['guidance']['image']:g} / shape {r['guidance']['shape']:g}, marching cubes "
        f"{p['mesh_res']}^3. FID features: **{feat['name']}** ({feat['dim']}-d"
        f"{'' if feat['standard'] else '; not Inception, so not on the paper scale'}). CLIP similarity: "
        f"{r['clip_tower']['name']} image tower. For scale, FID between the reference renders and those of "
        f"{p['n']} *other* real objects (val split): {_f(r['fid_floor_real_vs_real'], '.2f')}.",
        "",
        "## Main comparison (paper 8.2)",
        "",
        "| Metric | Shap-E | OpenLRM | Compress3D (paper) | ours |",
        "|---|---|---|---|---|",
    ]
    P = PAPER_MAIN
    ours = {"fid": _f(m["fid"], ".2f"), "clip": _f(m["clip_sim"]),
            "latent": f"{r['latent_size'] / 1e6:.4f}M ({'x'.join(map(str, r['latent_shape']))})",
            "seconds": f"{_f(m['seconds_per_shape'], '.2f')} ({r['device']})",
            "data": f"{r['train_objects']} toy objects",
            "gpu_hours": f"{_f(hours, '.2f')} CPU-hours" if hours is not None else "-"}
    # FID is comparable only under the same features: the paper's (Inception) and ours share a row only when ours are
    # Inception too; otherwise each stands in a row of its own
    fid_rows = [("fid", "FID ↓")] if feat["standard"] else [("fid_paper", "FID ↓ (Inception features)"),
                                                            ("fid_ours", f"FID ↓ ({feat['name']} features)")]
    paper = {name: {**P[name], "fid_paper": P[name]["fid"], "fid_ours": "-"} for name in P}
    ours.update(fid_paper="-", fid_ours=ours["fid"])
    for key, name in (*fid_rows, ("clip", "CLIP similarity ↑"), ("latent", "Latent size ↓"),
                      ("seconds", "Time per shape (s)"), ("data", "Training data"), ("gpu_hours", "Training GPU-hours")):
        lines.append(f"| {name} | {paper['Shap-E'][key]} | {paper['OpenLRM'][key]} | {paper['Compress3D'][key]} | "
                     f"{ours[key]} |")
    lines += [f"| IoU / Chamfer-L1 / F@0.02 | - | - | not reported | {_f(m['iou_median'])} / "
              f"{_f(m['chamfer_l1_median'], '.4f')} / {_f(m['f_score_mean'])} |",
              f"| CLIP sim. to the input image | - | - | - | {_f(m['clip_sim_input'])} |", ""]
    ab = r["ablations"]
    if "prior" in ab:
        w = ab["prior"]
        lines += ["## Ablation: the diffusion prior (paper 8.5)", "",
                  "| Variant | FID ↓ (paper) | CLIP ↑ (paper) | FID ↓ (ours) | CLIP ↑ (ours) | IoU median (ours) |",
                  "|---|---|---|---|---|---|",
                  f"| without prior | {PAPER_NO_PRIOR['fid']} | {PAPER_NO_PRIOR['clip']} | {_f(w['fid'], '.2f')} | "
                  f"{_f(w['clip_sim'])} | {_f(w['iou_median'])} |",
                  f"| with prior | {P['Compress3D']['fid']} | {P['Compress3D']['clip']} | {_f(m['fid'], '.2f')} | "
                  f"{_f(m['clip_sim'])} | {_f(m['iou_median'])} |", ""]
    if "guidance" in ab:
        lines += ["## Ablation: guidance scales (paper 8.6: best image 5.0 / shape 1.0, FID 53.21; grid not given)",
                  "", "| image scale | shape scale | FID ↓ | CLIP ↑ | IoU median |", "|---|---|---|---|---|"]
        best = min(ab["guidance"], key=lambda c: c["fid"])
        for c in ab["guidance"]:
            mark = " **(best FID)**" if c is best else ""
            lines.append(f"| {c['guidance_image']:g} | {c['guidance_shape']:g} | {_f(c['fid'], '.2f')}{mark} | "
                         f"{_f(c['clip_sim'])} | {_f(c['iou_median'])} |")
        lines.append("")
    if "attention" in ab:
        a, PA = ab["attention"], PAPER_ATTENTION
        lines += ["## Ablation: 3D-aware cross-attention, AE reconstruction (paper 8.3)", "",
                  "| Variant | L_rgb x1e3 ↓ | L_mask x1e3 ↓ | L_depth x1e2 ↓ | s / step | IoU | Chamfer-L1 |",
                  "|---|---|---|---|---|---|---|"]
        for k in ("without", "with"):
            q = PA[k]
            lines.append(f"| paper, {k} | {q['l_rgb'] * 1e3:.3f} | {q['l_mask'] * 1e3:.3f} | {q['l_depth'] * 1e2:.3f} | "
                         f"{q['s_per_step']} (A100) | - | - |")
        for k in ("without", "with"):
            q = a[k]
            lines.append(f"| ours, {k} | {q['l_rgb'] * 1e3:.3f} | {q['l_mask'] * 1e3:.3f} | {q['l_depth'] * 1e2:.3f} | "
                         f"{q['s_per_step']:.3f} (this CPU) | {_f(q['iou'])} | {_f(q['chamfer_l1'], '.4f')} |")
        lines.append("")
    if "attn_res" in ab:
        a = ab["attn_res"]
        lines += [f"## Ablation: resolution r'' of the queried volume (paper 8.4: r = 128, r' = 32; ours: r = "
                  f"{a['volume_res']}, r' = {a['latent_res']})", "",
                  "| r'' / r' | r'' | s / step, paper (A100) | s / step, ours (this CPU) | L_rgb x1e3 | IoU |",
                  "|---|---|---|---|---|---|"]
        for res, q in sorted(a["rows"].items(), key=lambda kv: int(kv[0])):
            ratio = int(res) // a["latent_res"]
            lines.append(f"| {ratio} | {res} | {PAPER_ATTN_RES.get(32 * ratio, '-')} | {_f(q.get('s_per_step'))} | "
                         f"{_f(q['l_rgb'] * 1e3 if q.get('l_rgb') is not None else None)} | {_f(q.get('iou'))} |")
        lines += ["", "Reconstruction columns are filled for the checkpoints given in `attn_res_vaes`.", ""]
    lines.append(f"Total {r['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"
