"""``compress3d-lite generate | reconstruct | demo``: the main job (one image in, one coloured
mesh out), a mesh through the VAE and back, and an offline page of the toy data."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..config import SAMPLERS, STARTS
from .common import EXIT_BAD_INPUT, CLIError, as_flags, check_seed


def check_device(device) -> None:
    """--device names a device this machine has (a CUDA index within its count), before loading."""
    if device is None:
        return
    import torch

    try:
        d = torch.device(device)
    except RuntimeError as e:
        raise CLIError(f"--device {device}: not a device name ({e})") from None
    if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise CLIError(f"--device {device}: this machine has {have} CUDA device(s); use cpu or omit --device")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {device}: MPS is not available here; use cpu or omit --device")


def cmd_generate(args):
    """One coloured mesh per image; a bad image is reported and skipped, the rest still done."""
    from ..data.io import prepare_output_folder
    from ..inference.unet import check_guidance
    from ..pipeline import Compress3DPipeline

    if (args.steps is not None and args.steps < 1) or args.res < 8 or args.batch_size < 1:
        raise CLIError("--steps must be >= 1, --res >= 8 and --batch-size >= 1")
    check_seed(args.seed, len(args.images))
    try:
        check_guidance(args.guidance_image, args.guidance_shape)  # before loading: the pipeline checks again
    except ValueError as e:
        raise as_flags(e) from None
    check_device(args.device)
    out = prepare_output_folder(args.output)  # before loading anything: a bad -o fails at once
    t0 = time.perf_counter()
    pipe = Compress3DPipeline.from_pretrained(args.pipeline, device=args.device)
    load_seconds = time.perf_counter() - t0
    try:
        pipe.check_settings(args.steps, args.res, args.guidance_image, args.guidance_shape, sampler=args.sampler,
                            start=args.start, use_prior=not args.no_prior)
    except (TypeError, ValueError) as e:
        raise as_flags(e) from None
    gi, gs = pipe.guidance(args.guidance_image, args.guidance_shape)
    print(f"generate: pipeline {args.pipeline} loaded in {load_seconds:.1f} s (image tower "
          f"{pipe.tower.identity()['name']}, device {pipe.device}); {'with' if not args.no_prior else 'without'} "
          f"the prior, {args.sampler or pipe.sampler} {args.steps or pipe.steps} steps, guidance image {gi:g} / shape {gs:g}"
          + (f", from the start estimate at t/T {pipe.start.cfg.strength:g}" if args.start == "regression" else ""))
    pipe.set_progress_bar_config(disable=True)
    report = generate_files(pipe, args.images, out, format=args.format, num_inference_steps=args.steps, seed=args.seed,
                            use_prior=not args.no_prior, mesh_resolution=args.res,
                            image_guidance_scale=args.guidance_image, shape_guidance_scale=args.guidance_shape,
                            batch_size=args.batch_size, overwrite=args.overwrite, sampler=args.sampler,
                            start=args.start, about={"pipeline": str(args.pipeline), "load_seconds": load_seconds})
    return EXIT_BAD_INPUT if report["n_failed"] else 0


def generate_files(pipe, images, out_dir, format: str = "glb", num_inference_steps: int | None = None, seed: int = 0,
                   use_prior: bool = True, mesh_resolution: int = 128, image_guidance_scale: float | None = None,
                   shape_guidance_scale: float | None = None, batch_size: int = 8, about: dict | None = None,
                   log=print, overwrite: bool = False, sampler: str | None = None, start: str = "noise") -> dict:
    """``generate``'s work: one coloured mesh per image file into ``out_dir`` (``<image stem>.<format>``,
    numbered when stems clash) and ``out_dir/generate.json``: the settings (the guidance scales used
    and where they came from) and per image its mesh, sizes and timings, or its error. Images go
    ``batch_size`` at a time through ``pipe``; image i uses seed ``seed + i`` whatever the batch
    size. A bad image, an empty field or a mesh that cannot be written (a full disk) is reported
    with ``log(..., file=sys.stderr)`` and skipped; the others are still done. Nothing is written
    when every image failed. ``about``: entries put first in the report. Returns the report
    (``report["n_failed"]`` counts failures). Before any computation the arguments are checked and
    a folder holding an earlier run's results is refused unless ``overwrite``, which first removes
    that run's meshes; one run writes into a folder at a time (``data.io.writing_into``)."""
    from ..config import check_count
    from ..data.io import OutputError, writing_into
    from ..mesh import MESH_FORMATS

    if f".{format}" not in MESH_FORMATS:
        raise ValueError(f"format must be one of {', '.join(f[1:] for f in MESH_FORMATS)}, got {format!r}")
    check_count("batch_size", batch_size, 1)
    pipe.check_settings(num_inference_steps, mesh_resolution, image_guidance_scale, shape_guidance_scale,
                        sampler=sampler, start=start, use_prior=use_prior)
    names = mesh_names(images)
    with writing_into(out_dir, "generate") as out:  # every image failed: no empty folder is left
        earlier = out / "generate.json"
        clashes = [p for p in [earlier] + [out / f"{n}.{format}" for n in names] if p.exists()]
        if clashes and not overwrite:
            more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
            raise OutputError(f"{clashes[0]}: exists{more}, from an earlier run; pass --overwrite to replace "
                              "that run's results, or choose another output folder")
        if overwrite:
            remove_earlier_run(out, earlier)
        gi, gs = pipe.guidance(image_guidance_scale, shape_guidance_scale)
        source = {"image": "command line" if image_guidance_scale is not None else "checkpoint default",
                  "shape": "command line" if shape_guidance_scale is not None else "checkpoint default"}
        settings = {"sampler": sampler or pipe.sampler,
                    "steps": pipe.steps if num_inference_steps is None else num_inference_steps, "seed": seed,
                    "use_prior": use_prior, "res": mesh_resolution, "guidance_image": gi, "guidance_shape": gs,
                    "guidance_source": source, "batch_size": batch_size, "start": start}
        report = {**(about or {}), "settings": settings, "images": [None] * len(images), "n_failed": 0}
        _generate_into(pipe, images, out, names, format, report, log)
    return report


def _generate_into(pipe, images, out, names, format, report, log) -> None:
    """Fill ``report`` image by image (see generate_files) and write it as ``out/generate.json``."""
    import torch

    from ..data.images import ImageError, load_image
    from ..data.io import OutputError, atomic_write_bytes
    from ..mesh import save_mesh

    s = report["settings"]

    def fail(i, path, message):
        log(f"error: {message if str(path) in message else f'{path}: {message}'}", file=sys.stderr)
        report["images"][i] = {"image": str(path), "error": message}
        report["n_failed"] += 1

    loaded = []
    for i, path in enumerate(images):
        try:
            loaded.append((i, path, load_image(path)))
        except ImageError as e:
            fail(i, path, str(e))
    for k in range(0, len(loaded), s["batch_size"]):
        chunk = loaded[k:k + s["batch_size"]]
        result = pipe([img for _, _, img in chunk], s["steps"], s["guidance_image"], s["guidance_shape"],
                      use_prior=s["use_prior"], mesh_resolution=s["res"], sampler=s["sampler"], start=s["start"],
                      generator=[torch.Generator().manual_seed(s["seed"] + i) for i, _, _ in chunk])
        per_image = {name: value / len(chunk) for name, value in result.timings.items()}
        for (i, path, _), mesh, error in zip(chunk, result.meshes, result.errors):
            if mesh is None:
                fail(i, path, error)
                continue
            try:
                mesh_path = save_mesh(mesh, out / f"{names[i]}.{format}")
            except OSError as e:  # a full disk, a quota: this mesh is lost, the others may still fit
                fail(i, path, f"{out / f'{names[i]}.{format}'}: could not be written ({e.strerror or e}); "
                              f"the mesh of {path} is lost, the other images go on")
                continue
            report["images"][i] = {"image": str(path), "mesh": str(mesh_path), "n_vertices": len(mesh.vertices),
                                   "n_faces": len(mesh.faces), "timings": per_image, "batch": len(chunk)}
            log(f"{path} -> {mesh_path} ({len(mesh.faces)} faces; batch of {len(chunk)}, "
                f"{per_image['total']:.2f} s per image: "
                + ", ".join(f"{n_} {v:.2f}" for n_, v in per_image.items() if n_ != "total") + ")")
    if report["n_failed"] < len(images):
        try:
            atomic_write_bytes(out / "generate.json", (json.dumps(report, indent=1) + "\n").encode())
        except OSError as e:
            raise OutputError(f"{out / 'generate.json'}: could not be written ({e.strerror or e}); the meshes "
                              "named above are complete: free space and run the same command with --overwrite "
                              "to redo the run with its report") from None
        log(f"wrote {out / 'generate.json'}")


def mesh_names(images) -> list:
    """The output stem of each image: its file stem, with _1, _2, ... where stems repeat (fixed
    before any image is read, so a failed image never shifts the others' names)."""
    used, names = set(), []
    for path in images:
        stem = Path(path).stem if isinstance(path, (str, Path)) else "image"
        name, n = stem, 1
        while name in used:
            name, n = f"{stem}_{n}", n + 1
        used.add(name)
        names.append(name)
    return names


def remove_earlier_run(out: Path, report: Path) -> None:
    """Delete the meshes an earlier ``generate`` listed in ``report`` (its generate.json), then the
    report itself: with ``overwrite`` the folder holds this run's results only."""
    if report.exists():
        try:
            earlier = json.loads(report.read_text()).get("images", [])
        except (OSError, ValueError):
            earlier = []
        for item in earlier:
            mesh = Path((item or {}).get("mesh", ""))
            if mesh.name and (out / mesh.name).is_file():
                (out / mesh.name).unlink()
        report.unlink()


def reconstruct(input_path, output, ckpt=None, res: int = 128, seed: int = 0, preset: str | None = None,
                log=print, overwrite: bool = False):
    """``reconstruct``'s work: checks first, then read -> encode -> decode -> mesh -> the input's
    original frame and scale (the inverse of its stored ``transform``) -> write .glb/.ply/.obj
    atomically. An existing output is refused unless ``overwrite``. Returns (mesh in the original
    frame, timings in seconds)."""
    import numpy as np

    from ..data.io import prepare_output_file
    from ..inference.vae import DEFAULT_VAE, ReconstructError, load_points, load_vae, reconstruct_points
    from ..mesh import MAX_MESH_RES, MESH_FORMATS, MeshingError, save_mesh
    from ..samples import shipped_checkpoint

    ckpt = ckpt or shipped_checkpoint(DEFAULT_VAE)
    output = Path(output)
    if output.suffix.lower() not in MESH_FORMATS:
        raise ReconstructError(f"{output}: unsupported output format '{output.suffix}' "
                               f"(supported: {', '.join(MESH_FORMATS)})")
    if not 8 <= res <= MAX_MESH_RES:
        raise ReconstructError(f"--res must be in 8..{MAX_MESH_RES}, got {res}")
    prepare_output_file(output, overwrite, inputs=[input_path])  # before any work: exists, a folder, the input
    timings = {}
    t = time.perf_counter()
    model, cfg = load_vae(ckpt, preset=preset)
    timings["load_checkpoint"] = time.perf_counter() - t
    n_points = int(cfg.get("train", {}).get("n_points", 2048))
    t = time.perf_counter()
    data = load_points(input_path, n_points, seed)
    timings["read_input"] = time.perf_counter() - t
    log(f"reconstruct {input_path} with {ckpt} (preset {cfg.get('preset')}, step {cfg.get('step')}): "
        f"{len(data['points'])} surface points, grid {res}^3")
    try:
        mesh = reconstruct_points(model, data["points"], data["colors"], res, timings)
    except MeshingError as e:
        raise ReconstructError(f"{input_path}: {e}") from None
    t = time.perf_counter()
    mesh = mesh.apply_transform(np.linalg.inv(np.asarray(data["transform"], np.float64)))  # back to the input's frame
    save_mesh(mesh, output)
    timings["write"] = time.perf_counter() - t
    model_time = sum(timings[k] for k in ("encode", "decode", "field", "marching_cubes", "colors"))
    log("timing: " + " | ".join(f"{k} {v:.3f} s" for k, v in timings.items())
        + f" | encode+decode+mesh {model_time:.3f} s")
    lo, hi = mesh.bounds
    log(f"wrote {output}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, in the input's frame "
        f"(bounds {np.round(lo, 3).tolist()} .. {np.round(hi, 3).tolist()})")
    return mesh, timings


def cmd_reconstruct(args):
    from ..inference.vae import ReconstructError
    from ..mesh import MeshingError

    check_seed(args.seed)
    try:
        reconstruct(args.input, args.output, ckpt=args.ckpt, res=args.res, seed=args.seed, preset=args.preset,
                    overwrite=args.overwrite)
    except (ReconstructError, MeshingError) as e:
        raise CLIError(str(e)) from None
    return 0


def cmd_demo(args):
    """A tour of the data: a few toy objects + one imported mesh, on one offline HTML page."""
    from .. import viz
    from ..config import SampleSpec
    from ..data.io import load_object
    from ..data.mesh_import import import_mesh
    from ..data.render import ray_backend
    from ..data.toyshapes import write_toyshapes
    from ..samples import sample_path
    from .data import object_figures

    out = Path(args.out)
    check_seed(args.seed, args.n)
    if args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    spec = SampleSpec(views=4, resolution=128)
    print(f"compress3d_lite demo (ray caster: {ray_backend()}): toy objects -> {out / 'toyshapes'}")
    entries = write_toyshapes(args.n, out / "toyshapes", spec, seed=args.seed, workers=1)
    figures = [(f"toy {e['category']}", load_object(out / "toyshapes" / e["file"])) for e in entries[:4]]
    sample = sample_path("meshes", "toy_lamp.glb")
    figures.append((f"imported {sample.name}", import_mesh(sample, spec, seed=args.seed)))
    page = viz.save_html([f for title, obj in figures for f in object_figures(obj, title)],
                         out / "index.html", title="compress3d_lite demo")
    print(f"wrote {page}: open it in a browser (it works offline) to explore {len(figures)} objects "
          f"(coloured points, occupancy, rendered views and depth)")
    return 0


def add_parsers(sub) -> None:
    g = sub.add_parser("generate", help="the main job: image(s) in, one coloured mesh each out",
                       description="One coloured mesh per image, through the four stages (image tower, prior, "
                                   "triplane diffusion, VAE decoder). A bad image is reported and skipped; the "
                                   "others are still done (exit code 2 when any failed).")
    g.add_argument("images", nargs="+", help="image files (PNG/JPEG/...; RGBA is composited on white)")
    g.add_argument("-o", "--output", required=True, help="output folder: one mesh per image + generate.json")
    g.add_argument("--format", default="glb", choices=["glb", "ply", "obj"],
                   help="mesh file format, all with vertex colours (default %(default)s)")
    g.add_argument("--steps", type=int, default=None,
                   help="sampler steps of the triplane diffusion (default: the checkpoint's, course: 25)")
    g.add_argument("--sampler", default=None, choices=SAMPLERS,
                   help="ddim or dpm (DPM-Solver++) for a DDPM UNet, euler for a rectified-flow one "
                        "(default: the checkpoint's)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the noise; image i of the list uses seed + i (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="images run through the prior and the UNet together (default %(default)s)")
    g.add_argument("--no-prior", action="store_true", help="condition on the image embedding only (ablation)")
    g.add_argument("--start", default="noise", choices=STARTS,
                   help="where the triplane diffusion starts: noise (the paper; default) or regression (the UNet's "
                        "start estimate from the two embeddings, noised partway: better colours; docs/stages.md)")
    g.add_argument("--res", type=int, default=128, help="marching-cubes grid (default %(default)s)")
    g.add_argument("--guidance-image", type=float, default=None,
                   help="image guidance scale (default: the checkpoint's measured best; paper best 5.0)")
    g.add_argument("--guidance-shape", type=float, default=None,
                   help="shape guidance scale (default: the checkpoint's measured best; paper best 1.0)")
    g.add_argument("--pipeline", default="course",
                   help="preset name, pipeline folder or Hub repo id of one (default: the shipped course checkpoints)")
    g.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in the output folder (default: refuse)")
    g.set_defaults(func=cmd_generate)

    rc = sub.add_parser("reconstruct", help="a mesh or object through the VAE and back to a mesh")
    rc.add_argument("input", help="a GLB/glTF/OBJ/PLY mesh or an object .npz")
    rc.add_argument("-o", "--output", required=True, help="output mesh: .glb, .ply or .obj")
    rc.add_argument("--ckpt", default=None, help="VAE checkpoint folder (default: the shipped course VAE)")
    rc.add_argument("--res", type=int, default=128, help="marching-cubes grid resolution (default %(default)s)")
    rc.add_argument("--seed", type=int, default=0, help="seed of the surface sampling (default %(default)s)")
    rc.add_argument("--preset", default=None, help="require the checkpoint to be of this preset")
    rc.add_argument("--overwrite", action="store_true", help="replace the output file if it exists (default: refuse)")
    rc.set_defaults(func=cmd_reconstruct)

    d = sub.add_parser("demo", help="an offline HTML page of a few toy objects and one imported mesh (no model)")
    d.add_argument("--out", default="outputs/demo", help="output folder (default %(default)s)")
    d.add_argument("--n", type=int, default=4, help="toy objects to make (default %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="seed of the toy objects (default %(default)s)")
    d.set_defaults(func=cmd_demo)
