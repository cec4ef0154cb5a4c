"""Triplane VAE speed: training throughput and FLOP/s utilisation; reconstruct time.

    python benchmarks/bench_vae.py                      # course preset, shipped checkpoint
    python benchmarks/bench_vae.py --steps 20 --preset lite

(a) training: samples/s of the preset's training step (forward + backward + AdamW, batch and
    point counts of the preset) on a batch of toy objects, timed over ``--steps`` steps after
    warm-up; the FLOPs of one step counted by torch.utils.flop_counter.FlopCounterMode (matmuls,
    convolutions and attention; element-wise ops, GroupNorm, grid_sample and the scatters are not
    counted, so the figure is a lower bound), divided by the step time, as a fraction of this
    machine's fp32 matmul throughput measured in the same run (best of several 2048^3 matmuls).
    Target on 2 cores: >= 25%.
(b) reconstruct: encode (posterior mean) + decode + mesh (adaptive grid, marching cubes, vertex
    colours) of a held-out toy object with the shipped checkpoint, at 64^3 and 128^3, median of
    ``--repeats`` runs; the dense 128^3 decode is timed too, for reference. Target on 2 cores:
    <= 1.5 s at 128^3.

Prints one JSON line per measurement. Other processes on the machine slow every figure down; the
load average is printed with the machine line.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress3d_lite.config import SampleSpec  # noqa: E402
from compress3d_lite.data.toyshapes import make_toy_object, object_rng, toy_example  # noqa: E402
from compress3d_lite.presets import vae_preset  # noqa: E402
from compress3d_lite.samples import shipped_checkpoint  # noqa: E402


def matmul_flops(n=2048, repeats=8):
    """Best fp32 matmul FLOP/s of this machine (n x n @ n x n, 2 n^3 FLOPs each)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def toy_batch(batch_size, n_points, n_occ, seed=0):
    """A training batch of toy objects, shaped as the training loader gives it."""
    spec = SampleSpec(n_points=n_points, n_uniform=n_occ // 2, n_near=n_occ - n_occ // 2, views=0)
    items = [toy_example(make_toy_object(seed, i), spec, object_rng(seed, i)) for i in range(batch_size)]
    stack = lambda k, dtype=np.float32: torch.from_numpy(np.stack([it[k] for it in items]).astype(dtype))  # noqa: E731
    return stack("points"), stack("colors"), stack("occ_points"), stack("occ_labels")


def bench_train(preset, steps, warmup):
    from torch.utils.flop_counter import FlopCounterMode

    from compress3d_lite.models import TriplaneVAE

    p = vae_preset(preset)
    mcfg, tcfg = p.model, p.train
    torch.manual_seed(0)
    model = TriplaneVAE(mcfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr)
    batch = toy_batch(tcfg.batch_size, tcfg.n_points, tcfg.n_occ)

    def step():
        out = model(*batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    with FlopCounterMode(display=False) as fc:  # forward + backward of one step
        out = model(*batch)
        out.loss.backward()
    flops = fc.get_total_flops()
    step_s = float(np.median(times))
    peak = matmul_flops()
    return {"bench": "train_ae", "preset": preset, "batch_size": tcfg.batch_size, "n_points": tcfg.n_points,
            "n_occ": tcfg.n_occ, "threads": torch.get_num_threads(), "steps": steps,
            "step_s_median": round(step_s, 4), "step_s_min": round(min(times), 4),
            "samples_per_s": round(tcfg.batch_size / step_s, 2),
            "gflop_per_step": round(flops / 1e9, 2), "achieved_gflops": round(flops / step_s / 1e9, 2),
            "matmul_gflops": round(peak / 1e9, 1), "fraction_of_matmul": round(flops / step_s / peak, 4),
            "target_fraction": 0.25}


def bench_reconstruct(ckpt, resolutions, repeats):
    from compress3d_lite.inference.vae import load_vae
    from compress3d_lite.mesh import decode_grid, decode_grid_adaptive, extract_mesh

    model, cfg = load_vae(ckpt)
    n_points = cfg["train"]["n_points"]
    obj = make_toy_object(1000, 3)  # a held-out (test split) lamp
    ex = toy_example(obj, SampleSpec(n_points=n_points, n_uniform=8, n_near=8, views=0), object_rng(1000, 3))
    pts, cols = torch.from_numpy(ex["points"])[None], torch.from_numpy(ex["colors"])[None]
    rows = []
    with torch.inference_mode():
        for res in resolutions:
            times, stages = [], []
            for _ in range(repeats + 1):  # the first run is warm-up
                timings = {}
                t = time.perf_counter()
                mu, _ = model.encode(pts, cols)
                t1 = time.perf_counter()
                planes = model.decode(mu)
                t2 = time.perf_counter()
                mesh = extract_mesh(model, planes, res=res, timings=timings)
                times.append(time.perf_counter() - t)
                stages.append({"encode": t1 - t, "decode": t2 - t1, **timings})
            times, stages = times[1:], stages[1:]
            _, fraction = decode_grid_adaptive(model, planes, res, return_fraction=True)
            row = {"bench": "reconstruct", "checkpoint": Path(ckpt).name, "res": res,
                   "object": f"test/3 {obj.category}",
                   "repeats": repeats, "seconds_median": round(float(np.median(times)), 3),
                   "seconds_min": round(min(times), 3),
                   "stages_median": {k: round(float(np.median([s[k] for s in stages])), 4) for k in stages[0]},
                   "grid_fraction_queried": round(fraction, 3), "faces": len(mesh.faces)}
            if res == 128:
                row["target_s"] = 1.5
                t = time.perf_counter()
                decode_grid(model, planes, res)
                row["dense_decode_s"] = round(time.perf_counter() - t, 3)
            rows.append(row)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="course")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ckpt", default=str(shipped_checkpoint("vae_course")))
    p.add_argument("--repeats", type=int, default=5, help="timed reconstructions per resolution")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice, all cores)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "load_average": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    if not args.skip_train:
        print(json.dumps(bench_train(args.preset, args.steps, args.warmup)), flush=True)
    for row in bench_reconstruct(args.ckpt, (64, 128), args.repeats):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
