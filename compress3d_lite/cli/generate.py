"""``compress3d-lite generate | reconstruct | demo``: the main job (one image in, one coloured
mesh out), a mesh through the VAE and back, and an offline page of the toy data."""

from __future__ import annotations

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
    from ..pipeline import Compress3DPipeline
    from ..stages.unet import check_guidance

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
    report = pipe.generate_files(args.images, out, format=args.format, num_inference_steps=args.steps, seed=args.seed,
                                 use_prior=not args.no_prior, mesh_resolution=args.res,
                                 image_guidance_scale=args.guidance_image, shape_guidance_scale=args.guidance_shape,
                                 batch_size=args.batch_size, overwrite=args.overwrite, sampler=args.sampler,
                                 start=args.start, about={"pipeline": str(args.pipeline), "load_seconds": load_seconds})
    return EXIT_BAD_INPUT if report["n_failed"] else 0


def cmd_reconstruct(args):
    from ..mesh import MeshingError
    from ..stages.vae import ReconstructError, reconstruct

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
