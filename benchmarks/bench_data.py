"""Data throughput: toy objects per second and real-mesh imports per second.

    python benchmarks/bench_data.py                 # 200 toy objects on all cores + the sample meshes
    python benchmarks/bench_data.py --n 400 --workers 2 --import-dir DIR   # + a folder of your own meshes

Toy generation uses the training setting: 4 views at 128x128 (plus 4096 surface points and
16384 occupancy queries per object), written to a temporary folder. Target on 2 cores: >= 20
objects/s. Prints one JSON line per measurement.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress3d_lite.config import SampleSpec  # noqa: E402
from compress3d_lite.data.render import ray_backend  # noqa: E402
from compress3d_lite.data.toyshapes import write_toyshapes  # noqa: E402


def bench_toy(n, workers):
    spec = SampleSpec(views=4, resolution=128)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_toyshapes(n, tmp, spec, seed=0, workers=workers, progress=False)
        dt = time.perf_counter() - t0
    return {"bench": "toyshapes", "objects": n, "workers": workers, "views": 4, "resolution": 128,
            "seconds": round(dt, 2), "objects_per_s": round(n / dt, 1), "target_objects_per_s": 20}


def bench_import(paths):
    from compress3d_lite.data.mesh_import import import_files

    spec = SampleSpec(views=4, resolution=128)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        entries, failures = import_files(paths, tmp, spec, seed=0, progress=False)
        dt = time.perf_counter() - t0
    return {"bench": "import", "files": len(entries), "failed": len(failures), "views": 4, "resolution": 128,
            "seconds": round(dt, 2), "objects_per_s": round(len(entries) / dt, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--import-dir", default=None, help="folder of meshes to import (default: our sample meshes)")
    args = p.parse_args()
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "ray_backend": ray_backend()}))
    print(json.dumps(bench_toy(args.n, args.workers)))
    if args.import_dir:
        print(json.dumps(bench_import([args.import_dir])))
    else:
        from compress3d_lite.data.sample_meshes import write_sample_meshes

        with tempfile.TemporaryDirectory() as tmp:
            write_sample_meshes(tmp)
            print(json.dumps(bench_import([tmp])))


if __name__ == "__main__":
    main()
