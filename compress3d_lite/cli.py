"""``compress3d-lite``: the command line.

    compress3d-lite generate IMAGE... -o OUT_DIR [--format glb|ply|obj] [--steps N] [--seed S] [--no-prior] [--res R]
                                                        the main job: one image in, one coloured mesh out
    compress3d-lite demo [--out DIR]                    an offline HTML page of a few toy objects and an imported mesh
    compress3d-lite data toyshapes --n N --out DIR [--views V] [--seed S] [--res R] [--workers K] [--png]
    compress3d-lite data import PATH... --out DIR [--views V] [--seed S] [--res R]
    compress3d-lite data objaverse (--uids FILE | --n N) --out DIR [--source DIR] [--workers K] [--filter CLS_DIR]
    compress3d-lite data quality-filter train --data DIR --labels CSV --out CLS_DIR
    compress3d-lite data view OBJECT.npz [-o OUT.html]
    compress3d-lite data sample-meshes --out DIR       our own small mesh files (data_samples/meshes)
    compress3d-lite train ae --preset {lite,course,colab_t4,a100_full} [--data DIR] --out DIR [--resume]
    compress3d-lite train embed --preset {lite,course,colab_t4,a100_full} [--data DIR] --out DIR [--resume]
    compress3d-lite train prior --preset {lite,course,colab_t4,a100_full} --embed DIR --out DIR [--resume]
    compress3d-lite train diffusion --preset P --vae DIR --embed DIR --out DIR [--resume]
    compress3d-lite train {ae,embed,prior,diffusion} --preset P --dry-run [--json FILE]
    compress3d-lite reconstruct MESH_OR_NPZ [--ckpt CKPT] -o OUT.glb [--res R] [--seed S] [--preset P]
    compress3d-lite evaluate ae [--ckpt CKPT] [--split test] [--json OUT] [--n N] [--res R] [--preset P]
    compress3d-lite evaluate embed [--embed DIR] [--split test] [--json OUT] [--n N]
    compress3d-lite evaluate generate [--pipeline DIR] [--split test] [--json OUT] [--n N]
    compress3d-lite evaluate paper [--pipeline P] [--n N] [--ablations prior,guidance,attention,attn_res|all] --out DIR
    compress3d-lite evaluate prior [--prior DIR] [--embed DIR] [--split test] [--json OUT] [--n N] [--guidance G]

Bad input ends with a one-line ``error: <file>: <problem>`` on stderr and exit code 2.
A command group without a subcommand (``compress3d-lite``, ``compress3d-lite train``) prints its help.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _spec_from_args(args, **overrides):
    from .config import SampleSpec

    spec = SampleSpec(views=args.views, resolution=args.res, n_points=args.points,
                      n_uniform=args.occ // 2, n_near=args.occ - args.occ // 2)
    for k, v in overrides.items():
        setattr(spec, k, v)
    if spec.views < 0 or spec.resolution < 8 or spec.n_points < 1 or args.occ < 2:
        raise CLIError("--views must be >= 0, --res >= 8, --points >= 1 and --occ >= 2")
    return spec


def _add_sampling_args(p, views=4):
    p.add_argument("--views", type=int, default=views, help="rendered views per object (default %(default)s)")
    p.add_argument("--res", type=int, default=128, help="view resolution in pixels (default %(default)s)")
    p.add_argument("--points", type=int, default=4096, help="surface points per object (default %(default)s)")
    p.add_argument("--occ", type=int, default=16384,
                   help="occupancy queries per object, half uniform, half near the surface (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")


# ------------------------------------------------------------------------------------------
# commands


def cmd_toyshapes(args):
    from .data.render import ray_backend
    from .data.toyshapes import write_toyshapes

    if args.n < 1:
        raise CLIError("--n must be >= 1")
    spec = _spec_from_args(args)
    print(f"toyshapes: {args.n} objects, seed {args.seed}, {spec.views} views at {spec.resolution}px, "
          f"ray caster: {ray_backend()}, {args.workers} worker(s)")
    t0 = time.time()
    write_toyshapes(args.n, args.out, spec, seed=args.seed, workers=args.workers, png=args.png,
                    start=args.start)
    dt = time.time() - t0
    print(f"wrote {args.n} objects to {args.out} in {dt:.1f} s ({args.n / dt:.1f} objects/s)")
    return 0


def cmd_import(args):
    from .data.mesh_import import import_files

    spec = _spec_from_args(args)
    entries, failures = import_files(args.paths, args.out, spec, seed=args.seed)
    if entries:
        print(f"imported {len(entries)} object(s) into {args.out}")
    else:
        print("imported nothing; no output written")
    if failures:
        print(f"{len(failures)} of {len(entries) + len(failures)} file(s) failed:", file=sys.stderr)
        for path, message in failures:
            print(f"  error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def cmd_objaverse(args):
    """Objaverse (or --source DIR) -> OUT/objects/<uid>.npz + index.json + manifest.json, resumable."""
    from .data.objaverse import ObjaverseError, prepare

    spec = _spec_from_args(args)
    if args.workers < 1 or args.timeout < 0:
        raise CLIError("--workers must be >= 1 and --timeout >= 0")
    try:
        m = prepare(args.out, spec, source=args.source, uids_file=args.uids, n=args.n, shuffle=args.shuffle,
                    seed=args.seed, workers=args.workers, timeout=args.timeout, filter_dir=args.filter,
                    threshold=args.threshold)
    except ObjaverseError as e:
        raise CLIError(str(e)) from None
    c = m["counts"]
    print(f"objaverse: {c['requested']} requested: {c['done_now']} done now, {c['skipped_done']} skipped (done), "
          f"{c['failed']} failed, {c['filtered']} filtered; {c['total_ok']} objects in "
          f"{Path(args.out) / 'index.json' if c['total_ok'] else 'no index.json'} ({m['seconds']:.1f} s)")
    for f in m["failures"][:20]:
        print(f"  error: {f['reason']}", file=sys.stderr)
    if len(m["failures"]) > 20:
        print(f"  ... {len(m['failures']) - 20} more in {Path(args.out) / 'manifest.json'}", file=sys.stderr)
    return EXIT_BAD_INPUT if c["failed"] else 0


def cmd_quality_train(args):
    from .data.quality import QualityError, train_filter

    try:
        r = train_filter(args.data, args.labels, args.out, embed_dir=args.embed, seed=args.seed)
    except QualityError as e:
        raise CLIError(str(e)) from None
    print(f"quality filter: {r['n_train']} train / {r['n_val']} held-out objects ({r['n_good']} good, "
          f"{r['n_missing']} labels without an object); accuracy train {r['train_accuracy']:.2f}, "
          f"held-out {r['val_accuracy']:.2f} (majority class {r['val_majority_baseline']:.2f}); wrote {args.out}")
    return 0


def cmd_view(args):
    from . import viz
    from .data.io import load_object

    obj = load_object(args.object)
    out = Path(args.output or Path(args.object).with_suffix(".html"))
    print(f"wrote {viz.save_html(_object_figures(obj, Path(args.object).name), out)}")
    return 0


def _object_figures(obj: dict, title: str) -> list:
    """The viewers of one object: points | occupancy (| view 0), and its views as a grid."""
    from . import viz

    figs = [viz.object_figure(obj, title=title)]
    if "images" in obj:
        figs.append(viz.image_grid(list(obj["images"]) + list(obj["depths"]),
                                   titles=[f"view {i}" for i in range(len(obj["images"]))]
                                   + [f"depth {i}" for i in range(len(obj["depths"]))],
                                   cols=len(obj["images"])))
    return figs


def cmd_sample_meshes(args):
    from .data.sample_meshes import write_sample_meshes

    for p in write_sample_meshes(args.out):
        print(f"wrote {p}")
    return 0


def _require(args, *names):
    """--out, --vae, ... are required unless --dry-run (argparse cannot say 'unless')."""
    missing = [f"--{n}" for n in names if getattr(args, n) is None]
    if missing:
        raise CLIError(f"{', '.join(missing)} required (or --dry-run to size the run without training)")


def _dry_run(stage, args, **overrides):
    """``train STAGE --preset P --dry-run [--json FILE]``: compress3d_lite.dryrun."""
    from .config import AE_PRESETS
    from .dryrun import dry_run, format_dry_run, write_json

    if args.preset not in AE_PRESETS:
        raise CLIError(f"unknown preset {args.preset!r}; choose from {', '.join(AE_PRESETS)}")
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    try:
        report = dry_run(stage, args.preset, overrides=overrides)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(format_dry_run(report))
    if args.json:
        print(f"wrote {write_json(report, args.json)}")
    return 0


def cmd_train(args):
    from .train import train_ae

    overrides = {}
    if args.no_attn:
        overrides["attn"] = False
    if args.attn_res:
        overrides["attn_res"] = args.attn_res
    if args.render_loss:
        overrides["render_loss"] = True
    if args.grad_checkpoint:
        overrides["grad_checkpoint"] = True
    if args.dry_run:
        return _dry_run("ae", args, **overrides)
    _require(args, "out")
    train_overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size),
                                         ("seed", args.seed), ("n_train", args.n_train),
                                         ("num_workers", args.num_workers)) if v is not None}
    train_ae(args.preset, args.out, data=args.data, resume=args.resume, overrides=overrides,
             train_overrides=train_overrides, half=args.half)
    return 0


def _train_overrides(args) -> dict:
    return {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("seed", args.seed),
                              ("n_train", getattr(args, "n_train", None))) if v is not None}


def cmd_train_embed(args):
    from .train import train_embed

    if args.dry_run:
        return _dry_run("embed", args, **({"image_tower": args.image_tower} if args.image_tower else {}))
    _require(args, "out")
    train_embed(args.preset, args.out, data=args.data, resume=args.resume, image_tower=args.image_tower,
                train_overrides=_train_overrides(args), half=args.half)
    return 0


def cmd_train_prior(args):
    from .train import train_prior

    if args.dry_run:
        return _dry_run("prior", args)
    _require(args, "out", "embed")
    train_prior(args.preset, args.out, embed=args.embed, data=args.data, resume=args.resume,
                train_overrides=_train_overrides(args), half=args.half)
    return 0


def cmd_train_diffusion(args):
    from .train import train_diffusion

    overrides = {"grad_checkpoint": True} if args.grad_checkpoint else {}
    if args.dry_run:
        return _dry_run("diffusion", args, **overrides)
    _require(args, "out", "vae", "embed")
    train_diffusion(args.preset, args.out, vae=args.vae, embed=args.embed, data=args.data, resume=args.resume,
                    overrides=overrides, train_overrides=_train_overrides(args), half=args.half)
    return 0


def cmd_generate(args):
    """One coloured mesh per image; a bad image is reported and skipped, the rest still done."""
    import json

    from .data.images import ImageError, load_image
    from .data.io import atomic_write_bytes
    from .mesh import MeshingError, save_mesh
    from .pipeline import Compress3DPipeline

    if args.steps < 1 or args.res < 8:
        raise CLIError("--steps must be >= 1 and --res >= 8")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder")
    t0 = time.perf_counter()
    pipe = Compress3DPipeline.from_pretrained(args.pipeline, device=args.device)
    load_seconds = time.perf_counter() - t0
    # the scales actually used: the command line's, else the checkpoint's default (recorded as numbers)
    gi = pipe.default_guidance["image"] if args.guidance_image is None else args.guidance_image
    gs = pipe.default_guidance["shape"] if args.guidance_shape is None else args.guidance_shape
    source = {"image": "command line" if args.guidance_image is not None else "checkpoint default",
              "shape": "command line" if args.guidance_shape is not None else "checkpoint default"}
    print(f"generate: pipeline {args.pipeline} loaded in {load_seconds:.1f} s (image tower "
          f"{pipe.tower.identity()['name']}, device {pipe.device}); {'with' if not args.no_prior else 'without'} "
          f"the prior, {args.steps} steps, guidance image {gi:g} / shape {gs:g}")
    report, failed, used = {"pipeline": str(args.pipeline), "load_seconds": load_seconds, "settings": {
        "steps": args.steps, "seed": args.seed, "use_prior": not args.no_prior, "res": args.res,
        "guidance_image": gi, "guidance_shape": gs, "guidance_source": source}, "images": []}, 0, set()
    for path in args.images:
        try:
            image = load_image(path)
            result = pipe(image, steps=args.steps, guidance_image=gi, guidance_shape=gs, seed=args.seed,
                          use_prior=not args.no_prior, res=args.res)
        except (ImageError, MeshingError) as e:
            print(f"error: {e if str(path) in str(e) else f'{path}: {e}'}", file=sys.stderr)
            report["images"].append({"image": str(path), "error": str(e)})
            failed += 1
            continue
        stem = Path(path).stem
        name, k = stem, 1
        while name in used:
            name, k = f"{stem}_{k}", k + 1
        used.add(name)
        out.mkdir(parents=True, exist_ok=True)
        mesh_path = save_mesh(result.mesh, out / f"{name}.{args.format}")
        report["images"].append({"image": str(path), "mesh": str(mesh_path), "n_vertices": len(result.mesh.vertices),
                                 "n_faces": len(result.mesh.faces), "timings": result.timings})
        print(f"{path} -> {mesh_path} ({len(result.mesh.faces)} faces, {result.timings['total']:.2f} s: "
              + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items() if k != "total") + ")")
    if report["images"] and failed < len(args.images):
        atomic_write_bytes(out / "generate.json", (json.dumps(report, indent=1) + "\n").encode())
        print(f"wrote {out / 'generate.json'}")
    return EXIT_BAD_INPUT if failed else 0


def cmd_demo(args):
    """A tour of the data: a few toy objects + one imported mesh, on one offline HTML page."""
    from . import viz
    from .config import SampleSpec
    from .data.io import load_object
    from .data.mesh_import import import_mesh
    from .data.render import ray_backend
    from .data.toyshapes import write_toyshapes
    from .samples import sample_path

    out = Path(args.out)
    spec = SampleSpec(views=4, resolution=128)
    print(f"compress3d_lite demo (ray caster: {ray_backend()}): toy objects -> {out / 'toyshapes'}")
    entries = write_toyshapes(args.n, out / "toyshapes", spec, seed=args.seed, workers=1)
    figures = []
    for e in entries[: min(len(entries), 4)]:
        obj = load_object(out / "toyshapes" / e["file"])
        figures.append((f"toy {e['category']}", obj))
    sample = sample_path("meshes", "toy_lamp.glb")
    figures.append((f"imported {sample.name}", import_mesh(sample, spec, seed=args.seed)))
    page = viz.save_html([f for title, obj in figures for f in _object_figures(obj, title)],
                         out / "index.html", title="compress3d_lite demo")
    print(f"wrote {page}: open it in a browser (it works offline) to explore {len(figures)} objects "
          f"(coloured points, occupancy, rendered views and depth)")
    return 0


def cmd_reconstruct(args):
    from .mesh import MeshingError
    from .reconstruct import ReconstructError, reconstruct

    try:
        reconstruct(args.input, args.output, ckpt=args.ckpt, res=args.res, seed=args.seed, preset=args.preset)
    except (ReconstructError, MeshingError) as e:
        raise CLIError(str(e)) from None
    return 0


def cmd_evaluate(args):
    from .evaluate import evaluate_ae, format_table, write_report
    from .samples import shipped_checkpoint

    if args.n < 1 or args.res < 8:
        raise CLIError("--n must be >= 1 and --res >= 8")
    if args.json and Path(args.json).is_dir():
        raise CLIError(f"{args.json}: is a directory, not a .json file")
    report = evaluate_ae(args.ckpt or shipped_checkpoint("vae_course"), split=args.split, n=args.n, res=args.res,
                         preset=args.preset)
    print(f"evaluate ae: {report['checkpoint']} (preset {report['config']['preset']}, step "
          f"{report['config']['step']}), split {args.split} (seed {report['seed']}), {args.n} objects, "
          f"grid {args.res}^3, {report['timing']['total_seconds']:.0f} s")
    print(format_table(report))
    if args.json:
        print(f"wrote {write_report(report, args.json)}")
    return 0


def _json_arg(args):
    if args.json and Path(args.json).is_dir():
        raise CLIError(f"{args.json}: is a directory, not a .json file")
    if args.n < 2:
        raise CLIError("--n must be >= 2")


def cmd_evaluate_embed(args):
    from .evaluate import write_report
    from .evaluate_embed import evaluate_embed, format_embed

    _json_arg(args)
    report = evaluate_embed(args.embed, split=args.split, n=args.n)
    print(f"evaluate embed: {report['embed']}, split {args.split} (seed {report['seed']}), {report['seconds']:.0f} s")
    print(format_embed(report))
    if args.json:
        print(f"wrote {write_report(report, args.json)}")
    return 0


def cmd_evaluate_prior(args):
    from .evaluate import write_report
    from .evaluate_embed import evaluate_prior, format_prior

    _json_arg(args)
    report = evaluate_prior(args.prior, args.embed, split=args.split, n=args.n, guidance=args.guidance,
                            steps=args.steps, sampler=args.sampler, seed=args.seed)
    print(f"evaluate prior: {report['prior']}, split {args.split} (seed {report['seed']}), {report['seconds']:.0f} s")
    print(format_prior(report))
    if args.json:
        print(f"wrote {write_report(report, args.json)}")
    return 0


def cmd_evaluate_generate(args):
    from .evaluate import write_report
    from .evaluate_generate import evaluate_generate, format_generate

    _json_arg(args)
    report = evaluate_generate(args.pipeline, split=args.split, n=args.n, res=args.res, steps=args.steps,
                               guidance_image=args.guidance_image, guidance_shape=args.guidance_shape, seed=args.seed)
    print(f"evaluate generate: pipeline {args.pipeline}, split {args.split} (seed {report['seed']}), "
          f"{report['seconds']:.0f} s")
    print(format_generate(report))
    if args.json:
        print(f"wrote {write_report(report, args.json)}")
    return 0


def cmd_evaluate_paper(args):
    from .data.io import atomic_write_bytes
    from .evaluate import write_report
    from .evaluate_paper import ABLATIONS, Protocol, evaluate_paper, format_markdown

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder")
    names = [a.strip() for a in args.ablations.split(",") if a.strip()]
    ablations = ABLATIONS if names == ["all"] else () if names == ["none"] else tuple(names)
    protocol = Protocol(split=args.split, n=args.n, views=args.views, view_res=args.view_res, mesh_res=args.mesh_res,
                        steps=args.steps, seed=args.seed)
    try:
        report = evaluate_paper(args.pipeline, protocol, ablations, features=args.fid_features,
                                guidance_grid=args.guidance_grid, vae_with=args.vae_with, vae_without=args.vae_without,
                                attn_res=args.attn_res, attn_res_vaes=args.attn_res_vaes, device=args.device)
    except ValueError as e:
        raise CLIError(str(e)) from None
    md = format_markdown(report)
    print(md)
    write_report(report, out / "paper_eval.json")
    atomic_write_bytes(out / "paper_eval.md", md.encode())
    print(f"wrote {out / 'paper_eval.json'} and {out / 'paper_eval.md'}")
    return 0


# ------------------------------------------------------------------------------------------
# parser


def _add_dry_run_args(q):
    q.add_argument("--dry-run", action="store_true",
                   help="build the model at the preset, print parameters, memory per GPU, FLOPs and estimated "
                        "time per step, run one optimiser step on random data; train nothing, download nothing")
    q.add_argument("--json", default=None, help="with --dry-run: write all the numbers to this JSON file")


def _print_help(parser):
    """The command of a bare group (``compress3d-lite``, ``compress3d-lite train``): its help, exit 0."""
    def show(args):
        parser.print_help()
        return 0
    return show


def _group(sub, name, help, dest):
    """A command group: a subparser whose own subcommands live under ``dest``; bare, it prints its help."""
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(func=_print_help(parser))
    return parser.add_subparsers(dest=dest, metavar="COMMAND")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="compress3d-lite",
                                description="compress3d_lite: one image in, one coloured 3D mesh out, through "
                                            "the four stages of Compress3D (arXiv 2403.13524).",
                                epilog="Start with: compress3d-lite generate IMAGE -o OUT_DIR. "
                                       "'compress3d-lite COMMAND --help' describes each command.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.set_defaults(func=_print_help(p))
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    seed_help = "random seed (default %(default)s)"
    device_help = "cuda, mps or cpu (default: the best available)"
    pipeline_help = "preset name or pipeline folder (default: the shipped course checkpoints)"
    split_help = "toy seed range: train 0, val 500, test 1000 (default %(default)s)"

    # --- the main job ---------------------------------------------------------------------------
    g = sub.add_parser("generate", help="the main job: image(s) in, one coloured mesh each out",
                       description="One coloured mesh per image, through the four stages (image tower, prior, "
                                   "triplane diffusion, VAE decoder). A bad image is reported and skipped; the "
                                   "others are still done (exit code 2 when any failed).")
    g.add_argument("images", nargs="+", help="image files (PNG/JPEG/...; RGBA is composited on white)")
    g.add_argument("-o", "--output", required=True, help="output folder: one mesh per image + generate.json")
    g.add_argument("--format", default="glb", choices=["glb", "ply", "obj"],
                   help="mesh file format, all with vertex colours (default %(default)s)")
    g.add_argument("--steps", type=int, default=25, help="DDIM steps of the triplane diffusion (default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed of the diffusion noise (default %(default)s)")
    g.add_argument("--no-prior", action="store_true", help="condition on the image embedding only (ablation)")
    g.add_argument("--res", type=int, default=128, help="marching-cubes grid (default %(default)s)")
    g.add_argument("--guidance-image", type=float, default=None,
                   help="image guidance scale (default: the checkpoint's measured best; paper best 5.0)")
    g.add_argument("--guidance-shape", type=float, default=None,
                   help="shape guidance scale (default: the checkpoint's measured best; paper best 1.0)")
    g.add_argument("--pipeline", default="course", help=pipeline_help)
    g.add_argument("--device", default=None, help=device_help)
    g.set_defaults(func=cmd_generate)

    rc = sub.add_parser("reconstruct", help="a mesh or object through the VAE and back to a mesh")
    rc.add_argument("input", help="a GLB/glTF/OBJ/PLY mesh or an object .npz")
    rc.add_argument("-o", "--output", required=True, help="output mesh: .glb, .ply or .obj")
    rc.add_argument("--ckpt", default=None, help="VAE checkpoint folder (default: the shipped course VAE)")
    rc.add_argument("--res", type=int, default=128, help="marching-cubes grid resolution (default %(default)s)")
    rc.add_argument("--seed", type=int, default=0, help="seed of the surface sampling (default %(default)s)")
    rc.add_argument("--preset", default=None, help="require the checkpoint to be of this preset")
    rc.set_defaults(func=cmd_reconstruct)

    d = sub.add_parser("demo", help="an offline HTML page of a few toy objects and one imported mesh (no model)")
    d.add_argument("--out", default="outputs/demo", help="output folder (default %(default)s)")
    d.add_argument("--n", type=int, default=4, help="toy objects to make (default %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="seed of the toy objects (default %(default)s)")
    d.set_defaults(func=cmd_demo)

    # --- data -----------------------------------------------------------------------------------
    data = _group(sub, "data", "make, import and view datasets", "data_command")

    t = data.add_parser("toyshapes", help="generate procedural coloured objects")
    t.add_argument("--n", type=int, required=True, help="number of objects")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--start", type=int, default=0, help="index of the first object (default %(default)s)")
    t.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    t.add_argument("--png", action="store_true", help="also save the rendered views as PNG files")
    _add_sampling_args(t)
    t.set_defaults(func=cmd_toyshapes)

    i = data.add_parser("import", help="import GLB/glTF/OBJ/PLY meshes or scenes")
    i.add_argument("paths", nargs="+", help="mesh files or folders")
    i.add_argument("--out", required=True, help="output folder")
    _add_sampling_args(i)
    i.set_defaults(func=cmd_import)

    o = data.add_parser("objaverse", help="Objaverse (or a local folder of meshes) -> a resumable dataset folder",
                        description="Import Objaverse objects (the objaverse package) or the mesh files of "
                        "--source DIR into OUT/objects/<uid>.npz, OUT/index.json and OUT/manifest.json. "
                        "Resumable: finished objects are skipped. Exit code 0 when every object succeeded, "
                        "2 when any failed (the others are still written; see OUT/manifest.json).")
    which = o.add_mutually_exclusive_group(required=True)
    which.add_argument("--uids", help="file with one uid per line (# comments)")
    which.add_argument("--n", type=int, help="the first N uids (sorted; --shuffle: seeded random order)")
    o.add_argument("--out", required=True, help="output folder")
    o.add_argument("--source", default=None,
                   help="offline: a folder of GLB/glTF/OBJ/PLY files (uid = relative path without suffix, / -> __)")
    o.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    o.add_argument("--shuffle", action="store_true", help="with --n: a random (seeded) choice, not the first sorted")
    o.add_argument("--timeout", type=float, default=300, help="seconds per object, 0: none (default %(default)s)")
    o.add_argument("--filter", default=None, help="a quality-filter folder: low scorers stay out of index.json")
    o.add_argument("--threshold", type=float, default=None, help="filter threshold (default: the classifier's, 0.5)")
    _add_sampling_args(o)
    o.set_defaults(func=cmd_objaverse)

    q = _group(data, "quality-filter", "an MLP that scores objects good/bad", "quality_command")
    qt = q.add_parser("train", help="train it on labelled objects of a dataset folder")
    qt.add_argument("--data", required=True, help="dataset folder holding the labelled objects")
    qt.add_argument("--labels", required=True, help="CSV of uid,label (good/bad or 1/0)")
    qt.add_argument("--out", required=True, help="output folder: model.safetensors + config.json")
    qt.add_argument("--embed", default=None, help="towers whose shape embeddings are the features (default: shipped)")
    qt.add_argument("--seed", type=int, default=0, help="seed of the held-out split and the MLP (default %(default)s)")
    qt.set_defaults(func=cmd_quality_train)

    v = data.add_parser("view", help="write an offline HTML viewer of one object .npz")
    v.add_argument("object", help="an object .npz")
    v.add_argument("-o", "--output", help="output .html (default: next to the object)")
    v.set_defaults(func=cmd_view)

    s = data.add_parser("sample-meshes", help="write our own small example meshes (OBJ+MTL+PNG, GLB, PLY)")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(func=cmd_sample_meshes)

    # --- train ----------------------------------------------------------------------------------
    tr = _group(sub, "train", "train a stage", "stage")

    def common_train(q, what):
        q.add_argument("--preset", default="course", help="lite, course, colab_t4 or a100_full (default %(default)s)")
        q.add_argument("--out", default=None, help=f"run folder: checkpoint/, {what}, log.jsonl (required unless --dry-run)")
        q.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint exactly")
        q.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
        q.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size (per process)")
        q.add_argument("--seed", type=int, default=None, help="override the preset's seed (data order, init)")
        q.add_argument("--half", action="store_true", help="store the final weights in fp16")
        _add_dry_run_args(q)

    ae = tr.add_parser("ae", help="the triplane VAE (stage 1)")
    common_train(ae, "model/")
    ae.add_argument("--data", default=None, help="dataset folder (default: generate the toy set into OUT/data)")
    ae.add_argument("--n-train", type=int, default=None, help="toy objects to generate when no --data")
    ae.add_argument("--num-workers", type=int, default=None, help="data-loading processes (a GPU wants several)")
    ae.add_argument("--no-attn", action="store_true", help="ablation: no 3D-aware cross-attention")
    ae.add_argument("--attn-res", type=int, default=None, help="r'': resolution of the queried volume")
    ae.add_argument("--render-loss", action="store_true",
                    help="add the paper's rgb/mask/depth render losses (x10, x10, x0.1) of the field")
    ae.add_argument("--grad-checkpoint", action="store_true",
                    help="recompute the ResBlocks and the 3D-aware attention in the backward pass (less memory)")
    ae.set_defaults(func=cmd_train)

    em = tr.add_parser("embed", help="image and shape towers, contrastive alignment (stage 2)")
    common_train(em, "image_tower/, shape_tower/")
    em.add_argument("--data", default=None, help="dataset folder with rendered views (default: generate toy objects)")
    em.add_argument("--n-train", type=int, default=None, help="toy objects to generate when no --data")
    em.add_argument("--image-tower", default=None,
                    help="override the preset's image tower: toy, toy_lite, vit_b32, vit_bigg14")
    em.set_defaults(func=cmd_train_embed)

    pr = tr.add_parser("prior", help="the diffusion prior, image embedding -> shape embedding (stage 3)")
    common_train(pr, "prior/, embeddings.safetensors")
    pr.add_argument("--embed", default=None, help="the output folder of train embed (its towers; required unless --dry-run)")
    pr.add_argument("--data", default=None, help="dataset folder with views (default: the towers' training set)")
    pr.set_defaults(func=cmd_train_prior)

    df = tr.add_parser("diffusion", help="the triplane latent diffusion UNet (stage 4)")
    common_train(df, "unet/, latents.safetensors")
    df.add_argument("--vae", default=None, help="the VAE model folder (its latent space and latent stats; "
                    "required unless --dry-run)")
    df.add_argument("--embed", default=None, help="the output folder of train embed (its towers; required unless --dry-run)")
    df.add_argument("--data", default=None, help="dataset folder with views (default: the towers' training set)")
    df.add_argument("--grad-checkpoint", action="store_true",
                    help="recompute the ResBlocks and cross-attention in the backward pass (~3x less activation "
                         "memory, ~1/3 more compute)")
    df.set_defaults(func=cmd_train_diffusion)

    # --- evaluate -------------------------------------------------------------------------------
    ev = _group(sub, "evaluate", "metrics of a trained stage on held-out toy objects", "stage")
    eva = ev.add_parser("ae", help="the triplane VAE: IoU, Chamfer-L1, F-score@0.02, colour PSNR")
    eva.add_argument("--ckpt", default=None, help="VAE checkpoint folder (default: the shipped course VAE)")
    eva.add_argument("--split", default="test", choices=["train", "val", "test"], help=split_help)
    eva.add_argument("--n", type=int, default=56, help="objects, 4 per category at 56 (default %(default)s)")
    eva.add_argument("--res", type=int, default=128, help="marching-cubes grid resolution (default %(default)s)")
    eva.add_argument("--json", default=None, help="write the full report (per object, per category) here")
    eva.add_argument("--preset", default=None, help="require the checkpoint to be of this preset")
    eva.set_defaults(func=cmd_evaluate)

    def common_eval(q):
        q.add_argument("--embed", default=None, help="output folder of train embed (default: the shipped course towers)")
        q.add_argument("--split", default="test", choices=["train", "val", "test"], help=split_help)
        q.add_argument("--n", type=int, default=112, help="objects, 8 per category at 112 (default %(default)s)")
        q.add_argument("--json", default=None, help="write the full report here")

    eve = ev.add_parser("embed", help="the towers: image -> shape retrieval, category accuracy")
    common_eval(eve)
    eve.set_defaults(func=cmd_evaluate_embed)
    evp = ev.add_parser("prior", help="the prior: cosine to the true shape embedding, retrieval")
    common_eval(evp)
    evp.add_argument("--prior", default=None, help="prior folder (default: the shipped course prior)")
    evp.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1: none)")
    evp.add_argument("--steps", type=int, default=None, help="sampling steps (default: the prior's config)")
    evp.add_argument("--sampler", default=None, choices=["ddim", "dpm", "ddpm"],
                     help="diffusers scheduler for sampling (default: the prior's config)")
    evp.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default %(default)s)")
    evp.set_defaults(func=cmd_evaluate_prior)

    evg = ev.add_parser("generate", help="image -> mesh on held-out objects: IoU, Chamfer, category, image similarity")
    evg.add_argument("--pipeline", default="course", help=pipeline_help)
    evg.add_argument("--split", default="test", choices=["train", "val", "test"], help=split_help)
    evg.add_argument("--n", type=int, default=56, help="objects, 4 per category at 56 (default %(default)s)")
    evg.add_argument("--res", type=int, default=64, help="marching-cubes grid (default %(default)s)")
    evg.add_argument("--steps", type=int, default=25, help="DDIM steps (default %(default)s)")
    evg.add_argument("--guidance-image", type=float, default=None, help="image guidance scale (default: the checkpoint's)")
    evg.add_argument("--guidance-shape", type=float, default=None, help="shape guidance scale (default: the checkpoint's)")
    evg.add_argument("--seed", type=int, default=0, help=seed_help)
    evg.add_argument("--json", default=None, help="write the full report here")
    evg.set_defaults(func=cmd_evaluate_generate)

    evr = ev.add_parser("paper", help="the paper's protocol: FID, CLIP similarity, IoU/CD/F, ablations; "
                                      "JSON + markdown tables beside the paper's numbers")
    evr.add_argument("--pipeline", default="course", help=pipeline_help)
    evr.add_argument("--out", default="outputs/paper_eval", help="folder for paper_eval.json/.md (default %(default)s)")
    evr.add_argument("--split", default="test", choices=["train", "val", "test"], help=split_help)
    evr.add_argument("--n", type=int, default=56, help="objects, 4 per category at 56 (default %(default)s)")
    evr.add_argument("--views", type=int, default=4, help="rendered views per asset (default %(default)s)")
    evr.add_argument("--view-res", type=int, default=128, help="render resolution (default %(default)s)")
    evr.add_argument("--mesh-res", type=int, default=64, help="marching-cubes grid (default %(default)s)")
    evr.add_argument("--steps", type=int, default=25, help="DDIM steps (default %(default)s)")
    evr.add_argument("--seed", type=int, default=0, help=seed_help)
    evr.add_argument("--ablations", default="prior",
                     help="comma list of prior, guidance, attention, attn_res; or all / none (default %(default)s)")
    evr.add_argument("--guidance-grid", default="1,2,5x1,2", help="image scales x shape scales (default %(default)s)")
    evr.add_argument("--fid-features", default="auto", choices=["auto", "inception", "tower"],
                     help="Inception-v3 when its weights are here (auto), else the pipeline's open_clip tower")
    evr.add_argument("--vae-with", default=None, help="attention ablation: VAE with attention (default: the pipeline's)")
    evr.add_argument("--vae-without", default=None,
                     help="attention ablation: VAE without (default: shipped vae_course_noattn)")
    evr.add_argument("--attn-res", type=int, nargs="+", default=None, help="r'' values to time (default: all valid)")
    evr.add_argument("--attn-res-vaes", nargs="+", default=None, help="VAE checkpoints trained at other r''")
    evr.add_argument("--device", default=None, help=device_help)
    evr.set_defaults(func=cmd_evaluate_paper)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .data.io import DataFormatError

    from .checkpoint import CheckpointError
    from .train import TrainingError

    from .data.images import ImageError
    from .models.image_tower import PretrainedWeightsUnavailable

    known = (CLIError, DataFormatError, FileNotFoundError, CheckpointError, TrainingError, ImageError,
             PretrainedWeightsUnavailable)
    try:
        from .data.mesh_import import MeshImportError

        known = known + (MeshImportError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        return args.func(args)
    except known as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
