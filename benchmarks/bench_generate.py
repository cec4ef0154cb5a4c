"""Image -> mesh speed and memory of the shipped course pipeline.

    python benchmarks/bench_generate.py                      # defaults of `compress3d-lite generate`
    python benchmarks/bench_generate.py --steps 50 --res 96 --repeats 5 --process-runs 7

Reports, one JSON line each:
  whole_process   `compress3d-lite generate IMAGE -o DIR` as a new process, wall seconds (median,
                  min, max of --process-runs after one warm-up run): imports, loading, one image
  imports         the floor under it: new processes that only import torch, and only import what
                  `generate` imports before its first tensor (torch, trimesh, open_clip, diffusers,
                  huggingface_hub; median of --process-runs)
  load            Compress3DPipeline.from_pretrained in this process, seconds
  one_image       one image in a warm process: the first call, then per-stage seconds, median of
                  --repeats
  batch           --batch images in one call: seconds in all and per image, against one image
  memory          peak resident set size of this process (and of CUDA, where used)

One image is a toy render from data_samples; default settings (the checkpoint's sampler, steps
and guidance, prior on, marching cubes at 128^3). Targets on 2 CPU cores: the whole process <= 3 s, the first
call no slower than the later ones, a batch of 8 well under 8 times one image (the paper: 7 s per
shape on an A100 at full scale).
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress3d_lite.pipeline import Compress3DPipeline  # noqa: E402
from compress3d_lite.samples import sample_path  # noqa: E402


def whole_process(image: str, runs: int) -> dict:
    """Wall seconds of the `generate` command as a new process (after one warm-up run)."""
    cli = shutil.which("compress3d-lite")
    cmd = [cli] if cli else [sys.executable, "-m", "compress3d_lite.cli"]
    out = Path(tempfile.mkdtemp(prefix="c3d_bench_"))
    times = []
    for k in range(runs + 1):
        t = time.perf_counter()
        subprocess.run(cmd + ["generate", image, "-o", str(out / str(k))], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    shutil.rmtree(out, ignore_errors=True)
    t = np.array(times[1:])
    return {"bench": "whole_process", "runs": runs, "median_seconds": round(float(np.median(t)), 3),
            "min_seconds": round(float(t.min()), 3), "max_seconds": round(float(t.max()), 3),
            "target_seconds": 3.0, "pass": bool(np.median(t) <= 3.0)}


def imports(runs: int) -> dict:
    """Median wall seconds of new processes that only import (the floor under whole_process)."""
    what = {"torch": "import torch",
            "generate_imports": "import torch, trimesh, open_clip, huggingface_hub, diffusers.schedulers; "
                                "import compress3d_lite.pipeline"}
    out = {"bench": "imports", "runs": runs}
    for name, code in what.items():
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            times.append(time.perf_counter() - t)
        out[f"{name}_seconds"] = round(float(np.median(times)), 3)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default="course")
    p.add_argument("--image", default=str(sample_path("toyshapes", "images", "000003_0.png")))
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--process-runs", type=int, default=5, help="whole-process runs (0: skip)")
    p.add_argument("--no-prior", action="store_true")
    p.add_argument("--device", default=None)
    a = p.parse_args()
    print(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                      "loadavg": os.getloadavg()[0], "cuda": torch.cuda.is_available()}))
    if a.process_runs:
        print(json.dumps(whole_process(a.image, a.process_runs)))
        print(json.dumps(imports(a.process_runs)))
    t0 = time.perf_counter()
    pipe = Compress3DPipeline.from_pretrained(a.pipeline, device=a.device)
    pipe.set_progress_bar_config(disable=True)
    print(json.dumps({"bench": "load", "seconds": round(time.perf_counter() - t0, 3), "device": str(pipe.device)}))
    if pipe.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    kw = dict(num_inference_steps=a.steps, mesh_resolution=a.res, use_prior=not a.no_prior)
    first = pipe(a.image, seed=0, **kw).timings["total"]
    runs = [pipe(a.image, seed=k, **kw).timings for k in range(a.repeats)]
    one = {k: round(float(np.median([r[k] for r in runs])), 3) for k in runs[0]}
    print(json.dumps({"bench": "one_image", "sampler": pipe.sampler, "steps": a.steps or pipe.steps, "res": a.res,
                      "use_prior": not a.no_prior, "repeats": a.repeats, "first_call_seconds": round(first, 3), "median_seconds": one}))
    images = [a.image] * a.batch
    t = time.perf_counter()
    pipe(images, seed=0, **kw)
    total = time.perf_counter() - t
    print(json.dumps({"bench": "batch", "images": a.batch, "seconds": round(total, 3),
                      "per_image_seconds": round(total / a.batch, 3),
                      "vs_one_by_one": round(total / (a.batch * one["total"]), 3)}))
    mem = {"bench": "memory", "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if pipe.device.startswith("cuda"):
        mem["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(mem))


if __name__ == "__main__":
    main()
