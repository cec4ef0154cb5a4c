"""Every kind of bad input and fault we guard against, run through the command line as a user
would, with the exit code and the message each one gets, as a markdown table.

    python .ci/bad_inputs.py                 # all cases (~4 min on 2 cores)
    python .ci/bad_inputs.py -k generate     # the cases whose kind or command contains "generate"

A case passes when the command exits with the code we promise (2 for bad input, 0 where the
right answer is to go on), prints no Python traceback, and leaves nothing half-written. The
table is what the closing notes of robustness work quote; ``tests/test_faults.py`` and
``tests/test_bad_inputs.py`` hold the same promises as tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data_samples"
IMAGE = SAMPLES / "toyshapes" / "images" / "000003_0.png"
GLB = SAMPLES / "meshes" / "toy_lamp.glb"
VAE = SAMPLES / "checkpoints" / "vae_course"
CLI = [sys.executable, "-m", "compress3d_lite.cli"]


def _limit_memory():  # a runaway allocation fails here instead of taking the machine down
    resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))


def run(argv, cwd, timeout=300):
    t = time.time()
    env = {**os.environ, "C3D_FAST": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"}
    try:
        r = subprocess.run(CLI + [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           env=env, preexec_fn=_limit_memory)
        code, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired:
        code, out, err = "timeout", "", f"(still running after {timeout} s)"
    lines = [x for x in err.strip().splitlines() if x.strip()]
    trace = any(x.startswith("Traceback") for x in lines)
    message = next((x for x in lines if x.startswith("error:")),
                   next((x for x in lines if x.startswith("warning:")), lines[-1] if lines else out.strip()[-160:]))
    return code, trace, message.strip()[:220], time.time() - t, out, err


# ------------------------------------------------------------------------------------------
# setups: each gets a fresh folder and returns the argv (and may prepare files)


def readonly_out(d):  # /proc refuses new folders even to root (a chmod-ed folder would not stop root)
    return ["generate", IMAGE, "-o", "/proc/c3d_out"]


def out_under_file(d):
    (d / "afile").write_text("x")
    return ["generate", IMAGE, "-o", d / "afile" / "sub"]


def reconstruct_out_under_file(d):
    (d / "afile").write_text("x")
    return ["reconstruct", GLB, "-o", d / "afile" / "sub.glb"]


def reconstruct_readonly(d):
    return ["reconstruct", GLB, "-o", "/proc/c3d_m.glb"]


def toyshapes_rerun_other_settings(d):
    subprocess.run(CLI + ["data", "toyshapes", "--n", "2", "--out", str(d / "ds"), "--views", "0", "--res", "32",
                          "--points", "256", "--occ", "256", "--seed", "0", "--workers", "1"],
                   check=True, capture_output=True)
    return ["data", "toyshapes", "--n", "2", "--out", d / "ds", "--views", "0", "--res", "32", "--points", "256",
            "--occ", "256", "--seed", "1", "--workers", "1"]


def import_twice(d):
    subprocess.run(CLI + ["data", "import", str(GLB), "--out", str(d / "ds"), "--views", "0", "--points", "256",
                          "--occ", "256"], check=True, capture_output=True)
    shutil.copy(GLB, d / "other.glb")
    return ["data", "import", d / "other.glb", "--out", d / "ds", "--views", "0", "--points", "256", "--occ", "256"]


def import_out_file(d):
    (d / "afile").write_text("x")
    return ["data", "import", GLB, "--out", d / "afile", "--views", "0", "--points", "256", "--occ", "256"]


def train_args(d, *extra):
    return ["train", "ae", "--preset", "lite", "--out", d / "run", "--steps", "4", "--n-train", "4",
            "--batch-size", "2", *extra]


def half_renamed_checkpoint(d):
    subprocess.run(CLI + [str(a) for a in train_args(d)], check=True, capture_output=True)
    ck = d / "run" / "checkpoint"
    ck.rename(d / "run" / ".checkpoint.old")  # the moment between the two renames
    return train_args(d, "--resume")


def huge_config(d):
    shutil.copytree(VAE, d / "vae")
    cfg = json.loads((d / "vae" / "config.json").read_text())
    cfg["model"]["head_hidden"] = 10 ** 6
    cfg["model"]["dec_channels"] = [4096, 4096]
    (d / "vae" / "config.json").write_text(json.dumps(cfg))
    return ["reconstruct", GLB, "-o", d / "m.glb", "--ckpt", d / "vae"]


def config_weights_mismatch(d):
    shutil.copytree(VAE, d / "vae")
    cfg = json.loads((d / "vae" / "config.json").read_text())
    cfg["model"]["head_hidden"] = cfg["model"]["head_hidden"] // 2
    (d / "vae" / "config.json").write_text(json.dumps(cfg))
    return ["reconstruct", GLB, "-o", d / "m.glb", "--ckpt", d / "vae"]


def generate_twice(d):
    subprocess.run(CLI + ["generate", str(IMAGE), "-o", str(d / "out"), "--res", "32", "--steps", "2"], check=True,
                   capture_output=True)
    return ["generate", IMAGE, "-o", d / "out", "--res", "32", "--steps", "2", "--seed", "5"]


def outlier_vertex(d):
    import numpy as np
    import trimesh

    m = trimesh.load(GLB, force="mesh")
    v = np.vstack([m.vertices, [[1e4, 1e4, 1e4]]])
    f = np.vstack([m.faces, [[0, 1, len(v) - 1]]])
    trimesh.Trimesh(v, f, process=False).export(d / "outlier.ply")
    return ["data", "import", d / "outlier.ply", "--out", d / "ds", "--views", "0", "--points", "256", "--occ", "256"]


def unreferenced_outlier(d):
    import numpy as np
    import trimesh

    m = trimesh.load(GLB, force="mesh")
    trimesh.Trimesh(np.vstack([m.vertices, [[1e4, 0, 0]]]), m.faces, process=False).export(d / "stray.ply")
    return ["data", "import", d / "stray.ply", "--out", d / "ds", "--views", "0", "--points", "256", "--occ", "256"]


def decompression_bomb(d):
    from PIL import Image

    Image.new("RGB", (13000, 13000), "white").save(d / "big.png")
    return ["generate", d / "big.png", "-o", d / "out", "--res", "32", "--steps", "2"]


def resume_with_more_steps(d):
    subprocess.run(CLI + [str(a) for a in train_args(d)], check=True, capture_output=True)
    (d / "run" / ".checkpoint.x1y2z3").mkdir()  # a temporary folder left by a write that was killed
    args = train_args(d, "--resume")
    args[args.index("--steps") + 1] = "6"
    return args


def train_into_a_run(d):
    subprocess.run(CLI + [str(a) for a in train_args(d)], check=True, capture_output=True)
    return train_args(d)


def unfinished_dataset(d):
    subprocess.run(CLI + ["data", "toyshapes", "--n", "2", "--out", str(d / "ds"), "--views", "0", "--points", "256",
                          "--occ", "256", "--workers", "1"], check=True, capture_output=True)
    index = json.loads((d / "ds" / "index.json").read_text())
    (d / "ds" / "index.json").write_text(json.dumps({**index, "complete": False}))  # as a killed run leaves it
    return ["train", "ae", "--preset", "lite", "--out", d / "run", "--steps", "2", "--data", d / "ds"]


def busy_folder(d):
    (d / "out").mkdir()
    (d / "out" / ".generate.lock").write_text("1")  # pid 1 is alive: another generate holds the folder
    return ["generate", IMAGE, "-o", d / "out", "--res", "32", "--steps", "2"]


def stale_lock(d):
    (d / "out").mkdir()
    (d / "out" / ".generate.lock").write_text("999999")  # a killed generate's lock
    return ["generate", IMAGE, "-o", d / "out", "--res", "32", "--steps", "2"]


def files_without_index(d):
    (d / "ds").mkdir()
    (d / "ds" / "000000.npz").write_bytes(b"PK")
    return ["data", "toyshapes", "--n", "1", "--out", d / "ds", "--views", "0", "--points", "256", "--occ", "256"]


# ------------------------------------------------------------------------------------------
# what must hold after a case, beyond its exit code (None: all is well, else the problem)


def index_of(d, folder="ds"):
    return json.loads((d / folder / "index.json").read_text())


def kept_seed_0(d, out, err):
    i = index_of(d)
    return None if i["seed"] == 0 and len(i["objects"]) == 2 else f"index now seed {i['seed']}"


def both_imports_listed(d, out, err):
    files = [e["file"] for e in index_of(d)["objects"]]
    on_disk = sorted(p.name for p in (d / "ds").glob("*.npz"))
    return None if len(files) == 2 and sorted(files) == on_disk else f"index lists {files}, disk has {on_disk}"


def resumed_to_step_4(d, out, err):
    ck = json.loads((d / "run" / "checkpoint" / "config.json").read_text())
    return None if ck["step"] == 4 and not (d / "run" / ".checkpoint.old").exists() else f"step {ck['step']}"


def log_in_order(d, out, err):
    steps = [json.loads(x)["step"] for x in (d / "run" / "log.jsonl").read_text().splitlines()]
    stale = [p.name for p in (d / "run").glob(".checkpoint.*")]
    mode = oct((d / "run" / "model" / "model.safetensors").stat().st_mode & 0o777)
    problems = ([f"log steps {steps}"] if steps != sorted(set(steps)) or steps[-1] != 6 else []) + \
        ([f"left {stale}"] if stale else []) + ([f"weights mode {mode}"] if mode != "0o644" else [])
    return "; ".join(problems) or None


def first_run_kept(d, out, err):
    report = json.loads((d / "out" / "generate.json").read_text())
    return None if report["settings"]["seed"] == 0 else "generate.json was replaced"


def warned_and_usable(d, out, err):
    import numpy as np

    if "warning:" not in err:
        return "no warning"
    if any(x.strip().startswith(("warnings.warn", "parts =")) for x in err.splitlines()):
        return "warning printed with Python's source line"
    obj = np.load(next((d / "ds").glob("*.npz")))
    inside = float(obj["occ_labels"].mean())
    return None if inside > 0.01 else f"imported object is empty (inside fraction {inside:.3f})"


def one_line_warning(d, out, err):
    lines = [x for x in err.splitlines() if "DecompressionBomb" in x or "pixels" in x]
    return None if len(lines) == 1 and lines[0].startswith("warning:") else f"warning as {len(lines)} lines"


def file_named(name, data: bytes):
    def setup(d):
        (d / name).write_bytes(data)
        return None
    return setup


def with_file(name, data, argv):
    def setup(d):
        (d / name).write_bytes(data)
        return [a if a != "{}" else d / name for a in argv]
    return setup


def plain(*argv):
    return lambda d: [a if a != "{d}" else d for a in argv]


GEN = ["generate", IMAGE, "-o", "out", "--res", "32"]

CASES = [
    # (kind, setup, expected exit code)
    ("output folder read-only", readonly_out, 2),
    ("output folder under a regular file", out_under_file, 2),
    ("reconstruct -o under a regular file", reconstruct_out_under_file, 2),
    ("reconstruct -o in a read-only folder", reconstruct_readonly, 2),
    ("--steps above the scheduler's 1000", plain(*GEN, "--steps", "1001"), 2),
    ("seed beyond 64 bits", plain(*GEN, "--seed", str(2 ** 64)), 2),
    ("--res that cannot fit in memory", plain("generate", IMAGE, "-o", "out", "--res", "5000"), 2),
    ("guidance nan", plain(*GEN, "--guidance-image", "nan"), 2),
    ("guidance inf", plain(*GEN, "--guidance-shape", "inf"), 2),
    ("/dev/zero as the image", plain("generate", "/dev/zero", "-o", "out", "--res", "32"), 2),
    ("toyshapes rerun with other settings", toyshapes_rerun_other_settings, 2, kept_seed_0),
    ("data import twice into one folder", import_twice, 0, both_imports_listed),
    ("data import --out is a file", import_out_file, 2),
    ("resume between the two checkpoint renames", half_renamed_checkpoint, 0, resumed_to_step_4),
    ("resume with more steps, a killed write's temp folder left", resume_with_more_steps, 0, log_in_order),
    ("train into a folder that holds a run", train_into_a_run, 2),
    ("train on an unfinished (interrupted) data set", unfinished_dataset, 2),
    ("checkpoint config with huge sizes", huge_config, 2),
    ("checkpoint config that does not match its weights", config_weights_mismatch, 2),
    ("generate twice into one folder", generate_twice, 2, first_run_kept),
    ("generate into a folder another generate holds", busy_folder, 2),
    ("generate into a folder a killed generate held", stale_lock, 0),
    ("mesh with one far outlier vertex (in a face)", outlier_vertex, 0, warned_and_usable),
    ("mesh with one unreferenced far vertex", unreferenced_outlier, 0, warned_and_usable),
    ("image over Pillow's decompression limit", decompression_bomb, 2, one_line_warning),
    ("toyshapes into a folder of files without index.json", files_without_index, 2),
    # further bad inputs
    ("image file does not exist", plain("generate", "nope.png", "-o", "out", "--res", "32"), 2),
    ("empty image file", with_file("empty.png", b"", ["generate", "{}", "-o", "out", "--res", "32"]), 2),
    ("truncated PNG", with_file("cut.png", IMAGE.read_bytes()[:300], ["generate", "{}", "-o", "out", "--res", "32"]),
     2),
    ("a text file named .png", with_file("t.png", b"hello", ["generate", "{}", "-o", "out", "--res", "32"]), 2),
    ("a folder as the image", plain("generate", "{d}", "-o", "out", "--res", "32"), 2),
    ("--steps 0", plain(*GEN, "--steps", "0"), 2),
    ("--res 4", plain("generate", IMAGE, "-o", "out", "--res", "4"), 2),
    ("--batch-size 0", plain(*GEN, "--batch-size", "0"), 2),
    ("negative seed", plain(*GEN, "--seed", "-1"), 2),
    ("--pipeline folder that does not exist", plain(*GEN, "--pipeline", "no_such_folder"), 2),
    ("--device cuda on a machine without one", plain(*GEN, "--device", "cuda:7"), 2),
    ("reconstruct: input does not exist", plain("reconstruct", "nope.glb", "-o", "m.glb"), 2),
    ("reconstruct: a text file named .glb", with_file("t.glb", b"hello", ["reconstruct", "{}", "-o", "m.glb"]), 2),
    ("reconstruct: unknown output suffix", plain("reconstruct", GLB, "-o", "m.xyz"), 2),
    ("reconstruct: --ckpt not a checkpoint", plain("reconstruct", GLB, "-o", "m.glb", "--ckpt", "{d}"), 2),
    ("data toyshapes --n 0", plain("data", "toyshapes", "--n", "0", "--out", "ds"), 2),
    ("data toyshapes --views -1", plain("data", "toyshapes", "--n", "1", "--out", "ds", "--views", "-1"), 2),
    ("data import: no such mesh", plain("data", "import", "nope.glb", "--out", "ds"), 2),
    ("data view: not an object file", with_file("x.npz", b"junk", ["data", "view", "{}", "-o", "v.html"]), 2),
    ("train: --steps 0", plain("train", "ae", "--preset", "lite", "--out", "run", "--steps", "0"), 2),
    ("train: --data folder that does not exist", plain("train", "ae", "--preset", "lite", "--out", "run", "--data",
                                                      "nope"), 2),
    ("train: --resume with nothing to resume", plain("train", "ae", "--preset", "lite", "--out", "run", "--resume"),
     2),
    ("evaluate: unknown split", plain("evaluate", "ae", "--split", "nope"), 2),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="bad inputs through the command line, as a table")
    ap.add_argument("-k", default="", help="only cases whose kind or command contains this")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    rows, bad = [], 0
    print("| kind | command | exit | message |\n|---|---|---|---|")
    for kind, setup, want, *check in CASES:
        d = Path(tempfile.mkdtemp(prefix="c3d_bad_"))
        try:
            if args.k and args.k not in kind:
                continue
            cmd = setup(d)
            shown = " ".join(str(a).replace(str(d), "D").replace(str(ROOT), ".") for a in cmd)
            code, trace, message, seconds, out, err = run(cmd, d)
            problem = None
            if check and code == want:
                try:
                    problem = check[0](d, out, err)
                except Exception as e:  # the state the check reads is not there
                    problem = f"{type(e).__name__}: {e}"
            if problem:
                message = f"{message} [{problem}]"
            ok = code == want and not trace and not problem
            bad += not ok
            rows.append(dict(kind=kind, command=shown, exit=code, want=want, traceback=trace, message=message,
                             seconds=round(seconds, 1), ok=ok))
            flag = "" if ok else " ✗"
            msg = ("Traceback ... " if trace else "") + message.replace("|", "/").replace(str(d), "D")
            print(f"| {kind} | `{shown}` | {code}{flag} | {msg.splitlines()[-1] if msg else ''} |", flush=True)
        finally:
            for p in d.rglob("*"):
                if p.is_dir():
                    os.chmod(p, 0o755)
            shutil.rmtree(d, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"\n{len(rows) - bad} of {len(rows)} cases as promised")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
