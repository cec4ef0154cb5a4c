"""Image -> mesh speed and memory of the shipped course pipeline.

    python benchmarks/bench_generate.py                         # defaults of `compress3d-lite generate`
    python benchmarks/bench_generate.py --steps 50 --res 96 --repeats 5

One image (a toy render from data_samples), default settings (25 DDIM steps, dual guidance,
prior on, marching cubes at 128^3). Model loading is timed separately and excluded from the
per-image figure. Per stage: image embedding, prior, triplane diffusion, decode + mesh; median
of ``--repeats`` runs after one warm-up. Peak memory: the process's maximum resident set size
(CPU) and torch's peak allocated memory (CUDA). Target on 2 CPU cores: <= 3 s per image end to
end (the paper: 7 s on an A100 at full scale).

Prints one JSON line per measurement.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress3d_lite.pipeline import Compress3DPipeline  # noqa: E402
from compress3d_lite.samples import sample_path  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default="course")
    p.add_argument("--image", default=str(sample_path("toyshapes", "images", "000003_0.png")))
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-prior", action="store_true")
    p.add_argument("--device", default=None)
    a = p.parse_args()
    print(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                      "loadavg": os.getloadavg()[0], "cuda": torch.cuda.is_available()}))
    t0 = time.perf_counter()
    pipe = Compress3DPipeline.from_pretrained(a.pipeline, device=a.device)
    load = time.perf_counter() - t0
    print(json.dumps({"bench": "load", "seconds": round(load, 3), "device": str(pipe.device)}))
    if pipe.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pipe(a.image, steps=a.steps, res=a.res, use_prior=not a.no_prior)  # warm-up
    runs = [pipe(a.image, steps=a.steps, res=a.res, use_prior=not a.no_prior, seed=k).timings for k in range(a.repeats)]
    med = {k: round(float(np.median([r[k] for r in runs])), 3) for k in runs[0]}
    out = {"bench": "generate", "steps": a.steps, "res": a.res, "use_prior": not a.no_prior, "repeats": a.repeats,
           "median_seconds": med, "target_total_seconds": 3.0, "pass": med["total"] <= 3.0,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if pipe.device == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
