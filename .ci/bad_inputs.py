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
        cmd = [sys.executable, "-c", argv[1]] if argv and argv[0] == "PY" else CLI + [str(a) for a in argv]
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
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



# ------------------------------------------------------------------------------------------
# issue: nothing a user made is lost, no run mixes with another, every file read is checked

SMALL = ["--views", "0", "--points", "256", "--occ", "256", "--workers", "1"]
PIPE_PARTS = {"vae": "vae_course", "embed": "embed_course", "prior": "prior_course", "unet": "unet_course"}


def toy_data(d, name="ds", n=4, *extra):
    subprocess.run(CLI + ["data", "toyshapes", "--n", str(n), "--out", str(d / name), *SMALL, *extra],
                   check=True, capture_output=True)
    return d / name


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def train_on(d, data, *extra):
    return ["train", "ae", "--preset", "lite", "--out", d / "run", "--steps", "2", "--batch-size", "2",
            "--data", data, *extra]


def overwrite_keeps_user_data(d):
    (d / "run").mkdir()
    toy_data(d / "run", "data")
    subprocess.run(CLI + [str(a) for a in train_on(d, d / "run" / "data")], check=True, capture_output=True)
    (d / "before.json").write_text(json.dumps(sorted(snapshot(d / "run" / "data"))))
    return train_on(d, d / "run" / "data", "--overwrite")


def data_kept(d, out, err):
    kept = json.loads((d / "before.json").read_text())
    now = sorted(snapshot(d / "run" / "data")) if (d / "run" / "data").exists() else []
    return None if now == kept else f"data set lost: {len(kept)} files before, {len(now)} after"


def view_over_a_file(d):
    toy_data(d, n=1)
    (d / "mine.html").write_text("my notes")
    return ["data", "view", d / "ds" / "000000.npz", "-o", d / "mine.html"]


def notes_kept(d, out, err):
    return None if (d / "mine.html").read_text() == "my notes" else "mine.html was replaced"


def view_over_its_input(d):
    toy_data(d, n=1)
    (d / "size").write_text(str((d / "ds" / "000000.npz").stat().st_size))
    return ["data", "view", d / "ds" / "000000.npz", "-o", d / "ds" / "000000.npz", "--overwrite"]


def input_kept(d, out, err):
    return None if (d / "ds" / "000000.npz").read_bytes()[:2] == b"PK" else "the input .npz was replaced"


def dry_run_json_over_a_file(d):
    (d / "mine.html").write_text("my notes")
    return ["train", "prior", "--preset", "lite", "--dry-run", "--json", d / "mine.html"]


def sample_meshes_over_files(d):
    (d / "m").mkdir()
    (d / "m" / "crate.obj").write_text("my notes")
    return ["data", "sample-meshes", "--out", d / "m"]


def crate_kept(d, out, err):
    return None if (d / "m" / "crate.obj").read_text() == "my notes" else "crate.obj was replaced"


def two_trainings_at_once(d):
    data = toy_data(d)
    argv = [str(a) for a in train_on(d, data)]
    argv[argv.index("--steps") + 1] = "100000"
    holder = subprocess.Popen(CLI + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (d / "holder.pid").write_text(str(holder.pid))
    for _ in range(600):  # until it is training (its log or checkpoint exists)
        if (d / "run" / "log.jsonl").exists() or (d / "run" / "checkpoint").exists() or holder.poll() is not None:
            break
        time.sleep(0.1)
    time.sleep(1)
    return train_on(d, data, "--overwrite")


def holder_untouched(d, out, err):
    pid = int((d / "holder.pid").read_text())
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        return "the first training was stopped"
    return None


def trained_run(d, data_name="ds", **kw):
    data = toy_data(d, data_name)
    subprocess.run(CLI + [str(a) for a in train_on(d, data)], check=True, capture_output=True)
    return data


def resume_other_data(d):
    trained_run(d)
    other = toy_data(d, "other", 4, "--seed", "3")
    return train_on(d, other, "--resume", "--steps", "4")


def resume_finished(d):
    data = trained_run(d)
    (d / "model.bytes").write_bytes((d / "run" / "model" / "model.safetensors").read_bytes())
    return ["train", "ae", "--preset", "lite", "--out", d / "run", "--data", data, "--resume"]


def model_kept(d, out, err):
    same = (d / "run" / "model" / "model.safetensors").read_bytes() == (d / "model.bytes").read_bytes()
    step = json.loads((d / "run" / "checkpoint" / "config.json").read_text())["step"]
    return None if same and step == 2 else f"trained on to step {step}"


def resume_with(*extra):
    def setup(d):
        data = trained_run(d)
        argv = train_on(d, data, "--resume")
        for flag, value in zip(extra[::2], extra[1::2]):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        return argv
    return setup


def out_is_data(d):
    data = toy_data(d)
    return ["train", "ae", "--preset", "lite", "--out", data, "--steps", "2", "--batch-size", "2", "--data", data]


def out_inside_data(d):
    data = toy_data(d)
    return ["train", "ae", "--preset", "lite", "--out", data / "run", "--steps", "2", "--batch-size", "2",
            "--data", data]


def hostile_index(edit):
    """A toy data set whose index.json is then changed by ``edit(doc, d) -> doc or bytes``."""
    def setup(d):
        data = toy_data(d)
        doc = json.loads((data / "index.json").read_text())
        new = edit(doc, d)
        (data / "index.json").write_bytes(new if isinstance(new, bytes) else json.dumps(new).encode())
        return ["train", "ae", "--preset", "lite", "--out", d / "run", "--steps", "2", "--batch-size", "2",
                "--data", data]
    return setup


def outside_file(doc, d):
    (d / "secret").mkdir()
    shutil.copy(d / "ds" / "000000.npz", d / "secret" / "x.npz")
    return doc


def index_entry(file):
    def edit(doc, d):
        outside_file(doc, d)
        doc["objects"][0]["file"] = file(d) if callable(file) else file
        return doc
    return edit


def hostile_object(change):
    """A toy data set whose first object gets ``change(arrays)``; training on it must name the file."""
    def setup(d):
        import numpy as np
        data = toy_data(d)
        with np.load(data / "000000.npz") as z:
            arrays = {k: z[k] for k in z.files}
        change(arrays)
        with open(data / "000000.npz", "wb") as f:
            np.savez(f, **arrays)
        return ["train", "ae", "--preset", "lite", "--out", d / "run", "--steps", "2", "--batch-size", "2",
                "--data", data]
    return setup


def no_run_folder(d, out, err):
    left = sorted(p.name for p in (d / "run").iterdir()) if (d / "run").exists() else None
    return None if left is None else f"left a run folder holding {left}"


def bad_weights(change, what="vae"):
    """The shipped VAE with its weights changed by ``change(tensor) -> tensor``; reconstruct with it."""
    def setup(d):
        import torch
        from safetensors.torch import load_file, save_file
        shutil.copytree(VAE, d / "vae")
        w = load_file(str(d / "vae" / "model.safetensors"))
        save_file({k: change(v) for k, v in w.items()}, str(d / "vae" / "model.safetensors"))
        return ["reconstruct", GLB, "-o", d / "m.glb", "--ckpt", d / "vae", "--res", "32"]
    return setup


def pipeline_with(edit, part="unet", file="config.json"):
    """The shipped pipeline copied to D/pipe with ``edit(cfg)`` applied to one part's config.json."""
    def setup(d):
        for k, v in PIPE_PARTS.items():
            shutil.copytree(SAMPLES / "checkpoints" / v, d / "pipe" / k)
        path = d / "pipe" / part / file
        new = edit(json.loads(path.read_text()))
        path.write_bytes(new if isinstance(new, bytes) else json.dumps(new).encode())
        return ["generate", IMAGE, "-o", d / "out", "--pipeline", d / "pipe", "--res", "32", "--steps", "2"]
    return setup


def set_in(path, value):
    def edit(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return cfg
    return edit


DELETE = object()


def no_out_folder(d, out, err):
    return None if not (d / "out").exists() else f"left {sorted(p.name for p in (d / 'out').iterdir())} in out/"


def no_flag_named(flag):
    def check(d, out, err):
        line = next((x for x in err.splitlines() if x.startswith("error:")), "")
        return f"blames {flag}, an option nobody gave" if flag in line else no_out_folder(d, out, err)
    return check


def blames(needle):
    """The error line must name ``needle`` (the file at fault), not some other input."""
    def check(d, out, err):
        line = next((x for x in err.splitlines() if x.startswith("error:")), "")
        return None if needle in line else f"does not blame {needle}"
    return check


PY_HEAD = """
import sys, numpy as np, torch
from compress3d_lite.pipeline import Compress3DPipeline
pipe = Compress3DPipeline.from_pretrained("course")
pipe.set_progress_bar_config(disable=True)
def computed(*a, **k):
    raise AssertionError("the diffusion ran before the argument was checked")
pipe.sample_latents = computed
try:
{call}
except (ValueError, TypeError) as e:
    print(f"error: {{type(e).__name__}}: {{e}}", file=sys.stderr); sys.exit(2)
print("accepted without a word", file=sys.stderr)
"""


def python_api(call):
    return lambda d: ["PY", PY_HEAD.format(call="    " + call.replace("\n", "\n    "))]


def small_disk(d, kb):
    mount = d / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(mount)], capture_output=True)
    if r.returncode:
        raise SkipCase("cannot mount a small file system here (needs root)")
    return mount


class SkipCase(Exception):
    pass


def disk_full_generate(d):
    disk = small_disk(d, 48)
    shutil.copy(IMAGE, d / "a.png")
    shutil.copy(IMAGE, d / "b.png")
    return ["generate", d / "a.png", d / "b.png", "-o", disk / "out", "--res", "64", "--steps", "2"]


def names_each_mesh(d, out, err):
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    tmp = [p.name for p in (d / "disk").rglob("*") if ".tmp" in p.name]
    if tmp:
        return f"left temporary files {tmp}"
    named = all(any(f"{s}.glb" in x for x in lines) for s in ("a", "b"))
    return None if named else f"errors {lines} do not name a.glb and b.glb"


def disk_full_checkpoint(d):
    data = toy_data(d)
    disk = small_disk(d, 320)
    argv = ["train", "ae", "--preset", "lite", "--out", disk / "run", "--steps", "4", "--batch-size", "2",
            "--data", data]
    (d / "argv.json").write_text(json.dumps([str(a) for a in argv]))
    return argv


def then_messages_agree(d, out, err):
    """After the failed write: what a plain run and a resume say must point to the same remedy."""
    argv = json.loads((d / "argv.json").read_text())
    plain_ = subprocess.run(CLI + argv, capture_output=True, text=True).stderr.strip().splitlines()[-1:]
    resume = subprocess.run(CLI + argv + ["--resume"], capture_output=True, text=True).stderr.strip().splitlines()[-1:]
    both = plain_ + resume
    if any("Traceback" in x for x in both):
        return "a traceback"
    says_resume = ["--resume" in x and "nothing to resume" not in x for x in both]
    return None if says_resume[0] == says_resume[1] or not says_resume[0] else f"they disagree: {both}"


def sigterm_while_making_toy_data(d):
    argv = ["train", "ae", "--preset", "lite", "--out", str(d / "run"), "--steps", "2", "--batch-size", "2",
            "--n-train", "24"]
    p = subprocess.Popen(CLI + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if len(list((d / "run" / "data").glob("*.npz"))) >= 2 or p.poll() is not None:
            break
        time.sleep(0.05)
    p.send_signal(15)
    p.wait(timeout=60)
    return argv


def sigterm_toyshapes_workers(d):
    argv = ["data", "toyshapes", "--n", "40", "--out", str(d / "ds"), "--views", "2", "--res", "64",
            "--points", "512", "--occ", "512", "--workers", "2"]
    p = subprocess.Popen(CLI + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if len(list((d / "ds").glob("*.npz"))) >= 2 or p.poll() is not None:
            break
        time.sleep(0.05)
    p.send_signal(15)
    p.wait(timeout=60)
    time.sleep(0.5)
    before = sorted(x.name for x in (d / "ds").glob("*.npz"))
    time.sleep(3)
    after = sorted(x.name for x in (d / "ds").glob("*.npz"))
    (d / "late.json").write_text(json.dumps(sorted(set(after) - set(before))))
    return argv


def no_late_writes(d, out, err):
    late = json.loads((d / "late.json").read_text())
    done = json.loads((d / "ds" / "index.json").read_text())
    if late:
        return f"{len(late)} objects written after the parent died"
    return None if done.get("complete") and len(done["objects"]) == 40 else "not finished by the same command"


def sigint_generate(d):
    for k in range(6):
        shutil.copy(IMAGE, d / f"i{k}.png")
    argv = ["generate", *[d / f"i{k}.png" for k in range(6)], "-o", d / "out", "--res", "64", "--steps", "20",
            "--batch-size", "1"]
    p = subprocess.Popen(CLI + [str(a) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):
        if list((d / "out").glob("*.glb")) or p.poll() is not None:
            break
        time.sleep(0.05)
    p.send_signal(2)
    (d / "interrupted.txt").write_text(p.communicate(timeout=60)[1])
    return argv + ["--overwrite"]


def interrupt_said_what_to_run(d, out, err):
    said = (d / "interrupted.txt").read_text().strip().splitlines()
    last = said[-1] if said else ""
    return None if "--overwrite" in last or "rerun" in last else f"the interrupt said only {last!r}"


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
    ("image over Pillow's decompression limit", decompression_bomb, 0, one_line_warning),
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
    # --- nothing a user made is lost
    ("train --overwrite with --data OUT/data (the user's data set)", overwrite_keeps_user_data, 0, data_kept),
    ("data view -o an existing file", view_over_a_file, 2, notes_kept),
    ("data view -o its own input, even with --overwrite", view_over_its_input, 2, input_kept),
    ("train --dry-run --json an existing file", dry_run_json_over_a_file, 2, notes_kept),
    ("data sample-meshes into a folder with the user's files", sample_meshes_over_files, 2, crate_kept),
    # --- no run mixes with another
    ("a second training into a folder one is training in", two_trainings_at_once, 2, holder_untouched),
    ("--resume on another --data", resume_other_data, 2),
    ("--resume on a finished run, no --steps", resume_finished, 0, model_kept),
    ("--resume with another --batch-size", resume_with("--batch-size", "4"), 2),
    ("--resume with another --seed", resume_with("--seed", "7"), 2),
    ("--resume with --steps below the checkpoint's", resume_with("--steps", "1"), 2),
    ("--out equal to --data", out_is_data, 2),
    # --- index.json is checked
    ("index.json entry with an absolute path", hostile_index(index_entry(lambda d: str(d / "secret" / "x.npz"))), 2,
     no_run_folder),
    ("index.json entry with ../..", hostile_index(index_entry("../secret/x.npz")), 2, no_run_folder),
    ("index.json a list, not an object", hostile_index(lambda doc, d: doc["objects"]), 2, no_run_folder),
    ('index.json "objects": 5', hostile_index(lambda doc, d: {**doc, "objects": 5}), 2, no_run_folder),
    ('index.json entry without "file"', hostile_index(lambda doc, d: {**doc, "objects": [{"n": 1}]}), 2,
     no_run_folder),
    ("index.json with no objects", hostile_index(lambda doc, d: {**doc, "objects": []}), 2, no_run_folder),
    ("index.json not UTF-8", hostile_index(lambda doc, d: b'{"format": "\xff\xfe"}'), 2, no_run_folder),
    ("index.json nested 100000 deep", hostile_index(lambda doc, d: b"[" * 100000 + b"]" * 100000), 2,
     no_run_folder),
    ("an object with 0 points", hostile_object(lambda a: a.update(points=a["points"][:0], colors=a["colors"][:0],
                                                                  point_parts=a["point_parts"][:0])), 2,
     blames("000000.npz")),
    ("an object with NaN colours", hostile_object(lambda a: a["colors"].__setitem__(slice(0, 10), float("nan"))), 2,
     blames("000000.npz")),
    # --- checkpoints and pipeline folders
    ("weights all NaN", bad_weights(lambda v: v * float("nan")), 2, blames("model.safetensors")),
    ("weights infinite", bad_weights(lambda v: v * 0 + float("inf")), 2, blames("model.safetensors")),
    ("weights of integer type", bad_weights(lambda v: v.long()), 2, blames("model.safetensors")),
    ("weights of boolean type", bad_weights(lambda v: v > 0), 2, blames("model.safetensors")),
    ("UNet config without latent_stats", pipeline_with(set_in(["latent_stats"], DELETE)), 2, no_out_folder),
    ("UNet latent_stats of the wrong length", pipeline_with(set_in(["latent_stats", "mean"], [0.0, 0.0])), 2,
     no_out_folder),
    ("UNet guidance not a number", pipeline_with(set_in(["guidance", "image"], "strong")), 2, no_out_folder),
    ("UNet config: unknown sampler", pipeline_with(set_in(["diffusion", "sampler"], "heun")), 2, no_out_folder),
    ("UNet config.json a list", pipeline_with(lambda cfg: [cfg]), 2, no_out_folder),
    ("UNet heads that do not divide the channels", pipeline_with(set_in(["model", "heads"], 3)), 2, no_out_folder),
    ("UNet config: sample_steps 0", pipeline_with(set_in(["diffusion", "sample_steps"], 0)), 2,
     no_flag_named("--steps")),
    # --- the Python API checks its arguments
    ("pipe(float image in 0..255)", python_api("pipe(np.full((64, 64, 3), 200.0))"), 2),
    ("pipe(int64 image)", python_api("pipe(np.full((64, 64, 3), 300, np.int64))"), 2),
    ("pipe(empty array)", python_api("pipe(np.zeros((0, 0, 3), np.uint8))"), 2),
    ("pipe(num_inference_steps=0)", python_api("pipe(np.zeros((64, 64, 3), np.uint8), num_inference_steps=0)"), 2),
    ("generate_files(pipe, format='stl')",
     python_api("import tempfile\nfrom compress3d_lite.cli.generate import generate_files\n"
                "generate_files(pipe, ['" + str(IMAGE) + "'], tempfile.mkdtemp() + '/o', format='stl')"), 2),
    ("generate_files(pipe, batch_size=0)",
     python_api("import tempfile\nfrom compress3d_lite.cli.generate import generate_files\n"
                "generate_files(pipe, ['" + str(IMAGE) + "'], tempfile.mkdtemp() + '/o', batch_size=0)"), 2),
    # --- faults
    ("disk full while generate writes meshes", disk_full_generate, 2, names_each_mesh),
    ("disk full at a training checkpoint", disk_full_checkpoint, 2, then_messages_agree),
    ("SIGTERM while train makes its toy data, then the same command", sigterm_while_making_toy_data, 0),
    ("SIGTERM during toyshapes --workers 2, then the same command", sigterm_toyshapes_workers, 0, no_late_writes),
    # --- further kinds: what a course's students produce
    ("--data is a file, not a folder", lambda d: train_on(d, (d / "f").write_text("x") and d / "f"), 2,
     no_run_folder),
    ("index.json is a folder", lambda d: (d / "ds" / "index.json").mkdir(parents=True) or train_on(d, d / "ds"), 2,
     no_run_folder),
    ("index.json lists a file that is missing", hostile_index(index_entry("nope.npz")), 2, no_run_folder),
    ("index.json entry names a folder", hostile_index(lambda doc, d: (d / "ds" / "sub.npz").mkdir()
                                                      or index_entry("sub.npz")(doc, d)), 2, no_run_folder),
    ('index.json entry "file": 7', hostile_index(index_entry(7)), 2, no_run_folder),
    ("an object with colours in 0..255", hostile_object(lambda a: a.update(colors=a["colors"] * 255)), 2, blames("000000.npz")),
    ("an object with points far outside the box", hostile_object(lambda a: a["points"].__setitem__(0, 1e4)), 2, blames("000000.npz")),
    ("an object with float images", hostile_object(lambda a: a.update(
        images=a.get("images", __import__("numpy").zeros((1, 8, 8, 4), "uint8")).astype("float32"),
        depths=__import__("numpy").zeros((1, 8, 8), "float32"), cam2world=__import__("numpy").eye(4)[None],
        intrinsics=__import__("numpy").eye(3)[None])), 2, blames("000000.npz")),
    ("an object .npz cut in half", lambda d: (toy_data(d), (d / "ds" / "000001.npz").write_bytes(
        (d / "ds" / "000001.npz").read_bytes()[:2000]), train_on(d, d / "ds"))[-1], 2, blames("000001.npz")),
    ("checkpoint config.json empty", lambda d: (shutil.copytree(VAE, d / "vae"), (d / "vae" / "config.json").write_text(""),
                                                ["reconstruct", GLB, "-o", d / "m.glb", "--ckpt", d / "vae"])[-1], 2),
    ('checkpoint config "model": "big"', lambda d: (shutil.copytree(VAE, d / "vae"), (d / "vae" / "config.json").write_text(
        json.dumps({**json.loads((VAE / "config.json").read_text()), "model": "big"})),
        ["reconstruct", GLB, "-o", d / "m.glb", "--ckpt", d / "vae"])[-1], 2),
    ("weights file of 0 bytes", lambda d: (shutil.copytree(VAE, d / "vae"), (d / "vae" / "model.safetensors").write_bytes(b""),
                                           ["reconstruct", GLB, "-o", d / "m.glb", "--ckpt", d / "vae"])[-1], 2),
    ("UNet latent_stats with std 0", pipeline_with(set_in(["latent_stats", "std"], [0.0] * 8)), 2, blames("unet/config.json")),
    ("UNet guidance of 1e308", pipeline_with(set_in(["guidance", "shape"], 1e308)), 2, blames("unet/config.json")),
    ("--resume with another --n-train (another toy set)", lambda d: (
        subprocess.run(CLI + [str(a) for a in train_args(d)], check=True, capture_output=True),
        train_args(d, "--resume", "--n-train", "6", "--steps", "6"))[-1], 2),
    ("--out inside --data", out_inside_data, 2),
    ("reconstruct -o its own input, with --overwrite", lambda d: (shutil.copy(GLB, d / "in.glb"),
                                                                  ["reconstruct", d / "in.glb", "-o", d / "in.glb",
                                                                   "--overwrite"])[-1], 2),
    ("data view -o a folder", lambda d: (toy_data(d, n=1), ["data", "view", d / "ds" / "000000.npz", "-o", d])[-1], 2),
    ("evaluate --json an existing file", lambda d: ((d / "mine.html").write_text("my notes"),
                                                    ["evaluate", "ae", "--n", "2", "--res", "16", "--json",
                                                     d / "mine.html"])[-1], 2, notes_kept),
    ("SIGINT during generate: the message says what to run", sigint_generate, 0, interrupt_said_what_to_run),
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
            try:
                cmd = setup(d)
            except SkipCase as e:
                print(f"| {kind} | (skipped: {e}) | - | - |", flush=True)
                continue
            shown = ("python: " + "; ".join(x.strip() for x in cmd[1].split("try:\n", 1)[1].split("\nexcept")[0]
                                            .splitlines()) if cmd[0] == "PY" else
                     " ".join(str(a).replace(str(d), "D").replace(str(ROOT), ".") for a in cmd))
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
            if (d / "disk").is_mount():
                subprocess.run(["umount", "-l", str(d / "disk")], capture_output=True)
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
