"""Where the generation loses quality, and which settings to ship: measured on the val split.

    compress3d-lite evaluate diagnose --split val --json diag.json   # the diagnosis table
    compress3d-lite evaluate sweep --split val --json sweep.json     # guidance x sampler / steps

**Diagnosis.** Each row replaces one part of the pipeline by the truth (or changes one setting)
and measures what ``evaluate generate`` measures (generate.py). The gap between two rows is the
loss of the part that differs:

    vae (ceiling)        the true object's VAE latent, decoded: no generation at all
    true latent, t=0.5   the true latent noised halfway, denoised by the UNet with the true shape
                         embedding (SDEdit): the UNet only has to fill in detail
    true shape emb.      the UNet from pure noise, given the shape tower's embedding of the true
                         points instead of the prior's sample: a perfect prior
    shipped              the pipeline as a user runs it (prior sample)
    no prior             image embedding only
    128 px view          the input rendered at 128 px (the tower still resizes to its own size)
    sampler rows         more steps or another sampler, the same model (``--samplers``; the
                         sweep below measures them for its best guidance pair)
    bound rows           retrieval and regression from the embeddings, and the UNet's loss per
                         noise band (``--bounds DIR``; evaluation/bounds.py)

**Sweep.** The guidance pair (first pass, with the first sampler) and then the sampler / step count
(second pass, with the best pair) are chosen by median IoU on the val split, with category accuracy
breaking near-ties (within 0.005), then the smaller step count; ``--apply`` writes the chosen values into the UNet checkpoint's
config (``guidance``, ``diffusion.sampler`` and ``diffusion.sample_steps``), where the pipeline
reads its defaults. The test split is never used to choose.
"""

from __future__ import annotations

import logging
import time

from ..checkpoint import read_config, resolve_folder, update_config
from ..config import SAMPLERS
from ..pipeline import PRESETS
from .bounds import bounds, format_bands
from .generate import Variant, format_summaries, make_bench, run_variant, settings_of, summary_line
from .report import clean
from .test_set import SPLITS

log = logging.getLogger(__name__)

DIAGNOSIS = [
    Variant("vae (ceiling)", decode_true=True, note="true object's latent, decoded"),
    Variant("true latent, t=0.5", shape="true", strength=0.5, note="true latent half-noised, then denoised"),
    Variant("true shape emb.", shape="true", note="UNet with the true shape embedding (a perfect prior)"),
    Variant("shipped", shape="prior", note="the pipeline as shipped"),
    Variant("no prior", shape="none", note="image embedding only"),
    Variant("128 px view", shape="prior", view_res=128, note="input rendered at 128 px"),
]
def sampler_rows(pipe) -> list:
    """The sampler's share, the same model: twice the steps, and (DDPM) DPM-Solver++ at 15 or
    (rectified flow) Euler at half the steps. The sweep measures these too."""
    if pipe.unet.diffusion_cfg.objective == "rectified_flow":
        return [Variant(f"euler {2 * pipe.steps} steps", sampler="euler", steps=2 * pipe.steps, note="twice the steps"),
                Variant(f"euler {max(1, pipe.steps // 2)} steps", sampler="euler", steps=max(1, pipe.steps // 2),
                        note="half the steps")]
    return [Variant("ddim 50 steps", shape="prior", sampler="ddim", steps=50, note="twice the steps"),
            Variant("dpm++ 15 steps", shape="prior", sampler="dpm", steps=15, note="DPM-Solver++")]


def _run(bench, variants, seed, res, progress, label) -> dict:
    t0 = time.perf_counter()
    rows = []
    for v in variants:
        summary, _ = run_variant(bench, v, seed, res)
        rows.append({"name": v.name, "note": v.note, "settings": settings_of(bench, v), "summary": summary})
        if progress:
            log.info(summary_line(label, v.name, summary))
    return {"pipeline": str(bench.pipeline), "split": bench.split, "seed": SPLITS[bench.split],
            "n_objects": len(bench.cases), "sample_seed": seed, "mesh_res": res, "rows": rows,
            "seconds": time.perf_counter() - t0}


def diagnose_generate(pipeline="course", split: str = "val", n: int = 56, seed: int = 0, res: int = 64,
                      device: str | None = None, variants=None, progress: bool = True, samplers: bool = False,
                      bounds_cache=None, n_train: int | None = None, regression_steps: int = 1500) -> dict:
    """The diagnosis table (module docstring) as a report: one row per variant (``DIAGNOSIS``, and
    ``sampler_rows`` with ``samplers``; or the ``variants`` given). ``bounds_cache``: also the
    bound rows and the UNet's loss per noise band (``bounds.py``), its training objects kept there."""
    bench = make_bench(pipeline, split, n, device)
    rows = variants or DIAGNOSIS + (sampler_rows(bench.pipe) if samplers else [])
    report = _run(bench, rows, seed, res, progress, "diagnose")
    if bounds_cache is not None:
        b = bounds(bench, bounds_cache, seed, res, n_train, regression_steps, progress)
        report["rows"] += [{**row, "settings": {}} for row in b.pop("rows")]
        report["bounds"] = b
        report["seconds"] += b["seconds"]
    return clean(report)


GUIDANCE_GRID = tuple((gi, gs) for gi in (1, 2, 3, 5) for gs in (1, 2, 3))
SWEEP_SAMPLERS = {"ddpm": (("ddim", 25), ("ddim", 50), ("dpm", 10), ("dpm", 20)),  # per objective
                  "rectified_flow": (("euler", 20), ("euler", 10), ("euler", 40))}


def selection_score(summary: dict) -> float:
    """What the sweep maximises: the mean of the median IoU at uniform points, the median IoU near
    the surface and the worst category's median IoU. Uniform IoU alone is dominated by the bulk of
    an object and forgives a broken pole or a missing leg; the other two do not."""
    return (summary["iou_median"] + summary["iou_near_median"] + summary["worst_category_iou"]) / 3


def best_row(rows: list, tolerance: float = 0.005) -> dict:
    """The row with the highest ``selection_score``; among those within ``tolerance`` of it, the
    highest category accuracy, then the fewest sampler steps (the faster), then the highest score."""
    top = max(selection_score(r["summary"]) for r in rows)
    close = [r for r in rows if selection_score(r["summary"]) >= top - tolerance]
    return max(close, key=lambda r: (r["summary"]["category_acc"], -r["settings"]["steps"],
                                     selection_score(r["summary"])))


def _pass(bench, report, variants, seed, res, progress) -> list:
    more = _run(bench, variants, seed, res, progress, "sweep")
    report["rows"] += more["rows"]
    report["seconds"] += more["seconds"]
    return more["rows"]


def sweep_generate(pipeline="course", split: str = "val", n: int = 56, seed: int = 0, res: int = 64,
                   device: str | None = None, guidance_grid=GUIDANCE_GRID, samplers=None,
                   intervals=((0.0, 1.0),), rescales=(0.0,), progress: bool = True) -> dict:
    """Three passes: every guidance pair with the first sampler; every sampler / step count with
    the best pair; every guidance interval x rescale with the best of those (``TriplaneUNet.guided``).
    ``samplers``: (name, steps) pairs; None: ``SWEEP_SAMPLERS`` of the UNet's objective.
    Reports every row and the chosen settings (``best``, by ``best_row``)."""
    bench = make_bench(pipeline, split, n, device)
    samplers = samplers or SWEEP_SAMPLERS[bench.pipe.unet.diffusion_cfg.objective]
    (s0, k0) = samplers[0]
    whole = dict(interval=(0.0, 1.0), rescale=0.0)
    first = [Variant(f"g {gi:g}/{gs:g}, {s0} {k0}", sampler=s0, steps=k0, guidance=(gi, gs), **whole)
             for gi, gs in guidance_grid]
    report = _run(bench, first, seed, res, progress, "sweep")
    best = best_row(report["rows"])
    g = best["settings"]
    pair = (g["guidance_image"], g["guidance_shape"])
    second = [Variant(f"g {pair[0]:g}/{pair[1]:g}, {s} {k}", sampler=s, steps=k, guidance=pair, **whole)
              for s, k in samplers[1:]]
    best = best_row([best] + _pass(bench, report, second, seed, res, progress))
    b = best["settings"]
    third = [Variant(f"g {pair[0]:g}/{pair[1]:g}, {b['sampler']} {b['steps']}, t/T {lo:g}-{hi:g}, rescale {phi:g}",
                     sampler=b["sampler"], steps=b["steps"], guidance=pair, interval=(lo, hi), rescale=phi)
             for lo, hi in intervals for phi in rescales if ((lo, hi), phi) != ((0.0, 1.0), 0.0)]
    if third:
        best = best_row([best] + _pass(bench, report, third, seed, res, progress))
    report["best"], report["best_settings"] = best["name"], best["settings"]
    return clean(report)


def parse_intervals(text: str) -> list:
    """"0-1,0.2-0.8" -> [(0.0, 1.0), (0.2, 0.8)]: noise levels t / T where guidance applies."""
    out = []
    for part in (t.strip() for t in text.split(",") if t.strip()):
        lo, _, hi = part.partition("-")
        try:
            pair = (float(lo), float(hi))
        except ValueError:
            pair = None
        if pair is None or not 0 <= pair[0] < pair[1] <= 1:
            raise ValueError(f"`intervals` {text!r}: expected LO-HI pairs with 0 <= LO < HI <= 1, e.g. 0-1,0.2-0.8")
        out.append(pair)
    return out or [(0.0, 1.0)]


def parse_samplers(text: str) -> list:
    """"ddim:25,dpm:10" -> [("ddim", 25), ("dpm", 10)]."""
    out = []
    for part in (t.strip() for t in text.split(",") if t.strip()):
        name, _, steps = part.partition(":")
        if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"`samplers` {text!r}: expected SAMPLER:STEPS pairs, e.g. ddim:25,dpm:10 "
                             "(samplers ddim, dpm; euler for a rectified-flow UNet)")
        out.append((name, int(steps)))
    if not out:
        raise ValueError("`samplers`: give at least one SAMPLER:STEPS")
    return out


def apply_settings(pipeline, report: dict):
    """Write a sweep's chosen guidance, sampler and steps into the pipeline folder's unet/config.json
    (where ``Compress3DPipeline`` reads its defaults), atomically (``checkpoint.update_config``).
    Returns the file written."""
    if isinstance(pipeline, str) and pipeline in PRESETS:
        raise ValueError(f"{pipeline!r} is the shipped preset; the chosen settings are written into a pipeline "
                         "folder")
    unet = resolve_folder(pipeline) / "unet"
    best = report["best_settings"]
    diffusion = {**read_config(unet)["diffusion"], "sampler": best["sampler"], "sample_steps": best["steps"]}
    guidance = {"image": best["guidance_image"], "shape": best["guidance_shape"],
                "interval": list(best.get("guidance_interval", (0.0, 1.0))),
                "rescale": best.get("guidance_rescale", 0.0),
                "chosen_by": f"evaluate sweep on the {report['split']} split, {report['n_objects']} objects: the "
                             "best mean of the median IoU, the median IoU near the surface and the worst "
                             "category's; within 0.005 of it, the higher category accuracy, then the fewer steps"}
    return update_config(unet, {"diffusion": diffusion, "guidance": guidance})


def format_rows(report: dict, categories: bool = True) -> str:
    head = (f"{report['n_objects']} {report['split']} objects (seed {report['seed']}), sample seed "
            f"{report['sample_seed']}, {report['seconds']:.0f} s")
    table = format_summaries([(r["name"], r["summary"]) for r in report["rows"]], categories)
    best = f"\nbest: {report['best']}" if "best" in report else ""
    bands = f"\n{format_bands(report['bounds']['bands'])}" if "bounds" in report else ""
    return f"{head}\n{table}{best}{bands}"
