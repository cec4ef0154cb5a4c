"""Dry runs of the four training stages at any preset: what a run at that scale costs, then one
real optimiser step on random data, in a minute or two on a CPU (docs/paper.md §4, §5, §6, §10).
Each stage module builds its training module with ``dry_run_setup`` (the same code its training
run uses); ``training/measure.py`` measures it; this module estimates, reports and prints.

    compress3d-lite train diffusion --preset a100_full --dry-run [--json dry.json]

What it reports, per stage and preset (all of it in ``dry_run(stage, preset) -> dict``):

  parameters   total and trainable, per sub-module, beside the paper's count where it gives one
               (prior 25.8M, UNet 864M; docs/paper.md §4, §5)
  memory       per GPU, at the preset's per-GPU batch and mixed precision: fp32 weights + fp32
               gradients + AdamW's two fp32 moments + activations. Activations are measured: one
               forward at batch 1 under ``torch.autograd.graph.saved_tensors_hooks`` sums the bytes
               of every tensor autograd keeps for the backward pass (parameters left out, shared
               storage once), times the batch, halved under bf16/fp16. With gradient checkpointing
               the blocks' own saved tensors are replaced by their inputs plus one block's worth
               (the recompute), from the same measurement.
  FLOPs        ``torch.utils.flop_counter.FlopCounterMode`` on one forward + backward at batch 1,
               times the batch. It counts matmuls, convolutions and attention; the ops it does not
               count (elementwise, normalisation, scatter, grid_sample, ...) are listed with the
               number of elements they produce.
  time         estimated, not measured: FLOPs / (peak x utilisation), A100 312 TFLOP/s bf16 and
               T4 65 TFLOP/s fp16 at an assumed 35%.
  a step       the stage's step function, then ``backward`` and ``update`` (what ``fit``
               runs: AdamW, clipping, the preset's schedule), once on random data at batch 1 (2 for
               the contrastive towers) on the CPU; the loss.

Nothing is downloaded and nothing is written (unless ``--json``): pretrained image towers are
open_clip architectures with random init, and ViT-bigG-14 (1.8B parameters) is only built on the
meta device, counted and its FLOPs traced there.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..config import PRECISIONS
from ..presets import GPUS
from ..stages import embed, prior, unet, vae
from ..training.measure import Setup, count_params, estimate_memory, measure

STAGES = {"ae": vae, "embed": embed, "prior": prior, "diffusion": unet}  # CLI stage name -> stage module
A100_BF16 = 312e12  # FLOP/s, dense bf16 tensor cores
T4_FP16 = 65e12  # FLOP/s, dense fp16 tensor cores
UTILISATION = 0.35  # assumed fraction of peak reached by a training step
A100_BYTES, T4_BYTES = 2.0e12, 320e9  # memory bandwidth, B/s (A100 80GB SXM, T4)
PAPER = {  # docs/paper.md §4, §5, §6: parameters and training compute of each stage
    "ae": {"params": None, "gpus": 8, "hours": 6 * 24, "compute": "8 x A100, 6 days"},
    "embed": {"params": None, "gpus": None, "hours": None, "compute": "OpenShape's towers (not trained by the paper)"},
    "prior": {"params": 25.8e6, "gpus": 2, "hours": 18, "compute": "2 x A100, 18 h"},
    "diffusion": {"params": 864e6, "gpus": 8, "hours": 4 * 24, "compute": "8 x A100, 4 days"},
}
PAPER_OBJECTS, VIEWS = 95_000, 8  # objects to embed at a100_full (docs/paper.md §6) and views per object


def setup(stage: str, preset: str, meta: bool = False, overrides: dict | None = None) -> Setup:
    """The training module, step function and data shapes of ``stage`` at ``preset``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    return STAGES[stage].dry_run_setup(preset, meta, overrides)


# ------------------------------------------------------------------------------------------ the dry run

def _time(flops: float, peak: float) -> float:
    return flops / (peak * UTILISATION)


def _traffic(elements: float, mixed_precision: str) -> float:
    """Bytes the uncounted (memory-bound) ops move at least: two reads and one write per element."""
    return elements * 3 * (2 if mixed_precision in PRECISIONS else 4)


def dry_run(stage: str, preset: str, step: bool = True, measure_step: bool = True,
            overrides: dict | None = None) -> dict:
    """Everything about training ``stage`` at ``preset`` short of training it (module docstring).

    ``measure_step=False``: build on the meta device and count only (no activations, FLOPs or
    step; instant even for the 887M UNet). ``step=False``: measure, but run no optimiser step.
    ``overrides``: ``batch_size``; for ``ae`` / ``diffusion`` AEConfig / UNetConfig fields (e.g.
    ``grad_checkpoint``); for ``embed`` ``image_tower``."""
    t0 = time.perf_counter()
    overrides = dict(overrides or {})
    batch_size = overrides.pop("batch_size", None)
    s = setup(stage, preset, meta=not measure_step, overrides=overrides)
    tcfg = s.tcfg
    if batch_size:
        tcfg.batch_size = batch_size
    parts = {name: count_params(m) for name, m in s.parts.items()}
    model = count_params(s.model)
    paper = PAPER[stage]
    total = sum(p["total"] for p in parts.values())
    report = {
        "stage": stage, "preset": preset, "notes": s.notes, **s.extra,
        "params": {"total": total, "trainable": model["trainable"], "in_training_step": model["total"],
                   "parts": parts, "paper": paper["params"],
                   "vs_paper": None if not paper["params"] else total / paper["params"] - 1},
        "batch_per_gpu": tcfg.batch_size, "mixed_precision": tcfg.mixed_precision,
        "grad_checkpoint": s.grad_checkpoint, "grad_checkpoint_supported": bool(s.blocks), "steps": tcfg.steps,
        "assumptions": {"a100_bf16_flops": A100_BF16, "t4_fp16_flops": T4_FP16, "utilisation": UTILISATION},
        "paper_compute": paper["compute"],
        "paper_gpu_hours": paper["gpus"] * paper["hours"] if paper["gpus"] else None,
    }
    m = measure(s, step=step) if measure_step else None
    act = chk = None
    if m:
        a = m["activations"]
        act = a["total"]
        chk = a["outside"] + a["block_inputs"] + a["block_max"] if s.blocks else None
        B = tcfg.batch_size
        step_flops_ = m["flops"]["total"] * B
        recompute = m["forward_flops"] * B if s.grad_checkpoint else 0  # upper bound: the whole forward
        flops_for_time = step_flops_ + recompute
        traffic = _traffic(sum(m["flops"]["uncounted"].values()) * B, tcfg.mixed_precision)
        report.update(
            activations={"per_sample_fp32": act, "checkpointed_per_sample_fp32": chk, **a},
            flops={"per_step": step_flops_, "per_sample": m["flops"]["total"], "forward_per_sample": m["forward_flops"],
                   "recompute_per_step_max": recompute, "by_op_per_sample": m["flops"]["by_op"],
                   "uncounted_elements_per_sample": m["flops"]["uncounted"]},
            time={"a100_s": _time(flops_for_time, A100_BF16), "t4_s": _time(flops_for_time, T4_FP16),
                  "a100_memory_bound_s": traffic / A100_BYTES, "t4_memory_bound_s": traffic / T4_BYTES,
                  "estimated": True},
            cpu_step={"batch": m["batch"], "seconds": m["seconds"], "loss": m["loss"], "logs": m["logs"],
                      "optimizer_step": m["step_ran"], "skipped": m.get("step_skipped"), "threads": torch.get_num_threads()})
        gpu, counts = GPUS.get(preset, (None, {}))
        gpus = counts.get(stage)
        if gpus:  # FLOP time + memory-bound time
            per_step = report["time"][f"{gpu}_s"] + report["time"][f"{gpu}_memory_bound_s"]
            hours = tcfg.steps * per_step / 3600
            report["full_run"] = {"gpus": gpus, "gpu": gpu.upper(),
                                  "steps": tcfg.steps, "hours": hours, "gpu_hours": hours * gpus, "estimated": True}
    report["memory"] = estimate_memory(model["total"], model["trainable"], act, tcfg.batch_size, tcfg.mixed_precision,
                                       chk, s.grad_checkpoint)
    tower = s.extra.get("image_tower")
    if tower:
        n_views = (tcfg.n_train or PAPER_OBJECTS) * VIEWS
        tower["precompute"] = {"views": n_views, "objects_assumed": not tcfg.n_train,
                               "flops": tower["flops_per_view"] * n_views,
                               "a100_hours": _time(tower["flops_per_view"] * n_views, A100_BF16) / 3600,
                               "t4_hours": _time(tower["flops_per_view"] * n_views, T4_FP16) / 3600}
    report["seconds"] = time.perf_counter() - t0
    return report


# ------------------------------------------------------------------------------------------ printing


def _n(x: float) -> str:
    return (f"{x / 1e9:.2f}B" if x >= 1e9 else f"{x / 1e6:.2f}M" if x >= 1e5 else f"{x / 1e3:.1f}k" if x >= 1e3
            else f"{x:.0f}")


def _gb(x: float) -> str:
    return f"{x / 2**30:.2f} GiB" if x >= 2**28 else f"{x / 2**20:.0f} MiB" if x >= 2**20 else f"{x / 2**10:.0f} KiB"


def _tf(x: float) -> str:
    return f"{x / 1e15:.2f} PFLOP" if x >= 1e15 else f"{x / 1e12:.2f} TFLOP" if x >= 1e11 else f"{x / 1e9:.2f} GFLOP"


def _s(x: float) -> str:
    return f"{x * 1e6:.0f} us" if x < 1e-3 else f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _dur(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def format_dry_run(r: dict) -> str:
    """The report of ``dry_run`` as text (what ``--dry-run`` prints)."""
    p, mem = r["params"], r["memory"]
    lines = [f"dry run: train {r['stage']} --preset {r['preset']} (nothing downloaded, nothing written)"]  # the command it sizes
    lines += [f"  {note}" for note in r["notes"]]
    paper = f" (paper: {_n(p['paper'])}; ours {p['vs_paper']:+.1%})" if p["paper"] and r["preset"] == "a100_full" else ""
    lines.append(f"parameters: {_n(p['total'])} total, {_n(p['trainable'])} trainable{paper}")
    for name, part in p["parts"].items():
        lines.append(f"  {name}: {_n(part['total'])}" + ("" if part["trainable"] == part["total"] else " (frozen)"
                                                          if not part["trainable"] else f" ({_n(part['trainable'])} trainable)"))
        if part["total"] >= 1e6 and len(part["modules"]) > 1:
            lines.append("    " + ", ".join(f"{k} {_n(v)}" for k, v in part["modules"].items()))
    tower = r.get("image_tower")
    if tower:
        pre = tower["precompute"]
        lines.append(f"  frozen tower {tower['arch']}: {tower['how']}; {_tf(tower['flops_per_view'])} per view; "
                     f"precomputing {pre['views']:,} views ({'assumed: ' if pre['objects_assumed'] else ''}"
                     f"{pre['views'] // VIEWS:,} objects x {VIEWS}) = {_tf(pre['flops'])}, about "
                     f"{_dur(pre['a100_hours'] * 3600)} on an A100 / {_dur(pre['t4_hours'] * 3600)} on a T4 (estimated)")
    ckpt = ("on" if r["grad_checkpoint"] else "off") if r["grad_checkpoint_supported"] else "n/a"
    lines.append(f"per-GPU batch {r['batch_per_gpu']}, mixed precision {r['mixed_precision']}, "
                 f"gradient checkpointing {ckpt}")
    if mem["activations"] is None:
        lines.append(f"memory per GPU (estimated, without activations: not measured): weights {_gb(mem['weights'])}"
                     f" + grads {_gb(mem['grads'])} + AdamW {_gb(mem['adamw'])} + 16-bit weight copies "
                     f"{_gb(mem['autocast_copies'])} = {_gb(mem['total'])}")
    else:
        a = r["activations"]
        use_ckpt = r["grad_checkpoint"] and mem["activations_checkpointed"] is not None
        acts = mem["activations_checkpointed"] if use_ckpt else mem["activations"]
        how = ""
        if mem["activations_checkpointed"] is not None:
            how = (f" (with checkpointing; {_gb(mem['activations'])} without)" if use_ckpt else
                   f" (checkpointing would make it {_gb(mem['activations_checkpointed'])})")
        copies = f" + 16-bit weight copies {_gb(mem['autocast_copies'])}" if mem["autocast_copies"] else ""
        lines.append(f"memory per GPU (estimated): weights {_gb(mem['weights'])} + grads {_gb(mem['grads'])} + "
                     f"AdamW {_gb(mem['adamw'])}{copies} + activations {_gb(acts)}{how} = {_gb(mem['total'])}")
        half = ", /2 for " + r["mixed_precision"] if r["mixed_precision"] in PRECISIONS else ""
        lines.append(f"  activations measured at batch {r['cpu_step']['batch']}: {_gb(a['per_sample_fp32'])} per sample "
                     "saved for backward (fp32), "
                     f"x{r['batch_per_gpu']}{half}; DDP adds about one more copy of the grads")
        f = r["flops"]
        counted = ", ".join(list(f["by_op_per_sample"])[:4])
        unc = f["uncounted_elements_per_sample"]
        n_unc = sum(unc.values())
        lines.append(f"FLOPs per step: {_tf(f['per_step'])} ({_tf(f['per_sample'])} forward + backward per sample "
                     f"x {r['batch_per_gpu']}; counted: {counted})")
        if n_unc:
            top = ", ".join(f"{k} {_n(v)}" for k, v in list(unc.items())[:5])
            lines.append(f"  not counted (elementwise, norms, scatter, ...): {_n(n_unc)} elements produced per "
                         f"sample, about {n_unc / max(1, f['per_sample']):.1%} of the count at 1 FLOP each; "
                         f"largest: {top}")
        if f["recompute_per_step_max"]:
            lines.append(f"  gradient checkpointing recomputes the blocks' forward: at most +{_tf(f['recompute_per_step_max'])}"
                         " per step (included in the times below)")
        t = r["time"]
        lines.append(f"time per step (estimated from FLOPs at {UTILISATION:.0%} of peak, not measured): "
                     f"A100 bf16 ({A100_BF16 / 1e12:.0f} TFLOP/s) {_s(t['a100_s'])}; "
                     f"T4 fp16 ({T4_FP16 / 1e12:.0f} TFLOP/s) {_s(t['t4_s'])}")
        lines.append(f"  plus the memory-bound ops left out of the FLOPs (3 accesses per element at full bandwidth, "
                     f"a lower bound): A100 {_s(t['a100_memory_bound_s'])}, T4 {_s(t['t4_memory_bound_s'])}")
        run = r.get("full_run")
        if run:
            paper = f" (paper: {r['paper_compute']} = {r['paper_gpu_hours']:,} GPU-hours)" if r["paper_gpu_hours"] else ""
            lines.append(f"full run (estimated, FLOP + memory-bound time): {run['steps']:,} steps on "
                         f"{run['gpus']} x {run['gpu']} = "
                         f"{run['hours']:,.1f} h = {run['gpu_hours']:,.{0 if run['gpu_hours'] >= 10 else 1}f} "
                         f"GPU-hours{paper}")
        if t["a100_s"] < 0.05:
            lines.append("  a step this small is bound by kernel launches, memory traffic and data loading, not "
                         "FLOPs: expect several times the estimate (the course VAE: 2 ms estimated, 76 ms "
                         "measured on an H100 with data loading)")
        c = r["cpu_step"]
        what = "one optimiser step" if c["optimizer_step"] else "forward + backward (no optimiser step)"
        lines.append(f"{what} on random data at batch {c['batch']} (CPU, {c['threads']} threads, {_s(c['seconds'])} "
                     f"with the counters on): loss {c['loss']:.4f}")
        if c["skipped"]:
            lines.append(f"  {c['skipped']}")
        if r["grad_checkpoint"]:
            lines.append("  (the step ran without checkpointing; it changes memory, not the loss or gradients)")
    lines.append(f"dry run took {r['seconds']:.1f} s")
    return "\n".join(lines)


def write_json(report: dict, path) -> Path:
    """The report as JSON (all numbers; bytes, FLOPs and seconds unscaled)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path
